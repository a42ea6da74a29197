"""The defaults that docs/differences.md states about the reference (issue 22): epoch 1 draws with replacement,
the student drops the last incomplete batch, no entry point clips gradients unless asked, model selection on
validation macro-F1 (named in the card and the log), and ``--min_class_share 0`` stops where the reference fails.

Expected values are computed here independently: ``torch.multinomial`` with the documented seed, floor division
of the loader length, the reference's mean over zero draws and its ``WeightedRandomSampler`` on it.
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from conftest import STUDENT_TINY
from data_trees import make_imagefolder_tree
from torch.utils.data import BatchSampler, Dataset, WeightedRandomSampler
from transformers import TrainerControl, TrainerState, TrainingArguments, default_data_collator
from transformers.modeling_outputs import SequenceClassifierOutput

import distill_student
import train_teacher
from modeling_amlpf.cli.arguments import StudentArguments, TeacherArguments, parse_script_args
from modeling_amlpf.cli.launch import run_cli
from modeling_amlpf.evaluation.model_card import ModelCardFacts, render_model_card
from modeling_amlpf.training.resampling import (
    DEFAULT_MIN_CLASS_SHARE,
    ClassBalancedResampling,
    ClassBalancedSampler,
)
from modeling_amlpf.training.trainers import AmlpfTrainer, DistillationTrainer
from modeling_amlpf.utils import CONFIG_DIR, UserError

DIFFERENCES = CONFIG_DIR.parent / "docs" / "differences.md"


# ------------------------------------------------------------------------------------------------ helpers
def parse(script, argv: list[str], tmp_path):
    """What the script's main() parses (the same call, the script's own defaults), into a fresh output folder."""
    if script is train_teacher:
        model_arguments, section, defaults = TeacherArguments, "teacher", None
    else:
        model_arguments, section, defaults = StudentArguments, "student", distill_student.STUDENT_DEFAULTS
    argv = [*argv, "--output_dir", str(tmp_path / "out")]
    return parse_script_args(model_arguments, section, argv, script.derived_defaults, defaults=defaults)


# every way a user starts training: a paper recipe, no recipe, an image folder (no recipe exists), the demo
ENTRY_POINTS = {
    "recipe": ["--dataset", "breakhis"],
    "config none": ["--dataset", "breakhis", "--config", "none"],
    "imagefolder": ["--dataset", "imagefolder"],
    "demo": ["--config", str(CONFIG_DIR / "demo.yaml")],
}
SCRIPTS = {"teacher": train_teacher, "student": distill_student}


class LabelledRows(Dataset):
    """Rows with a label and a fixed (9, 3, 4, 4) view tensor: what the Trainer's loader and the sampler need."""

    def __init__(self, labels):
        self.labels = list(labels)
        rng = np.random.default_rng(0)
        self.pixels = torch.tensor(rng.normal(size=(len(labels), 9, 3, 4, 4)), dtype=torch.float32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


class MeanPixelClassifier(torch.nn.Module):
    def __init__(self, num_labels: int):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, num_labels)

    def forward(self, pixel_values, labels=None):
        logits = self.linear(pixel_values.mean(dim=(1, 3, 4)))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def training_args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=2, learning_rate=1e-2,
        save_strategy="no", eval_strategy="no", report_to="none", remove_unused_columns=False, seed=7,
        use_cpu=True, disable_tqdm=True,
    )
    values.update(overrides)
    return TrainingArguments(**values)


