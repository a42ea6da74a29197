"""Where a WSInfer export's tile geometry comes from: the spacing (micrometres per pixel) and the tile size.

The spacing is never guessed. It is the `--spacing_um_px` the user passes or, when the checkpoint's
`split.json` names a dataset whose spacing is documented, that documented value with its source named. The tile
size defaults to the size of the images the model was trained on, read from the training images that the
checkpoint's `split.json` lists (square images of one size; anything else needs `--patch_size_pixels`).
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data.index import join_relative
from ..utils import UserError

SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class DocumentedSpacing:
    """A dataset's spacing as its documentation states it (None: not documented), and where that is written."""

    spacing_um_px: float | None
    source: str


_BREAKHIS_NONE = (
    "the BreaKHis release page (web.inf.ufpr.br/vri/databases-software/breast-cancer-histopathological-database-"
    "breakhis) states magnifications and the image size (700x460 pixels), no spacing"
)

_LUNG_NONE = "no spacing stated by the LungHist700 release checked for this table (it names the objective only)"

# (dataset, option value: BreaKHis magnification / LungHist700 resolution / None) -> documented spacing.
DOCUMENTED_SPACINGS: dict[tuple[str, str | None], DocumentedSpacing] = {
    ("breakhis", "40X"): DocumentedSpacing(
        0.25,
        "kaiko.ai eva benchmark, BreakHis dataset page (https://kaiko-ai.github.io/eva/main/datasets/breakhis): "
        "'Magnification (μm/px) 40x (0.25)'",
    ),
    ("breakhis", "100X"): DocumentedSpacing(None, _BREAKHIS_NONE),
    ("breakhis", "200X"): DocumentedSpacing(None, _BREAKHIS_NONE),
    ("breakhis", "400X"): DocumentedSpacing(None, _BREAKHIS_NONE),
    ("chaoyang", None): DocumentedSpacing(None, "no spacing stated by the Chaoyang release checked for this table"),
    ("demo", None): DocumentedSpacing(None, "synthetic images (modeling_amlpf.data.demo) have no physical spacing"),
    ("lunghist700", "20x"): DocumentedSpacing(None, _LUNG_NONE),
    ("lunghist700", "40x"): DocumentedSpacing(None, _LUNG_NONE),
}
_OPTION_OF = {"breakhis": "magnification", "lunghist700": "resolution"}


def read_split_info(model_dir: str | os.PathLike) -> dict | None:
    """The checkpoint's `split.json` (written beside the model by the training scripts), or None."""
    path = Path(model_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable split file ({error}); restore it or pass --spacing_um_px and "
                        "--patch_size_pixels") from error


def documented_spacing(dataset: str, options: dict | None = None) -> tuple[DocumentedSpacing | None, str]:
    """(the documented spacing entry or None, the dataset's name with its option) for a run's dataset."""
    option_name = _OPTION_OF.get(dataset)
    value = (options or {}).get(option_name) if option_name else None
    name = f"{dataset} ({option_name} {value})" if option_name else dataset
    return DOCUMENTED_SPACINGS.get((dataset, value)), name


def resolve_spacing(spacing_um_px: float | None, split_info: dict | None) -> tuple[float, str]:
    """(spacing in µm/px, where it comes from): the user's value, else the documented value of the run's dataset."""
    if spacing_um_px is not None:
        if not spacing_um_px > 0:
            raise UserError(f"--spacing_um_px must be positive (micrometres per pixel), got {spacing_um_px}")
        return float(spacing_um_px), "given with --spacing_um_px"
    if not split_info or "dataset" not in split_info:
        raise UserError(
            "the spacing of the training images is unknown (the checkpoint has no split.json naming its dataset): "
            "pass --spacing_um_px S, the micrometres per pixel of the images the model was trained on"
        )
    entry, name = documented_spacing(split_info["dataset"], split_info.get("options"))
    if entry is None or entry.spacing_um_px is None:
        why = f" ({entry.source})" if entry is not None else " (no documented value is known for it)"
        raise UserError(
            f"the spacing of {name} is not documented{why}: pass --spacing_um_px S, the micrometres per pixel "
            "of the images the model was trained on"
        )
    return entry.spacing_um_px, f"documented value for {name}: {entry.source}"


def training_image_sizes(split_info: dict, part: str = "train") -> collections.Counter:
    """Counter of (width, height) of the images of one part of a split file (headers only, nothing decoded)."""
    root = split_info.get("data_root")
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(f"the data root {root!r} of the split file is not a folder here")
    sizes = collections.Counter()
    for entry in split_info.get("parts", {}).get(part, []):
        with Image.open(join_relative(root, entry[0])) as image:
            sizes[image.size] += 1
    return sizes


def resolve_patch_size(patch_size_pixels: int | None, split_info: dict | None) -> tuple[int, str]:
    """(tile side in pixels, where it comes from): the user's value, else the training images' common square size."""
    hint = "pass --patch_size_pixels N, the side in pixels of the tiles to classify at the given spacing"
    if patch_size_pixels is not None:
        if patch_size_pixels < 1:
            raise UserError(f"--patch_size_pixels must be a positive number of pixels, got {patch_size_pixels}")
        return int(patch_size_pixels), "given with --patch_size_pixels"
    if not split_info or not split_info.get("parts", {}).get("train"):
        raise UserError(f"the size of the training images is unknown (the checkpoint has no split.json): {hint}")
    try:
        sizes = training_image_sizes(split_info)
    except OSError as error:
        raise UserError(f"cannot read the training images listed by the checkpoint's split.json ({error}): {hint}")
    if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
        found = ", ".join(f"{w}x{h} ({count})" for (w, h), count in sizes.most_common(5))
        raise UserError(f"the training images are not squares of one size (found {found}): {hint}")
    (side, _), count = next(iter(sizes.items()))
    return side, f"the size of the {count} training images listed by the checkpoint's split.json"
