"""Command-line arguments of the training scripts: dataclasses for ``HfArgumentParser`` plus YAML recipes.

``--config FILE.yaml`` (else ``configs/<dataset>.yaml``) is read first; flags given on the command line override
it; values that depend on the dataset (output directories, teacher location, student, Hub repo) default from
``--dataset``. Everything a user can get wrong on the command line is checked in ``parse_script_args``, before
any data or model is loaded: fixed choices, dataset options, schedules, checkpoints to resume, the output folder,
the launch (several processes on CPUs) and the split of the global batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.training_args import ParallelMode
from transformers.utils import logging

from ..data import DATASET_NAMES, data_root_tag, default_data_dir, run_name
from ..data.cohort import parse_class_map
from ..data.demo import default_demo_dir
from ..data.layouts import LAYOUTS, breakhis, chaoyang, lunghist700
from ..data.loader import BAD_IMAGE_POLICIES
from ..models.configuration_amlpf import FUSION_MODES
from ..pretrained.prompts import parse_levels
from ..pretrained.weights import is_local_path
from ..training.losses import KD_LOSSES
from ..training.resampling import (
    DEFAULT_FIRST_EPOCH_SAMPLING,
    DEFAULT_MIN_CLASS_SHARE,
    FIRST_EPOCH_SAMPLINGS,
    RESAMPLING_MODES,
)
from ..utils import CONFIG_DIR
from .help import HELP_ALL, HelpAllAction, flag_groups, format_config, format_help
from .launch import (
    available_cpus,
    has_accelerator,
    is_main_process,
    launched_world_size,
    local_world_size,
    report_user_error,
)
from .run_files import checkpoint_folders, checkpoint_problem, newest_complete_checkpoint
from .run_lock import LOCK_NAME, describe_holder, in_use_by

OUTPUT_ROOT_ENV = "AMLPF_OUTPUT_DIR"
# the student of the paper recipes: OpenAI's RN50 CLIP, converted once with `python -m modeling_amlpf.convert`
DEFAULT_STUDENT = "checkpoints/clip-rn50"
logger = logging.get_logger(__name__)

TASKS = (*breakhis.TASKS, *lunghist700.TASKS)
DATASET_TASKS = {"breakhis": breakhis.TASKS, "lunghist700": lunghist700.TASKS}
# torch dtypes of the frozen teacher and the spellings accepted for each (as in --bf16/--fp16 and torch's names)
TEACHER_DTYPES = {"bfloat16": ("bf16",), "float16": ("fp16", "half"), "float32": ("fp32", "float")}

DatasetName = Literal[DATASET_NAMES]
Task = Literal[TASKS]
Magnification = Literal[breakhis.MAGNIFICATIONS]
Resolution = Literal[lunghist700.RESOLUTIONS]
Protocol = Literal[chaoyang.PROTOCOLS]
BadImagePolicy = Literal[BAD_IMAGE_POLICIES]
Fusion = Literal[FUSION_MODES]
Resampling = Literal[RESAMPLING_MODES]
FirstEpochSampling = Literal[FIRST_EPOCH_SAMPLINGS]
KdLoss = Literal[KD_LOSSES]
TeacherDtype = Literal[tuple(TEACHER_DTYPES)]


@dataclass
class DataArguments:
    """Which dataset, where it lives on disk, and how it is split."""

    dataset: DatasetName | None = field(
        default=None,
        metadata={"help": "Required (any letter case): chaoyang, breakhis, lunghist700, imagefolder or demo "
                          "(synthetic)."},
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Dataset root. Default: $AMLPF_DATA_DIR/<dataset>, else data/<dataset>; demo: a cache."
        },
    )
    task: Task | None = field(
        default=None, metadata={"help": "Label set: breakhis 8class (default) or binary; lunghist700 3class (default) "
                                        "or 7class."}
    )
    magnification: Magnification | None = field(
        default=None, metadata={"help": "BreaKHis magnification filter (40X, 40x and 40 all work)."}
    )
    resolution: Resolution | None = field(default=None, metadata={"help": "LungHist700 resolution filter."})
    protocol: Protocol | None = field(
        default=None,
        metadata={"help": "Chaoyang: resplit (group-disjoint by slide) or official (its own test set)."},
    )
    groups_csv: str | None = field(default=None, metadata={"help": "imagefolder: CSV with columns path,group."})
    split_seed: int = field(default=1, metadata={"help": "Seed of the group-disjoint split (1..10 in the paper)."})
    split_seeds: str | None = field(
        default=None, metadata={"help": "Run several splits one after another, e.g. '1-10' or '1,3,5'."}
    )
    test_fraction: float | None = field(
        default=None, metadata={"help": "Share of images in the test part (whole groups are assigned)."}
    )
    val_fraction: float | None = field(
        default=None, metadata={"help": "Share of images in the validation part (whole groups are assigned)."}
    )
    split_file: str | None = field(default=None, metadata={"help": "A split.json exported by an earlier run."})
    train_split_file: str | None = field(default=None, metadata={"help": "Reference-style '<path> <label>' lines."})
    validation_split_file: str | None = field(default=None, metadata={"help": "Reference-style validation lines."})
    test_split_file: str | None = field(default=None, metadata={"help": "Reference-style test lines."})
    external_cohort: bool = field(
        default=False,
        metadata={"help": "Evaluate a trained model (--do_train False --model_name_or_path DIR) on every image of "
                          "--data_dir, without a split (another hospital's cohort)."},
    )
    class_map: str | None = field(
        default=None,
        metadata={"help": "Data class name -> model class name for an evaluation: 'a=b,c=d' or a YAML/JSON file."},
    )
    on_bad_image: BadImagePolicy = field(
        default="error", metadata={"help": "Unreadable images stop the load (error) or are left out (skip)."}
    )
    prompts_file: str | None = field(
        default=None,
        metadata={"help": "Prompts YAML (three levels per class); default: the dataset's bundled prompts."},
    )

    def dataset_options(self) -> dict:
        options = {}
        names = ("task", "magnification", "resolution", "protocol", "groups_csv", "test_fraction", "val_fraction")
        for name in (*names, "split_file"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        parts = {
            "train": self.train_split_file, "validation": self.validation_split_file, "test": self.test_split_file
        }
        if any(parts.values()):
            if not (parts["train"] and parts["test"]):
                raise ValueError(
                    "--train_split_file and --test_split_file go together (--validation_split_file is optional)"
                )
            options["split_files"] = {k: v for k, v in parts.items() if v}
        return options

    def run_name(self) -> str:
        return run_name(self)

    def seeds(self) -> list[int] | None:
        return parse_seeds(self.split_seeds) if self.split_seeds else None


@dataclass
class TeacherArguments:
    """The teacher model (UNI: timm ViT-L/16 + MLP head)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An existing teacher checkpoint (dir or Hub id) to evaluate or fine-tune further."},
    )
    teacher_config: str | None = field(
        default=None,
        metadata={"help": "A config dir/file of the architecture, e.g. configs/models/teacher-tiny. Given on the "
                          "command line, it replaces the recipe's teacher_backbone/teacher_weights."},
    )
    teacher_backbone: str | None = field(
        default=None,
        metadata={"help": "Pretrained backbone: 'hf-hub:MahmoodLab/uni' (gated), another timm name or Hub id."},
    )
    teacher_weights: str | None = field(
        default=None,
        metadata={"help": "Local backbone weights: UNI's pytorch_model.bin (state dict) or .safetensors."},
    )
    head_dropout: float | None = field(default=None, metadata={"help": "Dropout in the MLP head."})


