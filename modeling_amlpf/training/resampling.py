"""Class-balanced resampling (AMLPF-CLIP): per-class sampling weights from the last epoch's difficulty.

For class c, ``w_c = mean_{i in c} (1 - p_i) ** gamma`` where p_i is the softmax probability of the true
class of training draw i in the previous epoch (gamma = 2). Each sample gets its class's weight and an epoch
draws N samples with replacement (``torch.utils.data.WeightedRandomSampler``). The first epoch, before any
weights exist, draws N samples uniformly with replacement, as the reference (about 63 % distinct rows);
``first_epoch_sampling="permutation"`` draws a permutation instead (every row once).

Two modes: ``difficulty`` (the reference code: a class's expected share of an epoch is
``n_c w_c / sum_k n_k w_k``) and ``difficulty_inverse_frequency`` (the paper's text, imbalance and
performance together: the share is ``w_c / sum_k w_k``, independent of class size).

A floor on each class's share (``min_class_share``; differs from the reference). The formula alone can starve a
class for good: a class whose weight is tiny (1e-8 beside 1e-2 for the others; or exactly 0 when float32
rounds its p_true to 1.0) gets no draws, hence no records, keeps its weight, and is never drawn again, even
after it has become the hardest class. So every class with training samples gets at least
``min_class_share / K`` of each epoch's draws (K: the number of such classes; 0.1 by default, a tenth of an
equal share). Shares above the floor keep the formula's proportions; only shares below it are raised, and the
others scaled down to pay for it ("clip and renormalise"). A class under the floor is then drawn in every
epoch (about ``N * min_class_share / K`` times), its records measure its current difficulty, and once it becomes
hard its next epoch's share follows the formula again. ``min_class_share=0`` is the reference's formula
exactly, up to where the reference fails: a class that got no draw in an epoch has a weight averaged over zero
draws (NaN in the reference, whose ``WeightedRandomSampler`` then raises at the next epoch); training stops there
with a ``UserError`` naming the class and the fix (a positive ``min_class_share``). With a positive floor a class
with no records in an epoch (possible only by chance) keeps its previous weight.

Under several processes the sampler yields the same global index stream on every rank (its own generator,
seeded with ``seed + epoch``) and is sharded once, by accelerate's ``BatchSamplerShard``.

The ``TrainerCallback`` (``ClassBalancedResampling``): Each training forward's true-class probabilities are
recorded on the device (a forward hook on the model: no host sync per step, and any ``compute_loss`` works); at
each epoch end the records of all processes are gathered, so every rank computes the same next-epoch class weights
(``class_difficulty_weights``) and sets them on its ``ClassBalancedSampler``, which draws one global index stream
per epoch. The weights and the student's fusion weights go into the Trainer's ``log_history`` and
``resampling_history.json`` (``FusionWeightLogging`` logs the fusion weights of runs without resampling).

The state (sampler epoch and weights, history, the records of a partly-trained epoch) travels in
``trainer_state.json`` under ``stateful_callbacks`` (transformers' ``ExportableState``), so
``--resume_from_checkpoint`` continues with the same weights and history as an uninterrupted run.
Restoring with ``restore_callback_states_from_checkpoint=True`` builds a new instance of this callback; it
finds the sampler the Trainer is drawing with in ``on_train_begin`` (the DataLoader is built before the
restore) and applies the saved state there. The state is also read from ``state.stateful_callbacks`` when
that flag is off, because a resumed run without it would silently start from uniform weights.

The sampler reaches the DataLoader through ``trainers.AmlpfTrainer`` (the Trainer's sampler hook,
``_get_train_sampler``, is its only one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import torch
from accelerate.utils import gather, pad_across_processes
from torch.utils.data import Sampler, WeightedRandomSampler
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from ..utils import UserError, json_safe
from .views import DrawIndexedSampler, TrainingViews

RESAMPLING_MODES = ("none", "difficulty", "difficulty_inverse_frequency")
# Each class's share of an epoch is at least DEFAULT_MIN_CLASS_SHARE / K (K classes with training samples).
DEFAULT_MIN_CLASS_SHARE = 0.1
# Epoch 1 (no weights yet): N uniform draws with replacement (the reference) or a permutation (every row once).
FIRST_EPOCH_SAMPLINGS = ("replacement", "permutation")
DEFAULT_FIRST_EPOCH_SAMPLING = "replacement"


def class_difficulty_weights(
    true_class_probs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    gamma: float = 2.0,
    previous: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w_c = mean over records of class c of (1 - p) ** gamma`` (float64); a class with no record keeps its
    previous weight (1 when there is none). A weight may be 0 (every record at p == 1): the sampler's share
    floor, not this formula, keeps such a class in play."""
    probs = true_class_probs.detach().double().flatten()
    labels = labels.detach().long().flatten().to(probs.device)
    terms = (1.0 - probs).clamp(min=0.0) ** gamma
    sums = torch.zeros(num_classes, dtype=torch.float64, device=probs.device).index_add_(0, labels, terms)
    counts = torch.bincount(labels, minlength=num_classes).double()
    fallback = (
        previous.double().to(probs.device)
        if previous is not None
        else torch.ones(num_classes, dtype=torch.float64, device=probs.device)
    )
    return torch.where(counts > 0, sums / counts.clamp(min=1), fallback).cpu()


