"""Trainers and the resampling callback in one process: records -> weights, resume, schedule, accumulation,
distillation."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest
import torch
from transformers import TrainerCallback, TrainingArguments, default_data_collator
from transformers.modeling_outputs import SequenceClassifierOutput

from modeling_amlpf.training.losses import distillation_loss
from modeling_amlpf.training.resampling import (
    DEFAULT_MIN_CLASS_SHARE,
    HISTORY_NAME,
    ClassBalancedResampling,
    ClassBalancedSampler,
    class_difficulty_weights,
)
from modeling_amlpf.training.trainers import AmlpfTrainer, DistillationTrainer

LABELS = [0] * 10 + [1] * 6 + [2] * 4 + [3] * 4
CLASS_NAMES = ["normal", "hyperplastic", "adenoma", "carcinoma"]  # the tiny student's classes


def fixed_view_dataset(labels=LABELS, views=9, size=64, seed=0):
    """Fixed pixel tensors (no random views), so that runs can be compared step by step."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(len(labels), views, 3, size, size)).astype(np.float32)
    pixels += np.asarray(labels, dtype=np.float32)[:, None, None, None, None] * 0.5  # learnable signal
    ds = datasets.Dataset.from_dict(
        {"pixel_values": list(pixels), "labels": list(labels), "sample_index": list(range(len(labels)))}
    )
    return ds.with_format("torch")


class MeanPixelClassifier(torch.nn.Module):
    """The smallest classifier of (V, 3, S, S) views the Trainer can train: fast and deterministic."""

    def __init__(self, num_labels: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(3, num_labels)

    def forward(self, pixel_values, labels=None):
        logits = self.linear(pixel_values.mean(dim=(1, 3, 4)))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=8, num_train_epochs=2,
        learning_rate=1e-3, save_strategy="epoch", eval_strategy="no", logging_strategy="epoch", report_to="none",
        remove_unused_columns=False, seed=11, use_cpu=True, disable_tqdm=True, save_only_model=False,
        restore_callback_states_from_checkpoint=True,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def resampling_state(checkpoint) -> dict:
    """The callback's entry in a checkpoint's trainer_state.json."""
    return json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["ClassBalancedResampling"]


def resampling_of(trainer) -> ClassBalancedResampling:
    """The trainer's current resampling callback (a resume replaces the instance)."""
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ClassBalancedResampling))


