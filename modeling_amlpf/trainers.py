"""Trainer subclasses: class-balanced resampling, and distillation from a frozen teacher on top of it.

``ClassBalancedTrainer`` records each training draw's true-class probability (on device, no per-step host
sync), gathers the records from all processes at each epoch end, and sets the next epoch's class weights of
its ``ClassBalancedSampler`` (see ``sampling.py``). Weights and fusion weights are logged each epoch and
written to ``resampling_history.json``; the sampler state travels with every checkpoint (``sampler_state.json``)
so ``--resume_from_checkpoint`` continues with the same weights.

``DistillationTrainer`` adds ``kd_weight * distillation_loss(student, teacher)``: the teacher is frozen, in
eval mode, outside the student's module tree (never saved, wrapped or optimised with it) and runs only in
training steps, never during evaluation.
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import logging

from .losses import KD_LOSSES, distillation_loss
from .sampling import RESAMPLING_MODES, ClassBalancedSampler, class_difficulty_weights, expected_class_mass

logger = logging.get_logger(__name__)

SAMPLER_STATE_NAME = "sampler_state.json"
HISTORY_NAME = "resampling_history.json"
SAMPLE_INDEX = "sample_index"


def _dataset_labels(dataset) -> list[int]:
    """The label column (``label``, else ``labels``) without running the dataset's image-decoding transform."""
    plain = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset
    names = getattr(plain, "column_names", None) or []
    column = "label" if "label" in names else "labels"
    if column not in names:
        raise ValueError(f"the train dataset needs a 'label' column for class-balanced resampling; it has {names}")
    return list(plain[column])


def epoch_step_scheduler(optimizer, schedule: list[tuple[int, float]], steps_per_epoch: int, base_lr: float):
    """LambdaLR holding ``lr`` of the latest ``(epoch, lr)`` entry reached (1-based epochs), stepping per update."""
    if base_lr <= 0:
        raise ValueError("--learning_rate must be positive with --lr_schedule (it is the scale the schedule divides)")

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch + 1
        return [lr for start, lr in schedule if start <= epoch][-1] / base_lr

    return LambdaLR(optimizer, factor)


class _EpochEndCallback(TrainerCallback):
    def __init__(self, trainer: "ClassBalancedTrainer"):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.end_epoch()


