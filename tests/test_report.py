"""Pictures of a run (modeling_amlpf.figures) and the report CLI that rebuilds them from a finished folder.

The run folders here are written by hand with known numbers in the formats the trainers and scripts write
(``resampling_history.json``, the Trainer's ``trainer_state.json``, ``splits_summary.json``), and the figures'
data are read back from the matplotlib objects, not from pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from modeling_amlpf.evaluation import figures
from modeling_amlpf.evaluation.report import main as report_main
from modeling_amlpf.evaluation.report import majority_baseline, render_report

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["alpha", "beta", "gamma"]
LEVELS = ["label", "basic", "detailed"]
EPOCHS = [1, 2, 3, 4]
STEPS_PER_EPOCH = 10
BEST_EPOCH = 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ fixtures
def weight(epoch, c):
    return 0.1 * epoch + 0.01 * c


def share(epoch, c):
    raw = [weight(epoch, k) * (k + 1) for k in range(len(CLASSES))]
    return raw[c] / sum(raw)


def prob(epoch, c):
    return 0.2 + 0.15 * epoch - 0.05 * c


def fusion(epoch, level):
    return 1.0 - 0.02 * epoch + 0.005 * level


def losses(epoch):
    ce, kd = 2.0 / epoch, 0.5 + 0.1 * epoch
    return {"ce_loss": ce, "kd_loss": kd, "loss": ce + kd, "eval_loss": 1.5 / epoch + 0.1,
            "eval_macro_f1": 0.2 * epoch}


def history():
    return {
        "mode": "difficulty",
        "gamma": 2.0,
        "epochs": [
            {
                "epoch": e,
                "next_epoch_class_weights": {name: weight(e, c) for c, name in enumerate(CLASSES)},
                "next_epoch_class_share": {name: share(e, c) for c, name in enumerate(CLASSES)},
                "mean_true_class_prob": {name: prob(e, c) for c, name in enumerate(CLASSES)},
                "records": 30,
                "fusion_weights": {level: fusion(e, i) for i, level in enumerate(LEVELS)},
            }
            for e in EPOCHS
        ],
    }


def log_history(student=True, fusion_in_log=True):
    """The Trainer's log as a resampling/distillation run with per-epoch logging and evaluation writes it."""
    log = []
    for e in EPOCHS:
        step, value = e * STEPS_PER_EPOCH, losses(e)
        if student:
            entry = {f"class_weight/{n}": weight(e, c) for c, n in enumerate(CLASSES)}
            if fusion_in_log:
                entry.update({f"fusion_weight/{lv}": fusion(e, i) for i, lv in enumerate(LEVELS)})
            log.append(dict(entry, epoch=float(e), step=step))
        train = {"loss": value["loss"], "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": float(e), "step": step}
        if student:
            train.update(ce_loss=value["ce_loss"], kd_loss=value["kd_loss"])
        log.append(train)
        log.append({"eval_loss": value["eval_loss"], "eval_macro_f1": value["eval_macro_f1"], "eval_accuracy": 0.5,
                    "epoch": float(e), "step": step})
    last = EPOCHS[-1] * STEPS_PER_EPOCH
    log.append({"train_loss": 1.0, "train_runtime": 3.0, "epoch": float(EPOCHS[-1]), "step": last})
    # the selected model evaluated again after training, at the last step: not a new point of the curve
    log.append({"eval_loss": 99.0, "eval_macro_f1": 0.0, "epoch": float(EPOCHS[-1]), "step": last})
    return log


def trainer_state(student=True, **kwargs):
    return {
        "best_global_step": BEST_EPOCH * STEPS_PER_EPOCH,
        "best_model_checkpoint": f"/somewhere/checkpoint-{BEST_EPOCH * STEPS_PER_EPOCH}",
        "best_metric": 0.4,
        "epoch": float(EPOCHS[-1]),
        "global_step": EPOCHS[-1] * STEPS_PER_EPOCH,
        "log_history": log_history(student, **kwargs),
    }


