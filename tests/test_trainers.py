"""Trainer subclasses in one process: records -> weights, resume, gradient accumulation, distillation."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from transformers import TrainingArguments, default_data_collator

from modeling_amlpf.losses import distillation_loss
from modeling_amlpf.sampling import class_difficulty_weights
from modeling_amlpf.trainers import HISTORY_NAME, SAMPLER_STATE_NAME, ClassBalancedTrainer, DistillationTrainer

LABELS = [0] * 10 + [1] * 6 + [2] * 4 + [3] * 4


def fixed_view_dataset(labels=LABELS, views=9, size=64, seed=0):
    """Fixed pixel tensors (no random views), so that runs can be compared step by step."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(len(labels), views, 3, size, size)).astype(np.float32)
    pixels += np.asarray(labels, dtype=np.float32)[:, None, None, None, None] * 0.5  # learnable signal
    ds = datasets.Dataset.from_dict(
        {"pixel_values": list(pixels), "labels": list(labels), "sample_index": list(range(len(labels)))}
    )
    return ds.with_format("torch")


def args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=8, num_train_epochs=2,
        learning_rate=1e-3, save_strategy="epoch", eval_strategy="no", logging_strategy="epoch", report_to="none",
        remove_unused_columns=False, seed=11, use_cpu=True, disable_tqdm=True, save_only_model=False,
    )
    values.update(overrides)
    return TrainingArguments(**values)


class RecordingTrainer(DistillationTrainer):
    """Keeps every training batch's sample indices per epoch and every recorded true-class probability."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches: dict[int, list[list[int]]] = {}
        self.prob_log: list[tuple[int, int, float]] = []

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if self.model.training and self._batch_sample_index is not None:
            self.batches.setdefault(self.sampler.epoch, []).append(self._batch_sample_index.tolist())
        return inputs

    def record_predictions(self, logits, labels):
        if self._batch_sample_index is None:
            return super().record_predictions(logits, labels)
        probs = logits.detach().softmax(-1).gather(1, labels.view(-1, 1)).squeeze(1)
        self.prob_log += list(zip(self._batch_sample_index.tolist(), labels.tolist(), probs.tolist()))
        super().record_predictions(logits, labels)


def make_trainer(tmp_path, student, teacher=None, cls=RecordingTrainer, **overrides):
    return cls(
        model=student, args=args(tmp_path, **overrides), train_dataset=fixed_view_dataset(),
        data_collator=default_data_collator, teacher_model=teacher, kd_weight=1.0 if teacher is not None else 0.0,
    )


def test_epoch_end_weights_follow_the_formula_on_recorded_probabilities(tmp_path, tiny_student):
    student, _ = tiny_student
    trainer = make_trainer(tmp_path, student)
    trainer.train()
    epochs = json.loads((tmp_path / HISTORY_NAME).read_text())["epochs"]
    assert len(epochs) == 2
    # epoch 1: uniform permutation, every sample once
    assert sorted(i for batch in trainer.batches[0] for i in batch) == list(range(len(LABELS)))
    # the weights set after epoch 1 equal the formula applied to the probabilities recorded in epoch 1
    first = trainer.prob_log[: len(LABELS)]
    expected = class_difficulty_weights(torch.tensor([p for _, _, p in first]), torch.tensor([y for _, y, _ in first]), 4, 2.0)
    got = torch.tensor(list(epochs[0]["next_epoch_class_weights"].values()), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert set(epochs[0]["fusion_weights"]) == {"label", "basic", "detailed"}
    # epoch 2 drew from the weighted sampler: same length, with replacement
    assert sum(len(b) for b in trainer.batches[1]) == len(LABELS)


def test_resume_from_a_mid_run_checkpoint_restores_the_sampler(tmp_path, tiny_student):
    student, _ = tiny_student
    full = make_trainer(tmp_path / "full", student, num_train_epochs=3)
    full.train()
    steps_per_epoch = len(full.batches[0])
    checkpoint = tmp_path / "full" / f"checkpoint-{2 * steps_per_epoch}"
    saved = json.loads((checkpoint / SAMPLER_STATE_NAME).read_text())
    assert saved["sampler"]["class_weights"] is not None and len(saved["history"]) == 2

    torch.manual_seed(0)
    from transformers import AutoConfig, AutoModel
    from conftest import STUDENT_TINY

    fresh = AutoModel.from_config(AutoConfig.from_pretrained(STUDENT_TINY))
    resumed = make_trainer(tmp_path / "full", fresh, num_train_epochs=3)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    # the restored weights drive the third epoch: the same draw as in the uninterrupted run
    assert resumed.batches[2] == full.batches[2]
    history = json.loads((tmp_path / "full" / HISTORY_NAME).read_text())["epochs"]
    assert len(history) == 3 and history[:2] == saved["history"]


def test_resume_without_sampler_state_fails_clearly(tmp_path, tiny_student):
    student, _ = tiny_student
    (tmp_path / "checkpoint-1").mkdir()
    trainer = make_trainer(tmp_path, student)
    with pytest.raises(FileNotFoundError, match="sampler_state.json"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


def test_gradient_accumulation_keeps_the_loss_scale(tmp_path, tiny_teacher):
    """One update from 2 x 2 accumulated samples equals one update from a batch of 4 (SGD, no resampling)."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    results = []
    for bs, ga in ((4, 1), (2, 2)):
        tiny_teacher.load_state_dict(state)
        trainer = ClassBalancedTrainer(
            model=tiny_teacher, resampling="none",
            args=args(tmp_path / f"{bs}x{ga}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                      max_steps=1, num_train_epochs=1, optim="sgd", learning_rate=0.1, train_sampling_strategy="sequential",
                      save_strategy="no"),
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
    batch.pop("sample_index")
    student.train()
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        s_logits = student(pixel_values=batch["pixel_values"]).logits
        t_logits = tiny_teacher(pixel_values=batch["pixel_values"]).logits
    expected = torch.nn.functional.cross_entropy(s_logits, batch["labels"]) + distillation_loss(s_logits, t_logits, "l2")
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


def test_resampling_trainer_needs_unused_columns_kept(tmp_path, tiny_student):
    student, _ = tiny_student
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        make_trainer(tmp_path, student, remove_unused_columns=True)