@dataclass
class StudentArguments:
    """The CLIP student and the AMLPF-CLIP recipe (fusion, resampling, distillation)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An existing student checkpoint to evaluate (with --do_train False --do_predict)."},
    )
    student_model: str | None = field(
        default=None,
        metadata={
            "help": "Student to start from: a converted OpenAI/open_clip RN50 dir, an HF CLIP id/dir (PLIP...), "
            "or a preset."
        },
    )
    teacher_model: str | None = field(
        default=None, metadata={"help": "Trained teacher (dir or Hub id); with --split_seeds its split_<k> folders."}
    )
    teacher_dtype: TeacherDtype | None = field(
        default=None,
        metadata={"help": "Frozen teacher's dtype (halves its GPU memory): bfloat16/bf16, float16/fp16, float32."},
    )
    fusion: Fusion | None = field(default=None, metadata={"help": "Prompt-level fusion: learned (paper) or softmax."})
    prompt_levels: str | None = field(
        default=None, metadata={"help": "Comma list of prompt levels out of label,basic,detailed."}
    )
    train_logit_scale: bool | None = field(
        default=None,
        metadata={
            "help": "Train CLIP's logit scale too, as the reference. Else the student checkpoint's own setting "
            "(frozen for converted and Hugging Face CLIPs)."
        },
    )
    resampling: Resampling = field(
        default="difficulty",
        metadata={"help": "none, difficulty (reference) or difficulty_inverse_frequency (paper text)."},
    )
    resample_gamma: float = field(default=2.0, metadata={"help": "Exponent gamma of (1 - p)^gamma."})
    min_class_share: float = field(
        default=DEFAULT_MIN_CLASS_SHARE,
        metadata={
            "help": "Each of K classes gets at least min_class_share / K of an epoch's draws; 0: the reference "
            "formula, stopping where it fails (a class without draws)."
        },
    )
    first_epoch_sampling: FirstEpochSampling = field(
        default=DEFAULT_FIRST_EPOCH_SAMPLING,
        metadata={
            "help": "Resampling's first epoch: replacement (N uniform draws, as the reference) or permutation."
        },
    )
    kd_loss: KdLoss = field(
        default="l2", metadata={"help": "l2 (reference: Frobenius norm over the batch), l2_per_sample, mse or kl."}
    )
    kd_weight: float = field(
        default=1.0, metadata={"help": "Weight of the distillation term; 0 disables the teacher."}
    )
    kd_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the distillation term."})
    teacher_cache: bool = field(
        default=True,
        metadata={
            "help": "Reuse the frozen teacher's logits of views it has seen (exact; distillation only)."
        },
    )
    teacher_cache_max_mb: float | None = field(
        default=None, metadata={"help": "Bound on the teacher cache's memory in MB (default: no bound)."}
    )
    do_zero_shot: bool = field(
        default=False, metadata={"help": "Evaluate the untrained student (prompts only) on test first."}
    )


@dataclass
class RunArguments:
    """Recipe file, schedule, batch and output options shared by both scripts."""

    config: str | None = field(
        default=None,
        metadata={"help": "YAML recipe: shared keys plus teacher:/student: sections, keys are flag names. Default "
                          "configs/<dataset>.yaml when it exists; 'none' skips it. Flags override it."},
    )
    lr_schedule: str | None = field(
        default=None,
        metadata={"help": "Learning rate from each 1-based epoch on, e.g. '1:3e-4,2:1e-4,20:5e-5'."},
    )
    global_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Images per optimiser step over all processes and accumulation steps (paper: 24 teacher, "
                          "18 student)."},
    )
    output_root: str | None = field(
        default=None, metadata={"help": "Root of the default output dirs (default $AMLPF_OUTPUT_DIR or outputs)."}
    )
    weight_decay_all_parameters: bool = field(
        default=True,
        metadata={
            "help": "Apply --weight_decay to every parameter, biases and norms included, as the reference (False: "
            "the Trainer's rule)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into a non-empty --output_dir from scratch. Without it, a checkpoint there is "
                          "resumed and other contents are refused."},
    )
    print_config: bool = field(
        default=False,
        metadata={"help": "Print the effective settings (recipe, values and their source, folders) and exit "
                          "without reading data or loading models."},
    )


def output_name(args) -> str:
    """The run's folder under the output root: ``run_name``, and for ``imagefolder`` the data root's tag
    (``imagefolder-<folder>-<hash>``), so that two cohorts never share output folders or teachers."""
    if args.dataset == "imagefolder":
        return f"imagefolder-{data_root_tag(args.data_dir or default_data_dir('imagefolder'))}"
    return run_name(args)


def output_root(args) -> Path:
    """``--output_root``, else ``$AMLPF_OUTPUT_DIR``, else ``outputs`` (works on a namespace too)."""
    return Path(getattr(args, "output_root", None) or os.environ.get(OUTPUT_ROOT_ENV, "outputs"))


def default_hub_model_id(args, role: str) -> str | None:
    """``amlpf-<run>-<role>`` (e.g. ``amlpf-lunghist700-teacher``) when the run pushes to the Hub, else None:
    a distinct repository per dataset, task and role, not the output folder's name (``teacher``)."""
    if not getattr(args, "push_to_hub", False):
        return None
    name = re.sub(r"[^A-Za-z0-9]+", "-", f"amlpf-{output_name(args)}-{role}").strip("-")
    return name[:96].strip("-")


