"""BreaKHis v1 (breast; 8 subtypes in 2 superclasses, 4 magnifications), read from its folder tree.

Groups are patients, keyed by the NUMERIC ROOT of the slide id in the patient folder name
(`SOB_B_A_14-22549AB` -> `22549`): some ids share a root with different letter suffixes across classes
(21998AB vs 21998CD) and one patient appears under two subtypes, so grouping by the root is the
conservative choice against leakage. Paths are relative to the `breast` folder, whatever folder the user
points at, so split files stay valid between copies.
"""

from __future__ import annotations

import logging
import os
import re

from datasets import ClassLabel, Value

from ..index import DataLayoutError, ImageIndex, list_dir, raise_if_problems, shown, split_image_files

logger = logging.getLogger(__name__)

# (folder, superclass, code) in the canonical 8-class order.
SUBTYPES = [
    ("adenosis", "benign", "A"),
    ("fibroadenoma", "benign", "F"),
    ("phyllodes_tumor", "benign", "PT"),
    ("tubular_adenoma", "benign", "TA"),
    ("ductal_carcinoma", "malignant", "DC"),
    ("lobular_carcinoma", "malignant", "LC"),
    ("mucinous_carcinoma", "malignant", "MC"),
    ("papillary_carcinoma", "malignant", "PC"),
]
SUBTYPE_CLASS_NAMES = [folder.replace("_", " ") for folder, _, _ in SUBTYPES]
BINARY_CLASS_NAMES = ["benign", "malignant"]
MAGNIFICATIONS = ("40X", "100X", "200X", "400X")
TASKS = ("8class", "binary")
FOLDER_NAME = "BreaKHis_v1"  # the name the download unpacks to
EXPECTED_LAYOUT = """BreaKHis_v1/histology_slides/breast/
  {benign,malignant}/SOB/<subtype>/<patient folder>/<mag>/<file>.png
  subtype: adenosis fibroadenoma phyllodes_tumor tubular_adenoma | ductal_carcinoma lobular_carcinoma
           mucinous_carcinoma papillary_carcinoma
  patient folder e.g. SOB_B_A_14-22549AB; mag: 40X 100X 200X 400X
  (a doubled root BreaKHis_v1/BreaKHis_v1/... is accepted; data_dir may be BreaKHis_v1, its parent or .../breast)"""

_ROOT_CANDIDATES = (
    (),
    ("breast",),
    ("histology_slides", "breast"),
    ("BreaKHis_v1", "histology_slides", "breast"),
    ("BreaKHis_v1", "BreaKHis_v1", "histology_slides", "breast"),
)
_NUMERIC_ROOT = re.compile(r"-(\d+)[^-]*$")
_SUBTYPE_INFO = {folder: (position, superclass) for position, (folder, superclass, _) in enumerate(SUBTYPES)}


def find_breast_root(data_dir: str) -> str:
    """The `breast` folder (holding benign/ and malignant/) at or below `data_dir`."""
    for parts in _ROOT_CANDIDATES:
        candidate = os.path.join(data_dir, *parts)
        if os.path.isdir(os.path.join(candidate, "benign")) and os.path.isdir(os.path.join(candidate, "malignant")):
            return os.path.abspath(candidate)
    raise DataLayoutError(
        f"No BreaKHis 'breast' folder (with benign/ and malignant/) found at or below {data_dir}.\n"
        f"Expected layout:\n{EXPECTED_LAYOUT}"
    )


def normalize_magnification(value: str | int | None) -> str | None:
    """'40x', 40 and '40X' all mean '40X'; None keeps every magnification."""
    if value is None:
        return None
    text = str(value).strip().upper()
    text = text if text.endswith("X") else f"{text}X"
    if text not in MAGNIFICATIONS:
        choices = ", ".join(MAGNIFICATIONS)
        raise ValueError(f"Unknown BreaKHis magnification {value!r}; choose one of {choices} or None.")
    return text


def patient_root(folder: str) -> str | None:
    """Numeric root of the slide id in a patient folder name (`SOB_M_DC_14-2980AB` -> `2980`)."""
    match = _NUMERIC_ROOT.search(folder)
    return match.group(1) if match else None


