"""Heatmaps of a WSInfer run: per slide, one panel per class over the slide thumbnail.

    python -m modeling_amlpf.report slides RESULTS [--slides SLIDES_DIR] [--output_dir DIR]

Reads what `wsinfer run` wrote in RESULTS: the per-tile probabilities (`model-outputs-csv/<slide>.csv`), the
tissue-detection picture (`masks/<slide>.jpg`: the slide thumbnail with the outline of the tissue mask WSInfer
tiled) and the run's metadata (the model). The slide itself (found in `--slides`, or in the folder the run was
given with `-i`) gives the level-0 size that maps tile coordinates onto the thumbnail; only its header is read.
Writes `heatmaps/<slide>.png` in RESULTS (or `--output_dir`).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils import UserError

CSV_DIR, MASK_DIR, HEATMAP_DIR = "model-outputs-csv", "masks", "heatmaps"
PROB_PREFIX = "prob_"


@dataclass
class SlideTiles:
    """Per-tile level-0 boxes (N, 4: minx, miny, width, height) and probabilities (N, C) of one slide."""

    name: str
    boxes: np.ndarray
    probabilities: np.ndarray
    class_names: list[str]


def read_tiles(csv_path: Path) -> SlideTiles:
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    classes = [name[len(PROB_PREFIX):] for name in columns if name.startswith(PROB_PREFIX)]
    missing = [name for name in ("minx", "miny", "width", "height") if name not in columns]
    if missing or not classes:
        raise UserError(f"{csv_path} is not a WSInfer tile table (needs minx, miny, width, height and prob_<class>)")
    boxes = np.array([[float(row[key]) for key in ("minx", "miny", "width", "height")] for row in rows]).reshape(-1, 4)
    probs = np.array([[float(row[PROB_PREFIX + name]) for name in classes] for row in rows]).reshape(-1, len(classes))
    return SlideTiles(csv_path.stem, boxes, probs, classes)


def run_metadata(results: Path) -> dict:
    """The newest `run_metadata_*.json` of a WSInfer results folder ({} when there is none)."""
    found = sorted(results.glob("run_metadata_*.json"))
    return json.loads(found[-1].read_text(encoding="utf-8")) if found else {}


def model_label(metadata: dict) -> str:
    model = metadata.get("model") or {}
    config = model.get("config") or {}
    where = model.get("huggingface_location") or model.get("path") or "model"
    where = where if isinstance(where, str) else json.dumps(where)
    architecture = config.get("architecture")
    spacing = config.get("spacing_um_px")
    details = ", ".join(
        part for part in (architecture, f"{config['patch_size_pixels']} px at {spacing:g} um/px" if spacing else None)
        if part
    )
    return f"{where} ({details})" if details else where


def slides_dir_of_run(results: Path, metadata: dict) -> Path | None:
    """The `-i/--wsi-dir` folder of the WSInfer command recorded in the run's metadata."""
    runtime = metadata.get("runtime") or {}
    try:
        args = shlex.split(runtime.get("args") or "")
    except ValueError:
        return None
    for flag in ("-i", "--wsi-dir"):
        if flag in args[:-1]:
            folder = Path(args[args.index(flag) + 1])
            return folder if folder.is_absolute() else Path(runtime.get("working_dir") or ".") / folder
    return None