# Protocol defaults of both scripts (a YAML config or a flag overrides each).
PROTOCOL_DEFAULTS = {
    "do_train": True,
    "do_eval": True,
    "do_predict": True,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "load_best_model_at_end": True,
    "metric_for_best_model": "macro_f1",
    # greater_is_better is left to TrainingArguments: True for a score, False for a metric ending in "loss"
    "save_total_limit": 2,
    "report_to": "none",
    "logging_nan_inf_filter": False,  # the filter costs a host sync every step
    "restore_callback_states_from_checkpoint": True,  # the resampling state (weights, history) on resume
    "max_grad_norm": 0.0,  # the reference does not clip (TrainingArguments' own default clips at 1.0)
    "log_level_replica": "error",  # every process meets the same warnings: the main process prints them once
}


def parse_seeds(text: str) -> list[int]:
    """'1-10' -> [1..10]; '1,3,5' -> [1, 3, 5]; '2-4,7' -> [2, 3, 4, 7]."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise ValueError(f"bad seed range {part!r}")
            seeds.extend(range(lo, hi + 1))
        elif part.isdigit():
            seeds.append(int(part))
        else:
            raise ValueError(f"--split_seeds takes e.g. '1-10' or '1,3,5', got {text!r}")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"--split_seeds must list distinct seeds, got {text!r}")
    return seeds


def parse_lr_schedule(text: str) -> list[tuple[int, float]]:
    """'1:3e-4,2:1e-4,20:5e-5' -> [(1, 3e-4), (2, 1e-4), (20, 5e-5)], sorted; must start at epoch 1."""
    steps = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        try:
            epoch, lr = part.split(":")
            steps.append((int(epoch), float(lr)))
        except ValueError:
            raise ValueError(f"--lr_schedule takes 'EPOCH:LR,...' with 1-based epochs, got {text!r}") from None
    steps.sort()
    if not steps or steps[0][0] != 1:
        raise ValueError(f"--lr_schedule must give the learning rate of epoch 1, got {text!r}")
    return steps


SCRIPT_SECTIONS = ("teacher", "student")
IGNORED_CONFIG_KEYS = ("paper_results",)  # published numbers kept beside the settings (read by the report)


def read_config(path: str | Path, section: str, allowed: set[str] | None = None) -> dict:
    """A YAML config's values for one script: the top-level keys (shared: dataset, split, seed...) updated by
    the ``teacher:`` or ``student:`` section, so one file per dataset serves both scripts. A top-level
    ``paper_results:`` block is not a setting and is skipped. Keys outside ``allowed`` are an error naming them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of flag names to values")
    merged = {k: v for k, v in values.items() if k not in SCRIPT_SECTIONS and k not in IGNORED_CONFIG_KEYS}
    own = values.get(section) or {}
    if not isinstance(own, dict):
        raise ValueError(f"{path}: the '{section}:' section must be a mapping of flag names to values")
    merged.update(own)
    unknown = sorted(set(merged) - allowed) if allowed is not None else []
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {unknown} for the {section} script; keys are flag names without '--' "
            f"(script-specific ones go under '{section}:')"
        )
    return merged


# ------------------------------------------------------------------------------------------ fixed choices
def _choice(choices: tuple[str, ...], aliases: dict[str, str] | None = None, canonical=str.lower, shown=None):
    """An argparse ``type`` for a fixed set of values: any letter case, aliases mapped to their value; anything
    else fails at parse time with the valid values named."""
    aliases = aliases or {}
    by_key = {canonical(c): c for c in choices}

    def convert(value):
        key = canonical(str(value).strip())
        key = aliases.get(key, key)
        if key in by_key:
            return by_key[key]
        raise argparse.ArgumentTypeError(f"invalid choice {value!r}; valid values: {shown or ', '.join(choices)}")

    return convert


def _magnification_key(value: str) -> str:
    value = value.upper()
    return value if value.endswith("X") else f"{value}X"


def _resolution_key(value: str) -> str:
    value = value.lower()
    return value if value.endswith("x") else f"{value}x"


def _prompt_levels(value) -> str:
    """'detailed, label' -> 'label,detailed' (canonical order); unknown, empty or repeated levels fail."""
    try:
        return ",".join(parse_levels(value))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


CHOICE_TYPES = {
    "dataset": _choice(DATASET_NAMES),
    "task": _choice(TASKS),
    "magnification": _choice(breakhis.MAGNIFICATIONS, canonical=_magnification_key),
    "resolution": _choice(lunghist700.RESOLUTIONS, canonical=_resolution_key),
    "protocol": _choice(chaoyang.PROTOCOLS),
    "on_bad_image": _choice(BAD_IMAGE_POLICIES),
    "fusion": _choice(FUSION_MODES),
    "resampling": _choice(RESAMPLING_MODES),
    "first_epoch_sampling": _choice(FIRST_EPOCH_SAMPLINGS),
    "kd_loss": _choice(KD_LOSSES),
    "teacher_dtype": _choice(
        tuple(TEACHER_DTYPES),
        aliases={alias: name for name, spellings in TEACHER_DTYPES.items() for alias in spellings},
        shown=", ".join(f"{name} ({', '.join(spellings)})" for name, spellings in TEACHER_DTYPES.items()),
    ),
    "prompt_levels": _prompt_levels,
}
DATASET_OPTION_FLAGS = ("task", "magnification", "resolution", "protocol", "groups_csv")

USAGE = "%(prog)s --dataset NAME [--config FILE.yaml|none] [--FLAG VALUE ...] [--print_config]"
DESCRIPTION = (
    "Values, lowest precedence first: the script's protocol defaults; the recipe (--config FILE.yaml, else "
    "configs/<dataset>.yaml; --config none skips it); the flags given here; folders derived from --dataset."
)


class ScriptArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` whose fixed-choice flags accept any letter case (and dtype aliases), with a short
    usage line, a grouped ``-h`` (``cli.help``; ``--help-all`` adds every TrainingArguments flag), and whose
    errors print once per ``accelerate launch`` run (``launch.report_user_error``)."""

    def __init__(self, dataclass_types, section: str = "teacher", derived_help: dict | None = None, **kwargs):
        kwargs.setdefault("usage", USAGE)
        kwargs.setdefault("description", DESCRIPTION)
        super().__init__(dataclass_types, **kwargs)
        self.section, self.derived_help = section, dict(derived_help or {})
        self.add_argument(HELP_ALL, action=HelpAllAction, help="every flag, TrainingArguments' included")
        for action in self._actions:  # HfArgumentParser sets `type` itself; ours normalises before `choices`
            if action.dest in CHOICE_TYPES:
                action.type = CHOICE_TYPES[action.dest]

    def format_help(self, everything: bool = False) -> str:
        return format_help(self, self.section, self.derived_help, everything=everything)

    def print_help(self, file=None, everything: bool = False):
        (file or sys.stdout).write(self.format_help(everything=everything))

    def error(self, message):
        usage = self.format_usage() if is_main_process() else ""
        report_user_error(f"{usage}{self.prog}: error: {message}")
        sys.exit(2)

    def given_flags(self, argv: list[str]) -> dict:
        """The flags given in ``argv`` and their (converted, checked) values; ``-h`` prints the help and exits."""
        unset = object()
        probe = argparse.Namespace(**{a.dest: unset for a in self._actions if a.dest != argparse.SUPPRESS})
        namespace, _ = self.parse_known_args(argv, namespace=probe)
        return {k: v for k, v in vars(namespace).items() if v is not unset}


# ---------------------------------------------------------------------------------------------- the parse
class _Sources(dict):
    """Where each value came from, for the effective-arguments log: later steps overwrite earlier ones."""

    def mark(self, names, source: str):
        for name in names:
            self[name] = source


def parse_script_args(
    model_arguments: type, section: str, argv: list[str] | None, derived_defaults, defaults: dict | None = None
) -> tuple:
    """``(DataArguments, model_arguments, RunArguments, TrainingArguments)`` of a training script.

    Defaults, lowest first: ``PROTOCOL_DEFAULTS`` and the script's own ``defaults``; the recipe (``--config``,
    else ``configs/<dataset>.yaml`` when it exists; ``--config none`` skips it; see ``read_config``); then the
    command line wins. What none of them set and depends on the dataset comes from
    ``derived_defaults(namespace) -> dict`` (output and teacher directories, the student, the Hub repo), applied
    to the arguments that are still None. Recipe values go through the parser's own defaults
    (``set_defaults``), so they keep their types; choices are checked for recipe values and flags alike.

    Then, before the dataclasses are built: a teacher architecture chosen on the command line drops the
    recipe's pretrained backbone; an output folder in use by another run is refused; a finished run in it is not
    trained again (the command reports it and exits, or continues it for more epochs); ``--resume_from_checkpoint``
    must name a complete checkpoint, the newest complete checkpoint in the output folder is resumed and other
    contents are refused unless ``--overwrite_output_dir``; a multi-process
    launch on a machine without an accelerator trains data-parallel on CPUs (``use_cpu``); pinned memory and
    DataLoader workers fit the machine. After: ``global_train_batch_size`` is split over the processes and
    accumulation steps. Each mistake exits with status 2 and one message (``ScriptArgumentParser.error``); the
    recipe used and the effective arguments are logged.

    Why not ``HfArgumentParser.parse_yaml_file``/``parse_dict``: they build the dataclasses from a file alone,
    so the file could neither sit below the command line nor have per-script sections without filtering
    ``argv`` by hand; the file's keys are checked against the same dataclass fields that they would check.
    """
    types = (DataArguments, model_arguments, RunArguments, TrainingArguments)
    fields = {f.name for t in types for f in dataclasses.fields(t) if f.init}
    parser = ScriptArgumentParser(types, section=section)
    baseline = vars(parser.parse_known_args([])[0])  # the dataclasses' own defaults, as the parser converts them
    script_defaults = {**PROTOCOL_DEFAULTS, **(defaults or {})}
    parser.set_defaults(**script_defaults)
    parser.derived_help = _derived_help(derived_defaults, {**baseline, **script_defaults})
    sources = _Sources.fromkeys(script_defaults, "script")
    argv = list(sys.argv[1:] if argv is None else argv)
    given = parser.given_flags(argv)  # -h exits here, before anything needs --dataset; bad choices too
    notes: list[str] = []

    # The recipe
    config, recipe_note = _recipe_path(given)
    recipe = {}
    if config is not None:
        try:
            recipe = read_config(config, section, set(fields))
        except (OSError, ValueError) as error:
            parser.error(str(error))
        recipe = _checked_recipe(parser, config, recipe)
        _drop_recipe_backbone(recipe, given, notes)
        parser.set_defaults(**recipe)
        sources.mark(recipe, "recipe")
    namespace = parser.parse_args(argv)
    sources.mark(given, "flag")
    if not namespace.dataset:
        parser.error("--dataset is required (or set 'dataset:' in --config FILE.yaml)")
    _check_dataset_options(parser, namespace)
    derived = {k: v for k, v in derived_defaults(namespace).items() if getattr(namespace, k) is None}
    for name, value in derived.items():
        setattr(namespace, name, value)
    sources.mark((k for k, v in derived.items() if v is not None), "derived")

    # Checks and corrections before TrainingArguments sets up the devices
    _check_values(parser, namespace)
    _check_output_dir(parser, namespace, sources, notes, section)
    _fit_machine(namespace, sources, notes)
    global_batch = _global_batch(parser, namespace, given, recipe, config, notes)

    data_args, model_args, run_args, training_args = _build(parser, types, namespace)
    _check_distributed(parser, training_args)
    if global_batch is not None:
        _split_global_batch(parser, training_args, global_batch, notes)
        namespace.per_device_train_batch_size = training_args.per_device_train_batch_size
        sources["per_device_train_batch_size"] = "auto"
    _note_kd_scaling(model_args, training_args, notes)
    if training_args.do_train:
        notes.append(model_selection_note(training_args))
        if training_args.max_grad_norm and training_args.max_grad_norm > 0:
            notes.append(
                f"Gradient clipping is on: max_grad_norm {training_args.max_grad_norm} "
                f"[{sources.get('max_grad_norm', 'default')}]; the reference does not clip (--max_grad_norm 0)"
            )
    if run_args.print_config:
        missing = missing_model_sources(namespace)
        notes += [f"{flag} {path}: not found (the run would stop there)" for flag, path in missing]
        if is_main_process():
            folders = run_folders(namespace, section)
            groups = flag_groups(parser, section)
            print(format_config(parser.prog, recipe_note, namespace, sources, folders, notes, groups, baseline),
                  end="", flush=True)
        sys.exit(0)
    if is_main_process():
        logger.info(recipe_note)
        for note in notes:
            logger.info(note)
        logger.info(_effective_arguments(namespace, baseline, sources))
    return data_args, model_args, run_args, training_args


def _recipe_path(given: dict) -> tuple[str | None, str]:
    """The recipe file to read (or None) and the line that says which one applies."""
    config, dataset = given.get("config"), given.get("dataset")
    if config is not None and config.lower() == "none":
        return None, "Recipe: none (--config none): flags and TrainingArguments' own defaults apply"
    if config is not None:
        return config, f"Recipe: {config} (--config); flags override it"
    if dataset and (CONFIG_DIR / f"{dataset}.yaml").is_file():
        path = str(CONFIG_DIR / f"{dataset}.yaml")
        return path, f"Recipe: {path} (the paper's settings for {dataset}); flags override it, --config none skips it"
    where = f"no configs/{dataset}.yaml" if dataset else "no --dataset on the command line"
    return None, f"Recipe: none ({where}): flags and TrainingArguments' own defaults apply"


def _checked_recipe(parser: ScriptArgumentParser, config: str, recipe: dict) -> dict:
    """The recipe's values of fixed-choice flags, checked and normalised as the same flags would be."""
    checked = dict(recipe)
    for name, value in recipe.items():
        if name in CHOICE_TYPES and value is not None:
            value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            try:
                checked[name] = CHOICE_TYPES[name](value)
            except argparse.ArgumentTypeError as error:
                parser.error(f"{config}: {name}: {error}")
    return checked


def _drop_recipe_backbone(recipe: dict, given: dict, notes: list[str]) -> None:
    """A teacher architecture chosen on the command line (``--teacher_config``, ``--model_name_or_path``)
    wins over the recipe's pretrained backbone, which belongs to the recipe's architecture (UNI's ViT-L/16)."""
    chosen = [f"--{name}" for name in ("teacher_config", "model_name_or_path") if name in given]
    if not chosen:
        return
    for name in ("teacher_backbone", "teacher_weights"):
        if name in recipe and name not in given:
            notes.append(
                f"{' and '.join(chosen)} given: the recipe's {name} ({recipe.pop(name)}) does not apply; "
                f"pass --{name} to use one with this architecture"
            )


def _derived_help(derived_defaults, defaults: dict) -> dict[str, str]:
    """What the dataset-derived defaults are, for ``-h``: ``derived_defaults`` of an example run with
    ``<dataset>`` put back in place of the example's name."""
    example = "lunghist700"
    probe = argparse.Namespace(**{**defaults, "dataset": example, "push_to_hub": True})
    shown = {}
    for name, value in derived_defaults(probe).items():
        if value:
            text = str(value).replace(example, "<dataset>")
            shown[name] = text + (" with --push_to_hub" if name == "hub_model_id" else "")
    return shown


def teacher_folder(ns, split_seed: int) -> str:
    """The teacher a student run of ``split_seed`` loads: ``<teacher_model>/split_<k>`` when ``--split_seeds``
    trained one per split there, else ``--teacher_model``."""
    path = ns.teacher_model
    if ns.split_seeds and (Path(path) / f"split_{split_seed}").is_dir():
        return str(Path(path) / f"split_{split_seed}")
    return path


def missing_teachers(ns) -> list[str]:
    """The local teacher folders a distillation run needs but that hold no trained model (no config.json)."""
    if not getattr(ns, "teacher_model", None) or not ns.do_train or not ns.kd_weight > 0:
        return []
    seeds = parse_seeds(ns.split_seeds) if ns.split_seeds else [ns.split_seed]
    folders = dict.fromkeys(teacher_folder(ns, seed) for seed in seeds)
    return [path for path in folders if is_local_path(path) and not (Path(path) / "config.json").is_file()]


def missing_model_sources(ns) -> list[tuple[str, str]]:
    """``(flag, path)`` of each local model folder or file the run would load but that is not there: the teacher
    of a distillation (per split), the student to start from, ``--model_name_or_path``, ``--teacher_config``,
    ``--teacher_weights``. Hub ids are not checked (that needs the network)."""
    missing = [("--teacher_model", path) for path in missing_teachers(ns)]
    sources = ["model_name_or_path", "teacher_config", "teacher_weights"]
    if not getattr(ns, "model_name_or_path", None) and ns.do_train:
        sources.append("student_model")
    for name in sources:
        value = getattr(ns, name, None)
        local = value and (is_local_path(value) or value == DEFAULT_STUDENT)
        if local and not Path(value).expanduser().exists():
            missing.append((f"--{name}", value))
    return missing


def check_model_sources(data_args, model_args, training_args) -> None:
    """Refuse a run whose teacher, student or checkpoint is missing on disk, right after the parse and before any
    data or model loads (``FileNotFoundError``: one message and exit code 2). The teacher a student needs is the
    common case: train it first, point at it, or train without distillation."""
    ns = argparse.Namespace(**vars(data_args), **vars(model_args), do_train=training_args.do_train)
    problems = []
    for flag, path in missing_model_sources(ns):
        if flag == "--teacher_model":
            problems.append(
                f"no trained teacher at {path}: run `python train_teacher.py --dataset {data_args.dataset}` with the "
                "same dataset options and split seed(s) first, or pass --teacher_model PATH_OR_HUB_ID, or "
                "--kd_weight 0 to train without distillation"
            )
        elif flag == "--student_model":
            problems.append(
                f"no student model at {path}. Convert OpenAI's RN50 CLIP once with `python -m modeling_amlpf.convert "
                f"open_clip --checkpoint RN50.pt --model RN50 --output_dir {path}`, or pass --student_model (an HF "
                "CLIP id such as vinid/plip, a converted dir, or configs/models/student-tiny), or set "
                "$AMLPF_STUDENT_MODEL"
            )
        else:
            problems.append(f"{flag} {path}: no such file or folder")
    if problems:
        raise FileNotFoundError("; ".join(problems))


