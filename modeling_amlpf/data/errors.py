"""Exceptions raised when the files on disk do not match what a reader expects.

Every error collects *all* offending entries before raising, so a user fixes a download in one pass
instead of one file per run.
"""

from __future__ import annotations

from collections.abc import Iterable


class DataLayoutError(ValueError):
    """The data directory, a label file or a split file does not have the expected layout or content."""


class BadImageError(DataLayoutError):
    """Some image files cannot be decoded; `bad_images` holds `(relative path, reason)` pairs."""

    def __init__(self, message: str, bad_images: list[tuple[str, str]]):
        super().__init__(message)
        self.bad_images = bad_images


def bullet_list(entries: Iterable[object], indent: str = "  ") -> str:
    """One `- entry` line per entry, for error messages that name every offending entry."""
    return "\n".join(f"{indent}- {entry}" for entry in entries)


def raise_if_problems(problems: dict[str, list[str]], context: str, hint: str = "") -> None:
    """Raise one `DataLayoutError` naming every entry of every non-empty problem category."""
    sections = [f"{title} ({len(entries)}):\n{bullet_list(entries)}" for title, entries in problems.items() if entries]
    if not sections:
        return
    message = f"{context}\n" + "\n".join(sections)
    if hint:
        message += f"\n{hint}"
    raise DataLayoutError(message)
