"""Metrics (through the local evaluate module) against scikit-learn, the Trainer hook, and reporting."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from modeling_amlpf.metrics import (  # noqa: E402
    METRIC_MODULE_PATH,
    compute_classification_metrics,
    load_classification_metric,
    make_compute_metrics,
    plot_confusion_matrix,
    render_metrics_table,
    render_summary_markdown,
    summarize_splits,
)

SCALAR_KEYS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "macro_auroc",
    "cohen_kappa",
    "mcc",
    "balanced_accuracy",
)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _informative_logits(rng, labels, num_classes, signal=1.5):
    """Noisy logits that favour the true class, so metrics land well away from both chance and 1."""
    logits = rng.normal(size=(len(labels), num_classes))
    logits[np.arange(len(labels)), labels] += signal
    return logits


def _sklearn_reference(labels, probs):
    """The same metrics, computed independently with scikit-learn's defaults."""
    predicted = probs.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    present = np.unique(labels)
    if probs.shape[1] == 2:
        auroc = roc_auc_score(labels, probs[:, 1])
    elif len(present) == probs.shape[1]:
        auroc = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    else:  # sklearn's multi-class AUROC refuses absent classes: average the present classes' one-vs-rest AUROC
        auroc = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present])
    return {
        "accuracy": accuracy_score(labels, predicted),
        "macro_precision": precision,
        "macro_recall": recall,
        "macro_f1": f1,
        "macro_auroc": auroc,
        "cohen_kappa": cohen_kappa_score(labels, predicted),
        "mcc": matthews_corrcoef(labels, predicted),
        "balanced_accuracy": balanced_accuracy_score(labels, predicted),
    }


def _assert_matches_sklearn(result, labels, probs, class_names):
    expected = _sklearn_reference(labels, probs)
    for key in SCALAR_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-10), key
    num_classes = probs.shape[1]
    np.testing.assert_array_equal(
        result["confusion_matrix"], confusion_matrix(labels, probs.argmax(1), labels=list(range(num_classes)))
    )
    present = set(labels.tolist())
    recalls = recall_score(labels, probs.argmax(1), average=None, labels=list(range(num_classes)), zero_division=0)
    for c, name in enumerate(class_names):
        if c in present:
            assert result["per_class_recall"][name] == pytest.approx(recalls[c], abs=1e-12)
        else:
            assert math.isnan(result["per_class_recall"][name])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("num_classes", [3, 4, 8])
