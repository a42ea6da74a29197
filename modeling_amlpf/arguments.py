"""Command-line arguments of the training scripts: dataclasses for ``HfArgumentParser`` plus YAML configs.

``--config FILE.yaml`` is read first; flags given on the command line override it; values that depend on the
dataset (output directories, data directory, teacher location) default from ``--dataset``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import logging

OUTPUT_ROOT_ENV = "AMLPF_OUTPUT_DIR"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
logger = logging.get_logger(__name__)


@dataclass
class DataArguments:
    """Which dataset, where it lives on disk, and how it is split."""

    dataset: str | None = field(
        default=None, metadata={"help": "Required: chaoyang, breakhis, lunghist700, imagefolder or demo (synthetic)."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Dataset root. Default: $AMLPF_DATA_DIR/<dataset>, else data/<dataset> (demo: a local cache)."},
    )
    task: str | None = field(
        default=None, metadata={"help": "Label set: breakhis 'binary'; lunghist700 '3class' (default) or '7class'."}
    )
    magnification: str | None = field(default=None, metadata={"help": "BreaKHis magnification filter, e.g. 40X."})
    resolution: str | None = field(default=None, metadata={"help": "LungHist700 resolution filter: 20x or 40x."})
    protocol: str | None = field(
        default=None, metadata={"help": "Chaoyang: 'official' test split (default) or 'resplit' (group-disjoint)."}
    )
    groups_csv: str | None = field(default=None, metadata={"help": "imagefolder: CSV with columns path,group."})
    split_seed: int = field(default=1, metadata={"help": "Seed of the group-disjoint split (1..10 in the paper)."})
    split_seeds: str | None = field(
        default=None, metadata={"help": "Run several splits one after another, e.g. '1-10' or '1,3,5'."}
    )
    test_fraction: float | None = field(default=None, metadata={"help": "Share of images in the test part (whole groups are assigned)."})
    val_fraction: float | None = field(default=None, metadata={"help": "Share of images in the validation part (whole groups are assigned)."})
    split_file: str | None = field(default=None, metadata={"help": "A split.json exported by an earlier run."})
    train_split_file: str | None = field(default=None, metadata={"help": "Reference-style '<path> <label>' lines."})
    validation_split_file: str | None = field(default=None, metadata={"help": "Reference-style validation lines."})
    test_split_file: str | None = field(default=None, metadata={"help": "Reference-style test lines."})
    on_bad_image: str = field(default="error", metadata={"help": "'error' (default) or 'skip' unreadable images."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "Prompts YAML (three levels per class); default: the dataset's bundled prompts."}
    )

    def dataset_options(self) -> dict:
        options = {}
        for name in ("task", "magnification", "resolution", "protocol", "groups_csv", "test_fraction", "val_fraction", "split_file"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        parts = {"train": self.train_split_file, "validation": self.validation_split_file, "test": self.test_split_file}
        if any(parts.values()):
            if not (parts["train"] and parts["test"]):
                raise ValueError("--train_split_file and --test_split_file go together (--validation_split_file is optional)")
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
        default=None, metadata={"help": "An existing teacher checkpoint (dir or Hub id) to evaluate or fine-tune further."}
    )
    teacher_config: str | None = field(
        default=None, metadata={"help": "A config dir/file of the architecture, e.g. configs/models/teacher-tiny."}
    )
    teacher_backbone: str | None = field(
        default=None,
        metadata={"help": "Pretrained backbone: 'hf-hub:MahmoodLab/uni' (gated), another timm name or Hub id."},
    )
    teacher_weights: str | None = field(
        default=None, metadata={"help": "Local backbone weights: UNI's pytorch_model.bin (state dict) or .safetensors."}
    )
    head_dropout: float | None = field(default=None, metadata={"help": "Dropout in the MLP head."})


@dataclass
class StudentArguments:
    """The CLIP student and the AMLPF-CLIP recipe (fusion, resampling, distillation)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An existing student checkpoint to evaluate (with --do_train False --do_predict)."}
    )
    student_model: str | None = field(
        default=None,
        metadata={"help": "Student to start from: a converted OpenAI/open_clip RN50 dir, an HF CLIP id/dir (PLIP...), or a preset."},
    )
    teacher_model: str | None = field(
        default=None, metadata={"help": "Trained teacher (dir or Hub id). Default: <output root>/<dataset>/teacher."}
    )
    teacher_dtype: str | None = field(
        default=None, metadata={"help": "Load the frozen teacher in this dtype (e.g. bfloat16) to halve its memory on GPUs."}
    )
    fusion: str | None = field(default=None, metadata={"help": "'learned' (paper) or 'softmax'."})
    prompt_levels: str | None = field(default=None, metadata={"help": "Comma list of label,basic,detailed."})
    train_logit_scale: bool | None = field(default=None, metadata={"help": "Train CLIP's logit scale too."})
    resampling: str = field(
        default="difficulty", metadata={"help": "none, difficulty (reference) or difficulty_inverse_frequency (paper text)."}
    )
    resample_gamma: float = field(default=2.0, metadata={"help": "Exponent gamma of (1 - p)^gamma."})
    kd_loss: str = field(default="l2", metadata={"help": "l2 (reference: Frobenius norm), l2_per_sample, mse or kl."})
    kd_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation term; 0 disables the teacher."})
    kd_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the distillation term."})
    do_zero_shot: bool = field(default=False, metadata={"help": "Evaluate the untrained student (prompts only) on test first."})


