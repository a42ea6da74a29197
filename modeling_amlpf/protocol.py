"""The evaluation protocol shared by ``train_teacher.py`` and ``distill_student.py``.

One split: load the dataset (group-disjoint split ``split_seed``), attach the multi-view transform, train with
model selection on the validation split, evaluate the selected model on the test split, and save the model,
processor, split, results, confusion matrix and model card. Several splits (``--split_seeds 1-10``): one
``split_<k>/`` folder each, then ``splits_summary.json``/``.md`` with mean ± sample std.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import TrainingArguments
from transformers.utils import logging

from .arguments import DataArguments, with_output_dir
from .trainers import SAMPLE_INDEX

logger = logging.get_logger(__name__)

SPLIT_FILE = "split.json"
BUNDLED_PROMPTS = {
    ("chaoyang", None): "chaoyang",
    ("breakhis", None): "breakhis",
    ("breakhis", "binary"): "breakhis_binary",
    ("lunghist700", None): "lunghist700",
    ("lunghist700", "3class"): "lunghist700",
    ("lunghist700", "7class"): "lunghist700_7class",
    ("demo", None): "demo",
}


# ------------------------------------------------------------------------------------------------ data
def load_split(data_args: DataArguments, split_seed: int):
    """The dataset's DatasetDict for one split, with a ``sample_index`` column on train, and its classes."""
    from .data import load_histo_dataset

    dd = load_histo_dataset(
        data_args.dataset,
        data_args.data_dir,
        split_seed=split_seed,
        on_bad_image=data_args.on_bad_image,
        **data_args.dataset_options(),
    )
    class_names = list(dd["train"].features["label"].names)
    for part in ("train", "validation", "test"):
        if len(dd[part]) == 0:
            raise ValueError(
                f"the {part} part of {data_args.dataset} split {split_seed} is empty: the dataset has too few groups "
                "for the requested fractions (see --test_fraction/--val_fraction)"
            )
    dd["train"] = dd["train"].add_column(SAMPLE_INDEX, list(range(len(dd["train"]))))
    return dd, class_names


def attach_views(dd, processor):
    """Decode lazily and make the views on the fly: random views for train, deterministic for the rest."""

    def make_transform(training: bool):
        def transform(batch):
            out = {
                "pixel_values": processor(batch["image"], training=training, return_tensors="pt")["pixel_values"],
                "labels": torch.as_tensor(batch["label"], dtype=torch.long),
            }
            if SAMPLE_INDEX in batch:
                out[SAMPLE_INDEX] = torch.as_tensor(batch[SAMPLE_INDEX], dtype=torch.long)
            return out

        return transform

    views = {}
    for part, dataset in dd.items():
        columns = ["image", "label"] + ([SAMPLE_INDEX] if SAMPLE_INDEX in dataset.column_names else [])
        views[part] = dataset.with_transform(make_transform(part == "train"), columns=columns)
    return views


def load_processor(*sources: str | None):
    """The processor saved with the first source (checkpoint or preset dir) that has one, else the paper's views."""
    from .image_processing_amlpf import AmlpfImageProcessor

    for source in sources:
        if source and (Path(source) / "preprocessor_config.json").is_file():
            return AmlpfImageProcessor.from_pretrained(source)
    return AmlpfImageProcessor()


def prompts_for(data_args: DataArguments, class_names: list[str]) -> dict[str, list[str]]:
    """The dataset's bundled prompts, a user's prompts file, or template prompts for other datasets."""
    from .prompts import load_prompts, template_prompts

    if data_args.prompts_file:
        return load_prompts(data_args.prompts_file, class_names)
    name = BUNDLED_PROMPTS.get((data_args.dataset, data_args.task))
    if name is not None:
        return load_prompts(name, class_names)
    logger.warning(
        f"no bundled prompts for dataset {data_args.dataset!r}: using template prompts; pass --prompts_file "
        "with label/basic/detailed prompts per class for the method's detailed level"
    )
    return template_prompts(class_names)


