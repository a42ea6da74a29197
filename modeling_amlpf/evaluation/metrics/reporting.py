"""Human-readable results: split summaries (mean ± sample std), the paper's table layout, a confusion plot, and
strict JSON.

Everything here consumes plain metric dicts, either nested as returned by the evaluate module or flat as
logged by the Trainer (keys optionally prefixed ``test_`` / ``eval_``), so results read back from JSON work too
(``null``, an undefined metric, reads as NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...data.class_names import normalize_class_name
from ...utils import json_safe  # noqa: F401  (re-exported: results are written through it)

# The one table of metric keys and their titles, in the order of the paper's result tables; the model card, the
# summaries, the run report and the metrics tables all take their titles from here.
METRIC_TITLES: dict[str, str] = {
    "accuracy": "Accuracy",
    "macro_precision": "Macro precision",
    "macro_recall": "Macro recall",
    "macro_f1": "Macro F1",
    "macro_auroc": "Macro AUROC",
    "cohen_kappa": "Cohen's kappa",
    "mcc": "MCC",
    "balanced_accuracy": "Balanced accuracy",
    "ms_per_image": "ms/img",
}
TIME_KEY = "ms_per_image"
# (title, key) pairs of METRIC_TITLES, for callers that iterate columns.
TABLE_COLUMNS = tuple((title, key) for key, title in METRIC_TITLES.items())
FRACTION_KEYS = frozenset(key for key in METRIC_TITLES if key != TIME_KEY)
PER_CLASS_RECALL_PREFIX = "recall_"
KEY_PREFIXES = ("", "test_", "eval_")
_MISSING = "–"


def per_class_recall_key(class_name: str) -> str:
    """Flat key of one class's recall: ``recall_`` + the class's real name in Unicode NFC form.

    JSON keys and the Trainer's logs hold any Unicode, so names keep their accents, scripts and spaces
    ("Adénocarcinome" -> "recall_Adénocarcinome", "squamous cell carcinoma" -> "recall_squamous cell
    carcinoma"); distinct names never collide.
    """
    name = normalize_class_name(class_name)
    if not name.strip():
        raise ValueError(f"class name {class_name!r} is empty; every class needs a name to report its recall.")
    return PER_CLASS_RECALL_PREFIX + name


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _as_float(value) -> float:
    """A metric value as a float; ``None`` (JSON ``null``, an undefined metric) is NaN."""
    return float("nan") if value is None else float(value)


def flatten_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Scalar view of a metrics dict: ``per_class_recall`` becomes ``recall_<class>`` keys (real class names).

    Returns the flat floats (``None``, an undefined metric read back from JSON, becomes NaN) and the names of
    the entries that are not scalars (confusion matrix, notes), so callers can report what they left out
    instead of dropping it silently.
    """
    flat: dict[str, float] = {}
    non_scalar: list[str] = []
    for key, value in metrics.items():
        if _is_scalar(value) or value is None:
            flat[key] = _as_float(value)
        elif key.endswith("per_class_recall") and isinstance(value, Mapping):
            prefix = key[: -len("per_class_recall")]
            for class_name, recall in value.items():
                flat_key = prefix + per_class_recall_key(class_name)
                if flat_key in flat:
                    raise ValueError(
                        f"two classes are the same name {class_name!r} in two Unicode forms (metric key "
                        f"{flat_key!r}); rename one."
                    )
                flat[flat_key] = _as_float(recall)
        else:
            non_scalar.append(key)
    return flat, non_scalar


def _lookup(metrics: Mapping[str, Any], key: str):
    for prefix in KEY_PREFIXES:
        if prefix + key in metrics:
            return metrics[prefix + key]
    return None


def summarize_splits(per_split: Mapping[Any, Mapping[str, Any]]) -> dict:
    """Mean and sample std (ddof=1, as in the paper) of every scalar metric over the splits.

    Returns ``{"n_splits", "splits", "metrics": {name: {"mean", "std", "n", "values": {split: value}}},
    "non_scalar_keys", "notes"}``. NaN values (an undefined metric in one split) are left out of that
    metric's mean/std and counted in ``n``; a single value gets std NaN, both with a note.
    """
    if not per_split:
        raise ValueError("summarize_splits needs the metrics of at least one split.")
    splits = sorted(per_split)
    flat_by_split = {}
    non_scalar: set[str] = set()
    for split in splits:
        flat, skipped = flatten_metrics(per_split[split])
        flat_by_split[split] = flat
        non_scalar.update(skipped)
    names = list(dict.fromkeys(name for split in splits for name in flat_by_split[split]))

    metrics, notes = {}, []
    for name in names:
        values = {split: flat_by_split[split][name] for split in splits if name in flat_by_split[split]}
        finite = np.array([v for v in values.values() if not math.isnan(v)], dtype=np.float64)
        if len(values) < len(splits):
            notes.append(f"{name}: missing in splits {[s for s in splits if s not in values]}")
        if len(finite) < len(values):
            notes.append(f"{name}: NaN in {len(values) - len(finite)} split(s), left out of mean/std")
        mean = float(finite.mean()) if len(finite) else float("nan")
        std = float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")
        metrics[name] = {"mean": mean, "std": std, "n": int(len(finite)), "values": values}
    if len(splits) == 1:
        notes.append("a single split: standard deviations are undefined (NaN)")
    return {
        "n_splits": len(splits),
        "splits": splits,
        "metrics": metrics,
        "non_scalar_keys": sorted(non_scalar),
        "notes": notes,
    }


def _format_value(value: float, key: str) -> str:
    if value is None or math.isnan(value):
        return _MISSING
    return f"{value:.2f}" if _is_time_key(key) else f"{100.0 * value:.2f}"


def _is_time_key(key: str) -> bool:
    return key == TIME_KEY or key.endswith("_" + TIME_KEY)


def _format_mean_std(stats: Mapping[str, Any] | None, key: str) -> str:
    if stats is None or math.isnan(stats["mean"]):
        return _MISSING
    mean = _format_value(stats["mean"], key)
    if math.isnan(stats["std"]):
        return mean
    return f"{mean} ± {_format_value(stats['std'], key)}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_summary_markdown(
    summary: Mapping[str, Any], dataset_name: str, class_names: Sequence[str] | None = None
) -> str:
    """The paper's layout: one row of ``mean ± std`` in percent (ms/img in milliseconds), then one row per split.

    With ``class_names``, a per-class recall table follows, which is where class imbalance shows.
    """
    metrics = summary["metrics"]
    titles = [title for title, _ in TABLE_COLUMNS]
    n = summary["n_splits"]
    parts = [f"### {dataset_name}: {n} split{'s' if n != 1 else ''}, mean ± sample std (%; ms/img in ms)", ""]
    main_row = [dataset_name] + [_format_mean_std(_lookup(metrics, key), key) for _, key in TABLE_COLUMNS]
    parts += [_markdown_table(["Dataset"] + titles, [main_row]), ""]

    split_rows = []
    for split in summary["splits"]:
        row = [str(split)]
        for _, key in TABLE_COLUMNS:
            stats = _lookup(metrics, key)
            row.append(_format_value(stats["values"].get(split) if stats else None, key))
        split_rows.append(row)
    parts += ["Per split:", "", _markdown_table(["Split"] + titles, split_rows)]

    if class_names:
        rows = [
            [name, _format_mean_std(_lookup(metrics, per_class_recall_key(name)), "recall")] for name in class_names
        ]
        parts += ["", "Per-class recall (%):", "", _markdown_table(["Class", "Recall"], rows)]
    if summary.get("notes"):
        parts += ["", "Notes:"] + [f"- {note}" for note in summary["notes"]]
    return "\n".join(parts) + "\n"


