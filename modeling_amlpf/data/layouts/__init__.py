"""One reader per dataset layout; each turns a folder as distributed into an `ImageIndex`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..index import ImageIndex
from . import breakhis, chaoyang, imagefolder, lunghist700


@dataclasses.dataclass(frozen=True)
class Layout:
    """A reader, the keyword options it accepts (with their defaults), and the folder name the download
    unpacks to (found under `$AMLPF_DATA_DIR` besides the dataset's own name)."""

    reader: Callable[..., ImageIndex]
    options: dict[str, object]
    expected_layout: str
    folder_name: str | None = None


LAYOUTS: dict[str, Layout] = {
    "chaoyang": Layout(
        chaoyang.read_chaoyang, {"protocol": chaoyang.DEFAULT_PROTOCOL}, chaoyang.EXPECTED_LAYOUT, chaoyang.FOLDER_NAME
    ),
    "breakhis": Layout(
        breakhis.read_breakhis,
        {"task": "8class", "magnification": None},
        breakhis.EXPECTED_LAYOUT,
        breakhis.FOLDER_NAME,
    ),
    "lunghist700": Layout(
        lunghist700.read_lunghist700,
        {"task": "3class", "resolution": None},
        lunghist700.EXPECTED_LAYOUT,
        lunghist700.FOLDER_NAME,
    ),
    "imagefolder": Layout(
        imagefolder.read_imagefolder, {"class_names": None, "groups_csv": None}, imagefolder.EXPECTED_LAYOUT
    ),
}

__all__ = ["LAYOUTS", "Layout"]
