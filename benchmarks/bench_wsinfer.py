#!/usr/bin/env python
"""Tiles per second of `wsinfer run` with an exported checkpoint against our own prediction path, same tiles.

One tiny checkpoint (teacher or student preset, random weights) is exported with
`python -m modeling_amlpf.export wsinfer`; a pyramidal TIFF with tissue on white glass is written; then, in
interleaved rounds:

* `wsinfer`: `wsinfer run -i SLIDES -o RESULTS -c config.json -p torchscript_model.pt -n 1` (WSInfer 0.6.1 in
  its cached venv, see tests/wsinfer_env.py), end to end: start-up, tissue detection, tiling, reading the tiles,
  the TorchScript model, CSV and GeoJSON;
* `predict`: `predict.py --model DIR FILES --max_overlays 0 --num_workers 1` on the very tiles WSInfer read
  (cut with the same reader and saved as PNG files), end to end: start-up, decoding, the processor's views,
  the model, CSV.

Both run as subprocesses on the CPU with the same thread count (the figure is a ratio of wall-clock tiles/s
in the same run: `wsinfer_over_predict` > 1 means WSInfer is faster). `model_only` compares the two model paths
in-process, without start-up or I/O: the TorchScript module on normalised tiles against AutoModel + processor
on the 8-bit tiles (interleaved `torch.utils.benchmark.Timer` rounds).

    python benchmarks/bench_wsinfer.py --json benchmarks/results/bench_wsinfer.json [--quick] [--kind student]
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (offline environment, repository on sys.path)
import numpy as np
import torch
from _common import (
    REPO_ROOT,
    base_parser,
    environment,
    interleaved_rounds,
    median_ratio,
    print_table,
    setup_threads,
    summary,
    write_json,
)
from PIL import Image

sys.path.insert(0, str(REPO_ROOT / "tests"))
from wsinfer_env import ensure_wsinfer_venv, run_helper, run_wsinfer  # noqa: E402

PRESETS = {"teacher": "teacher-tiny", "student": "student-tiny"}
TILE, SPACING = 96, 0.5


def save_checkpoint(kind: str, folder: Path) -> Path:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from modeling_amlpf.models.image_processing_amlpf import AmlpfImageProcessor

    preset = REPO_ROOT / "configs" / "models" / PRESETS[kind]
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(preset)).save_pretrained(folder)
    AmlpfImageProcessor.from_pretrained(preset).save_pretrained(folder)
    if kind == "student":
        AutoTokenizer.from_pretrained(preset).save_pretrained(folder)
    return folder


def timed(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[1], default_threads=None)
    parser.add_argument("--kind", choices=sorted(PRESETS), default="teacher")
    args = parser.parse_args(argv)
    threads = setup_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 3)
    side = (1152, 896) if args.quick else (3072, 2304)
    venv = ensure_wsinfer_venv()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-wsinfer-") as tmp:
        tmp = Path(tmp)
        checkpoint = save_checkpoint(args.kind, tmp / "model")
        export = tmp / "export"
        timed([sys.executable, "-m", "modeling_amlpf.export", "wsinfer", "--model", str(checkpoint), "--output_dir",
               str(export), "--spacing_um_px", str(SPACING), "--patch_size_pixels", str(TILE)], env=env)
        slides = tmp / "slides"
        slides.mkdir()
        run_helper(venv, "write-slide", slides / "slide.tif", "--mpp", str(SPACING), "--width", str(side[0]),
                   "--height", str(side[1]), "--seed", str(args.seed))
        # a first WSInfer run finds the tiles; they are cut with WSInfer's reader for predict.py
        threads_env = {"OMP_NUM_THREADS": str(threads)}
        first = run_wsinfer(venv, slides, tmp / "results-0", export, tmp / "home", extra_env=threads_env)
        if first.returncode != 0:
            raise RuntimeError(first.stderr[-3000:])
        table = tmp / "results-0" / "model-outputs-csv" / "slide.csv"
        run_helper(venv, "read-regions", slides / "slide.tif", table, tmp / "tiles.npy")
        tiles = np.load(tmp / "tiles.npy")
        files = tmp / "tiles"
        files.mkdir()
        for index, tile in enumerate(tiles):
            Image.fromarray(tile).save(files / f"tile_{index:05d}.png")
        count = len(tiles)
        wall = {"wsinfer": [], "predict": []}
        for number in range(rounds):
            results = tmp / f"results-{number + 1}"
            start = time.perf_counter()
            run = run_wsinfer(venv, slides, results, export, tmp / "home", extra_env=threads_env)
            wall["wsinfer"].append(time.perf_counter() - start)
            if run.returncode != 0:
                raise RuntimeError(run.stderr[-3000:])
            wall["predict"].append(timed(
                [sys.executable, str(REPO_ROOT / "predict.py"), "--model", str(checkpoint), str(files),
                 "--output_dir", str(tmp / f"predictions-{number}"), "--max_overlays", "0", "--num_workers", "1",
                 "--device", "cpu", "--progress", "False"], env=env,
            ))
        with open(table, newline="") as handle:
            assert sum(1 for _ in csv.DictReader(handle)) == count

        # the model paths alone, in-process
        from modeling_amlpf.slides.wsinfer_export import load_checkpoint, normalised_tiles

        model, processor = load_checkpoint(str(checkpoint))
        module = torch.jit.load(str(export / "torchscript_model.pt"))
        batch = tiles[: min(16, count)]
        normalised = normalised_tiles(batch, processor.image_mean, processor.image_std)

        def scripted():
            with torch.no_grad():
                return module(normalised)

        def ours():
            with torch.no_grad():
                return model(**processor(list(batch))).logits

        model_times = interleaved_rounds({"torchscript": scripted, "automodel+processor": ours},
                                         rounds=max(3, rounds), min_run_time=0.2 if args.quick else 1.0)
    per_tile = {name: [t / count for t in times] for name, times in wall.items()}
    ratio = median_ratio(per_tile["predict"], per_tile["wsinfer"])
    model_ratio = median_ratio(model_times["automodel+processor"], model_times["torchscript"])
    def rate(tiles: int, times: list[float]) -> str:
        return f"{tiles / summary(times)['median_s']:.1f}"

    rows = [
        ["wsinfer run (end to end)", count, rate(count, wall["wsinfer"])],
        ["predict.py (end to end)", count, rate(count, wall["predict"])],
        ["TorchScript module alone", len(batch), rate(len(batch), model_times["torchscript"])],
        ["AutoModel + processor alone", len(batch), rate(len(batch), model_times["automodel+processor"])],
    ]
    print_table(["path", "tiles", "tiles/s"], rows,
                title=f"{args.kind}-tiny, {TILE}-px tiles, {threads} threads: wsinfer/predict = {ratio:.2f}, "
                f"model only = {model_ratio:.2f}")
    write_json(args.json, {
        "benchmark": "bench_wsinfer",
        "kind": args.kind,
        "tiles": count,
        "tile_pixels": TILE,
        "slide_pixels": list(side),
        "wsinfer_over_predict": ratio,
        "model_only_torchscript_over_automodel": model_ratio,
        "wall_s": {name: summary(times) for name, times in wall.items()},
        "model_only_s": {name: summary(times) for name, times in model_times.items()},
        "environment": environment(threads, wsinfer="0.6.1"),
    })


if __name__ == "__main__":
    main()