def split_file(dataset="demo", seed=1):
    train = [[f"{n}/{i}.png", c, f"g{i}"] for c, n in enumerate(CLASSES) for i in range(3 + 2 * c)]  # gamma most
    test = [[f"{n}/t{i}.png", c, f"h{i}"] for c, n in enumerate(CLASSES) for i in range(2)]
    return {"format": "amlpf-split/1", "dataset": dataset, "options": {}, "split_seed": seed,
            "split_source": "generated", "class_names": CLASSES, "parts": {"train": train, "test": test}}


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# config.json of the backbones: the paper's (UNI ViT-L/16 teacher, OpenAI CLIP RN50 student) and the tiny presets
PAPER_CONFIGS = {
    "teacher": {"model_type": "amlpf_teacher", "backbone": "vit_large_patch16_224",
                "backbone_weights": "hf-hub:MahmoodLab/uni",
                "backbone_kwargs": {"img_size": 224, "patch_size": 16, "init_values": 1e-5}},
    "student": {"model_type": "amlpf_clip", "vision_backend": "timm", "timm_model_name": "resnet50_clip",
                "timm_model_kwargs": None, "projection_dim": 1024, "text_config": {"hidden_size": 512},
                "fusion": "learned", "fusion_init": 1.0, "prompt_levels": LEVELS},
}
TINY_CONFIGS = {
    "teacher": {"model_type": "amlpf_teacher", "backbone": "vit_large_patch16_224", "backbone_weights": None,
                "backbone_kwargs": {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 4}},
    "student": {"model_type": "amlpf_clip", "vision_backend": "timm", "timm_model_name": "resnet50_clip",
                "timm_model_kwargs": {"img_size": 64}, "projection_dim": 64, "text_config": {"hidden_size": 64},
                "fusion": "learned", "fusion_init": 1.0, "prompt_levels": LEVELS},
}


def make_run(folder: Path, kind: str, dataset="demo", seed=1, accuracy=0.6, backbones="tiny") -> Path:
    """A finished run folder as the scripts leave it (without the model weights, which nothing here reads)."""
    write_json(folder / "config.json", (PAPER_CONFIGS if backbones == "paper" else TINY_CONFIGS)[kind])
    write_json(folder / "split.json", split_file(dataset, seed))
    write_json(folder / "trainer_state.json", trainer_state(student=kind == "student"))
    write_json(folder / "test_results.json", {"test_accuracy": accuracy, "test_macro_f1": accuracy - 0.1,
                                              "test_macro_auroc": None, "test_mcc": 0.3})
    if kind == "student":
        write_json(folder / "resampling_history.json", history())
        write_json(folder / "zero_shot_results.json", {"zero_shot_accuracy": 1 / 3, "zero_shot_macro_f1": 0.2})
    return folder


SPLIT_VALUES = {  # metric -> value in splits 1, 2, 3
    "accuracy": [0.80, 0.84, 0.88],
    "macro_f1": [0.70, 0.75, 0.77],
    "macro_precision": [0.71, 0.74, 0.80],
    "ms_per_image": [5.0, 6.0, 7.0],
}


def splits_summary():
    """``splits_summary.json`` as ``summarize_splits`` + ``json_safe`` write it (NaN as null)."""
    metrics = {
        key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "n": 3,
              "values": {str(s): x for s, x in zip((1, 2, 3), v)}}
        for key, v in SPLIT_VALUES.items()
    }
    metrics["macro_auroc"] = {"mean": None, "std": None, "n": 0, "values": {"1": None, "2": None, "3": None}}
    return {"n_splits": 3, "splits": [1, 2, 3], "metrics": metrics, "non_scalar_keys": [], "notes": []}


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


