"""Class prompts at the three AMLPF levels: label, basic sentence, detailed pathology description.

Bundled prompt files live in the repository's ``configs/prompts/`` (one YAML per dataset/task); a user
dataset without one gets :func:`template_prompts`. Every file follows one schema (JSON works too)::

    dataset: chaoyang
    task: colorectal tissue, 4 classes
    class_names: [normal, serrated, adenocarcinoma, adenoma]      # canonical order
    prompts:
      normal: {label: ..., basic: ..., detailed: ...}              # one entry per class, all three levels

Prompts are keyed by class name rather than stored as parallel lists so that a reordering cannot silently
pair a description with the wrong class.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml
from transformers.utils import logging

from ..models.configuration_amlpf import PROMPT_LEVELS  # one definition for models and prompts

logger = logging.get_logger(__name__)

PROMPTS_DIR_ENV = "AMLPF_PROMPTS_DIR"
BUNDLED_PROMPTS_DIR = Path(__file__).resolve().parents[2] / "configs" / "prompts"
PROMPT_FILE_SUFFIXES = (".yaml", ".yml", ".json")
SCHEMA_HINT = (
    "expected keys 'dataset', 'task', 'class_names' (list) and 'prompts' (mapping class name -> "
    "{label, basic, detailed}); see configs/prompts/chaoyang.yaml"
)


def _prompt_dirs() -> list[Path]:
    dirs = [Path(d) for d in os.environ.get(PROMPTS_DIR_ENV, "").split(os.pathsep) if d]
    return dirs + [BUNDLED_PROMPTS_DIR]


def bundled_prompt_names() -> list[str]:
    """Names accepted by :func:`load_prompts` without a path (``$AMLPF_PROMPTS_DIR`` first, then bundled)."""
    names = {p.stem for d in _prompt_dirs() if d.is_dir() for p in d.iterdir() if p.suffix in PROMPT_FILE_SUFFIXES}
    return sorted(names)


def resolve_prompt_file(path_or_name: str | os.PathLike) -> Path:
    """An existing file path, or a name looked up as ``<name>.yaml|.yml|.json`` in the prompt directories."""
    candidate = Path(path_or_name).expanduser()
    if candidate.is_file():
        return candidate
    tried = [str(candidate)]
    if candidate.name == str(path_or_name):  # a bare name, no directory part
        stem = candidate.stem if candidate.suffix in PROMPT_FILE_SUFFIXES else candidate.name
        for directory in _prompt_dirs():
            for suffix in PROMPT_FILE_SUFFIXES:
                path = directory / f"{stem}{suffix}"
                if path.is_file():
                    return path
                tried.append(str(path))
    raise FileNotFoundError(
        f"Prompt file {str(path_or_name)!r} not found (looked at: {', '.join(tried)}). Pass a YAML/JSON file path "
        f"or one of the names {bundled_prompt_names()}; extra directories can be listed in ${PROMPTS_DIR_ENV}."
    )


def _read_mapping(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except ValueError as error:  # json.JSONDecodeError
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    except Exception as error:  # yaml.YAMLError carries the line and column
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping; {SCHEMA_HINT}.")
    return data


def load_prompt_spec(path_or_name: str | os.PathLike) -> dict:
    """Read and validate a prompt file: ``{"path", "dataset", "task", "class_names", "prompts": level -> list}``."""
    path = resolve_prompt_file(path_or_name)
    data = _read_mapping(path)
    class_names = data.get("class_names")
    per_class = data.get("prompts")
    if not isinstance(class_names, list) or not class_names or not isinstance(per_class, dict):
        raise ValueError(f"{path}: {SCHEMA_HINT}.")
    class_names = [_nfc(name) for name in class_names]
    duplicates = sorted({n for n in class_names if class_names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: class_names repeats {duplicates}.")
    per_class = {_nfc(k): v for k, v in per_class.items()}
    _check_same_classes(class_names, list(per_class), f"{path}: its 'prompts' mapping vs its 'class_names' list")

    prompts = {level: [] for level in PROMPT_LEVELS}
    for name in class_names:
        entry = per_class[name]
        if not isinstance(entry, dict) or set(entry) != set(PROMPT_LEVELS):
            found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(
                f"{path}: class {name!r} must have exactly the levels {list(PROMPT_LEVELS)}, found {found}."
            )
        for level in PROMPT_LEVELS:
            text = entry[level]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}: class {name!r}, level {level!r} must be a non-empty string.")
            prompts[level].append(" ".join(text.split()))
    return {
        "path": path,
        "dataset": data.get("dataset"),
        "task": data.get("task"),
        "class_names": class_names,
        "prompts": prompts,
    }


def _nfc(name) -> str:
    """Class names are compared in Unicode NFC: 'é' typed as one code point or as 'e' + accent is one name."""
    return unicodedata.normalize("NFC", str(name))


def _check_same_classes(expected: Sequence[str], found: Iterable[str], where: str) -> None:
    """``expected`` are the classes that must be covered; ``found`` what the file provides."""
    found = list(found)
    expected_set, found_set = set(expected), set(found)
    if expected_set != found_set:
        missing = [n for n in expected if n not in found_set]
        extra = [n for n in found if n not in expected_set]
        parts = []
        if missing:
            parts.append(f"no prompts for {missing}")
        if extra:
            parts.append(f"prompts for classes that are not expected: {extra}")
        folded = {n.casefold(): n for n in expected}
        near = [f"{n!r} ~ {folded[n.casefold()]!r}" for n in extra if n.casefold() in folded]
        hint = f" (these differ only in case: {', '.join(near)})" if near else ""
        raise ValueError(f"{where}: {'; '.join(parts)}{hint}.")


def load_prompts(path_or_name: str | os.PathLike, class_names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Prompts of a file or bundled name (e.g. ``"chaoyang"``), as level -> list aligned with the classes.

    With ``class_names`` (e.g. the dataset's ``ClassLabel`` names), the file must hold the same set of
    classes; the lists are returned in the given order.
    """
    spec = load_prompt_spec(path_or_name)
    file_names = spec["class_names"]
    if class_names is None:
        return spec["prompts"]
    class_names = [_nfc(name) for name in class_names]
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names repeats names: {class_names}.")
    _check_same_classes(class_names, file_names, f"prompt file {spec['path']} (the dataset's classes: {class_names})")
    order = [file_names.index(name) for name in class_names]
    return {level: [texts[i] for i in order] for level, texts in spec["prompts"].items()}


