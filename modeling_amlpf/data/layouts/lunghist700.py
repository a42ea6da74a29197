"""LungHist700 (lung; 3 or 7 classes, 20x/40x), images joined to `data.csv` for patient ids.

`image_id` alone is not unique, so images are matched to csv rows on (superclass, subclass, resolution,
image_id). The 3-class order is AMLPF-CLIP's (adenocarcinoma, squamous cell carcinoma, normal); the
dataset's own code orders aca, nor, scc, so never mix the two. The 7-class order is the folders sorted.
A `data.csv` row whose image is absent goes to `ImageIndex.missing` with the file name it should have (the
loader's `on_bad_image` policy decides), unless the files have other problems too: then all are named at once.
"""

from __future__ import annotations

import csv
import logging
import os
import re

from datasets import Value

from ..index import DataLayoutError, ImageIndex, list_dir, nfc, raise_if_problems, split_image_files

logger = logging.getLogger(__name__)

FOLDERS = ["aca_bd", "aca_md", "aca_pd", "nor", "scc_bd", "scc_md", "scc_pd"]
THREE_CLASS_NAMES = ["adenocarcinoma", "squamous cell carcinoma", "normal"]
_SUPERCLASS_TO_THREE = {"aca": 0, "scc": 1, "nor": 2}
TASKS = ("3class", "7class")
RESOLUTIONS = ("20x", "40x")
CSV_COLUMNS = ("superclass", "subclass", "resolution", "image_id", "patient_id")
FOLDER_NAME = "LungHist700"  # the name the download unpacks to
EXPECTED_LAYOUT = """LungHist700/
  data.csv   columns superclass (aca|scc|nor), subclass (bd|md|pd, empty for nor), resolution (20x|40x),
             image_id, patient_id
  images/{aca_bd,aca_md,aca_pd,nor,scc_bd,scc_md,scc_pd}/<folder>_<resolution>_<image_id>.jpg
             e.g. images/aca_bd/aca_bd_20x_901.jpg, images/nor/nor_40x_1.jpg"""

_FILE_NAME = re.compile(
    r"^(?P<folder>[a-z]+(?:_[a-z]{2})?)_(?P<resolution>\d+x)_(?P<image_id>[^.]+)\.[a-z]+$", re.IGNORECASE
)

RowKey = tuple[str, str, str, str]


def _normalize_id(value: str) -> str:
    """'0901', '901' and '901.0' (a csv written by pandas) are the same id."""
    text = nfc(value.strip())
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _normalize_subclass(value: str) -> str:
    text = nfc(value.strip().lower())
    return "" if text in ("", "nan", "none", "null") else text


def find_root(data_dir: str) -> str:
    """Accept the `LungHist700` folder itself or a folder that contains it."""
    for candidate in (data_dir, os.path.join(data_dir, "LungHist700")):
        if os.path.isfile(os.path.join(candidate, "data.csv")):
            return os.path.abspath(candidate)
    raise DataLayoutError(f"No LungHist700 data.csv in {data_dir}.\nExpected layout:\n{EXPECTED_LAYOUT}")