# ------------------------------------------------------------------------------------------------ resampling
def test_resampling_figure_one_line_per_class_in_each_panel():
    fig = figures.build_resampling_figure(history(), title="student · demo · split 1")
    weight_ax, share_ax, prob_ax = fig.axes
    expected = {weight_ax: weight, share_ax: lambda e, c: 100 * share(e, c), prob_ax: prob}
    for ax, value in expected.items():
        lines = lines_by_label(ax)
        assert list(lines) == CLASSES
        for c, name in enumerate(CLASSES):
            np.testing.assert_array_equal(lines[name].get_xdata(), EPOCHS)
            np.testing.assert_allclose(lines[name].get_ydata(), [value(e, c) for e in EPOCHS])
    assert [t.get_text() for t in weight_ax.get_legend().get_texts()] == CLASSES
    assert (weight_ax.get_ylabel(), share_ax.get_ylabel(), prob_ax.get_ylabel()) == (
        "weight", "share of draws (%)", "probability")
    assert prob_ax.get_xlabel() == "epoch"
    assert "student · demo · split 1" in fig._suptitle.get_text()


# ------------------------------------------------------------------------------------------------ fusion
@pytest.mark.parametrize("source", ["history", "trainer log"])
def test_fusion_weights_per_level_as_change_from_the_start(source):
    if source == "history":
        series = figures.fusion_weight_series(history(), [])
    else:  # a run without resampling history: the trainer log's fusion_weight/<level> entries
        series = figures.fusion_weight_series(None, log_history())
    start = figures.fusion_start(TINY_CONFIGS["student"])
    assert start == 1.0
    fig = figures.build_fusion_figure(series, title="t", start=start, mode="learned")
    (ax,) = fig.axes
    lines = {label.split(":")[0]: line for label, line in lines_by_label(ax).items() if not label.startswith("_")}
    assert sorted(set(lines) - {"start (epoch 0)"}) == sorted(LEVELS)
    for i, level in enumerate(LEVELS):
        # drawn from epoch 0 (the start) as the change in % of the effective weight
        np.testing.assert_array_equal(lines[level].get_xdata(), [0, *EPOCHS])
        expected = [0.0] + [100 * (fusion(e, i) - 1.0) for e in EPOCHS]
        np.testing.assert_allclose(lines[level].get_ydata(), expected, atol=1e-9)
        assert lines[level].get_label() == f"{level}: 1 → {fusion(EPOCHS[-1], i):.5g}"
    (marker,) = [line for line in ax.get_lines() if line.get_gid() == "fusion:start"]
    np.testing.assert_array_equal(marker.get_xydata(), [[0.0, 0.0]])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "change of the effective weight from the start (%)")
    caption = fig._supxlabel.get_text()
    assert "effective weight w: what the model multiplies" in caption and "w = 1" in caption


def test_fusion_axis_is_honest_about_a_tiny_drift():
    """A drift of 0.02 % is drawn on an axis of at least ±1 %, not auto-scaled into a trend."""
    series = {"label": ([1, 2, 3], [0.99990, 0.99980, 0.99976])}
    (ax,) = figures.build_fusion_figure(series, title="t", start=1.0).axes
    low, high = ax.get_ylim()
    assert low <= -figures.FUSION_MIN_SPAN and high >= figures.FUSION_MIN_SPAN
    big = {"label": ([1, 2], [1.2, 1.5])}  # +50 %: the axis grows to show it
    (ax,) = figures.build_fusion_figure(big, title="t", start=1.0).axes
    assert ax.get_ylim()[1] >= 50.0
    # softmax fusion starts at 1/L; an unknown start falls back to the first record and says so
    assert figures.fusion_start({"fusion": "softmax", "prompt_levels": LEVELS}) == pytest.approx(1 / 3)
    assert figures.fusion_start({}) is None
    fig = figures.build_fusion_figure(series, title="t", start=None)
    assert "first recorded epoch" in fig._supxlabel.get_text()
    assert not [line for line in fig.axes[0].get_lines() if line.get_gid() == "fusion:start"]


def test_no_fusion_weights_recorded_gives_no_series():
    assert figures.fusion_weight_series(None, log_history(fusion_in_log=False)) == {}