def slide_size(slides_dir: Path | None, name: str) -> tuple[int, int]:
    """(width, height) of level 0 of the slide `name` (any extension) in `slides_dir`, from its header."""
    candidates = sorted(slides_dir.glob(f"{name}.*")) if slides_dir and slides_dir.is_dir() else []
    if not candidates:
        raise UserError(
            f"cannot find the slide {name!r} (looked in {slides_dir}): pass the folder given to wsinfer run -i with "
            "--slides DIR"
        )
    path = candidates[0]
    for module_name in ("tiffslide", "openslide"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        opener = getattr(module, "TiffSlide", None) or getattr(module, "OpenSlide")
        with opener(str(path)) as slide:
            return tuple(int(v) for v in slide.dimensions)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # only the header is read; whole slides exceed Pillow's decompression guard
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise UserError(f"cannot read the size of {path} ({error}): install tiffslide or openslide-python") from error
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def tissue_outline(thumbnail: Image.Image) -> np.ndarray:
    """RGBA layer of the cyan contour WSInfer draws on its tissue-detection picture (transparent elsewhere)."""
    pixels = np.asarray(thumbnail.convert("RGB")).astype(np.int16)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    cyan = (red < 110) & (green > 170) & (blue > 170)
    layer = np.zeros((*cyan.shape, 4), dtype=np.uint8)
    layer[cyan] = (0, 255, 255, 255)
    return layer


def draw_slide(tiles: SlideTiles, thumbnail: Image.Image, level0_size: tuple[int, int], model: str, out: Path) -> Path:
    """One panel per class: the probability of each tile (colour, 0-1) over the thumbnail with WSInfer's tissue
    outline, a colour bar, the class, the slide and the model in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    outline = tissue_outline(thumbnail)
    scale_x, scale_y = thumbnail.width / level0_size[0], thumbnail.height / level0_size[1]
    count = len(tiles.class_names)
    columns = min(count, 3)
    rows = -(-count // columns)
    aspect = thumbnail.height / thumbnail.width
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 5.2 * aspect * rows + 0.9), squeeze=False)
    for index, axis in enumerate(axes.flat):
        if index >= count:
            axis.axis("off")
            continue
        axis.imshow(thumbnail)
        boxes = [
            Rectangle((x * scale_x, y * scale_y), w * scale_x, h * scale_y) for x, y, w, h in tiles.boxes
        ]
        collection = PatchCollection(boxes, cmap="magma", alpha=0.7, linewidth=0)
        collection.set_array(tiles.probabilities[:, index])
        collection.set_clim(0.0, 1.0)
        axis.add_collection(collection)
        axis.set_title(f"P({tiles.class_names[index]})", fontsize=11)
        axis.set_axis_off()
        axis.imshow(outline, zorder=3)  # WSInfer's tissue outline, back on top of the tiles
        label = f"probability of {tiles.class_names[index]}"
        figure.colorbar(collection, ax=axis, fraction=0.046, pad=0.02, label=label)
    figure.suptitle(f"{tiles.name}: {len(tiles.boxes)} tiles; model {model}\n"
                    "cyan: WSInfer's tissue outline", fontsize=10)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def write_heatmaps(results: Path, slides_dir: Path | None = None, output_dir: Path | None = None) -> list[Path]:
    """`heatmaps/<slide>.png` for every slide of a WSInfer results folder."""
    results = Path(results)
    tables = sorted((results / CSV_DIR).glob("*.csv"))
    if not tables:
        raise UserError(f"{results} has no {CSV_DIR}/*.csv: pass the -o folder of a finished `wsinfer run`")
    metadata = run_metadata(results)
    slides_dir = Path(slides_dir) if slides_dir else slides_dir_of_run(results, metadata)
    model = model_label(metadata)
    out_dir = Path(output_dir) if output_dir else results / HEATMAP_DIR
    written = []
    for table in tables:
        tiles = read_tiles(table)
        mask = results / MASK_DIR / f"{tiles.name}.jpg"
        if not mask.is_file():
            raise UserError(f"{mask} is missing: WSInfer writes it while tiling; rerun wsinfer run into {results}")
        with Image.open(mask) as image:
            thumbnail = image.convert("RGB")
        written.append(draw_slide(tiles, thumbnail, slide_size(slides_dir, tiles.name), model,
                                  out_dir / f"{tiles.name}.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_amlpf.report slides", description="Heatmaps per class of a WSInfer run."
    )
    parser.add_argument("results", help="the -o folder of `wsinfer run`")
    parser.add_argument("--slides", default=None, help="the slide folder (default: the run's -i folder)")
    parser.add_argument("--output_dir", default=None, help="where to write the PNGs (default: RESULTS/heatmaps)")
    args = parser.parse_args(argv)
    try:
        written = write_heatmaps(Path(args.results), args.slides, args.output_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Heatmaps ({len(written)}):")
    for path in written:
        print(f"  {path}")
    return 0
