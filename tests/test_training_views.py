"""Training views are a pure function of (seed, epoch, sample index): workers, loaders and resume do not matter."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator, skip_first_batches
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image
from torch.utils.data import DataLoader, SequentialSampler
from transformers import default_data_collator

from modeling_amlpf.models.image_processing_amlpf import AmlpfImageProcessor
from modeling_amlpf.training.resampling import ClassBalancedSampler
from modeling_amlpf.training.views import (
    DrawIndexedSampler,
    TrainingViews,
    ViewEpochCallback,
    attach_views,
    view_seed,
)

NUM_IMAGES = 10
LABELS = [0, 1, 2, 0, 1, 2, 0, 0, 1, 2]


def _processor():
    return AmlpfImageProcessor(min_short_side=48, crop_size=32, crop_stride=4, num_crops=3)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(NUM_IMAGES):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (48 + 4 * (i % 3), 56, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    features = Features(image=ImageFeature(mode="RGB"), label=ClassLabel(names=["a", "b", "c"]))
    dataset = Dataset.from_dict({"image": paths, "label": LABELS}, features=features)
    return {"train": dataset, "validation": dataset.select(range(4)), "test": dataset.select(range(4, 8))}


def _views_by_index(loader) -> dict[int, torch.Tensor]:
    """sample_index -> pixel_values over one pass; a row drawn twice must get the same views."""
    seen: dict[int, torch.Tensor] = {}
    for batch in loader:
        for index, pixels in zip(batch["sample_index"].tolist(), batch["pixel_values"]):
            if index in seen:
                assert torch.equal(seen[index], pixels), f"row {index} drawn twice in one epoch got other views"
            seen[index] = pixels.clone()
    return seen


def _loader(dataset, **kwargs):
    return DataLoader(dataset, batch_size=3, collate_fn=default_data_collator, **kwargs)


def _resampler():
    """The real class-balanced sampler with weights set, so draws repeat rows (with replacement)."""
    sampler = ClassBalancedSampler(LABELS, 3, seed=5)
    sampler.set_class_weights(torch.tensor([0.2, 1.0, 3.0]))
    return sampler


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for index in a:
        assert torch.equal(a[index], b[index]), f"views of row {index} differ"


def test_items_and_labels_without_decoding(parts, tmp_path):
    views = attach_views(parts, _processor(), seed=0)
    assert set(views) == {"train", "validation", "test"}
    item = views["train"][4]
    assert item["pixel_values"].shape == (4, 3, 32, 32) and item["labels"] == LABELS[4] and item["sample_index"] == 4
    evaluation = views["validation"][1]
    assert set(evaluation) == {"pixel_values", "labels"}
    batch = default_data_collator([views["train"][0], views["train"][1]])
    assert batch["sample_index"].tolist() == [0, 1] and batch["labels"].dtype == torch.long
    # .labels reads the label column only: a missing image file does not matter until its row is loaded
    broken = Dataset.from_dict(
        {"image": [str(tmp_path / "missing.png")], "label": [2]}, features=parts["train"].features
    )
    lazy = TrainingViews(broken, _processor(), training=True)
    assert lazy.labels == [2]
    with pytest.raises(FileNotFoundError):
        lazy[0]


def test_views_are_a_pure_function_of_seed_epoch_index(parts):
    processor = _processor()
    first = TrainingViews(parts["train"], processor, training=True, seed=7)
    first.set_epoch(3)
    second = TrainingViews(parts["train"], _processor(), training=True, seed=7)  # another construction
    for index in (9, 2, 5):  # any order, fresh objects
        second.set_epoch(0)
        second[index]
        second.set_epoch(3)
        assert torch.equal(first[index]["pixel_values"], second[index]["pixel_values"])
    # the generator is seeded from (seed, epoch, index) alone: the same draw made outside the dataset
    image = parts["train"][5]["image"]
    expected = processor(image, training=True, generator=torch.Generator().manual_seed(view_seed(7, 3, 5)))
    assert torch.equal(first[5]["pixel_values"], expected["pixel_values"][0])


def test_epochs_and_seeds_change_the_views(parts):
    views = TrainingViews(parts["train"], _processor(), training=True, seed=1)
    other_seed = TrainingViews(parts["train"], _processor(), training=True, seed=2)
    by_epoch = []
    for epoch in range(3):
        views.set_epoch(epoch)
        by_epoch.append(torch.stack([views[i]["pixel_values"] for i in range(NUM_IMAGES)]))
    other_seed.set_epoch(0)
    seed_two = torch.stack([other_seed[i]["pixel_values"] for i in range(NUM_IMAGES)])
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert not torch.equal(by_epoch[a], by_epoch[b])
    assert not torch.equal(by_epoch[0], seed_two)
    # evaluation views do not depend on the epoch
    evaluation = TrainingViews(parts["test"], _processor(), training=False)
    before = evaluation[2]["pixel_values"]
    evaluation.set_epoch(5)
    assert torch.equal(before, evaluation[2]["pixel_values"])


def test_views_do_not_depend_on_workers_or_loader(parts):
    dataset = TrainingViews(parts["train"], _processor(), training=True, seed=3)
    dataset.set_epoch(2)
    reference = _views_by_index(_loader(dataset, sampler=_resampler()))
    assert len(reference) >= 3
    _assert_same(reference, _views_by_index(_loader(dataset, sampler=_resampler(), num_workers=2)))
    rebuilt = TrainingViews(parts["train"], _processor(), training=True, seed=3)
    rebuilt.set_epoch(2)
    full = _views_by_index(_loader(rebuilt, sampler=SequentialSampler(rebuilt), num_workers=2))
    assert len(full) == NUM_IMAGES
    _assert_same({i: full[i] for i in reference}, reference)


def test_persistent_workers_follow_set_epoch(parts):
    dataset = TrainingViews(parts["train"], _processor(), training=True, seed=4)
    persistent = _loader(dataset, num_workers=2, persistent_workers=True)
    reference = TrainingViews(parts["train"], _processor(), training=True, seed=4)
    passes = []
    for epoch in range(2):
        dataset.set_epoch(epoch)  # after the workers started at epoch 0: they must see it
        reference.set_epoch(epoch)
        passes.append(_views_by_index(persistent))
        _assert_same(passes[-1], _views_by_index(_loader(reference)))
    assert not torch.equal(passes[0][0], passes[1][0])


def test_resume_mid_epoch_with_skip_first_batches(parts):
    """A fresh process resuming epoch 1 after k batches (as the Trainer does) sees the same remaining views."""
    epoch, skipped = 1, 2
    accelerator = Accelerator(cpu=True)
    dataset = TrainingViews(parts["train"], _processor(), training=True, seed=6)
    loader = accelerator.prepare(_loader(dataset, sampler=_resampler()))
    loader.set_epoch(epoch)
    dataset.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) > skipped

    fresh = TrainingViews(parts["train"], _processor(), training=True, seed=6)
    assert fresh.epoch == 0
    sampler = _resampler()
    callback = ViewEpochCallback()
    resumed = skip_first_batches(accelerator.prepare(_loader(fresh, sampler=sampler)), skipped)
    # the Trainer's order: state restored (epoch 1.4), on_train_begin, on_epoch_begin, set_epoch, iter
    callback.on_train_begin(None, SimpleNamespace(epoch=epoch + 0.4), None)
    callback.on_epoch_begin(None, SimpleNamespace(epoch=epoch + 0.4), None, train_dataloader=resumed)
    resumed.set_epoch(epoch)
    tail = list(resumed)
    assert fresh.epoch == epoch
    assert len(tail) == len(batches) - skipped
    for expected, got in zip(batches[skipped:], tail):
        assert torch.equal(expected["sample_index"], got["sample_index"])
        assert torch.equal(expected["pixel_values"], got["pixel_values"])


def _views_by_draw(loader) -> dict[tuple[int, int], torch.Tensor]:
    """(sample_index, k-th occurrence in the pass) -> pixel_values: the draw DrawIndexedSampler assigned."""
    seen: dict[tuple[int, int], torch.Tensor] = {}
    counts: dict[int, int] = {}
    for batch in loader:
        for index, pixels in zip(batch["sample_index"].tolist(), batch["pixel_values"]):
            seen[(index, counts.get(index, 0))] = pixels.clone()
            counts[index] = counts.get(index, 0) + 1
    return seen


def test_repeated_draws_get_their_own_views(parts):
    dataset = TrainingViews(parts["train"], _processor(), training=True, seed=8)
    dataset.set_epoch(1)
    sampler = DrawIndexedSampler(_resampler())
    sampler.set_epoch(1)
    assert sampler.epoch == 1 and len(sampler) == NUM_IMAGES  # the wrapped sampler's state
    stream = list(sampler)
    assert all(isinstance(key, tuple) and len(key) == 2 for key in stream)
    assert [index for index, _ in stream] == list(sampler.sampler)  # the same global stream, draws added
    views = _views_by_draw(_loader(dataset, sampler=sampler))
    repeated = [index for index, draw in views if draw == 1]
    assert repeated, "the weighted sampler should draw some row twice"
    for index in repeated:
        assert not torch.equal(views[(index, 0)], views[(index, 1)])
    for (index, draw), pixels in views.items():  # draw 0 is the plain row's views
        if draw == 0:
            assert torch.equal(pixels, dataset[index]["pixel_values"])
    two_workers = _views_by_draw(_loader(dataset, sampler=sampler, num_workers=2))
    assert views.keys() == two_workers.keys()
    assert all(torch.equal(views[key], two_workers[key]) for key in views)


def test_callback_counts_epochs_like_the_trainer(parts):
    dataset = TrainingViews(parts["train"], _processor(), training=True)
    callback = ViewEpochCallback(dataset)
    callback.on_train_begin(None, SimpleNamespace(epoch=0), None)
    seen = []
    for _ in range(3):
        callback.on_epoch_begin(None, SimpleNamespace(epoch=0.5), None)  # state.epoch is not what counts
        seen.append(dataset.epoch)
    assert seen == [0, 1, 2]
    callback.on_train_begin(None, SimpleNamespace(epoch=4.0), None)  # resumed at an epoch boundary
    callback.on_epoch_begin(None, SimpleNamespace(epoch=4.0), None)
    assert dataset.epoch == 4
    with pytest.raises(ValueError, match="attach_views"):
        ViewEpochCallback().on_epoch_begin(None, SimpleNamespace(epoch=0), None, train_dataloader=None)


class _MeanPixelClassifier(torch.nn.Module):
    """Smallest model the Trainer can train on (V, 3, S, S) views."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, pixel_values, labels=None):
        logits = self.linear(pixel_values.mean(dim=(1, 3, 4)))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def _recording_trainer(output_dir: Path, dataset, records: list, resampled: bool = False, **kwargs):
    from transformers import Trainer, TrainingArguments

    class RecordingTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            if not resampled:
                return super()._get_train_sampler(train_dataset)
            return DrawIndexedSampler(_resampler())

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            index = inputs.pop("sample_index")
            records.append((index.tolist(), inputs["pixel_values"].sum(dim=(1, 2, 3, 4)).tolist()))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=4, num_train_epochs=3, save_steps=4,
        save_strategy="steps", logging_strategy="no", report_to=[], use_cpu=True, seed=11,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True, **kwargs,
    )
    torch.manual_seed(0)
    return RecordingTrainer(
        model=_MeanPixelClassifier(), args=args, train_dataset=dataset, data_collator=default_data_collator,
        callbacks=[ViewEpochCallback()],
    )


@pytest.mark.parametrize("resampled", [False, True], ids=["trainer-sampler", "draw-indexed-resampler"])
def test_trainer_resumed_mid_epoch_sees_the_uninterrupted_views(parts, tmp_path, resampled):
    """Real Trainer: 3 epochs of 3 steps, checkpoint at step 4 (mid epoch 2); resume it in a new Trainer."""
    full: list = []
    views = attach_views(parts, _processor(), seed=11)
    trainer = _recording_trainer(tmp_path / "full", views["train"], full, resampled)
    trainer.train()
    assert len(full) == 9
    resumed: list = []
    views = attach_views(parts, _processor(), seed=11)
    trainer = _recording_trainer(tmp_path / "full", views["train"], resumed, resampled)
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert len(resumed) == 5
    for (index_a, sums_a), (index_b, sums_b) in zip(full[4:], resumed):
        assert index_a == index_b
        assert sums_a == sums_b
    assert full[0][1] != full[3][1]  # epochs draw other views
