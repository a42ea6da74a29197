"""What every layout reader shares: the in-memory `ImageIndex` it produces (paths, labels, groups, never
pixels), the directory listing that feeds it, and the errors raised when files do not match the layout.

Listing skips operating-system clutter silently (`.DS_Store`, `Thumbs.db`, `desktop.ini`, AppleDouble `._x`,
`__MACOSX/`, other hidden entries): it is not data. Relative paths use "/" on every platform so that split
files are portable. Names are compared after Unicode NFC normalisation (`nfc`): macOS writes file names
decomposed (NFD), other systems and most editors composed, and both must mean the same class or file.

Every error collects *all* offending entries before raising, so a user fixes a download in one pass
instead of one file per run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import unicodedata
from collections.abc import Iterable, Iterator, Sequence

from datasets import ClassLabel, Value

from ..models.image_decoding import printable_path

logger = logging.getLogger(__name__)

# Formats a histology tile comes in that Pillow decodes; other suffixes (notes.txt, .csv, .xlsx, .svs) are
# not tiles and are skipped with one warning. Compared case-insensitively.
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm", ".pnm",
)  # fmt: skip
_OS_METADATA_NAMES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"})


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------


class DataLayoutError(ValueError):
    """The data directory, a label file or a split file does not have the expected layout or content."""


class BadImageError(DataLayoutError):
    """Some image files are missing or cannot be decoded; `bad_images` holds `(relative path, reason)` pairs."""

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


def shown(entries: Sequence[str], limit: int = 20) -> str:
    """The first `limit` entries joined for a log line, with "..." when there are more."""
    return ", ".join(entries[:limit]) + (" ..." if len(entries) > limit else "")


# ----------------------------------------------------------------------------------------------------------
# Names and listing
# ----------------------------------------------------------------------------------------------------------


def nfc(text: str) -> str:
    """Unicode NFC form: the one spelling under which folder names, CSV values and split entries are matched."""
    return unicodedata.normalize("NFC", text)


def same_after_nfc(names: Iterable[str]) -> list[list[str]]:
    """Groups (of two or more) of distinct names that become equal after NFC normalisation."""
    spellings: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        spellings.setdefault(nfc(name), []).append(name)
    return [found for found in spellings.values() if len(found) > 1]


def describe_spellings(names: Sequence[str]) -> str:
    """`'é' (NFC, U+00E9) and 'é' (NFD, U+0065 U+0301)`: what tells apart names that look the same."""

    def form(name: str) -> str:
        kinds = [kind for kind in ("NFC", "NFD") if unicodedata.is_normalized(kind, name)]
        codes = " ".join(f"U+{ord(character):04X}" for character in name if ord(character) > 127)
        return f"{name!r} ({kinds[0] if kinds else 'mixed'}, {codes})"

    return " and ".join(form(name) for name in names)


def is_image_name(name: str) -> bool:
    """True when the file suffix is an image format the readers decode (see `IMAGE_SUFFIXES`)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def is_os_metadata(name: str) -> bool:
    """True for OS clutter and hidden entries, which readers skip without a word."""
    return name.startswith(".") or name.lower() in _OS_METADATA_NAMES


def list_dir(path: str) -> tuple[list[str], list[str]]:
    """Sorted (sub-folder names, file names) of `path`, clutter removed."""
    folders, files = [], []
    with os.scandir(path) as entries:
        for entry in entries:
            if is_os_metadata(entry.name):
                continue
            try:
                is_folder = entry.is_dir()
            except OSError:  # a link loop (ELOOP): listed as a file, which the image scan names as unreadable
                is_folder = False
            (folders if is_folder else files).append(entry.name)
    return sorted(folders, key=nfc), sorted(files, key=nfc)


def walk_files(top: str, prefix: str = "", _ancestors: frozenset[str] = frozenset()) -> Iterator[str]:
    """Relative paths ("/"-joined, starting with `prefix`) of all files below `top`, in sorted order.

    Symbolic links to folders are followed, except a link back to one of its own parent folders (a loop: it
    would repeat the same files forever), which is skipped with a warning naming it. The same file reached
    through two links is listed twice: `drop_duplicate_files` resolves that once the labels are known."""
    real = os.path.realpath(top)
    ancestors = _ancestors | {real}
    folders, files = list_dir(top)
    for name in files:
        yield f"{prefix}{name}"
    for name in folders:
        folder = os.path.join(top, name)
        if os.path.realpath(folder) in ancestors:
            logger.warning(
                "Skipping %s%s: a symbolic link loop (it points to %s, one of its own parent folders, so its "
                "files are the ones already listed); remove the link.",
                printable_path(prefix), printable_path(name), printable_path(os.path.realpath(folder)),
            )
            continue
        yield from walk_files(folder, f"{prefix}{name}/", ancestors)


