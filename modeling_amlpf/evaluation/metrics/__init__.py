"""Classification metrics through the local ``evaluate`` module, a Trainer hook, and reporting helpers.

The metric is loaded with ``evaluate.load(<path of amlpf_classification/>)``, which works offline
(``HF_HUB_OFFLINE=1``, ``HF_EVALUATE_OFFLINE=1``): evaluate copies the module file into
``$HF_HOME/modules`` and never contacts the Hub for a local path.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...data.class_names import normalize_class_names
from .reporting import (
    METRIC_TITLES,
    TABLE_COLUMNS,
    TIME_KEY,
    confusion_matrix_title,
    flatten_metrics,
    json_safe,
    per_class_recall_key,
    plot_confusion_matrix,
    render_metrics_table,
    render_summary_markdown,
    summarize_splits,
)

logger = logging.getLogger(__name__)

METRIC_MODULE_PATH = Path(__file__).resolve().parent / "amlpf_classification"
_PROBABILITY_SUM_TOLERANCE = 1e-3

__all__ = [
    "METRIC_MODULE_PATH",
    "METRIC_TITLES",
    "TABLE_COLUMNS",
    "TIME_KEY",
    "compute_classification_metrics",
    "confusion_matrix_title",
    "flatten_metrics",
    "json_safe",
    "load_classification_metric",
    "make_compute_metrics",
    "per_class_recall_key",
    "plot_confusion_matrix",
    "render_metrics_table",
    "render_summary_markdown",
    "summarize_splits",
]


@functools.lru_cache(maxsize=1)
def load_classification_metric():
    """The AMLPF ``evaluate`` metric, loaded once per process from this package's folder (works offline).

    One shared instance: ``evaluate`` appends to a class-level docstring on every instantiation, so creating
    one per evaluation would grow without bound. ``compute(predictions=..., references=...)`` resets its
    buffers; use ``add_batch`` only on an instance you own (``type(load_classification_metric())()``).
    ``keep_in_memory=True`` writes no arrow cache files or locks, so processes on one node never contend.
    """
    import evaluate

    return evaluate.load(str(METRIC_MODULE_PATH), keep_in_memory=True)


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, possibly half precision or on an accelerator
        array = array.detach().float().cpu() if array.is_floating_point() else array.detach().cpu()
    return np.asarray(array)


def looks_like_probabilities(scores: np.ndarray) -> bool:
    """Rows that are non-negative and sum to 1: logits practically never satisfy both."""
    return bool(scores.min() >= 0 and np.abs(scores.sum(axis=1) - 1.0).max() <= _PROBABILITY_SUM_TOLERANCE)


def compute_classification_metrics(
    logits_or_probs, labels, class_names: Sequence[str], probabilities: bool | None = None
) -> dict[str, Any]:
    """All AMLPF metrics of one evaluation, computed by the evaluate module.

    ``probabilities=None`` decides from the values (probabilities if rows are >= 0 and sum to 1, else logits
    and a softmax is applied); pass True/False to force it.
    """
    scores = _to_numpy(logits_or_probs).astype(np.float64)
    labels = _to_numpy(labels)
    if scores.ndim != 2:
        raise ValueError(f"expected (num_samples, num_classes) scores, got shape {scores.shape}.")
    if scores.shape[1] != len(class_names):
        raise ValueError(
            f"{len(class_names)} class_names {list(class_names)} for scores with {scores.shape[1]} columns; "
            "pass the names of every class the model predicts, in label order."
        )
    if probabilities is None:
        probabilities = looks_like_probabilities(scores)
    metric = load_classification_metric()
    return metric.compute(
        predictions=scores,
        references=labels,
        num_classes=len(class_names),
        class_names=list(class_names),
        probabilities=probabilities,
    )


def make_compute_metrics(class_names: Sequence[str], probabilities: bool = False) -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` for ``transformers.Trainer``: EvalPrediction -> flat dict of floats.

    The model's outputs are logits unless ``probabilities=True``; when ``predictions`` is a tuple (extra
    outputs), the first element is taken. Per-class recall becomes ``recall_<class name>``; the confusion
    matrix and the note are not scalars, so they are left out of the logs (the note is logged as a warning).
    """
    # Fail now, not after the first evaluation, on empty names or one name in two Unicode forms.
    class_names = normalize_class_names(class_names, source="the class names given to compute_metrics")
    for name in class_names:
        per_class_recall_key(name)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        labels = eval_prediction.label_ids
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        if isinstance(labels, (tuple, list)):
            labels = labels[0]
        results = compute_classification_metrics(predictions, labels, class_names, probabilities=probabilities)
        if results.get("note"):
            logger.warning("Evaluation metrics: %s", results["note"])
        flat, _ = flatten_metrics(results)
        return flat

    return compute_metrics