def test_multiclass_metrics_equal_sklearn(seed, num_classes):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, size=90)])
    probs = _softmax(_informative_logits(rng, labels, num_classes))
    names = [f"class {c}" for c in range(num_classes)]
    result = compute_classification_metrics(probs, labels, names)
    _assert_matches_sklearn(result, labels, probs, names)
    assert 0.2 < result["accuracy"] < 0.95  # the data is neither trivial nor random
    assert result["note"] == ""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_auroc_is_class_one_auroc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=80)
    probs = _softmax(_informative_logits(rng, labels, 2, signal=1.0))
    result = compute_classification_metrics(probs, labels, ["benign", "malignant"])
    _assert_matches_sklearn(result, labels, probs, ["benign", "malignant"])
    assert result["macro_auroc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-12)


def test_tied_scores_count_half_in_auroc():
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]])
    labels = np.array([0, 1, 0, 1])
    result = compute_classification_metrics(probs, labels, ["a", "b"])
    assert result["macro_auroc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn, on purpose
def test_classes_absent_from_references_do_not_crash_and_are_noted():
    rng = np.random.default_rng(7)
    labels = rng.choice([0, 1, 3], size=60)  # class 2 absent from references; class 4 absent everywhere
    probs = _softmax(_informative_logits(rng, labels, 5))
    probs[:, 4] = 0.0
    probs[:5] = [0.05, 0.05, 0.9, 0.0, 0.0]  # class 2 is still predicted for five samples
    probs /= probs.sum(axis=1, keepdims=True)
    names = ["normal", "serrated", "adenocarcinoma", "adenoma", "other"]
    result = compute_classification_metrics(probs, labels, names)

    _assert_matches_sklearn(result, labels, probs, names)
    assert "adenocarcinoma" in result["note"] and "other" in result["note"]
    # macro recall counts the predicted-but-absent class (recall 0), balanced accuracy does not
    assert result["macro_recall"] < result["balanced_accuracy"]


def test_single_class_references_give_nan_auroc_with_note():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    result = compute_classification_metrics(probs, np.array([0, 0]), ["a", "b", "c"])
    assert math.isnan(result["macro_auroc"])
    assert "macro_auroc undefined" in result["note"]
    assert result["accuracy"] == 0.5


def test_logits_are_softmaxed_and_match_probabilities():
    rng = np.random.default_rng(3)
    labels = np.concatenate([np.arange(4), rng.integers(0, 4, size=40)])
    logits = 3.0 * _informative_logits(rng, labels, 4)
    names = list("abcd")
    from_logits = compute_classification_metrics(logits, labels, names, probabilities=False)
    detected = compute_classification_metrics(logits, labels, names)  # probabilities=None: decided from the values
    from_probs = compute_classification_metrics(_softmax(logits), labels, names, probabilities=True)
    for key in SCALAR_KEYS:
        assert from_logits[key] == pytest.approx(from_probs[key], abs=1e-12)
        assert detected[key] == pytest.approx(from_probs[key], abs=1e-12)
    _assert_matches_sklearn(from_logits, labels, _softmax(logits), names)
    with pytest.raises(ValueError, match="probabilities=False"):
        compute_classification_metrics(logits, labels, names, probabilities=True)


def test_torch_half_precision_inputs():
    torch = pytest.importorskip("torch")
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0], [0.5, 2.0, 0.0]], dtype=torch.bfloat16)
    result = compute_classification_metrics(logits, torch.tensor([0, 2, 1]), ["a", "b", "c"])
    assert result["accuracy"] == 1.0


@pytest.mark.parametrize(
    "probs, labels, names, message",
    [
        (np.full((2, 3), 1 / 3), [0, 3], ["a", "b", "c"], r"\[0, 3\)"),
        (np.full((2, 3), 1 / 3), [0, 1], ["a", "b"], "2 class_names"),
        (np.full((2, 3), 1 / 3), [0], ["a", "b", "c"], "number of predictions"),
        (np.array([[np.nan, 1.0, 0.0]]), [0], ["a", "b", "c"], "NaN"),
    ],
)
def test_invalid_inputs_raise_actionable_errors(probs, labels, names, message):
    with pytest.raises(ValueError, match=message):
        compute_classification_metrics(probs, np.asarray(labels), names, probabilities=True)


def test_metric_is_an_evaluate_module_with_batches():
    import evaluate

    metric = type(load_classification_metric())(keep_in_memory=True)
    assert isinstance(metric, evaluate.Metric)
    rng = np.random.default_rng(11)
    labels = np.concatenate([np.arange(3), rng.integers(0, 3, size=30)])
    probs = _softmax(_informative_logits(rng, labels, 3))
    for start in range(0, len(labels), 10):
        metric.add_batch(predictions=probs[start : start + 10], references=labels[start : start + 10])
    result = metric.compute(class_names=["x", "y", "z"])
    _assert_matches_sklearn(result, labels, probs, ["x", "y", "z"])


_OFFLINE_LOAD_SCRIPT = f"""
import json, evaluate
metric = evaluate.load({str(METRIC_MODULE_PATH)!r})
out = metric.compute(predictions=[[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], references=[0, 1, 1], class_names=["n", "t"])
print(json.dumps({{"cls": type(metric).__name__, "accuracy": out["accuracy"], "auroc": out["macro_auroc"]}}))
"""


