"""Shared helpers of the benchmarks: offline set-up, threads, interleaved timing, environment, tables, JSON.

Every figure the benchmarks publish is a ratio against a baseline timed in the same run, because the
machines they run on are shared: timings are taken in interleaved rounds (each round times every variant
once, with ``torch.utils.benchmark.Timer``), so that a burst of foreign load hits all variants alike, and the
median over rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Nothing may reach the network: set before transformers / huggingface_hub are imported.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_EVALUATE_OFFLINE", "1"),
    ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the package is used from the checkout, installed or not
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch.utils.benchmark import Timer  # noqa: E402

NO_CUDA = "no CUDA device"


# ------------------------------------------------------------------------------------------------ command line
def base_parser(description: str, default_threads: int | None = None) -> argparse.ArgumentParser:
    """Flags every benchmark shares: --quick, --json, --threads, --seed, --rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small run (under a minute on 2 cores)")
    parser.add_argument("--json", metavar="FILE", help="write the figures and the environment to FILE")
    parser.add_argument(
        "--threads", type=int, default=default_threads,
        help=f"torch intra-op threads (default: {default_threads or 'all CPU cores'})",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per measurement (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """--device and the accelerator settings of the GPU variant (bf16 autocast, channels_last)."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: bf16 autocast + channels_last + SDPA; skipped when no CUDA device is present")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="autocast dtype (default: fp32 on cpu, bf16 on cuda)")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last inputs and weights (default: on for cuda, off for cpu)")


def resolve_device_flags(args: argparse.Namespace) -> None:
    if args.precision is None:
        args.precision = "bf16" if args.device == "cuda" else "fp32"
    if args.channels_last is None:
        args.channels_last = args.device == "cuda"


def setup_threads(threads: int | None) -> int:
    """Set torch's intra-op threads explicitly (all cores when None) and return the value used."""
    threads = int(threads or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


# ------------------------------------------------------------------------------------------------ timing
def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for queued device work (timings of asynchronous CUDA kernels need it)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def interleaved_rounds(
    variants: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    min_run_time: float = 0.0,
) -> dict[str, list[float]]:
    """Seconds per call of every variant, one measurement per variant per round, after ``warmup`` calls each.

    Each measurement is ``torch.utils.benchmark.Timer.blocked_autorange(min_run_time)`` at torch's current
    thread count (the Timer's default is one thread): the Timer synchronises the accelerator, runs the call
    once to size its blocks (a slow call: one more warm-up; a fast one: blocks of many calls, so that its own
    overhead stays below 1e-4), then times blocks until ``min_run_time`` seconds are filled; the round's value
    is the median seconds per call.
    """
    timers = {
        name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), label=name)
        for name, fn in variants.items()
    }
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return times


def summary(times: list[float]) -> dict:
    """Median (the reported figure), spread and count of repeated timings, in seconds."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "rounds": len(times),
    }


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of per-round ratios: robust to load that drifts between rounds."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


# ------------------------------------------------------------------------------------------------ environment
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def environment(threads: int, device: str = "cpu", **extra) -> dict:
    """What the figures depend on: versions, CPU, thread counts, load at the time of the run."""
    import numpy
    import PIL

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "threads_requested": threads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": device,
        "load_average_at_start": load_average(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for name in ("transformers", "timm", "datasets", "accelerate"):
        module = sys.modules.get(name)
        if module is not None:
            env[name] = getattr(module, "__version__", None)
    if device == "cuda" and torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
        env["cuda_version"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------ models
def build_rn50_student(class_names: list[str] | None = None):
    """The paper's student at full size with random weights: the `resnet50_clip` image tower (OpenAI RN50,
    1024-d) and an RN50-shaped text tower (12 layers, width 512) that encodes the demo prompts once.

    The tiny preset's tokenizer stands in for OpenAI's (nothing is downloaded); the text tower only runs in
    `set_prompts`, so its vocabulary size does not touch any timed forward or backward pass.
    """
    from transformers import AutoTokenizer

    from modeling_amlpf import AmlpfClipConfig, AmlpfClipForImageClassification
    from modeling_amlpf.data import DEMO_CLASS_NAMES
    from modeling_amlpf.pretrained.prompts import load_prompts

    class_names = list(class_names or DEMO_CLASS_NAMES)
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "configs" / "models" / "student-tiny")
    text = {
        "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
        "max_position_embeddings": 77, "vocab_size": len(tokenizer), "hidden_act": "quick_gelu",
        "projection_dim": 1024, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    student = AmlpfClipForImageClassification(
        AmlpfClipConfig(
            timm_model_name="resnet50_clip", projection_dim=1024, text_config=text, class_names=class_names
        )
    )
    student.set_prompts(load_prompts("demo", class_names), tokenizer, class_names=class_names)
    return student


def attention_kernels(model: torch.nn.Module) -> dict[str, bool]:
    """Which timm attention modules call F.scaled_dot_product_attention (`fused_attn`), by module type."""
    found: dict[str, bool] = {}
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            found[type(module).__name__] = bool(module.fused_attn)
    return found


# ------------------------------------------------------------------------------------------------ output
def print_table(headers: list[str], rows: list[list[object]], title: str | None = None) -> None:
    """A plain fixed-width table on stdout; floats get 3 significant decimals."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    text = [[cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in text:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def write_json(path: str | None, payload: dict) -> None:
    """Write the results (with the load average at the end of the run added to the environment)."""
    payload.setdefault("environment", {})["load_average_at_end"] = load_average()
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"\nwrote {out}")


def skip_without_cuda(args: argparse.Namespace, benchmark: str, threads: int) -> bool:
    """For --device cuda on a machine without CUDA: say so, write a JSON that records the skip, return True."""
    if args.device != "cuda" or torch.cuda.is_available():
        return False
    print(f"{benchmark}: --device cuda requested but torch.cuda.is_available() is False: skipped ({NO_CUDA}).")
    write_json(args.json, {"benchmark": benchmark, "skipped": NO_CUDA, "environment": environment(threads, "cuda")})
    return True