class RecordingTrainer(DistillationTrainer):
    """Keeps every training batch's sample indices per epoch and the true-class probability of every draw,
    computed here from the student's logits (independently of the callback's own records)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches: dict[int, list[list[int]]] = {}
        self.prob_log: list[tuple[int, int, float]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        index, labels = inputs.get("sample_index"), inputs["labels"]
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            self.batches.setdefault(int(self.state.epoch), []).append(index.tolist())
            probs = outputs.logits.detach().softmax(-1).gather(1, labels.view(-1, 1)).squeeze(1)
            self.prob_log += list(zip(index.tolist(), labels.tolist(), probs.tolist()))
        return (loss, outputs) if return_outputs else loss


def make_trainer(tmp_path, student, teacher=None, cls=RecordingTrainer, resampling=True, size=64, **overrides):
    return cls(
        model=student, args=args(tmp_path, **overrides), train_dataset=fixed_view_dataset(size=size),
        data_collator=default_data_collator, teacher_model=teacher, kd_weight=1.0 if teacher is not None else 0.0,
        callbacks=[ClassBalancedResampling(CLASS_NAMES)] if resampling else None,
    )


def test_epoch_end_weights_follow_the_formula_on_recorded_probabilities(tmp_path, tiny_student):
    student, _ = tiny_student
    trainer = make_trainer(tmp_path, student)
    trainer.train()
    epochs = json.loads((tmp_path / HISTORY_NAME).read_text())["epochs"]
    assert len(epochs) == 2
    # epoch 1: N uniform draws with replacement (the sampler's seeded stream)
    first_epoch = ClassBalancedSampler(LABELS, 4, seed=trainer.args.seed)  # epoch 0, no weights yet
    assert [i for batch in trainer.batches[0] for i in batch] == list(first_epoch)
    # the weights set after epoch 1 equal the formula applied to the probabilities recorded in epoch 1
    first = trainer.prob_log[: len(LABELS)]
    probs, labels = torch.tensor([p for _, _, p in first]), torch.tensor([y for _, y, _ in first])
    expected = class_difficulty_weights(probs, labels, 4, 2.0)
    got = torch.tensor(list(epochs[0]["next_epoch_class_weights"].values()), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert list(epochs[0]["next_epoch_class_weights"]) == CLASS_NAMES
    assert set(epochs[0]["fusion_weights"]) == {"label", "basic", "detailed"}
    # epoch 2 drew from the weighted sampler: same length, with replacement
    assert sum(len(b) for b in trainer.batches[1]) == len(LABELS)
    # the weights and fusion weights are in the Trainer's log, once per epoch
    logged = [h for h in trainer.state.log_history if "class_weight/normal" in h]
    assert [h["epoch"] for h in logged] == [1.0, 2.0]
    assert logged[0]["class_weight/adenoma"] == epochs[0]["next_epoch_class_weights"]["adenoma"]
    assert logged[1]["fusion_weight/detailed"] == epochs[1]["fusion_weights"]["detailed"]


def test_resume_from_a_mid_run_checkpoint_restores_the_sampler(tmp_path):
    full = make_trainer(tmp_path / "full", MeanPixelClassifier(), num_train_epochs=3, size=8)
    full.train()
    steps_per_epoch = len(full.batches[0])
    checkpoint = tmp_path / "full" / f"checkpoint-{2 * steps_per_epoch}"
    saved = resampling_state(checkpoint)
    assert saved["args"] == {
        "class_names": CLASS_NAMES, "mode": "difficulty", "gamma": 2.0, "min_class_share": DEFAULT_MIN_CLASS_SHARE,
        "first_epoch_sampling": "replacement",
    }
    state = saved["attributes"]
    assert state["sampler_state"]["class_weights"] is not None and len(state["history"]) == 2
    assert not (checkpoint / "sampler_state.json").exists()

    resumed = make_trainer(tmp_path / "full", MeanPixelClassifier(seed=1), num_train_epochs=3, size=8)
    original = resampling_of(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resampling_of(resumed) is not original  # the Trainer restored the state into a new instance
    # the restored weights drive the third epoch: the same draw as in the uninterrupted run
    assert resumed.batches[2] == full.batches[2]
    history = json.loads((tmp_path / "full" / HISTORY_NAME).read_text())["epochs"]
    assert len(history) == 3 and history[:2] == state["history"]
    assert history == resampling_of(full).history


def test_state_is_read_back_without_the_restore_flag(tmp_path):
    """With restore_callback_states_from_checkpoint=False the callback reads its state from trainer_state.json."""
    full = make_trainer(tmp_path / "full", MeanPixelClassifier(), num_train_epochs=2, size=8)
    full.train()
    checkpoint = tmp_path / "full" / f"checkpoint-{len(full.batches[0])}"
    resumed = make_trainer(tmp_path / "again", MeanPixelClassifier(seed=1), num_train_epochs=2, size=8,
                           restore_callback_states_from_checkpoint=False)
    callback = resampling_of(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resampling_of(resumed) is callback
    assert resumed.batches[1] == full.batches[1]
    assert callback.history == resampling_of(full).history


def test_resume_without_resampling_state_fails_clearly(tmp_path):
    plain = make_trainer(tmp_path / "plain", MeanPixelClassifier(), num_train_epochs=1, resampling=False, size=8)
    plain.train()
    checkpoint = next((tmp_path / "plain").glob("checkpoint-*"))
    trainer = make_trainer(tmp_path / "plain", MeanPixelClassifier(), num_train_epochs=2, size=8)
    with pytest.raises(ValueError, match="--resampling none"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_resampling_needs_the_amlpf_trainer_sampler(tmp_path):
    from transformers import Trainer

    trainer = Trainer(model=MeanPixelClassifier(), args=args(tmp_path, num_train_epochs=1, remove_unused_columns=True),
                      train_dataset=fixed_view_dataset(size=8), data_collator=default_data_collator,
                      callbacks=[ClassBalancedResampling(CLASS_NAMES)])
    with pytest.raises(ValueError, match="AmlpfTrainer"):
        trainer.train()


class _LearningRates(TrainerCallback):
    def __init__(self):
        self.rates = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append(optimizer.param_groups[0]["lr"])


def test_epoch_step_schedule_sets_each_epochs_learning_rate(tmp_path):
    rates = _LearningRates()
    schedule = [(1, 1e-3), (2, 4e-4), (4, 1e-4)]
    trainer = AmlpfTrainer(
        model=MeanPixelClassifier(),
        args=args(tmp_path, num_train_epochs=4, learning_rate=2e-3, save_strategy="no", remove_unused_columns=True),
        train_dataset=fixed_view_dataset(size=8), data_collator=default_data_collator, callbacks=[rates],
        lr_schedule=schedule,
    )
    trainer.train()
    steps_per_epoch = -(-len(LABELS) // 4)
    lr_of_epoch = {1: 1e-3, 2: 4e-4, 3: 4e-4, 4: 1e-4}
    expected = [lr_of_epoch[step // steps_per_epoch + 1] for step in range(4 * steps_per_epoch)]
    assert rates.rates == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="--num_train_epochs, not --max_steps"):
        AmlpfTrainer(model=MeanPixelClassifier(), args=args(tmp_path, max_steps=3, save_strategy="no"),
                     train_dataset=fixed_view_dataset(size=8), data_collator=default_data_collator,
                     lr_schedule=schedule).train()


def test_gradient_accumulation_keeps_the_loss_scale(tmp_path, tiny_teacher):
    """One update from 2 x 2 accumulated samples equals one update from a batch of 4 (SGD, no resampling)."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    results = []
    for bs, ga in ((4, 1), (2, 2)):
        tiny_teacher.load_state_dict(state)
        trainer = AmlpfTrainer(
            model=tiny_teacher,
            args=args(tmp_path / f"{bs}x{ga}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                      max_steps=1, num_train_epochs=1, optim="sgd", learning_rate=0.1,
                      train_sampling_strategy="sequential",
                      save_strategy="no", remove_unused_columns=True),
            train_dataset=fixed_view_dataset(LABELS[:4]), data_collator=default_data_collator,
        )
        trainer.train()
        results.append({k: v.clone() for k, v in tiny_teacher.state_dict().items()})
    moved = [k for k in state if not torch.equal(state[k], results[0][k])]
    assert moved
    for key in moved:
        torch.testing.assert_close(results[0][key], results[1][key], atol=2e-5, rtol=1e-4)


