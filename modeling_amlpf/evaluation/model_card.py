"""Model cards (README.md with Hub metadata) for trained teachers and students, built with huggingface_hub.

The metadata is ``huggingface_hub.ModelCardData``: the test metrics become ``model-index`` evaluation results
(``EvalResult``: task, dataset, split, metric), ``base_model`` is only ever a Hub id, and ``license: other``
always comes with ``license_name``. The text says what a reader needs to reuse or judge the checkpoint: the
dataset and how it was split (never "group-disjoint" unless it was), test metrics (undefined ones as n/a, with
the reason), figures, for students the prompts, fusion weights and the teacher, the license terms of the
pretrained weights it derives from, and how to load it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.class_names import check_class_names
from ..pretrained.weights import UNI_REPO_PAGE, is_local_path
from .identity import identify, identify_folder
from .metrics.reporting import METRIC_TITLES, PER_CLASS_RECALL_PREFIX, TIME_KEY

MODEL_KINDS = ("teacher", "student")
DATASET_TITLES = {
    "chaoyang": "Chaoyang",
    "breakhis": "BreaKHis v1",
    "lunghist700": "LungHist700",
    "demo": "Synthetic demo images",
    "imagefolder": "Image folder",
}
# Metric ids of the Hub (https://hf.co/metrics) for the model-index, and the averaging they use.
HUB_METRIC_TYPES = {
    "accuracy": ("accuracy", None),
    "macro_precision": ("precision", "macro"),
    "macro_recall": ("recall", "macro"),
    "macro_f1": ("f1", "macro"),
    "macro_auroc": ("roc_auc", "macro one-vs-rest"),
    "cohen_kappa": ("cohen_kappa", None),
    "mcc": ("matthews_correlation", None),
    "balanced_accuracy": ("balanced_accuracy", None),
}
# Why a metric can be undefined on a test set (reported as n/a).
UNDEFINED_REASONS = {
    "macro_auroc": "AUROC needs at least two classes among the test labels",
    "cohen_kappa": "Cohen's kappa is undefined when the labels and the predictions are one and the same class",
    PER_CLASS_RECALL_PREFIX: "the class does not occur in the test labels",
}
# Dataset options that name local files: only their file names go into the card, never into the metadata.
_PATH_OPTIONS = ("groups_csv", "split_file", "split_files")
_CONFIG_OPTIONS = ("task", "magnification", "resolution")
LICENSE_NAME = "upstream-weights-terms"


@dataclass
class ModelCardFacts:
    """Everything the card states about one trained checkpoint (the scripts fill it in; nothing is guessed).

    ``teacher`` may be a Hub id or a local path (a local one is never written out); ``base_model`` must be a Hub
    id (a local path is dropped). ``split_source`` says where the split came from (e.g. "group-disjoint
    re-split by slide", "official Chaoyang train/test split"); ``group_disjoint`` must be True only when no
    patient/slide occurs in two parts. ``test_metrics`` holds un-prefixed keys (``accuracy``,
    ``recall_<class>``, ...). ``figures``: PNG file names beside the card. ``license``: a Hub license id; None
    means the terms of the pretrained weights apply (``license: other``). ``selection_metric``: the validation
    metric whose best epoch was kept (``metric_for_best_model`` with ``load_best_model_at_end``); None: no
    selection, the last epoch's weights.
    """

    kind: str
    dataset: str
    dataset_options: dict = field(default_factory=dict)
    split_seed: int | None = None
    split_source: str = ""
    group_disjoint: bool = False
    class_names: list[str] = field(default_factory=list)
    split_sizes: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)
    teacher: str | None = None
    base_model: str | None = None
    recipe: dict[str, str] = field(default_factory=dict)
    hub_model_id: str | None = None
    synthetic: bool = False
    figures: list[str] = field(default_factory=list)
    license: str | None = None
    selection_metric: str | None = None

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"ModelCardFacts.kind must be one of {MODEL_KINDS}, got {self.kind!r}")

    @classmethod
    def from_dict(cls, info: Mapping) -> ModelCardFacts:
        """Facts from a plain dict (unknown keys are refused, so that nothing is silently left out)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(info) - known)
        if unknown:
            raise ValueError(f"unknown model card facts {unknown}; known: {sorted(known)}")
        return cls(**dict(info))

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ pieces
def _is_finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(float(value))


def _dataset_title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset.lower(), dataset)