def render_metrics_table(metrics: Mapping[str, Any]) -> str:
    """One run's metrics as markdown: the paper's metrics in percent, per-class recall, other scalars, then
    the confusion matrix when present (rows = true class)."""
    flat, _ = flatten_metrics(metrics)
    rows, shown = [], set()
    for title, key in TABLE_COLUMNS:
        for prefix in KEY_PREFIXES:
            if prefix + key in flat:
                rows.append([title + (" (ms)" if key == TIME_KEY else " (%)"), _format_value(flat[prefix + key], key)])
                shown.add(prefix + key)
                break
    for key, value in flat.items():
        if key in shown:
            continue
        bare = next((key[len(p) :] for p in KEY_PREFIXES[1:] if key.startswith(p)), key)
        if bare.startswith(PER_CLASS_RECALL_PREFIX):
            rows.append([f"Recall {bare[len(PER_CLASS_RECALL_PREFIX):]} (%)", _format_value(value, bare)])
        else:
            rows.append([key, _MISSING if math.isnan(value) else f"{value:.4g}"])
    text = _markdown_table(["Metric", "Value"], rows)

    confusion = _lookup(metrics, "confusion_matrix")
    if confusion is not None:
        recall = _lookup(metrics, "per_class_recall")
        names = list(recall) if isinstance(recall, Mapping) and len(recall) == len(confusion) else None
        names = names or [str(i) for i in range(len(confusion))]
        cm_rows = [[name] + [str(int(c)) for c in row] for name, row in zip(names, confusion)]
        text += "\n\nConfusion matrix (rows: true, columns: predicted):\n\n"
        text += _markdown_table(["true \\ pred"] + names, cm_rows)
    note = _lookup(metrics, "note")
    if note:
        text += f"\n\nNote: {note}"
    return text + "\n"


