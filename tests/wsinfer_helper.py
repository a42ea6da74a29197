"""Run inside WSInfer's virtual environment (it has tifffile and tiffslide): write a test slide, read tiles back.

    python wsinfer_helper.py write-slide OUT.tif --mpp 0.5 --width 1152 --height 896 [--seed 0]
    python wsinfer_helper.py read-regions SLIDE.tif TILES.csv OUT.npy   # tiles as WSInfer reads them, uint8

The slide is a pyramidal tiled TIFF (levels 1, 1/2, 1/4 as SubIFDs) with resolution tags in pixels per
centimetre giving the spacing, an H&E-like textured tissue region on a white background.
"""

from __future__ import annotations

import argparse
import csv

import numpy as np


def tissue_slide(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: white glass with a blob of pink stroma and purple nuclei-like dots."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height / 2, width / 2
    angle = np.arctan2(yy - cy, xx - cx)
    radius = 0.36 * min(width, height) * (1 + 0.15 * np.sin(3 * angle) + 0.08 * np.cos(5 * angle))
    inside = np.hypot(yy - cy, xx - cx) < radius
    image = np.full((height, width, 3), 244, dtype=np.float32)
    coarse = rng.random((height // 32 + 2, width // 32 + 2))
    rows, cols = (yy / 32).astype(int), (xx / 32).astype(int)
    texture = coarse[rows, cols]
    stroma = np.stack([230 - 40 * texture, 150 - 50 * texture, 190 - 30 * texture], axis=-1)
    image[inside] = stroma[inside]
    for _ in range((width * height) // 900):
        y, x = rng.integers(0, height), rng.integers(0, width)
        if inside[y, x]:
            r = rng.integers(3, 7)
            y0, y1, x0, x1 = max(0, y - r), min(height, y + r), max(0, x - r), min(width, x + r)
            image[y0:y1, x0:x1] = (95 + rng.integers(-15, 15), 60, 150 + rng.integers(-20, 20))
    image += rng.normal(0, 4, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def write_slide(path: str, mpp: float, width: int, height: int, seed: int) -> None:
    import tifffile

    level0 = tissue_slide(width, height, seed)
    levels = [level0, level0[::2, ::2], level0[::4, ::4]]
    with tifffile.TiffWriter(path) as tif:
        for index, level in enumerate(levels):
            scale = 2**index
            options = dict(
                tile=(128, 128), photometric="rgb", compression="zlib", resolutionunit="CENTIMETER",
                resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)),
            )
            if index == 0:
                tif.write(level, subifds=len(levels) - 1, **options)
            else:
                tif.write(level, subfiletype=1, **options)


def read_regions(slide_path: str, tiles_csv: str, out: str) -> None:
    import tiffslide

    slide = tiffslide.TiffSlide(slide_path)
    with open(tiles_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    tiles = []
    for row in rows:
        x, y, w, h = (int(float(row[key])) for key in ("minx", "miny", "width", "height"))
        tiles.append(np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB")))
    np.save(out, np.stack(tiles))


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write-slide")
    write.add_argument("out")
    write.add_argument("--mpp", type=float, required=True)
    write.add_argument("--width", type=int, required=True)
    write.add_argument("--height", type=int, required=True)
    write.add_argument("--seed", type=int, default=0)
    read = commands.add_parser("read-regions")
    read.add_argument("slide")
    read.add_argument("tiles_csv")
    read.add_argument("out")
    args = parser.parse_args()
    if args.command == "write-slide":
        write_slide(args.out, args.mpp, args.width, args.height, args.seed)
    else:
        read_regions(args.slide, args.tiles_csv, args.out)


if __name__ == "__main__":
    main()
