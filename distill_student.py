#!/usr/bin/env python
"""Train the AMLPF-CLIP student: three-level prompt fusion + class-balanced resampling + distillation.

    accelerate launch distill_student.py --dataset lunghist700           # after: python train_teacher.py --dataset lunghist700
    python distill_student.py --config configs/demo.yaml                 # tiny presets on SYNTHETIC data
    python distill_student.py --dataset chaoyang --kd_weight 0 --resampling none   # plain prompt-fusion fine-tuning
    python distill_student.py --dataset breakhis --student_model vinid/plip         # any HF CLIP checkpoint
    python distill_student.py --dataset lunghist700 --do_train False --do_predict --model_name_or_path outputs/lunghist700/student

Defaults derive from ``--dataset``: data in ``data/<dataset>`` (or ``$AMLPF_DATA_DIR/<dataset>``), the teacher in
``outputs/<dataset>/teacher``, the output in ``outputs/<dataset>/student``, the student from
``$AMLPF_STUDENT_MODEL`` or ``checkpoints/clip-rn50`` (OpenAI RN50 converted with ``python -m modeling_amlpf.convert``).
Every ``transformers.TrainingArguments`` flag works.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, TrainingArguments, set_seed

from modeling_amlpf.arguments import (
    PROTOCOL_DEFAULTS,
    DataArguments,
    StudentArguments,
    output_root,
    run_name,
    setup_cli,
)
from modeling_amlpf.protocol import (
    attach_views,
    check_teacher_split,
    evaluate_split,
    load_processor,
    load_split,
    prompts_for,
    run_splits,
    trainer_kwargs,
    train_evaluate_save,
)
from modeling_amlpf.prompts import parse_levels, select_levels
from modeling_amlpf.trainers import DistillationTrainer

logger = logging.getLogger("distill_student")

DEFAULT_STUDENT = "checkpoints/clip-rn50"
STUDENT_ENV = "AMLPF_STUDENT_MODEL"


def derived_defaults(ns) -> dict:
    root = output_root(ns) / run_name(ns)
    return dict(
        PROTOCOL_DEFAULTS,
        output_dir=str(root / "student"),
        teacher_model=str(root / "teacher"),
        student_model=os.environ.get(STUDENT_ENV, DEFAULT_STUDENT),
    )


def _is_local(path: str) -> bool:
    """A filesystem path rather than a Hub id (``owner/name``)."""
    return os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") != 1


def build_student(model_args: StudentArguments, class_names, prompts):
    """The student and its tokenizer, with this dataset's classes and prompts encoded."""
    levels = parse_levels(model_args.prompt_levels) if model_args.prompt_levels else None
    if model_args.model_name_or_path:  # evaluate / continue an AMLPF student checkpoint
        model = AutoModel.from_pretrained(model_args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    else:
        source = model_args.student_model
        if not Path(source).exists() and (source == DEFAULT_STUDENT or _is_local(source)):
            raise FileNotFoundError(
                f"no student model at {source}. Convert OpenAI's RN50 CLIP once with\n"
                f"  python -m modeling_amlpf.convert open_clip --checkpoint RN50.pt --model RN50 --output_dir {DEFAULT_STUDENT}\n"
                f"or pass --student_model (an HF CLIP id such as vinid/plip, a converted dir, or configs/models/student-tiny), "
                f"or set ${STUDENT_ENV}"
            )
        from modeling_amlpf.pretrained import load_student

        model, tokenizer = load_student(source, class_names, prompts)
    config = model.config
    if model_args.fusion is not None and model_args.fusion != config.fusion:
        config.fusion = model_args.fusion
        model.fusion_weights.data.fill_(model._fusion_init_value())
    if model_args.train_logit_scale is not None:
        config.train_logit_scale = model_args.train_logit_scale
        model.logit_scale.requires_grad_(model_args.train_logit_scale)
    levels = list(levels or config.prompt_levels)
    if not model_args.model_name_or_path or levels != list(config.prompt_levels):
        model.set_prompts(select_levels(prompts, levels), tokenizer, class_names=class_names, levels=levels)
    found = [config.id2label[i] for i in range(config.num_labels)]
    if found != class_names:
        raise ValueError(f"the student classifies {found}, the dataset has {class_names}")
    return model, tokenizer


def load_teacher(model_args: StudentArguments, data_args: DataArguments, split_seed: int, dd):
    """The frozen teacher of this split, or None when distillation is off."""
    if model_args.kd_weight <= 0:
        return None, None
    path = model_args.teacher_model
    if data_args.seeds() and (Path(path) / f"split_{split_seed}").is_dir():
        path = str(Path(path) / f"split_{split_seed}")
    if _is_local(path) and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"no trained teacher at {path}: run `python train_teacher.py --dataset {data_args.dataset}` with the same "
            "dataset options and split seed first, or pass --teacher_model PATH_OR_HUB_ID, or --kd_weight 0 to train "
            "without distillation"
        )
    dtype = getattr(torch, model_args.teacher_dtype) if model_args.teacher_dtype else None
    teacher = AutoModel.from_pretrained(path, dtype=dtype) if dtype is not None else AutoModel.from_pretrained(path)
    if _is_local(path):
        check_teacher_split(path, dd)
    return teacher, path


def main(argv: list[str] | None = None) -> dict:
    data_args, model_args, run_args, training_args, lr_schedule = setup_cli(StudentArguments, argv, derived_defaults, "student")

    def run_one(split_seed: int, args: TrainingArguments) -> dict:
        set_seed(args.seed)
        dd, class_names = load_split(data_args, split_seed)
        prompts = prompts_for(data_args, class_names)
        model, tokenizer = build_student(model_args, class_names, prompts)
        processor = load_processor(model_args.model_name_or_path, model_args.student_model)
        teacher, teacher_path = load_teacher(model_args, data_args, split_seed, dd) if args.do_train else (None, None)
        views = attach_views(dd, processor)
        trainer = DistillationTrainer(
            model=model,
            teacher_model=teacher,
            kd_loss=model_args.kd_loss,
            kd_weight=model_args.kd_weight if teacher is not None else 0.0,
            kd_temperature=model_args.kd_temperature,
            resampling=model_args.resampling,
            resample_gamma=model_args.resample_gamma,
            lr_schedule=lr_schedule,
            **trainer_kwargs(args, views, class_names, processor),
        )
        if model_args.do_zero_shot:
            evaluate_split(trainer, views["test"], class_names, Path(args.output_dir), prefix="zero_shot")
        card = {
            "kind": "student",
            "dataset": data_args.dataset,
            "dataset_options": data_args.dataset_options(),
            "split_seed": split_seed,
            "teacher": teacher_path,
            "base_model": model_args.student_model if not _is_local(model_args.student_model or "") else None,
            "synthetic": data_args.dataset == "demo",
            "hub_model_id": args.hub_model_id,
            "recipe": {
                "resampling": f"{model_args.resampling} (gamma {model_args.resample_gamma})",
                "distillation": f"{model_args.kd_loss}, weight {model_args.kd_weight}, T {model_args.kd_temperature}"
                if teacher is not None else "off",
                "fusion": model.config.fusion,
                "prompt levels": ", ".join(model.config.prompt_levels),
                "lr_schedule": run_args.lr_schedule or args.lr_scheduler_type,
                "epochs": args.num_train_epochs,
            },
        }
        return train_evaluate_save(
            trainer, views, dd, class_names, args, card, extra_savers=(tokenizer.save_pretrained,)
        )

    return run_splits(data_args, training_args, run_one)


if __name__ == "__main__":
    main(sys.argv[1:])