def test_distillation_loss_teacher_isolation_and_no_teacher_in_eval(tmp_path, tiny_student, tiny_teacher):
    student, _ = tiny_student
    calls = []
    tiny_teacher.register_forward_hook(lambda *a: calls.append(1))
    trainer = make_trainer(tmp_path, student, teacher=tiny_teacher, num_train_epochs=1, save_strategy="no")
    assert trainer.teacher is tiny_teacher and not tiny_teacher.training
    assert all(not p.requires_grad for p in tiny_teacher.parameters())
    assert not any(k.startswith("teacher") for k in student.state_dict())
    batch = default_data_collator([fixed_view_dataset()[i] for i in range(4)])
    student.train()
    loss = trainer.compute_loss(student, batch)
    assert "sample_index" not in batch  # taken out before the student's forward
    with torch.no_grad():
        s_logits = student(pixel_values=batch["pixel_values"]).logits
        t_logits = tiny_teacher(pixel_values=batch["pixel_values"]).logits
    ce = torch.nn.functional.cross_entropy(s_logits, batch["labels"])
    expected = ce + distillation_loss(s_logits, t_logits, "l2")
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2  # once in compute_loss, once above
    calls.clear()
    trainer.evaluate(fixed_view_dataset())
    assert calls == []  # evaluation never runs the teacher
    trainer = make_trainer(tmp_path, student, teacher=tiny_teacher, num_train_epochs=1, save_strategy="no")
    trainer.train()
    loss_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert calls and loss_logs and {"ce_loss", "kd_loss"} <= set(loss_logs[0])
    assert loss_logs[0]["loss"] == pytest.approx(loss_logs[0]["ce_loss"] + loss_logs[0]["kd_loss"], rel=1e-3)
    assert not any(k.startswith("teacher") for k in student.state_dict())