def _dataset_config(options: Mapping) -> str | None:
    """The dataset variant for the model-index (task, magnification, resolution), never a local path."""
    parts = [f"{key}={options[key]}" for key in _CONFIG_OPTIONS if options.get(key) is not None]
    return ", ".join(parts) or None


def _shown_options(options: Mapping) -> dict:
    """Dataset options for the text, local paths reduced to their file names."""
    shown = {}
    for key, value in options.items():
        if key in _PATH_OPTIONS and value is not None:
            if isinstance(value, Mapping):
                value = {part: Path(str(path)).name for part, path in value.items()}
            else:
                value = Path(str(value)).name
        shown[key] = value
    return shown


def _hub_id(value: str | None) -> str | None:
    """``value`` when it is a Hub id (``hf-hub:`` stripped), else None."""
    if not value or is_local_path(value):
        return None
    return value[len("hf-hub:"):] if value.startswith("hf-hub:") else value


def _eval_results(facts: ModelCardFacts) -> list[EvalResult]:
    """One model-index entry per defined test metric of METRIC_TITLES (undefined ones are left out)."""
    results = []
    for key, (metric_type, config) in HUB_METRIC_TYPES.items():
        value = facts.test_metrics.get(key)
        if not _is_finite(value):
            continue
        results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=facts.dataset,
                dataset_name=_dataset_title(facts.dataset),
                dataset_config=_dataset_config(facts.dataset_options),
                dataset_split="test",
                metric_type=metric_type,
                metric_name=f"Test {METRIC_TITLES[key]}",
                metric_config=config,
                metric_value=round(float(value), 6),
            )
        )
    return results


def _uses_uni(facts: ModelCardFacts, model) -> bool:
    """The checkpoint's own backbone weights are UNI's (recorded in its config, or a UNI Hub id as base)."""
    identity = identify(getattr(model, "config", None))
    return bool(identity and identity.uses_uni) or "mahmoodlab/uni" in str(facts.base_model or "").lower()


def _teacher_uses_uni(facts: ModelCardFacts) -> bool | None:
    """Whether a student's teacher has UNI weights: read from a local teacher's config.json; None when unknown
    (a Hub id or a folder without a config)."""
    if not facts.teacher:
        return False
    if is_local_path(facts.teacher):
        identity = identify_folder(facts.teacher)
        return None if identity is None else identity.uses_uni
    return True if "mahmoodlab/uni" in facts.teacher.lower() else None


def card_title(kind: str, model=None) -> str:
    """What the checkpoint is, from its config: ``AMLPF-CLIP teacher (UNI ViT-L/16 + MLP head)``, or for a test
    preset ``AMLPF-CLIP teacher: tiny random-init test preset (3-layer ViT, width 64), not UNI``."""
    identity = identify(getattr(model, "config", None))
    if identity is None:
        return f"AMLPF-CLIP {kind}"
    if identity.test_preset:
        return f"AMLPF-CLIP {kind}: {identity.description}"
    if kind == "teacher":
        return f"AMLPF-CLIP teacher ({identity.description} + MLP head)"
    return f"AMLPF-CLIP student ({identity.description}, multi-level prompt fusion)"


def _license_metadata(facts: ModelCardFacts, model) -> dict:
    if facts.license and facts.license != "other":
        return {"license": facts.license}
    link = UNI_REPO_PAGE if _uses_uni(facts, model) else None
    base = _hub_id(facts.base_model)
    if link is None and base:
        link = f"https://huggingface.co/{base}"
    return {"license": "other", "license_name": LICENSE_NAME, "license_link": link}


def _license_text(facts: ModelCardFacts, model) -> list[str]:
    lines = ["## License", ""]
    if facts.license and facts.license != "other":
        lines.append(f"`{facts.license}`; the terms of the pretrained weights and of the dataset below also apply.")
    else:
        lines.append(
            "`other`: this checkpoint derives from pretrained weights and a dataset that keep their own terms; "
            "read them before any use."
        )
    teacher_uni = _teacher_uses_uni(facts) if facts.kind == "student" else False
    if _uses_uni(facts, model) or teacher_uni is not False:
        if _uses_uni(facts, model):
            bound = "checkpoint, whose backbone weights are UNI's."
        elif teacher_uni:
            bound = "checkpoint's teacher (its backbone weights are UNI's), which this student was distilled from."
        else:
            bound = "checkpoint's teacher if its backbone weights are UNI's (this card cannot tell)."
        lines.append(
            f"- UNI (MahmoodLab): its weights have their own terms of use (non-commercial research, access gated on "
            f"request): {UNI_REPO_PAGE}. They bind this {bound}"
        )
    base = _hub_id(facts.base_model)
    if base:
        lines.append(f"- The pretrained model it starts from: https://huggingface.co/{base}")
    lines.append(f"- The dataset ({_dataset_title(facts.dataset)}): its distributor's terms.")
    return lines + [""]


