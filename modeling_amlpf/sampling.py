"""Class-balanced resampling (AMLPF-CLIP): per-class sampling weights from the last epoch's difficulty.

For class c, ``w_c = mean_{i in c} (1 - p_i) ** gamma`` where p_i is the softmax probability of the true
class of training draw i in the previous epoch (gamma = 2). Each sample gets its class's weight and an epoch
draws N samples with replacement (``torch.utils.data.WeightedRandomSampler``); the first epoch is a plain random
permutation.

Two modes (METHOD.md): ``difficulty`` (the reference code: a class's expected share of an epoch is
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
exactly. A class with no records in an epoch (possible only by chance) keeps its previous weight.

Under several processes the sampler yields the same global index stream on every rank (its own generator,
seeded with ``seed + epoch``) and is sharded once, by accelerate's ``BatchSamplerShard``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Sampler, WeightedRandomSampler

RESAMPLING_MODES = ("none", "difficulty", "difficulty_inverse_frequency")
# Each class's share of an epoch is at least DEFAULT_MIN_CLASS_SHARE / K (K classes with training samples).
DEFAULT_MIN_CLASS_SHARE = 0.1


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
    """Weighted draw with replacement per epoch (uniform permutation before any weights are set).

    ``len`` is constant (``num_samples``, default the dataset size). ``set_epoch`` is called by the Trainer
    (through accelerate) each epoch; ``set_class_weights`` at each epoch end. Each class's share of an epoch is
    ``expected_class_mass(..., min_class_share)``: the mode's formula with the share floor (module docstring).
    The state (weights, epoch) goes into checkpoints via ``state_dict``/``load_state_dict``.
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        num_classes: int,
        mode: str = "difficulty",
        seed: int = 0,
        num_samples: int | None = None,
        min_class_share: float = DEFAULT_MIN_CLASS_SHARE,
    ):
        if mode not in RESAMPLING_MODES[1:]:
            raise ValueError(f"resampling mode must be one of {RESAMPLING_MODES[1:]}, got {mode!r}")
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
        if self.class_weights is None:
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
            "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"checkpoint sampler used mode {state['mode']!r}, this run uses {self.mode!r}")
        self.epoch = int(state.get("epoch", self.epoch))
        self.set_class_weights(state.get("class_weights"))