class ClassBalancedTrainer(Trainer):
    """Trainer whose training sampler is re-weighted each epoch by per-class difficulty.

    Args (beyond ``Trainer``'s):
        resampling: ``"difficulty"`` (reference), ``"difficulty_inverse_frequency"`` (paper text) or ``"none"``.
        resample_gamma: the focusing exponent gamma (2 in the paper).
    The train dataset must yield a ``sample_index`` column (its row index) and a ``label`` column.
    """

    def __init__(
        self,
        *args,
        resampling: str = "difficulty",
        resample_gamma: float = 2.0,
        lr_schedule: list[tuple[int, float]] | None = None,
        model_card: dict | None = None,
        **kwargs,
    ):
        if resampling not in RESAMPLING_MODES:
            raise ValueError(f"resampling must be one of {RESAMPLING_MODES}, got {resampling!r}")
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError(
                "ClassBalancedTrainer needs TrainingArguments(remove_unused_columns=False): the transform that "
                "makes the views and the sample_index column must reach the collator"
            )
        self.resampling = resampling
        self.lr_schedule = lr_schedule
        self.model_card = model_card
        self.resample_gamma = float(resample_gamma)
        self.sampler: ClassBalancedSampler | None = None
        self.resampling_history: list[dict] = []
        self._records: list[torch.Tensor] = []  # rows of (sample_index, label, p_true), on device
        self._restored_records: torch.Tensor | None = None  # records of a resumed, partly-trained epoch
        self._pending_sampler_state: dict | None = None
        self._batch_sample_index: torch.Tensor | None = None
        self.add_callback(_EpochEndCallback(self))

    # ------------------------------------------------------------------------------------------ schedule
    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The paper's epoch-step learning rates when ``lr_schedule`` is given, else the Trainer's scheduler."""
        if self.lr_schedule is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            if self.args.max_steps > 0:
                raise ValueError("--lr_schedule is per epoch: use --num_train_epochs, not --max_steps")
            steps_per_epoch = max(1, math.ceil(num_training_steps / self.args.num_train_epochs))
            self.lr_scheduler = epoch_step_scheduler(optimizer, self.lr_schedule, steps_per_epoch, self.args.learning_rate)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_model_card(self, *args, **kwargs):
        """Write the project's model card (dataset, split, metrics, prompts, fusion weights, teacher) instead of
        the Trainer's generic one; ``push_to_hub`` calls this before uploading."""
        if self.model_card is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            from .model_card import write_model_card

            write_model_card(self.args.output_dir, self.model_card, model=self.accelerator.unwrap_model(self.model))

    # ------------------------------------------------------------------------------------------ sampler
    def _get_train_sampler(self, train_dataset=None):
        if self.resampling == "none":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        labels = _dataset_labels(dataset)
        num_classes = self.model.config.num_labels
        if self.sampler is None or len(self.sampler.labels) != len(labels):
            self.sampler = ClassBalancedSampler(labels, num_classes, mode=self.resampling, seed=self.args.seed)
        if self._pending_sampler_state is not None:
            self._restore_sampler_state(self._pending_sampler_state)
            self._pending_sampler_state = None
        return self.sampler

    # ------------------------------------------------------------------------------------------ records
    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        self._batch_sample_index = inputs.pop(SAMPLE_INDEX, None)
        return inputs

    def record_predictions(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep (index, label, true-class probability) of a training batch for the epoch-end update."""
        if self.sampler is None or self._batch_sample_index is None or labels is None:
            return
        probs = logits.detach().float().softmax(dim=-1).gather(1, labels.long().view(-1, 1)).squeeze(1)
        index = self._batch_sample_index.to(probs.device).float()
        self._records.append(torch.stack([index, labels.to(probs.device).float(), probs], dim=1))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        if loss is None:
            raise ValueError("the model returned no loss: the batch has no labels")
        if model.training:
            self.record_predictions(outputs.logits, inputs.get("labels"))
        return (loss, outputs) if return_outputs else loss

    def _gather_records(self) -> torch.Tensor:
        """All processes' records of the current epoch, identical on every rank."""
        device = self.args.device
        local = torch.cat(self._records) if self._records else torch.zeros((0, 3), device=device)
        self._records = []
        if self.accelerator.num_processes > 1:
            local = self.accelerator.pad_across_processes(local.to(device), dim=0, pad_index=-1)
            gathered = self.accelerator.gather(local)
            local = gathered[gathered[:, 0] >= 0]
        records = local.detach().cpu().double()
        if self._restored_records is not None:
            records = torch.cat([self._restored_records, records])
            self._restored_records = None
        return records

    def end_epoch(self) -> None:
        """Set the next epoch's class weights from this epoch's records; log and write the history."""
        if self.sampler is None:
            return
        records = self._gather_records()
        if records.numel() == 0:
            return
        labels, probs = records[:, 1].long(), records[:, 2]
        num_classes = self.sampler.num_classes
        weights = class_difficulty_weights(probs, labels, num_classes, self.resample_gamma, self.sampler.class_weights)
        self.sampler.set_class_weights(weights)
        names = [self.model.config.id2label[i] for i in range(num_classes)]
        mass = expected_class_mass(self.sampler.labels, self.sampler.class_weights, self.sampler.mode)
        mean_prob = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, probs)
        mean_prob /= torch.bincount(labels, minlength=num_classes).clamp(min=1)
        entry = {
            "epoch": int(round(self.state.epoch or 0)),
            "next_epoch_class_weights": dict(zip(names, map(float, weights))),
            "next_epoch_class_share": dict(zip(names, map(float, mass))),
            "mean_true_class_prob": dict(zip(names, map(float, mean_prob))),
            "records": int(len(labels)),
        }
        fusion = self._fusion_weights()
        if fusion is not None:
            entry["fusion_weights"] = fusion
        self.resampling_history.append(entry)
        logs = {f"class_weight/{n}": v for n, v in entry["next_epoch_class_weights"].items()}
        if fusion is not None:
            logs.update({f"fusion_weight/{k}": v for k, v in fusion.items()})
        should_log = self.control.should_log  # on_log resets it: keep the epoch's loss log that follows
        self.log(logs)
        self.control.should_log = should_log
        self.write_history(self.args.output_dir)

    def _fusion_weights(self) -> dict | None:
        model = self.accelerator.unwrap_model(self.model)
        if not hasattr(model, "effective_fusion_weights"):
            return None
        weights = model.effective_fusion_weights().detach().float().cpu().tolist()
        return dict(zip(model.config.prompt_levels, weights))

    def write_history(self, output_dir: str) -> None:
        if self.args.should_save and self.resampling_history:
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, HISTORY_NAME), "w") as f:
                json.dump({"mode": self.resampling, "gamma": self.resample_gamma, "epochs": self.resampling_history}, f, indent=2)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.sampler is None:
            return
        # Records of a partly-trained epoch (step-based saving) are gathered so that a resume keeps them.
        partial = self._gather_records() if self._records or self.accelerator.num_processes > 1 else None
        if partial is not None and partial.numel():
            self._restored_records = partial  # keep them for this run's epoch end too
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            state = {
                "sampler": self.sampler.state_dict(),
                "history": self.resampling_history,
                "partial_epoch_records": None if partial is None else partial.tolist(),
            }
            with open(os.path.join(folder, SAMPLER_STATE_NAME), "w") as f:
                json.dump(state, f)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool) and checkpoint:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if checkpoint and self.resampling != "none":
            path = os.path.join(checkpoint, SAMPLER_STATE_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} is missing: the checkpoint was not written by a resampling run; resume it with "
                    "--resampling none or start a new run"
                )
            with open(path) as f:
                self._pending_sampler_state = json.load(f)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _restore_sampler_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.resampling_history = list(state.get("history") or [])
        records = state.get("partial_epoch_records")
        self._restored_records = torch.tensor(records, dtype=torch.float64).view(-1, 3) if records else None
        logger.info(f"restored sampler state: epoch {self.sampler.epoch}, class weights {self.sampler.class_weights}")


