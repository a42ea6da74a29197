"""The training scripts end to end: defaults from --dataset, outputs, evaluation-only, splits, Hub, accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, STUDENT_TINY, TEACHER_TINY, free_port
from data_trees import make_imagefolder_tree, make_lunghist700_tree
from hub_fakes import FakeHub
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

import distill_student
import train_teacher
from modeling_amlpf.cli import protocol

LUNG_CLASSES = ["adenocarcinoma", "squamous cell carcinoma", "normal"]


def tiny_config(path: Path, **shared) -> Path:
    """A run config like configs/demo.yaml, without output dirs (they must default from --dataset)."""
    config = {
        "seed": 3, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "disable_tqdm": True,
        "save_total_limit": 1, "use_cpu": True,
        "teacher": {"teacher_config": str(TEACHER_TINY), "num_train_epochs": 2, "learning_rate": 1e-3},
        "student": {"student_model": str(STUDENT_TINY), "num_train_epochs": 2, "learning_rate": 1e-3,
                    "lr_schedule": "1:1e-3,2:5e-4"},
    }
    config.update(shared)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def lung_env(tmp_path, monkeypatch):
    """A LungHist700 look-alike under $AMLPF_DATA_DIR/lunghist700 and outputs under $AMLPF_OUTPUT_DIR."""
    tree = make_lunghist700_tree(tmp_path / "download", patients=8, images_per_folder=3)
    (tmp_path / "data").mkdir()
    Path(tree.data_dir).rename(tmp_path / "data" / "lunghist700")  # the documented default: data/<dataset>
    monkeypatch.setenv("AMLPF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AMLPF_OUTPUT_DIR", str(tmp_path / "outputs"))
    return tree, tiny_config(tmp_path / "tiny.yaml")


def test_teacher_then_student_with_defaults_from_the_dataset_name(lung_env, tmp_path):
    _, config = lung_env
    teacher_metrics = train_teacher.main(["--dataset", "lunghist700", "--config", str(config)])
    teacher_dir = tmp_path / "outputs" / "lunghist700" / "teacher"
    assert "test_accuracy" in teacher_metrics and (teacher_dir / "model.safetensors").is_file()

    # no teacher/data/output flags: everything defaults from --dataset
    metrics = distill_student.main(["--dataset", "lunghist700", "--config", str(config), "--do_zero_shot", "True"])
    out = tmp_path / "outputs" / "lunghist700" / "student"
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "tokenizer.json", "modeling_amlpf.py",
                 "split.json", "test_results.json", "all_results.json", "eval_results.json", "zero_shot_results.json",
                 "resampling_history.json", "test_confusion_matrix.png", "README.md"):
        assert (out / name).is_file(), name
    results = json.loads((out / "test_results.json").read_text())
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auroc", "cohen_kappa", "mcc",
                "balanced_accuracy", "ms_per_image", "recall_normal"):
        assert f"test_{key}" in results, key
    assert results == {k: v for k, v in metrics.items()}
    history = json.loads((out / "resampling_history.json").read_text())
    assert history["mode"] == "difficulty" and len(history["epochs"]) == 2
    card = (out / "README.md").read_text()
    assert "lunghist700" in card and "local teacher checkpoint" in card and "Macro F1" in card and "detailed" in card
    assert str(teacher_dir) not in card  # local paths stay out of a card that may be published

    student = AutoModel.from_pretrained(out)
    assert [student.config.id2label[i] for i in range(3)] == LUNG_CLASSES
    assert student.config.prompts["label"] == ["adenocarcinoma", "squamous cell carcinoma", "normal"]
    assert not any("teacher" in k for k in student.state_dict())
    split = json.loads((out / "split.json").read_text())
    groups = {part: {row[2] for row in rows} for part, rows in split["parts"].items()}
    assert not (groups["train"] & groups["test"]) and not (groups["validation"] & groups["test"])

    # evaluation of the saved checkpoint without training reproduces the test metrics
    again = distill_student.main(["--dataset", "lunghist700", "--config", str(config), "--do_train", "False",
                                  "--do_eval", "False", "--model_name_or_path", str(out),
                                  "--output_dir", str(tmp_path / "eval_only")])
    for key in ("test_accuracy", "test_macro_f1", "test_macro_auroc"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)


def test_student_refuses_a_teacher_that_saw_its_test_images(lung_env, tmp_path):
    _, config = lung_env
    train_teacher.main(["--dataset", "lunghist700", "--config", str(config), "--split_seed", "2",
                        "--num_train_epochs", "1", "--do_eval", "False", "--do_predict", "False"])
    with pytest.raises(ValueError, match="trained on .* image\\(s\\) of this run's test split"):
        distill_student.main(["--dataset", "lunghist700", "--config", str(config), "--split_seed", "1"])


def test_missing_teacher_student_and_data_give_actionable_errors(lung_env, tmp_path, monkeypatch, capsys):
    _, config = lung_env
    with pytest.raises(FileNotFoundError, match="train_teacher.py --dataset lunghist700"):
        distill_student.main(["--dataset", "lunghist700", "--config", str(config)])
    with pytest.raises(FileNotFoundError, match="modeling_amlpf.convert"):
        distill_student.main(
            ["--dataset", "lunghist700", "--config", str(config), "--student_model", "checkpoints/clip-rn50"]
        )
    monkeypatch.setenv("AMLPF_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(Exception, match="--data_dir"):
        train_teacher.main(["--dataset", "lunghist700", "--config", str(config)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: lunghist700\nnot_a_flag: 1\n")
    with pytest.raises(SystemExit) as exit_info:  # a recipe error is a parse error: exit code 2, one message
        train_teacher.main(["--config", str(bad)])
    assert exit_info.value.code == 2 and "unknown keys ['not_a_flag']" in capsys.readouterr().err


def test_config_file_flags_and_derived_defaults(tmp_path, monkeypatch):
    """Lowest first: protocol defaults, the config file (shared keys + the script's section), flags; then the
    defaults derived from the dataset fill what is still unset. paper_results is not a setting."""
    from modeling_amlpf.cli.arguments import parse_script_args

    monkeypatch.setenv("AMLPF_OUTPUT_DIR", str(tmp_path / "out"))
    config = tiny_config(tmp_path / "c.yaml", dataset="lunghist700", task="7class",
                         paper_results={"lunghist700": {"accuracy": 90.1}})
    data, model, run, training = parse_script_args(
        distill_student.StudentArguments, "student", ["--config", str(config), "--num_train_epochs", "5"],
        distill_student.derived_defaults, defaults=distill_student.STUDENT_DEFAULTS,
    )
    assert data.dataset == "lunghist700" and data.task == "7class" and training.seed == 3  # shared keys
    assert model.student_model == str(STUDENT_TINY) and run.lr_schedule == "1:1e-3,2:5e-4"  # the student section
    assert training.num_train_epochs == 5 and training.learning_rate == 1e-3  # the flag wins over the file
    assert training.eval_strategy == "epoch" and training.load_best_model_at_end  # protocol defaults
    assert not training.remove_unused_columns and training.restore_callback_states_from_checkpoint
    assert training.output_dir == str(tmp_path / "out" / "lunghist700-7class" / "student")  # derived
    assert model.teacher_model == str(tmp_path / "out" / "lunghist700-7class" / "teacher")
    _, teacher_args, _, training = parse_script_args(
        train_teacher.TeacherArguments, "teacher", ["--config", str(config), "--output_dir", str(tmp_path / "t")],
        train_teacher.derived_defaults,
    )
    assert teacher_args.teacher_config == str(TEACHER_TINY) and training.output_dir == str(tmp_path / "t")
    assert training.num_train_epochs == 2 and training.remove_unused_columns  # the views' extras are dropped
    # --dataset alone reads configs/<dataset>.yaml; --config none skips it
    _, _, _, bundled = parse_script_args(train_teacher.TeacherArguments, "teacher", ["--dataset", "lunghist700"],
                                         train_teacher.derived_defaults)
    assert bundled.num_train_epochs == 100 and bundled.per_device_train_batch_size == 24
    _, _, _, plain = parse_script_args(
        train_teacher.TeacherArguments, "teacher", ["--dataset", "lunghist700", "--config", "none"],
        train_teacher.derived_defaults,
    )
    assert plain.num_train_epochs == 3 and plain.per_device_train_batch_size == 8  # TrainingArguments' own
    with pytest.raises(SystemExit):  # no dataset anywhere
        parse_script_args(
            train_teacher.TeacherArguments, "teacher", ["--config", "none"], train_teacher.derived_defaults
        )


def test_split_seeds_write_one_folder_per_split_and_a_summary(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "folder", {"tumour": 12, "stroma": 12, "normal": 12}, images_per_group=2)
    config = tiny_config(tmp_path / "tiny.yaml")
    out = tmp_path / "runs"
    summary = train_teacher.main(["--dataset", "imagefolder", "--data_dir", str(tree.data_dir), "--groups_csv",
                                  str(tree.groups_csv), "--config", str(config), "--split_seeds", "1-2",
                                  "--num_train_epochs", "1", "--do_eval", "False", "--output_dir", str(out)])
    assert summary["n_splits"] == 2
    for seed in (1, 2):
        assert (out / f"split_{seed}" / "test_results.json").is_file()
    parts = [json.loads((out / f"split_{s}" / "split.json").read_text())["parts"] for s in (1, 2)]
    tests = [{row[0] for row in part["test"]} for part in parts]
    assert tests[0] != tests[1]  # two different splits
    saved = json.loads((out / "splits_summary.json").read_text())
    accs = [json.loads((out / f"split_{s}" / "test_results.json").read_text())["test_accuracy"] for s in (1, 2)]
    assert saved["metrics"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    assert saved["metrics"]["accuracy"]["std"] == pytest.approx(float(torch.tensor(accs).std()), abs=1e-9)
    assert "±" in (out / "splits_summary.md").read_text()


def test_push_to_hub_uploads_a_loadable_model_with_code_and_card(lung_env, tmp_path, monkeypatch):
    import transformers.trainer

    _, config = lung_env
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)  # the Trainer's repo and upload
    monkeypatch.setattr(protocol, "HfApi", lambda **kwargs: hub)  # the run protocol's final upload
    distill_student.main(["--dataset", "lunghist700", "--config", str(config), "--kd_weight", "0",
                          "--num_train_epochs", "1",
                          "--push_to_hub", "True", "--hub_model_id", "someone/amlpf-lung", "--hub_strategy", "end"])
    repo = tmp_path / "hub" / "someone" / "amlpf-lung"
    assert hub.uploads and (repo / "modeling_amlpf.py").is_file() and not list(repo.glob("checkpoint-*"))
    assert hub.uploads[-1] == "someone/amlpf-lung"  # one final upload of the folder, with the project's card
    card = (repo / "README.md").read_text()
    assert card == (tmp_path / "outputs" / "lunghist700" / "student" / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "someone/amlpf-lung" in card and "fusion" in card.lower()
    model = AutoModel.from_pretrained(repo)
    processor = AutoImageProcessor.from_pretrained(repo)
    tokenizer = AutoTokenizer.from_pretrained(repo)
    assert model.config.num_labels == 3 and processor.crop_size == 64
    assert tokenizer.eos_token_id == model.config.text_config.eos_token_id
    assert AutoConfig.from_pretrained(repo).auto_map["AutoModel"].startswith("modeling_amlpf.")


def test_accelerate_launch_two_cpu_processes(tmp_path):
    """A real two-process run: identical sampler weights and streams on both ranks, disjoint batches that
    together form the global draw, and a student that loads."""
    classes = {"tumour": 16, "stroma": 10, "normal": 8}
    tree = make_imagefolder_tree(tmp_path / "folder", classes, images_per_group=2)
    teacher = AutoModel.from_config(AutoConfig.from_pretrained(TEACHER_TINY))
    names = sorted(classes)
    teacher.config.id2label = dict(enumerate(names))
    teacher.config.label2id = {n: i for i, n in enumerate(names)}
    teacher = type(teacher)(teacher.config)
    teacher.save_pretrained(tmp_path / "teacher")
    config = tiny_config(tmp_path / "tiny.yaml")
    out = tmp_path / "student"
    probe = tmp_path / "probe"
    probe.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(REPO_ROOT / "tests" / "accelerate_probe.py"), str(probe),
           "--dataset", "imagefolder", "--data_dir", str(tree.data_dir), "--groups_csv", str(tree.groups_csv),
           "--config", str(config), "--teacher_model", str(tmp_path / "teacher"), "--output_dir", str(out),
           "--per_device_train_batch_size", "3", "--num_train_epochs", "2", "--do_eval", "False"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"] and len(ranks[0]["weights"]) == 2
    for epoch in ("0", "1"):
        stream = ranks[0]["streams"][epoch]
        assert stream == ranks[1]["streams"][epoch]
        # accelerate deals whole batches round-robin; the student drops the last incomplete round (drop_last, as
        # the reference): floor(N / 6) steps, each the global batch of 6 one process would have drawn
        steps = len(stream) // 6
        assert len(ranks[0]["batches"][epoch]) == len(ranks[1]["batches"][epoch]) == steps
        dealt = [b for pair in zip(ranks[0]["batches"][epoch], ranks[1]["batches"][epoch]) for b in pair]
        assert dealt == [stream[i : i + 3] for i in range(0, 6 * steps, 3)]
    first = ranks[0]["streams"]["0"]
    assert len(set(first)) < len(first)  # epoch 1: uniform draws with replacement, some rows twice
    student = AutoModel.from_pretrained(out)
    assert [student.config.id2label[i] for i in range(3)] == names
    history = json.loads((out / "resampling_history.json").read_text())
    assert history["epochs"][-1]["records"] == 6 * (len(ranks[0]["streams"]["1"]) // 6)  # both ranks' draws
