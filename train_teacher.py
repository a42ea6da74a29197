#!/usr/bin/env python
"""Fine-tune the AMLPF-CLIP teacher (UNI: timm ViT-L/16 + MLP head) with cross-entropy on 8 crops + 1 global view.

    python train_teacher.py --dataset lunghist700                      # configs: see configs/*.yaml
    python train_teacher.py --config configs/lunghist700.yaml --teacher_weights /path/to/uni/pytorch_model.bin
    python train_teacher.py --dataset demo --config configs/demo.yaml  # tiny preset on SYNTHETIC data
    python train_teacher.py --dataset chaoyang --split_seeds 1-10      # ten splits + splits_summary.md
    python train_teacher.py --dataset lunghist700 --do_train False --do_predict --model_name_or_path outputs/lunghist700/teacher

Every ``transformers.TrainingArguments`` flag works (``--help`` lists them). The trained teacher, its processor,
split, results and card go to ``--output_dir`` (default ``outputs/<dataset>/teacher``), where
``distill_student.py`` finds it.
"""

from __future__ import annotations

import logging
import sys

from transformers import AutoModel, TrainingArguments, set_seed

from modeling_amlpf import AmlpfTeacherConfig, AmlpfTeacherForImageClassification
from modeling_amlpf.arguments import (
    PROTOCOL_DEFAULTS,
    TeacherArguments,
    output_root,
    run_name,
    setup_cli,
)
from modeling_amlpf.protocol import (
    attach_views,
    load_processor,
    load_split,
    run_splits,
    trainer_kwargs,
    train_evaluate_save,
)
from modeling_amlpf.trainers import ClassBalancedTrainer

logger = logging.getLogger("train_teacher")


def derived_defaults(ns) -> dict:
    return dict(PROTOCOL_DEFAULTS, output_dir=str(output_root(ns) / run_name(ns) / "teacher"))


def build_teacher(model_args: TeacherArguments, class_names: list[str]):
    if model_args.model_name_or_path:
        model = AutoModel.from_pretrained(model_args.model_name_or_path)
        found = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if found != class_names:
            raise ValueError(
                f"{model_args.model_name_or_path} classifies {found}, the dataset has {class_names}: "
                "use a teacher trained on this dataset and task"
            )
        return model
    config = AmlpfTeacherConfig.from_pretrained(model_args.teacher_config) if model_args.teacher_config else AmlpfTeacherConfig()
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: i for i, name in enumerate(class_names)}
    if model_args.head_dropout is not None:
        config.head_dropout = model_args.head_dropout
    model = AmlpfTeacherForImageClassification(config)
    source = model_args.teacher_weights or model_args.teacher_backbone
    if source:
        from modeling_amlpf.pretrained import load_teacher_backbone

        logger.info(load_teacher_backbone(model, source))
    elif config.backbone_weights is None:
        logger.warning(
            "the teacher backbone starts from random weights: pass --teacher_backbone hf-hub:MahmoodLab/uni "
            "(gated, needs your HF token) or --teacher_weights /path/to/uni/pytorch_model.bin for the paper's UNI"
        )
    return model


def main(argv: list[str] | None = None) -> dict:
    data_args, model_args, run_args, training_args, lr_schedule = setup_cli(TeacherArguments, argv, derived_defaults, "teacher")

    def run_one(split_seed: int, args: TrainingArguments) -> dict:
        set_seed(args.seed)
        dd, class_names = load_split(data_args, split_seed)
        processor = load_processor(model_args.model_name_or_path, model_args.teacher_config)
        model = build_teacher(model_args, class_names)
        views = attach_views(dd, processor)
        trainer = ClassBalancedTrainer(
            model=model,
            resampling="none",  # the paper fine-tunes the teacher with plain cross-entropy
            lr_schedule=lr_schedule,
            **trainer_kwargs(args, views, class_names, processor),
        )
        card = {
            "kind": "teacher",
            "dataset": data_args.dataset,
            "dataset_options": data_args.dataset_options(),
            "split_seed": split_seed,
            "base_model": model.config.backbone_weights,
            "synthetic": data_args.dataset == "demo",
            "hub_model_id": args.hub_model_id,
            "recipe": {"loss": "cross-entropy on (mean of 8 crop logits + global logits) / 2",
                       "lr_schedule": run_args.lr_schedule or args.lr_scheduler_type, "epochs": args.num_train_epochs},
        }
        return train_evaluate_save(trainer, views, dd, class_names, args, card)

    return run_splits(data_args, training_args, run_one)


if __name__ == "__main__":
    main(sys.argv[1:])
