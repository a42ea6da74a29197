"""Class names: one Unicode form (NFC) everywhere, and one check that two lists of classes agree.

Folder names, CSV cells and prompt files may spell an accented name in two Unicode forms (macOS file systems
decompose "é" into "e" + U+0301, NFD; editors usually write it composed, NFC): the strings differ although the
names do not. Every comparison of class names goes through :func:`normalize_class_name`, and every
"these classes must be those classes" check through :func:`check_class_names`, so that a mismatch reads the same
wherever it is found, with both lists, where they came from and the fix.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["check_class_names", "normalize_class_name", "normalize_class_names"]


def normalize_class_name(name: str) -> str:
    """The NFC form of ``name`` (composed characters); names are otherwise kept exactly as written."""
    return unicodedata.normalize("NFC", str(name))


def _loose(name: str) -> str:
    """What two names share when they differ only by Unicode compatibility form or case."""
    return unicodedata.normalize("NFKC", name).casefold()


def normalize_class_names(names: Iterable[str], *, source: str = "class names") -> list[str]:
    """NFC forms of ``names``; two entries that become equal (one name in two Unicode forms) raise."""
    names = [str(name) for name in names]
    normalized = [normalize_class_name(name) for name in names]
    seen: dict[str, str] = {}
    for raw, name in zip(names, normalized):
        if name in seen:
            raise ValueError(
                f"{source}: {seen[name]!r} and {raw!r} are the same class name written in two Unicode forms "
                "(composed and decomposed characters); rename one so that every class has one name."
            )
        seen[name] = raw
    return normalized


def check_class_names(found: Sequence[str], expected: Sequence[str], *, source: str, fix: str) -> list[str]:
    """Raise one ValueError unless ``found`` lists the ``expected`` classes, in the same order.

    Names are compared in NFC, so a name written in another Unicode form matches. The error names both lists,
    the ``source`` of ``found`` (a file, a checkpoint, a folder), what is missing and what is extra (relative
    to ``expected``), pairs that differ only by case or Unicode compatibility form, an order-only difference,
    and ``fix``. Returns the NFC forms of ``found``.
    """
    found_nfc = normalize_class_names(found, source=source)
    expected_nfc = normalize_class_names(expected, source="the expected class names")
    if found_nfc == expected_nfc:
        return found_nfc

    missing = [name for name in expected_nfc if name not in found_nfc]
    extra = [name for name in found_nfc if name not in expected_nfc]
    details = []
    if missing or extra:
        details.append(f"missing {missing}, extra {extra}")
        near = [(e, m) for e in extra for m in missing if _loose(e) == _loose(m)]
        if near:
            pairs = ", ".join(f"{e!r} vs {m!r}" for e, m in near)
            details.append(f"these differ only by case or Unicode form: {pairs}")
    else:
        details.append("the same classes in another order (the order defines the label ids)")
    raise ValueError(
        f"{source}: classes {list(found)} do not match the expected classes {list(expected)}: "
        + "; ".join(details)
        + f". Fix: {fix}"
    )
