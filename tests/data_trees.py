"""Builders of small look-alike trees of each dataset layout, for the data tests and the training tests.

Every builder writes tiny images (32x32 by default; the loader warns below 32 px) whose colour depends on the
class, so that a model can learn them, and returns a `Tree` saying what was written: the `data_dir` to pass to
`load_histo_dataset`, the class names in canonical order, and the label and group of every image keyed by the
path the loader reports (relative to the data root). Everything is deterministic.

    from data_trees import make_imagefolder_tree
    tree = make_imagefolder_tree(tmp_path / "folder", {"tumour": 12, "normal": 6}, images_per_group=3)
    dd = load_histo_dataset("imagefolder", tree.data_dir, groups_csv=str(tree.groups_csv))

Helpers at the end write the awkward files real downloads contain: truncated JPEGs, zero-byte and
non-image files, OS clutter (`.DS_Store`, `Thumbs.db`, `desktop.ini`, AppleDouble `._x`), and images in
CMYK, RGBA, L and 16-bit modes.
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import json
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image


@dataclasses.dataclass
class Tree:
    """What a builder wrote.

    Attributes:
        data_dir: the folder to pass as `data_dir`.
        class_names: canonical class names, in label order.
        labels: label of every image, keyed by its path relative to the data root.
        groups: group (patient/slide id) of every image, same keys.
        extra: per-image metadata columns (e.g. "magnification"), each keyed like `labels`.
        groups_csv: the `path,group` csv of an image folder tree, else None.
    """

    data_dir: Path
    class_names: list[str]
    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    groups: dict[str, str] = dataclasses.field(default_factory=dict)
    extra: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    groups_csv: Path | None = None

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels.values())
        return {name: counts.get(label, 0) for label, name in enumerate(self.class_names)}

    def add(self, relative_path: str, label: int, group: str, **extra: str) -> None:
        self.labels[relative_path] = label
        self.groups[relative_path] = group
        for column, value in extra.items():
            self.extra.setdefault(column, {})[relative_path] = value


def class_colour(label: int, num_classes: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour per class (hues evenly spaced)."""
    red, green, blue = colorsys.hsv_to_rgb(label / max(1, num_classes), 0.7, 0.85)
    return int(red * 255), int(green * 255), int(blue * 255)