def is_utf8_name(path: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python keeps them as surrogates): such a name cannot
    be stored in a dataset column, a CSV or a split file."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def drop_duplicate_files(index: ImageIndex) -> ImageIndex:
    """The index with each file once: the same file (same device and inode: a symbolic link, a linked folder, a
    hard link) under two paths is kept once with a warning when both paths carry one label (at its path without
    a symbolic link, else its first), and refused naming both paths when they carry different labels (it would
    be trained and tested as both)."""
    paths_of: dict[tuple[int, int], list[int]] = {}
    for position in range(len(index)):
        try:
            stat = os.stat(index.absolute_path(position))
        except OSError:  # missing or a broken link: the scan names it
            continue
        paths_of.setdefault((stat.st_dev, stat.st_ino), []).append(position)
    dropped, same_label, conflicts = set(), [], []
    for positions in paths_of.values():
        if len(positions) == 1:
            continue
        unlinked = [p for p in positions if os.path.realpath(index.absolute_path(p)) == index.absolute_path(p)]
        kept = (unlinked or positions)[0]
        for position in positions:
            if position == kept:
                continue
            pair = f"{printable_path(index.paths[position])} (same file as {printable_path(index.paths[kept])})"
            if index.labels[position] == index.labels[kept]:
                same_label.append(pair)
                dropped.add(position)
            else:
                names = (index.class_names[index.labels[kept]], index.class_names[index.labels[position]])
                conflicts.append(f"{pair}: classes {names[0]!r} and {names[1]!r}")
    raise_if_problems(
        {"the same file under two class labels": conflicts},
        f"Some files in {index.root} are reached through two paths (a symbolic or hard link), under different labels.",
        "Remove the link (or the copy) so that each image has one label.",
    )
    if not dropped:
        return index
    logger.warning(
        "%d path(s) in %s reach a file already listed (a symbolic or hard link) with the same label; each file is "
        "used once: %s",
        len(same_label), index.root, shown(same_label),
    )
    return index.subset([position for position in range(len(index)) if position not in dropped])


def split_image_files(paths: Iterable[str]) -> tuple[list[str], list[str]]:
    """(image files, other files) by suffix: a stray `notes.txt` is not a tile and must not stop a run."""
    images, others = [], []
    for path in paths:
        (images if is_image_name(path) else others).append(path)
    return images, others


def join_relative(root: str, relative_path: str) -> str:
    """Absolute path of a "/"-separated path relative to `root`."""
    return os.path.join(root, *relative_path.split("/"))


# ----------------------------------------------------------------------------------------------------------
# The index
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ImageIndex:
    """Column-wise description of a dataset's images.

    Attributes:
        root: absolute data root; `paths` are relative to it ("/"-separated).
        class_names: canonical class names in canonical label order (NFC).
        paths, labels, groups: one entry per image. `groups` holds the patient/slide id that splits must
            keep together.
        group_kind: what a group is ("slide", "patient", "image"), for log lines and docs.
        metadata: extra columns (e.g. magnification), one list per column, aligned with `paths`.
        metadata_features: the `datasets` feature of each metadata column (default `Value("string")`).
        predefined_test: for layouts with an official test set, True where the image belongs to it.
        summary: one human-readable line about the dataset, used in the DatasetInfo description.
        missing: (expected relative path, reason) of images a label file names but that do not exist; the
            loader raises on them or, with `on_bad_image="skip"`, leaves them out and reports them.
        non_images: relative paths of files skipped because their suffix is not an image format.
    """

    root: str
    class_names: list[str]
    paths: list[str]
    labels: list[int]
    groups: list[str]
    group_kind: str
    metadata: dict[str, list] = dataclasses.field(default_factory=dict)
    metadata_features: dict[str, Value | ClassLabel] = dataclasses.field(default_factory=dict)
    predefined_test: list[bool] | None = None
    summary: str = ""
    missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    non_images: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        lengths = {len(self.paths), len(self.labels), len(self.groups), *(len(v) for v in self.metadata.values())}
        if self.predefined_test is not None:
            lengths.add(len(self.predefined_test))
        if len(lengths) != 1:
            raise ValueError(f"ImageIndex columns differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.paths)

    def absolute_path(self, position: int) -> str:
        return join_relative(self.root, self.paths[position])

    def subset(self, positions: Sequence[int]) -> ImageIndex:
        """A new index holding the given positions, in the given order."""

        def pick(values: list) -> list:
            return [values[i] for i in positions]

        return dataclasses.replace(
            self,
            paths=pick(self.paths),
            labels=pick(self.labels),
            groups=pick(self.groups),
            metadata={name: pick(values) for name, values in self.metadata.items()},
            predefined_test=None if self.predefined_test is None else pick(self.predefined_test),
        )

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts
