"""The AMLPF-CLIP paper's classification metrics as a local ``evaluate`` module, computed by scikit-learn.

It lives in the repository (not on the Hub) so that ``evaluate.load(<this folder>)`` works offline. ``evaluate``
copies this file alone into its modules cache, so it imports only installed libraries, never the package.
Conventions are scikit-learn's defaults; what scikit-learn leaves undefined is decided here and said in ``note``.
"""

from __future__ import annotations

import unicodedata
import warnings

import datasets
import evaluate
import numpy as np
from scipy.special import softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

_DESCRIPTION = """\
Multi-class histopathology classification metrics reported by AMLPF-CLIP (IEEE JBHI 2025): accuracy, macro
precision / recall / F1, macro one-vs-rest AUROC on probabilities, Cohen's kappa, Matthews correlation
coefficient, balanced accuracy, per-class recall and the confusion matrix.
"""

_CITATION = """\
@article{yao2025amlpfclip,
  title   = {AMLPF-CLIP: Adaptive prompting and distilled learning for imbalanced
             histopathological image classification},
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
    class_names: optional list of C names used as keys of `per_class_recall` (Unicode NFC form);
        defaults to "0".."C-1".
    probabilities: True (default) when `predictions` are probabilities (rows >= 0 summing to 1).
Returns:
    accuracy, macro_precision, macro_recall, macro_f1, macro_auroc, balanced_accuracy (floats in [0, 1]),
    cohen_kappa, mcc (floats in [-1, 1]), per_class_recall (dict name -> float; NaN for a class absent from
    the references), confusion_matrix (C x C list of lists, rows = true class, columns = predicted class),
    note (str; empty unless a metric was computed on a subset of classes or is undefined).
    Macro precision/recall/F1 average over the classes present in the references or the predictions
    (scikit-learn's default labels), with zero_division=0. Balanced accuracy averages the recall of the
    classes present in the references. Macro AUROC is `roc_auc_score(multi_class="ovr", average="macro")`;
    with classes absent from the references, the mean one-vs-rest AUROC of the present classes (NaN with
    a single present class); with C == 2 it is the binary AUROC of class 1. Cohen's kappa is NaN when the
    references and predictions hold one identical class; MCC is 0 when undefined (scikit-learn).
Examples:
    >>> metric = evaluate.load("path/to/amlpf_classification")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])["accuracy"]
    1.0
"""

_PROBABILITY_SUM_TOLERANCE = 1e-3


def _validate(scores, labels, num_classes, class_names, probabilities):
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(
            f"predictions must be a non-empty (num_samples, num_classes) array of scores, got shape {scores.shape}."
        )
    if labels.shape != (scores.shape[0],):
        raise ValueError(
            f"references must hold one label per prediction row: got {labels.shape} for {scores.shape[0]} rows "
            "(the number of predictions)."
        )
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
    class_names = [unicodedata.normalize("NFC", str(name)) for name in class_names]
    if len(class_names) != width:
        raise ValueError(f"{len(class_names)} class_names for predictions with {width} columns: {class_names}.")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be unique (compared in Unicode NFC form), got {class_names}.")
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
        scores = softmax(scores, axis=1)
    return scores, labels, class_names


def _macro_auroc(labels: np.ndarray, probs: np.ndarray, present: np.ndarray) -> float:
    """scikit-learn's macro one-vs-rest AUROC; over the present classes when some are absent from the labels
    (its multi-class form refuses them), as the mean of their one-vs-rest AUROCs (the multilabel form)."""
    n_classes = probs.shape[1]
    if len(present) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(present) == n_classes:
        return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    one_vs_rest = labels[:, None] == present[None, :]
    return float(roc_auc_score(one_vs_rest, probs[:, present], average="macro"))


def classification_metrics(scores, labels, num_classes=None, class_names=None, probabilities=True) -> dict:
    """All metrics of the module, as a plain function (the module's ``_compute`` calls this)."""
    probs, labels, class_names = _validate(scores, labels, num_classes, class_names, probabilities)
    n_classes = probs.shape[1]
    all_labels = list(range(n_classes))
    predicted = probs.argmax(axis=1)
    present = np.unique(labels)
    notes = []

    missing = [class_names[c] for c in all_labels if c not in present]
    if missing:
        notes.append(
            f"classes absent from references: {missing}; macro AUROC and balanced accuracy use the "
            f"{len(present)} present classes, their per_class_recall is NaN"
        )
    with warnings.catch_warnings():
        # Absent classes and undefined values are reported in `note` instead.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, average="macro", zero_division=0
        )
        _, class_recall, _, support = precision_recall_fscore_support(
            labels, predicted, labels=all_labels, average=None, zero_division=0
        )
        balanced = balanced_accuracy_score(labels, predicted)
        if len(np.union1d(present, predicted)) == 1:
            kappa = float("nan")
            notes.append("cohen_kappa undefined: references and predictions hold a single, identical class")
        else:
            kappa = float(cohen_kappa_score(labels, predicted))
        if len(present) == 1 or len(np.unique(predicted)) == 1:
            notes.append("mcc undefined (a single class in references or predictions); reported as 0")
        mcc = float(matthews_corrcoef(labels, predicted))
    auroc = _macro_auroc(labels, probs, present)
    if np.isnan(auroc):
        notes.append("macro_auroc undefined: the references hold a single class")

    per_class_recall = {
        name: float(class_recall[c]) if support[c] > 0 else float("nan") for c, name in enumerate(class_names)
    }
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
        "macro_auroc": auroc,
        "cohen_kappa": kappa,
        "mcc": mcc,
        "balanced_accuracy": float(balanced),
        "per_class_recall": per_class_recall,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=all_labels).tolist(),
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
