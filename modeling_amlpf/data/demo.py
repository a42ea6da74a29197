"""SYNTHETIC H&E-like demo data: generated locally from a fixed seed, cached, never downloaded.

The images are NOT real histology. They imitate four colorectal patterns well enough to exercise the whole
pipeline and to be learnable: pink eosin stroma, white lumens and purple haematoxylin nuclei, with
class-specific morphology that fills the whole tile, so that every view the models see (each 64-pixel crop of a
128-pixel tile, and the global view) shows its class:
  normal        a lattice of small round glands with round lumens, few small nuclei at the gland base;
  hyperplastic  larger glands with wide serrated (star-shaped) lumens, more and larger nuclei;
  adenoma       long parallel tubules crowded with elongated (pencil-shaped) dark nuclei;
  carcinoma     a solid epithelial sheet with small cribriform lumens and many large, dense, pleomorphic nuclei.
Colours follow Beer-Lambert stain mixing with per-patient stain strength (a nuisance that group-disjoint
splits must handle). The classes are imbalanced (128/80/72/40 images, ratio 3.2) and 40 synthetic
"patients" hold 8 images each. Files: `<dir>/<class>/<patient>_<n>.jpg` (JPEG, quality 92) plus `groups.csv`,
`MANIFEST.json` and `VERSION`; the directory is regenerated when incomplete or from another version.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from .scan import cache_dir

logger = logging.getLogger(__name__)

DEMO_CLASS_NAMES = ["normal", "hyperplastic", "adenoma", "carcinoma"]
DEMO_CLASS_COUNTS = (128, 80, 72, 40)
DEMO_IMAGES_PER_PATIENT = 8
DEMO_IMAGE_SIZE = 128
DEMO_SEED = 1234
DEMO_VERSION = "2"
GROUPS_FILE = "groups.csv"

_SIZE = DEMO_IMAGE_SIZE
_YY, _XX = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32)
# Optical density of haematoxylin (Ruifrok & Johnston) and of a pinker eosin, normalised.
_HAEMATOXYLIN = np.array([0.65, 0.70, 0.29], dtype=np.float32) / np.linalg.norm([0.65, 0.70, 0.29])
_EOSIN = np.array([0.05, 0.85, 0.35], dtype=np.float32) / np.linalg.norm([0.05, 0.85, 0.35])


def default_demo_dir() -> str:
    """`$AMLPF_CACHE/demo` or `~/.cache/amlpf/demo`."""
    return cache_dir("demo")


# ----------------------------------------------------------------------------------------------------------
# Drawing primitives (vectorised over the whole tile or over all nuclei at once)
# ----------------------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Zero-mean noise varying over about `_SIZE / cells` pixels (bilinear upsampling of a coarse grid)."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    position = np.linspace(0, cells, _SIZE, dtype=np.float32)
    low = np.minimum(position.astype(int), cells - 1)
    frac = position - low
    rows = coarse[low] * (1 - frac)[:, None] + coarse[low + 1] * frac[:, None]
    return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]


def _polar(cy: float, cx: float, angle: float = 0.0, aspect: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Radius and angle of every pixel around a centre, in a frame stretched `aspect` times along `angle`."""
    dy, dx = _YY - float(cy), _XX - float(cx)
    if angle or aspect != 1.0:
        cos, sin = float(np.cos(angle)), float(np.sin(angle))
        dx, dy = (dx * cos + dy * sin) / float(aspect), dy * cos - dx * sin
    return np.hypot(dx, dy), np.arctan2(dy, dx)


def _distance(cy: float, cx: float) -> np.ndarray:
    return np.hypot(_YY - float(cy), _XX - float(cx))


def _inside(radius: np.ndarray, boundary: np.ndarray | float, edge: float = 1.2) -> np.ndarray:
    """Soft membership in [0, 1] of the region radius < boundary (anti-aliased edge)."""
    return np.clip((boundary - radius) / edge + 0.5, 0.0, 1.0)