@pytest.fixture(scope="module", autouse=True)
def offline_load_process(tmp_path_factory):
    """A fresh interpreter that loads the metric offline with an empty HF cache.

    Started before the first test and awaited by the test below: importing evaluate (which imports
    transformers.pipelines) takes seconds, so it overlaps with the other tests instead of adding to them.
    """
    hf_home = tmp_path_factory.mktemp("hf_home")
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    for var in ("HF_EVALUATE_CACHE", "HF_MODULES_CACHE", "HF_METRICS_CACHE", "XDG_CACHE_HOME"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _OFFLINE_LOAD_SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    yield proc, hf_home
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_evaluate_load_works_offline_with_an_empty_cache(offline_load_process):
    proc, hf_home = offline_load_process
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["cls"] == "AmlpfClassification"
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["auroc"] == pytest.approx(roc_auc_score([0, 1, 1], [0.1, 0.7, 0.4]))
    assert list(hf_home.glob("modules/evaluate_modules/metrics/amlpf_classification/*/amlpf_classification.py"))


def test_trainer_compute_metrics_flattens_to_floats():
    from transformers.trainer_utils import EvalPrediction

    rng = np.random.default_rng(5)
    names = ["adenocarcinoma", "squamous cell carcinoma", "normal"]
    labels = np.concatenate([np.arange(3), rng.integers(0, 3, size=40)])
    logits = _informative_logits(rng, labels, 3).astype(np.float32)
    extra_outputs = rng.normal(size=(len(labels), 7))
    compute_metrics = make_compute_metrics(names)
    flat = compute_metrics(EvalPrediction(predictions=(logits, extra_outputs), label_ids=labels))

    assert all(type(v) is float for v in flat.values())
    assert "confusion_matrix" not in flat and "note" not in flat and "per_class_recall" not in flat
    expected = _sklearn_reference(labels, _softmax(logits.astype(np.float64)))
    for key in SCALAR_KEYS:
        assert flat[key] == pytest.approx(expected[key], abs=1e-9)
    recalls = recall_score(labels, logits.argmax(1), average=None)
    assert flat["recall_squamous_cell_carcinoma"] == pytest.approx(recalls[1])
    assert flat["recall_normal"] == pytest.approx(recalls[2])


def test_make_compute_metrics_rejects_colliding_class_names():
    with pytest.raises(ValueError, match="collide"):
        make_compute_metrics(["a b", "a_b"])


# --- reporting ------------------------------------------------------------------------------------------


def _split_metrics(rng, names):
    out = {key: float(rng.uniform(0.6, 0.95)) for key in SCALAR_KEYS}
    out["ms_per_image"] = float(rng.uniform(40, 90))
    out["per_class_recall"] = {name: float(rng.uniform(0.5, 1.0)) for name in names}
    out["confusion_matrix"] = rng.integers(0, 9, size=(len(names), len(names))).tolist()
    out["note"] = ""
    return out


def test_summarize_splits_uses_sample_std():
    rng = np.random.default_rng(0)
    names = ["normal", "serrated", "adenocarcinoma", "adenoma"]
    per_split = {split: _split_metrics(rng, names) for split in range(1, 6)}
    summary = summarize_splits(per_split)

    assert summary["n_splits"] == 5 and summary["splits"] == [1, 2, 3, 4, 5]
    for key in SCALAR_KEYS + ("ms_per_image",):
        values = np.array([per_split[s][key] for s in range(1, 6)])
        stats = summary["metrics"][key]
        assert stats["mean"] == pytest.approx(values.mean())
        assert stats["std"] == pytest.approx(values.std(ddof=1))
        assert stats["std"] != pytest.approx(values.std(ddof=0))
        assert stats["values"] == {s: per_split[s][key] for s in range(1, 6)}
    serrated = np.array([per_split[s]["per_class_recall"]["serrated"] for s in range(1, 6)])
    assert summary["metrics"]["recall_serrated"]["std"] == pytest.approx(serrated.std(ddof=1))
    assert summary["non_scalar_keys"] == ["confusion_matrix", "note"]


def test_summarize_single_split_and_nan_values_are_noted():
    single = summarize_splits({0: {"accuracy": 0.8}})
    assert math.isnan(single["metrics"]["accuracy"]["std"]) and single["metrics"]["accuracy"]["mean"] == 0.8
    assert any("single split" in note for note in single["notes"])

    summary = summarize_splits({0: {"macro_auroc": 0.9}, 1: {"macro_auroc": float("nan")}, 2: {"macro_auroc": 0.7}})
    assert summary["metrics"]["macro_auroc"]["mean"] == pytest.approx(0.8)
    assert summary["metrics"]["macro_auroc"]["n"] == 2
    assert any("macro_auroc" in note and "NaN" in note for note in summary["notes"])


def test_summary_markdown_has_the_paper_layout():
    rng = np.random.default_rng(1)
    names = ["adenocarcinoma", "squamous cell carcinoma", "normal"]
    per_split = {split: {"test_" + k: v for k, v in _split_metrics(rng, names).items()} for split in range(3)}
    summary = summarize_splits(per_split)
    text = render_summary_markdown(summary, "LungHist700", class_names=names)

    header = next(line for line in text.splitlines() if line.startswith("| Dataset"))
    assert header == "| Dataset | Accuracy | Precision | Recall | F1 | AUROC | Kappa | MCC | Balanced acc. | ms/img |"
    acc = np.array([per_split[s]["test_accuracy"] for s in range(3)])
    assert f"{100 * acc.mean():.2f} ± {100 * acc.std(ddof=1):.2f}" in text
    ms = np.array([per_split[s]["test_ms_per_image"] for s in range(3)])
    assert f"{ms.mean():.2f} ± {ms.std(ddof=1):.2f}" in text  # milliseconds, not percent
    for s in range(3):
        assert any(line.startswith(f"| {s} | {100 * acc[s]:.2f} |") for line in text.splitlines())
    scc = np.array([per_split[s]["test_per_class_recall"]["squamous cell carcinoma"] for s in range(3)])
    assert f"| squamous cell carcinoma | {100 * scc.mean():.2f} ± {100 * scc.std(ddof=1):.2f} |" in text


def test_metrics_table_of_one_run():
    rng = np.random.default_rng(2)
    labels = np.concatenate([np.arange(3), rng.integers(0, 3, size=20)])
    result = compute_classification_metrics(_softmax(_informative_logits(rng, labels, 3)), labels, ["a", "b", "c"])
    text = render_metrics_table({**result, "ms_per_image": 12.345})
    assert f"| Accuracy (%) | {100 * result['accuracy']:.2f} |" in text
    assert f"| MCC (%) | {100 * result['mcc']:.2f} |" in text
    assert "| ms/img (ms) | 12.35 |" in text
    assert f"| Recall b (%) | {100 * result['per_class_recall']['b']:.2f} |" in text
    first_row = result["confusion_matrix"][0]
    assert "| a | " + " | ".join(str(v) for v in first_row) + " |" in text


def _png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_png(tmp_path, normalize):
    import matplotlib

    backend_before = matplotlib.get_backend()
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 0]]  # an empty row must not divide by zero
    out = plot_confusion_matrix(cm, ["normal", "serrated", "adenoma"], tmp_path / "plots" / "cm.png", normalize=normalize)
    width, height = _png_size(out)
    assert out.stat().st_size > 1000 and width > 100 and height > 100
    assert matplotlib.get_backend() == backend_before


def test_confusion_matrix_shape_must_match_names(tmp_path):
    with pytest.raises(ValueError, match="does not match 2 class names"):
        plot_confusion_matrix([[1, 2, 3]], ["a", "b"], tmp_path / "cm.png")