# ------------------------------------------------------------------------------------------------ losses
def test_losses_figure_curves_and_selected_epoch():
    state = trainer_state()
    fig = figures.build_losses_figure(state["log_history"], best_epoch=figures.selected_epoch(state), title="t")
    loss_ax, f1_ax = fig.axes
    lines = lines_by_label(loss_ax)
    for key, label in (("loss", "training loss (total)"), ("ce_loss", "training CE"), ("kd_loss", "training KD term"),
                       ("eval_loss", "validation loss")):
        np.testing.assert_array_equal(lines[label].get_xdata(), EPOCHS)  # the re-evaluation adds no 5th point
        np.testing.assert_allclose(lines[label].get_ydata(), [losses(e)[key] for e in EPOCHS])
    f1 = lines_by_label(f1_ax)["validation macro-F1"]
    np.testing.assert_allclose(f1.get_ydata(), [100 * losses(e)["eval_macro_f1"] for e in EPOCHS])
    for ax in (loss_ax, f1_ax):
        (marker,) = [line for line in ax.get_lines() if line.get_label().startswith(figures.SELECTED_LABEL)]
        np.testing.assert_array_equal(marker.get_xdata(), [BEST_EPOCH, BEST_EPOCH])
        assert f"epoch {BEST_EPOCH}" in marker.get_label()
    assert (loss_ax.get_ylabel(), f1_ax.get_ylabel(), f1_ax.get_xlabel()) == ("loss", "macro-F1 (%)", "epoch")


def test_selected_epoch_from_checkpoint_name_or_none():
    state = trainer_state()
    del state["best_global_step"]
    state["best_model_checkpoint"] = "outputs/x/checkpoint-30/"
    assert figures.selected_epoch(state) == 3.0
    state["best_model_checkpoint"] = None
    assert figures.selected_epoch(state) is None
    fig = figures.build_losses_figure(state["log_history"], best_epoch=None, title="t")
    assert not any(line.get_label().startswith(figures.SELECTED_LABEL) for ax in fig.axes for line in ax.get_lines())


def test_teacher_losses_have_no_kd_line():
    state = trainer_state(student=False)
    (loss_ax, _) = figures.build_losses_figure(state["log_history"], best_epoch=2.0, title="t").axes
    curves = [label for label in lines_by_label(loss_ax) if not label.startswith(figures.SELECTED_LABEL)]
    assert curves == ["training loss (total)", "validation loss"]


# ------------------------------------------------------------------------------------------------ one run folder
def test_write_run_figures_student_and_teacher(tmp_path):
    student = make_run(tmp_path / "student", "student")
    teacher = make_run(tmp_path / "teacher", "teacher")
    assert figures.write_run_figures(student, title="s") == ["resampling.png", "fusion_weights.png", "losses.png"]
    assert figures.write_run_figures(teacher, title="t") == ["losses.png"]
    for path in (student / "resampling.png", student / "fusion_weights.png", student / "losses.png",
                 teacher / "losses.png"):
        assert path.read_bytes().startswith(PNG_MAGIC)
    assert not (teacher / "resampling.png").exists()
    empty = tmp_path / "evaluated_only"
    empty.mkdir()
    assert figures.write_run_figures(empty, title="e") == []


def test_broken_json_names_the_file(tmp_path):
    (tmp_path / "trainer_state.json").write_text("{not json")
    with pytest.raises(ValueError, match="trainer_state.json"):
        figures.write_run_figures(tmp_path, title="t")


# ------------------------------------------------------------------------------------------------ splits
def bars(ax, label):
    (container,) = [c for c in ax.containers if isinstance(c, BarContainer) and c.get_label() == label]
    return container


def error_lengths(ax):
    """Half-lengths of the error bars of each ErrorbarContainer of ``ax``, in drawing order."""
    out = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            segments = container.lines[2][0].get_segments()
            out.append([(seg[1][1] - seg[0][1]) / 2 for seg in segments])
    return out