_LETTERS_WITH_VOWEL_SOUND = set("AEFHILMNORSX")  # "an SCC", "an H&E", "a CLL"
_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "uri", "uro", "ure", "ute", "eu", "one", "once")
_VOWEL_SOUND_EXCEPTIONS = ("unin", "unim", "hour", "honest", "honor", "heir")


def indefinite_article(phrase: str) -> str:
    """'a' or 'an' for a class label, by the sound of its first word (good enough for tissue names)."""
    word = phrase.strip().split()[0] if phrase.strip() else ""
    if not word:
        raise ValueError("cannot choose an article for an empty label.")
    letters = re.sub(r"[^0-9A-Za-z]", "", word)
    if len(letters) > 1 and letters.isupper():
        return "an" if letters[0] in _LETTERS_WITH_VOWEL_SOUND else "a"
    lower = word.lower()
    if lower.startswith(_VOWEL_SOUND_EXCEPTIONS):
        return "an"
    if lower.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    return "an" if lower[0] in "aeiou" else "a"


def readable_label(class_name: str) -> str:
    """Folder-style class names as words: ``squamous_cell-carcinoma`` -> ``squamous cell carcinoma``."""
    return " ".join(re.sub(r"[_\-]+", " ", str(class_name)).split())


def _with_tissue(label: str) -> str:
    return label if label.lower().split()[-1] in ("tissue", "mucosa", "parenchyma") else f"{label} tissue"


