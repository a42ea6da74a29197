"""Chaoyang colorectal patches (4 classes), read from `train.json`/`test.json` exactly as distributed.

Groups are slides: the file-name part before `-IMG` (`538844-2-IMG011x020-2.JPG` -> `538844-2`; slide ids
contain both `_` and `-`). The official train/test split is NOT slide-disjoint: most test slides also appear
in train. The default `protocol="resplit"` re-splits all images slide-disjointly (one split per seed, as the
paper's ten random splits); `protocol="official"` keeps the official test set for comparisons with Chaoyang's
own benchmark (optimistic, and never group-disjoint).
"""

from __future__ import annotations

import json
import logging
import os

from datasets import Value

from ..index import DataLayoutError, ImageIndex, join_relative, raise_if_problems, shown, walk_files

logger = logging.getLogger(__name__)

CLASS_NAMES = ["normal", "serrated", "adenocarcinoma", "adenoma"]
PROTOCOLS = ("resplit", "official")
DEFAULT_PROTOCOL = "resplit"
FOLDER_NAME = "chaoyang-data"  # the name the download unpacks to
OFFICIAL_PARTS = ("train", "test")
EXPECTED_LAYOUT = """chaoyang-data/
  train.json   list of {"name": "train/<slide>-IMG<row>x<col>-<label>.JPG", "label": 0-3}
  test.json    same, names under test/
  train/<slide>-IMG<row>x<col>-<label>.JPG
  test/<slide>-IMG<row>x<col>-<label>.JPG"""


def slide_id(name: str) -> str | None:
    """The slide id of a Chaoyang file name (everything before the first `-IMG`), None if absent."""
    base = name.rsplit("/", 1)[-1]
    cut = base.find("-IMG")
    return base[:cut] if cut > 0 else None


def find_root(data_dir: str) -> str:
    """Accept the `chaoyang-data` folder itself or a folder that contains it."""
    for candidate in (data_dir, os.path.join(data_dir, "chaoyang-data")):
        if os.path.isfile(os.path.join(candidate, "train.json")):
            return candidate
    raise DataLayoutError(
        f"No Chaoyang label file train.json in {data_dir} (nor in {os.path.join(data_dir, 'chaoyang-data')}).\n"
        f"Expected layout:\n{EXPECTED_LAYOUT}"
    )


def _read_label_file(root: str, part: str) -> list:
    path = os.path.join(root, f"{part}.json")
    if not os.path.isfile(path):
        raise DataLayoutError(f"Missing Chaoyang label file {path}.\nExpected layout:\n{EXPECTED_LAYOUT}")
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataLayoutError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(entries, list):
        raise DataLayoutError(f"{path} must hold a JSON list of {{'name': ..., 'label': ...}} objects.")
    return entries


def read_chaoyang(data_dir: str, protocol: str = DEFAULT_PROTOCOL) -> ImageIndex:
    """Index the Chaoyang images named by `train.json` and `test.json` (extra keys such as `label_A` ignored).

    Entries naming files that do not exist go to `ImageIndex.missing` (the loader's `on_bad_image` policy
    decides), unless the label files have other problems too: then all are named in one error.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown Chaoyang protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
    root = find_root(data_dir)
    paths, labels, groups, official = [], [], [], []
    problems: dict[str, list[str]] = {
        "malformed entries": [],
        "labels out of range 0-3": [],
        "names outside the data root": [],
        "names of missing files": [],
        "names listed more than once": [],
        "names without a slide id (no '-IMG' in the file name)": [],
    }
    seen: set[str] = set()
    missing: list[tuple[str, str]] = []
    for part in OFFICIAL_PARTS:
        for number, entry in enumerate(_read_label_file(root, part)):
            where = f"{part}.json entry {number}"
            name = entry.get("name") if isinstance(entry, dict) else None
            label = entry.get("label") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not isinstance(label, int) or isinstance(label, bool):
                problems["malformed entries"].append(f"{where}: {entry!r}")
                continue
            name = name.replace("\\", "/").removeprefix("./")
            if not 0 <= label < len(CLASS_NAMES):
                problems["labels out of range 0-3"].append(f"{where}: {name} label {label}")
            elif os.path.isabs(name) or ".." in name.split("/"):
                problems["names outside the data root"].append(f"{where}: {name}")
            elif name in seen:
                problems["names listed more than once"].append(f"{where}: {name}")
            elif not os.path.isfile(join_relative(root, name)):
                problems["names of missing files"].append(f"{where}: {name}")
                missing.append((name, f"named by {where}, but the file does not exist"))
            elif slide_id(name) is None:
                problems["names without a slide id (no '-IMG' in the file name)"].append(f"{where}: {name}")
            else:
                seen.add(name)
                paths.append(name)
                labels.append(label)
                groups.append(slide_id(name))
                official.append(part)
    if any(entries for title, entries in problems.items() if title != "names of missing files"):
        raise_if_problems(problems, f"The Chaoyang label files in {root} have problems.")
    _warn_unlisted_files(root, seen)
    if protocol == "official":
        logger.warning(
            "Chaoyang protocol 'official': %d images in %d slides; the official test set shares slides with train, "
            "so this split is NOT group-disjoint (for comparisons with Chaoyang's own benchmark; protocol 'resplit' "
            "is the slide-disjoint default).",
            len(paths),
            len(set(groups)),
        )
    else:
        logger.info("Chaoyang: %d images in %d slides, re-split slide-disjointly.", len(paths), len(set(groups)))
    return ImageIndex(
        root=root,
        class_names=list(CLASS_NAMES),
        paths=paths,
        labels=labels,
        groups=groups,
        group_kind="slide",
        metadata={"official_split": official},
        metadata_features={"official_split": Value("string")},
        predefined_test=[part == "test" for part in official] if protocol == "official" else None,
        summary=f"Chaoyang colorectal patches, protocol {protocol!r}, groups = slides",
        missing=missing,
    )


def _warn_unlisted_files(root: str, listed: set[str]) -> None:
    """Files in train/ or test/ that no label file names are not used; say so instead of dropping them quietly."""
    unlisted = [
        path
        for part in OFFICIAL_PARTS
        if os.path.isdir(os.path.join(root, part))
        for path in walk_files(os.path.join(root, part), f"{part}/")
        if path not in listed
    ]
    if unlisted:
        logger.warning(
            "Chaoyang: %d files under train/ and test/ are not named by train.json/test.json and are not used: %s",
            len(unlisted),
            shown(unlisted),
        )
