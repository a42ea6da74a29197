"""A generic folder per class: `<root>/<class>/**/<image>`, optionally grouped by a `path,group` csv.

Class names are the folder names in Unicode NFC form (any script: accents, CJK, Cyrillic), so a folder written
decomposed (NFD, as macOS does) matches a name typed composed; folders whose names differ only by that
normalisation are refused, naming both spellings. Files whose suffix is not an image format (`notes.txt`,
`labels.xlsx`) are skipped and listed once; the loader records them in the scan report.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence

from ..index import (
    DataLayoutError,
    ImageIndex,
    describe_spellings,
    is_image_name,
    list_dir,
    nfc,
    raise_if_problems,
    same_after_nfc,
    shown,
    split_image_files,
    walk_files,
)

logger = logging.getLogger(__name__)

EXPECTED_LAYOUT = """<data_dir>/
  <class name>/<image files, sub-folders allowed>
  ...        (one folder per class; class order = sorted folder names unless class_names=[...] is given)
  optional groups csv (groups_csv=PATH): columns path,group with path relative to <data_dir>"""


def _resolve_groups_csv(groups_csv: str, root: str) -> str:
    for candidate in (groups_csv, os.path.join(root, groups_csv)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise DataLayoutError(f"groups_csv {groups_csv!r} not found (looked in the working directory and in {root}).")


def _read_groups(path: str, root: str, image_paths: set[str]) -> dict[str, str]:
    """Map image paths (relative to `root`) to group ids; every image needs exactly one row.

    Paths are matched after NFC normalisation, so a csv typed on one system matches files named on another.
    """
    by_nfc = {nfc(image_path): image_path for image_path in image_paths}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = [name.strip() for name in reader.fieldnames or []]
        if "path" not in fields or "group" not in fields:
            raise DataLayoutError(f"{path} needs the columns path,group (found: {', '.join(fields) or 'none'}).")
        reader.fieldnames = fields
        groups: dict[str, str] = {}
        problems: dict[str, list[str]] = {
            "rows naming files that are not images of the class folders": [],
            "paths listed more than once": [],
        }
        for line, row in enumerate(reader, start=2):
            raw = (row["path"] or "").strip().replace("\\", "/")
            if os.path.isabs(raw):
                raw_relative = os.path.relpath(raw, root).replace(os.sep, "/")
            else:
                raw_relative = raw.removeprefix("./")
            relative = by_nfc.get(nfc(raw_relative))
            if relative is None:
                problems["rows naming files that are not images of the class folders"].append(f"line {line}: {raw}")
            elif relative in groups:
                problems["paths listed more than once"].append(f"line {line}: {raw}")
            else:
                groups[relative] = nfc((row["group"] or "").strip())
    problems["images without a row"] = sorted(image_paths - groups.keys())
    problems["rows with an empty group"] = [p for p, g in groups.items() if not g]
    raise_if_problems(problems, f"The groups file {path} does not match the images in {root}.")
    return groups


def _match_class_folders(root: str, folders: list[str], class_names: list[str] | None) -> tuple[list[str], dict]:
    """(class names in label order, NFC name -> folder on disk); every mismatch is named in one error."""
    problems = {
        "folders whose names differ only by Unicode normalisation (NFC); rename one": [
            describe_spellings(spellings) for spellings in same_after_nfc(folders)
        ]
    }
    folder_of = {nfc(folder): folder for folder in folders}
    if class_names is None:
        class_names = list(folder_of)
    given = list(class_names)
    class_names = [nfc(name) for name in given]
    repeated = []
    for name in sorted({name for name in class_names if class_names.count(name) > 1}):
        spellings = [raw for raw in dict.fromkeys(given) if nfc(raw) == name]
        repeated.append(
            name
            if len(spellings) == 1
            else f"{name}: {describe_spellings(spellings)} differ only by Unicode normalisation (NFC)"
        )
    problems.update(
        {
            "class names without a folder": [name for name in class_names if name not in folder_of],
            "folders that are not in class_names": [f for name, f in folder_of.items() if name not in class_names],
            "repeated class names": repeated,
        }
    )
    raise_if_problems(problems, f"The class folders of {root} do not match.", f"Expected layout:\n{EXPECTED_LAYOUT}")
    return class_names, folder_of


def read_imagefolder(
    data_dir: str, class_names: Sequence[str] | None = None, groups_csv: str | None = None
) -> ImageIndex:
    """Index one folder per class; without `groups_csv` every image is its own group."""
    root = os.path.abspath(data_dir)
    folders, root_files = list_dir(root)
    if isinstance(class_names, str):  # "a,b,c" from a command line
        class_names = [name.strip() for name in class_names.split(",") if name.strip()]
    class_names, folder_of = _match_class_folders(root, folders, class_names)
    paths, labels, non_images = [], [], []
    for label, name in enumerate(class_names):
        folder = folder_of[name]
        found, others = split_image_files(walk_files(os.path.join(root, folder), f"{folder}/"))
        paths += found
        labels += [label] * len(found)
        non_images += others
    present = set(labels)
    empty = [name for label, name in enumerate(class_names) if label not in present]
    raise_if_problems({"class folders without image files": empty}, f"Some class folders of {root} are empty.")
    loose_images = [name for name in root_files if is_image_name(name)]
    if loose_images:
        logger.warning(
            "imagefolder: %d image files directly in %s belong to no class folder and are not used: %s",
            len(loose_images),
            root,
            shown(loose_images),
        )
    if groups_csv is None:
        logger.info("imagefolder: no groups_csv given, so every image is its own group (splits are image-level).")
        groups, group_kind = list(paths), "image"
    else:
        group_of = _read_groups(_resolve_groups_csv(groups_csv, root), root, set(paths))
        groups, group_kind = [group_of[path] for path in paths], "group from groups_csv"
    return ImageIndex(
        root=root,
        class_names=class_names,
        paths=paths,
        labels=labels,
        groups=groups,
        group_kind=group_kind,
        summary=f"image folder {root}, {len(class_names)} classes, groups = {group_kind}",
        non_images=non_images,
    )
