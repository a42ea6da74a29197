#!/usr/bin/env python
"""Figures of the exact teacher-logit cache (`modeling_amlpf.training.teacher_cache`): the `teacher_cache` block that
`bench_train.py` writes into its JSON (`measure(quick)`), also runnable alone.

* `view_forward_fraction`: teacher view forwards with the cache / without it over the paper's schedule
  (100 epochs), counted without any model: every epoch draws the real `ClassBalancedSampler`'s indices (N uniform
  draws with replacement in epoch 1, then class weights of a difficulty profile; without resampling a permutation
  every epoch, as the Trainer's own sampler) through `DrawIndexedSampler`, and every
  draw makes the real processor's training views from the generator the training views use
  (`training_views.view_seed(seed, epoch, index, draw)` -> `processor.crop_positions`); distinct (index, top,
  left, flipped) keys are what the teacher computes. `repeats_share_views`: the same stream when a row's
  repeated draws within an epoch share its views (the train part used without `DrawIndexedSampler`).
  Geometries: Chaoyang (4,021 training images of 512x512: 10x10 grid, stride 32) and LungHist700
  (1200x1600, no upsizing: 21x29 grid, stride 48; 484 training images, 70 % of 691 by class).
  A closed form for the reference's draws (8 grid indices with replacement, whole-image flip p = 0.5, global
  view: 2 n + 2 keys per image) is computed beside it as a cross-check.
* `max_abs_diff`: the largest |cached - computed| aggregated teacher logit over a short real run (the tiny
  presets, real processor, training views, resampling), the teacher also run on every view.
* `projected_step_ratio_uni_rn50`: distillation step time with the cache / without it, per image over the
  100 epochs: (t_S + f t_T + o) / (t_S + t_T), with t_T the measured per-view forward of a UNI-sized teacher
  (ViT-L/16, random weights, no grad), t_S the per-view forward + backward of the RN50 CLIP student, f the
  Chaoyang `view_forward_fraction` and o the cache's own bookkeeping per view at Chaoyang size (full cache).
  Beside it, `measured_small`: the same ratio measured end to end at a size that runs here (the tiny
  presets' student and 64-px views, the teacher widened to take most of the step as UNI does; AdamW student
  steps, the two variants interleaved step by step), and the projection of that run from its own parts.

    python benchmarks/bench_teacher_cache.py [--quick] [--json FILE]
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time

import _common  # noqa: F401  (offline environment, repository on sys.path)
import numpy as np
import torch
from _common import REPO_ROOT, base_parser, build_rn50_student, environment, print_table, setup_threads, write_json

from modeling_amlpf import AmlpfImageProcessor
from modeling_amlpf.training.resampling import ClassBalancedSampler
from modeling_amlpf.training.teacher_cache import TeacherLogitCache, view_keys
from modeling_amlpf.training.views import DrawIndexedSampler, view_seed

TARGET_FRACTION = 0.25
EPOCHS = 100
QUICK_EPOCHS = 20
QUICK_IMAGE_FRACTION = 0.25
# Per-class mean (1 - p_true)^2 after epoch 1, the reference's difficulty weights: a plausible profile in which
# the classes that are hard to tell apart (Chaoyang's serrated and adenoma, LungHist700's squamous) weigh most.
GEOMETRIES = {
    "chaoyang": {
        "height": 512, "width": 512, "class_counts": [1111, 842, 1404, 664],
        "classes": ["normal", "serrated", "adenocarcinoma", "adenoma"], "class_weights": [0.05, 0.25, 0.04, 0.20],
        "source": "official train split (DATASETS.md)",
    },
    "lunghist700": {
        "height": 1200, "width": 1600, "class_counts": [196, 182, 106],
        "classes": ["adenocarcinoma", "squamous", "normal"], "class_weights": [0.10, 0.15, 0.02],
        "source": "70 % of 691 images by class (a patient-disjoint split's train part is about that size)",
    },
}
TINY = REPO_ROOT / "configs" / "models"


# ------------------------------------------------------------------------------------------------ view counts
def training_geometry(
    processor, height: int, width: int, seed: int, epoch: int, index: int, draw: int = 0
) -> list[tuple]:
    """(top, left, flipped) of each training view of row `index`'s `draw`-th draw in `epoch`, global view last,
    as `TrainingViews` draws them (the whole image is flipped with all its views: the global view shares it)."""
    generator = torch.Generator().manual_seed(view_seed(seed, epoch, index, draw))
    positions, flips = processor.crop_positions(height, width, training=True, generator=generator)
    return [(top, left, int(flip)) for (top, left), flip in zip(positions, flips)] + [(-1, -1, int(flips[0]))]


def check_geometry_against_processor(processor, height: int, width: int, seed: int) -> None:
    """The counted keys are the processor's: compare with `return_view_geometry` on a real image."""
    from PIL import Image

    image = Image.new("RGB", (width, height), (200, 120, 160))
    for epoch, index in ((0, 0), (3, 17), (99, 4020)):
        generator = torch.Generator().manual_seed(view_seed(seed, epoch, index))
        reported = processor(image, training=True, generator=generator, return_view_geometry=True)["view_geometry"]
        expected = [list(row) for row in training_geometry(processor, height, width, seed, epoch, index)]
        if reported[0].tolist() != expected:
            raise RuntimeError("processor.crop_positions no longer matches the views' geometry: update this benchmark")


