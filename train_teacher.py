#!/usr/bin/env python
"""Fine-tune the AMLPF-CLIP teacher (UNI: timm ViT-L/16 + MLP head) with cross-entropy on 8 crops + 1 global view.

    python train_teacher.py --dataset lunghist700                      # configs: see configs/*.yaml
    python train_teacher.py --config configs/lunghist700.yaml --teacher_weights /path/to/uni/pytorch_model.bin
    python train_teacher.py --dataset demo --config configs/demo.yaml  # tiny preset on SYNTHETIC data
    python train_teacher.py --dataset chaoyang --split_seeds 1-10      # ten splits + splits_summary.md
    python train_teacher.py --dataset lunghist700 --do_train False --do_predict \
        --model_name_or_path outputs/lunghist700/teacher               # results in <model>/eval-lunghist700
    python train_teacher.py --dataset imagefolder --data_dir /data/hospital_b --external_cohort --do_train False \
        --model_name_or_path outputs/lunghist700/teacher --class_map cohort_classes.yaml   # an external cohort

Every ``transformers.TrainingArguments`` flag works (``--help`` lists them). The trained teacher, its processor,
split, results and card go to ``--output_dir`` (default ``outputs/<dataset>/teacher``), where
``distill_student.py`` finds it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from huggingface_hub import HfApi
from transformers import AutoModel, default_data_collator, set_seed

from modeling_amlpf import AmlpfTeacherConfig, AmlpfTeacherForImageClassification
from modeling_amlpf.cli.arguments import (
    TeacherArguments,
    check_model_sources,
    default_hub_model_id,
    output_name,
    output_root,
    parse_lr_schedule,
    parse_script_args,
    with_output_dir,
)
from modeling_amlpf.cli.launch import UserError, run_cli, setup_logging
from modeling_amlpf.cli.run_data import (
    check_evaluated_checkpoint,
    export_run_split,
    load_processor,
    load_split,
    log_run_data,
    match_model_classes,
    model_class_names,
)
from modeling_amlpf.cli.run_files import LoadableCheckpoints, push_output_folder
from modeling_amlpf.data import read_provenance
from modeling_amlpf.data.class_names import check_class_names
from modeling_amlpf.evaluation.figures import run_title, write_run_figures, write_splits_figure
from modeling_amlpf.evaluation.metrics import make_compute_metrics
from modeling_amlpf.evaluation.metrics.reporting import render_metrics_table
from modeling_amlpf.evaluation.model_card import ModelCardFacts, write_model_card
from modeling_amlpf.evaluation.scoring import (
    default_evaluation_dir,
    evaluation_facts,
    evaluation_output_dir,
    save_metrics,
    score_split,
    strip_prefix,
    write_evaluation_summary,
    write_splits_summary,
)
from modeling_amlpf.training.trainers import AmlpfTrainer
from modeling_amlpf.training.views import ViewEpochCallback, attach_views

logger = logging.getLogger("train_teacher")


def derived_defaults(ns) -> dict:
    """Defaults that follow the dataset (and, for imagefolder, the data root): output folder, Hub repo."""
    output_dir = str(output_root(ns) / output_name(ns) / "teacher")
    if not getattr(ns, "do_train", True) and getattr(ns, "model_name_or_path", None):
        output_dir = default_evaluation_dir(ns.model_name_or_path, ns, output_root(ns))  # never the model's own
    return {"output_dir": output_dir, "hub_model_id": default_hub_model_id(ns, "teacher")}


def build_teacher(model_args: TeacherArguments, class_names: list[str]):
    """A trained teacher to evaluate or continue, or a new one (UNI backbone weights when given)."""
    if model_args.model_name_or_path:
        model = AutoModel.from_pretrained(model_args.model_name_or_path)
        check_class_names(
            [model.config.id2label[i] for i in range(model.config.num_labels)], class_names,
            source=model_args.model_name_or_path, fix="use a teacher trained on this dataset and task",
        )
        return model
    if model_args.teacher_config:
        config = AmlpfTeacherConfig.from_pretrained(model_args.teacher_config)
    else:
        config = AmlpfTeacherConfig()
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: i for i, name in enumerate(class_names)}
    if model_args.head_dropout is not None:
        config.head_dropout = model_args.head_dropout
    model = AmlpfTeacherForImageClassification(config)
    source = model_args.teacher_weights or model_args.teacher_backbone
    if source:
        from modeling_amlpf.pretrained.weights import load_teacher_backbone

        logger.info(load_teacher_backbone(model, source))
    elif config.backbone_weights is None:
        logger.warning(
            "the teacher backbone starts from random weights: pass --teacher_backbone hf-hub:MahmoodLab/uni "
            "(gated, needs your HF token) or --teacher_weights /path/to/uni/pytorch_model.bin for the paper's UNI"
        )
    return model


def main(argv: list[str] | None = None) -> dict:
    # Arguments: --config FILE (or configs/<dataset>.yaml), flags on top, defaults derived from --dataset; every
    # value, the output folder (resume) and the launch are checked here, before any data or model loads.
    setup_logging()
    data_args, model_args, run_args, training_args = parse_script_args(
        TeacherArguments, "teacher", argv, derived_defaults
    )
    setup_logging(training_args)  # this process's level: the other processes of a launch log errors only
    check_model_sources(data_args, model_args, training_args)  # a missing teacher/student: before any data loads
    lr_schedule = parse_lr_schedule(run_args.lr_schedule) if run_args.lr_schedule else None

    # An evaluation of a trained teacher (--do_train False --model_name_or_path DIR) leaves DIR as it is: its
    # outputs go to their own folder (DIR/eval-<data> when --output_dir is DIR).
    checkpoint = model_args.model_name_or_path
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

    # The paper's protocol: one split, or each of --split_seeds into <output_dir>/split_<k>/, then a summary.
    split_seeds = data_args.seeds()
    per_split = {}
    for split_seed in split_seeds or [data_args.split_seed]:
        args = training_args
        if split_seeds:
            args = with_output_dir(training_args, Path(training_args.output_dir) / f"split_{split_seed}", split_seed)
            logger.warning(f"=== split {split_seed} ({len(per_split) + 1}/{len(split_seeds)}) -> {args.output_dir}")
        output_dir = Path(args.output_dir)
        set_seed(args.seed)

        # Dataset (one split: group-disjoint unless the dataset prescribes one; --external_cohort: every image in
        # test), the split exported as used, and labels (an evaluated checkpoint's classes, --class_map)
        dd = load_split(data_args, split_seed, training=args.do_train)
        evaluation = {}
        if evaluating:
            relation = check_evaluated_checkpoint(checkpoint, dd, external_cohort=data_args.external_cohort)
            if args.process_index == 0:
                export_run_split(dd, output_dir)  # the images evaluated, under their own class names
            dd, class_facts = match_model_classes(
                dd, model_class_names(checkpoint), data_args.class_map, model_source=f"the teacher {checkpoint}"
            )
            evaluation = evaluation_facts("teacher", checkpoint, data_args, dd, relation, class_facts)
        class_names = list(dd["test"].features["label"].names)
        log_run_data(dd, data_args, model_args, output_dir, split_seed=split_seed, training=args.do_train)

        # Model and processor
        model = build_teacher(model_args, class_names)
        processor = load_processor(model_args.model_name_or_path, model_args.teacher_config)

        # Transforms: 8 crops + 1 global view per image; training views a pure function of (seed, epoch, row)
        views = attach_views(dd, processor, seed=args.seed)

        def card_facts(test_metrics=None, figures=()) -> ModelCardFacts:
            provenance = read_provenance(dd)
            return ModelCardFacts(
                kind="teacher",
                dataset=data_args.dataset,
                dataset_options=data_args.dataset_options(),
                split_seed=split_seed,
                split_source=provenance["split_source"],
                group_disjoint=provenance["group_disjoint"],
                class_names=class_names,
                split_sizes={part: len(rows) for part, rows in dd.items()},
                test_metrics=strip_prefix(test_metrics or {}, "test"),
                base_model=model.config.backbone_weights,
                recipe={
                    "loss": "cross-entropy on (mean of 8 crop logits + global logits) / 2",
                    "lr_schedule": run_args.lr_schedule or str(args.lr_scheduler_type),
                    "epochs": str(args.num_train_epochs),
                },
                hub_model_id=args.hub_model_id,
                synthetic=data_args.dataset == "demo",
                figures=list(figures),
            )

        def loadable_extras(folder: Path) -> None:  # beside the weights of every saved or pushed folder
            write_model_card(folder, card_facts(), model=model)

        # Trainer: cross-entropy on (mean of 8 crop logits + global logits) / 2, the paper's epoch-step schedule;
        # every saved or pushed folder loads on its own
        callbacks = [ViewEpochCallback()]
        if args.do_train:
            callbacks.append(LoadableCheckpoints(loadable_extras, processor=processor))
        trainer = AmlpfTrainer(
            model=model,
            args=args,
            train_dataset=views["train"] if args.do_train else None,
            eval_dataset=views["validation"],
            data_collator=default_data_collator,
            compute_metrics=make_compute_metrics(class_names),
            processing_class=processor,
            callbacks=callbacks,
            lr_schedule=lr_schedule,
            decay_all_parameters=run_args.weight_decay_all_parameters,
        )

        # Train (model selection on validation), evaluate, predict on test
        run = data_args.run_name()
        if args.do_train:
            train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
            # the best checkpoint when load_best_model_at_end; saved without the Trainer's own push (it would
            # write its generic card): the final push below uploads the folder with the project's card
            trainer.save_model(_internal_call=True)
            trainer.log_metrics("train", train_result.metrics)
            save_metrics(trainer, "train", train_result.metrics)
            trainer.save_state()
        if trainer.is_world_process_zero() and not evaluating:
            export_run_split(dd, output_dir)
        if args.do_eval and len(views["validation"]) == 0:
            logger.info("no validation images (an external cohort): --do_eval skipped")
        elif args.do_eval:
            eval_metrics = trainer.evaluate(metric_key_prefix="eval")
            trainer.log_metrics("eval", eval_metrics)
            save_metrics(trainer, "eval", eval_metrics)
        test_metrics, full_metrics = {}, None
        if args.do_predict:
            test_metrics, full_metrics = score_split(
                trainer, views["test"], class_names, output_dir, prefix="test", model_kind="teacher",
                split_name="external cohort" if data_args.external_cohort else "test", dataset_name=run,
            )
            trainer.log_metrics("test", test_metrics)

        # Figures (the confusion matrix, training curves), then the model card, or an evaluation's own summary
        figures = []
        if trainer.is_world_process_zero():
            figures = [name for name in ("test_confusion_matrix.png",) if (output_dir / name).is_file()]
            if not evaluating:
                figures += write_run_figures(output_dir, title=run_title("teacher", run, split_seed))
            if evaluating:
                facts = {**evaluation, "metrics": strip_prefix(test_metrics, "test"), "figures": figures}
                write_evaluation_summary(output_dir, facts, full_metrics)
            else:
                write_model_card(output_dir, card_facts(test_metrics, figures), model=trainer.model)
            if test_metrics:
                what = f"{checkpoint} on {data_args.data_dir or run}" if evaluating else f"{run}, split {split_seed}"
                print(f"\nTest metrics (teacher, {what}):")
                print(render_metrics_table(strip_prefix(test_metrics, "test")))
        if args.push_to_hub:
            push_output_folder(
                HfApi(token=args.hub_token), trainer, output_dir, commit_message=f"AMLPF-CLIP teacher on {run}"
            )
        per_split[split_seed] = test_metrics

    if not split_seeds:
        return test_metrics
    per_split = {seed: strip_prefix(metrics, "test") for seed, metrics in per_split.items()}
    summary = write_splits_summary(
        training_args.output_dir, per_split, data_args.run_name(), write=training_args.process_index == 0
    )
    if training_args.process_index == 0:
        write_splits_figure(training_args.output_dir, dataset=data_args.run_name(), compare_to_paper=False,
                            title=run_title("teacher", data_args.run_name()))
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main))  # a user's mistake: one message and exit code 2, not a traceback