def run_folders(ns: argparse.Namespace, section: str) -> dict[str, str]:
    """The folders a command reads and writes, as ``--print_config`` shows them (nothing is read)."""
    data_dir = ns.data_dir or default_data_dir(ns.dataset)
    if ns.dataset == "demo" and not ns.data_dir:
        data_dir, state = default_demo_dir(), "SYNTHETIC images, generated there on first use"
    else:
        state = "exists" if Path(data_dir).is_dir() else "not found"
    folders = {"data": f"{data_dir} ({state})", "output": ns.output_dir}
    if ns.resume_from_checkpoint:
        folders["resume"] = str(ns.resume_from_checkpoint)
    if section == "student":
        if ns.do_train and ns.kd_weight > 0:
            folders["teacher"] = ns.teacher_model + (" (not found)" if missing_teachers(ns) else "")
        else:
            folders["teacher"] = "none (no distillation)" if ns.do_train else "none (an evaluation)"
    model = ns.model_name_or_path or (ns.student_model if section == "student" else None)
    if section == "teacher" and not model:
        model = ns.teacher_config or ns.teacher_weights or ns.teacher_backbone or "a new teacher (random init)"
    missing = {path for _, path in missing_model_sources(ns)}
    folders[section] = model + (" (not found)" if model in missing else "")
    return folders


