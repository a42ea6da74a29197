"""Pictures of a finished run, drawn from the files the run leaves behind (no model, no data needed).

- ``resampling.png``: what the class-balanced sampler did epoch by epoch (from ``resampling_history.json``);
- ``fusion_weights.png``: the change (%) of each prompt level's effective weight since its initial value;
- ``losses.png``: training CE, distillation term and total, validation loss and macro-F1, and the epoch that
  model selection kept (from the Trainer's ``trainer_state.json``);
- ``splits_summary.png``: mean ± std over ``--split_seeds`` beside the paper's published values.

Because every picture is rebuilt from files, ``python -m modeling_amlpf.report DIR`` re-creates them for any
finished output folder. Figures are built as ``matplotlib.figure.Figure`` on an Agg canvas (never pyplot), so a
user's interactive backend is left alone and nothing needs a display. The ``build_*_figure`` functions return
the Figure so callers (and tests) can read the plotted data back.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from ..utils import CONFIG_DIR
from .fonts import fonts_for
from .identity import identify_folder, paper_comparison
from .metrics import METRIC_TITLES, TIME_KEY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

HISTORY_FILE = "resampling_history.json"
TRAINER_STATE_FILE = "trainer_state.json"
SPLITS_SUMMARY_FILE = "splits_summary.json"
RESAMPLING_FIGURE = "resampling.png"
FUSION_FIGURE = "fusion_weights.png"
LOSSES_FIGURE = "losses.png"
SPLITS_FIGURE = "splits_summary.png"

PAPER_KEY = "paper_results"
PAPER_LABEL = "paper (Yao et al. 2025)"
FUSION_LOG_PREFIX = "fusion_weight/"
KIND_TITLES = {"teacher": "teacher", "student": "student (AMLPF-CLIP)"}

# Training-log curves of losses.png: (log key, legend label, line style).
LOSS_CURVES = (
    ("loss", "training loss (total)", "-"),
    ("ce_loss", "training CE", "-"),
    ("kd_loss", "training KD term", "-"),
    ("eval_loss", "validation loss", "--"),
)
SELECTED_LABEL = "kept by model selection"


# ------------------------------------------------------------------------------------------------ helpers
def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _epoch_axis(ax) -> None:
    """Whole-epoch ticks, half an epoch of margin (a one-epoch run would otherwise get a 0.1-wide axis)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    epochs = [x for line in ax.get_lines() for x in np.asarray(line.get_xdata(), dtype=float)]
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def _save(figure: Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path.name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-run the training or remove the file.") from error


def _finite(value) -> float:
    """A float, NaN for ``None`` (JSON ``null``: an undefined metric)."""
    return float("nan") if value is None else float(value)


def run_title(kind: str, dataset: str, split_seed: int | None = None) -> str:
    """The one title format of a run's pictures: model, dataset (run name) and split."""
    parts = [KIND_TITLES.get(kind, kind), dataset]
    if split_seed is not None:
        parts.append(f"split {split_seed}")
    return " · ".join(parts)


# ------------------------------------------------------------------------------------------------ resampling
def build_resampling_figure(history: Mapping[str, Any], *, title: str) -> Figure:
    """Per-class sampling weight, expected share of draws and mean true-class probability per epoch.

    ``history`` is ``resampling_history.json``; each entry's weights and shares are set at the end of its epoch
    for the next one, the probability is the class's mean over the epoch's training draws.
    """
    entries = list(history.get("epochs") or [])
    if not entries:
        raise ValueError("the resampling history has no epochs to draw")
    epochs = [float(entry["epoch"]) for entry in entries]
    classes = list(entries[0]["next_epoch_class_weights"])
    with fonts_for([*classes, title]):
        return _resampling_figure(history, entries, epochs, classes, title)


def _resampling_figure(history, entries, epochs, classes, title) -> Figure:
    panels = (
        ("next_epoch_class_weights", 1.0, "weight", "class weight set for the next epoch"),
        ("next_epoch_class_share", 100.0, "share of draws (%)", "expected share of the next epoch's draws"),
        ("mean_true_class_prob", 1.0, "probability", "mean true-class probability of the epoch's draws"),
    )
    figure = _new_figure(7.5, 9.0)
    axes = figure.subplots(len(panels), 1, sharex=True)
    for ax, (key, scale, ylabel, subtitle) in zip(axes, panels):
        for name in classes:
            values = [scale * _finite(entry.get(key, {}).get(name)) for entry in entries]
            ax.plot(epochs, values, marker="o", label=name)
        ax.set_ylabel(ylabel)
        ax.set_title(subtitle, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(0, 1)
    _epoch_axis(axes[-1])
    axes[0].legend(title="class", fontsize=8, loc="best")
    mode = history.get("mode")
    gamma = history.get("gamma")
    detail = f" (mode {mode}, gamma {gamma})" if mode is not None else ""
    figure.suptitle(f"Class-balanced resampling{detail}\n{title}")
    return figure


# ------------------------------------------------------------------------------------------------ fusion
def fusion_weight_series(history: Mapping[str, Any] | None, log_history: Sequence[Mapping[str, Any]] | None):
    """``{level: (epochs, weights)}`` from the resampling history, else from the trainer log's
    ``fusion_weight/<level>`` entries; empty when neither recorded them."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in (history or {}).get("epochs") or []:
        for level, weight in (entry.get("fusion_weights") or {}).items():
            epochs, weights = series.setdefault(level, ([], []))
            epochs.append(float(entry["epoch"]))
            weights.append(_finite(weight))
    if series:
        return series
    for entry in log_history or []:
        for key, weight in entry.items():
            if key.startswith(FUSION_LOG_PREFIX) and "epoch" in entry:
                epochs, weights = series.setdefault(key[len(FUSION_LOG_PREFIX) :], ([], []))
                epochs.append(float(entry["epoch"]))
                weights.append(_finite(weight))
    return series


def fusion_start(config: Mapping[str, Any] | None) -> float | None:
    """The effective weight every prompt level starts from, from a student's ``config.json``: ``fusion_init`` for
    ``learned`` fusion (the parameter is the weight), 1/L for ``softmax`` fusion (equal parameters); None when
    the config does not say."""
    config = config or {}
    mode, levels = config.get("fusion"), config.get("prompt_levels") or []
    if mode == "learned" and config.get("fusion_init") is not None:
        return float(config["fusion_init"])
    if mode == "softmax" and levels:
        return 1.0 / len(levels)
    return None


FUSION_EXPLAINED = (
    "effective weight w: what the model multiplies each prompt level's logits by (fused logits = sum over levels of "
    "w × level logits); with fusion 'learned' w is the trained parameter itself, with 'softmax' the softmax of the "
    "parameters over the levels"
)
FUSION_MIN_SPAN = 1.0  # percent: the y axis spans at least ±1 %, so that a tiny drift is drawn as tiny


def build_fusion_figure(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, start: float | None = None,
    mode: str | None = None,
) -> Figure:
    """One line per prompt level: the change (%) of its effective weight from ``start`` (the initial value, drawn
    at epoch 0 and marked), on an axis of at least ±``FUSION_MIN_SPAN`` % so that noise does not look like a trend.

    Without ``start`` (a config that does not say) the first recorded value is the reference, and the caption says
    so. A start of 0 has no relative change: the absolute change is drawn instead. The legend gives each level's
    start and final effective weight; the caption explains the effective weight.
    """
    if not series:
        raise ValueError("no fusion weights to draw")
    figure = _new_figure(7.5, 4.8)
    ax = figure.subplots()
    relative = start is None or abs(start) > 1e-12
    largest = 0.0
    for level, (epochs, weights) in series.items():
        epochs, weights = [float(e) for e in epochs], [float(w) for w in weights]
        reference = weights[0] if start is None else float(start)
        if start is not None:
            epochs, weights = [0.0] + epochs, [reference] + weights
        if relative:
            change = [100.0 * (w - reference) / abs(reference) for w in weights]
        else:
            change = [w - reference for w in weights]
        largest = max([largest] + [abs(c) for c in change if math.isfinite(c)])
        ax.plot(epochs, change, marker="o", label=f"{level}: {reference:.5g} → {weights[-1]:.5g}")
    ax.axhline(0.0, color="black", linewidth=1.0, linestyle=":", zorder=0)
    if start is not None:
        ax.plot([0.0], [0.0], marker="*", markersize=14, color="black", linestyle="none", gid="fusion:start",
                label=f"start (epoch 0): w = {start:.4g}")
    span = max(FUSION_MIN_SPAN if relative else 0.01, 1.15 * largest)
    ax.set_ylim(-span, span)
    _epoch_axis(ax)
    ax.set_ylabel("change of the effective weight from the start (%)" if relative
                  else "change of the effective weight from the start")
    ax.grid(alpha=0.3)
    ax.legend(title="prompt level: start → last", fontsize=8)
    reference_note = (f"start: the initial effective weight of every level ({mode or 'fusion'}: w = {start:.4g})"
                      if start is not None else "reference: the first recorded epoch (the initial value is unknown)")
    figure.suptitle(f"Prompt-level fusion weights: change since the start\n{title}")
    figure.supxlabel(f"{reference_note}; {FUSION_EXPLAINED}.", fontsize=7, wrap=True)
    return figure


# ------------------------------------------------------------------------------------------------ losses
def _checkpoint_step(path: str | None) -> int | None:
    match = re.search(r"checkpoint-(\d+)$", str(path or "").rstrip("/\\"))
    return int(match.group(1)) if match else None


def selected_epoch(trainer_state: Mapping[str, Any]) -> float | None:
    """The epoch of the checkpoint model selection kept (``best_global_step`` or ``best_model_checkpoint``)."""
    step = trainer_state.get("best_global_step") or _checkpoint_step(trainer_state.get("best_model_checkpoint"))
    if step is None:
        return None
    entries = [entry for entry in trainer_state.get("log_history") or [] if entry.get("step") == step]
    for entry in sorted(entries, key=lambda e: not any(key.startswith("eval_") for key in e)):
        if "epoch" in entry:
            return float(entry["epoch"])
    logger.warning(f"model selection kept step {step}, which no entry of the trainer log names: not marked")
    return None


def loss_curves(log_history: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``{log key: (epochs, values)}`` of the losses and the validation macro-F1.

    One value per logged step: an evaluation logged twice at the same step (a final ``trainer.evaluate()`` of
    the selected model after training) is kept once, at its first occurrence.
    """
    curves: dict[str, tuple[list[float], list[float]]] = {}
    seen: set[tuple[str, Any]] = set()
    for entry in log_history:
        if "epoch" not in entry:
            continue
        for key in [key for key, _, _ in LOSS_CURVES] + ["eval_macro_f1"]:
            if key not in entry or (key, entry.get("step")) in seen:
                continue
            seen.add((key, entry.get("step")))
            epochs, values = curves.setdefault(key, ([], []))
            epochs.append(float(entry["epoch"]))
            values.append(_finite(entry[key]))
    return curves


def build_losses_figure(
    log_history: Sequence[Mapping[str, Any]], *, best_epoch: float | None, title: str
) -> Figure:
    """Left: training total/CE/KD and validation loss; right: validation macro-F1 (%); both mark ``best_epoch``."""
    curves = loss_curves(log_history)
    if not any(key in curves for key, _, _ in LOSS_CURVES):
        raise ValueError("the trainer log has no loss entries to draw")
    figure = _new_figure(11.0, 4.5)
    loss_ax, f1_ax = figure.subplots(1, 2)
    for key, label, style in LOSS_CURVES:
        if key in curves:
            epochs, values = curves[key]
            loss_ax.plot(epochs, values, style, marker="o", label=label)
    _epoch_axis(loss_ax)
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("losses (training: mean over the epoch)", fontsize=10)
    if "eval_macro_f1" in curves:
        epochs, values = curves["eval_macro_f1"]
        f1_ax.plot(epochs, [100.0 * v for v in values], marker="o", color="tab:green", label="validation macro-F1")
    _epoch_axis(f1_ax)
    f1_ax.set_ylabel("macro-F1 (%)")
    f1_ax.set_title("validation macro-F1", fontsize=10)
    for ax in (loss_ax, f1_ax):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="black", linestyle=":", label=f"{SELECTED_LABEL} (epoch {best_epoch:g})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"Training and validation curves\n{title}")
    return figure


# ------------------------------------------------------------------------------------------------ one run
def write_run_figures(output_dir: str | Path, *, title: str) -> list[str]:
    """Write the pictures a finished run's files allow next to them; returns the file names written.

    ``resampling.png`` needs ``resampling_history.json`` (student runs with resampling); ``fusion_weights.png``
    its ``fusion_weights`` or the trainer log's ``fusion_weight/<level>`` entries; ``losses.png`` a
    ``trainer_state.json`` (runs with ``--do_train``).
    """
    output_dir = Path(output_dir)
    history_path, state_path = output_dir / HISTORY_FILE, output_dir / TRAINER_STATE_FILE
    history = _read_json(history_path) if history_path.is_file() else None
    state = _read_json(state_path) if state_path.is_file() else None
    log_history = (state or {}).get("log_history") or []
    written = []
    if history and history.get("epochs"):
        written.append(_save(build_resampling_figure(history, title=title), output_dir / RESAMPLING_FIGURE))
    series = fusion_weight_series(history, log_history)
    if series:
        config_path = output_dir / "config.json"
        config = (_read_json(config_path) if config_path.is_file() else None) or {}
        figure = build_fusion_figure(series, title=title, start=fusion_start(config), mode=config.get("fusion"))
        written.append(_save(figure, output_dir / FUSION_FIGURE))
    if any(key in entry for entry in log_history for key, _, _ in LOSS_CURVES):
        figure = build_losses_figure(log_history, best_epoch=selected_epoch(state), title=title)
        written.append(_save(figure, output_dir / LOSSES_FIGURE))
    return written


# ------------------------------------------------------------------------------------------------ splits
def paper_results(dataset: str, config_dir: str | Path | None = None) -> dict | None:
    """The paper's published values for a run name, in the units of our metrics (fractions; ms for ms/img).

    Read from the ``paper_results:`` block of ``configs/<dataset>.yaml`` (values there in percent, as
    published). ``None`` when the run name has no such recipe (other tasks, magnifications, the demo), since
    the published numbers belong to the paper's own settings only.
    """
    path = Path(config_dir or CONFIG_DIR) / f"{dataset}.yaml"
    if not path.is_file():
        return None
    block = (yaml.safe_load(path.read_text()) or {}).get(PAPER_KEY)
    if not block:
        return None
    values = {}
    for key, entry in block.items():
        if not isinstance(entry, Mapping):
            continue
        scale = 1.0 if key == TIME_KEY else 0.01
        std = entry.get("std")
        values[key] = {"mean": scale * float(entry["mean"]), "std": None if std is None else scale * float(std)}
    return {"source": block.get("source", PAPER_LABEL), "note": block.get("note"), "metrics": values}


def _summary_stats(summary: Mapping[str, Any], key: str):
    """(mean, std, {split: value}) of a metric in a splits summary, accepting ``test_``-prefixed keys."""
    metrics = summary.get("metrics") or {}
    for name in (key, f"test_{key}"):
        if name in metrics:
            stats = metrics[name]
            values = {str(split): _finite(v) for split, v in (stats.get("values") or {}).items()}
            return _finite(stats.get("mean")), _finite(stats.get("std")), values
    return None


def build_splits_figure(
    summary: Mapping[str, Any], *, paper: Mapping[str, Any] | None, title: str, paper_left_out: str | None = None
) -> Figure:
    """Bars of each metric's mean ± std over the splits, the paper's bar beside it, and the per-split points.

    Percent metrics share the left panel; ms/img (hardware-dependent) has its own panel when present. Our bars
    are labelled ``ours...``, the paper's ``PAPER_LABEL``; the points of metric ``key`` are the line with gid
    ``splits:<key>``. ``paper_left_out``: why the paper's values are not drawn (said in the caption).
    """
    paper_metrics = (paper or {}).get("metrics") or {}
    rows, undefined = [], []
    for key, name in METRIC_TITLES.items():
        stats = _summary_stats(summary, key)
        if stats is None:
            continue
        if math.isnan(stats[0]):
            undefined.append(name)
            continue
        rows.append((key, name, *stats))
    if not rows:
        raise ValueError(f"the splits summary has none of the metrics {list(METRIC_TITLES)}")
    percent, time = [r for r in rows if r[0] != TIME_KEY], [r for r in rows if r[0] == TIME_KEY]
    groups = [group for group in (percent, time) if group]
    n_splits = summary.get("n_splits") or len(summary.get("splits") or [])
    figure = _new_figure(3.0 + 1.2 * len(rows), 5.5)
    axes = figure.subplots(1, len(groups), width_ratios=[max(len(g), 2) for g in groups], squeeze=False)[0]
    for ax, group in zip(axes, groups):
        _draw_split_bars(ax, group, paper_metrics, n_splits)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    notes = []
    if paper:
        notes.append(f"{PAPER_LABEL}: {paper.get('source')}" + (f"; {paper['note']}" if paper.get("note") else ""))
    elif paper_left_out:
        notes.append(f"{PAPER_LABEL} not drawn: {paper_left_out}")
    if undefined:
        notes.append("undefined in every split (not drawn): " + ", ".join(undefined))
    splits = ", ".join(map(str, summary.get("splits") or []))
    figure.suptitle(f"Test metrics over {n_splits} splits ({splits})\n{title}")
    if notes:
        figure.supxlabel("\n".join(notes), fontsize=7)
    return figure


def _draw_split_bars(ax, group, paper_metrics: Mapping[str, Any], n_splits: int) -> None:
    is_time = group[0][0] == TIME_KEY
    scale = 1.0 if is_time else 100.0
    width = 0.38
    fmt = "%.0f" if is_time else "%.1f"
    x = np.arange(len(group), dtype=float)
    with_paper = [row[0] in paper_metrics for row in group]
    ours_x = np.where(with_paper, x - width / 2, x)
    stds = [0.0 if math.isnan(row[3]) else scale * row[3] for row in group]
    bars = ax.bar(ours_x, [scale * row[2] for row in group], width, yerr=stds, capsize=4, color="tab:blue",
                  alpha=0.85, label=f"ours, mean ± std over {n_splits} splits")
    ax.bar_label(bars, fmt=fmt, fontsize=7, padding=2)
    for i, (key, _, _, _, values) in enumerate(group):
        points = [scale * v for v in values.values() if not math.isnan(v)]
        offsets = np.linspace(-0.3, 0.3, len(points)) * width if len(points) > 1 else np.zeros(len(points))
        ax.plot(ours_x[i] + offsets, points, "o", color="black", markersize=3, gid=f"splits:{key}",
                label="per split" if i == 0 else "_nolegend_")
    if any(with_paper):
        entries = [paper_metrics[row[0]] for row in group if row[0] in paper_metrics]
        paper_bars = ax.bar(x[with_paper] + width / 2, [scale * e["mean"] for e in entries], width,
                            yerr=[scale * (e["std"] or 0.0) for e in entries], capsize=4, color="tab:orange",
                            alpha=0.85, label=PAPER_LABEL)
        ax.bar_label(paper_bars, fmt=fmt, fontsize=7, padding=2)
    ax.set_xticks(x, labels=[row[1] for row in group], rotation=30 if len(group) > 2 else 0,
                  ha="right" if len(group) > 2 else "center")
    if is_time:
        ax.set_ylabel("inference time (ms per image)")
        ax.set_title("time (hardware-dependent)", fontsize=9)
        ax.set_ylim(bottom=0)
    else:
        ax.set_ylabel("metric value (%)")
        lowest = min([0.0] + [100.0 * v for *_, values in group for v in values.values() if not math.isnan(v)])
        ax.set_ylim(lowest, 108)
    ax.grid(axis="y", alpha=0.3)


def write_splits_figure(root: str | Path, *, dataset: str, title: str, compare_to_paper: bool = True) -> str | None:
    """Write ``splits_summary.png`` from ``<root>/splits_summary.json``; returns its name, ``None`` without one.

    ``dataset`` is the run name (``--dataset`` plus task/magnification/resolution, e.g. ``breakhis-binary``):
    the paper's values are drawn only for the paper's own settings (``configs/<dataset>.yaml`` has a
    ``paper_results:`` block), only when ``compare_to_paper`` (they are the AMLPF-CLIP student's, so a
    teacher's summary passes False) and only when the runs (``split_<k>/config.json``) used the paper's
    backbones; otherwise the caption says why they are left out.
    """
    root = Path(root)
    path = root / SPLITS_SUMMARY_FILE
    if not path.is_file():
        return None
    paper = paper_results(dataset) if compare_to_paper else None
    left_out = None
    if paper:
        runs = [p for p in sorted(root.iterdir()) if p.is_dir() and re.fullmatch(r"split_\d+", p.name)] or [root]
        allowed, left_out = paper_comparison([identify_folder(run) for run in runs])
        paper = paper if allowed else None
    figure = build_splits_figure(_read_json(path), paper=paper, title=title, paper_left_out=left_out)
    return _save(figure, root / SPLITS_FIGURE)
