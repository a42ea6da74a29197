"""Class-balanced resampling (AMLPF-CLIP): per-class sampling weights from the last epoch's difficulty.

For class c, ``w_c = mean_{i in c} (1 - p_i) ** gamma`` where p_i is the softmax probability of the true
class of training draw i in the previous epoch (gamma = 2). Each sample gets its class's weight and an epoch
draws N samples with replacement; the first epoch is a plain random permutation.

Two modes (METHOD.md): ``difficulty`` (the reference code: a class's expected share of an epoch is
``n_c w_c / sum_k n_k w_k``) and ``difficulty_inverse_frequency`` (the paper's text, imbalance and
performance together: the share is ``w_c / sum_k w_k``, independent of class size).

Under several processes the sampler yields the same global index stream on every rank (its own generator,
seeded with ``seed + epoch``) and is sharded once, by accelerate's ``BatchSamplerShard``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Sampler

RESAMPLING_MODES = ("none", "difficulty", "difficulty_inverse_frequency")


def class_difficulty_weights(
    true_class_probs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    gamma: float = 2.0,
    previous: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w_c = mean over records of class c of (1 - p) ** gamma``; a class with no record keeps its
    previous weight (1 when there is none), so it is never starved to zero by chance."""
    probs = true_class_probs.detach().double().flatten()
    labels = labels.detach().long().flatten().to(probs.device)
    terms = (1.0 - probs).clamp(min=0.0) ** gamma
    sums = torch.zeros(num_classes, dtype=torch.float64, device=probs.device).index_add_(0, labels, terms)
    counts = torch.bincount(labels, minlength=num_classes).double()
    fallback = previous.double().to(probs.device) if previous is not None else torch.ones(num_classes, dtype=torch.float64, device=probs.device)
    return torch.where(counts > 0, sums / counts.clamp(min=1), fallback).cpu()


def per_sample_weights(labels: torch.Tensor, class_weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Sampling weight of every training sample for the chosen mode."""
    labels = labels.long()
    weights = class_weights.double()[labels]
    if mode == "difficulty_inverse_frequency":
        counts = torch.bincount(labels, minlength=len(class_weights)).double()
        weights = weights / counts[labels]
    elif mode != "difficulty":
        raise ValueError(f"resampling mode must be one of {RESAMPLING_MODES[1:]}, got {mode!r}")
    return weights


def expected_class_mass(labels: torch.Tensor, class_weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Expected fraction of an epoch's draws that falls on each class."""
    weights = per_sample_weights(labels, class_weights, mode)
    mass = torch.zeros(len(class_weights), dtype=torch.float64).index_add_(0, labels.long(), weights)
    return mass / mass.sum()


class ClassBalancedSampler(Sampler[int]):
    """Weighted draw with replacement per epoch (uniform permutation before any weights are set).

    ``len`` is constant (``num_samples``, default the dataset size). ``set_epoch`` is called by the Trainer
    (through accelerate) each epoch; ``set_class_weights`` by the trainer at each epoch end. The state
    (weights, epoch) goes into checkpoints via ``state_dict``/``load_state_dict``.
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        num_classes: int,
        mode: str = "difficulty",
        seed: int = 0,
        num_samples: int | None = None,
    ):
        if mode not in RESAMPLING_MODES[1:]:
            raise ValueError(f"resampling mode must be one of {RESAMPLING_MODES[1:]}, got {mode!r}")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        if self.labels.numel() == 0:
            raise ValueError("cannot resample an empty training set")
        if int(self.labels.max()) >= num_classes or int(self.labels.min()) < 0:
            raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(self.labels.min())}, {int(self.labels.max())}]")
        self.num_classes = num_classes
        self.mode = mode
        self.seed = int(seed)
        self.num_samples = int(num_samples or len(self.labels))
        self.epoch = 0
        self.class_weights: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_class_weights(self, class_weights: torch.Tensor | None) -> None:
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float64).cpu()
            if class_weights.shape != (self.num_classes,) or not torch.isfinite(class_weights).all() or (class_weights < 0).any():
                raise ValueError(f"class weights must be {self.num_classes} finite non-negative values, got {class_weights}")
            if float(class_weights.sum()) == 0.0:  # every class perfectly learnt: nothing to prefer
                class_weights = torch.ones_like(class_weights)
        self.class_weights = class_weights

    def sample_weights(self) -> torch.Tensor:
        if self.class_weights is None:
            return torch.ones(len(self.labels), dtype=torch.float64)
        return per_sample_weights(self.labels, self.class_weights, self.mode)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        if self.class_weights is None:
            order = torch.randperm(len(self.labels), generator=generator)
            if self.num_samples != len(self.labels):
                reps = -(-self.num_samples // len(self.labels))
                order = torch.cat([order] * reps)[: self.num_samples]
        else:
            order = torch.multinomial(self.sample_weights(), self.num_samples, replacement=True, generator=generator)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "mode": self.mode,
            "num_samples": self.num_samples,
            "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"checkpoint sampler used mode {state['mode']!r}, this run uses {self.mode!r}")
        self.epoch = int(state.get("epoch", self.epoch))
        self.set_class_weights(state.get("class_weights"))
