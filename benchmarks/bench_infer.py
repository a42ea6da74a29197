#!/usr/bin/env python
"""Inference milliseconds per image (9 views and 1 view) of both real-size models, and their share of the
machine's matmul peak.

Models (random weights): the UNI teacher (timm ViT-L/16, init_values=1e-5, MLP head) and the RN50 CLIP
student (`resnet50_clip` image tower + fused three-level prompt logits). Each configuration's FLOPs are
counted once with `torch.utils.flop_counter.FlopCounterMode` (on its warm-up forward); achieved GFLOP/s =
FLOPs / median forward time, compared with a large square `torch.mm` timed just before and just after
that configuration (the higher of the two): `fraction_of_matmul_peak`, target >= 0.5 with >= 8 views per
forward. Timing is `torch.utils.benchmark.Timer.blocked_autorange` (accelerator synchronised, the thread
count fixed): it repeats the forward until --min_run_time seconds are filled and reports the median.
--quick keeps the real layer widths but builds the teacher with 4 of its 24 blocks (named in the JSON) and
fills 0.2 s (one or two forwards).

    python benchmarks/bench_infer.py --json benchmarks/results/bench_infer.json [--quick] [--device cuda] [--profile]
"""

from __future__ import annotations

import contextlib

import _common  # noqa: F401  (offline environment, repository on sys.path)
import torch
from _common import (
    add_device_flags,
    attention_kernels,
    base_parser,
    build_rn50_student,
    environment,
    print_table,
    resolve_device_flags,
    setup_threads,
    skip_without_cuda,
    synchronizer,
    write_json,
)
from torch.utils.benchmark import Measurement, Timer
from torch.utils.flop_counter import FlopCounterMode

from modeling_amlpf import AmlpfTeacherConfig, AmlpfTeacherForImageClassification
from modeling_amlpf.data import DEMO_CLASS_NAMES
from modeling_amlpf.models.configuration_amlpf import UNI_BACKBONE, UNI_BACKBONE_KWARGS

TARGET_FRACTION = 0.5
TARGET_MIN_VIEWS = 8
QUICK_TEACHER_DEPTH = 4
CROP = 224


def build_teacher(depth: int | None) -> AmlpfTeacherForImageClassification:
    kwargs = dict(UNI_BACKBONE_KWARGS)
    if depth is not None:
        kwargs["depth"] = depth
    return AmlpfTeacherForImageClassification(
        AmlpfTeacherConfig(backbone=UNI_BACKBONE, backbone_kwargs=kwargs, class_names=DEMO_CLASS_NAMES)
    )


def make_input(batch: int, views: int, device: str, channels_last: bool) -> torch.Tensor:
    shape = (batch, views, 3, CROP, CROP) if views > 1 else (batch, 3, CROP, CROP)
    pixels = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    if channels_last:  # every view HWC in memory; stays channels_last after (B*V, 3, S, S) flattening
        pixels = pixels.movedim(-3, -1).contiguous().movedim(-1, -3)
    return pixels.to(device)


def profile_top_ops(forward, rows: int = 12) -> list[dict]:
    """The operators that take the time of one forward (torch.profiler, self time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        forward()
    key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:rows]
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1000.0} for e in events]


def time_forward(fn, label: str, min_run_time: float) -> Measurement:
    """``torch.utils.benchmark.Timer`` on ``fn`` with torch's current thread count (the Timer's default is one
    thread); synchronises the accelerator around every block."""
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), label=label)
    return timer.blocked_autorange(min_run_time=min_run_time)


def timing_summary(measurement: Measurement) -> dict:
    """Median (the reported figure), spread and count of the Timer's per-call times, in seconds."""
    times = measurement.times
    return {"median_s": measurement.median, "min_s": min(times), "max_s": max(times), "rounds": len(times),
            "calls_per_round": measurement.number_per_run}


