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

from transformers import AutoModel, default_data_collator

from modeling_amlpf import AmlpfTeacherConfig, AmlpfTeacherForImageClassification
from modeling_amlpf.cli.arguments import (
    TeacherArguments,
    check_model_sources,
    default_hub_model_id,
    output_name,
    output_root,
    parse_lr_schedule,
    parse_script_args,
)
from modeling_amlpf.cli.launch import run_cli, setup_logging
from modeling_amlpf.cli.protocol import (
    evaluation_mode,
    finish_split,
    start_split,
    summarize_splits,
    training_callbacks,
)
from modeling_amlpf.cli.run_data import load_processor, log_run_data
from modeling_amlpf.cli.run_lock import hold_run_folder
from modeling_amlpf.data.class_names import check_class_names
from modeling_amlpf.evaluation.metrics import make_compute_metrics
from modeling_amlpf.evaluation.scoring import default_evaluation_dir
from modeling_amlpf.pretrained.weights import load_teacher_backbone
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
    hold_run_folder(training_args)  # one run per output folder, until this process ends
    lr_schedule = parse_lr_schedule(run_args.lr_schedule) if run_args.lr_schedule else None
    checkpoint = model_args.model_name_or_path
    training_args, evaluating = evaluation_mode("teacher", training_args, checkpoint, data_args)

    # The paper's protocol: one split, or each of --split_seeds into <output_dir>/split_<k>/, then a summary.
    per_split = {}
    for split_seed in data_args.seeds() or [data_args.split_seed]:
        # Dataset and labels of this split, the teacher and its processor
        run = start_split("teacher", data_args, training_args, split_seed, checkpoint=checkpoint,
                          evaluating=evaluating)
        log_run_data(run.dd, data_args, model_args, run.output_dir, split_seed=split_seed, training=run.args.do_train)
        args = run.args
        model = build_teacher(model_args, run.class_names)
        processor = load_processor(model_args.model_name_or_path, model_args.teacher_config)
        run.base_model = model.config.backbone_weights
        run.recipe = {
            "loss": "cross-entropy on (mean of 8 crop logits + global logits) / 2",
            "lr_schedule": run_args.lr_schedule or str(args.lr_scheduler_type),
        }

        # Transforms: 8 crops + 1 global view per image; training views a pure function of (seed, epoch, row)
        views = attach_views(run.dd, processor, seed=args.seed)

        # Trainer: cross-entropy on (mean of 8 crop logits + global logits) / 2, the paper's epoch-step schedule;
        # every saved or pushed folder loads on its own
        callbacks = [ViewEpochCallback()]
        callbacks += training_callbacks(run, model, processor)
        trainer = AmlpfTrainer(
            model=model,
            args=args,
            train_dataset=views["train"] if args.do_train else None,
            eval_dataset=views["validation"],
            data_collator=default_data_collator,
            compute_metrics=make_compute_metrics(run.class_names),
            processing_class=processor,
            callbacks=callbacks,
            lr_schedule=lr_schedule,
            decay_all_parameters=run_args.weight_decay_all_parameters,
        )

        # Train, save, evaluate, test, figures, card, push
        per_split[split_seed] = finish_split(trainer, run, views)

    if not data_args.seeds():
        return per_split[data_args.split_seed]
    return summarize_splits("teacher", data_args, training_args, per_split)


if __name__ == "__main__":
    sys.exit(run_cli(main))  # a user's mistake: one message and exit code 2, not a traceback
