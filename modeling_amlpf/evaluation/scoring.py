"""Evaluation outputs shared by both scripts: one split's test metrics (``test_results.json``, the confusion
matrix PNG and counts), the summary of several splits (``splits_summary.json`` / ``.md``, mean ± sample std), and
the folder and summary of an evaluation-only run (``evaluation.json`` / ``evaluation.md``).

Every JSON file is strict JSON: an undefined metric (AUROC on a test set of one class, the recall of an absent
class) is written as ``null``, never as the bare ``NaN`` that strict parsers reject (``metrics.json_safe``).

An evaluation-only run (``--do_train False --model_name_or_path DIR``) never writes into the checkpoint's own
files: its outputs go to ``--output_dir``, or to ``DIR/eval-<data>`` when that is the checkpoint's folder
(``evaluation_output_dir``), so the model card, config and training results keep the facts of the training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..data import data_root_tag, read_provenance, run_name
from ..pretrained.weights import is_local_path
from ..utils import UserError
from .metrics import compute_classification_metrics, confusion_matrix_title, json_safe
from .metrics.reporting import (
    flatten_metrics,
    plot_confusion_matrix,
    render_metrics_table,
    render_summary_markdown,
    summarize_splits,
)

EVALUATION_PREFIX = "eval-"
SUMMARY_JSON = "evaluation.json"
SUMMARY_MARKDOWN = "evaluation.md"


def dump_json(value, path: str | Path) -> Path:
    """Write ``value`` as strict JSON (NaN/inf -> null; ``allow_nan=False`` guards the rest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(value), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def save_metrics(trainer, split: str, metrics: Mapping) -> None:
    """``trainer.save_metrics`` (``<split>_results.json`` and ``all_results.json``) in strict JSON."""
    trainer.save_metrics(split, json_safe(dict(metrics)))


def score_split(
    trainer,
    dataset,
    class_names: list[str],
    output_dir: str | Path,
    prefix: str = "test",
    *,
    model_kind: str = "model",
    split_name: str = "test",
    dataset_name: str | None = None,
) -> tuple[dict, dict]:
    """Predict ``dataset`` with the trainer's model; compute every metric, the time per image and the confusion
    matrix (PNG titled with the model and split, counts as JSON); save ``<prefix>_results.json`` (and add them
    to ``all_results.json``). Returns the flat ``<prefix>_*`` metrics and the full metrics (confusion matrix,
    per-class recall, note)."""
    # The full metrics (with the confusion matrix) are computed once below, not also by the Trainer's hook.
    compute_metrics, trainer.compute_metrics = trainer.compute_metrics, None
    try:
        prediction = trainer.predict(dataset, metric_key_prefix=prefix)
    finally:
        trainer.compute_metrics = compute_metrics
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    full = compute_classification_metrics(logits, prediction.label_ids, class_names)
    flat, _ = flatten_metrics(full)
    metrics = {f"{prefix}_{k}": v for k, v in flat.items()}
    # the Trainer's own timing of the prediction loop (data loading, views and forward passes)
    metrics[f"{prefix}_ms_per_image"] = 1000.0 * prediction.metrics[f"{prefix}_runtime"] / max(len(dataset), 1)
    metrics[f"{prefix}_samples"] = len(dataset)
    if f"{prefix}_loss" in prediction.metrics:
        metrics[f"{prefix}_loss"] = prediction.metrics[f"{prefix}_loss"]
    if trainer.is_world_process_zero():
        save_metrics(trainer, prefix, metrics)
        title = confusion_matrix_title(model_kind, split_name, dataset_name)
        output_dir = Path(output_dir)
        plot_confusion_matrix(
            np.asarray(full["confusion_matrix"]), class_names, output_dir / f"{prefix}_confusion_matrix.png",
            title=title,
        )
        dump_json(
            {"title": title, "class_names": list(class_names), "rows": "true class", "columns": "predicted class",
             "counts": full["confusion_matrix"]},
            output_dir / f"{prefix}_confusion_matrix.json",
        )
    return metrics, full


def strip_prefix(metrics: Mapping, prefix: str) -> dict:
    """``{"test_accuracy": x}`` -> ``{"accuracy": x}`` (keys without the prefix are dropped)."""
    return {k[len(prefix) + 1 :]: v for k, v in metrics.items() if k.startswith(prefix + "_")}


def write_splits_summary(
    root: str | Path, per_split: Mapping[int, Mapping], title: str, *, write: bool = True
) -> dict:
    """Mean ± sample std over splits of the un-prefixed test metrics ``per_split[seed]``; writes
    ``splits_summary.json`` (strict JSON) and ``splits_summary.md`` under ``root`` (when ``write``) and prints
    the table."""
    summary = summarize_splits(per_split)
    if write:
        root = Path(root)
        dump_json(summary, root / "splits_summary.json")
        markdown = render_summary_markdown(summary, title)
        (root / "splits_summary.md").write_text(markdown)
        print(markdown)
    return summary


# ------------------------------------------------------------------------------------------ evaluation-only runs
def evaluation_name(data_args) -> str:
    """``eval-<dataset run name>``, plus the data folder's tag when ``--data_dir`` names one (two cohorts of one
    dataset type never share an evaluation folder)."""
    name = EVALUATION_PREFIX + run_name(data_args)
    data_dir = getattr(data_args, "data_dir", None)
    return f"{name}-{data_root_tag(data_dir)}" if data_dir else name


def default_evaluation_dir(model_name_or_path: str, data_args, output_root: str | Path = "outputs") -> str:
    """Where an evaluation-only run writes by default: ``<model dir>/eval-<data>`` for a local checkpoint,
    ``<output root>/eval-<data>/<org>--<name>`` for a Hub id."""
    name = evaluation_name(data_args)
    if is_local_path(model_name_or_path):
        return str(Path(model_name_or_path) / name)
    return str(Path(output_root) / name / str(model_name_or_path).replace("/", "--"))


def evaluation_output_dir(output_dir: str | Path, model_name_or_path: str | None, data_args) -> Path:
    """The folder of an evaluation-only run's outputs: ``output_dir``, except that the checkpoint's own folder
    becomes ``<model dir>/eval-<data>`` (its card, config and results stay those of its training), and a folder
    holding another checkpoint is refused (its results would be overwritten)."""
    output_dir = Path(output_dir)
    if model_name_or_path and Path(model_name_or_path).is_dir():
        model_dir = Path(model_name_or_path)
        if output_dir.resolve() == model_dir.resolve():
            return model_dir / evaluation_name(data_args)
    if (output_dir / "config.json").is_file():
        raise UserError(
            f"--output_dir {output_dir} holds a trained checkpoint (config.json): an evaluation would overwrite its "
            "results. Pass another --output_dir"
            + (f", e.g. {default_evaluation_dir(model_name_or_path, data_args)}" if model_name_or_path else "")
        )
    return output_dir


def json_values(metrics: Mapping):
    """The scalar values of a metrics dict, per-class recalls included."""
    for value in metrics.values():
        if isinstance(value, Mapping):
            yield from json_values(value)
        elif value is None or isinstance(value, (int, float)):
            yield value


def write_evaluation_summary(output_dir: str | Path, summary: Mapping, full_metrics: Mapping | None = None) -> Path:
    """``evaluation.json`` (the facts of an evaluation-only run: model, data, classes, prompts, metrics,
    confusion matrix) and ``evaluation.md`` (the same for a reader); returns the markdown's path."""
    output_dir = Path(output_dir)
    record = dict(summary)
    if full_metrics is not None:
        record["confusion_matrix"] = full_metrics.get("confusion_matrix")
        record["note"] = full_metrics.get("note") or None
    dump_json(record, output_dir / SUMMARY_JSON)

    lines = [f"# Evaluation of the {summary.get('model_kind', 'model')} `{summary.get('model')}`", ""]
    lines.append(
        "An evaluation only: the checkpoint's own card and training results are unchanged; these metrics are "
        "those of this data."
    )
    lines.append("")
    for key, title in (
        ("dataset", "Dataset"), ("data_root", "Data folder"), ("split", "Images evaluated"),
        ("relation_to_training_data", "Relation to the model's training data"), ("class_names", "Model classes"),
        ("class_map", "Class map (data -> model)"), ("classes_absent_from_data", "Model classes absent from the data"),
        ("prompts", "Prompts"),
    ):
        value = summary.get(key)
        if value in (None, "", [], {}):
            continue
        if isinstance(value, Mapping):
            value = "; ".join(f"{k}: {v}" for k, v in value.items() if k != "texts")  # texts: in the JSON
        elif isinstance(value, list):
            value = ", ".join(f"`{v}`" for v in value)
        lines.append(f"- {title}: {value}")
    if summary.get("classes_absent_from_data"):
        lines.append(
            "- Metrics are computed over the classes present in the data; the recall of an absent class is undefined "
            "(n/a)."
        )
    metrics = summary.get("metrics") or {}
    if full_metrics is not None:
        metrics = {**full_metrics, **{k: v for k, v in metrics.items() if k in ("ms_per_image", "samples", "loss")}}
    if metrics:
        lines += ["", "## Metrics", "", render_metrics_table(metrics).rstrip()]
        if any(value is None or value != value for value in json_values(metrics)):
            lines += ["", "– (`null` in the JSON files): undefined on this data, not zero."]
    for figure in summary.get("figures") or []:
        lines += ["", f"![{Path(figure).stem.replace('_', ' ')}]({figure})"]
    path = output_dir / SUMMARY_MARKDOWN
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def evaluation_facts(model_kind: str, model: str, data_args, dd, relation: str | None, class_facts: Mapping) -> dict:
    """The facts of an evaluation-only run for ``write_evaluation_summary``: which model, which data (folder,
    options, split source and sizes), its relation to the model's training data, and the class matching."""
    provenance = read_provenance(dd)
    return {
        "model_kind": model_kind,
        "model": str(model),
        "dataset": data_args.dataset,
        "data_root": provenance.get("data_root"),
        "dataset_options": provenance.get("options"),
        "split": f"{provenance.get('split_source')}"
        + ("" if data_args.external_cohort else f", seed {provenance.get('split_seed')}")
        + f"; {len(dd['test'])} test images",
        "external_cohort": bool(data_args.external_cohort),
        "relation_to_training_data": relation,
        "class_names": list(dd["test"].features["label"].names),
        **dict(class_facts),
    }
