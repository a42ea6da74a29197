"""The run protocol both training scripts share.

A script parses its arguments, then for each split: ``start_split`` (the split's output folder, seed, dataset and
labels), builds its own model and Trainer, and hands both to ``finish_split``: train (model selection on
validation) -> save -> export the split -> evaluate -> test -> figures -> model card or evaluation summary ->
print -> push. ``summarize_splits`` closes a ``--split_seeds`` run. The scripts differ only in how they build the
model and the Trainer; what a run states about itself is one ``SplitRun`` and one card builder (``card_facts``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from transformers import set_seed

from ..data import read_provenance
from ..evaluation.figures import run_title, write_run_figures, write_splits_figure
from ..evaluation.metrics.reporting import render_metrics_table
from ..evaluation.model_card import ModelCardFacts, write_model_card
from ..evaluation.scoring import (
    evaluation_facts,
    evaluation_output_dir,
    save_metrics,
    score_split,
    strip_prefix,
    write_evaluation_summary,
    write_splits_summary,
)
from ..utils import UserError
from .arguments import with_output_dir
from .run_data import check_evaluated_checkpoint, export_run_split, load_split, match_model_classes, model_class_names
from .run_files import LoadableCheckpoints, WholeRunTrainLoss, push_output_folder

logger = logging.getLogger(__name__)

__all__ = [
    "SplitRun",
    "card_facts",
    "evaluation_mode",
    "finish_split",
    "start_split",
    "summarize_splits",
    "training_callbacks",
]


@dataclass
class SplitRun:
    """One split's run: what it trains or evaluates, on which data, and the facts its card and summaries state.

    ``kind`` is ``"teacher"`` or ``"student"``; ``checkpoint`` the trained model given with
    ``--model_name_or_path`` (evaluated when ``evaluating``, else continued); ``evaluation`` the facts of an
    evaluation run (``evaluation_facts``); ``recipe`` the card's recipe lines; ``tokenizer`` is saved beside the
    weights of every folder (the student's); ``summary_facts`` go into an evaluation's summary (the prompts).
    """

    kind: str
    data_args: Any
    args: Any
    split_seed: int
    dd: Any
    checkpoint: str | None = None
    evaluating: bool = False
    evaluation: dict = field(default_factory=dict)
    recipe: dict[str, str] = field(default_factory=dict)
    base_model: str | None = None
    teacher: str | None = None
    tokenizer: Any = None
    summary_facts: dict = field(default_factory=dict)
    zero_shot: bool = False

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def class_names(self) -> list[str]:
        return list(self.dd["test"].features["label"].names)

    @property
    def run_name(self) -> str:
        return self.data_args.run_name()


def evaluation_mode(kind: str, training_args, checkpoint: str | None, data_args):
    """``(training_args, evaluating)``: an evaluation of a trained model (``--do_train False
    --model_name_or_path DIR``) writes into its own folder (``DIR/eval-<data>`` when ``--output_dir`` is DIR) and
    leaves DIR as it is; the cohort flags are refused outside an evaluation."""
    evaluating = not training_args.do_train and bool(checkpoint)
    if evaluating:
        training_args = with_output_dir(
            training_args, evaluation_output_dir(training_args.output_dir, checkpoint, data_args)
        )
        if training_args.push_to_hub:
            raise UserError("--push_to_hub with --do_train False would publish an evaluation, not a model")
        logger.warning(f"evaluating {checkpoint}; outputs in {training_args.output_dir}")
    elif data_args.class_map or data_args.external_cohort:
        flag = "--class_map" if data_args.class_map else "--external_cohort"
        raise UserError(
            f"{flag} is for evaluating a trained model on other data (its classes, every image): use it with "
            "--do_train False --model_name_or_path DIR"
        )
    return training_args, evaluating


def start_split(kind: str, data_args, training_args, split_seed: int, *, checkpoint: str | None, evaluating: bool):
    """The split's ``SplitRun``: its output folder (``split_<k>/`` under ``--split_seeds``), the seed, the dataset
    (group-disjoint unless the dataset prescribes a split; ``--external_cohort``: every image in test) and its
    labels (an evaluated checkpoint's classes, ``--class_map``)."""
    args = training_args
    split_seeds = data_args.seeds()
    if split_seeds:
        args = with_output_dir(training_args, Path(training_args.output_dir) / f"split_{split_seed}", split_seed)
        logger.warning(f"=== split {split_seed} ({split_seeds.index(split_seed) + 1}/{len(split_seeds)}) -> "
                       f"{args.output_dir}")
    set_seed(args.seed)
    dd = load_split(data_args, split_seed, training=args.do_train)
    evaluation = {}
    if evaluating:
        relation = check_evaluated_checkpoint(checkpoint, dd, external_cohort=data_args.external_cohort)
        if args.process_index == 0:
            export_run_split(dd, args.output_dir)  # the images evaluated, under their own class names
        dd, class_facts = match_model_classes(
            dd, model_class_names(checkpoint), data_args.class_map, model_source=f"the {kind} {checkpoint}"
        )
        evaluation = evaluation_facts(kind, checkpoint, data_args, dd, relation, class_facts)
    return SplitRun(kind, data_args, args, split_seed, dd, checkpoint=checkpoint, evaluating=evaluating,
                    evaluation=evaluation)


def card_facts(run: SplitRun, test_metrics=None, figures=()) -> ModelCardFacts:
    """The model card's facts of a teacher or student run (nothing guessed: all from the run)."""
    provenance = read_provenance(run.dd)
    return ModelCardFacts(
        kind=run.kind,
        dataset=run.data_args.dataset,
        dataset_options=run.data_args.dataset_options(),
        split_seed=run.split_seed,
        split_source=provenance["split_source"],
        group_disjoint=provenance["group_disjoint"],
        class_names=run.class_names,
        split_sizes={part: len(rows) for part, rows in run.dd.items()},
        test_metrics=strip_prefix(test_metrics or {}, "test"),
        teacher=run.teacher,
        base_model=run.base_model,
        recipe={**run.recipe, "epochs": str(run.args.num_train_epochs)},
        hub_model_id=run.args.hub_model_id,
        synthetic=run.data_args.dataset == "demo",
        figures=list(figures),
        selection_metric=run.args.metric_for_best_model if run.args.load_best_model_at_end else None,
    )


class LoadableExtras:
    """Writes what a saved or pushed folder needs beyond the Trainer's files: the tokenizer and the run's card
    (``run_files.LoadableCheckpoints`` calls it for the output folder and every checkpoint)."""

    def __init__(self, run: SplitRun, model):
        self.run, self.model = run, model

    def __call__(self, folder: Path) -> None:
        if self.run.tokenizer is not None:
            self.run.tokenizer.save_pretrained(folder)
        write_model_card(folder, card_facts(self.run), model=self.model)


def training_callbacks(run: SplitRun, model, processor) -> list:
    """The callbacks of a training run: every saved or pushed folder loads on its own (code, processor, tokenizer,
    card) and ``train_loss`` covers the whole run across resumes."""
    if not run.args.do_train:
        return []
    return [LoadableCheckpoints(LoadableExtras(run, model), processor=processor), WholeRunTrainLoss()]


def save_without_push(trainer) -> None:
    """``trainer.save_model()`` without the push it makes under ``--push_to_hub``: that push would upload the
    Trainer's generic card; ``push_output_folder`` uploads the folder once, with the project's card, at the end.
    (The public ``save_model`` has no switch for it.)"""
    push, trainer.args.push_to_hub = trainer.args.push_to_hub, False
    try:
        trainer.save_model()
    finally:
        trainer.args.push_to_hub = push


def finish_split(trainer, run: SplitRun, views) -> dict:
    """Everything after the Trainer is built, for either script; returns the flat ``test_*`` metrics."""
    args, output_dir, class_names = run.args, run.output_dir, run.class_names
    if run.zero_shot:  # the untrained student: prompts only
        score_split(trainer, views["test"], class_names, output_dir, prefix="zero_shot",
                    model_kind=f"{run.kind} (zero-shot)", split_name="test", dataset_name=run.run_name)

    # Train (model selection on validation), then save the selected model
    if args.do_train:
        train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        save_without_push(trainer)
        trainer.log_metrics("train", train_result.metrics)
        save_metrics(trainer, "train", train_result.metrics)
        trainer.save_state()
    if trainer.is_world_process_zero() and not run.evaluating:
        export_run_split(run.dd, output_dir)
        if run.tokenizer is not None:
            run.tokenizer.save_pretrained(output_dir)

    # Evaluate on validation, test on test
    if args.do_eval and len(views["validation"]) == 0:
        logger.info("no validation images (an external cohort): --do_eval skipped")
    elif args.do_eval:
        eval_metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", eval_metrics)
        save_metrics(trainer, "eval", eval_metrics)
    test_metrics, full_metrics = {}, None
    if args.do_predict:
        test_metrics, full_metrics = score_split(
            trainer, views["test"], class_names, output_dir, prefix="test", model_kind=run.kind,
            split_name="external cohort" if run.data_args.external_cohort else "test", dataset_name=run.run_name,
        )
        trainer.log_metrics("test", test_metrics)

    # Figures (the confusion matrix, training curves), then the model card, or an evaluation's own summary
    if trainer.is_world_process_zero():
        figures = [name for name in ("test_confusion_matrix.png",) if (output_dir / name).is_file()]
        if run.evaluating:
            facts = {**run.evaluation, **run.summary_facts, "metrics": strip_prefix(test_metrics, "test"),
                     "figures": figures}
            write_evaluation_summary(output_dir, facts, full_metrics)
        else:
            figures += write_run_figures(output_dir, title=run_title(run.kind, run.run_name, run.split_seed))
            write_model_card(output_dir, card_facts(run, test_metrics, figures), model=trainer.model)
        if test_metrics:
            what = (f"{run.checkpoint} on {run.data_args.data_dir or run.run_name}" if run.evaluating
                    else f"{run.run_name}, split {run.split_seed}")
            print(f"\nTest metrics ({run.kind}, {what}):")
            print(render_metrics_table(strip_prefix(test_metrics, "test")))
    if args.push_to_hub:
        push_output_folder(HfApi(token=args.hub_token), trainer, output_dir,
                           commit_message=f"AMLPF-CLIP {run.kind} on {run.run_name}")
    return test_metrics


def summarize_splits(kind: str, data_args, training_args, per_split: dict) -> dict:
    """Mean ± sample std over the splits of ``--split_seeds`` (``splits_summary.json/.md/.png``)."""
    per_split = {seed: strip_prefix(metrics, "test") for seed, metrics in per_split.items()}
    main_process = training_args.process_index == 0
    summary = write_splits_summary(training_args.output_dir, per_split, data_args.run_name(), write=main_process)
    if main_process:
        write_splits_figure(training_args.output_dir, dataset=data_args.run_name(),
                            compare_to_paper=kind == "student", title=run_title(kind, data_args.run_name()))
    return summary