def _check_dataset_options(parser: ScriptArgumentParser, ns: argparse.Namespace) -> None:
    accepted = set(LAYOUTS[ns.dataset].options) if ns.dataset in LAYOUTS else set()
    own = [f"--{name}" for name in DATASET_OPTION_FLAGS if name in accepted]
    for name in DATASET_OPTION_FLAGS:
        if getattr(ns, name) is not None and name not in accepted:
            options = f"its options: {', '.join(own)}" if own else "it takes none of these options"
            parser.error(f"--{name} does not apply to --dataset {ns.dataset}; {options}")
    tasks = DATASET_TASKS.get(ns.dataset, ())
    if ns.task is not None and ns.task not in tasks:
        parser.error(f"--task {ns.task} does not apply to --dataset {ns.dataset}; its tasks: {', '.join(tasks)}")


def _check_values(parser: ScriptArgumentParser, ns: argparse.Namespace) -> None:
    """Values that are not a fixed choice but can still be checked before anything loads."""
    try:
        if ns.lr_schedule:
            parse_lr_schedule(ns.lr_schedule)
        if ns.split_seeds:
            parse_seeds(ns.split_seeds)
        if getattr(ns, "class_map", None):
            parse_class_map(ns.class_map)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    share = getattr(ns, "min_class_share", None)
    if share is not None and not 0.0 <= share <= 1.0:
        parser.error(f"--min_class_share must lie in [0, 1] (0: the reference formula), got {share}")
    cache_mb = getattr(ns, "teacher_cache_max_mb", None)
    if cache_mb is not None and cache_mb < 0:
        parser.error(f"--teacher_cache_max_mb must be >= 0 (0 stores nothing; omit it for no bound), got {cache_mb}")
    if getattr(ns, "external_cohort", False) and ns.split_seeds:
        parser.error("--external_cohort evaluates every image of the folder, the same for every seed: "
                     "drop --split_seeds")


def _check_output_dir(
    parser: ScriptArgumentParser, ns: argparse.Namespace, sources: _Sources, notes: list[str], section: str
):
    """As the Hugging Face example scripts: resume the newest complete checkpoint of the output folder, refuse
    other contents unless ``--overwrite_output_dir``; a ``--resume_from_checkpoint`` that is no complete checkpoint
    fails here, naming the file. A folder in use by another run is refused; a finished run is not trained again
    (:func:`_check_finished_run`)."""
    if not ns.do_train or not ns.output_dir:
        return
    out = Path(ns.output_dir)
    holder = in_use_by(out)
    if holder is not None:
        parser.error(
            f"--output_dir {out} is in use by another run: {describe_holder(holder)}. Wait for it to end or stop it, "
            "or choose another --output_dir"
        )
    if not ns.overwrite_output_dir and _check_finished_run(parser, ns, out, sources, notes, section):
        return
    resume = ns.resume_from_checkpoint
    if resume is not None:
        text = str(resume).strip()
        if text.lower() in ("", "false", "none"):
            ns.resume_from_checkpoint = None
        elif ns.split_seeds and len(parse_seeds(ns.split_seeds)) > 1:
            parser.error("--resume_from_checkpoint resumes one run; with --split_seeds run the unfinished split "
                         "alone (--split_seed K --output_dir <output_dir>/split_K --resume_from_checkpoint ...)")
        elif text.lower() == "true":
            ns.resume_from_checkpoint = _newest_complete(parser, out, "--resume_from_checkpoint True: ")
            if ns.resume_from_checkpoint is None:
                parser.error(f"--resume_from_checkpoint True: --output_dir {out} holds no checkpoint-<step> folder")
            sources["resume_from_checkpoint"] = "auto"
        else:
            ns.resume_from_checkpoint = _checked_checkpoint(parser, text)
        if ns.resume_from_checkpoint is not None:
            return
    if ns.overwrite_output_dir or not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)  # a stale lock of a killed run
    if not entries:
        return
    last = None if ns.split_seeds else _newest_complete(parser, out, "")
    if last is None:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        parser.error(
            f"--output_dir {out} already exists and is not empty ({shown}) and holds no checkpoint to resume: pass "
            "--overwrite_output_dir to train into it from scratch, or choose another --output_dir"
        )
    ns.resume_from_checkpoint = last
    sources["resume_from_checkpoint"] = "auto"
    notes.append(
        f"Checkpoint detected, resuming training at {last}. To avoid this behavior, change the `--output_dir` or "
        "add `--overwrite_output_dir` to train from scratch."
    )


def _newest_complete(parser: ScriptArgumentParser, out: Path, flag: str) -> str | None:
    """The newest complete checkpoint of ``out`` (None when it has no checkpoint folder); the incomplete newer
    ones are named in a warning, and a folder with only incomplete ones is refused, each problem named."""
    last, skipped = newest_complete_checkpoint(out)
    if last is None and skipped:
        parser.error(
            f"{flag}--output_dir {out} holds no complete checkpoint to resume ({'; '.join(skipped)}): pass "
            "--overwrite_output_dir to train into it from scratch, or choose another --output_dir"
        )
    if skipped and is_main_process():
        logger.warning(f"skipping incomplete checkpoints (newest first): {'; '.join(skipped)}; resuming {last}")
    return last


def _checked_checkpoint(parser: ScriptArgumentParser, path: str) -> str:
    """``path`` when it is a complete Trainer checkpoint, else the reason it is not (the file named)."""
    folder = Path(path)
    if not folder.is_dir():
        parser.error(f"--resume_from_checkpoint {path}: no such folder")
    if not (folder / TRAINER_STATE_NAME).is_file() and not _checkpoint_step(str(folder)):
        inner, _ = newest_complete_checkpoint(folder)
        hint = (
            f"it holds checkpoint folders; the last is {inner}" if inner else
            "it holds checkpoint folders, none of them complete" if checkpoint_folders(folder) else
            "a checkpoint is one of the checkpoint-<step> folders that training writes into --output_dir (it may "
            "also have stopped while this one was being saved)"
        )
        parser.error(f"--resume_from_checkpoint {path} is not a Trainer checkpoint (no {TRAINER_STATE_NAME}): {hint}")
    problem = checkpoint_problem(folder)
    if problem is not None:
        parser.error(
            f"--resume_from_checkpoint {path} cannot be resumed: {problem}. A checkpoint is one of the "
            "checkpoint-<step> folders that training writes into --output_dir; --resume_from_checkpoint True takes "
            "the newest complete one"
        )
    return str(folder)