def _read_csv(path: str) -> tuple[dict[RowKey, str], dict[RowKey, int]]:
    """Map each (superclass, subclass, resolution, image_id) key to its patient id, and to its line number."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = [name.strip() for name in reader.fieldnames or []]
        missing = [column for column in CSV_COLUMNS if column not in fields]
        if missing:
            raise DataLayoutError(f"{path} lacks the columns {', '.join(missing)} (found: {', '.join(fields)}).")
        reader.fieldnames = fields
        patients: dict[RowKey, str] = {}
        lines: dict[RowKey, int] = {}
        duplicates = []
        for line, row in enumerate(reader, start=2):
            key = (
                nfc((row["superclass"] or "").strip().lower()),
                _normalize_subclass(row["subclass"] or ""),
                nfc((row["resolution"] or "").strip().lower()),
                _normalize_id(row["image_id"] or ""),
            )
            if key in patients:
                duplicates.append(f"line {line}: {key}")
            patients[key] = _normalize_id(row["patient_id"] or "")
            lines[key] = line
    title = "rows repeating a (superclass, subclass, resolution, image_id) key"
    raise_if_problems({title: duplicates}, f"{path} has problems.")
    return patients, lines


def expected_path(key: RowKey, suffix: str = ".jpg") -> str:
    """Where the image of a data.csv row lives: `images/<folder>/<folder>_<resolution>_<image_id>.jpg`."""
    superclass, subclass, resolution, image_id = key
    folder = f"{superclass}_{subclass}" if subclass else superclass
    return f"images/{folder}/{folder}_{resolution}_{image_id}{suffix}"


def _list_images(images_dir: str) -> tuple[dict[RowKey, str], dict[str, list[str]], list[str]]:
    """Map each image's key to its path relative to the data root; collect naming problems and the files
    skipped because their suffix is not an image format."""
    folders, _ = list_dir(images_dir)
    problems: dict[str, list[str]] = {
        "unknown class folders": [f"images/{name}" for name in folders if name not in FOLDERS],
        "missing class folders": [f"images/{name}" for name in FOLDERS if name not in folders],
        "file names not <folder>_<resolution>_<image_id>.<ext>": [],
        "images with the same (class, resolution, image_id)": [],
    }
    keys: dict[RowKey, str] = {}
    non_images: list[str] = []
    for folder in FOLDERS:
        if folder not in folders:
            continue
        superclass, _, subclass = folder.partition("_")
        files, others = split_image_files(list_dir(os.path.join(images_dir, folder))[1])
        non_images += [f"images/{folder}/{name}" for name in others]
        for name in files:
            match = _FILE_NAME.match(name)
            if match is None or match["folder"].lower() != folder:
                problems["file names not <folder>_<resolution>_<image_id>.<ext>"].append(f"images/{folder}/{name}")
                continue
            key = (superclass, subclass, match["resolution"].lower(), _normalize_id(match["image_id"]))
            if key in keys:
                clash = f"{keys[key]} and images/{folder}/{name}"
                problems["images with the same (class, resolution, image_id)"].append(clash)
            keys[key] = f"images/{folder}/{name}"
    return keys, problems, non_images


def read_lunghist700(data_dir: str, task: str = "3class", resolution: str | None = None) -> ImageIndex:
    """Index LungHist700; `task` "3class" (AMLPF order) or "7class" (folders sorted); optional resolution filter."""
    if task not in TASKS:
        raise ValueError(f"Unknown LungHist700 task {task!r}; choose one of {', '.join(TASKS)}.")
    wanted_resolution = None if resolution is None else str(resolution).strip().lower()
    if wanted_resolution is not None and wanted_resolution not in RESOLUTIONS:
        choices = ", ".join(RESOLUTIONS)
        raise ValueError(f"Unknown LungHist700 resolution {resolution!r}; choose one of {choices} or None.")
    root = find_root(data_dir)
    images_dir = os.path.join(root, "images")
    if not os.path.isdir(images_dir):
        raise DataLayoutError(f"No images/ folder in {root}.\nExpected layout:\n{EXPECTED_LAYOUT}")
    patients, csv_lines = _read_csv(os.path.join(root, "data.csv"))
    image_keys, problems, non_images = _list_images(images_dir)
    problems["images without a data.csv row"] = [path for key, path in image_keys.items() if key not in patients]
    missing = [
        (
            expected_path(key),
            f"data.csv line {csv_lines[key]} (superclass={key[0]} subclass={key[1] or '(empty)'} "
            f"resolution={key[2]} image_id={key[3]}) has no image file",
        )
        for key in patients
        if key not in image_keys and wanted_resolution in (None, key[2])
    ]
    if any(problems.values()):
        problems["data.csv rows without an image (expected file)"] = [f"{reason}: {path}" for path, reason in missing]
        context = f"The LungHist700 files in {root} do not match."
        raise_if_problems(problems, context, f"Expected layout:\n{EXPECTED_LAYOUT}")
    rows = sorted((path, key) for key, path in image_keys.items() if wanted_resolution in (None, key[2]))
    if not rows:
        raise DataLayoutError(f"No LungHist700 images at resolution {wanted_resolution} in {images_dir}.")
    class_names = THREE_CLASS_NAMES if task == "3class" else FOLDERS
    labels = [
        _SUPERCLASS_TO_THREE[key[0]] if task == "3class" else FOLDERS.index("_".join(filter(None, key[:2])))
        for _, key in rows
    ]
    return ImageIndex(
        root=root,
        class_names=list(class_names),
        paths=[path for path, _ in rows],
        labels=labels,
        groups=[patients[key] for _, key in rows],
        group_kind="patient",
        metadata={
            "resolution": [key[2] for _, key in rows],
            "superclass": [key[0] for _, key in rows],
            "subclass": [key[1] for _, key in rows],
        },
        metadata_features={name: Value("string") for name in ("resolution", "superclass", "subclass")},
        summary=f"LungHist700 lung histology, task {task!r}, resolution {wanted_resolution or 'all'}, "
        "groups = patients",
        missing=missing,
        non_images=non_images,
    )