def _sample_points(rng: np.random.Generator, region: np.ndarray, density: float) -> np.ndarray:
    """About `density` points per pixel of a boolean region, as (N, 2) float (y, x)."""
    candidates = np.flatnonzero(region)
    count = rng.poisson(density * candidates.size) if candidates.size else 0
    if count == 0:
        return np.zeros((0, 2), dtype=np.float32)
    picked = rng.choice(candidates, size=count)
    jitter = rng.uniform(-0.5, 0.5, size=(count, 2))
    return np.stack([picked // _SIZE, picked % _SIZE], axis=1) + jitter


def _stamp_ellipses(
    canvas: np.ndarray, centres: np.ndarray, axes: np.ndarray, angles: np.ndarray, values: np.ndarray
) -> None:
    """Draw filled soft ellipses (max-blended) into `canvas`; all nuclei in one vectorised pass."""
    if len(centres) == 0:
        return
    reach = int(np.ceil(axes.max())) + 1
    offsets = np.arange(-reach, reach + 1)
    rows = np.rint(centres[:, 0]).astype(int)[:, None, None] + offsets[None, :, None]
    cols = np.rint(centres[:, 1]).astype(int)[:, None, None] + offsets[None, None, :]
    dy = rows - centres[:, 0, None, None]
    dx = cols - centres[:, 1, None, None]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    u = (dx * cos + dy * sin) / axes[:, 0, None, None]
    v = (-dx * sin + dy * cos) / axes[:, 1, None, None]
    edge = np.clip((1.0 - np.sqrt(u * u + v * v)) * axes[:, 1, None, None] + 0.5, 0.0, 1.0)
    weights = edge * values[:, None, None]
    rows, cols = np.broadcast_arrays(rows, cols)
    keep = (rows >= 0) & (rows < _SIZE) & (cols >= 0) & (cols < _SIZE) & (weights > 0)
    np.maximum.at(canvas, (rows[keep], cols[keep]), weights[keep])


def _place_centres(rng: np.random.Generator, count: int, radius: float, margin: float) -> list[tuple[float, float]]:
    """Up to `count` centres at least `2 * radius * 0.9` apart (rejection sampling, a few tries each)."""
    centres: list[tuple[float, float]] = []
    for _ in range(count * 20):
        if len(centres) == count:
            break
        y, x = (float(value) for value in rng.uniform(-margin, _SIZE + margin, size=2))
        if all((y - cy) ** 2 + (x - cx) ** 2 > (1.8 * radius) ** 2 for cy, cx in centres):
            centres.append((y, x))
    return centres


# ----------------------------------------------------------------------------------------------------------
# Class morphologies: each returns epithelium and lumen masks plus nuclei (centres, semi-axes, angles, strength)
# ----------------------------------------------------------------------------------------------------------


class _Tissue:
    """Masks and nuclei of one tile, filled in by a class morphology."""

    def __init__(self) -> None:
        self.epithelium = np.zeros((_SIZE, _SIZE), dtype=np.float32)
        self.lumen = np.zeros((_SIZE, _SIZE), dtype=np.float32)
        self.nuclei: list[tuple[np.ndarray, ...]] = []

    def add_gland(self, distance: np.ndarray, outer: np.ndarray, inner: np.ndarray | float) -> None:
        self.epithelium = np.maximum(self.epithelium, _inside(distance, outer))
        self.lumen = np.maximum(self.lumen, _inside(distance, inner))

    def add_nuclei(self, centres: np.ndarray, length, width, angles, strength) -> None:
        """Ellipses with semi-axes (length, width) along `angles`; scalars broadcast over the centres."""
        count = len(centres)
        axes = np.stack(np.broadcast_arrays(length, width, np.zeros(count))[:2], axis=1)
        columns = (centres, axes, np.broadcast_to(angles, count), np.broadcast_to(strength, count))
        self.nuclei.append(tuple(np.asarray(column, np.float32) for column in columns))


def _lattice(rng: np.random.Generator, spacing: float, jitter: float) -> list[tuple[float, float]]:
    """Centres of a jittered hexagonal lattice covering the tile and a margin around it, so that tissue fills
    every part of the tile (each 64-pixel crop of a 128-pixel tile holds several glands)."""
    offset_y, offset_x = rng.uniform(0, spacing, size=2)
    centres = []
    row_step = spacing * 0.866
    for row in range(-1, int(_SIZE / row_step) + 2):
        shift = (spacing / 2) * (row % 2)
        for column in range(-1, int(_SIZE / spacing) + 2):
            y = offset_y + row * row_step + rng.normal(0, jitter)
            x = offset_x + shift + column * spacing + rng.normal(0, jitter)
            centres.append((float(y), float(x)))
    return centres


def _round_glands(rng: np.random.Generator, tissue: _Tissue, serrated: bool) -> None:
    """Normal: small round glands with round lumens and small sparse basal nuclei. Hyperplastic: larger glands
    with wide star-shaped (serrated) lumens, more and larger nuclei."""
    radius = rng.uniform(12.5, 14.5) if serrated else rng.uniform(9.0, 10.5)
    for cy, cx in _lattice(rng, spacing=2.55 * radius, jitter=0.12 * radius):
        distance, theta = _polar(cy, cx)
        outer = radius * rng.uniform(0.9, 1.1) * (1 + 0.05 * np.sin(2 * theta + rng.uniform(0, 6.3)))
        if serrated:  # star-shaped lumen: a triangle wave of 7-9 teeth around the gland
            teeth = rng.integers(7, 10)
            saw = 4 * np.abs(((teeth * theta / (2 * np.pi) + rng.uniform()) % 1.0) - 0.5) - 1
            tissue.add_gland(distance, outer, 0.62 * outer * (1 + 0.35 * saw))
        else:
            tissue.add_gland(distance, outer, 0.42 * outer)
        basal_band = (distance > 0.72 * outer) & (distance < 0.95 * outer)
        centres = _sample_points(rng, basal_band, 0.12 if serrated else 0.05)
        size = rng.uniform(1.8, 2.2, len(centres)) if serrated else rng.uniform(1.1, 1.4, len(centres))
        orientation = rng.uniform(0, np.pi, len(centres))
        tissue.add_nuclei(centres, size * 1.15, size, orientation, rng.uniform(0.95, 1.15, len(centres)))


def _tubular_glands(rng: np.random.Generator, tissue: _Tissue) -> None:
    """Adenoma: long parallel tubules across the whole tile, crowded with dark pencil-shaped nuclei."""
    minor = rng.uniform(7.0, 8.5)
    angle = rng.uniform(0, np.pi)  # neighbouring crypts run roughly parallel
    normal = np.array([np.cos(angle + np.pi / 2), np.sin(angle + np.pi / 2)])
    spacing = minor * 2.6
    centre = _SIZE / 2
    for k in range(-5, 6):
        shift = k * spacing + rng.normal(0, 1.5)
        cy, cx = centre + shift * normal[1], centre + shift * normal[0]
        distance, theta = _polar(cy, cx, angle + rng.normal(0, 0.05), 12.0)
        outer = minor * (1 + 0.05 * np.sin(3 * theta + rng.uniform(0, 6.3)))
        tissue.add_gland(distance, outer, 0.3 * outer)
        centres = _sample_points(rng, (distance > 0.36 * outer) & (distance < 0.95 * outer), 0.12)
        length = rng.uniform(2.4, 3.0, len(centres))
        width = length * rng.uniform(0.32, 0.42, len(centres))
        orientation = angle + np.pi / 2 + rng.normal(0, 0.2, len(centres))  # perpendicular to the tubule
        tissue.add_nuclei(centres, length, width, orientation, rng.uniform(1.25, 1.45, len(centres)))


def _cribriform_masses(rng: np.random.Generator, tissue: _Tissue) -> None:
    """Carcinoma: a solid sheet of epithelium over the tile (thin stromal strands only), punched by small round
    cribriform lumens, with many large, dense, pleomorphic nuclei."""
    strands = np.sin((_XX * np.cos(a := rng.uniform(0, np.pi)) + _YY * np.sin(a)) * rng.uniform(0.09, 0.13)
                     + 3 * _smooth_noise(rng, 3))
    sheet = np.clip((0.85 - strands) / 0.1, 0.0, 1.0)
    tissue.epithelium = np.maximum(tissue.epithelium, sheet)
    for cy, cx in _lattice(rng, spacing=rng.uniform(17, 21), jitter=4.0):
        hole = _distance(cy, cx)
        tissue.lumen = np.maximum(tissue.lumen, _inside(hole, rng.uniform(2.0, 3.6)) * sheet)
    centres = _sample_points(rng, (sheet > 0.5) & (tissue.lumen < 0.5), 0.07)
    size = rng.uniform(2.3, 3.8, len(centres))
    width = size * rng.uniform(0.55, 1.0, len(centres))
    orientation = rng.uniform(0, np.pi, len(centres))
    tissue.add_nuclei(centres, size, width, orientation, rng.uniform(1.4, 1.9, len(centres)))


_MORPHOLOGY = {
    "normal": lambda rng, tissue: _round_glands(rng, tissue, serrated=False),
    "hyperplastic": lambda rng, tissue: _round_glands(rng, tissue, serrated=True),
    "adenoma": _tubular_glands,
    "carcinoma": _cribriform_masses,
}
# Eosin of stroma and of epithelial cytoplasm per class (desmoplastic carcinoma stroma is paler).
_EOSIN_LEVELS = {
    "normal": (0.45, 0.75),
    "hyperplastic": (0.48, 0.9),
    "adenoma": (0.42, 0.7),
    "carcinoma": (0.36, 0.65),
}


def render_tile(class_name: str, rng: np.random.Generator, stain: tuple[float, float]) -> np.ndarray:
    """One SYNTHETIC 128x128 RGB uint8 tile of `class_name`; `stain` scales (haematoxylin, eosin) strength."""
    tissue = _Tissue()
    _MORPHOLOGY[class_name](rng, tissue)
    stroma_eosin, cytoplasm_eosin = _EOSIN_LEVELS[class_name]
    fibre_angle = rng.uniform(0, np.pi)
    fibres = np.sin((_XX * np.cos(fibre_angle) + _YY * np.sin(fibre_angle)) * 0.9 + 4 * _smooth_noise(rng, 4))
    eosin = stroma_eosin + 0.08 * _smooth_noise(rng, 6) + 0.07 * fibres
    haematoxylin = 0.05 + 0.02 * _smooth_noise(rng, 8)
    # Stromal fibroblasts (thin, elongated) and lymphocytes (small, round, dark) in every class.
    stroma = tissue.epithelium < 0.1
    fibroblasts = _sample_points(rng, stroma, 0.002)
    tissue.add_nuclei(fibroblasts, 2.6, 0.9, rng.uniform(0, np.pi, len(fibroblasts)), 1.0)
    tissue.add_nuclei(_sample_points(rng, stroma, 0.001), 1.2, 1.2, 0.0, 1.5)

    eosin = eosin * (1 - tissue.epithelium) + (cytoplasm_eosin + 0.05 * _smooth_noise(rng, 10)) * tissue.epithelium
    haematoxylin = haematoxylin + 0.12 * tissue.epithelium
    open_space = 1 - 0.93 * tissue.lumen
    eosin, haematoxylin = eosin * open_space, haematoxylin * open_space
    nuclei = np.zeros((_SIZE, _SIZE), dtype=np.float32)
    _stamp_ellipses(nuclei, *(np.concatenate(column) for column in zip(*tissue.nuclei)))
    haematoxylin = np.maximum(haematoxylin, nuclei * (0.85 + 0.15 * rng.random((_SIZE, _SIZE), dtype=np.float32)))
    eosin = eosin * (1 - 0.6 * np.clip(nuclei, 0, 1))
    haematoxylin += 0.03 * rng.standard_normal((_SIZE, _SIZE), dtype=np.float32)
    eosin += 0.03 * rng.standard_normal((_SIZE, _SIZE), dtype=np.float32)
    h_strength, e_strength = (1.3 * float(value) for value in stain)
    density = np.clip(haematoxylin, 0, None)[..., None] * (_HAEMATOXYLIN * h_strength)
    density += np.clip(eosin, 0, None)[..., None] * (_EOSIN * e_strength)
    return np.clip(255.0 * np.exp(-density), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# The cached SYNTHETIC dataset
# ----------------------------------------------------------------------------------------------------------


def demo_plan() -> list[tuple[str, str, str]]:
    """(relative path, class name, patient id) of every SYNTHETIC image, fixed by `DEMO_SEED`."""
    labels = np.repeat(np.arange(len(DEMO_CLASS_NAMES)), DEMO_CLASS_COUNTS)
    labels = np.random.default_rng(DEMO_SEED).permutation(labels)
    plan = []
    for position, label in enumerate(labels):
        patient = f"patient_{position // DEMO_IMAGES_PER_PATIENT:03d}"
        class_name = DEMO_CLASS_NAMES[label]
        plan.append((f"{class_name}/{patient}_{position % DEMO_IMAGES_PER_PATIENT}.jpg", class_name, patient))
    return plan


def _write_demo(directory: str) -> dict[str, int]:
    """Write every SYNTHETIC image plus groups.csv into `directory`; return file sizes by relative path."""
    sizes: dict[str, int] = {}
    patient_stain: dict[str, tuple[float, float]] = {}
    for position, (relative, class_name, patient) in enumerate(demo_plan()):
        if patient not in patient_stain:
            stain_rng = np.random.default_rng([DEMO_SEED, 1, int(patient.rsplit("_", 1)[1])])
            patient_stain[patient] = tuple(stain_rng.uniform(0.82, 1.18, size=2))
        tile = render_tile(class_name, np.random.default_rng([DEMO_SEED, 0, position]), patient_stain[patient])
        target = os.path.join(directory, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        Image.fromarray(tile).save(target, format="JPEG", quality=92, subsampling=0)
        sizes[relative] = os.path.getsize(target)
    with open(os.path.join(directory, GROUPS_FILE), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "group"])
        writer.writerows((relative, patient) for relative, _, patient in demo_plan())
    return sizes


def demo_is_complete(directory: str) -> bool:
    """True when `directory` holds this version's SYNTHETIC data with every file at its recorded size."""
    try:
        with open(os.path.join(directory, "VERSION"), encoding="utf-8") as handle:
            if handle.read().strip() != DEMO_VERSION:
                return False
        with open(os.path.join(directory, "MANIFEST.json"), encoding="utf-8") as handle:
            files = json.load(handle)["files"]
    except (OSError, ValueError, KeyError):
        return False
    return os.path.isfile(os.path.join(directory, GROUPS_FILE)) and all(
        os.path.isfile(path := os.path.join(directory, *relative.split("/"))) and os.path.getsize(path) == size
        for relative, size in files.items()
    )


def ensure_demo_data(directory: str | None = None) -> str:
    """Generate the SYNTHETIC demo set into `directory` (default: the cache) unless it is already complete.

    Generation goes to a temporary sibling folder that is renamed into place, so concurrent processes never
    see half a dataset. An existing folder is replaced only if it is an older or damaged demo set.
    """
    directory = os.path.abspath(directory or default_demo_dir())
    if demo_is_complete(directory):
        return directory
    if os.path.isdir(directory) and os.listdir(directory) and not os.path.isfile(os.path.join(directory, "VERSION")):
        raise FileExistsError(
            f"{directory} is not empty and is not an amlpf demo folder (no VERSION file); "
            "pass another data_dir for the SYNTHETIC demo data."
        )
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    logger.info("Generating the SYNTHETIC demo data set (not real histology) in %s.", directory)
    staging = tempfile.mkdtemp(prefix=".demo-", dir=parent)
    try:
        sizes = _write_demo(staging)
        with open(os.path.join(staging, "README.txt"), "w", encoding="utf-8") as handle:
            handle.write(
                "SYNTHETIC demo data generated by amlpf (modeling_amlpf.data.demo). These are NOT real\n"
                "histology images; they only imitate H&E colours and four gland patterns for testing.\n"
            )
        manifest = {
            "synthetic": True,
            "version": DEMO_VERSION,
            "seed": DEMO_SEED,
            "class_names": DEMO_CLASS_NAMES,
            "files": sizes,
        }
        with open(os.path.join(staging, "MANIFEST.json"), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1, sort_keys=True)
        with open(os.path.join(staging, "VERSION"), "w", encoding="utf-8") as handle:
            handle.write(DEMO_VERSION + "\n")
        if os.path.isdir(directory):
            if demo_is_complete(directory):  # another process finished first
                return directory
            shutil.rmtree(directory)
        try:
            os.rename(staging, directory)
        except OSError:
            if not demo_is_complete(directory):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