def test_splits_figure_bars_points_and_paper(tmp_path):
    write_json(tmp_path / "splits_summary.json", splits_summary())
    paper = figures.paper_results("chaoyang")
    fig = figures.build_splits_figure(splits_summary(), paper=paper, title="student · chaoyang")
    percent_ax, time_ax = fig.axes
    percent_keys = [k for k in figures.METRIC_TITLES if k in SPLIT_VALUES and k != "ms_per_image"]
    ours = bars(percent_ax, "ours, mean ± std over 3 splits")
    np.testing.assert_allclose([p.get_height() for p in ours], [100 * np.mean(SPLIT_VALUES[k]) for k in percent_keys])
    stds = [100 * np.std(SPLIT_VALUES[k], ddof=1) for k in percent_keys]
    np.testing.assert_allclose(error_lengths(percent_ax)[0], stds)
    # the paper's table (METHOD.md, Chaoyang): accuracy 86.93 ± 0.32, macro F1 82.53 ± 0.50; no precision published
    published = bars(percent_ax, figures.PAPER_LABEL)
    np.testing.assert_allclose([p.get_height() for p in published], [86.93, 82.53])
    np.testing.assert_allclose(error_lengths(percent_ax)[1], [0.32, 0.50])
    paper_x = [p.get_x() + p.get_width() / 2 for p in published]
    ours_x = {k: p.get_x() + p.get_width() / 2 for k, p in zip(percent_keys, ours)}
    assert paper_x[0] > ours_x["accuracy"] and paper_x[1] > ours_x["macro_f1"]  # beside ours, to the right
    for key in percent_keys:
        (points,) = [line for line in percent_ax.get_lines() if line.get_gid() == f"splits:{key}"]
        np.testing.assert_allclose(points.get_ydata(), [100 * v for v in SPLIT_VALUES[key]])
    np.testing.assert_allclose([p.get_height() for p in bars(time_ax, figures.PAPER_LABEL)], [70.16])
    np.testing.assert_allclose([p.get_height() for p in bars(time_ax, "ours, mean ± std over 3 splits")], [6.0])
    assert time_ax.get_ylabel() == "inference time (ms per image)" and percent_ax.get_ylabel() == "metric value (%)"
    assert "Macro AUROC" in fig._supxlabel.get_text()  # undefined in every split: said, not silently dropped
    assert "split" in fig._suptitle.get_text() and "chaoyang" in fig._suptitle.get_text()


def test_write_splits_figure_paper_only_for_the_papers_settings(tmp_path):
    assert figures.write_splits_figure(tmp_path, dataset="chaoyang", title="t") is None  # no summary yet
    write_json(tmp_path / "splits_summary.json", splits_summary())
    assert figures.write_splits_figure(tmp_path, dataset="chaoyang", title="t") == "splits_summary.png"
    assert (tmp_path / "splits_summary.png").read_bytes().startswith(PNG_MAGIC)
    assert figures.paper_results("breakhis-binary") is None and figures.paper_results("demo") is None
    fig = figures.build_splits_figure(splits_summary(), paper=None, title="t")
    assert not any(c.get_label() == figures.PAPER_LABEL for ax in fig.axes for c in ax.containers)


@pytest.mark.parametrize("dataset, published", [
    ("chaoyang", (86.93, 82.53, 96.13, 70.16)),
    ("breakhis", (96.47, 95.96, 99.76, 96.71)),
    ("lunghist700", (93.86, 94.09, 99.12, 61.29)),
])
def test_paper_results_blocks_in_the_recipes(dataset, published):
    metrics = figures.paper_results(dataset)["metrics"]
    got = (100 * metrics["accuracy"]["mean"], 100 * metrics["macro_f1"]["mean"], 100 * metrics["macro_auroc"]["mean"],
           metrics["ms_per_image"]["mean"])
    np.testing.assert_allclose(got, published)


