#!/usr/bin/env python
"""Train the AMLPF-CLIP student: three-level prompt fusion + class-balanced resampling + distillation.

    python train_teacher.py --dataset lunghist700 && accelerate launch distill_student.py --dataset lunghist700
    python distill_student.py --config configs/demo.yaml                 # tiny presets on SYNTHETIC data
    python distill_student.py --dataset chaoyang --kd_weight 0 --resampling none   # plain prompt-fusion fine-tuning
    python distill_student.py --dataset breakhis --student_model vinid/plip         # any HF CLIP checkpoint
    python distill_student.py --dataset lunghist700 --do_train False --do_predict \
        --model_name_or_path outputs/lunghist700/student                # results in <model>/eval-lunghist700
    python distill_student.py --dataset lunghist700 --do_train False --model_name_or_path outputs/lunghist700/student \
        --prompt_levels label,detailed                                   # a prompt ablation of the trained student
    python distill_student.py --dataset imagefolder --data_dir /data/hospital_b --external_cohort --do_train False \
        --model_name_or_path outputs/lunghist700/student --class_map "Tumour=adenocarcinoma,Normal=normal"

An evaluation (``--do_train False --model_name_or_path DIR``) encodes exactly the prompts asked for (the
checkpoint's own, ``--prompts_file``, ``--prompt_levels``), never rewrites DIR, and writes its results,
confusion matrix and ``evaluation.md`` into ``--output_dir`` (``DIR/eval-<data>`` when that is DIR).
Defaults derive from ``--dataset``: data in ``data/<dataset>`` (or ``$AMLPF_DATA_DIR/<dataset>``), the teacher in
``outputs/<dataset>/teacher``, the output in ``outputs/<dataset>/student``, the student from
``$AMLPF_STUDENT_MODEL`` or ``checkpoints/clip-rn50`` (OpenAI RN50 converted with
``python -m modeling_amlpf.convert``).
Every ``transformers.TrainingArguments`` flag works.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from modeling_amlpf.cli.arguments import (
    DEFAULT_STUDENT,
    DataArguments,
    StudentArguments,
    check_model_sources,
    default_hub_model_id,
    output_name,
    output_root,
    parse_lr_schedule,
    parse_script_args,
)
from modeling_amlpf.cli.launch import UserError, run_cli, setup_logging
from modeling_amlpf.cli.protocol import (
    evaluation_mode,
    finish_split,
    start_split,
    summarize_splits,
    training_callbacks,
)
from modeling_amlpf.cli.run_data import check_teacher_split, load_processor, log_run_data
from modeling_amlpf.cli.run_lock import hold_run_folder
from modeling_amlpf.data.class_names import check_class_names
from modeling_amlpf.evaluation.metrics import make_compute_metrics
from modeling_amlpf.evaluation.scoring import default_evaluation_dir
from modeling_amlpf.pretrained.prompts import parse_levels, prompts_for_run, select_levels
from modeling_amlpf.pretrained.weights import apply_checkpoint_prompts, is_local_path, load_student
from modeling_amlpf.training.resampling import ClassBalancedResampling, FusionWeightLogging
from modeling_amlpf.training.teacher_cache import TeacherLogitCache
from modeling_amlpf.training.teacher_inputs import load_teacher_processor
from modeling_amlpf.training.trainers import DistillationTrainer, training_collator
from modeling_amlpf.training.views import ViewEpochCallback, attach_views

logger = logging.getLogger("distill_student")

STUDENT_ENV = "AMLPF_STUDENT_MODEL"
# the training views' sample_index and view_geometry reach DistillationTrainer.compute_loss (the teacher cache);
# the reference's student loader drops the last incomplete batch (the l2 distillation term depends on the batch size)
STUDENT_DEFAULTS = {"remove_unused_columns": False, "dataloader_drop_last": True}


def derived_defaults(ns) -> dict:
    """Defaults that follow the dataset (and, for imagefolder, the data root): output folder, the teacher trained
    beside it, the student to start from, Hub repo."""
    root = output_root(ns) / output_name(ns)
    output_dir = str(root / "student")
    if not getattr(ns, "do_train", True) and getattr(ns, "model_name_or_path", None):
        output_dir = default_evaluation_dir(ns.model_name_or_path, ns, output_root(ns))  # never the model's own
    return {
        "output_dir": output_dir,
        "teacher_model": str(root / "teacher"),
        "student_model": os.environ.get(STUDENT_ENV, DEFAULT_STUDENT),
        "hub_model_id": default_hub_model_id(ns, "student"),
    }


def build_student(model_args: StudentArguments, class_names, prompts=None, *, training: bool = True):
    """The student and its tokenizer, with this dataset's classes and the prompts asked for encoded
    (``prompts_for_run``; None: a checkpoint's own)."""
    if model_args.model_name_or_path:  # evaluate / continue an AMLPF student checkpoint
        model = AutoModel.from_pretrained(model_args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    else:
        source = model_args.student_model
        if not Path(source).exists() and (source == DEFAULT_STUDENT or is_local_path(source)):
            raise FileNotFoundError(
                f"no student model at {source}. Convert OpenAI's RN50 CLIP once with\n"
                "  python -m modeling_amlpf.convert open_clip --checkpoint RN50.pt --model RN50 "
                f"--output_dir {DEFAULT_STUDENT}\n"
                "or pass --student_model (an HF CLIP id such as vinid/plip, a converted dir, or "
                "configs/models/student-tiny), "
                f"or set ${STUDENT_ENV}"
            )
        if prompts is None:
            raise ValueError("a new student needs prompts (prompts_for_run)")
        model, tokenizer = load_student(source, class_names, prompts)
    config = model.config
    check_class_names(
        [config.id2label[i] for i in range(config.num_labels)], class_names,
        source=f"the student ({model_args.model_name_or_path or model_args.student_model})",
        fix="evaluate a student trained on this dataset and task",
    )
    if model_args.fusion is not None and model_args.fusion != config.fusion:
        if model_args.model_name_or_path and not training:
            raise UserError(
                f"the checkpoint was trained with --fusion {config.fusion}; evaluating it with --fusion "
                f"{model_args.fusion} would replace its learned fusion weights by initial ones: drop --fusion"
            )
        if model_args.model_name_or_path:
            logger.warning(f"--fusion {model_args.fusion}: the checkpoint's {config.fusion} fusion weights restart")
        config.fusion = model_args.fusion
        model.reset_fusion_weights()
    if model_args.train_logit_scale is not None:
        config.train_logit_scale = model_args.train_logit_scale
        model.logit_scale.requires_grad_(model_args.train_logit_scale)
    if model_args.model_name_or_path:
        apply_checkpoint_prompts(model, tokenizer, class_names, prompts, model_args.prompt_levels, training=training)
    else:
        levels = list(parse_levels(model_args.prompt_levels))
        model.set_prompts(select_levels(prompts, levels), tokenizer, class_names=class_names, levels=levels)
    return model, tokenizer


def prompt_facts(model, source: str) -> dict:
    """Which prompts the student encodes: source, levels, fusion weights and texts (log and summaries)."""
    config = model.config
    weights = model.effective_fusion_weights().detach().float().cpu().tolist()
    return {
        "source": source,
        "levels": list(config.prompt_levels),
        "fusion": config.fusion,
        "fusion_weights": dict(zip(config.prompt_levels, weights)),
        "texts": {level: list((config.prompts or {}).get(level, [])) for level in config.prompt_levels},
    }


def load_teacher(model_args: StudentArguments, data_args: DataArguments, split_seed: int, dd):
    """The frozen teacher of this split and where it came from, or (None, None) when distillation is off."""
    if model_args.kd_weight <= 0:
        return None, None
    path = model_args.teacher_model
    if data_args.seeds() and (Path(path) / f"split_{split_seed}").is_dir():
        path = str(Path(path) / f"split_{split_seed}")
    if is_local_path(path) and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"no trained teacher at {path}: run `python train_teacher.py --dataset {data_args.dataset}` with the same "
            "dataset options and split seed first, or pass --teacher_model PATH_OR_HUB_ID, or --kd_weight 0 to train "
            "without distillation"
        )
    if is_local_path(path):  # a JSON comparison: before the (large) teacher's weights load
        check_teacher_split(path, dd)
    dtype = getattr(torch, model_args.teacher_dtype) if model_args.teacher_dtype else None
    teacher = AutoModel.from_pretrained(path, dtype=dtype) if dtype is not None else AutoModel.from_pretrained(path)
    return teacher, path


def main(argv: list[str] | None = None) -> dict:
    # Arguments: --config FILE (or configs/<dataset>.yaml), flags on top, defaults derived from --dataset; every
    # value, the output folder (resume) and the launch are checked here, before any data or model loads.
    setup_logging()
    data_args, model_args, run_args, training_args = parse_script_args(
        StudentArguments, "student", argv, derived_defaults, defaults=STUDENT_DEFAULTS
    )
    setup_logging(training_args)  # this process's level: the other processes of a launch log errors only
    check_model_sources(data_args, model_args, training_args)  # a missing teacher/student: before any data loads
    hold_run_folder(training_args)  # one run per output folder, until this process ends
    lr_schedule = parse_lr_schedule(run_args.lr_schedule) if run_args.lr_schedule else None
    checkpoint = model_args.model_name_or_path
    training_args, evaluating = evaluation_mode("student", training_args, checkpoint, data_args)
    if evaluating and model_args.do_zero_shot:
        logger.warning("--do_zero_shot evaluates the untrained student; the student here is trained: skipped")
        model_args.do_zero_shot = False

    # The paper's protocol: one split, or each of --split_seeds into <output_dir>/split_<k>/, then a summary.
    per_split = {}
    for split_seed in data_args.seeds() or [data_args.split_seed]:
        # Dataset and labels of this split, the prompts, the student, the frozen teacher and the processor
        run = start_split("student", data_args, training_args, split_seed, checkpoint=checkpoint,
                          evaluating=evaluating)
        log_run_data(run.dd, data_args, model_args, run.output_dir, split_seed=split_seed, training=run.args.do_train)
        args, class_names = run.args, run.class_names
        prompts, prompt_source = prompts_for_run(class_names, dataset=data_args.dataset, task=data_args.task,
                                                 prompts_file=data_args.prompts_file, checkpoint=checkpoint)
        model, run.tokenizer = build_student(model_args, class_names, prompts, training=args.do_train)
        run.summary_facts = {"prompts": prompt_facts(model, prompt_source)}
        weights = run.summary_facts["prompts"]["fusion_weights"]
        logger.info(f"prompts: {prompt_source}; levels {list(weights)}, {model.config.fusion} fusion weights "
                    + ", ".join(f"{level} = {w:.4f}" for level, w in weights.items()))
        teacher, run.teacher = (load_teacher(model_args, data_args, split_seed, run.dd) if args.do_train
                                else (None, None))
        processor = load_processor(model_args.model_name_or_path, model_args.student_model)
        run.base_model = model_args.student_model  # the card keeps Hub ids only
        run.zero_shot = model_args.do_zero_shot
        run.recipe = {
            "resampling": f"{model_args.resampling} (gamma {model_args.resample_gamma})",
            "distillation": (f"{model_args.kd_loss}, weight {model_args.kd_weight}, T {model_args.kd_temperature}"
                             if teacher is not None else "off"),
            "fusion": model.config.fusion,
            "prompt levels": ", ".join(model.config.prompt_levels),
            "lr_schedule": run_args.lr_schedule or str(args.lr_scheduler_type),
        }

        # Transforms: 8 crops + 1 global view per image; training views a pure function of (seed, epoch, row),
        # with each view's geometry when the teacher's logits are cached
        teacher_cache = None
        if teacher is not None and model_args.teacher_cache:
            max_mb = model_args.teacher_cache_max_mb
            teacher_cache = TeacherLogitCache(max_bytes=None if max_mb is None else int(max_mb * 2**20))
        views = attach_views(run.dd, processor, seed=args.seed, view_geometry=teacher_cache is not None)

        # Trainer: CE + kd_weight * distillation loss, class-balanced resampling, the paper's epoch-step schedule;
        # fusion weights logged every epoch; every saved or pushed folder loads on its own
        callbacks = [ViewEpochCallback()]
        if model_args.resampling != "none":
            callbacks.append(ClassBalancedResampling(class_names, mode=model_args.resampling,
                                                     gamma=model_args.resample_gamma,
                                                     min_class_share=model_args.min_class_share,
                                                     first_epoch_sampling=model_args.first_epoch_sampling))
        else:
            callbacks.append(FusionWeightLogging())
        callbacks += training_callbacks(run, model, processor)
        trainer = DistillationTrainer(
            model=model,
            args=args,
            train_dataset=views["train"] if args.do_train else None,
            eval_dataset=views["validation"],
            data_collator=training_collator,
            compute_metrics=make_compute_metrics(class_names),
            processing_class=processor,
            callbacks=callbacks,
            lr_schedule=lr_schedule,
            decay_all_parameters=run_args.weight_decay_all_parameters,
            teacher_model=teacher,
            kd_loss=model_args.kd_loss,
            kd_weight=model_args.kd_weight if teacher is not None else 0.0,
            kd_temperature=model_args.kd_temperature,
            teacher_cache=teacher_cache,
            # the teacher's own processor: other views are refused, other mean/std re-normalised for it
            teacher_processor=load_teacher_processor(run.teacher) if teacher is not None else None,
        )

        # (zero-shot,) train, save, evaluate, test, figures, card, push
        per_split[split_seed] = finish_split(trainer, run, views)

    if not data_args.seeds():
        return per_split[data_args.split_seed]
    return summarize_splits("student", data_args, training_args, per_split)


if __name__ == "__main__":
    sys.exit(run_cli(main))  # a user's mistake: one message and exit code 2, not a traceback