# ------------------------------------------------------------------------------------ 1. epoch 1 draws
def test_epoch_one_draws_n_uniform_indices_with_replacement():
    n, seed = 1000, 5
    labels = [0] * 700 + [1] * 200 + [2] * 100
    sampler = ClassBalancedSampler(labels, 3, seed=seed)
    sampler.set_epoch(0)
    stream = list(sampler)
    generator = torch.Generator().manual_seed(seed + 0)  # one global stream per epoch, seeded seed + epoch
    expected = torch.multinomial(torch.full((n,), 1.0 / n, dtype=torch.float64), n, True, generator=generator)
    assert stream == expected.tolist() and len(sampler) == n
    # about N (1 - 1/e) distinct rows, as the reference's 4,988 of 7,909 on BreaKHis; a permutation would give N
    assert abs(len(set(stream)) - n * (1 - (1 - 1 / n) ** n)) < 4 * math.sqrt(n * 0.25)
    assert len(set(stream)) < n
    # the switch back: every row once
    permuted = ClassBalancedSampler(labels, 3, seed=seed, first_epoch_sampling="permutation")
    permuted.set_epoch(0)
    assert sorted(permuted) == list(range(n))
    with pytest.raises(ValueError, match="first_epoch_sampling"):
        ClassBalancedSampler(labels, 3, first_epoch_sampling="shuffle")


def test_first_epoch_sampling_defaults_to_replacement_and_is_checked_at_parse_time(tmp_path, capsys):
    assert ClassBalancedResampling(["a", "b"]).first_epoch_sampling == "replacement"
    for argv in ENTRY_POINTS.values():
        _, model_args, _, _ = parse(distill_student, argv, tmp_path)
        assert model_args.first_epoch_sampling == "replacement", argv
    _, model_args, _, _ = parse(distill_student, ["--dataset", "breakhis", "--first_epoch_sampling", "Permutation"],
                                tmp_path)
    assert model_args.first_epoch_sampling == "permutation"
    with pytest.raises(SystemExit) as exit_info:
        parse(distill_student, ["--dataset", "breakhis", "--first_epoch_sampling", "shuffle"], tmp_path)
    assert exit_info.value.code == 2
    assert "invalid choice 'shuffle'; valid values: replacement, permutation" in capsys.readouterr().err


def test_a_checkpoint_inside_epoch_one_resumes_only_with_its_own_first_epoch_draw():
    labels = [0, 0, 1, 1, 2]
    old = ClassBalancedSampler(labels, 3, seed=1, first_epoch_sampling="permutation").state_dict()
    with pytest.raises(UserError, match="resume with --first_epoch_sampling permutation"):
        ClassBalancedSampler(labels, 3, seed=1).load_state_dict(old)
    del old["first_epoch_sampling"]  # written before the option existed: epoch 1 was a permutation
    with pytest.raises(UserError, match="--first_epoch_sampling permutation"):
        ClassBalancedSampler(labels, 3, seed=1).load_state_dict(old)
    later = {**old, "class_weights": [0.2, 0.3, 0.5], "epoch": 4}  # past epoch 1: the first draw no longer matters
    resumed = ClassBalancedSampler(labels, 3, seed=1)
    resumed.load_state_dict(later)
    assert resumed.epoch == 4 and resumed.class_weights.tolist() == [0.2, 0.3, 0.5]


# ------------------------------------------------------------------------------------ 2. the last batch
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_the_student_drops_the_last_incomplete_batch_and_the_teacher_keeps_it(entry, tmp_path):
    *_, student = parse(distill_student, ENTRY_POINTS[entry], tmp_path)
    *_, teacher = parse(train_teacher, ENTRY_POINTS[entry], tmp_path)
    assert student.dataloader_drop_last is True and teacher.dataloader_drop_last is False
    *_, kept = parse(distill_student, [*ENTRY_POINTS[entry], "--dataloader_drop_last", "False"], tmp_path)
    assert kept.dataloader_drop_last is False


