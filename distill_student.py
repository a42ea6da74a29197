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
from huggingface_hub import HfApi
from transformers import AutoModel, AutoTokenizer, set_seed

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
    with_output_dir,
)
from modeling_amlpf.cli.launch import UserError, run_cli, setup_logging
from modeling_amlpf.cli.run_data import (
    check_evaluated_checkpoint,
    check_teacher_split,
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
from modeling_amlpf.pretrained.prompts import load_prompts, parse_levels, select_levels, template_prompts
from modeling_amlpf.pretrained.weights import is_local_path, load_student
from modeling_amlpf.training.resampling import ClassBalancedResampling, FusionWeightLogging
from modeling_amlpf.training.teacher_cache import TeacherLogitCache
from modeling_amlpf.training.teacher_inputs import load_teacher_processor
from modeling_amlpf.training.trainers import DistillationTrainer, training_collator
from modeling_amlpf.training.views import ViewEpochCallback, attach_views

logger = logging.getLogger("distill_student")

STUDENT_ENV = "AMLPF_STUDENT_MODEL"
# the training views' sample_index and view_geometry reach DistillationTrainer.compute_loss (the teacher cache)
STUDENT_DEFAULTS = {"remove_unused_columns": False}
BUNDLED_PROMPTS = {
    ("chaoyang", None): "chaoyang",
    ("breakhis", None): "breakhis",
    ("breakhis", "binary"): "breakhis_binary",
    ("lunghist700", None): "lunghist700",
    ("lunghist700", "3class"): "lunghist700",
    ("lunghist700", "7class"): "lunghist700_7class",
    ("demo", None): "demo",
}


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


def prompts_for(data_args: DataArguments, class_names: list[str], checkpoint: str | None = None):
    """``(prompts, source)``: the prompts to encode and where they come from, for the log and the summaries.

    A user's ``--prompts_file`` always wins (re-encoded into a checkpoint too). A checkpoint (``checkpoint``)
    otherwise keeps its own prompts (None: nothing to re-encode); a new student gets the dataset's bundled
    prompts, else template prompts.
    """
    if data_args.prompts_file:
        return load_prompts(data_args.prompts_file, class_names), f"the prompts file {data_args.prompts_file}"
    if checkpoint:
        return None, f"the checkpoint's own prompts ({checkpoint})"
    name = BUNDLED_PROMPTS.get((data_args.dataset, data_args.task))
    if name is not None:
        return load_prompts(name, class_names), f"the bundled prompts {name!r} (configs/prompts/{name}.yaml)"
    logger.warning(
        f"no bundled prompts for dataset {data_args.dataset!r}: using template prompts; pass --prompts_file "
        "with label/basic/detailed prompts per class for the method's detailed level"
    )
    return template_prompts(class_names), "template prompts (no bundled prompts for this dataset)"


def set_checkpoint_prompts(model, tokenizer, class_names, prompts=None, levels=None, *, training: bool = True):
    """Encode into a trained student exactly the prompts asked for.

    ``prompts`` (a prompts file) are re-encoded; None keeps the checkpoint's own prompt texts. ``levels``
    (``--prompt_levels``) selects levels of those; levels the checkpoint was trained with keep their learned
    fusion weights (with ``fusion="softmax"`` the softmax then runs over the kept levels), so a level ablation
    evaluates the trained model without the dropped levels. A level the checkpoint's fusion never learned has no
    weight to keep: refused in an evaluation, started at the initial weight when training goes on.
    """
    config = model.config
    trained = list(config.prompt_levels)
    levels = list(parse_levels(levels)) if levels else trained
    if prompts is None:
        saved = dict(config.prompts or {})
        available = [level for level in parse_levels(None) if level in saved]  # canonical order
        absent = [level for level in levels if level not in saved]
        if absent:
            raise UserError(
                f"--prompt_levels asks for {absent}, but the checkpoint has prompts for the level(s) {available} "
                "only: pass --prompts_file FILE (label/basic/detailed prompts per class) to encode new ones, or "
                f"choose among {available}"
            )
        if levels == trained:
            return  # the prompts and fusion weights it was trained and saved with
        prompts = saved
    untrained = [level for level in levels if level not in trained]
    if untrained and not training:
        raise UserError(
            f"the checkpoint's fusion was trained on the levels {trained}; {untrained} has no learned fusion weight, "
            f"so an evaluation with it would not be of the trained model: choose --prompt_levels among {trained}"
        )
    learned = dict(zip(trained, model.fusion_weights.detach().clone()))
    model.set_prompts(select_levels(prompts, levels), tokenizer, class_names=class_names, levels=levels)
    if levels != trained:  # set_prompts re-created the fusion weights: put back the learned ones
        with torch.no_grad():
            for i, level in enumerate(levels):
                if level in learned:
                    model.fusion_weights[i] = learned[level]
        kept = {level: round(float(learned[level]), 4) for level in levels if level in learned}
        logger.warning(
            f"prompt levels {levels} of a checkpoint trained with {trained} ({config.fusion} fusion): the kept levels "
            f"keep their learned fusion weights {kept}"
            + (f"; {untrained} start at the initial weight" if untrained else "")
        )


def build_student(model_args: StudentArguments, class_names, prompts=None, *, training: bool = True):
    """The student and its tokenizer, with this dataset's classes and the prompts asked for encoded
    (``prompts_for``; None: a checkpoint's own)."""
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
            raise ValueError("a new student needs prompts (prompts_for)")
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
        model.fusion_weights.data.fill_(model._fusion_init_value())
    if model_args.train_logit_scale is not None:
        config.train_logit_scale = model_args.train_logit_scale
        model.logit_scale.requires_grad_(model_args.train_logit_scale)
    if model_args.model_name_or_path:
        set_checkpoint_prompts(model, tokenizer, class_names, prompts, model_args.prompt_levels, training=training)
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
    lr_schedule = parse_lr_schedule(run_args.lr_schedule) if run_args.lr_schedule else None

    # An evaluation of a trained student (--do_train False --model_name_or_path DIR) leaves DIR as it is: its
    # outputs go to their own folder (DIR/eval-<data> when --output_dir is DIR).
    checkpoint = model_args.model_name_or_path
    evaluating = not training_args.do_train and bool(checkpoint)
    if evaluating:
        training_args = with_output_dir(
            training_args, evaluation_output_dir(training_args.output_dir, checkpoint, data_args)
        )
        if training_args.push_to_hub:
            raise UserError("--push_to_hub with --do_train False would publish an evaluation, not a model")
        if model_args.do_zero_shot:
            logger.warning("--do_zero_shot evaluates the untrained student; the student here is trained: skipped")
            model_args.do_zero_shot = False
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
        # test), the split exported as used, labels (an evaluated checkpoint's classes, --class_map) and prompts
        dd = load_split(data_args, split_seed, training=args.do_train)
        evaluation = {}
        if evaluating:
            relation = check_evaluated_checkpoint(checkpoint, dd, external_cohort=data_args.external_cohort)
            if args.process_index == 0:
                export_run_split(dd, output_dir)  # the images evaluated, under their own class names
            dd, class_facts = match_model_classes(
                dd, model_class_names(checkpoint), data_args.class_map, model_source=f"the student {checkpoint}"
            )
            evaluation = evaluation_facts("student", checkpoint, data_args, dd, relation, class_facts)
        class_names = list(dd["test"].features["label"].names)
        log_run_data(dd, data_args, model_args, output_dir, split_seed=split_seed, training=args.do_train)
        prompts, prompt_source = prompts_for(data_args, class_names, checkpoint=checkpoint)

        # Models (student, frozen teacher) and processor
        model, tokenizer = build_student(model_args, class_names, prompts, training=args.do_train)
        prompts_used = prompt_facts(model, prompt_source)
        logger.info(  # what the results depend on
            f"prompts: {prompt_source}; levels {prompts_used['levels']}, {prompts_used['fusion']} fusion weights "
            + ", ".join(f"{level} = {w:.4f}" for level, w in prompts_used["fusion_weights"].items())
        )
        teacher, teacher_path = load_teacher(model_args, data_args, split_seed, dd) if args.do_train else (None, None)
        processor = load_processor(model_args.model_name_or_path, model_args.student_model)

        # Transforms: 8 crops + 1 global view per image; training views a pure function of (seed, epoch, row),
        # with each view's geometry when the teacher's logits are cached
        teacher_cache = None
        if teacher is not None and model_args.teacher_cache:
            max_mb = model_args.teacher_cache_max_mb
            teacher_cache = TeacherLogitCache(max_bytes=None if max_mb is None else int(max_mb * 2**20))
        views = attach_views(dd, processor, seed=args.seed, view_geometry=teacher_cache is not None)

        def card_facts(test_metrics=None, figures=()) -> ModelCardFacts:
            provenance = read_provenance(dd)
            return ModelCardFacts(
                kind="student",
                dataset=data_args.dataset,
                dataset_options=data_args.dataset_options(),
                split_seed=split_seed,
                split_source=provenance["split_source"],
                group_disjoint=provenance["group_disjoint"],
                class_names=class_names,
                split_sizes={part: len(rows) for part, rows in dd.items()},
                test_metrics=strip_prefix(test_metrics or {}, "test"),
                teacher=teacher_path,
                base_model=model_args.student_model,  # the card keeps Hub ids only
                recipe={
                    "resampling": f"{model_args.resampling} (gamma {model_args.resample_gamma})",
                    "distillation": (
                        f"{model_args.kd_loss}, weight {model_args.kd_weight}, T {model_args.kd_temperature}"
                        if teacher is not None else "off"
                    ),
                    "fusion": model.config.fusion,
                    "prompt levels": ", ".join(model.config.prompt_levels),
                    "lr_schedule": run_args.lr_schedule or str(args.lr_scheduler_type),
                    "epochs": str(args.num_train_epochs),
                },
                hub_model_id=args.hub_model_id,
                synthetic=data_args.dataset == "demo",
                figures=list(figures),
            )

        def loadable_extras(folder: Path) -> None:  # beside the weights of every saved or pushed folder
            tokenizer.save_pretrained(folder)
            write_model_card(folder, card_facts(), model=model)

        # Trainer: CE + kd_weight * distillation loss, class-balanced resampling, the paper's epoch-step schedule;
        # fusion weights logged every epoch; every saved or pushed folder loads on its own
        callbacks = [ViewEpochCallback()]
        if model_args.resampling != "none":
            callbacks.append(
                ClassBalancedResampling(
                    class_names,
                    mode=model_args.resampling,
                    gamma=model_args.resample_gamma,
                    min_class_share=model_args.min_class_share,
                )
            )
        else:
            callbacks.append(FusionWeightLogging())
        if args.do_train:
            callbacks.append(LoadableCheckpoints(loadable_extras, processor=processor))
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
            teacher_processor=load_teacher_processor(teacher_path) if teacher is not None else None,
        )
        run = data_args.run_name()
        if model_args.do_zero_shot:  # the untrained student: prompts only
            score_split(trainer, views["test"], class_names, output_dir, prefix="zero_shot",
                        model_kind="student (zero-shot)", split_name="test", dataset_name=run)

        # Train (model selection on validation), evaluate, predict on test
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
            tokenizer.save_pretrained(output_dir)
        if args.do_eval and len(views["validation"]) == 0:
            logger.info("no validation images (an external cohort): --do_eval skipped")
        elif args.do_eval:
            eval_metrics = trainer.evaluate(metric_key_prefix="eval")
            trainer.log_metrics("eval", eval_metrics)
            save_metrics(trainer, "eval", eval_metrics)
        test_metrics, full_metrics = {}, None
        if args.do_predict:
            test_metrics, full_metrics = score_split(
                trainer, views["test"], class_names, output_dir, prefix="test", model_kind="student",
                split_name="external cohort" if data_args.external_cohort else "test", dataset_name=run,
            )
            trainer.log_metrics("test", test_metrics)

        # Figures (the confusion matrix, training curves), then the model card, or an evaluation's own summary
        figures = []
        if trainer.is_world_process_zero():
            figures = [name for name in ("test_confusion_matrix.png",) if (output_dir / name).is_file()]
            if not evaluating:
                figures += write_run_figures(output_dir, title=run_title("student", run, split_seed))
            if evaluating:
                facts = {**evaluation, "prompts": prompts_used, "metrics": strip_prefix(test_metrics, "test"),
                         "figures": figures}
                write_evaluation_summary(output_dir, facts, full_metrics)
            else:
                write_model_card(output_dir, card_facts(test_metrics, figures), model=trainer.model)
            if test_metrics:
                what = f"{checkpoint} on {data_args.data_dir or run}" if evaluating else f"{run}, split {split_seed}"
                print(f"\nTest metrics (student, {what}):")
                print(render_metrics_table(strip_prefix(test_metrics, "test")))
        if args.push_to_hub:
            push_output_folder(
                HfApi(token=args.hub_token), trainer, output_dir, commit_message=f"AMLPF-CLIP student on {run}"
            )
        per_split[split_seed] = test_metrics

    if not split_seeds:
        return test_metrics
    per_split = {seed: strip_prefix(metrics, "test") for seed, metrics in per_split.items()}
    summary = write_splits_summary(
        training_args.output_dir, per_split, data_args.run_name(), write=training_args.process_index == 0
    )
    if training_args.process_index == 0:
        write_splits_figure(training_args.output_dir, dataset=data_args.run_name(),
                            title=run_title("student", data_args.run_name()))
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main))  # a user's mistake: one message and exit code 2, not a traceback
