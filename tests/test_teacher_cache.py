"""The teacher-logit cache is exact: same loss as the uncached teacher, each distinct view computed once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image
from torch.utils.data import DataLoader
from transformers import TrainingArguments, default_data_collator

from modeling_amlpf.models.image_processing_amlpf import AmlpfImageProcessor
from modeling_amlpf.training.losses import distillation_loss
from modeling_amlpf.training.resampling import ClassBalancedSampler
from modeling_amlpf.training.teacher_cache import MERGE_EVERY, TeacherLogitCache, cache_fingerprint
from modeling_amlpf.training.views import ViewEpochCallback, attach_views

CLASSES = ["normal", "hyperplastic", "adenoma", "carcinoma"]  # the tiny presets' classes
LABELS = [0, 0, 0, 1, 1, 2, 2, 3]
NUM_CROPS = 4
VIEWS = NUM_CROPS + 1


def _processor():
    """64-pixel crops (the tiny teacher's size) on 72x80 images: a 2 x 3 grid, 14 keys per image."""
    return AmlpfImageProcessor(min_short_side=64, crop_size=64, crop_stride=8, num_crops=NUM_CROPS)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-images")
    rng = np.random.default_rng(1)
    paths = []
    for i, label in enumerate(LABELS):
        pixels = rng.integers(0, 200, (72, 80, 3), dtype=np.uint8)
        pixels[..., label % 3] += np.uint8(40 + 10 * label)  # some signal for the student
        path = root / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    features = Features(image=ImageFeature(mode="RGB"), label=ClassLabel(names=CLASSES))
    dataset = Dataset.from_dict({"image": paths, "label": LABELS}, features=features)
    return {"train": dataset, "validation": dataset.select(range(4)), "test": dataset.select(range(4, 8))}


class CountingTeacher:
    """run_teacher for the cache: per-view logits of the real teacher, counting the views it computes."""

    def __init__(self, teacher):
        self.teacher, self.views = teacher, 0

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        self.views += views.shape[0]
        with torch.no_grad():
            return self.teacher(pixel_values=views).logits  # a 4-D batch is one view per image


def _keys(batch) -> set[tuple[int, int, int, int]]:
    """(sample index, top, left, flipped) of every view of a batch, computed here from the raw tensors."""
    keys = set()
    for index, rows in zip(batch["sample_index"].tolist(), batch["view_geometry"].tolist()):
        keys.update((index, *row) for row in rows)
    return keys


def test_cached_distillation_loss_equals_uncached_over_a_real_tiny_run(parts, tiny_teacher, tiny_student):
    student, _ = tiny_student
    teacher = tiny_teacher.eval().requires_grad_(False)
    train = attach_views(parts, _processor(), seed=3, view_geometry=True)["train"]
    sampler = ClassBalancedSampler(train.labels, len(CLASSES), seed=3)
    cache, cached_teacher, plain_teacher = TeacherLogitCache(), CountingTeacher(teacher), CountingTeacher(teacher)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    distinct, steps = set(), 0
    for epoch in range(3):
        train.set_epoch(epoch)
        sampler.set_epoch(epoch)
        if epoch:  # resampling draws with replacement: rows repeat within an epoch
            sampler.set_class_weights(torch.tensor([0.2, 1.0, 1.5, 3.0]))
        for batch in DataLoader(train, batch_size=4, sampler=sampler, collate_fn=default_data_collator):
            distinct |= _keys(batch)
            pixel_values = batch["pixel_values"]
            with_cache = cache.teacher_logits(
                cached_teacher, pixel_values, batch["sample_index"], batch["view_geometry"]
            )
            views = pixel_values.flatten(0, 1)
            without = plain_teacher(views).view(*pixel_values.shape[:2], -1)
            # the image logits of the paper, computed here: (mean of the crops + global view) / 2
            without = (without[:, :-1].mean(dim=1) + without[:, -1]) / 2
            torch.testing.assert_close(with_cache, without, rtol=1e-5, atol=1e-5)
            student.train()
            logits = student(pixel_values=pixel_values).logits
            ce = torch.nn.functional.cross_entropy(logits, batch["labels"])
            loss_cached = ce + distillation_loss(logits, with_cache, "l2")
            loss_plain = ce + distillation_loss(logits, without, "l2")
            torch.testing.assert_close(loss_cached, loss_plain, rtol=1e-6, atol=1e-6)
            optimizer.zero_grad()
            loss_cached.backward()
            optimizer.step()
            steps += 1
    stats = cache.stats()
    total_views = steps * 4 * VIEWS
    assert plain_teacher.views == total_views
    assert cached_teacher.views == stats["misses"] == stats["entries"] == len(distinct)  # each view once
    assert stats["hits"] == total_views - len(distinct) > 0
    assert cached_teacher.views < plain_teacher.views
    assert len(distinct) <= len(LABELS) * (2 * 6 + 2)  # 2 x 3 grid positions x 2 flips + 2 global views
    assert stats["bytes"] > 0 and stats["rejected"] == 0


def _synthetic_batches(count: int, batch: int, views: int, images: int, positions: int, seed: int = 0):
    """Batches of (pixel_values, sample_index, view_geometry) whose pixels are a function of the view's key."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        index = rng.integers(0, images, batch)
        grid = rng.integers(0, positions, (batch, views - 1))
        flip = rng.integers(0, 2, (batch, 1)).repeat(views, axis=1)
        geometry = np.stack([grid // 7 * 4, grid % 7 * 4, flip[:, 1:]], axis=-1)
        geometry = np.concatenate([geometry, np.stack([-np.ones(batch), -np.ones(batch), flip[:, 0]], -1)[:, None]], 1)
        codes = index[:, None] * 1000 + (geometry[..., 0] + 1) * 31 + geometry[..., 1] * 3 + geometry[..., 2]
        codes = codes.astype(np.float32)
        pixel_values = torch.from_numpy(codes)[..., None, None, None].expand(batch, views, 3, 2, 2).contiguous()
        pixel_values = torch.sin(pixel_values * torch.arange(1, 13, dtype=torch.float32).view(3, 2, 2))
        yield pixel_values, torch.from_numpy(index), torch.from_numpy(geometry.astype(np.int64))


def _linear_teacher():
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 4)
    return lambda views: layer(views.flatten(1)).detach()


def test_memory_bound_is_respected_and_uncached_views_stay_exact():
    teacher = _linear_teacher()
    unbounded, bounded = TeacherLogitCache(), TeacherLogitCache(max_bytes=260_000)
    for pixel_values, index, geometry in _synthetic_batches(200, batch=6, views=9, images=30, positions=49):
        expected = unbounded.teacher_logits(teacher, pixel_values, index, geometry)
        got = bounded.teacher_logits(teacher, pixel_values, index, geometry)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        per_view = teacher(pixel_values.flatten(0, 1)).view(6, 9, -1)
        torch.testing.assert_close(expected, (per_view[:, :-1].mean(1) + per_view[:, -1]) / 2, rtol=1e-6, atol=1e-6)
    full, capped = unbounded.stats(), bounded.stats()
    assert full["entries"] > MERGE_EVERY  # the sorted index was merged at least once
    assert capped["bytes"] <= 260_000
    assert 0 < capped["entries"] < full["entries"] and capped["rejected"] > 0
    assert capped["misses"] > full["misses"]  # views left out are computed again when they come back
    assert capped["hits"] + capped["misses"] == full["hits"] + full["misses"]


def test_switched_off_stores_nothing_and_computes_every_view():
    teacher = _linear_teacher()
    off = TeacherLogitCache(max_bytes=0)
    batches = list(_synthetic_batches(20, batch=4, views=9, images=3, positions=2))
    distinct_per_batch = 0
    for pixel_values, index, geometry in batches:
        off.teacher_logits(teacher, pixel_values, index, geometry)
        distinct_per_batch += len({(i, *row) for i, rows in zip(index.tolist(), geometry.tolist()) for row in rows})
    stats = off.stats()
    assert stats["entries"] == 0 and stats["bytes"] == 0
    assert stats["misses"] == distinct_per_batch  # nothing carried over between batches
    with pytest.raises(ValueError, match="view_geometry"):
        off.teacher_logits(teacher, batches[0][0], batches[0][1], batches[0][2][:, :, :2])


def test_saved_cache_reloads_for_the_same_teacher_processor_and_split(parts, tiny_teacher, tmp_path):
    teacher = tiny_teacher.eval().requires_grad_(False)
    processor = _processor()
    train = attach_views(parts, processor, seed=2, view_geometry=True)["train"]
    fingerprint = cache_fingerprint(teacher, processor, train)
    batches = [default_data_collator([train[i] for i in range(j, j + 4)]) for j in range(0, len(LABELS), 4)]

    def fill(cache, batch):
        keyed = batch["sample_index"], batch["view_geometry"]
        return cache.teacher_logits(CountingTeacher(teacher), batch["pixel_values"], *keyed)

    first, half = TeacherLogitCache(), TeacherLogitCache()  # two files, as two ranks would write them
    expected = [fill(first, batch) for batch in batches]
    fill(half, batches[0])
    paths = [cache.save(tmp_path / f"rank{rank}.safetensors", fingerprint) for rank, cache in enumerate((first, half))]
    loaded = TeacherLogitCache.load(paths, fingerprint)
    assert len(loaded) == len(first) == first.stats()["misses"]

    def refuse(views):
        raise AssertionError("a reloaded cache must not run the teacher on views it holds")

    for batch, logits in zip(batches, expected):
        torch.testing.assert_close(
            loaded.teacher_logits(refuse, batch["pixel_values"], batch["sample_index"], batch["view_geometry"]),
            logits, rtol=0, atol=0,
        )
    assert loaded.stats()["misses"] == 0
    # another teacher, other processor settings or other training rows: refused with what differs
    changed_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    first_key = next(iter(changed_teacher))
    changed_teacher[first_key] += 1
    other = type(teacher)(teacher.config)
    other.load_state_dict(changed_teacher)
    other_rows = attach_views({"train": parts["train"].select(range(len(LABELS) - 1, -1, -1))}, processor, seed=2)
    others = {
        "teacher": cache_fingerprint(other, processor, train),
        "processor": cache_fingerprint(teacher, processor.with_overrides(crop_stride=4), train),
        "train_rows": cache_fingerprint(teacher, processor, other_rows["train"]),
    }
    for name, other_fingerprint in others.items():
        assert other_fingerprint[name] != fingerprint[name]
        assert all(other_fingerprint[k] == fingerprint[k] for k in fingerprint if k != name)
        with pytest.raises(ValueError, match=f"another {name}"):
            TeacherLogitCache.load(paths[0], other_fingerprint)


def test_distillation_trainer_with_cache_matches_without(parts, tiny_teacher, tiny_student, tmp_path):
    """End to end through the DistillationTrainer: same losses and weights with and without the cache."""
    from modeling_amlpf.training.trainers import DistillationTrainer

    student, _ = tiny_student
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_views = []
    tiny_teacher.register_forward_pre_hook(
        lambda module, args, kwargs: teacher_views.append(kwargs["pixel_values"].flatten(0, -4).shape[0]),
        with_kwargs=True,
    )
    runs = {}
    for name, cache in (("cached", TeacherLogitCache()), ("plain", None)):
        student.load_state_dict(initial)
        teacher_views.clear()
        views = attach_views(parts, _processor(), seed=5, view_geometry=True)
        args = TrainingArguments(
            output_dir=str(tmp_path / name), per_device_train_batch_size=4, num_train_epochs=3, learning_rate=1e-3,
            save_strategy="no", eval_strategy="no", logging_strategy="steps", logging_steps=1, report_to=[],
            remove_unused_columns=False, seed=5, use_cpu=True, disable_tqdm=True,
        )
        trainer = DistillationTrainer(
            model=student, args=args, train_dataset=views["train"], data_collator=default_data_collator,
            teacher_model=tiny_teacher, teacher_cache=cache, callbacks=[ViewEpochCallback()],
        )
        trainer.train()
        kd = [entry["kd_loss"] for entry in trainer.state.log_history if "kd_loss" in entry]
        runs[name] = (kd, {k: v.clone() for k, v in student.state_dict().items()}, sum(teacher_views), cache)
    kd_cached, weights_cached, views_cached, cache = runs["cached"]
    kd_plain, weights_plain, views_plain, _ = runs["plain"]
    assert len(kd_cached) == len(kd_plain) == 3 * len(LABELS) // 4
    assert kd_cached == pytest.approx(kd_plain, abs=2e-4)  # logged values are rounded to 4 decimals
    for key in weights_plain:
        torch.testing.assert_close(weights_cached[key], weights_plain[key], rtol=1e-4, atol=1e-5)
    stats = cache.stats()
    assert views_plain == 3 * len(LABELS) * VIEWS  # every view of 3 epochs
    assert views_cached == stats["misses"] < views_plain and stats["hits"] > 0
