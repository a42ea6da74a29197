"""Metrics (the local evaluate module, computed by scikit-learn) against equations written out here, the Trainer
hook, strict JSON, metric keys of any class name, and reporting."""

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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from modeling_amlpf.evaluation.metrics import (  # noqa: E402
    METRIC_MODULE_PATH,
    METRIC_TITLES,
    compute_classification_metrics,
    confusion_matrix_title,
    flatten_metrics,
    json_safe,
    load_classification_metric,
    make_compute_metrics,
    per_class_recall_key,
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


# --- the metrics, written out from their definitions (independent of scikit-learn) ---------------------------
def _pairwise_auroc(is_positive, scores):
    """P(a random positive outscores a random negative), ties counting half: every pair compared."""
    pos, neg = scores[is_positive], scores[~is_positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _confusion(labels, predicted, num_classes):
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(labels, predicted):
        cm[t, p] += 1
    return cm


def _reference(labels, probs):
    """The paper's metrics from their definitions: macro averages over the classes in the references or
    predictions (zero_division 0), balanced accuracy over the classes in the references, kappa from the
    marginals, Gorodkin's multi-class MCC, macro one-vs-rest AUROC over the classes present (class 1's AUROC
    for two classes)."""
    n, num_classes = probs.shape
    predicted = probs.argmax(axis=1)
    cm = _confusion(labels, predicted, num_classes)
    tp = np.diag(cm).astype(float)
    true_count, pred_count = cm.sum(axis=1), cm.sum(axis=0)
    in_refs = true_count > 0
    used = in_refs | (pred_count > 0)
    precision = np.array([tp[c] / pred_count[c] if pred_count[c] else 0.0 for c in range(num_classes)])
    recall = np.array([tp[c] / true_count[c] if true_count[c] else 0.0 for c in range(num_classes)])
    f1 = np.array([2 * tp[c] / (pred_count[c] + true_count[c]) if pred_count[c] + true_count[c] else 0.0
                   for c in range(num_classes)])
    p_o = tp.sum() / n
    p_e = (true_count * pred_count).sum() / n**2
    cov_tp = tp.sum() * n - (true_count * pred_count).sum()
    cov_p, cov_t = n**2 - (pred_count**2).sum(), n**2 - (true_count**2).sum()
    if num_classes == 2:
        auroc = _pairwise_auroc(labels == 1, probs[:, 1])
    else:
        auroc = float(np.mean([_pairwise_auroc(labels == c, probs[:, c]) for c in range(num_classes) if in_refs[c]]))
    return {
        "accuracy": p_o,
        "macro_precision": precision[used].mean(),
        "macro_recall": recall[used].mean(),
        "macro_f1": f1[used].mean(),
        "macro_auroc": auroc,
        "cohen_kappa": (p_o - p_e) / (1 - p_e) if p_e < 1 else float("nan"),
        "mcc": cov_tp / math.sqrt(cov_p * cov_t) if cov_p * cov_t else 0.0,
        "balanced_accuracy": recall[in_refs].mean(),
        "recall": [recall[c] if in_refs[c] else float("nan") for c in range(num_classes)],
        "confusion_matrix": cm,
    }


def _assert_matches_reference(result, labels, probs, class_names):
    expected = _reference(labels, probs)
    for key in SCALAR_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-10, nan_ok=True), key
    np.testing.assert_array_equal(result["confusion_matrix"], expected["confusion_matrix"])
    for c, name in enumerate(class_names):
        assert result["per_class_recall"][name] == pytest.approx(expected["recall"][c], abs=1e-12, nan_ok=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("num_classes", [3, 4, 8])
def test_multiclass_metrics_equal_their_definitions(seed, num_classes):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, size=90)])
    probs = _softmax(_informative_logits(rng, labels, num_classes))
    names = [f"class {c}" for c in range(num_classes)]
    result = compute_classification_metrics(probs, labels, names)
    _assert_matches_reference(result, labels, probs, names)
    assert 0.2 < result["accuracy"] < 0.95  # the data is neither trivial nor random
    assert result["note"] == ""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_auroc_is_class_one_auroc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=80)
    probs = _softmax(_informative_logits(rng, labels, 2, signal=1.0))
    result = compute_classification_metrics(probs, labels, ["benign", "malignant"])
    _assert_matches_reference(result, labels, probs, ["benign", "malignant"])
    assert result["macro_auroc"] == pytest.approx(_pairwise_auroc(labels == 1, probs[:, 1]), abs=1e-12)
    assert 0.6 < result["macro_auroc"] < 1.0


