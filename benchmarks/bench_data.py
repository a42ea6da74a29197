#!/usr/bin/env python
"""Views per second of the view pipeline (decode -> 8 crops + global view -> normalised tensor).

Three variants on the same files, timed in interleaved rounds:
  ours             AmlpfImageProcessor()(path, training=True) (and training=False: the evaluation views);
  reference_style  the reference code's way, re-implemented here with torchvision (shared/METHOD.md): decode,
                   upsize the short side to 512 (`Resize(512)`, bilinear) when a side is shorter, flip the
                   whole image (p = 0.5), turn the WHOLE image into a normalised float tensor, materialise
                   every 224-pixel patch of the stride-32 grid (48 once a side reaches 1024) with `unfold`,
                   keep 8 patches drawn with replacement and add the global view (bilinear, no antialiasing);
  decode_only      PIL open + convert("RGB") + load(): the limit no pipeline that decodes can beat.
Files: synthetic H&E-like textures (so that JPEG/PNG compress as real tiles do) at the three datasets'
sizes, written to a temporary folder: 512x512 JPEG (Chaoyang), 700x460 PNG (BreaKHis), 1600x1200 JPEG
(LungHist700, 1200 high). Default 1 torch thread: one DataLoader worker's view of the pipeline.

    python benchmarks/bench_data.py --json benchmarks/results/bench_data.json [--quick]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from _common import (  # before modeling_amlpf: offline environment, repository on sys.path
    base_parser,
    environment,
    interleaved_rounds,
    median_ratio,
    print_table,
    setup_threads,
    summary,
    write_json,
)
from PIL import Image, ImageDraw, ImageFilter
from torchvision.transforms import InterpolationMode

from modeling_amlpf.models.image_processing_amlpf import AmlpfImageProcessor

# (name, height, width, format) as distributed.
DATASET_FILES = (
    ("chaoyang", 512, 512, "JPEG"),
    ("breakhis", 460, 700, "PNG"),
    ("lunghist700", 1200, 1600, "JPEG"),
)
JPEG_QUALITY = 92
TARGET_SPEEDUP = 6.0
TARGET_FRACTION_OF_DECODE = 0.6

# Optical densities of haematoxylin and eosin (Ruifrok & Johnston), for Beer-Lambert colour mixing.
_HAEMATOXYLIN = np.array([0.65, 0.70, 0.29], dtype=np.float32)
_EOSIN = np.array([0.07, 0.99, 0.11], dtype=np.float32)


# ------------------------------------------------------------------------------------------------ test files
def _smooth_field(rng: np.random.Generator, height: int, width: int, period: float) -> np.ndarray:
    """Zero-mean noise varying over about `period` pixels (a coarse grid upsampled bicubically)."""
    rows, cols = max(2, int(height / period) + 2), max(2, int(width / period) + 2)
    coarse = Image.fromarray(rng.standard_normal((rows, cols)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def he_like_image(height: int, width: int, rng: np.random.Generator) -> Image.Image:
    """An H&E-like RGB tile: eosin stroma at several scales, white lumens, dark nuclei, sensor noise."""
    eosin = 0.55 + 0.25 * _smooth_field(rng, height, width, 60) + 0.12 * _smooth_field(rng, height, width, 6)
    lumen = _smooth_field(rng, height, width, 150) > 1.1
    eosin = np.where(lumen, 0.05, eosin)
    nuclei = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(nuclei)
    count = height * width // 700
    centres = rng.uniform(0, 1, (count, 2)) * (width, height)
    radii = rng.uniform(2.5, 7.0, (count, 2))
    for (x, y), (rx, ry) in zip(centres, radii):
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=int(rng.integers(150, 255)))
    nuclei = np.asarray(nuclei.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32) / 255.0
    haematoxylin = np.clip(0.15 + 0.08 * _smooth_field(rng, height, width, 4) + 1.4 * nuclei, 0, None)
    density = haematoxylin[..., None] * _HAEMATOXYLIN + np.clip(eosin, 0, None)[..., None] * _EOSIN
    rgb = 250.0 * np.exp(-1.1 * density) + rng.normal(0.0, 3.0, density.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def write_test_files(folder: Path, per_size: int, seed: int) -> dict[str, list[Path]]:
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {}
    for name, height, width, fmt in DATASET_FILES:
        files[name] = []
        for index in range(per_size):
            path = folder / f"{name}_{index}.{'jpg' if fmt == 'JPEG' else 'png'}"
            options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
            he_like_image(height, width, rng).save(path, fmt, **options)
            files[name].append(path)
    return files


# ------------------------------------------------------------------------------------------------ variants
def decode_only(path: Path) -> Image.Image:
    image = Image.open(path)
    image = image.convert("RGB")
    image.load()
    return image


class ReferenceStyleViews:
    """The reference pipeline: whole image to float, every grid patch materialised, 8 kept.

    Same views as `AmlpfImageProcessor()` (its defaults are the reference's): only the order of work differs,
    which `check_same_views` verifies on every file size before timing.
    """

    def __init__(self, processor: AmlpfImageProcessor):
        self.p = processor

    def __call__(self, path: Path, generator: torch.Generator, training: bool = True) -> torch.Tensor:
        p = self.p
        image = Image.open(path).convert("RGB")
        if min(image.size) < p.min_short_side:
            image = TF.resize(image, p.min_short_side, interpolation=InterpolationMode.BILINEAR)
        if training and bool(torch.rand((), generator=generator) < 0.5):
            image = TF.hflip(image)
        whole = TF.normalize(TF.to_tensor(image), p.image_mean, p.image_std)
        height, width = whole.shape[-2:]
        size = p.crop_size
        stride = p.large_crop_stride if max(height, width) >= p.large_side_threshold else p.crop_stride
        patches = whole.unfold(1, size, stride).unfold(2, size, stride)  # (3, rows, cols, S, S) view
        patches = patches.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size)  # every patch copied out
        count = patches.shape[0]
        if training:
            keep = torch.randint(count, (p.num_crops,), generator=generator)
        else:
            keep = torch.arange(p.num_crops) * (count // p.num_crops)
        global_view = TF.resize(whole, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=False)
        return torch.cat([patches[keep], global_view[None]])


def check_same_views(ours: torch.Tensor, reference: torch.Tensor, processor: AmlpfImageProcessor) -> None:
    """Both variants must deliver the same evaluation views, or the ratio means nothing."""
    expected = (processor.num_views, 3, processor.crop_size, processor.crop_size)
    if tuple(ours.shape) != expected or tuple(reference.shape) != expected or ours.dtype != reference.dtype:
        raise RuntimeError(
            f"variants differ: ours {tuple(ours.shape)} {ours.dtype}, "
            f"reference {tuple(reference.shape)} {reference.dtype}"
        )
    gap = (ours - reference).abs().max().item()
    if gap > 1e-3:  # float rounding only: the views are the same computation
        raise RuntimeError(f"the views differ by up to {gap:.4f} (normalised units): the variants differ")


# ------------------------------------------------------------------------------------------------ run
def run(args) -> dict:
    threads = setup_threads(args.threads)
    env = environment(threads)  # before the run: the load average at its start
    rounds = args.rounds or (3 if args.quick else 9)
    per_size = args.images_per_size or (2 if args.quick else 4)
    processor = AmlpfImageProcessor()
    reference = ReferenceStyleViews(processor)
    generator = torch.Generator().manual_seed(args.seed)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="amlpf-bench-data-") as folder:
        files = write_test_files(Path(folder), per_size, args.seed)
        for name, height, width, fmt in DATASET_FILES:
            paths = files[name]
            check_same_views(
                processor(str(paths[0]), training=False)["pixel_values"][0],
                reference(paths[0], generator, training=False), processor,
            )
            variants = {  # each call processes every file of this size once
                "decode_only": lambda paths=paths: [decode_only(p) for p in paths],
                "ours_train": lambda paths=paths: [
                    processor(str(p), training=True, generator=generator) for p in paths
                ],
                "ours_eval": lambda paths=paths: [processor(str(p), training=False) for p in paths],
                "reference_style": lambda paths=paths: [reference(p, generator) for p in paths],
            }
            times = interleaved_rounds(variants, rounds=rounds, warmup=1)
            per_image = {key: [t / len(paths) for t in values] for key, values in times.items()}
            images_per_second = {key: 1.0 / summary(values)["median_s"] for key, values in per_image.items()}
            views = processor.num_views
            results[f"{name}_{height}x{width}_{fmt.lower()}"] = {
                "dataset": name, "height": height, "width": width, "format": fmt,
                "file_bytes_mean": int(np.mean([p.stat().st_size for p in paths])),
                "images_per_second": images_per_second,
                "views_per_second": {key: views * value for key, value in images_per_second.items()},
                "speedup": median_ratio(per_image["reference_style"], per_image["ours_train"]),
                "speedup_eval": median_ratio(per_image["reference_style"], per_image["ours_eval"]),
                "fraction_of_decode_limit": median_ratio(per_image["decode_only"], per_image["ours_train"]),
                "fraction_of_decode_limit_eval": median_ratio(per_image["decode_only"], per_image["ours_eval"]),
                "ms_per_image": {key: 1000 * summary(values)["median_s"] for key, values in per_image.items()},
                "timings_per_image": {key: summary(values) for key, values in per_image.items()},
            }
    for entry in results.values():
        fraction = entry["fraction_of_decode_limit"]
        entry["targets_met"] = {
            f"speedup>={TARGET_SPEEDUP:g}": entry["speedup"] >= TARGET_SPEEDUP,
            f"fraction_of_decode_limit>={TARGET_FRACTION_OF_DECODE:g}": fraction >= TARGET_FRACTION_OF_DECODE,
        }
    return {
        "benchmark": "bench_data",
        "mode": "quick" if args.quick else "full",
        "definitions": {
            "views_per_second": "9 x images per second (8 crops + 1 global view); decode_only: 9 x decodes per second",
            "speedup": "median over rounds of reference_style time / ours_train time (same files, same round)",
            "fraction_of_decode_limit": "ours_train images/s divided by decode_only images/s (median over rounds)",
            "targets": f"speedup >= {TARGET_SPEEDUP:g}, fraction_of_decode_limit >= {TARGET_FRACTION_OF_DECODE:g} "
                       "(goals, not assertions)",
        },
        "settings": {"rounds": rounds, "warmup_rounds": 1, "images_per_size": per_size, "jpeg_quality": JPEG_QUALITY,
                     "processor": processor.to_dict()},
        "results": results,
        "environment": env,
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], default_threads=1)
    parser.add_argument("--images_per_size", type=int, help="files per size (default 2 quick, 4 full)")
    args = parser.parse_args(argv)
    payload = run(args)
    rows = []
    for key, entry in payload["results"].items():
        vps = entry["views_per_second"]
        rows.append([key, vps["decode_only"], vps["ours_train"], vps["ours_eval"], vps["reference_style"],
                     entry["speedup"], entry["fraction_of_decode_limit"]])
    print_table(
        ["size/format", "decode views/s", "ours train", "ours eval", "reference", "speedup", "frac. of decode"],
        rows, title=f"bench_data ({payload['mode']}, {payload['environment']['torch_num_threads']} thread(s)); "
                    f"targets: speedup >= {TARGET_SPEEDUP:g}, fraction >= {TARGET_FRACTION_OF_DECODE:g}",
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
