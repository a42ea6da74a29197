"""Evaluating a trained checkpoint does what was asked and nothing else; every pushed revision loads.

One tiny student is trained once (in-process, because its pushes go to a fake Hub); the evaluations then run the
script as a user does (``python distill_student.py --do_train False --model_name_or_path DIR ...``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO_ROOT, STUDENT_TINY
from data_trees import make_imagefolder_tree
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

import distill_student
from modeling_amlpf.cli import protocol
from modeling_amlpf.cli.arguments import StudentArguments
from modeling_amlpf.cli.launch import UserError

CLASSES = ["normal", "tumor"]
MODULE_FILES = ("modeling_amlpf.py", "configuration_amlpf.py", "image_processing_amlpf.py", "image_decoding.py")


def strict_json(path: Path):
    """Parse like a strict JSON parser: the bare words NaN/Infinity are refused."""

    def refuse(word):
        raise ValueError(f"{path} holds {word}, which is not JSON")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


class SnapshotHub:
    """Stands in for the Hub API: every upload is kept as a snapshot of the folder as it was pushed."""

    def __init__(self, root: Path):
        self.root, self.pushes = root, []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, ignore_patterns=None, run_as_future=False,
                      commit_message=None, **kwargs):
        snapshot = self.root / f"push-{len(self.pushes):02d}"
        ignore = shutil.ignore_patterns(*ignore_patterns) if ignore_patterns else None
        shutil.copytree(folder_path, snapshot, ignore=ignore)
        self.pushes.append(SimpleNamespace(path_in_repo=path_in_repo, folder=snapshot, message=commit_message))
        if not run_as_future:
            return "commit"
        done = Future()
        done.set_result("commit")
        return done

    def upload_file(self, **kwargs):
        raise AssertionError("the project's card travels with the folder: no separate card upload")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny student trained 2 epochs on an image folder (no teacher, no resampling), pushing to a fake Hub at
    every save with ``hub_strategy=checkpoint`` (the output folder and ``last-checkpoint/``)."""
    root = tmp_path_factory.mktemp("eval_runs")
    tree = make_imagefolder_tree(root / "cohort", {"normal": 9, "tumor": 9}, images_per_group=3)
    out = root / "student"
    hub = SnapshotHub(root / "hub")
    argv = [
        "--dataset", "imagefolder", "--data_dir", str(tree.data_dir), "--groups_csv", str(tree.groups_csv),
        "--config", "none", "--student_model", str(STUDENT_TINY), "--kd_weight", "0", "--resampling", "none",
        "--num_train_epochs", "2", "--learning_rate", "1e-3", "--per_device_train_batch_size", "8",
        "--dataloader_drop_last", "False",  # 6 training images: one short batch per epoch
        "--output_dir", str(out), "--use_cpu", "True", "--disable_tqdm", "True", "--seed", "3",
        "--push_to_hub", "True", "--hub_model_id", "someone/amlpf-eval", "--hub_strategy", "checkpoint",
    ]
    import transformers.trainer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.trainer, "hf_api", lambda: hub)  # the Trainer's repo and checkpoint pushes
        patch.setattr(protocol, "HfApi", lambda **kwargs: hub)  # the run protocol's final push
        distill_student.main(argv)
    return SimpleNamespace(tree=tree, out=out, hub=hub, root=root)


def run_student(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, str(REPO_ROOT / "distill_student.py"), *map(str, args)]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def evaluate(trained, *args) -> subprocess.CompletedProcess:
    """``distill_student.py --do_train False --model_name_or_path <the student>`` on its own data and split."""
    tree = trained.tree
    return run_student(
        "--dataset", "imagefolder", "--data_dir", tree.data_dir, "--groups_csv", tree.groups_csv, "--config", "none",
        "--do_train", "False", "--model_name_or_path", trained.out, "--use_cpu", "True", "--disable_tqdm", "True",
        *args,
    )


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