def test_tied_scores_count_half_in_auroc():
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]])
    labels = np.array([0, 1, 0, 1])
    result = compute_classification_metrics(probs, labels, ["a", "b"])
    # pairs (positive, negative): (0.5, 0.5) tie, (0.5, 0.2) win, (0.8, 0.5) win, (0.8, 0.2) win -> 3.5 / 4
    assert result["macro_auroc"] == pytest.approx(3.5 / 4)


def test_classes_absent_from_references_do_not_crash_and_are_noted():
    rng = np.random.default_rng(7)
    labels = rng.choice([0, 1, 3], size=60)  # class 2 absent from references; class 4 absent everywhere
    probs = _softmax(_informative_logits(rng, labels, 5))
    probs[:, 4] = 0.0
    probs[:5] = [0.05, 0.05, 0.9, 0.0, 0.0]  # class 2 is still predicted for five samples
    probs /= probs.sum(axis=1, keepdims=True)
    names = ["normal", "serrated", "adenocarcinoma", "adenoma", "other"]
    result = compute_classification_metrics(probs, labels, names)

    _assert_matches_reference(result, labels, probs, names)
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
    _assert_matches_reference(from_logits, labels, _softmax(logits), names)
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
    _assert_matches_reference(result, labels, probs, ["x", "y", "z"])


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
        [sys.executable, "-c", _OFFLINE_LOAD_SCRIPT],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
    assert out["auroc"] == pytest.approx(1.0)  # both positives (0.7, 0.4) outscore the negative (0.1)
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
    expected = _reference(labels, _softmax(logits.astype(np.float64)))
    for key in SCALAR_KEYS:
        assert flat[key] == pytest.approx(expected[key], abs=1e-9)
    assert flat["recall_squamous cell carcinoma"] == pytest.approx(expected["recall"][1])
    assert flat["recall_normal"] == pytest.approx(expected["recall"][2])


NFC_E, NFD_E = "\u00e9", "e\u0301"  # "é" composed (NFC) and decomposed (NFD, as macOS writes file names)


def test_metric_keys_hold_the_real_class_names():
    """Accents, CJK, Cyrillic and names that differ only by an accent or an underscore: each its own key."""
    from transformers.trainer_utils import EvalPrediction

    names = [f"Ad{NFD_E}nocarcinome", "Adenocarcinome", "鳞状细胞癌", "Нормальная ткань", "a b", "a_b"]
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 2, 3, 5, 1, 4])
    predicted = np.array([0, 1, 2, 3, 4, 4, 1, 2, 3, 5, 1, 0])
    logits = np.eye(6)[predicted] * 4.0
    flat = make_compute_metrics(names)(EvalPrediction(predictions=logits, label_ids=labels))
    expected_recall = {  # hits / occurrences of each true class
        f"Ad{NFC_E}nocarcinome": 1 / 2, "Adenocarcinome": 2 / 2, "鳞状细胞癌": 2 / 2, "Нормальная ткань": 2 / 2,
        "a b": 1 / 2, "a_b": 1 / 2,
    }
    for name, recall in expected_recall.items():
        assert flat["recall_" + name] == pytest.approx(recall), name
    assert len([k for k in flat if k.startswith("recall_")]) == 6
    assert per_class_recall_key(f"Ad{NFD_E}nocarcinome") == f"recall_Ad{NFC_E}nocarcinome"  # NFC, one spelling
    # The keys survive strict JSON with their characters, and read back equal.
    text = json.dumps({"test_" + k: v for k, v in flat.items()}, ensure_ascii=False, allow_nan=False)
    assert f'"test_recall_Ad{NFC_E}nocarcinome"' in text and '"test_recall_鳞状细胞癌"' in text
    assert json.loads(text)["test_recall_Нормальная ткань"] == pytest.approx(1.0)


def test_one_name_in_two_unicode_forms_is_refused():
    with pytest.raises(ValueError, match="two Unicode forms"):
        make_compute_metrics([f"Ad{NFC_E}nocarcinome", f"Ad{NFD_E}nocarcinome"])
    with pytest.raises(ValueError, match="empty"):
        per_class_recall_key("  ")


