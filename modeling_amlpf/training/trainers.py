"""The Trainers of the two scripts: ``AmlpfTrainer`` (the teacher's) and ``DistillationTrainer`` (the student's).

``AmlpfTrainer`` is ``transformers.Trainer`` with these additions and nothing else:

* the paper's epoch-step learning rates (``lr_schedule=[(1, 3e-4), (2, 1e-4), ...]``, 1-based epochs) through
  ``create_scheduler``, the Trainer's public hook for the scheduler (transformers has no piecewise-constant
  scheduler type); without ``lr_schedule`` the Trainer's own ``lr_scheduler_type`` applies;
* the training sampler of a ``resampling.ClassBalancedResampling`` callback, when one is registered, through
  ``_get_train_sampler``: the Trainer's only sampler hook (``get_train_dataloader`` would have to rebuild the
  DataLoader with more private members). Without that callback the Trainer's own sampler is used;
* ``decay_all_parameters=True``: weight decay on every trainable parameter, biases and norms included, as the
  reference's ``AdamW(model.parameters(), weight_decay=...)``, through the public ``get_decay_parameter_names``
  (the Trainer's default leaves biases and LayerNorm weights undecayed);
* ``dataloader_drop_last`` (the student script's default, as the reference's student loader) applies to the
  training loader only: the Trainer would also drop the last incomplete batch of evaluation and prediction, so
  that test metrics missed up to a batch of images. ``get_eval_dataloader``/``get_test_dataloader`` (the
  Trainer's documented overrides) build those loaders with the flag off. A training set smaller than one step's
  batch is refused at construction (every batch would be dropped and nothing trained).

``DistillationTrainer`` adds the distillation loss, as in the transformers guide on knowledge distillation
for computer vision: ``loss = CE + kd_weight * distillation_loss(student, teacher)``, with ``ce_loss`` and
``kd_loss`` logged at every logging step. The teacher is frozen, in eval mode, outside the student's module
tree (never saved, wrapped or optimised with it) and runs only in training steps, before the student's
forward (no autograd graph alive: measurably faster) under the accelerator's autocast. Given the teacher's
processor, it checks at construction that the teacher sees the views it was trained on (``teacher_inputs``):
other geometry is refused, other normalisation is mapped onto the teacher's on the device.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, default_data_collator
from transformers.utils import logging

from ..data.class_names import check_class_names
from ..utils import UserError
from .losses import KD_LOSSES, distillation_loss
from .resampling import ClassBalancedResampling
from .teacher_inputs import teacher_input_map
from .views import SAMPLE_INDEX, VIEW_GEOMETRY

logger = logging.get_logger(__name__)


def epoch_step_scheduler(optimizer, schedule: list[tuple[int, float]], steps_per_epoch: int, base_lr: float):
    """LambdaLR holding ``lr`` of the latest ``(epoch, lr)`` entry reached (1-based epochs), stepping per update."""
    if base_lr <= 0:
        raise ValueError("--learning_rate must be positive with --lr_schedule (it is the scale the schedule divides)")

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch + 1
        return [lr for start, lr in schedule if start <= epoch][-1] / base_lr

    return LambdaLR(optimizer, factor)


def training_collator(features: list[dict]) -> dict:
    """``default_data_collator``, with the training views' ``sample_index`` and ``view_geometry`` left on the host
    as numpy arrays: the Trainer moves only tensors to the device, and the teacher cache reads these two on the
    host (reading them back from an accelerator would synchronise every step)."""
    batch = default_data_collator(features)
    for key in (SAMPLE_INDEX, VIEW_GEOMETRY):
        if key in batch:
            batch[key] = batch[key].numpy()
    return batch


@contextmanager
def _every_batch(args):
    """``args.dataloader_drop_last`` off while an evaluation or prediction loader is built."""
    drop_last = args.dataloader_drop_last
    args.dataloader_drop_last = False
    try:
        yield
    finally:
        args.dataloader_drop_last = drop_last


class AmlpfTrainer(Trainer):
    """``Trainer`` with the epoch-step learning-rate schedule and the class-balanced sampler (module docstring).

    Args (beyond ``Trainer``'s):
        lr_schedule: ``[(first_epoch, lr), ...]`` sorted, starting at epoch 1 (``arguments.parse_lr_schedule``).
        decay_all_parameters: apply ``weight_decay`` to every parameter, biases and norms included (the
            reference); False keeps the Trainer's rule (no decay on biases and LayerNorm weights).
    """

    def __init__(
        self,
        *args,
        lr_schedule: list[tuple[int, float]] | None = None,
        decay_all_parameters: bool = False,
        **kwargs,
    ):
        self.lr_schedule = lr_schedule
        self.decay_all_parameters = bool(decay_all_parameters)
        super().__init__(*args, **kwargs)
        self._check_full_batch()

    def _check_full_batch(self) -> None:
        """With ``dataloader_drop_last`` (the student scripts' default, as the reference) a training set smaller
        than one step's batch would train on nothing: refuse it instead."""
        dataset = self.train_dataset
        if not self.args.dataloader_drop_last or dataset is None or not hasattr(dataset, "__len__"):
            return
        split = bool(getattr(self.args.accelerator_config, "split_batches", False))
        per_step = self.args.train_batch_size * (1 if split else self.args.world_size)
        if len(dataset) < per_step:
            raise UserError(
                f"the training set has {len(dataset)} images, fewer than one batch of {per_step}: with "
                "dataloader_drop_last every batch is incomplete and dropped. Pass a smaller "
                "--global_train_batch_size (or --per_device_train_batch_size) or --dataloader_drop_last False"
            )

    def get_eval_dataloader(self, eval_dataset=None):
        with _every_batch(self.args):  # model selection sees every validation image
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with _every_batch(self.args):  # test metrics and predictions cover every image
            return super().get_test_dataloader(test_dataset)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        if self.decay_all_parameters:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_schedule is None:
            return super().create_scheduler(num_training_steps, optimizer)
        # A new schedule at every call: the Trainer calls this once per train() (and resets its own schedulers
        # there too), so a second train() never continues an exhausted schedule.
        if self.args.max_steps > 0:
            raise ValueError("--lr_schedule is per epoch: use --num_train_epochs, not --max_steps")
        steps_per_epoch = max(1, math.ceil(num_training_steps / self.args.num_train_epochs))
        self.lr_scheduler = epoch_step_scheduler(
            optimizer if optimizer is not None else self.optimizer, self.lr_schedule, steps_per_epoch,
            self.args.learning_rate,
        )
        return self.lr_scheduler

    def _get_train_sampler(self, train_dataset=None):
        callbacks = self.callback_handler.callbacks
        callback = next((cb for cb in callbacks if isinstance(cb, ClassBalancedResampling)), None)
        if callback is None:
            return super()._get_train_sampler(train_dataset)
        return callback.sampler_for(train_dataset if train_dataset is not None else self.train_dataset, self.args.seed)


class DistillationTrainer(AmlpfTrainer):
    """Adds ``kd_weight * distillation_loss(student, teacher)`` to the student's cross-entropy.

    Args (beyond ``AmlpfTrainer``'s):
        teacher_model: a classifier returning ``.logits`` and ``.view_logits`` for the same ``pixel_values``.
        kd_loss: one of ``losses.KD_LOSSES`` (``l2``: the reference's unsquared Frobenius norm).
        kd_weight: weight of the distillation term (1 in the paper; 0 disables the teacher).
        kd_temperature: softmax temperature of both sides.
        teacher_cache: a ``teacher_cache.TeacherLogitCache``: teacher logits of views seen before are reused.
        teacher_processor: the image processor the teacher was trained with (``teacher_inputs``): compared with
            the student's (``processing_class``) here, before training; None skips the check.
    Training batches may carry ``sample_index`` and ``view_geometry`` (training views): they are taken out of
    the inputs before the student's forward and serve only the teacher cache.
    """

    def __init__(
        self,
        *args,
        teacher_model: nn.Module | None = None,
        kd_loss: str = "l2",
        kd_weight: float = 1.0,
        kd_temperature: float = 1.0,
        teacher_cache=None,
        teacher_processor=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if kd_loss not in KD_LOSSES:
            raise ValueError(f"kd_loss must be one of {KD_LOSSES}, got {kd_loss!r}")
        if kd_weight > 0 and teacher_model is None:
            raise ValueError("kd_weight > 0 needs a teacher_model (or set kd_weight 0)")
        if teacher_cache is not None and self.args.remove_unused_columns:
            raise ValueError(
                "the teacher cache needs TrainingArguments(remove_unused_columns=False): the views' sample_index "
                "and view_geometry must reach compute_loss"
            )
        self.kd_loss, self.kd_weight, self.kd_temperature = kd_loss, float(kd_weight), float(kd_temperature)
        self.teacher = None
        self.teacher_cache = teacher_cache
        if teacher_model is not None and self.kd_weight > 0:
            config = teacher_model.config
            check_class_names(
                [config.id2label[i] for i in range(config.num_labels)],
                [self.model.config.id2label[i] for i in range(self.model.config.num_labels)],
                source="the teacher",
                fix="train the teacher on the student's dataset and task (its classes differ from the student's)",
            )
            self.teacher = teacher_model.to(self.args.device).eval().requires_grad_(False)
            self._teacher_dtype = next(teacher_model.parameters()).dtype
        # the teacher's values from the student's pixel_values (None: the same processor settings)
        self.teacher_input_map = None
        if self.teacher is not None and teacher_processor is not None:
            if self.processing_class is None:
                raise ValueError("teacher_processor is compared with the student's: pass processing_class too")
            input_map = teacher_input_map(self.processing_class, teacher_processor)
            self.teacher_input_map = input_map.to(self.args.device) if input_map is not None else None
        self._loss_parts: dict[str, list[torch.Tensor]] = {"ce_loss": [], "kd_loss": []}

    def teacher_logits(
        self,
        pixel_values: torch.Tensor,
        sample_index: torch.Tensor | None = None,
        view_geometry: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The frozen teacher's image logits (B, C) of a batch of the student's views (re-normalised for the
        teacher when its processor's mean/std differ); from the cache when one is set."""
        if self.teacher_input_map is not None:  # before the cache: its keys are view geometry, the map is fixed
            pixel_values = self.teacher_input_map(pixel_values)

        def run_teacher(views: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> per-view logits (N, C)
            with torch.no_grad(), self.accelerator.autocast():
                return self.teacher(pixel_values=views.to(self._teacher_dtype)).view_logits.flatten(0, 1)

        if self.teacher_cache is not None and sample_index is not None and view_geometry is not None:
            return self.teacher_cache.teacher_logits(run_teacher, pixel_values, sample_index, view_geometry)
        # accelerate's --bf16/--fp16 autocast wraps only the student's forward: apply it to the teacher too
        with torch.no_grad(), self.accelerator.autocast():
            return self.teacher(pixel_values=pixel_values.to(self._teacher_dtype)).logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_index = inputs.pop(SAMPLE_INDEX, None)
        view_geometry = inputs.pop(VIEW_GEOMETRY, None)
        teacher_logits = None
        if model.training and self.teacher is not None:
            # before the student's forward: with no autograd graph alive, the teacher runs measurably faster
            teacher_logits = self.teacher_logits(inputs["pixel_values"], sample_index, view_geometry)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if teacher_logits is not None:
            kd = distillation_loss(outputs.logits, teacher_logits, self.kd_loss, self.kd_temperature)
            self._loss_parts["ce_loss"].append(loss.detach())
            self._loss_parts["kd_loss"].append(kd.detach())
            loss = loss + self.kd_weight * kd
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Add the mean ``ce_loss`` and ``kd_loss`` since the last log to the training loss's log entry."""
        if "loss" in logs and self._loss_parts["kd_loss"]:
            for key, values in self._loss_parts.items():
                mean = torch.stack(values).mean()
                if self.args.world_size > 1:  # like the Trainer's loss: the mean over processes
                    mean = self.accelerator.gather(mean[None]).mean()
                logs[key] = round(mean.item(), 4)
                values.clear()
        super().log(logs, *args, **kwargs)