def simulate_fractions(
    processor, height: int, width: int, labels: list[int], class_weights: list[float] | None, epochs: int, seed: int
) -> dict:
    """Distinct teacher keys / teacher view forwards over `epochs`, drawing as a training run does: the real
    sampler wrapped in `DrawIndexedSampler`: with `class_weights`, uniform draws with replacement in epoch 1 and
    the weights from epoch 2; without, a permutation every epoch (a run without resampling).

    `per_draw`: each repeated draw of a row in an epoch gets its own views (with the wrapper);
    `repeats_share_views`: the same stream, a row's repeated draws in an epoch sharing its first draw's views
    (the train part without the wrapper)."""
    first = "replacement" if class_weights is not None else "permutation"
    sampler = ClassBalancedSampler(labels, max(labels) + 1, mode="difficulty", seed=seed, first_epoch_sampling=first)
    stream = DrawIndexedSampler(sampler)
    per_draw: set[int] = set()
    shared: set[int] = set()
    draws = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        if epoch == 1 and class_weights is not None:
            sampler.set_class_weights(torch.tensor(class_weights, dtype=torch.float64))
        order = list(stream)
        geometry = torch.tensor([training_geometry(processor, height, width, seed, epoch, *key) for key in order])
        keys = view_keys(torch.tensor([index for index, _ in order]), geometry).reshape(len(order), -1)
        per_draw.update(keys.reshape(-1).tolist())
        shared.update(keys[[draw == 0 for _, draw in order]].reshape(-1).tolist())
        draws += len(order)
    views = draws * processor.num_views
    return {
        "views": views,
        "per_draw": {"teacher_views": len(per_draw), "fraction": len(per_draw) / views},
        "repeats_share_views": {"teacher_views": len(shared), "fraction": len(shared) / views},
    }


def reference_fraction(
    positions: int, labels: list[int], class_weights: list[float] | None, epochs: int, crops: int = 8
) -> float:
    """Closed form for the reference's draws. A row drawn D times has 2 n crop keys, each hit per draw with
    q = (1 - (1 - 1/n)^8) / 2, and 2 global keys hit with 1/2: E[distinct] = 2n (1 - E[(1-q)^D]) +
    2 (1 - E[(1/2)^D]). Epoch 1 draws N rows uniformly with replacement, epochs 2.. draw N rows with replacement,
    row i with probability pi_i, so D ~ Binomial(N, 1/N) + Binomial(N (E - 1), pi_i) and
    E[x^D] = (1 - (1 - x) / N)^N (1 - pi_i (1 - x))^(N (E - 1)); without class weights every epoch is a
    permutation (D = E). Returns sum of E[distinct] / sum of E[views] over rows."""
    q = (1.0 - (1.0 - 1.0 / positions) ** crops) / 2
    if class_weights is None:  # a permutation every epoch: D = epochs for every row
        distinct = 2 * positions * (1.0 - (1.0 - q) ** epochs) + 2 * (1.0 - 0.5**epochs)
        return float(distinct / ((crops + 1) * epochs))
    labels_t = np.asarray(labels)
    weights = np.asarray(class_weights, dtype=np.float64)[labels_t]
    pi = weights / weights.sum()
    later = labels_t.size * (epochs - 1)

    def power_mean(x: float) -> np.ndarray:  # E[x ** D]
        return (1.0 - (1.0 - x) / labels_t.size) ** labels_t.size * (1.0 - pi * (1.0 - x)) ** later

    distinct = 2 * positions * (1.0 - power_mean(1.0 - q)) + 2 * (1.0 - power_mean(0.5))
    views = (crops + 1) * (1.0 + later * pi)
    return float(distinct.sum() / views.sum())