def _walk_tree(
    root: str, magnification: str | None, problems: dict[str, list[str]], stray: list[str], non_images: list[str]
):
    """Yield (relative path, subtype folder, superclass, patient folder, magnification) per image file.

    Layout problems are appended to `problems`; entries that are not inside a magnification folder to `stray`;
    files in magnification folders whose suffix is not an image format to `non_images`.
    """
    for superclass in BINARY_CLASS_NAMES:
        superclass_dir = os.path.join(root, superclass)
        has_sob = os.path.isdir(os.path.join(superclass_dir, "SOB"))
        prefix = f"{superclass}/SOB/" if has_sob else f"{superclass}/"
        subtype_parent = os.path.join(superclass_dir, "SOB") if has_sob else superclass_dir
        subtype_folders, files = list_dir(subtype_parent)
        stray += [prefix + name for name in files]
        for subtype in subtype_folders:
            if subtype not in _SUBTYPE_INFO:
                problems["unknown subtype folders"].append(prefix + subtype)
                continue
            if _SUBTYPE_INFO[subtype][1] != superclass:
                problems["subtype folders under the wrong superclass"].append(prefix + subtype)
                continue
            patient_folders, files = list_dir(os.path.join(subtype_parent, subtype))
            stray += [f"{prefix}{subtype}/{name}" for name in files]
            for patient in patient_folders:
                patient_rel = f"{prefix}{subtype}/{patient}"
                if patient_root(patient) is None:
                    problems["patient folders without a numeric slide id"].append(patient_rel)
                    continue
                mag_folders, files = list_dir(os.path.join(subtype_parent, subtype, patient))
                stray += [f"{patient_rel}/{name}" for name in files]
                for mag in mag_folders:
                    if mag not in MAGNIFICATIONS:
                        problems["unknown magnification folders"].append(f"{patient_rel}/{mag}")
                        continue
                    if magnification is not None and mag != magnification:
                        continue
                    sub_folders, files = list_dir(os.path.join(subtype_parent, subtype, patient, mag))
                    stray += [f"{patient_rel}/{mag}/{name}/" for name in sub_folders]
                    image_files, others = split_image_files(files)
                    non_images += [f"{patient_rel}/{mag}/{name}" for name in others]
                    for name in image_files:
                        yield f"{patient_rel}/{mag}/{name}", subtype, superclass, patient, mag


def read_breakhis(data_dir: str, task: str = "8class", magnification: str | int | None = None) -> ImageIndex:
    """Index BreaKHis images; `task` is "8class" (subtypes) or "binary" (benign 0 / malignant 1)."""
    if task not in TASKS:
        raise ValueError(f"Unknown BreaKHis task {task!r}; choose one of {', '.join(TASKS)}.")
    wanted_magnification = normalize_magnification(magnification)
    root = find_breast_root(data_dir)
    problems: dict[str, list[str]] = {
        "unknown subtype folders": [],
        "subtype folders under the wrong superclass": [],
        "patient folders without a numeric slide id": [],
        "unknown magnification folders": [],
    }
    stray: list[str] = []
    non_images: list[str] = []
    names = ("path", "label", "group", "magnification", "subtype", "superclass", "binary_label", "patient_id")
    columns: dict[str, list] = {name: [] for name in names}
    for path, subtype, superclass, patient, mag in _walk_tree(root, wanted_magnification, problems, stray, non_images):
        subtype_label = _SUBTYPE_INFO[subtype][0]
        binary_label = BINARY_CLASS_NAMES.index(superclass)
        row = (
            path,
            subtype_label if task == "8class" else binary_label,
            patient_root(patient),
            mag,
            SUBTYPE_CLASS_NAMES[subtype_label],
            superclass,
            binary_label,
            patient.rsplit("_", 1)[-1],
        )
        for name, value in zip(names, row):
            columns[name].append(value)
    context = f"The BreaKHis tree at {root} does not match the expected layout."
    raise_if_problems(problems, context, f"Expected layout:\n{EXPECTED_LAYOUT}")
    if stray:
        logger.warning("BreaKHis: %d entries outside magnification folders are not used: %s", len(stray), shown(stray))
    if not columns["path"]:
        where = f" at magnification {wanted_magnification}" if wanted_magnification else ""
        raise DataLayoutError(f"No BreaKHis images found under {root}{where}.\nExpected layout:\n{EXPECTED_LAYOUT}")
    return ImageIndex(
        root=root,
        class_names=list(SUBTYPE_CLASS_NAMES if task == "8class" else BINARY_CLASS_NAMES),
        paths=columns.pop("path"),
        labels=columns.pop("label"),
        groups=columns.pop("group"),
        group_kind="patient (numeric slide-id root)",
        metadata=columns,
        metadata_features={
            "magnification": Value("string"),
            "subtype": Value("string"),
            "superclass": Value("string"),
            "binary_label": ClassLabel(names=list(BINARY_CLASS_NAMES)),
            "patient_id": Value("string"),
        },
        summary=f"BreaKHis v1 breast histology, task {task!r}, magnification {wanted_magnification or 'all'}, "
        "groups = patients by numeric slide-id root",
        non_images=non_images,
    )