def write_image(path: Path | str, label: int = 0, num_classes: int = 1, size: int = 32) -> Path:
    """Write a class-coloured RGB image with a little deterministic noise; format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    pixels = np.array(class_colour(label, num_classes), dtype=np.int16) + rng.integers(-12, 13, size=(size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return path


# ----------------------------------------------------------------------------------------------------------
# Layout look-alikes
# ----------------------------------------------------------------------------------------------------------


def make_imagefolder_tree(
    root: Path | str,
    class_counts: dict[str, int] | None = None,
    *,
    images_per_group: int = 3,
    write_groups_csv: bool = True,
    size: int = 32,
    suffix: str = ".png",
) -> Tree:
    """`<root>/<class>/<group>_<n><suffix>` plus `groups.csv` (path,group) when `write_groups_csv`.

    Class order of the tree is the sorted folder names (what the loader uses without `class_names`).
    Groups hold `images_per_group` images each and never mix classes.
    """
    root = Path(root)
    class_counts = class_counts or {"alpha": 9, "beta": 6, "gamma": 6}
    names = sorted(class_counts)
    tree = Tree(data_dir=root, class_names=names)
    for label, name in enumerate(names):
        for number in range(class_counts[name]):
            group = f"{name}-g{number // images_per_group}"
            relative = f"{name}/{group}_{number}{suffix}"
            write_image(root / relative, label, len(names), size)
            tree.add(relative, label, group)
    if write_groups_csv:
        tree.groups_csv = root / "groups.csv"
        with open(tree.groups_csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "group"])
            writer.writerows(sorted(tree.groups.items()))
    return tree


CHAOYANG_CLASSES = ["normal", "serrated", "adenocarcinoma", "adenoma"]
# Slide ids as in the real data: plain, with "_" and with "-" (the "-" ones must not be cut at the dash).
CHAOYANG_SLIDES = ["535940", "537688_2", "538844-2", "540012", "541777_1", "542630-3", "543001", "544150-1"]


def make_chaoyang_tree(root: Path | str, *, images_per_slide_and_class: int = 2, size: int = 32) -> Tree:
    """`chaoyang-data/` with train/, test/, train.json (with label_A/B/C votes) and test.json.

    Train uses every slide in `CHAOYANG_SLIDES` except the last; test uses the last five slides, so the
    official split shares slides 4-7 with train (as the real one does) and slide 8 is test-only.
    Slides hold several classes. `extra["official_split"]` records each image's official part.
    """
    root = Path(root) / "chaoyang-data"
    tree = Tree(data_dir=root, class_names=list(CHAOYANG_CLASSES))
    parts = {"train": CHAOYANG_SLIDES[:-1], "test": CHAOYANG_SLIDES[-5:]}
    counter = 0
    for part, slides in parts.items():
        entries = []
        for slide_number, slide in enumerate(slides):
            for label in range(len(CHAOYANG_CLASSES)):
                if (slide_number + label) % 4 == 3:  # not every slide holds every class
                    continue
                for _ in range(images_per_slide_and_class):
                    counter += 1
                    relative = f"{part}/{slide}-IMG{counter:03d}x{label:03d}-{label}.JPG"
                    write_image(root / relative, label, len(CHAOYANG_CLASSES), size)
                    entry = {"name": relative, "label": label}
                    if part == "train":
                        entry.update(label_A=label, label_B=label, label_C=(label + 1) % 4)
                    entries.append(entry)
                    tree.add(relative, label, slide, official_split=part)
        (root / f"{part}.json").write_text(json.dumps(entries, indent=1))
    return tree


BREAKHIS_SUBTYPES = [
    ("adenosis", "B", "A"),
    ("fibroadenoma", "B", "F"),
    ("phyllodes_tumor", "B", "PT"),
    ("tubular_adenoma", "B", "TA"),
    ("ductal_carcinoma", "M", "DC"),
    ("lobular_carcinoma", "M", "LC"),
    ("mucinous_carcinoma", "M", "MC"),
    ("papillary_carcinoma", "M", "PC"),
]
BREAKHIS_CLASSES = [folder.replace("_", " ") for folder, _, _ in BREAKHIS_SUBTYPES]


def breakhis_patients(patients_per_subtype: int = 3) -> list[tuple[int, str, str]]:
    """(subtype label, patient folder name, expected group) for the look-alike tree.

    Slide ids are unique per folder except two planted cases: fibroadenoma `21998AB` and ductal carcinoma
    `21998CD` share the numeric root 21998, and slide `12204` appears under lobular and mucinous carcinoma.
    """
    patients = []
    for label, (_, letter, code) in enumerate(BREAKHIS_SUBTYPES):
        for number in range(patients_per_subtype):
            slide = f"{10000 + 100 * label + number}{'AB' if number % 2 else ''}"
            if (code, number) == ("F", 0):
                slide = "21998AB"
            elif (code, number) == ("DC", 0):
                slide = "21998CD"
            elif (code, number) in (("LC", 0), ("MC", 0)):
                slide = "12204"
            group = "".join(character for character in slide if character.isdigit())
            patients.append((label, f"SOB_{letter}_{code}_14-{slide}", group))
    return patients


def make_breakhis_tree(
    root: Path | str,
    *,
    doubled_root: bool = False,
    patients_per_subtype: int = 3,
    images_per_magnification: int = 2,
    magnifications: tuple[str, ...] = ("40X", "100X", "200X", "400X"),
    size: int = 32,
) -> Tree:
    """`BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<patient>/<mag>/<file>.png`.

    With `doubled_root` the tree sits under `BreaKHis_v1/BreaKHis_v1/...` as some copies unpack. `data_dir`
    is the outer `BreaKHis_v1`; paths (keys) are relative to the `breast` folder, as the loader reports them.
    `extra` holds "magnification" and "superclass" per image.
    """
    outer = Path(root) / "BreaKHis_v1"
    breast = (outer / "BreaKHis_v1" if doubled_root else outer) / "histology_slides" / "breast"
    tree = Tree(data_dir=outer, class_names=list(BREAKHIS_CLASSES))
    for label, patient, group in breakhis_patients(patients_per_subtype):
        folder, letter, code = BREAKHIS_SUBTYPES[label]
        superclass = "benign" if letter == "B" else "malignant"
        slide = patient.split("-", 1)[1]
        for magnification in magnifications:
            for sequence in range(1, images_per_magnification + 1):
                name = f"SOB_{letter}_{code}-14-{slide}-{magnification[:-1]}-{sequence:03d}.png"
                relative = f"{superclass}/SOB/{folder}/{patient}/{magnification}/{name}"
                write_image(breast / relative, label, len(BREAKHIS_CLASSES), size)
                tree.add(relative, label, group, magnification=magnification, superclass=superclass)
    return tree


LUNG_FOLDERS = ["aca_bd", "aca_md", "aca_pd", "nor", "scc_bd", "scc_md", "scc_pd"]
LUNG_THREE_CLASSES = ["adenocarcinoma", "squamous cell carcinoma", "normal"]


def make_lunghist700_tree(root: Path | str, *, patients: int = 6, images_per_folder: int = 4, size: int = 32) -> Tree:
    """`LungHist700/data.csv` and `images/<folder>/<folder>_<res>_<id>.jpg`, 3-class labels in the tree.

    Image ids restart at 1 in every folder and resolution, so `image_id` alone repeats across classes (as in
    the real csv). Patients are dealt round-robin, so most patients hold several classes.
    `extra` holds "resolution" and "folder" per image.
    """
    root = Path(root) / "LungHist700"
    tree = Tree(data_dir=root, class_names=list(LUNG_THREE_CLASSES))
    rows = []
    dealt = 0
    for folder in LUNG_FOLDERS:
        superclass, _, subclass = folder.partition("_")
        label = {"aca": 0, "scc": 1, "nor": 2}[superclass]
        for number in range(images_per_folder):
            resolution = "20x" if number % 2 == 0 else "40x"
            image_id = number // 2 + 1
            relative = f"images/{folder}/{folder}_{resolution}_{image_id}.jpg"
            write_image(root / relative, label, 3, size)
            patient = str(dealt % patients + 1)
            dealt += 1
            rows.append([superclass, subclass, resolution, image_id, patient])
            tree.add(relative, label, patient, resolution=resolution, folder=folder)
    with open(root / "data.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["superclass", "subclass", "resolution", "image_id", "patient_id"])
        writer.writerows(rows)
    return tree


# ----------------------------------------------------------------------------------------------------------
# Awkward files found in real downloads
# ----------------------------------------------------------------------------------------------------------


def write_truncated_jpeg(path: Path | str, size: int = 64, keep: float = 0.6) -> Path:
    """A JPEG cut after `keep` of its bytes (opens fine, fails on decode)."""
    path = Path(path)
    write_image(path.with_suffix(".tmp.jpg"), size=size)
    data = path.with_suffix(".tmp.jpg").read_bytes()
    path.with_suffix(".tmp.jpg").unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_zero_byte(path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_non_image(path: Path | str) -> Path:
    """Text saved under an image name (e.g. an HTML error page saved as .png)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html><body>404 Not Found</body></html>\n")
    return path