def test_teacher_with_other_classes_is_refused(tmp_path, tiny_student, tiny_teacher):
    student, _ = tiny_student
    tiny_teacher.config.id2label = {0: "a", 1: "b", 2: "c", 3: "d"}
    with pytest.raises(ValueError, match="differ from the student's"):
        make_trainer(tmp_path, student, teacher=tiny_teacher)


def test_teacher_cache_needs_unused_columns_kept(tmp_path, tiny_student, tiny_teacher):
    from modeling_amlpf.training.teacher_cache import TeacherLogitCache

    student, _ = tiny_student
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        DistillationTrainer(model=student, args=args(tmp_path, remove_unused_columns=True),
                            train_dataset=fixed_view_dataset(), teacher_model=tiny_teacher,
                            teacher_cache=TeacherLogitCache())


def test_partial_epoch_records_survive_a_checkpoint_at_the_end_of_an_epoch(tmp_path):
    """A step checkpoint at an epoch's last step is written before the epoch-end update: resuming from it
    applies that update first, so the history and the next epoch's draw match the uninterrupted run."""
    steps_per_epoch = -(-len(LABELS) // 4)
    full = make_trainer(tmp_path / "full", MeanPixelClassifier(), num_train_epochs=2, size=8, save_strategy="steps",
                        save_steps=steps_per_epoch)
    full.train()
    checkpoint = tmp_path / "full" / f"checkpoint-{steps_per_epoch}"
    saved = resampling_state(checkpoint)
    assert len(saved["attributes"]["epoch_records"]) == len(LABELS) and saved["attributes"]["history"] == []
    shutil.copytree(checkpoint, tmp_path / "resumed" / checkpoint.name)
    resumed = make_trainer(tmp_path / "resumed", MeanPixelClassifier(seed=1), num_train_epochs=2, size=8,
                           save_strategy="steps", save_steps=steps_per_epoch)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / checkpoint.name))
    assert resumed.batches[1] == full.batches[1]
    assert resampling_of(resumed).history == resampling_of(full).history


@pytest.mark.parametrize("min_class_share", [0.0, 0.4])
def test_the_share_floor_reaches_the_sampler_the_trainer_draws_with(min_class_share):
    """--min_class_share must reach the sampler: a class at weight 0 keeps exactly the floor's share."""
    from datasets import Dataset

    labels = [0] * 6 + [1] * 2
    callback = ClassBalancedResampling(["a", "b"], min_class_share=min_class_share)
    sampler = callback.sampler_for(Dataset.from_dict({"label": labels}), seed=0)
    sampler.set_class_weights(torch.tensor([1.0, 0.0]))
    shares = sampler.class_shares()
    assert float(shares[1]) == pytest.approx(min_class_share / 2)  # the floor: min_class_share / K
    assert float(shares.sum()) == pytest.approx(1.0)


def test_resampling_refuses_a_multi_label_model_with_the_fix():
    from types import SimpleNamespace

    model = MeanPixelClassifier()
    model.config = SimpleNamespace(problem_type="multi_label_classification")
    with pytest.raises(ValueError, match="needs single-label classification.*use --resampling none"):
        ClassBalancedResampling(CLASS_NAMES).watch(model)
