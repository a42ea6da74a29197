"""Evaluating a trained model on data whose class folders are named differently: class maps and relabelling.

Another hospital's cohort rarely spells its folders as the training data did ("Tumour" for ``tumor``,
"Normal tissue" for ``normal``). ``--class_map`` maps the data's class names onto the model's, inline
(``"Tumour=tumor,Normal tissue=normal"``) or as a YAML/JSON file (a mapping ``data name: model name``); names
it leaves out must already be model classes. Several data classes may map onto one model class. A data class
that the model lacks is an error (the model cannot predict it); model classes absent from the data are allowed:
the metrics are then computed over the classes present, and their recall is reported as undefined.

Names are compared in Unicode NFC (see ``class_names``); the data's labels become the model's label ids, so the
metrics, the confusion matrix and the report use the model's classes in its own order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from datasets import ClassLabel, DatasetDict

from .class_names import normalize_class_name, normalize_class_names
import yaml

CLASS_MAP_SUFFIXES = (".yaml", ".yml", ".json")
CLASS_MAP_HINT = (
    "--class_map takes 'data name=model name' pairs separated by commas (\"Tumour=tumor,Normal tissue=normal\") "
    "or a YAML/JSON file mapping data class names to model class names"
)


def parse_class_map(text_or_path: str | Mapping | None) -> dict[str, str]:
    """``{data class name: model class name}`` (NFC) from an inline ``a=b,c=d`` string, a YAML/JSON file or a
    mapping; ``{}`` for None/empty."""
    if not text_or_path:
        return {}
    if isinstance(text_or_path, Mapping):
        pairs = list(text_or_path.items())
        where = "the class map"
    else:
        text = str(text_or_path)
        path = Path(text).expanduser()
        if path.suffix.lower() in CLASS_MAP_SUFFIXES or path.is_file():
            pairs, where = _read_map_file(path), str(path)
        else:
            pairs, where = _parse_inline(text), f"--class_map {text!r}"
    result: dict[str, str] = {}
    for key, value in pairs:
        if not str(key).strip() or value is None or not str(value).strip():
            raise ValueError(f"{where}: empty class name in {key!r} -> {value!r}; {CLASS_MAP_HINT}.")
        key, value = normalize_class_name(str(key).strip()), normalize_class_name(str(value).strip())
        if key in result and result[key] != value:
            raise ValueError(f"{where}: {key!r} is mapped twice ({result[key]!r} and {value!r}).")
        result[key] = value
    return result


def _parse_inline(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        if not item.strip():
            continue
        if item.count("=") != 1:
            raise ValueError(f"--class_map: {item.strip()!r} is not 'data name=model name'; {CLASS_MAP_HINT}.")
        key, value = item.split("=")
        pairs.append((key, value))
    return pairs


def _read_map_file(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"--class_map file {path} does not exist; {CLASS_MAP_HINT}.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError: both carry the line
        raise ValueError(f"{path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {error}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} must hold a mapping of data class names to model class names; {CLASS_MAP_HINT}.")
    return list(data.items())


def suggest_class_map(data_name: str, model_name: str) -> str:
    """A ``--class_map`` the parser accepts for one pair: inline when neither name holds ``,`` or ``=`` (or
    surrounding spaces, which inline parsing strips), else a YAML file whose entry quotes both names."""
    names = (data_name, model_name)
    if all(name and "," not in name and "=" not in name and name == name.strip() for name in names):
        return f'--class_map "{data_name}={model_name}" (or a YAML/JSON file)'
    entry = f"{json.dumps(data_name, ensure_ascii=False)}: {json.dumps(model_name, ensure_ascii=False)}"
    return f"a YAML file holding the line {entry} (--class_map map.yaml): its name cannot be written inline"


def map_class_names(
    data_classes: Sequence[str], model_classes: Sequence[str], class_map: Mapping[str, str], *, data_source: str,
    model_source: str,
) -> tuple[list[int], list[str]]:
    """The model label id of every data class (in data label order) and the model classes absent from the data.

    Raises one ValueError naming every problem: map entries that name no data class or no model class, and
    data classes that are no model class after mapping (with the fix).
    """
    data_classes = normalize_class_names(data_classes, source=data_source)
    model_classes = normalize_class_names(model_classes, source=model_source)
    model_id = {name: i for i, name in enumerate(model_classes)}
    problems = []
    unknown_keys = [key for key in class_map if key not in data_classes]
    if unknown_keys:
        problems.append(f"the class map names {unknown_keys}, which are not classes of {data_source} {data_classes}")
    unknown_values = sorted({value for value in class_map.values() if value not in model_id})
    if unknown_values:
        problems.append(
            f"the class map maps onto {unknown_values}, which are not classes of {model_source} {model_classes}"
        )
    mapped = [class_map.get(name, name) for name in data_classes]
    lacking = [name for name, target in zip(data_classes, mapped) if target not in model_id and name not in class_map]
    if lacking:
        problems.append(
            f"{data_source} has the class(es) {lacking}, which {model_source} lacks (its classes: {model_classes}); "
            "the model cannot predict them. Map each onto a model class with "
            f"{suggest_class_map(lacking[0], model_classes[0])}, or leave their folders out"
        )
    if problems:
        raise ValueError("; ".join(problems) + ".")
    present = {model_id[target] for target in mapped}
    absent = [name for i, name in enumerate(model_classes) if i not in present]
    return [model_id[target] for target in mapped], absent


def relabel_to_model_classes(dd: DatasetDict, model_classes: Sequence[str], new_ids: Sequence[int]) -> DatasetDict:
    """Every part of ``dd`` with ``label`` rewritten as model label ids (``new_ids[data label]``) and the model's
    ``ClassLabel``; other columns (images as paths, provenance) are kept as they are.

    Not ``Dataset.align_labels_with_mapping``: it matches names lower-cased (two classes that differ in case
    collide), keeps the data's names as the new ``ClassLabel`` names instead of the model's, and cannot map two
    data classes onto one model class, which ``--class_map`` allows."""
    names = [str(name) for name in model_classes]
    table = [int(i) for i in new_ids]
    result = DatasetDict()
    for part, dataset in dd.items():
        plain = dataset.with_format(None)
        features = plain.features.copy()
        features["label"] = ClassLabel(names=names)
        result[part] = plain.map(
            lambda labels: {"label": [table[label] for label in labels]},
            input_columns=["label"], batched=True, features=features, load_from_cache_file=False,
            desc=None,
        )
    return result