def _metric_cell(key: str, value) -> tuple[str, str | None]:
    """The table cell of one metric and, when undefined, the reason."""
    if _is_finite(value):
        number = float(value)
        return (f"{number:.2f}" if key == TIME_KEY else f"{100 * number:.2f}"), None
    reason_key = PER_CLASS_RECALL_PREFIX if key.startswith(PER_CLASS_RECALL_PREFIX) else key
    return "n/a", UNDEFINED_REASONS.get(reason_key, "the metric is undefined on this test set")


def _metrics_table(metrics: Mapping) -> list[str]:
    rows = ["| Metric | Value |", "|---|---|"]
    reasons: dict[str, str] = {}
    for key, title in METRIC_TITLES.items():
        if key not in metrics:
            continue
        cell, reason = _metric_cell(key, metrics[key])
        unit = " (ms, 9 views, incl. decoding)" if key == TIME_KEY else " (%)"
        rows.append(f"| {title}{unit} | {cell} |")
        if reason:
            reasons[title] = reason
    for key, value in metrics.items():
        if key.startswith(PER_CLASS_RECALL_PREFIX):
            name = key[len(PER_CLASS_RECALL_PREFIX):]
            cell, reason = _metric_cell(key, value)
            rows.append(f"| Recall of {name.replace('|', '/')} (%) | {cell} |")
            if reason:
                reasons[f"Recall of {name}"] = reason
    if reasons:
        rows += ["", "n/a: undefined on this test set, not zero: " + "; ".join(f"{k}: {v}" for k, v in reasons.items())
                 + "."]
    note = metrics.get("note")
    if isinstance(note, str) and note:
        rows += ["", f"Note from the evaluation: {note}."]
    return rows


def _split_line(facts: ModelCardFacts) -> str:
    sizes = facts.split_sizes or {}
    counts = ", ".join(f"{part} {sizes[part]}" for part in ("train", "validation", "test") if part in sizes)
    counts = f": {counts} images" if counts else ""
    seed = f", seed {facts.split_seed}" if facts.split_seed is not None else ""
    source = facts.split_source or "split"
    if facts.group_disjoint:
        text = f"- Group-disjoint split (no patient or slide in two parts; {source}{seed}){counts}."
    else:
        text = (
            f"- Split: {source}{seed}{counts}. Not group-disjoint: images of one patient or slide may occur in "
            "more than one part, so the test metrics may be optimistic."
        )
    return text + " The exact split is in `split.json` beside the weights; metrics on test."


def _selection_line(facts: ModelCardFacts) -> str:
    """Which checkpoint was kept: the paper's reference chose its best test-accuracy epoch, this one never test."""
    if not facts.selection_metric:
        return "- Model selection: none; the weights of the last training epoch."
    name = facts.selection_metric.removeprefix("eval_")
    return (
        f"- Model selection: the epoch with the best validation {METRIC_TITLES.get(name, name)} "
        f"(`metric_for_best_model: {facts.selection_metric}`); the test split was not used to choose it."
    )