def test_json_safe_writes_strict_json():
    results = {
        "test_macro_auroc": float("nan"),
        "test_accuracy": np.float32(0.75),
        "test_samples": np.int64(12),
        "test_per_class_recall": {"a": np.float64("nan"), "b": 1.0},
        "values": (np.array([1.0, np.inf]), [float("-inf")]),
        "flag": np.bool_(True),
        "note": "n",
    }
    safe = json_safe(results)
    text = json.dumps(safe, allow_nan=False)  # raises on any NaN / inf left
    back = json.loads(text)
    assert back == {
        "test_macro_auroc": None, "test_accuracy": 0.75, "test_samples": 12,
        "test_per_class_recall": {"a": None, "b": 1.0}, "values": [[1.0, None], [None]], "flag": True, "note": "n",
    }
    assert type(back["test_samples"]) is int
    # read back, null is an undefined metric again: NaN in the flat view, "–" in tables
    flat, _ = flatten_metrics(back)
    assert math.isnan(flat["test_macro_auroc"]) and math.isnan(flat["test_recall_a"])
    assert "| Macro AUROC (%) | – |" in render_metrics_table(back)


def test_titles_come_from_one_table():
    assert list(METRIC_TITLES)[:8] == list(SCALAR_KEYS) and METRIC_TITLES["ms_per_image"] == "ms/img"
    text = render_metrics_table({"macro_f1": 0.5, "cohen_kappa": 0.25})
    assert f"| {METRIC_TITLES['macro_f1']} (%) | 50.00 |" in text
    assert f"| {METRIC_TITLES['cohen_kappa']} (%) | 25.00 |" in text


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
    assert header == "| Dataset | " + " | ".join(METRIC_TITLES.values()) + " |"
    assert header.startswith("| Dataset | Accuracy | Macro precision | Macro recall | Macro F1 | Macro AUROC |")
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
def test_confusion_matrix_png(tmp_path, monkeypatch, normalize):
    import matplotlib
    from matplotlib.figure import Figure

    saved = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), savefig(self, *a, **k))[1])
    backend_before = matplotlib.get_backend()
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 0]]  # an empty row must not divide by zero
    title = confusion_matrix_title("student", "test", "chaoyang")
    out = plot_confusion_matrix(cm, ["normal", "serrated", "adenoma"], tmp_path / "plots" / "cm.png",
                                normalize=normalize, title=title)
    width, height = _png_size(out)
    assert out.stat().st_size > 1000 and width > 100 and height > 100
    assert matplotlib.get_backend() == backend_before

    ax = saved[0].axes[0]
    assert saved[0].get_suptitle() == "Student, test split (chaoyang)"  # the figure's title: it wraps when long
    assert [t.get_text() for t in ax.get_xticklabels()] == ["normal", "serrated", "adenoma"]
    cells = [t.get_text() for t in ax.texts]
    if normalize:  # row fractions with the counts: 5 of 6, 7 of 10; the empty row stays 0
        assert cells[:2] == ["0.83\n(5)", "0.17\n(1)"] and cells[4] == "0.70\n(7)" and cells[8] == "0.00\n(0)"
    else:
        assert cells == ["5", "1", "0", "2", "7", "1", "0", "0", "0"]


def test_confusion_matrix_shape_must_match_names(tmp_path):
    with pytest.raises(ValueError, match="does not match 2 class names"):
        plot_confusion_matrix([[1, 2, 3]], ["a", "b"], tmp_path / "cm.png")


# --- class names ----------------------------------------------------------------------------------------


def test_check_class_names_passes_one_name_in_two_unicode_forms():
    from modeling_amlpf.data.class_names import check_class_names

    found = check_class_names([f"Ad{NFD_E}nocarcinome", "normal"], [f"Ad{NFC_E}nocarcinome", "normal"],
                              source="prompts.json", fix="edit the file")
    assert found == [f"Ad{NFC_E}nocarcinome", "normal"]


def test_check_class_names_says_what_is_missing_extra_and_why():
    from modeling_amlpf.data.class_names import check_class_names

    with pytest.raises(ValueError) as info:
        check_class_names(["normal", "Tumor"], ["normal", "tumor", "stroma"], source="prompts.json",
                          fix="add the class to --prompts_file")
    message = str(info.value)
    assert message.startswith("prompts.json: classes ['normal', 'Tumor'] do not match the expected classes "
                              "['normal', 'tumor', 'stroma']: missing ['tumor', 'stroma'], extra ['Tumor']")
    assert "differ only by case or Unicode form: 'Tumor' vs 'tumor'" in message
    assert message.endswith("Fix: add the class to --prompts_file")
    with pytest.raises(ValueError, match="the same classes in another order"):
        check_class_names(["b", "a"], ["a", "b"], source="the teacher", fix="retrain")
    with pytest.raises(ValueError, match=r"two Unicode forms"):
        check_class_names([f"{NFC_E}", f"{NFD_E}"], ["x", "y"], source="the data folder", fix="rename")