def view_forward_fractions(quick: bool, seed: int) -> dict:
    processor = AmlpfImageProcessor()
    epochs = QUICK_EPOCHS if quick else EPOCHS
    results = {}
    for name, spec in GEOMETRIES.items():
        height, width = processor.resized_size(spec["height"], spec["width"])
        check_geometry_against_processor(processor, height, width, seed)
        stride, rows, columns = processor.crop_grid(height, width)
        counts = spec["class_counts"]
        if quick:
            counts = [max(1, round(c * QUICK_IMAGE_FRACTION)) for c in counts]
        labels = [c for c, count in enumerate(counts) for _ in range(count)]
        start = time.perf_counter()
        resampled = simulate_fractions(processor, height, width, labels, spec["class_weights"], epochs, seed)
        uniform = simulate_fractions(processor, height, width, labels, None, epochs, seed)
        results[name] = {
            "image_size": [spec["height"], spec["width"]],
            "resized_size": [height, width],
            "grid": {"stride": stride, "rows": rows, "columns": columns, "positions": rows * columns},
            "keys_per_image": 2 * rows * columns + 2,
            "train_images": len(labels),
            "train_images_source": spec["source"] + (f", {QUICK_IMAGE_FRACTION:.0%} of them (quick)" if quick else ""),
            "epochs": epochs,
            "class_weights_after_epoch_1": dict(zip(spec["classes"], spec["class_weights"])),
            "resampled": resampled,
            "uniform": uniform,
            "view_forward_fraction": resampled["per_draw"]["fraction"],
            "reference_closed_form": {
                "resampled": reference_fraction(rows * columns, labels, spec["class_weights"], epochs),
                "uniform": reference_fraction(rows * columns, labels, None, epochs),
            },
            "seconds": time.perf_counter() - start,
        }
    return results


