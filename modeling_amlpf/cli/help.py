"""What ``-h``, ``--help-all`` and ``--print_config`` print for the training scripts.

``-h`` shows the project's flags in four groups (data, models, method, run) with the handful of
``TrainingArguments`` flags a run of this project sets, and for each the default that a ``--dataset`` run really
uses: the script's protocol default, "recipe" where ``configs/<dataset>.yaml`` decides, or the folder derived from
``--dataset``. The ~100 other ``TrainingArguments`` flags all work too; ``--help-all`` lists them under one heading.
``--print_config`` prints the effective settings of one command (recipe, values with their source, folders) and
exits before any data or model is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from pathlib import Path

from ..utils import CONFIG_DIR

HELP_ALL = "--help-all"
# Flags shown by -h besides the project's own dataclasses: TrainingArguments flags a run of this project sets.
METHOD_TRAINER_FLAGS = (
    "num_train_epochs", "learning_rate", "weight_decay", "optim", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_grad_norm", "seed",
)
RUN_TRAINER_FLAGS = (
    "output_dir", "do_train", "do_eval", "do_predict", "resume_from_checkpoint", "per_device_eval_batch_size",
    "dataloader_num_workers", "bf16", "use_cpu", "disable_tqdm", "log_level", "push_to_hub", "hub_model_id",
)
MODEL_FLAGS = (
    "model_name_or_path", "teacher_config", "teacher_backbone", "teacher_weights", "student_model", "teacher_model",
    "teacher_dtype",
)
METHOD_FLAGS_FIRST = ("lr_schedule", "global_train_batch_size", "weight_decay_all_parameters")
# Short help of the TrainingArguments flags that -h shows (theirs are written for every model and task).
SHORT_HELP = {
    "num_train_epochs": "Epochs to train.",
    "learning_rate": "Learning rate of epoch 1 (--lr_schedule steps it per epoch).",
    "weight_decay": "Weight decay of the optimiser (see --weight_decay_all_parameters).",
    "optim": "Optimiser (adamw_torch in the paper recipes).",
    "per_device_train_batch_size": "Training images per process and step (or set --global_train_batch_size).",
    "gradient_accumulation_steps": "Steps whose gradients add up before one optimiser step.",
    "max_grad_norm": "Gradient clipping norm (0: none, as the reference code).",
    "seed": "Seed of the model's initialisation, the training views and the sampling (the split: --split_seed).",
    "output_dir": "Where the run writes its model, results and pictures. An evaluation (--do_train False): "
                  "<model>/eval-<run>, or eval-<run>-<data folder>-<hash> with --data_dir.",
    "do_train": "Train (False with --model_name_or_path: evaluate that model).",
    "do_eval": "Evaluate on the validation part after training.",
    "do_predict": "Test on the test part: metrics, confusion matrix, predictions.",
    "resume_from_checkpoint": "A checkpoint-<step> folder to resume (one in --output_dir is resumed by itself).",
    "per_device_eval_batch_size": "Images per process in evaluation.",
    "dataloader_num_workers": "DataLoader worker processes (lowered to the CPU cores of this machine).",
    "bf16": "bfloat16 mixed precision (GPUs).",
    "use_cpu": "Train on CPUs even where an accelerator is present.",
    "disable_tqdm": "No progress bars (the Trainer's, datasets' and the Hub's).",
    "log_level": "Log level of the main process: passive (this project's INFO lines, the libraries' warnings), "
                 "debug, info, warning, error.",
    "push_to_hub": "Upload the trained folder (model, processor, card) to the Hugging Face Hub.",
    "hub_model_id": "Hub repository to push to.",
}
GROUP_TITLES = {
    "data": "data: which images, and how they are split",
    "models": "models: what is trained or evaluated, from which weights",
    "method": "method: the recipe's loss, schedule and batch",
    "run": "run: recipe file, output folders, what runs, hardware",
    "trainer": "Trainer flags: every other transformers.TrainingArguments flag (--help-all lists them)",
}
STUDENT_METHOD_TITLE = "method: AMLPF-CLIP (prompt fusion, resampling, distillation), schedule and batch"


def help_width() -> int:
    """119 columns (the project's line length) on any terminal, so that -h keeps its ~120 lines; wider terminals
    get no more, narrower ones wrap the long lines."""
    return 119


def recipe_files() -> dict[str, Path]:
    """The dataset recipes, ``configs/<dataset>.yaml``, by dataset name."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob("*.yaml"))}


def recipe_keys(section: str) -> dict[str, list[str]]:
    """For each flag set by some recipe (top level or this script's section): the recipes that set it."""
    from .arguments import read_config  # local: arguments imports this module

    keys: dict[str, list[str]] = {}
    for name, path in recipe_files().items():
        for key in read_config(path, section):
            keys.setdefault(key, []).append(name)
    return keys


def flag_groups(parser, section: str) -> dict[str, list[str]]:
    """The dests of each help group, in display order: data, models, method, run, trainer (the rest)."""
    from .arguments import DataArguments, RunArguments

    own = [f.name for t in parser.dataclass_types[:3] for f in _fields(t)]
    data = [name for name in _names(DataArguments) if name != "prompts_file"]
    models = [name for name in MODEL_FLAGS if name in own]
    model_rest = [name for name in _names(parser.dataclass_types[1]) if name not in models]
    method = [*model_rest, *(["prompts_file"] if section == "student" else []), *METHOD_FLAGS_FIRST,
              *METHOD_TRAINER_FLAGS]
    run = [name for name in _names(RunArguments) if name not in METHOD_FLAGS_FIRST] + list(RUN_TRAINER_FLAGS)
    shown = set(data) | set(models) | set(method) | set(run) | {"prompts_file"}  # prompts: the student's only
    rest = [a.dest for a in _actions(parser) if a.dest not in shown]
    return {"data": data, "models": models, "method": method, "run": run, "trainer": rest}


def _fields(dtype):
    return [f for f in dataclasses.fields(dtype) if f.init]


def _names(dtype) -> list[str]:
    return [f.name for f in _fields(dtype)]


def _actions(parser) -> list[argparse.Action]:
    """One action per flag (not the ``--no_<flag>`` twin of a boolean, not -h)."""
    seen, actions = set(), []
    for action in parser._actions:
        if not action.option_strings or action.dest in seen or action.help == argparse.SUPPRESS:
            continue
        if action.dest == "help" or not action.option_strings[0].startswith(f"--{action.dest}"):
            continue
        seen.add(action.dest)
        actions.append(action)
    return actions


def _metavar(action: argparse.Action) -> str:
    if action.choices:
        choices = "{" + ",".join(map(str, action.choices)) + "}"
        return choices if len(choices) <= 60 else "NAME"
    if action.nargs == "?" and action.const is True:
        return "[BOOL]"
    if action.nargs == 0:
        return ""
    kind = getattr(action.type, "__name__", "")
    return {"int": "N", "float": "X"}.get(kind, "VALUE")


def _value(value) -> str:
    if isinstance(value, str):
        return value or "''"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(getattr(value, "value", value))


def shown_default(name: str, action: argparse.Action, recipes: dict[str, list[str]], derived: dict[str, str]) -> str:
    """The default a ``--dataset`` run uses: derived from --dataset, the recipe's, or the script's own."""
    default = action.default
    plain = "" if default is None or default == argparse.SUPPRESS else _value(default)
    plain = derived.get(name, plain)
    if name in recipes and name != "dataset":
        setters = sorted(recipes[name])
        paper = sorted(set(recipe_files()) - {"demo"})
        where = ("recipe" if len(setters) == len(recipe_files()) else "paper recipes" if setters == paper
                 else f"recipe of {', '.join(setters)}")
        return f"[{where}" + (f"; else {plain}]" if plain else "]")
    return f"[default: {plain}]" if plain else ""


def render_group(title: str, actions: list[argparse.Action], texts: dict[str, str], width: int) -> list[str]:
    """A heading and one entry per flag: invocation, help and default, wrapped at ``width``."""
    lines = [title]
    indent = 30
    for action in actions:
        invocation = f"  {action.option_strings[0]} {_metavar(action)}".rstrip()
        text = " ".join(texts[action.dest].split())
        wrapped = textwrap.wrap(text, width - indent, break_on_hyphens=False) or [""]
        if len(invocation) < indent - 1:
            lines.append(invocation.ljust(indent) + wrapped[0])
            wrapped = wrapped[1:]
        else:
            lines.append(invocation)
        lines += [" " * indent + part for part in wrapped]
    return lines


def format_help(parser, section: str, derived: dict[str, str], *, everything: bool = False) -> str:
    """``-h`` (the project's flags and the Trainer flags a run sets) or ``--help-all`` (every flag)."""
    width = help_width()
    recipes = recipe_keys(section)
    by_dest = {action.dest: action for action in _actions(parser)}
    groups = flag_groups(parser, section)
    texts = {}
    for name, action in by_dest.items():
        text = SHORT_HELP.get(name) or (action.help or "").replace("%%", "%")
        texts[name] = f"{text} {shown_default(name, action, recipes, derived)}".strip()
    lines = [parser.format_usage().rstrip(), ""]  # then the description, the groups, where the rest is
    if parser.description:
        lines += textwrap.wrap(" ".join(parser.description.split()), width, break_on_hyphens=False)
    for group, names in groups.items():
        if group == "trainer" and not everything:
            continue
        title = STUDENT_METHOD_TITLE if group == "method" and section == "student" else GROUP_TITLES[group]
        lines.append("")
        lines += render_group(title, [by_dest[n] for n in names if n in by_dest], texts, width)
    if not everything:
        lines.append("")
        lines += textwrap.wrap(
            f"Every other transformers.TrainingArguments flag ({len(groups['trainer'])} more: eval_strategy, "
            f"logging_steps, fp16, ...) works too; {HELP_ALL} lists them. Defaults in [brackets] are those of a "
            "--dataset run: 'recipe' where configs/<dataset>.yaml sets the value.", width, break_on_hyphens=False,
        )
    return "\n".join(lines) + "\n"


class HelpAllAction(argparse.Action):
    """``--help-all``: the help with every ``TrainingArguments`` flag, then exit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help(everything=True)
        parser.exit()


# ---------------------------------------------------------------------------------------------- --print_config
def format_config(script: str, recipe_note: str, namespace: argparse.Namespace, sources: dict, folders: dict,
                  notes: list[str], groups: dict[str, list[str]], baseline: dict) -> str:
    """The effective settings of a command: recipe, each project flag that is set and each Trainer flag not at
    its default with its source, the folders it reads and writes, the notes of the parse (resume, batch split)."""
    lines = [f"{script}: effective settings (--print_config: nothing was loaded; the command would run with these)",
             recipe_note, "", "folders:"]
    lines += [f"  {name:<10} {value}" for name, value in folders.items()]
    for group in ("data", "models", "method", "run", "trainer"):
        entries = []
        for name in groups[group]:
            if not hasattr(namespace, name):
                continue
            value, source = getattr(namespace, name), sources.get(name, "default")
            if group == "trainer" and value == baseline.get(name) and source in ("default", "script"):
                continue
            if value is None and source == "default":  # unset, nothing to say
                continue
            shown = "<hidden>" if "token" in name and value else repr(value)
            entries.append(f"  {name} = {shown}  [{source}]")
        if entries:
            title = "trainer (not at TrainingArguments' defaults)" if group == "trainer" else group
            lines += ["", f"{title}:", *entries]
    if notes:
        lines += ["", "notes:", *(f"  {note}" for note in notes)]
    return "\n".join(lines) + "\n"