@pytest.mark.parametrize("drop_last", [True, False])
def test_student_loader_length_is_floor_n_over_batch(tmp_path, drop_last):
    n, batch = 50, 8
    trainer = DistillationTrainer(
        model=MeanPixelClassifier(3), args=training_args(tmp_path, dataloader_drop_last=drop_last),
        train_dataset=LabelledRows([i % 3 for i in range(n)]), data_collator=default_data_collator,
        callbacks=[ClassBalancedResampling(["a", "b", "c"])], kd_weight=0.0,
    )
    loader = trainer.get_train_dataloader()
    assert len(loader) == (n // batch if drop_last else -(-n // batch))
    sizes = [len(b["labels"]) for b in loader]
    assert sizes == ([batch] * (n // batch) if drop_last else [batch] * (n // batch) + [n % batch])


def test_two_processes_deal_the_global_stream_and_drop_the_same_last_batch():
    """accelerate's BatchSamplerShard (what the Trainer's loader becomes under 2 processes) over the sampler's
    batches of 9 with drop_last: floor(floor(N/9)/2) = floor(N/18) steps, and step s's two batches are exactly
    the single-process global batch s of 18, as the reference's batch 18 on one GPU."""
    n, per_device, processes = 100, 9, 2
    sampler = ClassBalancedSampler([i % 4 for i in range(n)], 4, seed=3)
    sampler.set_epoch(0)
    stream = list(sampler)
    batches = BatchSampler(sampler, per_device, drop_last=True)
    shards = [list(BatchSamplerShard(batches, processes, rank, split_batches=False)) for rank in range(processes)]
    steps = n // (per_device * processes)
    assert [len(shard) for shard in shards] == [steps, steps]
    assert all(len(BatchSamplerShard(batches, processes, rank)) == steps for rank in range(processes))
    for step in range(steps):
        assert shards[0][step] + shards[1][step] == stream[step * 18 : (step + 1) * 18]


def test_evaluation_and_prediction_keep_every_image_with_drop_last(tmp_path):
    """The Trainer applies dataloader_drop_last to every loader; only training may drop (10 rows, batch 4)."""
    rows = LabelledRows([i % 3 for i in range(10)])
    trainer = AmlpfTrainer(
        model=MeanPixelClassifier(3), train_dataset=rows, eval_dataset=rows, data_collator=default_data_collator,
        args=training_args(tmp_path, dataloader_drop_last=True, per_device_train_batch_size=4,
                           per_device_eval_batch_size=4),
    )
    assert len(trainer.get_train_dataloader()) == 2
    assert len(trainer.get_eval_dataloader()) == len(trainer.get_test_dataloader(rows)) == 3
    assert trainer.args.dataloader_drop_last is True
    prediction = trainer.predict(rows)
    assert prediction.predictions.shape == (10, 3) and prediction.label_ids.tolist() == rows.labels
    with torch.no_grad():  # the validation loss over all 10 rows, not the 8 of the two full batches
        expected = torch.nn.functional.cross_entropy(trainer.model(rows.pixels).logits, torch.tensor(rows.labels))
    assert trainer.evaluate()["eval_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert trainer.args.dataloader_drop_last is True


def test_a_training_set_smaller_than_one_batch_is_refused_with_drop_last(tmp_path):
    rows = LabelledRows([0, 1, 2, 0, 1])
    with pytest.raises(UserError, match=r"5 images, fewer than one batch of 8.*--dataloader_drop_last False"):
        AmlpfTrainer(model=MeanPixelClassifier(3), args=training_args(tmp_path, dataloader_drop_last=True),
                     train_dataset=rows, data_collator=default_data_collator)
    AmlpfTrainer(model=MeanPixelClassifier(3), args=training_args(tmp_path), train_dataset=rows,
                 data_collator=default_data_collator)  # without drop_last the one short batch trains


# ------------------------------------------------------------------------------------ 3. no silent clipping
@pytest.mark.parametrize("script", list(SCRIPTS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_no_entry_point_clips_unless_asked(script, entry, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="modeling_amlpf.cli.arguments")
    *_, training = parse(SCRIPTS[script], ENTRY_POINTS[entry], tmp_path)
    assert training.max_grad_norm == 0.0
    assert "Gradient clipping is on" not in caplog.text
    *_, training = parse(SCRIPTS[script], [*ENTRY_POINTS[entry], "--max_grad_norm", "1.0"], tmp_path)
    assert training.max_grad_norm == 1.0
    assert "Gradient clipping is on: max_grad_norm 1.0 [flag]" in caplog.text


# ------------------------------------------------------------------------------------ 4. model selection
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_model_selection_is_validation_macro_f1_and_is_logged(script, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="modeling_amlpf.cli.arguments")
    for argv in ENTRY_POINTS.values():
        *_, training = parse(SCRIPTS[script], argv, tmp_path)
        assert training.load_best_model_at_end and training.metric_for_best_model == "macro_f1"
        assert training.greater_is_better is True
    assert "Model selection: the checkpoint with the highest validation macro_f1" in caplog.text
    *_, training = parse(SCRIPTS[script], ["--dataset", "breakhis", "--metric_for_best_model", "accuracy"], tmp_path)
    assert training.metric_for_best_model == "accuracy" and training.greater_is_better is True
    *_, training = parse(SCRIPTS[script], ["--dataset", "breakhis", "--metric_for_best_model", "loss"], tmp_path)
    assert training.greater_is_better is False  # TrainingArguments' own rule for a loss
    assert "Model selection: the checkpoint with the lowest validation loss" in caplog.text


def test_the_card_names_the_selection_metric():
    facts = dict(kind="student", dataset="chaoyang", class_names=["normal", "serrated", "adenocarcinoma", "adenoma"])
    card = render_model_card(ModelCardFacts(**facts, selection_metric="macro_f1"))
    assert ("- Model selection: the epoch with the best validation Macro F1 (`metric_for_best_model: macro_f1`); "
            "the test split was not used to choose it.") in card
    assert "best validation Accuracy (`metric_for_best_model: eval_accuracy`)" in render_model_card(
        ModelCardFacts(**facts, selection_metric="eval_accuracy"))
    assert "- Model selection: none; the weights of the last training epoch." in render_model_card(
        ModelCardFacts(**facts))


# ------------------------------------------------------------------------------------ 5. a starved class
def _starving_seed(labels, row: int) -> int:
    """A seed whose epoch-1 stream never draws ``row`` (about a third of all seeds)."""
    for seed in range(100):
        sampler = ClassBalancedSampler(labels, 2, seed=seed)
        if row not in list(sampler):
            return seed
    raise AssertionError("no seed starves the row")


def test_reference_formula_on_a_class_without_draws_is_nan_and_its_sampler_fails():
    """What the reference does (independent of our code): the mean over zero draws, then its sampler."""
    probs = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)  # class 0's draws; class 1 got none
    weights = [((1 - probs) ** 2).mean(), ((1 - probs[:0]) ** 2).mean()]
    assert not math.isnan(weights[0]) and math.isnan(weights[1])
    sample_weights = torch.stack([weights[label] for label in [0, 0, 0, 1]])
    with pytest.raises(RuntimeError):
        list(WeightedRandomSampler(sample_weights, 4, replacement=True))


@pytest.mark.parametrize("share", [0.0, DEFAULT_MIN_CLASS_SHARE])
def test_min_class_share_zero_stops_when_a_class_got_no_draw(tmp_path, share):
    labels = [0] * 20 + [1]  # one image of class "rare": no draw in epoch 1 for about a third of the seeds
    seed = _starving_seed(labels, row=20)
    callback = ClassBalancedResampling(["common", "rare"], min_class_share=share)
    trainer = AmlpfTrainer(
        model=MeanPixelClassifier(2), args=training_args(tmp_path, seed=seed, per_device_train_batch_size=7),
        train_dataset=LabelledRows(labels), data_collator=default_data_collator, callbacks=[callback],
    )
    if share == 0.0:
        with pytest.raises(UserError) as error:
            trainer.train()
        message = str(error.value)
        assert "class(es) 'rare' got no training draw in epoch 1" in message
        assert "--min_class_share > 0, e.g. the default 0.1" in message
        assert trainer.state.global_step == 3 and callback.history == []  # stopped at the end of epoch 1
        return
    trainer.train()  # with the floor nothing stops: the class keeps its weight and is drawn in epoch 2
    first = callback.history[0]
    assert first["next_epoch_class_weights"]["rare"] == 1.0 and first["next_epoch_class_share"]["rare"] > 0


def test_a_checkpoint_of_a_min_class_share_zero_run_resumes_with_the_fix(tmp_path):
    """The Trainer restores the callback from the checkpoint's arguments (min_class_share 0); the sampler it draws
    with is this run's (--min_class_share 0.1), and that one decides: no stop, the previous weight is kept."""
    labels = [0] * 20 + [1]
    saved = ClassBalancedResampling(["common", "rare"], min_class_share=0.0).state()
    restored = ClassBalancedResampling(**saved["args"])  # what Trainer._load_callback_state builds
    sampler = ClassBalancedSampler(labels, 2, seed=0, min_class_share=DEFAULT_MIN_CLASS_SHARE)
    state = TrainerState(epoch=1.0, stateful_callbacks={"ClassBalancedResampling": saved})
    args = training_args(tmp_path)
    restored.on_train_begin(args, state, TrainerControl(), model=MeanPixelClassifier(2),
                            train_dataloader=SimpleNamespace(sampler=sampler))
    assert restored.min_class_share == DEFAULT_MIN_CLASS_SHARE and restored.state()["args"]["min_class_share"] == 0.1
    restored.record(torch.zeros(20, 2), torch.zeros(20, dtype=torch.long))  # epoch 2: no draw of "rare"
    restored.on_epoch_end(args, TrainerState(epoch=2.0), TrainerControl())
    assert sampler.class_weights[1] == 1.0 and sampler.class_shares()[1] > 0
    restored.unwatch()


def test_the_student_script_stops_with_one_message_and_exit_code_2(tmp_path, capsys):
    """The real script (tiny student, no teacher) on a training split of 12 + 1 images whose seed never draws the
    one "rare" image in epoch 1: the callback's error leaves Trainer.train() and run_cli makes it exit code 2."""
    tree = make_imagefolder_tree(tmp_path / "cohort", {"common": 14, "rare": 2}, write_groups_csv=False)
    rows = sorted(tree.data_dir.glob("*/*.png"))
    common, rare = [r for r in rows if r.parent.name == "common"], [r for r in rows if r.parent.name == "rare"]
    (tmp_path / "train.txt").write_text("".join(f"{r} 0\n" for r in common[:12]) + f"{rare[0]} 1\n")
    (tmp_path / "test.txt").write_text(f"{common[12]} 0\n{common[13]} 0\n{rare[1]} 1\n")
    seed = _starving_seed([0] * 12 + [1], row=12)
    argv = ["--dataset", "imagefolder", "--data_dir", str(tree.data_dir), "--config", "none",
            "--train_split_file", str(tmp_path / "train.txt"), "--test_split_file", str(tmp_path / "test.txt"),
            "--student_model", str(STUDENT_TINY), "--kd_weight", "0", "--min_class_share", "0", "--seed", str(seed),
            "--per_device_train_batch_size", "4", "--num_train_epochs", "2", "--eval_strategy", "no",
            "--save_strategy", "no", "--load_best_model_at_end", "False", "--do_eval", "False", "--do_predict",
            "False", "--output_dir", str(tmp_path / "student"), "--use_cpu", "True", "--disable_tqdm", "True"]
    capsys.readouterr()
    assert run_cli(distill_student.main, argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if " error: " in line]
    assert len(err) == 1 and "error: --min_class_share 0" in err[0]
    assert "class(es) 'rare' got no training draw in epoch 1" in err[0]
    assert not (tmp_path / "student" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------ the docs say the same
def test_differences_page_names_each_default_and_its_switch():
    text = DIFFERENCES.read_text()
    for phrase in ("--first_epoch_sampling permutation", "--dataloader_drop_last false", "--max_grad_norm",
                   "--metric_for_best_model accuracy", "--min_class_share", "705 / 321 / 840 / 273",
                   "--protocol official"):
        assert phrase in text, phrase