# ------------------------------------------------------------------------------------------------ real tiny run
def _tiny_data(root: str, count: int, seed: int):
    """`count` synthetic 128x128 PNG images in 4 imbalanced classes, as a `datasets.Dataset` of paths."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = [i % 4 if i % 3 else 0 for i in range(count)]
    paths = []
    for i, label in enumerate(labels):
        pixels = rng.integers(0, 200, (128, 128, 3), dtype=np.uint8)
        pixels[..., label % 3] += np.uint8(30 + 10 * label)
        path = os.path.join(root, f"{i}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    names = ["normal", "hyperplastic", "adenoma", "carcinoma"]
    features = Features(image=ImageFeature(mode="RGB"), label=ClassLabel(names=names))
    return Dataset.from_dict({"image": paths, "label": labels}, features=features)


def tiny_batches(epochs: int, images: int, batch_size: int, seed: int) -> list[dict]:
    """Every training batch of a short run: real processor (tiny preset), training views with geometry,
    class-balanced resampling from epoch 2 (fixed difficulty weights)."""
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from modeling_amlpf.models.image_processing_amlpf import TINY_PRESET
    from modeling_amlpf.training.views import attach_views

    with tempfile.TemporaryDirectory() as root:
        dataset = _tiny_data(root, images, seed)
        processor = AmlpfImageProcessor(**TINY_PRESET)
        train = attach_views({"train": dataset}, processor, seed=seed, view_geometry=True)["train"]
        sampler = ClassBalancedSampler(train.labels, 4, seed=seed)
        batches = []
        for epoch in range(epochs):
            train.set_epoch(epoch)
            sampler.set_epoch(epoch)
            if epoch == 1:
                sampler.set_class_weights(torch.tensor([0.1, 0.5, 0.3, 0.6]))
            loader = DataLoader(train, batch_size=batch_size, sampler=sampler, collate_fn=default_data_collator)
            batches += list(loader)
    return batches


SMALL_TEACHER = {"embed_dim": 192, "depth": 6, "num_heads": 6}  # on the tiny preset's 64-px views


def _models(small_teacher: bool):
    """(teacher, student): the tiny presets; `small_teacher` widens the teacher so that, as UNI against RN50,
    it takes most of the step (width 192, depth 6: about 2/3 of an uncached step here)."""
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(TINY / "teacher-tiny")
    if small_teacher:
        config.backbone_kwargs = {**config.backbone_kwargs, **SMALL_TEACHER}
    teacher = AutoModel.from_config(config).eval().requires_grad_(False)
    student = AutoModel.from_config(AutoConfig.from_pretrained(TINY / "student-tiny"))
    return teacher, student


def max_abs_diff(batches: list[dict], teacher) -> dict:
    """Largest |cached - computed| aggregated teacher logit over the run (the teacher also runs on every view)."""
    cache = TeacherLogitCache()
    largest = 0.0
    with torch.no_grad():
        for batch in batches:
            cached = cache.teacher_logits(
                lambda views: teacher(pixel_values=views).logits,
                batch["pixel_values"], batch["sample_index"], batch["view_geometry"],
            )
            computed = teacher(pixel_values=batch["pixel_values"]).logits
            largest = max(largest, float((cached - computed).abs().max()))
    return {"max_abs_diff": largest, "cache": cache.stats()}


def measured_step_ratio(batches: list[dict], teacher, student, rounds: int) -> dict:
    """Distillation steps (teacher or cache, student forward + CE + L2 KD + backward + AdamW) over `batches`,
    with and without the cache, interleaved step by step (a burst of foreign load hits both variants alike);
    each round starts from the same student and an empty cache. The first round warms up."""
    from modeling_amlpf.training.losses import distillation_loss

    def run_teacher(views):
        return teacher(pixel_values=views).logits

    totals: dict[str, list[float]] = {"plain": [], "cached": []}
    teacher_totals: dict[str, list[float]] = {"plain": [], "cached": []}
    fraction = None
    for round_index in range(rounds + 1):
        students = {name: copy.deepcopy(student).train() for name in totals}
        optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in students.items()}
        cache = TeacherLogitCache()
        spent = {name: [0.0, 0.0] for name in totals}  # step seconds, teacher seconds
        for step, batch in enumerate(batches):
            for name in ("plain", "cached") if step % 2 else ("cached", "plain"):
                start = time.perf_counter()
                with torch.no_grad():
                    if name == "plain":
                        teacher_logits = teacher(pixel_values=batch["pixel_values"]).logits
                    else:
                        teacher_logits = cache.teacher_logits(
                            run_teacher, batch["pixel_values"], batch["sample_index"], batch["view_geometry"]
                        )
                middle = time.perf_counter()
                logits = students[name](pixel_values=batch["pixel_values"]).logits
                loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
                loss = loss + distillation_loss(logits, teacher_logits)
                optimizers[name].zero_grad()
                loss.backward()
                optimizers[name].step()
                spent[name][0] += time.perf_counter() - start
                spent[name][1] += middle - start
        if round_index:
            for name in totals:
                totals[name].append(spent[name][0])
                teacher_totals[name].append(spent[name][1])
            fraction = cache.stats()["teacher_view_fraction"]
    plain = statistics.median(totals["plain"])
    teacher_plain = statistics.median(teacher_totals["plain"])
    return {
        "steps": len(batches),
        "views_per_step": int(batches[0]["pixel_values"].shape[0] * batches[0]["pixel_values"].shape[1]),
        "teacher_view_fraction": fraction,
        "measured_ratio": statistics.median(c / p for c, p in zip(totals["cached"], totals["plain"])),
        # the same projection as for UNI/RN50, from this run's parts: student share + f x teacher share
        "projected_ratio_from_parts": (plain - teacher_plain + fraction * teacher_plain) / plain,
        "plain_s": plain,
        "cached_s": statistics.median(totals["cached"]),
        "plain_teacher_s": teacher_plain,
        "cached_teacher_s": statistics.median(teacher_totals["cached"]),
        "teacher_share_plain": teacher_plain / plain,
        "rounds": rounds,
    }


# ------------------------------------------------------------------------------------------------ UNI / RN50
def per_view_costs(views: int, iterations: int) -> dict:
    """Seconds per view: UNI-sized teacher forward (no grad) and RN50 student forward + backward, timed
    alternately (one call of each per iteration, after one warm-up call each), median over iterations."""
    from modeling_amlpf import AmlpfTeacherConfig, AmlpfTeacherForImageClassification
    from modeling_amlpf.data import DEMO_CLASS_NAMES
    from modeling_amlpf.models.configuration_amlpf import UNI_BACKBONE, UNI_BACKBONE_KWARGS

    torch.manual_seed(0)
    config = AmlpfTeacherConfig(
        backbone=UNI_BACKBONE, backbone_kwargs=dict(UNI_BACKBONE_KWARGS), class_names=DEMO_CLASS_NAMES
    )
    teacher = AmlpfTeacherForImageClassification(config).eval()
    student = build_rn50_student(DEMO_CLASS_NAMES).train()
    pixels = torch.randn(1, views, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(1, dtype=torch.long)

    def teacher_forward():
        with torch.no_grad():
            teacher(pixel_values=pixels)

    def student_forward_backward():
        student(pixel_values=pixels, labels=labels).loss.backward()
        student.zero_grad(set_to_none=True)

    calls = {"teacher_forward": teacher_forward, "student_forward_backward": student_forward_backward}
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for iteration in range(iterations + 1):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            if iteration:
                seconds[name].append(time.perf_counter() - start)
    return {
        name: {"s_per_view": statistics.median(values) / views, "views_per_call": views, "calls": len(values)}
        for name, values in seconds.items()
    }


def cache_overhead(entries: int, batch: int = 18, views: int = 9, num_classes: int = 4) -> dict:
    """Seconds of cache bookkeeping per view on batches of the reference's student size whose views are all
    cached, with `entries` keys stored (Chaoyang: 4,021 images x 202 keys), and the cache's memory then."""
    cache = TeacherLogitCache()
    rng = np.random.default_rng(0)
    per_image = 202
    images = max(1, entries // per_image)
    # fill: every image's 100 grid positions x 2 flips + 2 global views (Chaoyang: 10x10 grid, stride 32)
    grid = [(r * 32, c * 32) for r in range(10) for c in range(10)]
    rows = [(t, left, f) for f in (0, 1) for t, left in grid] + [(-1, -1, 0), (-1, -1, 1)]
    geometry_all = torch.tensor(rows).view(1, per_image, 3)
    for start in range(0, images, 64):
        index = torch.arange(start, min(images, start + 64))
        fill = torch.randn(len(index) * per_image, num_classes)
        cache.teacher_logits(
            lambda v, fill=fill: fill, torch.zeros(len(index), per_image, 1, 1, 1), index,
            geometry_all.expand(len(index), -1, -1),
        )
    pixel_values = torch.zeros(batch, views, 1, 1, 1)

    def step():
        index = torch.from_numpy(rng.integers(0, images, batch))
        pick = torch.from_numpy(rng.integers(0, per_image - 2, (batch, views - 1)))
        geometry = torch.cat([geometry_all[0][pick], geometry_all[0][-1].expand(batch, 1, 3)], 1)
        return cache.teacher_logits(lambda v: torch.zeros(v.shape[0], num_classes), pixel_values, index, geometry)

    for _ in range(5):
        step()
    start = time.perf_counter()
    calls = 50
    for _ in range(calls):
        step()
    seconds = time.perf_counter() - start
    stats = cache.stats()
    return {
        "s_per_view": seconds / (calls * batch * views),
        "s_per_step": seconds / calls,
        "batch": [batch, views],
        **{key: stats[key] for key in ("entries", "bytes", "logit_bytes", "index_bytes")},
    }


def projected_ratio(costs: dict, fraction: float, overhead: float) -> float:
    t_teacher = costs["teacher_forward"]["s_per_view"]
    t_student = costs["student_forward_backward"]["s_per_view"]
    return (t_student + fraction * t_teacher + overhead) / (t_student + t_teacher)


# ------------------------------------------------------------------------------------------------ entry points
def measure(quick: bool = False, seed: int = 0) -> dict:
    """The `teacher_cache` block of bench_train.py's JSON."""
    start = time.perf_counter()
    fractions = view_forward_fractions(quick, seed)
    chaoyang = fractions["chaoyang"]["view_forward_fraction"]
    epochs, images = (3, 12) if quick else (6, 24)
    batches = tiny_batches(epochs, images, batch_size=6, seed=seed)
    exactness = max_abs_diff(batches, _models(small_teacher=False)[0])
    small = measured_step_ratio(batches, *_models(small_teacher=True), rounds=1 if quick else 2)
    costs = per_view_costs(views=2, iterations=1 if quick else 3)
    bookkeeping = cache_overhead(entries=100_000 if quick else 4021 * 202)
    overhead = bookkeeping["s_per_view"]
    block = {
        "definitions": {
            "view_forward_fraction": "teacher view forwards with the cache / without it over the schedule "
            "(distinct (image, top, left, flipped) keys / views drawn), Chaoyang geometry, real sampler and "
            "processor draws, class-balanced resampling from epoch 2",
            "max_abs_diff": "largest |cached - computed| aggregated teacher logit over a short real tiny run",
            "projected_step_ratio_uni_rn50": "(t_S + f t_T + o) / (t_S + t_T) per view: t_T UNI-sized teacher "
            "forward, t_S RN50 student forward + backward (measured here, random weights), f the Chaoyang "
            "view_forward_fraction, o the cache's bookkeeping per view with a full Chaoyang-sized cache",
        },
        "view_forward_fraction": chaoyang,
        "target_view_forward_fraction": TARGET_FRACTION,
        "target_met": chaoyang <= TARGET_FRACTION,
        "geometries": fractions,
        "max_abs_diff": exactness["max_abs_diff"],
        "exactness_run": {"steps": len(batches), "epochs": epochs, "images": images, "cache": exactness["cache"]},
        "per_view_seconds": costs,
        "cache_overhead_s_per_view": overhead,
        "cache_bookkeeping": bookkeeping,
        "projected_step_ratio_uni_rn50": projected_ratio(costs, chaoyang, overhead),
        "projected_step_ratio_uni_rn50_uniform_sampling": projected_ratio(
            costs, fractions["chaoyang"]["uniform"]["per_draw"]["fraction"], overhead
        ),
        "projected_step_ratio_uni_rn50_lunghist700": projected_ratio(
            costs, fractions["lunghist700"]["view_forward_fraction"], overhead
        ),
        "measured_small": {
            "models": f"teacher-tiny widened to {SMALL_TEACHER} + student-tiny, 64-px views (tiny preset)",
            **small,
        },
        "mode": "quick" if quick else "full",
        "seconds": time.perf_counter() - start,
    }
    return block


def print_block(block: dict) -> None:
    rows = []
    for name, result in block["geometries"].items():
        rows.append([
            name, f"{result['resized_size'][0]}x{result['resized_size'][1]}", result["grid"]["positions"],
            result["train_images"], result["epochs"], result["resampled"]["per_draw"]["fraction"],
            result["reference_closed_form"]["resampled"], result["resampled"]["repeats_share_views"]["fraction"],
            result["uniform"]["per_draw"]["fraction"], result["reference_closed_form"]["uniform"],
        ])
    print_table(
        ["geometry", "size", "positions", "images", "epochs", "resampled", "closed form", "repeats share views",
         "uniform", "closed form"],
        rows, title="teacher view forwards with the cache / without (target <= 0.25 on Chaoyang)",
    )
    costs = block["per_view_seconds"]
    tiny = block["measured_small"]
    print_table(
        ["figure", "value"],
        [
            ["max |cached - computed| logit", block["max_abs_diff"]],
            ["UNI teacher forward s/view", costs["teacher_forward"]["s_per_view"]],
            ["RN50 student fwd+bwd s/view", costs["student_forward_backward"]["s_per_view"]],
            ["cache bookkeeping s/view", block["cache_overhead_s_per_view"]],
            ["projected step ratio UNI/RN50 (Chaoyang)", block["projected_step_ratio_uni_rn50"]],
            ["projected step ratio UNI/RN50 (LungHist700)", block["projected_step_ratio_uni_rn50_lunghist700"]],
            ["small: measured step ratio", tiny["measured_ratio"]],
            ["small: projected from its parts", tiny["projected_ratio_from_parts"]],
            ["small: teacher view fraction", tiny["teacher_view_fraction"]],
            ["small: teacher share of a plain step", tiny["teacher_share_plain"]],
        ],
        title="exactness and step time",
    )


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], default_threads=None)
    args = parser.parse_args(argv)
    threads = setup_threads(args.threads)
    block = measure(quick=args.quick, seed=args.seed)
    print_block(block)
    payload = {"benchmark": "bench_teacher_cache", "teacher_cache": block, "environment": environment(threads)}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