def finished_run_state(folder: str | Path) -> dict | None:
    """The final ``trainer_state.json`` of a finished training run in ``folder`` (the scripts save it beside the
    final weights once training ends: ``global_step`` reached ``max_steps``), else None."""
    folder = Path(folder)
    state_path = folder / TRAINER_STATE_NAME
    if not state_path.is_file() or not any((folder / name).is_file() for name in FINAL_WEIGHTS):
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        steps, max_steps = int(state["global_step"]), int(state["max_steps"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return state if 0 < max_steps <= steps else None


def _check_finished_run(parser, ns: argparse.Namespace, out: Path, sources: _Sources, notes: list[str],
                        section: str) -> bool:
    """A training command pointed at a finished run never retrains it nor rewrites its records: with the epochs it
    was trained for (or fewer: refused) nothing runs and the command says how to use the run; more epochs
    (``--num_train_epochs``, or ``--max_steps``) continue from its last checkpoint. True when that continuation
    was set up (``ns.resume_from_checkpoint``); exits (status 0) when the run is complete."""
    seeds = parse_seeds(ns.split_seeds) if ns.split_seeds else None
    folders = [out / f"split_{seed}" for seed in seeds] if seeds else [out]
    states = [finished_run_state(folder) for folder in folders]
    if not all(states):
        return False
    state = states[0]
    by_steps = ns.max_steps is not None and ns.max_steps > 0
    done = int(state["global_step"]) if by_steps else float(state.get("epoch") or 0.0)
    requested = ns.max_steps if by_steps else float(ns.num_train_epochs)
    unit, flag = ("steps", "--max_steps") if by_steps else ("epochs", "--num_train_epochs")
    script = "train_teacher.py" if section == "teacher" else "distill_student.py"
    if requested < done - 1e-6:
        parser.error(
            f"--output_dir {out} holds a finished run of {done:g} {unit}; {flag} {requested:g} is fewer. Evaluate it "
            f"with --do_train False --model_name_or_path {folders[0]}, train a shorter run into another "
            f"--output_dir, or pass --overwrite_output_dir to replace it"
        )
    missing = [str(f / RESULTS_FILE) for f in folders if ns.do_predict and not (f / RESULTS_FILE).is_file()]
    if requested <= done + 1e-6 and not missing:
        if is_main_process():
            print(_finished_run_report(ns, folders, states, done, unit, flag, script), flush=True)
        sys.exit(0)
    if requested <= done + 1e-6 and seeds:
        return False  # a split stopped before its records: the root folder is refused below
    if seeds:
        parser.error(
            f"--output_dir {out} holds finished runs of {done:g} {unit}; to train a split longer, run it alone: "
            f"--split_seed K --output_dir {out}/split_K {flag} {requested:g}"
        )
    last = _checked_checkpoint(parser, str(ns.resume_from_checkpoint)) if _explicit(ns.resume_from_checkpoint) else (
        newest_complete_checkpoint(out)[0]
    )
    last_step = _checkpoint_step(last)
    if last is None or last_step != int(state["global_step"]):
        kept = f"{last} is not its last checkpoint" if last else "it kept no complete checkpoint"
        if missing:
            parser.error(
                f"--output_dir {out} holds a run whose training finished ({done:g} {unit}) but {missing[0]} is "
                f"missing, and {kept}: write its records with --do_train False --model_name_or_path {out}, or pass "
                "--overwrite_output_dir to train again"
            )
        parser.error(
            f"--output_dir {out} holds a finished run of {done:g} {unit} (step {state['global_step']}), but {kept}: "
            f"continuing needs checkpoint-{state['global_step']} (removed by --save_total_limit 1 with "
            "--load_best_model_at_end). Pass --overwrite_output_dir to train again from scratch"
        )
    ns.resume_from_checkpoint = last
    sources["resume_from_checkpoint"] = "auto"
    if missing:  # stopped after training, before its records: the final checkpoint trains nothing and writes them
        notes.append(f"{out} holds a run whose training finished ({done:g} {unit}) but {missing[0]} is missing (it "
                     f"stopped before its records were written): resuming {last} trains nothing and writes them")
    else:
        notes.append(f"{out} holds a finished run of {done:g} {unit}: {flag} {requested:g} continues it from {last}")
    return True


FINAL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
RESULTS_FILE = "test_results.json"  # the records of a finished run, written after its training (--do_predict)
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")


def _explicit(resume) -> bool:
    return resume is not None and str(resume).strip().lower() not in ("", "false", "none", "true")


def _checkpoint_step(path: str | None) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", Path(path).name) if path else None
    return int(match.group(1)) if match else None


def _finished_run_report(ns, folders: list[Path], states: list[dict], done: float, unit: str, flag: str,
                         script: str) -> str:
    """What a finished run is and the commands that use it; nothing was trained or written."""
    root = Path(ns.output_dir)
    lines = [f"{root} holds a finished run: nothing was trained and no file was written."]
    for folder, state in zip(folders, states):
        where = f"  {folder.name}: " if len(folders) > 1 else "  "
        lines.append(f"{where}trained {float(state.get('epoch') or 0):g} epochs ({state['global_step']} steps)")
        if state.get("best_model_checkpoint"):
            metric = ns.metric_for_best_model or "loss"
            best = state.get("best_metric")
            shown = f", validation {metric} {best:.4g}" if isinstance(best, (int, float)) else ""
            lines.append(f"{where}selected checkpoint: {Path(state['best_model_checkpoint']).name}{shown}")
        results = _read_json_dict(folder / "test_results.json")
        shown = [f"{name} {results[f'test_{name}']:.4g}" for name in HEADLINE_METRICS
                 if isinstance(results.get(f"test_{name}"), (int, float))]
        recorded = f"{', '.join(shown)} (all in {folder / 'test_results.json'})" if shown else "none recorded"
        lines.append(f"{where}test metrics: {recorded}")
    if len(folders) > 1 and (root / "splits_summary.md").is_file():
        lines.append(f"  summary over the splits: {root / 'splits_summary.md'}")
    dataset = f"--dataset {ns.dataset} " if ns.dataset else ""
    dataset += f"--data_dir {ns.data_dir} " if ns.data_dir else ""
    lines += [
        f"To evaluate it:   python {script} {dataset}--do_train False --model_name_or_path {folders[0]}",
        "To train again:   the same command with --overwrite_output_dir (replaces the run)",
        f"To train longer:  the same command with {flag} larger than {done:g} (continues from the last checkpoint)",
    ]
    return "\n".join(lines)


def _read_json_dict(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _fit_machine(ns: argparse.Namespace, sources: _Sources, notes: list[str]) -> None:
    """Settings that must match the machine before TrainingArguments sets up the devices."""
    processes = launched_world_size()
    accelerator = has_accelerator()
    if processes > 1 and not ns.use_cpu and not accelerator:
        # accelerate starts gloo only with cpu=True; otherwise every process would train alone on all the data
        ns.use_cpu = True
        sources["use_cpu"] = "auto"
        notes.append(
            f"{processes} processes launched on a machine without an accelerator: use_cpu=True, so that they train "
            "data-parallel on CPUs (gloo) instead of as independent copies"
        )
    if ns.dataloader_pin_memory and (ns.use_cpu or not accelerator):
        ns.dataloader_pin_memory = False  # pinned memory only helps copies to an accelerator (and warns without)
        sources["dataloader_pin_memory"] = "auto"
    cpus, local = available_cpus(), local_world_size()
    if ns.dataloader_num_workers > cpus // local:
        notes.append(
            f"dataloader_num_workers {ns.dataloader_num_workers} lowered to {cpus // local}: this machine has {cpus} "
            f"CPU core(s) for {local} process(es)"
        )
        ns.dataloader_num_workers = cpus // local
        sources["dataloader_num_workers"] = "auto"


def _global_batch(parser, ns, given: dict, recipe: dict, config, notes: list[str]) -> int | None:
    """The global batch to split, or None when the per-device batch is set directly."""
    if ns.global_train_batch_size is None:
        return None
    if "per_device_train_batch_size" in given:
        if "global_train_batch_size" in given:
            parser.error("give --global_train_batch_size or --per_device_train_batch_size, not both")
        notes.append(
            f"--per_device_train_batch_size {ns.per_device_train_batch_size} given: the recipe's "
            f"global_train_batch_size {ns.global_train_batch_size} does not apply"
        )
        ns.global_train_batch_size = None
        return None
    if "global_train_batch_size" not in given and "per_device_train_batch_size" in recipe:
        parser.error(f"{config} sets both global_train_batch_size and per_device_train_batch_size; keep one")
    if ns.global_train_batch_size < 1:
        parser.error(f"--global_train_batch_size must be positive, got {ns.global_train_batch_size}")
    return ns.global_train_batch_size


def _build(parser: ScriptArgumentParser, types, namespace: argparse.Namespace) -> tuple:
    """The dataclasses from the final namespace (as ``parse_args_into_dataclasses``); their own checks
    (TrainingArguments' __post_init__) fail as parse errors."""
    built = []
    for dtype in types:
        inputs = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(dtype) if f.init}
        try:
            built.append(dtype(**inputs))
        except ValueError as error:
            parser.error(str(error))
    return tuple(built)


def _check_distributed(parser: ScriptArgumentParser, training_args: TrainingArguments) -> None:
    """Refuse a launch of several processes that TrainingArguments did not make data-parallel."""
    processes = launched_world_size()
    if processes > 1 and training_args.parallel_mode != ParallelMode.DISTRIBUTED:
        parser.error(
            f"launched as {processes} processes, but they are not set up as one distributed run (parallel mode "
            f"{training_args.parallel_mode.value}): each would train its own copy on all the data. On CPUs pass "
            "--use_cpu True (or accelerate launch --cpu); on accelerators start one process per device"
        )


def _split_global_batch(parser, training_args: TrainingArguments, global_batch: int, notes: list[str]) -> None:
    """per_device_train_batch_size = global batch / (processes x gradient accumulation steps), exactly."""
    processes = training_args.world_size * max(1, training_args.n_gpu)
    accumulation = training_args.gradient_accumulation_steps
    split_batches = bool(getattr(training_args.accelerator_config, "split_batches", False))
    # with split_batches accelerate cuts each loaded batch between the processes itself
    divisor = accumulation if split_batches else processes * accumulation
    if global_batch % divisor or (split_batches and (global_batch // accumulation) % processes):
        parser.error(
            f"global_train_batch_size {global_batch} does not divide into {processes} process(es) x {accumulation} "
            f"gradient accumulation step(s): choose a multiple of {processes * accumulation}, change "
            "--gradient_accumulation_steps, or set --per_device_train_batch_size instead"
        )
    per_device = global_batch // divisor
    training_args.per_device_train_batch_size = per_device
    per_process = per_device // processes if split_batches else per_device
    notes.append(
        f"global batch {global_batch} = {processes} process(es) x {accumulation} accumulation step(s) x "
        f"{per_process} per device"
    )


def _note_kd_scaling(model_args, training_args: TrainingArguments, notes: list[str]) -> None:
    """The reference's ``l2`` term is a Frobenius norm over one micro-batch: split into m micro-batches (processes
    x accumulation), its share against the per-sample cross-entropy shrinks by about sqrt(m)."""
    if getattr(model_args, "kd_loss", None) != "l2" or not getattr(model_args, "kd_weight", 0) > 0:
        return
    micro_batches = training_args.world_size * max(1, training_args.n_gpu) * training_args.gradient_accumulation_steps
    if micro_batches > 1:
        notes.append(
            f"kd_loss l2 is a Frobenius norm over each micro-batch of {training_args.per_device_train_batch_size}: "
            f"averaged over {micro_batches} micro-batches its weight against the cross-entropy is about "
            f"1/sqrt({micro_batches}) of one batch of the same global size; --kd_weight "
            f"{model_args.kd_weight * math.sqrt(micro_batches):.3g} restores the reference's single-batch balance, "
            "--kd_loss l2_per_sample does not depend on the split"
        )


def model_selection_note(training_args: TrainingArguments) -> str:
    """The line that names what picks the kept checkpoint (logged when training starts)."""
    if not training_args.load_best_model_at_end:
        return "Model selection: none (load_best_model_at_end False): the last epoch's weights are kept"
    metric = training_args.metric_for_best_model or "loss"
    best = "highest" if training_args.greater_is_better else "lowest"
    return (
        f"Model selection: the checkpoint with the {best} validation {metric} (metric_for_best_model); the "
        "reference kept its best test-accuracy epoch, see docs/differences.md"
    )


def _effective_arguments(namespace: argparse.Namespace, baseline: dict, sources: _Sources) -> str:
    """One line per argument that differs from its dataclass default or was set on purpose, with its source."""
    lines = []
    for name, default in baseline.items():
        value = getattr(namespace, name, None)
        if value == default and sources.get(name) in (None, "script"):
            continue
        shown = "<hidden>" if "token" in name and value else repr(value)  # as TrainingArguments' own repr
        lines.append(f"  {name} = {shown}  [{sources.get(name, 'default')}]")
    return "Effective arguments (not at their defaults; [source]):\n" + "\n".join(lines)


def with_output_dir(
    training_args: TrainingArguments, output_dir: str | Path, split_seed: int | None = None
) -> TrainingArguments:
    """A copy of the training arguments writing to another directory (one per split); with ``split_seed`` and
    ``--push_to_hub``, each split pushes to its own repository (``<hub_model_id>-split<k>``)."""
    changes = {"output_dir": str(output_dir)}
    if split_seed is not None and training_args.push_to_hub and training_args.hub_model_id:
        changes["hub_model_id"] = f"{training_args.hub_model_id}-split{split_seed}"
    return dataclasses.replace(training_args, **changes)