# ------------------------------------------------------------------------------------------------ report
def test_render_report_single_runs_and_zero_shot_note(tmp_path):
    make_run(tmp_path / "teacher", "teacher", accuracy=0.7)
    make_run(tmp_path / "student", "student", accuracy=0.6)
    text = render_report(tmp_path)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["teacher"].split("|")[2].strip() == "70.00"
    assert rows["student (AMLPF-CLIP)"].split("|")[2].strip() == "60.00"
    assert rows["student, zero-shot (prompts only)"].split("|")[2].strip() == "33.33"
    assert "n/a" in rows["teacher"]  # AUROC null in the results file
    # majority baseline: gamma (7 of 15 training images) predicted for all 6 test images -> accuracy 1/3
    assert rows["majority-class baseline"].split("|")[2].strip() == "33.33"
    assert "randomly initialised text tower" in text and "chance by construction" in text
    assert figures.PAPER_LABEL not in text  # the demo is not one of the paper's settings
    metrics = majority_baseline(tmp_path / "student" / "split.json")
    assert metrics["accuracy"] == pytest.approx(1 / 3)


def test_render_report_over_splits_with_paper_row(tmp_path):
    accuracies = [0.80, 0.84, 0.88]
    for seed, accuracy in zip((1, 2, 3), accuracies):
        folder = tmp_path / "student" / f"split_{seed}"
        make_run(folder, "student", dataset="lunghist700", seed=seed, accuracy=accuracy, backbones="paper")
    results = tmp_path / "student" / "split_1" / "test_results.json"
    write_json(results, dict(json.loads(results.read_text()), test_macro_auroc=0.9))  # undefined in splits 2, 3
    text = render_report(tmp_path / "student")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    mean, std = 100 * np.mean(accuracies), 100 * np.std(accuracies, ddof=1)
    assert rows["student (AMLPF-CLIP)"].split("|")[2].strip() == f"{mean:.2f} ± {std:.2f}"
    assert rows["student (AMLPF-CLIP)"].split("|")[4].strip() == "90.00 (1 of 3 splits)"
    assert rows[f"{figures.PAPER_LABEL}, AMLPF-CLIP"].split("|")[2].strip() == "93.86 ± 2.15"
    assert "zero-shot" in text and "chance by construction" not in text  # not the demo


def test_report_cli_rebuilds_all_pictures(tmp_path):
    dataset = tmp_path / "chaoyang"
    make_run(dataset / "teacher", "teacher", dataset="chaoyang")
    for seed in (1, 2, 3):
        make_run(dataset / "student" / f"split_{seed}", "student", dataset="chaoyang", seed=seed)
    write_json(dataset / "student" / "splits_summary.json", splits_summary())
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "modeling_amlpf.report", str(dataset)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| student (AMLPF-CLIP) |" in result.stdout
    assert "| teacher [1 of 3 splits] |" in result.stdout  # one teacher beside three student splits, said so
    expected = [dataset / "teacher" / "losses.png", dataset / "student" / "splits_summary.png"]
    expected += [dataset / "student" / f"split_{s}" / n for s in (1, 2, 3)
                 for n in ("resampling.png", "fusion_weights.png", "losses.png")]
    for path in expected:
        assert path.read_bytes().startswith(PNG_MAGIC), path
        assert str(path) in result.stdout


def test_report_cli_names_the_expected_layout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report_main([str(tmp_path)])
    assert "teacher/ or student/" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ honesty
def test_paper_values_only_with_the_papers_backbones(tmp_path):
    for backbones in ("tiny", "paper"):
        root = tmp_path / backbones / "student"
        for seed in (1, 2, 3):
            make_run(root / f"split_{seed}", "student", dataset="chaoyang", seed=seed, backbones=backbones)
        write_json(root / "splits_summary.json", splits_summary())
        text = render_report(root)
        assert (f"| {figures.PAPER_LABEL}, AMLPF-CLIP |" in text) == (backbones == "paper")
        assert figures.write_splits_figure(root, dataset="chaoyang", title="t") == "splits_summary.png"
    tiny_text = render_report(tmp_path / "tiny" / "student")
    assert f"{figures.PAPER_LABEL} left out: these runs do not use the paper's backbones" in tiny_text
    assert "tiny random-init test preset" in tiny_text
    # the figure: the caption says why the paper's bars are missing
    (tmp_path / "tiny" / "student" / "splits_summary.png").unlink()
    allowed, reason = figures.paper_comparison([figures.identify_folder(tmp_path / "tiny" / "student" / "split_1")])
    assert not allowed and "not use the paper's backbones" in reason
    fig = figures.build_splits_figure(splits_summary(), paper=None, title="t", paper_left_out=reason)
    assert f"{figures.PAPER_LABEL} not drawn: {reason}" in fig._supxlabel.get_text()
    assert not any(c.get_label() == figures.PAPER_LABEL for ax in fig.axes for c in ax.containers)