def matmul_peak_gflops(size: int, device: str, dtype: torch.dtype, min_run_time: float = 0.2) -> float:
    """GFLOP/s of a large square `torch.mm` (2 n^3 FLOPs), from its fastest timed block: a peak (best case), so
    that fractions of it are conservative on a shared machine."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    measurement = time_forward(lambda: torch.mm(a, b, out=out), "matmul peak", min_run_time)
    return 2.0 * size**3 / min(measurement.times) / 1e9


def measure(model, name: str, views: int, batch: int, args, sync) -> dict:
    """Median ms per image of one configuration, its FLOPs and achieved share of the matmul peak."""
    pixels = make_input(batch, views, args.device, args.channels_last)
    bf16 = args.precision == "bf16"

    def forward():
        autocast = torch.autocast(args.device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return model(pixel_values=pixels).logits

    peak_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak_before = matmul_peak_gflops(args.peak_size, device=args.device, dtype=peak_dtype)
    with FlopCounterMode(display=False) as counter:  # doubles as the warm-up forward
        forward()
    sync()
    flops = counter.get_total_flops()
    measurement = time_forward(forward, f"{name}, {views} view(s), batch {batch}", args.min_run_time)
    peak_after = matmul_peak_gflops(args.peak_size, device=args.device, dtype=peak_dtype)
    peak = max(peak_before, peak_after)  # the better of the two: a conservative fraction on a shared machine
    seconds = measurement.median
    achieved = flops / seconds / 1e9
    result = {
        "model": name,
        "views_per_image": views,
        "batch_images": batch,
        "views_per_forward": batch * views,
        "ms_per_image": 1000.0 * seconds / batch,
        "images_per_second": batch / seconds,
        "gflop_per_image": flops / batch / 1e9,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_before_after": [peak_before, peak_after],
        "fraction_of_matmul_peak": achieved / peak,
        "timing": timing_summary(measurement),
    }
    if batch * views >= TARGET_MIN_VIEWS:
        result["target_met"] = {f"fraction_of_matmul_peak>={TARGET_FRACTION:g}": achieved / peak >= TARGET_FRACTION}
    if args.profile:
        result["profile_top_ops"] = profile_top_ops(forward)
    return result


def run(args) -> dict:
    threads = setup_threads(args.threads)
    env = environment(threads, args.device)  # before the run: the load average at its start
    sync = synchronizer(args.device)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    torch.manual_seed(args.seed)
    depth = QUICK_TEACHER_DEPTH if args.quick else None
    teacher_name = "UNI ViT-L/16 (vit_large_patch16_224, init_values=1e-5)" + (
        f", {QUICK_TEACHER_DEPTH} of 24 blocks (quick)" if depth else ", 24 blocks"
    )
    student_name = "OpenAI RN50 CLIP image tower (resnet50_clip) + 3-level fused prompt logits"
    models = {"teacher": (teacher_name, build_teacher(depth)), "student": (student_name, build_rn50_student())}
    results = {}
    for key, (name, model) in models.items():
        model = model.eval().to(args.device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for views, batch in ((9, args.batch_9), (1, args.batch_1)):
            label = f"{key}_{views}_view{'s' if views > 1 else ''}"
            print(f"[bench_infer] {label}: batch {batch} ...", flush=True)
            results[label] = measure(model, name, views, batch, args, sync)
            results[label]["sdpa_attention"] = attention_kernels(model)
        models[key] = None  # free the weights before the next model
    return {
        "benchmark": "bench_infer",
        "mode": "quick" if args.quick else "full",
        "definitions": {
            "ms_per_image": "median forward time of one batch / images in the batch (inference_mode; "
                            "torch.utils.benchmark.Timer.blocked_autorange over --min_run_time seconds)",
            "achieved_gflops": "FlopCounterMode FLOPs of the forward / median forward time",
            "fraction_of_matmul_peak": "achieved_gflops / GFLOP/s of a square torch.mm of --peak_size (fastest "
                                       f"timed block, before and after); target >= {TARGET_FRACTION:g} with >= "
                                       f"{TARGET_MIN_VIEWS} views per forward (a goal)",
        },
        "settings": {"device": args.device, "precision": args.precision, "channels_last": args.channels_last,
                     "min_run_time_s": args.min_run_time, "peak_size": args.peak_size, "crop_size": CROP},
        "results": results,
        "environment": env,
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    add_device_flags(parser)
    parser.add_argument("--batch_9", type=int, help="images per forward with 9 views (default 1 on cpu, 8 on cuda)")
    parser.add_argument("--batch_1", type=int,
                        help="images per forward with 1 view (default 8 on cpu, 2 with --quick, 64 on cuda)")
    parser.add_argument("--peak_size", type=int, help="side of the square matmul (default 2048 cpu, 8192 cuda)")
    parser.add_argument("--profile", action="store_true", help="add the top operators of one forward (torch.profiler)")
    parser.add_argument("--min_run_time", type=float,
                        help="seconds of timed forwards per configuration (default 0.2 with --quick, 5 on cpu, 2 on "
                             "cuda); --rounds is not used here: the Timer chooses the number of forwards")
    args = parser.parse_args(argv)
    resolve_device_flags(args)
    cuda = args.device == "cuda"
    args.batch_9 = args.batch_9 or (8 if cuda else 1)
    args.batch_1 = args.batch_1 or (64 if cuda else 2 if args.quick else 8)
    args.peak_size = args.peak_size or (8192 if cuda else 2048)
    args.min_run_time = args.min_run_time or (0.2 if args.quick else 2.0 if cuda else 5.0)
    threads = setup_threads(args.threads)
    if skip_without_cuda(args, "bench_infer", threads):
        return {"skipped": _common.NO_CUDA}
    payload = run(args)
    rows = [
        [label, entry["batch_images"], entry["views_per_forward"], entry["ms_per_image"], entry["gflop_per_image"],
         entry["achieved_gflops"], entry["matmul_peak_gflops"], entry["fraction_of_matmul_peak"]]
        for label, entry in payload["results"].items()
    ]
    print_table(
        ["configuration", "batch", "views/fwd", "ms/image", "GFLOP/image", "GFLOP/s", "mm peak", "frac. of peak"],
        rows, title=f"bench_infer ({payload['mode']}, {args.device}, {args.precision}, "
                    f"{payload['environment']['torch_num_threads']} threads); target >= {TARGET_FRACTION:g} of peak "
                    f"with >= {TARGET_MIN_VIEWS} views per forward",
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