# ------------------------------------------------------------------------------------------ 14.7: pushes
def test_every_pushed_folder_loads_with_code_processor_tokenizer_and_the_projects_card(trained):
    pushes = trained.hub.pushes
    # per save (2 epochs): the output folder and last-checkpoint/; then one final push of the output folder
    assert [p.path_in_repo for p in pushes] == [None, "last-checkpoint", None, "last-checkpoint", None]
    assert pushes[0].message == "Training in progress, epoch 1" and pushes[-1].message.startswith("AMLPF-CLIP student")
    for push in pushes:
        folder = push.folder
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModel"].startswith("modeling_amlpf."), folder
        for name in (*MODULE_FILES, "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / name).is_file(), (folder.name, name)
        card = (folder / "README.md").read_text()
        assert "AMLPF-CLIP student" in card and "tiny random-init test preset" in card, folder
        assert "None dataset" not in card and "fine-tuned version of" not in card
        assert not list(folder.glob("checkpoint-*"))
    first, final = pushes[0].folder, pushes[-1].folder
    assert "## Test metrics" not in (first / "README.md").read_text()  # a run in progress has none yet
    assert (final / "README.md").read_bytes() == (trained.out / "README.md").read_bytes()
    for folder in (first, pushes[1].folder, final):  # the first revision, a checkpoint, the last one
        model = AutoModel.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
        assert [model.config.id2label[i] for i in range(2)] == CLASSES
        assert tokenizer.eos_token_id == model.config.text_config.eos_token_id and processor.crop_size == 64


# ------------------------------------------------------------------------------------------ wiring, 14.10
def test_run_outputs_fusion_weights_without_resampling_card_figures_and_strict_json(trained):
    out = trained.out
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "fusion_weight/label" in entry]
    assert [entry["epoch"] for entry in logged] == [1.0, 2.0]  # once per epoch, with --resampling none
    assert set(logged[-1]) >= {"fusion_weight/label", "fusion_weight/basic", "fusion_weight/detailed"}
    model = AutoModel.from_pretrained(out)  # the selected (best) epoch's weights
    selected = next(entry for entry in logged if entry["step"] == state["best_global_step"])
    expected = model.effective_fusion_weights().tolist()
    assert [selected[f"fusion_weight/{level}"] for level in model.config.prompt_levels] == pytest.approx(expected)
    assert (out / "fusion_weights.png").is_file() and not (out / "resampling_history.json").exists()
    card = (out / "README.md").read_text()
    assert "![test confusion matrix](test_confusion_matrix.png)" in card
    assert "![fusion weights](fusion_weights.png)" in card
    assert "Group-disjoint split" in card  # from the data's provenance (groups.csv)
    matrix = strict_json(out / "test_confusion_matrix.json")
    assert matrix["title"] == "Student, test split (imagefolder)" and matrix["class_names"] == CLASSES
    for name in ("test_results.json", "eval_results.json", "all_results.json", "train_results.json"):
        strict_json(out / name)


# ------------------------------------------------------------------------------------------ 14.3 + 16.1 levels
def test_level_selection_uses_the_checkpoints_own_prompts_and_leaves_the_checkpoint_untouched(trained):
    out = trained.out
    before = files_of(out)
    result = evaluate(trained, "--prompt_levels", "label,detailed", "--output_dir", out, "--do_eval", "False")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"prompts: the checkpoint's own prompts ({out}); levels ['label', 'detailed']" in log
    assert "template prompts" not in log
    assert files_of(out) == before  # README.md, config, weights, results and split.json byte-identical

    evaluation = next(out.glob("eval-imagefolder-cohort-*"))
    summary = strict_json(evaluation / "evaluation.json")
    config = json.loads((out / "config.json").read_text())
    assert summary["prompts"]["levels"] == ["label", "detailed"]
    assert summary["prompts"]["texts"] == {level: config["prompts"][level] for level in ("label", "detailed")}
    trained_weights = dict(zip(config["prompt_levels"], AutoModel.from_pretrained(out).fusion_weights.tolist()))
    assert summary["prompts"]["fusion_weights"] == pytest.approx(
        {level: trained_weights[level] for level in ("label", "detailed")}
    )
    assert summary["model"] == str(out) and summary["relation_to_training_data"].startswith("the model's own data")
    for name in ("test_results.json", "all_results.json", "split.json", "test_confusion_matrix.png"):
        assert (evaluation / name).is_file(), name
    assert "README.md" not in os.listdir(evaluation)
    assert "Evaluation of the student" in (evaluation / "evaluation.md").read_text()