def per_sample_weights(labels: torch.Tensor, class_weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Sampling weight of every training sample for the chosen mode (the reference formula, no floor)."""
    labels = labels.long()
    weights = class_weights.double()[labels]
    if mode == "difficulty_inverse_frequency":
        counts = torch.bincount(labels, minlength=len(class_weights)).double()
        weights = weights / counts[labels]
    elif mode != "difficulty":
        raise ValueError(f"resampling mode must be one of {RESAMPLING_MODES[1:]}, got {mode!r}")
    return weights


def floor_shares(shares: torch.Tensor, present: torch.Tensor, min_class_share: float) -> torch.Tensor:
    """``shares`` (summing to 1) with every ``present`` class raised to at least ``min_class_share / K``.

    Classes under the floor get exactly the floor; the others keep their proportions, scaled to fill the rest.
    Absent classes (no training samples) keep share 0.
    """
    if not 0.0 <= min_class_share <= 1.0:
        raise ValueError(f"min_class_share must lie in [0, 1], got {min_class_share}")
    shares = torch.where(present, shares.double(), torch.zeros_like(shares, dtype=torch.float64))
    floor = min_class_share / int(present.sum())
    if floor == 0.0:
        return shares / shares.sum()
    floored = torch.zeros_like(present)
    while True:  # at most K rounds: each round only adds classes to the floored set
        free = present & ~floored
        rest = 1.0 - floor * int(floored.sum())
        free_mass = shares[free].sum()
        scaled = shares * (rest / free_mass) if free_mass > 0 else torch.zeros_like(shares)
        newly = free & (scaled < floor)
        if not newly.any():
            break
        floored |= newly
        if not (present & ~floored).any():
            break
    out = torch.where(floored, torch.full_like(shares, floor), torch.where(present, scaled, torch.zeros_like(shares)))
    return out / out.sum()


def expected_class_mass(
    labels: torch.Tensor, class_weights: torch.Tensor, mode: str, min_class_share: float = 0.0
) -> torch.Tensor:
    """Expected fraction of an epoch's draws that falls on each class (with the share floor when given)."""
    labels = labels.long()
    weights = per_sample_weights(labels, class_weights, mode)
    mass = torch.zeros(len(class_weights), dtype=torch.float64).index_add_(0, labels, weights)
    present = torch.bincount(labels, minlength=len(class_weights)) > 0
    if float(mass.sum()) == 0.0:  # every class perfectly learnt: nothing to prefer, draw uniformly
        mass = present.double() if mode == "difficulty_inverse_frequency" else torch.bincount(
            labels, minlength=len(class_weights)).double()
    return floor_shares(mass / mass.sum(), present, min_class_share)


class ClassBalancedSampler(Sampler[int]):
    """Weighted draw with replacement per epoch; before any weights are set, uniform draws with replacement
    (``first_epoch_sampling="replacement"``, the reference) or a permutation (``"permutation"``).

    Every epoch's stream comes from one generator seeded with ``seed + epoch`` (the same on every rank); draws
    with replacement are ``WeightedRandomSampler(sample_weights(), num_samples, replacement=True)``, in epoch 1
    with uniform sample weights. ``len`` is constant (``num_samples``, default the dataset size). ``set_epoch``
    is called by the Trainer (through accelerate) each epoch; ``set_class_weights`` at each epoch end. Each
    class's share of an epoch is ``expected_class_mass(..., min_class_share)``: the mode's formula with the share
    floor (module docstring). The state (weights, epoch) goes into checkpoints via ``state_dict``/``load_state_dict``.
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        num_classes: int,
        mode: str = "difficulty",
        seed: int = 0,
        num_samples: int | None = None,
        min_class_share: float = DEFAULT_MIN_CLASS_SHARE,
        first_epoch_sampling: str = DEFAULT_FIRST_EPOCH_SAMPLING,
    ):
        if mode not in RESAMPLING_MODES[1:]:
            raise ValueError(f"resampling mode must be one of {RESAMPLING_MODES[1:]}, got {mode!r}")
        _check_first_epoch_sampling(first_epoch_sampling)
        if not 0.0 <= float(min_class_share) <= 1.0:
            raise ValueError(f"min_class_share must lie in [0, 1] (0: the reference formula), got {min_class_share}")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        if self.labels.numel() == 0:
            raise ValueError("cannot resample an empty training set")
        if int(self.labels.max()) >= num_classes or int(self.labels.min()) < 0:
            raise ValueError(
                f"labels must lie in [0, {num_classes}), got range "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]"
            )
        self.num_classes = num_classes
        self.mode = mode
        self.seed = int(seed)
        self.num_samples = int(num_samples or len(self.labels))
        self.min_class_share = float(min_class_share)
        self.first_epoch_sampling = first_epoch_sampling
        self.class_counts = torch.bincount(self.labels, minlength=num_classes)
        self.epoch = 0
        self.class_weights: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_class_weights(self, class_weights: torch.Tensor | None) -> None:
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float64).cpu()
            if (
                class_weights.shape != (self.num_classes,)
                or not torch.isfinite(class_weights).all()
                or (class_weights < 0).any()
            ):
                raise ValueError(
                    f"class weights must be {self.num_classes} finite non-negative values, got {class_weights}"
                )
        self.class_weights = class_weights

    def class_shares(self) -> torch.Tensor:
        """Expected fraction of this epoch's draws per class (what ``__iter__`` draws from)."""
        if self.class_weights is None:
            return self.class_counts.double() / len(self.labels)
        return expected_class_mass(self.labels, self.class_weights, self.mode, self.min_class_share)

    def sample_weights(self) -> torch.Tensor:
        """Each sample's draw probability: its class's share spread evenly over the class's samples."""
        if self.class_weights is None:
            return torch.full((len(self.labels),), 1.0 / len(self.labels), dtype=torch.float64)
        per_class = self.class_shares() / self.class_counts.clamp(min=1).double()
        return per_class[self.labels]

    def _generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return generator

    def __iter__(self):
        generator = self._generator()
        if self.class_weights is None and self.first_epoch_sampling == "permutation":
            order = torch.randperm(len(self.labels), generator=generator)
            if self.num_samples != len(self.labels):
                reps = -(-self.num_samples // len(self.labels))
                order = torch.cat([order] * reps)[: self.num_samples]
            return iter(order.tolist())
        draw = WeightedRandomSampler(self.sample_weights(), self.num_samples, replacement=True, generator=generator)
        return iter(draw)

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "mode": self.mode,
            "num_samples": self.num_samples,
            "min_class_share": self.min_class_share,
            "first_epoch_sampling": self.first_epoch_sampling,
            "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"checkpoint sampler used mode {state['mode']!r}, this run uses {self.mode!r}")
        # a checkpoint inside epoch 1 resumes that epoch's stream only with the same first-epoch draw (a state
        # without the key was written when epoch 1 was always a permutation)
        saved_first = state.get("first_epoch_sampling", "permutation")
        if state.get("class_weights") is None and saved_first != self.first_epoch_sampling:
            raise UserError(
                f"the checkpoint was written in epoch 1, drawn with --first_epoch_sampling {saved_first}; this run "
                f"uses {self.first_epoch_sampling}: resume with --first_epoch_sampling {saved_first}"
            )
        self.epoch = int(state.get("epoch", self.epoch))
        self.set_class_weights(state.get("class_weights"))


def _check_first_epoch_sampling(value: str) -> None:
    if value not in FIRST_EPOCH_SAMPLINGS:
        raise ValueError(f"first_epoch_sampling must be one of {FIRST_EPOCH_SAMPLINGS}, got {value!r}")



logger = logging.get_logger(__name__)

HISTORY_NAME = "resampling_history.json"


def _dataset_labels(dataset) -> list[int]:
    """Every training row's label without decoding an image: ``dataset.labels`` (training views), else the
    ``label`` (or ``labels``) column of a ``datasets.Dataset``."""
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, Sequence) and not isinstance(labels, str):
        return [int(label) for label in labels]
    plain = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset
    names = getattr(plain, "column_names", None) or []
    column = "label" if "label" in names else "labels"
    if column not in names:
        raise ValueError(
            "class-balanced resampling needs the training labels: a train dataset with a `labels` attribute "
            f"(modeling_amlpf.training_views.attach_views) or a 'label' column; this one has columns {names}"
        )
    return [int(label) for label in plain[column]]


def _sampler_of(dataloader) -> ClassBalancedSampler | None:
    """The ClassBalancedSampler under a (possibly accelerate-prepared) DataLoader, where accelerate's own
    ``DataLoaderShard.set_epoch`` looks for it."""
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    for candidate in (
        getattr(batch_sampler, "sampler", None),
        getattr(getattr(batch_sampler, "batch_sampler", None), "sampler", None),
        getattr(dataloader, "sampler", None),
    ):
        for sampler in (candidate, getattr(candidate, "sampler", None)):  # also under a DrawIndexedSampler
            if isinstance(sampler, ClassBalancedSampler):
                return sampler
    return None


class ClassBalancedResampling(TrainerCallback, ExportableState):
    """Re-weights the training draw each epoch by per-class difficulty, ``w_c = mean (1 - p_true)^gamma``.

    Args:
        class_names: the classes in label order (names of the logged weights).
        mode: ``"difficulty"`` (reference code) or ``"difficulty_inverse_frequency"`` (paper text).
        gamma: the focusing exponent (2 in the paper).
        min_class_share: each class's least share of an epoch is ``min_class_share / K``; 0: the reference's
            formula, and training stops when a class got no draw in an epoch (its weight would be undefined).
        first_epoch_sampling: ``"replacement"`` (N uniform draws with replacement, the reference) or
            ``"permutation"`` (every row once) for epoch 1.

    Give it to ``trainers.AmlpfTrainer`` (or ``DistillationTrainer``): ``callbacks=[ClassBalancedResampling(...)]``.
    The weights set after epoch ``e`` drive epoch ``e + 1``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        mode: str = "difficulty",
        gamma: float = 2.0,
        min_class_share: float = DEFAULT_MIN_CLASS_SHARE,
        first_epoch_sampling: str = DEFAULT_FIRST_EPOCH_SAMPLING,
    ):
        if mode not in RESAMPLING_MODES[1:]:
            raise ValueError(f"resampling mode must be one of {RESAMPLING_MODES[1:]}, got {mode!r}")
        _check_first_epoch_sampling(first_epoch_sampling)
        self.class_names = [str(name) for name in class_names]
        self.mode = mode
        self.gamma = float(gamma)
        self.min_class_share = float(min_class_share)
        self.first_epoch_sampling = first_epoch_sampling
        self.sampler: ClassBalancedSampler | None = None
        # exported state (see state()); restored instances get these set by the Trainer
        self.sampler_state: dict | None = None
        self.history: list[dict] = []
        self.epoch_records: list[list[float]] = []
        # this epoch's records: gathered at checkpoints (identical on every rank), and the local ones since
        self._gathered = torch.zeros((0, 2), dtype=torch.float64)
        self._local: list[torch.Tensor] = []
        self._hook = None

    # ------------------------------------------------------------------------------------------ state
    def state(self) -> dict:
        return {
            "args": {
                "class_names": self.class_names,
                "mode": self.mode,
                "gamma": self.gamma,
                "min_class_share": self.min_class_share,
                "first_epoch_sampling": self.first_epoch_sampling,
            },
            "attributes": {
                "sampler_state": self.sampler.state_dict() if self.sampler is not None else self.sampler_state,
                "history": self.history,
                "epoch_records": self._gathered.tolist(),
            },
        }

    def sampler_for(self, train_dataset, seed: int):
        """The sampler the Trainer's DataLoader draws ``train_dataset`` with: the ``ClassBalancedSampler``
        (built once), wrapped in ``DrawIndexedSampler`` for training views, so that a row drawn twice in an
        epoch gets new views each time, as in the reference."""
        labels = _dataset_labels(train_dataset)
        if self.sampler is None or len(self.sampler.labels) != len(labels):
            self.sampler = ClassBalancedSampler(
                labels, len(self.class_names), mode=self.mode, seed=seed, min_class_share=self.min_class_share,
                first_epoch_sampling=self.first_epoch_sampling,
            )
        return DrawIndexedSampler(self.sampler) if isinstance(train_dataset, TrainingViews) else self.sampler

    # ------------------------------------------------------------------------------------------ records
    def record(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep (label, true-class probability) of a training batch, on its device."""
        probs = logits.detach().float().softmax(dim=-1).gather(1, labels.long().view(-1, 1)).squeeze(1)
        self._local.append(torch.stack([labels.to(probs.device, probs.dtype), probs], dim=1))

    def watch(self, model) -> None:
        """Record every training-mode forward of ``model`` (its ``labels`` and output ``logits``) from now on;
        ``on_train_begin`` does this for the Trainer's model."""
        problem_type = getattr(getattr(model, "config", None), "problem_type", None)
        if problem_type not in (None, "single_label_classification"):
            raise ValueError(
                f"class-balanced resampling weighs classes by the true class's softmax probability, which needs "
                f"single-label classification; this model's config.problem_type is {problem_type!r}: "
                "use --resampling none"
            )
        self.unwatch()
        self._hook = model.register_forward_hook(self._forward_hook, with_kwargs=True)

    def unwatch(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _forward_hook(self, module, args, kwargs, output):
        if not module.training:
            return
        labels = kwargs.get("labels")
        logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
        if labels is not None and logits is not None:
            self.record(logits, labels)

    def _gather(self, args) -> torch.Tensor:
        """This epoch's records of all processes (gathered ones first), identical on every rank."""
        local = torch.cat(self._local) if self._local else torch.zeros((0, 2), device=args.device)
        self._local = []
        if args.world_size > 1:
            local = pad_across_processes(local.to(args.device), dim=0, pad_index=-1)
            local = gather(local)
            local = local[local[:, 0] >= 0]
        self._gathered = torch.cat([self._gathered, local.detach().cpu().double()])
        return self._gathered

    # ------------------------------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if self.sampler is None:  # a restored instance: the DataLoader was built with its predecessor's sampler
            self.sampler = _sampler_of(train_dataloader)
        if self.sampler is None:
            raise ValueError(
                "ClassBalancedResampling found no ClassBalancedSampler under the train DataLoader: train with "
                "modeling_amlpf.trainers.AmlpfTrainer or DistillationTrainer, which draw with the callback's sampler"
            )
        # a restored instance has the checkpoint's arguments; the sampler has this run's (flags may change on resume)
        self.min_class_share = self.sampler.min_class_share
        self.first_epoch_sampling = self.sampler.first_epoch_sampling
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if saved is None:
            raise ValueError(
                f"the checkpoint's trainer_state.json has no '{type(self).__name__}' entry under "
                "'stateful_callbacks': it was not written by a resampling run (or by an older version that kept "
                "sampler_state.json); resume it with --resampling none, or start a new run"
            )
        attributes = (saved[0] if isinstance(saved, list) else saved).get("attributes", {})
        if attributes.get("sampler_state") is not None:
            self.sampler.load_state_dict(attributes["sampler_state"])
        self.history = list(attributes.get("history") or [])
        self._gathered = torch.tensor(attributes.get("epoch_records") or [], dtype=torch.float64).view(-1, 2)
        self._local = []
        if len(self._gathered) and float(state.epoch or 0).is_integer():
            # saved at the last step of an epoch, before its end: the Trainer resumes with the next epoch
            self._end_epoch(args, state, model)
        self.watch(model)
        logger.info(
            f"class-balanced resampling: sampler epoch {self.sampler.epoch}, weights {self.sampler.class_weights}"
        )

    def on_step_end(self, args, state, control, **kwargs):
        # A checkpoint follows: gather now (every rank is here; only the main process writes the state).
        if control.should_save or (args.save_strategy == "best" and control.should_evaluate):
            self._gather(args)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._gather(args)
        self._end_epoch(args, state, model)

    def on_train_end(self, args, state, control, **kwargs):
        self.unwatch()

    # ------------------------------------------------------------------------------------------ update
    def _end_epoch(self, args, state, model) -> None:
        """Set the next epoch's class weights from this epoch's records; log and write the history."""
        records, self._gathered = self._gathered, torch.zeros((0, 2), dtype=torch.float64)
        if records.numel() == 0:
            logger.warning(
                "no training predictions were recorded this epoch: the model got no `labels` in its forward "
                "(class-balanced resampling keeps the previous weights)"
            )
            return
        labels, probs = records[:, 0].long(), records[:, 1]
        num_classes = len(self.class_names)
        if self.sampler.min_class_share == 0.0:
            self._stop_if_starved(labels, state)
        weights = class_difficulty_weights(probs, labels, num_classes, self.gamma, self.sampler.class_weights)
        self.sampler.set_class_weights(weights)
        mass = self.sampler.class_shares()  # the shares actually drawn from, the floor included
        seen = torch.bincount(labels, minlength=num_classes)
        mean_prob = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, probs) / seen.clamp(min=1)
        # A class with no training image this epoch has no mean: null in the JSON history, not a 0.0 that reads
        # as "always wrong".
        mean_prob = [float(value) if count else None for value, count in zip(mean_prob.tolist(), seen.tolist())]
        entry = {
            "epoch": int(round(state.epoch or 0)),
            "next_epoch_class_weights": dict(zip(self.class_names, map(float, weights))),
            "next_epoch_class_share": dict(zip(self.class_names, map(float, mass))),
            "mean_true_class_prob": dict(zip(self.class_names, mean_prob)),
            "records": int(len(labels)),
        }
        fusion = _fusion_weights(model)
        if fusion is not None:
            entry["fusion_weights"] = fusion
        self.history.append(entry)
        logs = {f"class_weight/{name}": value for name, value in entry["next_epoch_class_weights"].items()}
        logs.update({f"fusion_weight/{level}": value for level, value in (fusion or {}).items()})
        state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
        logger.info(f"epoch {entry['epoch']}: next epoch's class weights {entry['next_epoch_class_weights']}")
        self.write_history(args.output_dir, args)

    def _stop_if_starved(self, labels: torch.Tensor, state) -> None:
        """With ``min_class_share=0`` (the reference's formula), a class with training rows but no draw this epoch
        has no defined weight: the reference's mean over zero draws is NaN and its sampler raises at the next
        epoch. Stop here with that reason instead of drawing the class 0 times from now on."""
        draws = torch.bincount(labels, minlength=len(self.class_names))
        starved = [
            name for name, count, n in zip(self.class_names, draws.tolist(), self.sampler.class_counts.tolist())
            if n > 0 and count == 0
        ]
        if starved:
            epoch = int(round(state.epoch or 0))
            raise UserError(
                f"--min_class_share 0 (the reference's resampling formula): class(es) {', '.join(map(repr, starved))} "
                f"got no training draw in epoch {epoch}, so the next epoch's weight (a mean over zero draws) is "
                "undefined; the reference's WeightedRandomSampler fails here. Rerun (or resume a checkpoint) with "
                f"--min_class_share > 0, e.g. the default {DEFAULT_MIN_CLASS_SHARE}, which keeps every class in play"
            )

    def write_history(self, output_dir: str, args=None) -> None:
        """``resampling_history.json``: per epoch the next epoch's class weights and shares, mean true-class
        probabilities, the number of records and the fusion weights."""
        if (args is not None and not args.should_save) or not self.history:
            return
        os.makedirs(output_dir, exist_ok=True)
        history = json_safe({"mode": self.mode, "gamma": self.gamma, "epochs": self.history})
        with open(os.path.join(output_dir, HISTORY_NAME), "w") as f:
            json.dump(history, f, indent=2, allow_nan=False)  # strict JSON: an undefined value is null


class FusionWeightLogging(TrainerCallback):
    """Logs the student's effective fusion weights (``fusion_weight/<level>``) once per epoch, for runs without
    ``ClassBalancedResampling`` (which logs them itself): ``figures.write_run_figures`` draws them from the
    Trainer's ``log_history``. Does nothing for a model without prompt-level fusion (the teacher)."""

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        fusion = _fusion_weights(model)
        if fusion:
            logs = {f"fusion_weight/{level}": value for level, value in fusion.items()}
            state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})


def _fusion_weights(model) -> dict | None:
    if model is None or not hasattr(model, "effective_fusion_weights"):
        return None
    weights = model.effective_fusion_weights().detach().float().cpu().tolist()
    return dict(zip(model.config.prompt_levels, weights))