CE_CARD = "## Training\n\n- resampling: `none (gamma 2.0)`\n- distillation: `off`\n- fusion: `learned`\n"


def test_report_over_training_seeds_with_the_ce_only_ablation(tmp_path, capsys):
    """``seed_<k>/{teacher,student,student-ce}`` (make demo's layout): one row per model, mean ± std over seeds."""
    accuracy = {"teacher": [0.9, 0.8, 0.85], "student": [0.7, 0.75, 0.8], "student-ce": [0.5, 0.6, 0.4]}
    for i, seed in enumerate((1, 2, 3)):
        for name, values in accuracy.items():
            make_run(tmp_path / f"seed_{seed}" / name, "teacher" if name == "teacher" else "student",
                     accuracy=values[i])
        (tmp_path / f"seed_{seed}" / "student-ce" / "README.md").write_text(CE_CARD)
    text = render_report(tmp_path)
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
            if line.startswith("| ")}

    def cell(values):
        return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"

    assert rows["teacher"] == cell(accuracy["teacher"])
    assert rows["student (AMLPF-CLIP)"] == cell(accuracy["student"])
    assert rows["student-ce: CE only (resampling none, distillation off)"] == cell(accuracy["student-ce"])
    assert rows["student, zero-shot (prompts only)"] == "33.33 ± 0.00"
    assert rows["majority-class baseline"] == "33.33 ± 0.00"  # the same split in every seed
    order = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")][1:]
    assert order == ["teacher", "student, zero-shot (prompts only)", "student (AMLPF-CLIP)",
                     "student-ce: CE only (resampling none, distillation off)", "majority-class baseline"]
    # above the table: what the numbers are; under it: what the ± is over
    preamble = text.split("| model |")[0]
    assert "tiny random-init test presets (student and teacher)" in preamble and "SYNTHETIC" in preamble
    assert "not the paper's accuracy" in preamble
    assert "training seeds (seed_<k>/, the same split)" in text
    # a row with fewer runs says so
    import shutil

    shutil.rmtree(tmp_path / "seed_3" / "student-ce")
    partial = render_report(tmp_path)
    assert "| student-ce: CE only (resampling none, distillation off) [2 of 3 seeds] |" in partial
    assert "| student (AMLPF-CLIP) |" in partial
    for i, seed in enumerate((1, 2, 3)):  # back to three
        make_run(tmp_path / f"seed_{seed}" / "student-ce", "student", accuracy=accuracy["student-ce"][i])
        (tmp_path / f"seed_{seed}" / "student-ce" / "README.md").write_text(CE_CARD)
    # the CLI prints the same table and re-creates every seed's pictures
    report_main([str(tmp_path)])
    out = capsys.readouterr().out
    assert text in out
    for seed in (1, 2, 3):
        for name in ("student", "student-ce"):
            assert (tmp_path / f"seed_{seed}" / name / "fusion_weights.png").read_bytes().startswith(PNG_MAGIC)
        assert (tmp_path / f"seed_{seed}" / "teacher" / "losses.png").is_file()


# ------------------------------------------------------------------------------------------------ confusion
LONG_NAMES = [
    "squamous cell carcinoma, keratinising", "adenocarcinoma of the lung (acinar)", "normal bronchial epithelium",
    "large cell neuroendocrine carcinoma", "small cell lung carcinoma (oat cell)", "benign alveolar parenchyma",
    "inflammatory infiltrate with fibrosis", "metastatic colorectal adenocarcinoma",
]