def _prompt_section(model, class_names: list[str]) -> list[str]:
    config = model.config
    lines = ["## Prompts and fusion", ""]
    weights = []
    if hasattr(model, "effective_fusion_weights"):
        weights = model.effective_fusion_weights().detach().float().cpu().tolist()
    lines.append(
        f"Fusion: `{config.fusion}`; learned level weights: "
        + ", ".join(f"{level} = {w:.4f}" for level, w in zip(config.prompt_levels, weights))
    )
    lines += ["", "| class | " + " | ".join(config.prompt_levels) + " |", "|---|" + "---|" * len(config.prompt_levels)]
    for i, name in enumerate(class_names):
        cells = [
            str((config.prompts or {}).get(level, [""] * len(class_names))[i]).replace("|", "/")
            for level in config.prompt_levels
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


# ------------------------------------------------------------------------------------------------ the card
def _as_facts(facts) -> ModelCardFacts:
    return facts if isinstance(facts, ModelCardFacts) else ModelCardFacts.from_dict(facts)


def model_card(facts: ModelCardFacts, model=None) -> ModelCard:
    """The ``huggingface_hub.ModelCard`` of a checkpoint (metadata from ``ModelCardData``, text below it)."""
    facts = _as_facts(facts)
    config = getattr(model, "config", None)
    labels = [config.id2label[i] for i in range(config.num_labels)] if config is not None else None
    class_names = list(facts.class_names) or list(labels or [])
    if labels is not None:
        class_names = check_class_names(
            class_names, labels, source="the model card's class names",
            fix="pass the dataset's class names in label order (the model's config.id2label)",
        )
    kind = facts.kind
    identity = identify(config)
    name = (facts.hub_model_id or f"amlpf-{kind}-{facts.dataset}").split("/")[-1]
    card_data = ModelCardData(
        model_name=name,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["histopathology", "pathology", "amlpf-clip", f"amlpf-{kind}"]
        + (["synthetic-data"] if facts.synthetic else [])
        + (["tiny-test-preset"] if identity is not None and identity.test_preset else []),
        base_model=_hub_id(facts.base_model),
        datasets=_hub_id(facts.dataset) if "/" in facts.dataset else None,
        eval_results=_eval_results(facts) or None,
        **_license_metadata(facts, model),
    )

    lines = [f"# {card_title(kind, model)} · {_dataset_title(facts.dataset)}", ""]
    if identity is not None and identity.test_preset:
        lines += [
            f"> **{identity.description[:1].upper()}{identity.description[1:]}**: a few-layer model trained from "
            "random weights to exercise the pipeline. Its numbers say nothing about AMLPF-CLIP with the paper's "
            "backbones (a UNI ViT-L/16 teacher, an OpenAI CLIP RN50 student); do not use it on real data.",
            "",
        ]
    if facts.synthetic:
        lines += [
            "> **Trained on SYNTHETIC demo images** (procedurally drawn, not tissue). For demonstration only.",
            "",
        ]
    lines += [
        "Trained with amlpf, an implementation of AMLPF-CLIP: adaptive multi-level prompting and distilled learning "
        "for imbalanced histopathological image classification (Yao et al., IEEE JBHI 2025).",
        "",
        "## Data and split",
        "",
        f"- Dataset: `{facts.dataset}`"
        + (f", options `{_shown_options(facts.dataset_options)}`" if facts.dataset_options else ""),
        f"- Classes ({len(class_names)}, in label order): " + ", ".join(f"`{c}`" for c in class_names),
        _split_line(facts),
        _selection_line(facts),
        "",
    ]
    if facts.test_metrics:
        lines += ["## Test metrics", "", *_metrics_table(facts.test_metrics), ""]
    if facts.figures:
        lines += ["## Figures", ""]
        lines += [f"![{Path(figure).stem.replace('_', ' ')}]({figure})" for figure in facts.figures]
        lines.append("")
    if kind == "student" and config is not None and hasattr(config, "prompt_levels"):
        lines += _prompt_section(model, class_names)
    if facts.teacher or facts.recipe:
        lines += ["## Training", ""]
        if facts.teacher:
            teacher = _hub_id(facts.teacher)
            described = f"[`{teacher}`](https://huggingface.co/{teacher})" if teacher else "a local teacher checkpoint"
            lines.append(f"- Teacher (frozen, distilled from): {described}")
        for key, value in facts.recipe.items():
            lines.append(f"- {key}: `{value}`")
        lines.append("")
    lines += _license_text(facts, model)
    repo = facts.hub_model_id or "PATH_OR_HUB_ID"
    lines += [
        "## How to load",
        "",
        "```python",
        "from transformers import AutoModel, AutoImageProcessor, pipeline",
        "",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)  # or `import modeling_amlpf` first',
        f'processor = AutoImageProcessor.from_pretrained("{repo}", trust_remote_code=True)',
        'inputs = processor(images, return_tensors="pt")  # 8 crops + 1 global view per image',
        "probs = model(**inputs).logits.softmax(-1)",
        "",
        f'classifier = pipeline("image-classification", model="{repo}", trust_remote_code=True)',
        "```",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def render_model_card(facts: ModelCardFacts, model=None) -> str:
    """The card's text (YAML metadata + markdown)."""
    return str(model_card(facts, model))


def write_model_card(output_dir: str | Path, facts: ModelCardFacts, model=None) -> Path:
    """Write ``README.md`` into ``output_dir`` (UTF-8) and return its path."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    model_card(facts, model).save(path)
    return path