def check_teacher_split(teacher_dir: str, dd) -> None:
    """Refuse a teacher whose training images include this split's test images (a leak through the teacher)."""
    path = Path(teacher_dir) / SPLIT_FILE
    if not path.is_file():
        logger.warning(f"{path} not found: cannot check that the teacher never saw this split's test images")
        return
    parts = json.loads(path.read_text())["parts"]
    teacher_train = {row[0] for row in parts.get("train", [])} | {row[0] for row in parts.get("validation", [])}
    leaked = sorted(teacher_train & set(dd["test"].with_format(None)["path"]))
    if leaked:
        raise ValueError(
            f"the teacher in {teacher_dir} was trained on {len(leaked)} image(s) of this run's test split "
            f"(e.g. {leaked[:3]}): train the teacher with the same --dataset options and --split_seed"
        )


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_split(trainer, dataset, class_names: list[str], output_dir: Path, prefix: str = "test") -> dict:
    """Predict ``dataset``, compute the metrics, time per image, confusion matrix PNG; save ``<prefix>_results.json``."""
    from .metrics import compute_classification_metrics
    from .metrics.reporting import flatten_metrics, plot_confusion_matrix

    # The full metrics (with the confusion matrix) are computed once below, not also by the Trainer's hook.
    compute_metrics, trainer.compute_metrics = trainer.compute_metrics, None
    try:
        start = time.perf_counter()
        prediction = trainer.predict(dataset, metric_key_prefix=prefix)
        elapsed = time.perf_counter() - start
    finally:
        trainer.compute_metrics = compute_metrics
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    full = compute_classification_metrics(logits, prediction.label_ids, class_names)
    flat, _ = flatten_metrics(full)
    metrics = {f"{prefix}_{k}": v for k, v in flat.items()}
    metrics[f"{prefix}_ms_per_image"] = 1000.0 * elapsed / max(len(dataset), 1)
    metrics[f"{prefix}_samples"] = len(dataset)
    if f"{prefix}_loss" in prediction.metrics:
        metrics[f"{prefix}_loss"] = prediction.metrics[f"{prefix}_loss"]
    if trainer.is_world_process_zero():
        trainer.save_metrics(prefix, metrics)
        plot_confusion_matrix(
            np.asarray(full["confusion_matrix"]), class_names, output_dir / f"{prefix}_confusion_matrix.png",
            title=f"{prefix} confusion matrix",
        )
    return metrics


def strip_prefix(metrics: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1 :]: v for k, v in metrics.items() if k.startswith(prefix + "_")}


def export_run_split(dd, output_dir: Path) -> None:
    from .data import export_split

    output_dir.mkdir(parents=True, exist_ok=True)
    export_split(dd, output_dir / SPLIT_FILE)


# ------------------------------------------------------------------------------------------------ splits
def run_splits(
    data_args: DataArguments,
    training_args: TrainingArguments,
    run_one: Callable[[int, TrainingArguments], dict],
) -> dict:
    """Run one split, or each of ``--split_seeds`` into ``split_<k>/`` and summarise them."""
    from .metrics.reporting import render_summary_markdown, summarize_splits

    seeds = data_args.seeds()
    if not seeds:
        return run_one(data_args.split_seed, training_args)
    root = Path(training_args.output_dir)
    per_split = {}
    for seed in seeds:
        logger.warning(f"=== split {seed} ({seeds.index(seed) + 1}/{len(seeds)}) -> {root / f'split_{seed}'}")
        per_split[seed] = strip_prefix(run_one(seed, with_output_dir(training_args, root / f"split_{seed}")), "test")
    summary = summarize_splits(per_split)
    if training_args.process_index == 0:
        root.mkdir(parents=True, exist_ok=True)
        (root / "splits_summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        (root / "splits_summary.md").write_text(render_summary_markdown(summary, data_args.run_name()))
        print(render_summary_markdown(summary, data_args.run_name()))
    return summary


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot serialise {type(value)}")


# ------------------------------------------------------------------------------------------------ one run
def train_evaluate_save(trainer, views, dd, class_names, training_args, card_info: dict, extra_savers=()) -> dict:
    """Train (model selection on validation), evaluate validation and test, save everything, push if asked.

    Returns the test metrics (``test_*`` keys), empty when ``--do_predict`` is off."""
    output_dir = Path(training_args.output_dir)
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # the best checkpoint when load_best_model_at_end
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        if hasattr(trainer, "write_history"):
            trainer.write_history(str(output_dir))
    if trainer.is_world_process_zero():
        export_run_split(dd, output_dir)
        for save in extra_savers:
            save(output_dir)
    metrics: dict = {}
    if training_args.do_eval:
        eval_metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    if training_args.do_predict:
        metrics = evaluate_split(trainer, views["test"], class_names, output_dir, prefix="test")
        trainer.log_metrics("test", metrics)
    card_info = dict(card_info, class_names=class_names, split_sizes={k: len(v) for k, v in dd.items()},
                     test_metrics=strip_prefix(metrics, "test"))
    trainer.model_card = card_info
    trainer.create_model_card()
    if trainer.is_world_process_zero() and metrics:
        from .metrics.reporting import render_metrics_table

        print(f"\nTest metrics ({card_info.get('kind')}, {card_info.get('dataset')}, split {card_info.get('split_seed')}):")
        print(render_metrics_table(strip_prefix(metrics, "test")))
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message=f"AMLPF-CLIP {card_info.get('kind')} on {card_info.get('dataset')}")
    return metrics


def trainer_kwargs(training_args, views, class_names, processor) -> dict:
    """Keyword arguments every AMLPF trainer shares."""
    from transformers import default_data_collator

    from .metrics import make_compute_metrics

    return dict(
        args=training_args,
        train_dataset=views["train"] if training_args.do_train else None,
        eval_dataset=views["validation"],
        data_collator=default_data_collator,
        compute_metrics=make_compute_metrics(class_names),
        processing_class=processor,
    )