@dataclass
class RunArguments:
    """Schedule and protocol options shared by both scripts."""

    lr_schedule: str | None = field(
        default=None,
        metadata={"help": "Epoch-step learning rates, 1-based epochs: '1:3e-4,2:1e-4,20:5e-5' (the paper's teacher)."},
    )
    output_root: str | None = field(
        default=None, metadata={"help": "Root of the default output dirs (default $AMLPF_OUTPUT_DIR or outputs)."}
    )


def run_name(args) -> str:
    """Folder of a dataset/task under the output root, e.g. ``breakhis-binary-40x`` (works on a namespace too)."""
    parts = [args.dataset] + [v for v in (args.task, args.magnification, args.resolution) if v]
    return "-".join(str(p).lower() for p in parts)


def output_root(args) -> Path:
    """``--output_root``, else ``$AMLPF_OUTPUT_DIR``, else ``outputs`` (works on a namespace too)."""
    return Path(getattr(args, "output_root", None) or os.environ.get(OUTPUT_ROOT_ENV, "outputs"))


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
    "greater_is_better": True,
    "save_total_limit": 2,
    "remove_unused_columns": False,
    "report_to": "none",
    "logging_nan_inf_filter": False,  # the filter costs a host sync every step
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


def read_config(path: str | Path, section: str) -> dict:
    """A YAML config's values for one script: the top-level keys (shared: dataset, split, seed...) updated by
    the ``teacher:`` or ``student:`` section, so one file per dataset serves both scripts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of flag names to values")
    merged = {k: v for k, v in values.items() if k not in SCRIPT_SECTIONS}
    own = values.get(section) or {}
    if not isinstance(own, dict):
        raise ValueError(f"{path}: the '{section}:' section must be a mapping of flag names to values")
    merged.update(own)
    return merged


def parse_cli(arg_types: tuple, argv: list[str] | None, derived_defaults, section: str) -> tuple:
    """Parse ``argv`` into ``arg_types`` dataclasses (the last one being ``TrainingArguments``).

    ``--config FILE.yaml`` supplies defaults (see ``read_config``; unknown keys are an error naming them);
    command-line flags win; ``derived_defaults(namespace) -> dict`` supplies dataset-dependent defaults for
    whatever neither set.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--dataset", default=None)
    known, _ = pre.parse_known_args(argv)
    rest = _drop_flag(list(sys.argv[1:] if argv is None else argv), "--config")
    if known.config is None and known.dataset:
        bundled = CONFIG_DIR / f"{known.dataset}.yaml"
        if bundled.is_file():
            logger.warning(f"using {bundled} (the paper's settings for {known.dataset}); --config none skips it")
            known.config = str(bundled)
    if known.config and known.config.lower() == "none":
        known.config = None
    parser = HfArgumentParser(arg_types)
    dests = {action.dest for action in parser._actions}
    config_values: dict = {}
    if known.config:
        config_values = read_config(known.config, section)
        unknown = sorted(set(config_values) - dests)
        if unknown:
            raise ValueError(
                f"{known.config}: unknown keys {unknown} for the {section} script; keys are flag names without '--' "
                f"(script-specific ones go under '{section}:')"
            )
        parser.set_defaults(**config_values)
    if "--dataset" not in rest and not any(a.startswith("--dataset=") for a in rest) and "dataset" not in config_values:
        parser.error("--dataset is required (or set 'dataset:' in --config FILE.yaml)")
    namespace, _ = parser.parse_known_args(rest)
    given = set(config_values) | {a[2:].split("=")[0] for a in rest if a.startswith("--")}
    defaults = {k: v for k, v in derived_defaults(namespace).items() if k not in given}
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(rest, look_for_args_file=False)


def setup_cli(model_arguments: type, argv, derived_defaults, section: str):
    """Parse a script's arguments (data, model, run, TrainingArguments), configure logging, and read the
    learning-rate schedule: the start every training script shares."""
    import logging as std_logging

    import transformers

    data_args, model_args, run_args, training_args = parse_cli(
        (DataArguments, model_arguments, RunArguments, TrainingArguments), argv, derived_defaults, section
    )
    std_logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=std_logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    lr_schedule = parse_lr_schedule(run_args.lr_schedule) if run_args.lr_schedule else None
    return data_args, model_args, run_args, training_args, lr_schedule


def _drop_flag(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def with_output_dir(training_args: TrainingArguments, output_dir: str | Path) -> TrainingArguments:
    """A copy of the training arguments writing to another directory (one per split)."""
    return dataclasses.replace(training_args, output_dir=str(output_dir))
