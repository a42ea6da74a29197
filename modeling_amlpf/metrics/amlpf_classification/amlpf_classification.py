"""The AMLPF-CLIP paper's classification metrics as a local ``evaluate`` module.

It lives in the repository (not on the Hub) so that ``evaluate.load(<this folder>)`` works offline.
The file is self-contained (numpy only) because ``evaluate`` copies it alone into its modules cache, and the
equations are written out here rather than delegated to scikit-learn so that the tests, which use
scikit-learn, are an independent check. Conventions follow scikit-learn's defaults.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Multi-class histopathology classification metrics reported by AMLPF-CLIP (IEEE JBHI 2025): accuracy, macro
precision / recall / F1, macro one-vs-rest AUROC on probabilities, Cohen's kappa, Matthews correlation
coefficient, balanced accuracy, per-class recall and the confusion matrix.
"""

_CITATION = """\
@article{yao2025amlpfclip,
  title   = {AMLPF-CLIP: Adaptive prompting and distilled learning for imbalanced histopathological image classification},
  author  = {Yao and Yue and Deng and Lin and Zhou},
  journal = {IEEE Journal of Biomedical and Health Informatics},
  year    = {2025},
  doi     = {10.1109/JBHI.2025.3619343}
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: per-sample score vectors of length C: class probabilities, or logits with
        `probabilities=False` (a softmax is then applied).
    references: integer labels in [0, C).
    num_classes: optional C, checked against the width of `predictions`.
    class_names: optional list of C names used as keys of `per_class_recall`; defaults to "0".."C-1".
    probabilities: True (default) when `predictions` are probabilities (rows >= 0 summing to 1).
Returns:
    accuracy, macro_precision, macro_recall, macro_f1, macro_auroc, balanced_accuracy (floats in [0, 1]),
    cohen_kappa, mcc (floats in [-1, 1]), per_class_recall (dict name -> float; NaN for a class absent from
    the references), confusion_matrix (C x C list of lists, rows = true class, columns = predicted class),
    note (str; empty unless a metric was computed on a subset of classes or is undefined).
    Macro precision/recall/F1 average over the classes present in the references or the predictions
    (scikit-learn's default labels), with zero_division=0. Balanced accuracy averages the recall of the
    classes present in the references. Macro AUROC averages one-vs-rest AUROC over classes present in the
    references; with C == 2 it is the binary AUROC of class 1.
Examples:
    >>> metric = evaluate.load("path/to/amlpf_classification")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])["accuracy"]
    1.0
"""

_PROBABILITY_SUM_TOLERANCE = 1e-3


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so large logits do not overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (what the Mann-Whitney AUROC needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    tie_starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    tie_ends = np.r_[tie_starts[1:], len(values)]
    mean_rank = (tie_starts + 1 + tie_ends) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, tie_ends - tie_starts)
    return ranks