def add_os_clutter(folder: Path | str, image_name: str = "x.png") -> list[Path]:
    """Write `.DS_Store`, `Thumbs.db`, `desktop.ini` and an AppleDouble `._<image_name>` (not an image)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        ".DS_Store": b"\x00\x00\x00\x01Bud1\x00",
        "Thumbs.db": b"\xd0\xcf\x11\xe0junk",
        "desktop.ini": b"[.ShellClassInfo]\r\n",
        f"._{image_name}": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def write_mode_image(path: Path | str, mode: str, size: int = 32) -> np.ndarray:
    """Write an image in an awkward mode and return the 8-bit RGB pixels a faithful decoder must give.

    Modes: "CMYK" (JPEG), "RGBA" (PNG, left half fully transparent -> white), "L" (PNG) and "I;16" (PNG,
    a 16-bit gradient whose 8-bit version is value / 257).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 1, size * size).reshape(size, size)
    if mode == "CMYK":
        rgb = np.zeros((size, size, 3), dtype=np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 60, (ramp * 255).astype(np.uint8)
        Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=100)
        return rgb
    if mode == "RGBA":
        rgba = np.zeros((size, size, 4), dtype=np.uint8)
        rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 30, 120, 200, 255
        rgba[:, : size // 2, 3] = 0
        Image.fromarray(rgba).save(path, format="PNG")
        expected = rgba[..., :3].copy()
        expected[:, : size // 2] = 255
        return expected
    if mode == "L":
        gray = (ramp * 255).astype(np.uint8)
        Image.fromarray(gray).save(path, format="PNG")
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "I;16":
        values = (ramp * 65535).astype(np.uint16)
        Image.fromarray(values).save(path, format="PNG")
        return np.repeat(np.rint(values / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    raise ValueError(f"unsupported mode {mode}")


def write_declared_png(path: Path | str, width: int, height: int) -> Path:
    """A PNG whose header declares `width` x `height` but whose data holds one short row: a few hundred bytes
    that claim any size (a decompression bomb's header). Only a reader that decodes pixels notices the rest is
    missing."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    data = zlib.compress(b"\x00" + b"\x80" * 3 * min(width, 64))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def write_strip(path: Path | str, width: int, height: int) -> Path:
    """A real image of any shape (smooth noise, so it compresses to a few KB): 1x5000, 5000x1, 700x460 ..."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(width * 7919 + height)
    coarse = rng.integers(0, 256, (max(1, height // 64) + 1, max(1, width // 64) + 1, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(path)
    return path