def _extents(fig, artists):
    renderer = fig.canvas.get_renderer()
    return [artist.get_window_extent(renderer) for artist in artists if artist.get_text()]


def test_confusion_matrix_legible_with_eight_long_class_names(tmp_path):
    from modeling_amlpf.evaluation.metrics.reporting import build_confusion_figure, plot_confusion_matrix

    assert min(map(len, LONG_NAMES)) >= 25
    counts = np.arange(64).reshape(8, 8) % 7 + 3 * np.eye(8, dtype=int)
    title = "Student, test split (lunghist700-7class with a rather long run name, split 12)"
    fig = build_confusion_figure(counts, LONG_NAMES, title=title)
    fig.canvas.draw()
    ax = fig.axes[0]
    canvas = fig.bbox
    for axis in ("x", "y"):
        labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
        assert [label.get_text().replace("\n", " ") for label in labels] == LONG_NAMES
        boxes = _extents(fig, labels)
        for a, b in zip(boxes, boxes[1:]):
            assert not a.overlaps(b), (axis, a, b)  # neighbouring names never overlap
    texts = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label, fig._suptitle]
    for box in _extents(fig, texts):  # everything inside the canvas: no cut label, no cut title
        assert box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1 and box.y0 >= canvas.y0 - 1
        assert box.y1 <= canvas.y1 + 1
    assert fig._suptitle.get_text().replace("\n", " ") == title  # the whole title, wrapped if needed
    # the matrix uses a good share of the canvas (not shrunk to a third by its labels)
    matrix = ax.get_window_extent(fig.canvas.get_renderer())
    assert matrix.width * matrix.height >= 0.3 * canvas.width * canvas.height
    for text in ax.texts:  # cell values do not spill out of their cells
        assert _extents(fig, [text])[0].width < matrix.width / 8
    path = plot_confusion_matrix(counts, LONG_NAMES, tmp_path / "cm.png", title=title)
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_cjk_class_names_use_an_installed_cjk_font(monkeypatch, caplog):
    from modeling_amlpf.evaluation import fonts
    from modeling_amlpf.evaluation.metrics.reporting import build_confusion_figure

    names = ["鳞状细胞癌", "腺癌", "normal"]
    monkeypatch.setattr(fonts, "installed_font_names", lambda: {"DejaVu Sans", "WenQuanYi Zen Hei",
                                                                "Noto Sans CJK JP"})
    assert fonts.cjk_font() == "Noto Sans CJK JP"  # the most complete first
    monkeypatch.setattr(fonts, "installed_font_names", lambda: {"DejaVu Sans", "WenQuanYi Zen Hei"})
    fig = build_confusion_figure(np.eye(3, dtype=int), names, title="Teacher, test split")
    for label in fig.axes[0].get_xticklabels():
        assert label.get_fontfamily()[-1] == "WenQuanYi Zen Hei"  # a fallback after the usual family
    # Latin-only names leave matplotlib's fonts alone
    fig = build_confusion_figure(np.eye(2, dtype=int), ["normal", "tumour"])
    assert all("WenQuanYi Zen Hei" not in label.get_fontfamily() for label in fig.axes[0].get_xticklabels())
    with fonts.fonts_for(["normal"]) as font:
        assert font is None


def test_cjk_without_a_font_warns_once(monkeypatch, caplog):
    from modeling_amlpf.evaluation import fonts

    monkeypatch.setattr(fonts, "installed_font_names", lambda: {"DejaVu Sans"})
    monkeypatch.setattr(fonts, "_warned", False)
    with caplog.at_level("WARNING", logger=fonts.__name__):
        for _ in range(3):
            with fonts.fonts_for(["腺癌"]) as font:
                assert font is None
    warnings = [r for r in caplog.records if "no installed font has their glyphs" in r.getMessage()]
    assert len(warnings) == 1 and "fonts-noto-cjk" in warnings[0].getMessage()