def confusion_matrix_title(model: str, split: str, dataset: str | None = None) -> str:
    """The title of a confusion plot: which model (teacher/student), on which split (and dataset)."""
    title = f"{model.capitalize()}, {split} split"
    return f"{title} ({dataset})" if dataset else title


LABEL_WIDTH = 18  # characters per line of a class name on a confusion plot's axes (longer names wrap)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width=width, break_long_words=False)) or str(text)


def build_confusion_figure(cm, class_names: Sequence[str], normalize: bool = True, title: str | None = None):
    """The confusion-matrix ``Figure`` (scikit-learn's ``ConfusionMatrixDisplay`` on an Agg canvas): colours and
    values are row-normalised (recall) when ``normalize``, with the counts in brackets; raw counts otherwise.

    Legible with many classes and long names: the x labels stay horizontal, wrapped to the width of a cell, the
    y labels wrap at ``LABEL_WIDTH`` characters, the canvas grows with the number of classes and the name
    length, a constrained layout keeps labels, colour bar and title inside the canvas, and a long title wraps.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    from ..fonts import fonts_for

    counts = np.asarray(cm)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(
            f"confusion matrix of shape {counts.shape} does not match {n} class names {list(class_names)}."
        )
    if normalize:
        row_totals = counts.sum(axis=1, keepdims=True)
        shown = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=np.float64), where=row_totals > 0)
        vmax, values_format = 1.0, ".2f"
    else:
        shown = counts.astype(np.int64)
        vmax, values_format = max(int(shown.max()), 1), "d"

    # x labels stay horizontal, wrapped to the width of one cell; y labels wrap at LABEL_WIDTH characters.
    cell = 1.15  # inches
    font = 9 if n <= 8 else 7
    per_line = max(8, int(cell * 72 / (0.55 * font)))  # about 0.55 em per character
    x_labels = [_wrap(name, per_line) for name in class_names]
    y_labels = [_wrap(name, LABEL_WIDTH) for name in class_names]
    longest = max((len(line) for label in y_labels for line in label.splitlines()), default=1)
    x_lines = max(label.count("\n") + 1 for label in x_labels)
    width = 1.2 + longest * 0.6 * font / 72 + n * cell + 1.3  # margin, y labels, matrix, colour bar
    height = 1.3 + x_lines * 1.3 * font / 72 + n * cell * 0.8  # title, x labels, matrix
    with fonts_for([*map(str, class_names), title or ""]):
        fig = Figure(figsize=(max(width, 5.0), max(height, 4.5)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        display = ConfusionMatrixDisplay(confusion_matrix=shown, display_labels=y_labels)
        display.plot(
            ax=ax, cmap="Blues", values_format=values_format, im_kw={"vmin": 0, "vmax": vmax},
            text_kw={"fontsize": 8 if n <= 8 else 6},
        )
        ax.set_aspect("auto")
        display.im_.colorbar.set_label("fraction of true class" if normalize else "count")
        if normalize:
            for (i, j), text in np.ndenumerate(display.text_):
                text.set_text(f"{shown[i, j]:.2f}\n({int(counts[i, j])})")
        ax.set_xticks(range(n), x_labels, rotation=0, ha="center", fontsize=font)
        ax.set_yticks(range(n), y_labels, fontsize=font)
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        if title:
            characters = max(30, int(fig.get_figwidth() * 9))  # about 9 characters per inch at 12 pt
            fig.suptitle(_wrap(title, characters), fontsize=12)
    return fig


def plot_confusion_matrix(
    cm, class_names: Sequence[str], path, normalize: bool = True, title: str | None = None
) -> Path:
    """Write the confusion-matrix PNG of :func:`build_confusion_figure` to ``path``.

    ``title`` should name the model and the split (:func:`confusion_matrix_title`).
    """
    fig = build_confusion_figure(cm, class_names, normalize=normalize, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=150)
    return path
