"""Multi-view datasets for the Trainer; training views are a pure function of (seed, epoch, row, draw).

Why: drawing crops and flips from torch's global RNG made the views depend on the DataLoader's worker count,
on the number of processes and on how far the RNG had advanced, so a run resumed mid-epoch saw other views
than the uninterrupted run. Here the training views of row ``i`` in epoch ``e`` come from their own
generator, seeded with ``view_seed(seed, e, i)`` (a BLAKE2b hash of the numbers), whoever loads the row and
whenever. Class-balanced resampling draws with replacement, so a row may come several times in one epoch;
the reference gives each draw new random views. Wrap such a sampler in ``DrawIndexedSampler``: it yields
``(index, draw)`` pairs (draw = how many times the row came before in this epoch's stream, the same stream on
every rank) and the k-th draw gets the views of ``view_seed(seed, e, i, k)``. Without it, repeated draws of a
row within an epoch repeat its views (fewer distinct views for the oversampled classes).

The epoch reaches the dataset, and its DataLoader workers, through ``TrainingViews.set_epoch``:

* The Trainer must be given ``ViewEpochCallback()`` (``callbacks=[ViewEpochCallback()]`` or
  ``trainer.add_callback(ViewEpochCallback())``). ``on_epoch_begin`` runs before the Trainer creates the
  epoch's DataLoader iterator, so every worker (new or persistent) sees the epoch before it loads a row.
  accelerate's ``DataLoaderShard.set_epoch`` cannot be relied on alone: it forwards to the dataset only when
  the sampler sits directly under the batch sampler, which is not the case under several processes
  (``BatchSamplerShard``) nor in the epoch resumed mid-way (``SkipBatchSampler``).
* The epoch is kept in a shared-memory tensor, so persistent workers (``dataloader_persistent_workers``),
  which keep the copy of the dataset made when they started, read the current value.

The callback counts epochs like ``Trainer._inner_training_loop``: on ``on_train_begin`` it starts from the
trained epochs of the (possibly resumed) state, ``int(state.epoch)``, and each ``on_epoch_begin`` sets that
epoch and moves to the next one (so an epoch cut short by ``control.should_epoch_stop`` still counts).

Rows are decoded lazily by the dataset's own ``Image`` feature (its EXIF handling), one row per item;
items are dicts of tensors and numbers for ``transformers.default_data_collator``.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler
from transformers import TrainerCallback

SAMPLE_INDEX = "sample_index"
VIEW_GEOMETRY = "view_geometry"
_SEED_MASK = (1 << 63) - 1


def view_seed(seed: int, epoch: int, index: int, draw: int = 0) -> int:
    """The seed of the training views of row ``index``'s ``draw``-th draw (0-based) in ``epoch``: an
    independent stream for every (seed, epoch, index, draw)."""
    if min(epoch, index, draw) < 0:
        raise ValueError(f"epoch, index and draw must be non-negative, got {epoch}, {index}, {draw}")
    packed = struct.pack("<4Q", int(seed) & _SEED_MASK, int(epoch), int(index), int(draw))
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little") & _SEED_MASK


class DrawIndexedSampler(Sampler):
    """Wraps a sampler of row indices; yields ``(index, draw)``, draw = earlier occurrences of the row in
    this epoch's stream, so that each repeated draw gets its own training views (``TrainingViews``).

    ``set_epoch`` and ``len`` are the wrapped sampler's; ``sampler`` is the wrapped one. The stream is the
    wrapped sampler's global stream (accelerate shards the batches after), so draws agree on every rank and
    in an epoch resumed with ``skip_first_batches``.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        seen: dict[int, int] = {}
        for index in self.sampler:
            index = int(index)
            draw = seen.get(index, 0)
            seen[index] = draw + 1
            yield (index, draw)

    def __getattr__(self, name: str):  # the wrapped sampler's state (epoch, class_weights, state_dict, ...)
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)


