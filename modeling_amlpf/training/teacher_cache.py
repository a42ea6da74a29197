"""Exact cache of the frozen teacher's per-view logits: each distinct training view goes through it once.

Why: in distillation the frozen teacher (UNI, ViT-L/16: 62 GFLOPs per view) costs more than the RN50 student's
forward and backward together (about 37 GFLOPs per view), yet its views come from a finite set: each training
view is one grid position (or the global view) of one training image, flipped or not, and a frozen teacher in
eval mode maps it to the same logits every time. The cache keys per-view logits
by (sample index, top, left, flipped) as the processor reports them (``return_view_geometry=True``; the global
view is (-1, -1, flipped)), so it works with whole-image or per-crop flips and with any crop layout. Only views it
has not seen go through the teacher (a view repeated within a batch, once); the image logits are assembled from
cached and new per-view logits with ``aggregate_view_logits``, the formula the teacher itself uses, so the loss
equals the uncached one up to float rounding (a matrix product may round differently in another batch).

Memory: logits are stored in float32 (exact for float32, bfloat16 and float16 teachers) on the device of the
teacher's logits, so they never travel to the host; keys are packed into int64 and kept on the host in a sorted
array (16 bytes per entry with its row) plus a small dict of recent keys merged into it every ``MERGE_EVERY``
entries. Logits, index and a reserve for that dict count toward ``max_bytes``; when the next entry
would exceed it, the cache stops inserting (no eviction: every view is about equally likely to come back, so
evicting one view to store another gains nothing) and the views left out are computed each time they come.
Chaoyang-sized training (4,021 images x 202 keys x 4 classes) needs at most 13 MB of logits and 13 MB of index.

Several processes: each rank keeps its own cache, no communication. Checkpoints do not store it; a resumed run
refills it. The cache assumes the teacher does not change during the run (frozen, eval mode, no dropout): call
``clear()`` if it does.

Persistence (optional): ``save(path, fingerprint)`` writes the entries to a safetensors file whose metadata holds
``cache_fingerprint(teacher, processor, train_dataset)`` (hashes of the teacher's weights, the processor's
settings and the training rows in order); ``TeacherLogitCache.load(paths, fingerprint)`` refuses a file made for
another teacher, processor or split, so a second run on the same split and teacher (an ablation, another fusion
or KD variant) starts with every view it saw. Under several processes each rank saves its own file and a run
loads them all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models.modeling_amlpf import aggregate_view_logits

_COORD_BITS = 16  # top + 1 and left + 1 (pixels of the upsized image) below 65,536
_COORD_LIMIT = 1 << _COORD_BITS
_INDEX_LIMIT = 1 << (62 - 2 * _COORD_BITS)  # sample indices below 2**30
MERGE_EVERY = 2048
FORMAT_VERSION = "1"
_SORTED_BYTES_PER_ENTRY = 16  # int64 key + int64 row


def view_keys(sample_index: torch.Tensor, view_geometry: torch.Tensor) -> np.ndarray:
    """(B * V,) int64 keys: (sample index, top + 1, left + 1, flipped) packed per view (global view: -1, -1)."""
    index = torch.as_tensor(sample_index).detach().to("cpu", torch.long).numpy().reshape(-1)
    geometry = torch.as_tensor(view_geometry).detach().to("cpu", torch.long).numpy()
    if geometry.ndim != 3 or geometry.shape[-1] != 3 or geometry.shape[0] != index.size:
        raise ValueError(
            f"view_geometry must be (B, V, 3) rows of (top, left, flipped) for the B={index.size} sample indices, "
            f"got shape {tuple(geometry.shape)}: make the training views with attach_views(..., view_geometry=True)"
        )
    top, left, flip = geometry[..., 0] + 1, geometry[..., 1] + 1, geometry[..., 2]
    if index.size and not (
        0 <= index.min() and index.max() < _INDEX_LIMIT
        and 0 <= min(top.min(), left.min()) and max(top.max(), left.max()) < _COORD_LIMIT
        and np.isin(flip, (0, 1)).all()
    ):
        raise ValueError(
            f"cannot key these views: sample indices must lie in [0, {_INDEX_LIMIT}), top and left in "
            f"[-1, {_COORD_LIMIT - 1}) and flipped in {{0, 1}}"
        )
    keys = ((index.reshape(-1, 1) * _COORD_LIMIT + top) * _COORD_LIMIT + left) * 2 + flip
    return keys.reshape(-1).astype(np.int64)


@functools.cache
def _pending_reserve_bytes() -> int:
    """Host bytes of a full dict of recent keys (table + key and row objects), measured once."""
    pending = {(1 << 61) + i: (1 << 40) + i for i in range(MERGE_EVERY)}
    return sys.getsizeof(pending) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in pending.items())


class _KeyIndex:
    """int64 key -> row: a sorted array searched with ``np.searchsorted``, plus a dict of recent keys."""

    def __init__(self):
        self.keys = np.empty(0, dtype=np.int64)
        self.rows = np.empty(0, dtype=np.int64)
        self.pending: dict[int, int] = {}

    def __len__(self) -> int:
        return self.keys.size + len(self.pending)

    @property
    def nbytes(self) -> int:
        pending = 0
        if self.pending:
            pending = sys.getsizeof(self.pending)
            pending += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in self.pending.items())
        return self.keys.nbytes + self.rows.nbytes + pending

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 when absent."""
        rows = np.full(keys.shape, -1, dtype=np.int64)
        if self.keys.size:
            at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
            found = self.keys[at] == keys
            rows[found] = self.rows[at[found]]
        if self.pending:
            for position in np.flatnonzero(rows < 0).tolist():
                rows[position] = self.pending.get(int(keys[position]), -1)
        return rows

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (key, row), sorted keys first, then the recent ones."""
        pending_keys = np.fromiter(self.pending.keys(), np.int64, len(self.pending))
        pending_rows = np.fromiter(self.pending.values(), np.int64, len(self.pending))
        return np.concatenate([self.keys, pending_keys]), np.concatenate([self.rows, pending_rows])

    def add(self, keys: np.ndarray, first_row: int) -> None:
        self.pending.update(zip(keys.tolist(), range(first_row, first_row + keys.size)))
        if len(self.pending) >= MERGE_EVERY:
            keys = np.concatenate([self.keys, np.fromiter(self.pending.keys(), np.int64, len(self.pending))])
            rows = np.concatenate([self.rows, np.fromiter(self.pending.values(), np.int64, len(self.pending))])
            order = np.argsort(keys, kind="stable")
            self.keys, self.rows, self.pending = keys[order], rows[order], {}


def _sha256(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def cache_fingerprint(teacher: torch.nn.Module, processor, train_dataset) -> dict[str, str]:
    """What stored per-view logits depend on, as hashes: the teacher's weights (every tensor of its state dict),
    the processor's settings (``to_dict()``) and the training rows in order (image paths or bytes, labels), so
    that a sample index and a view geometry mean the same image window. ``train_dataset``: the train part of
    ``attach_views`` or a ``datasets.Dataset`` with ``image`` and ``label`` columns."""

    def tensors():
        for name, tensor in sorted(teacher.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            yield f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode()
            yield tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""

    settings = {k: v for k, v in processor.to_dict().items() if k not in ("processor_class", "auto_map")}
    dataset = getattr(train_dataset, "dataset", train_dataset)  # TrainingViews wraps the datasets.Dataset
    table = dataset.select_columns(["image", "label"]).with_format("arrow")[:]  # the rows in order, undecoded
    images, labels = table.column("image").to_pylist(), table.column("label").to_pylist()

    def rows():
        for image, label in zip(images, labels):
            content = image.get("bytes")
            yield json.dumps([image.get("path"), _sha256([content]) if content else None, label]).encode()

    return {
        "teacher": _sha256(tensors()),
        "processor": _sha256([json.dumps(settings, sort_keys=True, default=str).encode()]),
        "train_rows": _sha256(rows()),
    }


class TeacherLogitCache:
    """Per-view teacher logits keyed by (sample index, view geometry); see the module docstring.

    Args:
        max_bytes: bound on the stored logits, their index and a small reserve (about 0.3 MB) for recent keys;
            ``None`` for no bound. A bound below the reserve stores nothing (views repeated within one batch
            are still computed once).
        device: where the logits are kept; default the device of the teacher's logits.
    """

    def __init__(self, max_bytes: int | None = None, device: str | torch.device | None = None):
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes}")
        self.max_bytes = max_bytes
        self.device = torch.device(device) if device is not None else None
        self._index = _KeyIndex()
        self._store: torch.Tensor | None = None  # (capacity, C) float32; rows [0, entries) are filled
        self.hits = 0  # views served from the cache, or copies of a view computed once in the same batch
        self.misses = 0  # views that went through the teacher
        self.teacher_calls = 0
        self.rejected = 0  # computed views not stored because of max_bytes

    # ------------------------------------------------------------------------------------------ state
    def __len__(self) -> int:
        return len(self._index)

    def clear(self) -> None:
        """Forget every entry and counter (e.g. when the teacher changes)."""
        self.__init__(self.max_bytes, self.device)

    @property
    def logit_bytes(self) -> int:
        return 0 if self._store is None else self._store.numel() * self._store.element_size()

    def stats(self) -> dict:
        """entries, bytes (logits + index), hits, misses (views the teacher computed) and related counters."""
        views = self.hits + self.misses
        index_bytes = self._index.nbytes
        return {
            "entries": len(self),
            "bytes": self.logit_bytes + index_bytes,
            "logit_bytes": self.logit_bytes,
            "index_bytes": index_bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "rejected": self.rejected,
            "teacher_calls": self.teacher_calls,
            "teacher_view_fraction": self.misses / views if views else None,
            "device": None if self._store is None else str(self._store.device),
        }

    # ------------------------------------------------------------------------------------------ storage
    def _max_entries(self, num_classes: int) -> int | None:
        if self.max_bytes is None:
            return None
        budget = self.max_bytes - _pending_reserve_bytes()
        return max(0, budget // (4 * num_classes + _SORTED_BYTES_PER_ENTRY))

    def _insert(self, keys: np.ndarray, logits: torch.Tensor) -> None:
        """Store new keys' logits while ``max_bytes`` allows; the others stay uncached."""
        num_classes = logits.shape[-1]
        if self._store is None:
            self._store = torch.empty((0, num_classes), dtype=torch.float32, device=self.device or logits.device)
        if self._store.shape[1] != num_classes:
            raise ValueError(
                f"the teacher returned {num_classes} classes per view, the cache holds {self._store.shape[1]}: "
                "use one cache per teacher (cache.clear() when it changes)"
            )
        entries, limit = len(self), self._max_entries(num_classes)
        count = keys.size if limit is None else max(0, min(keys.size, limit - entries))
        self.rejected += keys.size - count
        if count == 0:
            return
        capacity = self._store.shape[0]
        if entries + count > capacity:  # grow geometrically, never beyond the bound
            capacity = max(entries + count, 2 * capacity, 1024)
            capacity = capacity if limit is None else min(capacity, limit)
            grown = torch.empty((capacity, num_classes), dtype=torch.float32, device=self._store.device)
            grown[:entries] = self._store[:entries]
            self._store = grown
        self._store[entries : entries + count] = logits[:count].to(self._store.device, torch.float32)
        self._index.add(keys[:count], entries)

    # ------------------------------------------------------------------------------------------ lookup
    @torch.no_grad()
    def teacher_logits(
        self,
        run_teacher: Callable[[torch.Tensor], torch.Tensor],
        pixel_values: torch.Tensor,
        sample_index: torch.Tensor,
        view_geometry: torch.Tensor,
    ) -> torch.Tensor:
        """Aggregated (B, C) float32 teacher logits of a batch; only views never seen go through ``run_teacher``.

        Args:
            run_teacher: maps views (N, 3, S, S) to per-view logits (N, C), e.g.
                ``lambda views: teacher(pixel_values=views).logits`` (a 4-D batch is one view per image).
            pixel_values: (B, V, 3, S, S) training views.
            sample_index: (B,) rows of the training set (``sample_index`` of the train part's items).
            view_geometry: (B, V, 3) rows (top, left, flipped) of each view. These two are read on the host:
                on an accelerator that is one synchronisation per step (accelerate's DataLoader moves the whole
                batch to the device), unavoidable since the number of new views sets the teacher's batch.
        """
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be (B, V, 3, S, S), got shape {tuple(pixel_values.shape)}")
        batch, views = pixel_values.shape[:2]
        keys = view_keys(sample_index, view_geometry)
        if keys.size != batch * views:
            raise ValueError(f"view_geometry has {keys.size} views for pixel_values of {batch} x {views} views")
        if self.device is None and self._store is not None and self._store.device != pixel_values.device:
            self._store = self._store.to(pixel_values.device)  # e.g. loaded from a file: keep it by the teacher
        rows = self._index.lookup(keys)
        stored = np.flatnonzero(rows >= 0)
        missing = np.flatnonzero(rows < 0)
        device = pixel_values.device
        new_logits = None
        if missing.size:
            new_keys, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
            flat_pixels = pixel_values.reshape(batch * views, *pixel_values.shape[2:])
            new_logits = run_teacher(flat_pixels[torch.from_numpy(missing[first]).to(device)])
            self.teacher_calls += 1
            if new_logits.dim() != 2 or new_logits.shape[0] != new_keys.size:
                raise ValueError(
                    f"run_teacher must return (N, C) per-view logits for N={new_keys.size} views, "
                    f"got shape {tuple(new_logits.shape)}"
                )
            new_logits = new_logits.float()
            self.misses += new_keys.size
            self._insert(new_keys, new_logits)
            device = new_logits.device
        self.hits += keys.size - (0 if new_logits is None else new_logits.shape[0])
        num_classes = self._store.shape[1] if new_logits is None else new_logits.shape[1]
        out = torch.empty((batch * views, num_classes), dtype=torch.float32, device=device)
        if stored.size:
            cached = self._store[torch.from_numpy(rows[stored]).to(self._store.device, non_blocking=True)]
            out[torch.from_numpy(stored).to(device, non_blocking=True)] = cached.to(device)
        if missing.size:
            out[torch.from_numpy(missing).to(device, non_blocking=True)] = new_logits[
                torch.from_numpy(inverse.reshape(-1)).to(device, non_blocking=True)
            ]
        return aggregate_view_logits(out.view(batch, views, num_classes))

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, fingerprint: dict[str, str]) -> Path:
        """Write every entry (keys, float32 logits) to a safetensors file with ``fingerprint`` in its metadata."""
        keys, rows = self._index.items()
        logits = self._store[torch.from_numpy(rows).to(self._store.device)] if self._store is not None else None
        tensors = {
            "keys": torch.from_numpy(keys),
            "logits": logits.detach().cpu().contiguous() if logits is not None else torch.zeros((0, 0)),
        }
        metadata = {"format": FORMAT_VERSION, **{f"fingerprint.{k}": str(v) for k, v in fingerprint.items()}}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(
        cls,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        fingerprint: dict[str, str],
        max_bytes: int | None = None,
        device: str | torch.device | None = None,
    ) -> TeacherLogitCache:
        """A cache holding the entries of one or several saved files (e.g. one per rank), after checking that
        each was made for the same ``fingerprint`` (``cache_fingerprint``); ``max_bytes`` applies as usual."""
        cache = cls(max_bytes=max_bytes, device=device)
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                stored = {k[len("fingerprint.") :]: v for k, v in metadata.items() if k.startswith("fingerprint.")}
                expected = {k: str(v) for k, v in fingerprint.items()}
                if metadata.get("format") != FORMAT_VERSION or stored != expected:
                    differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
                    raise ValueError(
                        f"{path} holds teacher logits for another {', '.join(differ) or 'cache format'} "
                        f"(file format {metadata.get('format')!r}, this package's {FORMAT_VERSION!r}): delete "
                        "the file or point the run at another cache file"
                    )
                keys, logits = handle.get_tensor("keys").numpy(), handle.get_tensor("logits")
            if keys.size:
                known = cache._index.lookup(keys) >= 0
                fresh = np.flatnonzero(~known)
                cache._insert(keys[fresh], logits[torch.from_numpy(fresh)])
        cache.rejected = 0  # counts views of this run only
        return cache