class DistillationTrainer(ClassBalancedTrainer):
    """Class-balanced trainer whose loss adds ``kd_weight * distillation_loss(student, teacher)``.

    Args (beyond ``ClassBalancedTrainer``'s):
        teacher_model: a classifier returning ``.logits`` for the same ``pixel_values`` (the AMLPF teacher).
        kd_loss: one of ``losses.KD_LOSSES`` (``l2``: the reference's unsquared Frobenius norm).
        kd_weight: weight of the distillation term (1 in the paper; 0 disables the teacher).
        kd_temperature: softmax temperature of both sides.
    """

    def __init__(
        self,
        *args,
        teacher_model: nn.Module | None = None,
        kd_loss: str = "l2",
        kd_weight: float = 1.0,
        kd_temperature: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if kd_loss not in KD_LOSSES:
            raise ValueError(f"kd_loss must be one of {KD_LOSSES}, got {kd_loss!r}")
        if kd_weight > 0 and teacher_model is None:
            raise ValueError("kd_weight > 0 needs a teacher_model (or set kd_weight 0)")
        self.kd_loss, self.kd_weight, self.kd_temperature = kd_loss, float(kd_weight), float(kd_temperature)
        self.teacher = None
        if teacher_model is not None and self.kd_weight > 0:
            student_labels = self.model.config.id2label
            teacher_labels = getattr(teacher_model.config, "id2label", None)
            if teacher_labels is not None and dict(teacher_labels) != dict(student_labels):
                raise ValueError(
                    f"the teacher's classes {list(teacher_labels.values())} differ from the student's "
                    f"{list(student_labels.values())}: train the teacher on the same dataset and task"
                )
            self.teacher = teacher_model.to(self.args.device).eval().requires_grad_(False)
            self._teacher_dtype = next(teacher_model.parameters()).dtype
        self._loss_parts: dict[str, list[torch.Tensor]] = {"ce_loss": [], "kd_loss": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_logits = None
        if model.training and self.teacher is not None:
            # before the student's forward: with no autograd graph alive, the teacher runs measurably faster
            # (accelerate's --bf16/--fp16 autocast wraps only the student's forward: apply it to the teacher too)
            with torch.no_grad(), self.accelerator.autocast():
                teacher_logits = self.teacher(pixel_values=inputs["pixel_values"].to(self._teacher_dtype)).logits
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        if teacher_logits is not None:
            kd = distillation_loss(outputs.logits, teacher_logits, self.kd_loss, self.kd_temperature)
            self._loss_parts["ce_loss"].append(loss.detach())
            self._loss_parts["kd_loss"].append(kd.detach())
            loss = loss + self.kd_weight * kd
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self._loss_parts["kd_loss"]:
            for key, values in self._loss_parts.items():
                logs[key] = round(torch.stack(values).mean().item(), 4)
                values.clear()
        super().log(logs, *args, **kwargs)
