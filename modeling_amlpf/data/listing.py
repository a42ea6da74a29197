"""Directory listing with `os.scandir` that skips operating-system clutter.

Real downloads carry `.DS_Store`, `Thumbs.db`, `desktop.ini`, AppleDouble `._name` files and `__MACOSX/`
folders. They are not data, so they are skipped silently, as are other hidden (dot) files and folders.
Relative paths use "/" on every platform so that split files are portable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

_OS_METADATA_NAMES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"})


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
            (folders if entry.is_dir() else files).append(entry.name)
    return sorted(folders), sorted(files)


def walk_files(top: str, prefix: str = "") -> Iterator[str]:
    """Relative paths ("/"-joined, starting with `prefix`) of all files below `top`, in sorted order."""
    folders, files = list_dir(top)
    for name in files:
        yield f"{prefix}{name}"
    for name in folders:
        yield from walk_files(os.path.join(top, name), f"{prefix}{name}/")


def join_relative(root: str, relative_path: str) -> str:
    """Absolute path of a "/"-separated path relative to `root`."""
    return os.path.join(root, *relative_path.split("/"))