class TrainingViews(Dataset):
    """Views of one part of a ``datasets.Dataset`` with ``image`` and ``label`` columns.

    Args:
        dataset: the part (its ``image`` column decoded lazily by its ``Image`` feature).
        processor: an ``AmlpfImageProcessor`` (or one with the same call signature).
        training: random views (training) or the processor's deterministic evaluation views.
        seed: the run's seed (``TrainingArguments.seed``); training views only.
        view_geometry: also return ``view_geometry`` (V, 3) rows (top, left, flipped) per view (training only),
            for the teacher-logit cache.

    Training items: ``pixel_values`` (V, 3, S, S), ``labels``, ``sample_index`` (the row in ``dataset``) and,
    when asked, ``view_geometry``. Evaluation items: ``pixel_values`` and ``labels``.
    """

    def __init__(self, dataset, processor, *, training: bool, seed: int = 0, view_geometry: bool = False):
        missing = {"image", "label"} - set(dataset.column_names)
        if missing:
            raise ValueError(
                f"the dataset needs 'image' and 'label' columns to make views; it lacks {sorted(missing)} "
                f"(it has {dataset.column_names})"
            )
        if view_geometry and not training:
            raise ValueError("view_geometry is reported for training views only (evaluation views are fixed)")
        self.dataset = dataset.select_columns(["image", "label"])
        self.processor = processor
        self.training = bool(training)
        self.seed = int(seed)
        self.view_geometry = bool(view_geometry)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # read by persistent workers too
        self._labels: list[int] | None = None

    # ------------------------------------------------------------------------------------------ epoch
    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose training views the next items get (the Trainer's 0-based epoch)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self._epoch.fill_(int(epoch))

    # ------------------------------------------------------------------------------------------ items
    @property
    def labels(self) -> list[int]:
        """Every row's label, read from the label column alone (no image is decoded)."""
        if self._labels is None:
            self._labels = [int(label) for label in self.dataset.with_format(None)["label"]]
        return self._labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Row ``key``, or ``(row, draw)`` from ``DrawIndexedSampler`` (the draw selects the training views)."""
        index, draw = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        if not 0 <= index < len(self.dataset):
            raise IndexError(f"index {index} is out of range for {len(self.dataset)} rows")
        row = self.dataset[index]
        if not self.training:
            pixel_values = self.processor(row["image"], training=False, return_tensors="pt")["pixel_values"]
            return {"pixel_values": pixel_values[0], "labels": int(row["label"])}
        kwargs = {"return_view_geometry": True} if self.view_geometry else {}
        generator = torch.Generator().manual_seed(view_seed(self.seed, self.epoch, index, draw))
        out = self.processor(row["image"], training=True, generator=generator, return_tensors="pt", **kwargs)
        item = {"pixel_values": out["pixel_values"][0], "labels": int(row["label"]), SAMPLE_INDEX: index}
        if self.view_geometry:
            item[VIEW_GEOMETRY] = torch.as_tensor(out[VIEW_GEOMETRY][0], dtype=torch.long)
        return item

    def __repr__(self) -> str:
        kind = "training" if self.training else "evaluation"
        return f"{type(self).__name__}({kind}, rows={len(self)}, epoch={self.epoch}, seed={self.seed})"


def attach_views(dd, processor, *, seed: int, view_geometry: bool = False) -> dict[str, TrainingViews]:
    """Wrap each part of ``dd`` (train, validation, test) in a view dataset: random views for ``train``
    (a pure function of ``seed``, the epoch and the row), the processor's evaluation views for the others.

    The Trainer needs ``ViewEpochCallback()`` so that the train part follows the epochs, and a sampler that
    draws with replacement should be wrapped in ``DrawIndexedSampler`` (module docstring).
    ``view_geometry=True`` adds each training view's (top, left, flipped) for ``TeacherLogitCache``."""
    return {
        part: TrainingViews(
            dataset, processor, training=part == "train", seed=seed, view_geometry=view_geometry and part == "train"
        )
        for part, dataset in dd.items()
    }


class ViewEpochCallback(TrainerCallback):
    """Tells the train dataset's ``set_epoch`` each epoch before the Trainer creates the epoch's iterator.

    Args:
        dataset: the train part; default: the train DataLoader's dataset (when it has ``set_epoch``).
    """

    def __init__(self, dataset: TrainingViews | None = None):
        self.dataset = dataset
        self._next_epoch = 0

    def _target(self, kwargs) -> Any:
        if self.dataset is not None:
            return self.dataset
        loader = kwargs.get("train_dataloader")
        return getattr(loader, "dataset", None)

    def on_train_begin(self, args, state, control, **kwargs):
        # the Trainer resumes at epoch int(global_step // updates_per_epoch), which is int(state.epoch)
        self._next_epoch = int(state.epoch or 0)

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self._target(kwargs)
        if dataset is None or not hasattr(dataset, "set_epoch"):
            raise ValueError(
                "ViewEpochCallback found no train dataset with set_epoch: pass the train part of attach_views(...) "
                "as the Trainer's train_dataset (or ViewEpochCallback(dataset=...))"
            )
        dataset.set_epoch(self._next_epoch)
        self._next_epoch += 1