def test_selected_levels_encode_exactly_the_checkpoints_rows(trained):
    """The prompt embeddings of the selected levels equal the checkpoint's own rows for those levels, and those
    levels keep their learned fusion weights."""
    checkpoint = AutoModel.from_pretrained(trained.out)
    args = StudentArguments(model_name_or_path=str(trained.out), prompt_levels="label,detailed")
    model, _ = distill_student.build_student(args, CLASSES, None, training=False)
    rows = [checkpoint.config.prompt_levels.index(level) for level in ("label", "detailed")]
    torch.testing.assert_close(model.prompt_embeds, checkpoint.prompt_embeds[rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.fusion_weights.detach(), checkpoint.fusion_weights.detach()[rows])
    assert model.config.prompts == {level: checkpoint.config.prompts[level] for level in ("label", "detailed")}


# ------------------------------------------------------------------------------------------ 16.1 prompts file
def test_a_prompts_file_is_re_encoded_swapped_prompts_swap_the_predictions(trained, tmp_path):
    """The checkpoint's own prompts with the two classes' texts exchanged: every logit column is exchanged, so
    every prediction flips: the confusion matrix's columns swap (no template prompts involved)."""
    config = json.loads((trained.out / "config.json").read_text())
    swapped = {name: {level: config["prompts"][level][1 - i] for level in config["prompt_levels"]}
               for i, name in enumerate(CLASSES)}
    prompts_file = tmp_path / "swapped.yaml"
    prompts_file.write_text(yaml.safe_dump(
        {"dataset": "imagefolder", "task": "swapped", "class_names": CLASSES, "prompts": swapped}
    ))
    result = evaluate(trained, "--prompts_file", prompts_file, "--output_dir", tmp_path / "eval", "--do_eval", "False")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"prompts: the prompts file {prompts_file}; levels ['label', 'basic', 'detailed']" in log
    assert "template prompts" not in log
    own = strict_json(trained.out / "test_confusion_matrix.json")["counts"]
    now = strict_json(tmp_path / "eval" / "evaluation.json")
    assert now["confusion_matrix"] == [row[::-1] for row in own]
    assert now["prompts"]["texts"]["detailed"] == config["prompts"]["detailed"][::-1]


# ------------------------------------------------------------------------------------------ 16.1 refusals
@pytest.fixture(scope="module")
def two_level_checkpoint(trained):
    """The trained student with only its label and detailed levels (as a --prompt_levels label,detailed run)."""
    folder = trained.root / "two_levels"
    shutil.copytree(trained.out, folder, ignore=shutil.ignore_patterns("checkpoint-*", "eval-*"))
    model = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = {level: model.config.prompts[level] for level in ("label", "detailed")}
    model.set_prompts(prompts, tokenizer, levels=["label", "detailed"])
    with torch.no_grad():
        model.fusion_weights.copy_(torch.tensor([0.7, 1.3]))  # as learned
    model.save_pretrained(folder)
    return folder


def test_levels_a_checkpoint_lacks_are_refused(two_level_checkpoint, trained, tmp_path):
    tree = trained.tree
    result = run_student(
        "--dataset", "imagefolder", "--data_dir", tree.data_dir, "--groups_csv", tree.groups_csv, "--config", "none",
        "--do_train", "False", "--model_name_or_path", two_level_checkpoint, "--prompt_levels", "basic,detailed",
        "--output_dir", tmp_path / "eval", "--use_cpu", "True",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (
        "--prompt_levels asks for ['basic'], but the checkpoint has prompts for the level(s) ['label', 'detailed'] "
        "only: pass --prompts_file FILE"
    ) in result.stderr
    assert not (tmp_path / "eval" / "test_results.json").exists()


def test_an_unlearned_level_or_another_fusion_is_refused_in_an_evaluation(two_level_checkpoint):
    from modeling_amlpf.pretrained.prompts import template_prompts

    args = StudentArguments(model_name_or_path=str(two_level_checkpoint), prompt_levels="basic,detailed")
    with pytest.raises(UserError, match=r"\['basic'\] has no learned fusion weight"):
        distill_student.build_student(args, CLASSES, template_prompts(CLASSES), training=False)
    # continuing training may add a level: it starts at the initial weight, the others keep theirs
    model, _ = distill_student.build_student(args, CLASSES, template_prompts(CLASSES), training=True)
    assert model.config.prompt_levels == ["basic", "detailed"]
    assert model.fusion_weights.detach().tolist() == pytest.approx([model.config.fusion_init, 1.3])
    args = StudentArguments(model_name_or_path=str(two_level_checkpoint), fusion="softmax")
    with pytest.raises(UserError, match="trained with --fusion learned; evaluating it with --fusion softmax"):
        distill_student.build_student(args, CLASSES, None, training=False)


# ------------------------------------------------------------------------------------------ 14.10 summaries
def test_splits_summary_and_resampling_history_are_strict_json(tmp_path):
    from modeling_amlpf.evaluation.scoring import write_splits_summary
    from modeling_amlpf.training.resampling import HISTORY_NAME, ClassBalancedResampling

    nan = float("nan")
    per_split = {1: {"accuracy": 0.5, "macro_auroc": nan}, 2: {"accuracy": 0.7, "macro_auroc": nan}}
    write_splits_summary(tmp_path, per_split, "demo")
    summary = strict_json(tmp_path / "splits_summary.json")
    assert summary["metrics"]["accuracy"]["mean"] == pytest.approx(0.6)
    assert summary["metrics"]["macro_auroc"]["mean"] is None  # undefined on every split: null, not NaN

    callback = ClassBalancedResampling(CLASSES)
    callback.history = [{"epoch": 1, "mean_true_class_prob": {"normal": nan, "tumor": 0.4}}]
    callback.write_history(str(tmp_path))
    history = strict_json(tmp_path / HISTORY_NAME)
    assert history["epochs"][0]["mean_true_class_prob"] == {"normal": None, "tumor": 0.4}