def binary_auroc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """AUROC as the probability that a random positive outscores a random negative (ties count half)."""
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise division that yields 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _validate(scores, labels, num_classes, class_names, probabilities):
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(
            f"predictions must be a non-empty (num_samples, num_classes) array of scores, got shape {scores.shape}."
        )
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"references must hold one label per prediction row: got {labels.shape} for {scores.shape[0]} rows.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("predictions contain NaN or infinite values; check the model outputs.")
    if labels.dtype.kind not in "iu":
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError("references must be integer class indices.")
        labels = labels.astype(np.int64)
    width = scores.shape[1]
    if num_classes is not None and int(num_classes) != width:
        raise ValueError(f"num_classes={num_classes} but predictions have {width} columns.")
    if class_names is None:
        class_names = [str(i) for i in range(width)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != width:
        raise ValueError(f"{len(class_names)} class_names for predictions with {width} columns: {class_names}.")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be unique, got {class_names}.")
    if labels.min() < 0 or labels.max() >= width:
        raise ValueError(f"references must lie in [0, {width}); found labels {sorted(set(labels.tolist()))}.")
    if probabilities:
        row_sums = scores.sum(axis=1)
        if scores.min() < 0 or np.abs(row_sums - 1.0).max() > _PROBABILITY_SUM_TOLERANCE:
            raise ValueError(
                "predictions do not look like probabilities (rows must be >= 0 and sum to 1); "
                "pass probabilities=False when giving logits."
            )
    else:
        scores = softmax(scores)
    return scores, labels.astype(np.int64), class_names


def classification_metrics(scores, labels, num_classes=None, class_names=None, probabilities=True) -> dict:
    """All metrics of the module, as a plain function (the module's ``_compute`` calls this)."""
    probs, labels, class_names = _validate(scores, labels, num_classes, class_names, probabilities)
    n_samples, n_classes = probs.shape
    predicted = probs.argmax(axis=1)
    confusion = np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)

    true_count = confusion.sum(axis=1)
    pred_count = confusion.sum(axis=0)
    tp = np.diag(confusion).astype(np.float64)
    in_refs = true_count > 0
    in_refs_or_preds = in_refs | (pred_count > 0)
    notes = []

    precision = _safe_divide(tp, pred_count)
    recall = _safe_divide(tp, true_count)
    f1 = _safe_divide(2 * tp, 2 * tp + (pred_count - tp) + (true_count - tp))

    missing = [class_names[c] for c in range(n_classes) if not in_refs[c]]
    if missing:
        notes.append(
            f"classes absent from references: {missing}; macro AUROC and balanced accuracy use the "
            f"{int(in_refs.sum())} present classes, their per_class_recall is NaN"
        )

    # Cohen's kappa = (p_o - p_e) / (1 - p_e), p_e from the marginals.
    observed = tp.sum() / n_samples
    expected = float(np.dot(true_count, pred_count)) / n_samples**2
    if expected >= 1.0:
        kappa = float("nan")
        notes.append("cohen_kappa undefined: references and predictions hold a single, identical class")
    else:
        kappa = float((observed - expected) / (1.0 - expected))

    # Multi-class MCC (Gorodkin's R_K), 0 when undefined as in scikit-learn.
    cov_true_pred = tp.sum() * n_samples - np.dot(true_count, pred_count)
    cov_pred = float(n_samples**2 - np.dot(pred_count, pred_count))
    cov_true = float(n_samples**2 - np.dot(true_count, true_count))
    if cov_pred * cov_true == 0:
        mcc = 0.0
        notes.append("mcc undefined (a single class in references or predictions); reported as 0")
    else:
        mcc = float(cov_true_pred / np.sqrt(cov_pred * cov_true))

    if n_classes == 2:
        auroc = binary_auroc(labels == 1, probs[:, 1])
    else:
        per_class_auroc = [binary_auroc(labels == c, probs[:, c]) for c in range(n_classes) if in_refs[c]]
        auroc = float(np.mean(per_class_auroc)) if not np.isnan(per_class_auroc).any() else float("nan")
    if np.isnan(auroc):
        notes.append("macro_auroc undefined: the references hold a single class")

    per_class_recall = {
        name: float(recall[c]) if in_refs[c] else float("nan") for c, name in enumerate(class_names)
    }
    return {
        "accuracy": float(observed),
        "macro_precision": float(precision[in_refs_or_preds].mean()),
        "macro_recall": float(recall[in_refs_or_preds].mean()),
        "macro_f1": float(f1[in_refs_or_preds].mean()),
        "macro_auroc": auroc,
        "cohen_kappa": kappa,
        "mcc": mcc,
        "balanced_accuracy": float(recall[in_refs].mean()),
        "per_class_recall": per_class_recall,
        "confusion_matrix": confusion.tolist(),
        "note": "; ".join(notes),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AmlpfClassification(evaluate.Metric):
    """Evaluate wrapper: stores score vectors and labels, then computes every metric at once."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://doi.org/10.1109/JBHI.2025.3619343"],
        )

    def _compute(self, predictions, references, num_classes=None, class_names=None, probabilities=True):
        return classification_metrics(predictions, references, num_classes, class_names, probabilities)