def template_prompts(class_names: Sequence[str]) -> dict[str, list[str]]:
    """Generic prompts for a user dataset without a prompt file (write a YAML for better detailed prompts)."""
    labels = [readable_label(name) for name in class_names]
    if any(not label for label in labels):
        raise ValueError(f"class names must contain text: {list(class_names)}.")
    return {
        "label": labels,
        "basic": [f"The tissue sample is {indefinite_article(label)} {label}." for label in labels],
        "detailed": [
            f"A histopathology image of {_with_tissue(label)}, stained with hematoxylin and eosin." for label in labels
        ],
    }


def parse_levels(levels: str | Iterable[str] | None) -> tuple[str, ...]:
    """Validate level names (``"label,detailed"``, a list, or None/"all" for all); canonical order."""
    if levels is None or (isinstance(levels, str) and levels.strip().lower() == "all"):
        return PROMPT_LEVELS
    items = [s.strip() for s in levels.split(",")] if isinstance(levels, str) else [str(s).strip() for s in levels]
    items = [s for s in items if s]
    unknown = [s for s in items if s not in PROMPT_LEVELS]
    if unknown:
        raise ValueError(
            f"unknown prompt level(s) {unknown}; choose from {list(PROMPT_LEVELS)} "
            "(e.g. --prompt_levels label,detailed)."
        )
    if not items:
        raise ValueError(f"no prompt level selected; choose from {list(PROMPT_LEVELS)}.")
    if len(set(items)) != len(items):
        raise ValueError(f"prompt levels repeated: {items}.")
    return tuple(level for level in PROMPT_LEVELS if level in items)


def select_levels(prompts: Mapping[str, Sequence[str]], levels: str | Iterable[str] | None) -> dict[str, list[str]]:
    """The chosen levels of ``prompts`` (for the ``--prompt_levels`` ablation), in canonical level order so
    that fusion weight i always belongs to the same level."""
    chosen = parse_levels(levels)
    absent = [level for level in chosen if level not in prompts]
    if absent:
        raise ValueError(f"prompts have no level(s) {absent}; available: {list(prompts)}.")
    return {level: list(prompts[level]) for level in chosen}


# The prompt file bundled for each (dataset, task) in configs/prompts/
BUNDLED_PROMPTS = {
    ("chaoyang", None): "chaoyang",
    ("breakhis", None): "breakhis",
    ("breakhis", "binary"): "breakhis_binary",
    ("lunghist700", None): "lunghist700",
    ("lunghist700", "3class"): "lunghist700",
    ("lunghist700", "7class"): "lunghist700_7class",
    ("demo", None): "demo",
}


def prompts_for_run(
    class_names: Sequence[str], *, dataset: str, task: str | None = None, prompts_file: str | None = None,
    checkpoint: str | None = None,
) -> tuple[dict[str, list[str]] | None, str]:
    """``(prompts, source)``: the prompts a run encodes and where they come from (for the log and summaries).

    A user's ``prompts_file`` always wins (re-encoded into a checkpoint too). A trained ``checkpoint`` otherwise
    keeps its own prompts (None: nothing to re-encode); a new student gets the dataset's bundled prompts, else
    template prompts (warned: they have no detailed descriptions).
    """
    if prompts_file:
        return load_prompts(prompts_file, class_names), f"the prompts file {prompts_file}"
    if checkpoint:
        return None, f"the checkpoint's own prompts ({checkpoint})"
    name = BUNDLED_PROMPTS.get((dataset, task))
    if name is not None:
        return load_prompts(name, class_names), f"the bundled prompts {name!r} (configs/prompts/{name}.yaml)"
    logger.warning(
        f"no bundled prompts for dataset {dataset!r}: using template prompts; pass --prompts_file "
        "with label/basic/detailed prompts per class for the method's detailed level"
    )
    return template_prompts(class_names), "template prompts (no bundled prompts for this dataset)"
