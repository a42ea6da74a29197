"""Model cards: Hub metadata that parses back (model-index results), no NaN, no local paths, honest split wording."""

from __future__ import annotations

import math

import pytest
import yaml
from huggingface_hub import ModelCard

from modeling_amlpf import AmlpfClipForImageClassification, AmlpfTeacherConfig, AmlpfTeacherForImageClassification
from modeling_amlpf.evaluation.metrics import METRIC_TITLES
from modeling_amlpf.evaluation.model_card import ModelCardFacts, render_model_card, write_model_card
from modeling_amlpf.models.configuration_amlpf import UNI_BACKBONE
from modeling_amlpf.pretrained.presets import build_tiny_tokenizer, tiny_student_config

CLASSES = ["normal", "serrated", "adénocarcinome", "鳞状细胞癌"]
PROMPTS = {
    "label": CLASSES,
    "basic": [f"The tissue sample is {name}." for name in CLASSES],
    "detailed": [f"Glands of {name} tissue under the microscope." for name in CLASSES],
}
METRICS = {
    "accuracy": 0.8125, "macro_precision": 0.75, "macro_recall": 0.7, "macro_f1": 0.71, "macro_auroc": 0.9,
    "cohen_kappa": 0.6, "mcc": 0.61, "balanced_accuracy": 0.7, "ms_per_image": 12.5,
    "recall_normal": 0.9, "recall_serrated": 0.5, "recall_adénocarcinome": 0.8, "recall_鳞状细胞癌": 0.6,
}


@pytest.fixture(scope="module")
def student():
    tokenizer = build_tiny_tokenizer()
    model = AmlpfClipForImageClassification(tiny_student_config(tokenizer, CLASSES))
    model.set_prompts(PROMPTS, tokenizer, class_names=CLASSES)
    return model


def _facts(**overrides) -> ModelCardFacts:
    facts = dict(
        kind="student", dataset="chaoyang", dataset_options={"protocol": "groups"}, split_seed=3,
        split_source="group-disjoint re-split by slide", group_disjoint=True, class_names=CLASSES,
        split_sizes={"train": 40, "validation": 8, "test": 16}, test_metrics=dict(METRICS),
        teacher="vendor/amlpf-teacher-chaoyang", base_model="vinid/plip",
        recipe={"resampling": "difficulty (gamma 2.0)"}, hub_model_id="me/amlpf-student-chaoyang",
        figures=["test_confusion_matrix.png", "training_curves.png"],
    )
    facts.update(overrides)
    return ModelCardFacts(**facts)


def _metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def test_card_parses_back_with_model_index_results(tmp_path, student):
    path = write_model_card(tmp_path, _facts(), model=student)
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.base_model == "vinid/plip" and data.license == "other" and data.license_name
    assert data.model_name == "amlpf-student-chaoyang"
    results = {result.metric_type: result for result in data.eval_results}
    expected_types = {"accuracy": "accuracy", "macro_precision": "precision", "macro_recall": "recall",
                      "macro_f1": "f1", "macro_auroc": "roc_auc", "cohen_kappa": "cohen_kappa",
                      "mcc": "matthews_correlation", "balanced_accuracy": "balanced_accuracy"}
    assert set(results) == set(expected_types.values())
    for key, metric_type in expected_types.items():
        result = results[metric_type]
        assert result.metric_value == pytest.approx(METRICS[key])
        assert result.metric_name == f"Test {METRIC_TITLES[key]}"
        assert (result.task_type, result.dataset_type, result.dataset_name, result.dataset_split) == (
            "image-classification", "chaoyang", "Chaoyang", "test")
    assert results["f1"].metric_config == "macro"
    assert "model-index" in _metadata(path.read_text(encoding="utf-8"))
    # The text shows every metric with its title from the one table, and the real class names.
    text = card.text
    assert f"| {METRIC_TITLES['macro_f1']} (%) | 71.00 |" in text
    assert "| Recall of 鳞状细胞癌 (%) | 60.00 |" in text and "`adénocarcinome`" in text
    assert "[`vendor/amlpf-teacher-chaoyang`](https://huggingface.co/vendor/amlpf-teacher-chaoyang)" in text
    assert "| serrated | serrated | The tissue sample is serrated. |" in text  # the prompt table
    assert 'AutoModel.from_pretrained("me/amlpf-student-chaoyang"' in text


def test_undefined_metrics_are_n_a_with_the_reason_and_never_nan(student):
    metrics = dict(METRICS, macro_auroc=float("nan"), cohen_kappa=None, **{"recall_鳞状细胞癌": float("nan")})
    text = render_model_card(_facts(test_metrics=metrics), model=student)
    assert "nan" not in text.lower().replace("financial", "")
    assert f"| {METRIC_TITLES['macro_auroc']} (%) | n/a |" in text and "| Recall of 鳞状细胞癌 (%) | n/a |" in text
    assert "AUROC needs at least two classes among the test labels" in text
    assert "the class does not occur in the test labels" in text
    types = {result.metric_type for result in ModelCard(text).data.eval_results}
    assert "roc_auc" not in types and "cohen_kappa" not in types and "accuracy" in types
    for value in yaml.safe_load(text.split("---\n")[1])["model-index"][0]["results"][0]["metrics"]:
        assert math.isfinite(value["value"])


def test_no_local_path_in_the_metadata(tmp_path, student):
    local_teacher = tmp_path / "outputs" / "chaoyang" / "teacher"
    local_teacher.mkdir(parents=True)
    local_base = tmp_path / "checkpoints" / "clip-rn50"
    local_base.mkdir(parents=True)
    facts = _facts(teacher=str(local_teacher), base_model=str(local_base), hub_model_id=None,
                   dataset_options={"groups_csv": str(tmp_path / "private" / "groups.csv")})
    text = render_model_card(facts, model=student)
    metadata = _metadata(text)
    assert "base_model" not in metadata and str(tmp_path) not in yaml.safe_dump(metadata)
    assert str(tmp_path) not in text  # neither in the text: the teacher is described, options by file name
    assert "Teacher (frozen, distilled from): a local teacher checkpoint" in text
    assert "'groups_csv': 'groups.csv'" in text
    assert metadata["license"] == "other" and metadata["license_name"] == "upstream-weights-terms"


def test_split_wording_follows_group_disjointness(student):
    disjoint = render_model_card(_facts(), model=student)
    expected = "- Group-disjoint split (no patient or slide in two parts; group-disjoint re-split by slide, seed 3)"
    assert expected in disjoint
    official = render_model_card(
        _facts(group_disjoint=False, split_source="official Chaoyang train/test split", split_seed=None,
               dataset_options={"protocol": "official"}), model=student)
    lowered = official.lower()
    assert lowered.count("group-disjoint") == 1 and "not group-disjoint" in lowered
    assert "- Split: official Chaoyang train/test split: train 40, validation 8, test 16 images." in official


def test_figures_synthetic_warning_and_license_choices(student):
    text = render_model_card(_facts(synthetic=True, license="apache-2.0"), model=student)
    assert "![test confusion matrix](test_confusion_matrix.png)" in text
    assert "![training curves](training_curves.png)" in text
    assert "SYNTHETIC demo images" in text and "synthetic-data" in _metadata(text)["tags"]
    metadata = _metadata(text)
    assert metadata["license"] == "apache-2.0" and "license_name" not in metadata


def test_teacher_card_names_uni_terms_and_checks_class_names():
    config = AmlpfTeacherConfig(
        backbone=UNI_BACKBONE, head_hidden_sizes=[8], class_names=CLASSES,
        backbone_kwargs=dict(img_size=32, patch_size=16, init_values=1e-5, embed_dim=16, depth=1, num_heads=2),
    )
    teacher = AmlpfTeacherForImageClassification(config)
    teacher.config.backbone_weights = "hf-hub:MahmoodLab/uni"
    facts = _facts(kind="teacher", teacher=None, base_model="MahmoodLab/uni", hub_model_id=None)
    text = render_model_card(facts, model=teacher)
    metadata = _metadata(text)
    assert metadata["base_model"] == "MahmoodLab/uni"
    assert metadata["license_link"] == "https://huggingface.co/MahmoodLab/UNI"
    assert "They bind this checkpoint, whose backbone weights are UNI's." in text and "Prompts and fusion" not in text

    with pytest.raises(ValueError, match=r"the model card's class names: classes \['serrated', 'normal'"):
        render_model_card(_facts(kind="teacher", class_names=["serrated", "normal", *CLASSES[2:]]), model=teacher)


def test_facts_are_checked():
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelCardFacts(kind="pupil", dataset="chaoyang")
    with pytest.raises(ValueError, match=r"unknown model card facts \['epochs'\]"):
        ModelCardFacts.from_dict({"kind": "student", "dataset": "demo", "epochs": 3})
    facts = ModelCardFacts.from_dict({"kind": "student", "dataset": "demo", "class_names": ["a", "b"]})
    assert facts.group_disjoint is False and ModelCardFacts(**facts.to_dict()) == facts


def test_a_tiny_random_init_preset_is_called_that_and_carries_no_uni_terms(tmp_path, student):
    from transformers import AutoConfig

    from modeling_amlpf.pretrained.presets import tiny_teacher_config

    teacher = AmlpfTeacherForImageClassification(tiny_teacher_config(CLASSES))
    assert teacher.config.backbone_weights is None
    text = render_model_card(_facts(kind="teacher", teacher=None, base_model=None, hub_model_id=None), model=teacher)
    title = next(line for line in text.splitlines() if line.startswith("# "))
    assert "tiny random-init test preset (3-layer ViT, width 64), not UNI" in title
    assert "> **Tiny random-init test preset (3-layer ViT, width 64), not UNI**: a few-layer model" in text
    assert "UNI-style" not in text and "MahmoodLab" not in text and "UNI (MahmoodLab)" not in text
    metadata = _metadata(text)
    assert "tiny-test-preset" in metadata["tags"] and metadata.get("license_link") is None

    # the student: tiny preset in its title; its teacher's licence only when that teacher has UNI weights
    local_teacher = tmp_path / "teacher"
    teacher.config.save_pretrained(local_teacher)
    text = render_model_card(_facts(teacher=str(local_teacher), base_model=None), model=student)
    title = next(line for line in text.splitlines() if line.startswith("# "))
    assert "AMLPF-CLIP student: tiny random-init test preset" in title and "not OpenAI CLIP RN50" in title
    assert "UNI (MahmoodLab)" not in text
    uni_config = AutoConfig.from_pretrained(local_teacher)
    uni_config.backbone_weights = "hf-hub:MahmoodLab/uni"
    uni_config.save_pretrained(local_teacher)
    text = render_model_card(_facts(teacher=str(local_teacher), base_model=None), model=student)
    assert "checkpoint's teacher (its backbone weights are UNI's)" in text
    # a teacher on the Hub that this card cannot inspect: said conditionally
    text = render_model_card(_facts(teacher="vendor/amlpf-teacher-chaoyang", base_model=None), model=student)
    assert "if its backbone weights are UNI's (this card cannot tell)" in text
    # no student teacher at all (CE only): no UNI text
    assert "UNI" not in render_model_card(_facts(teacher=None, base_model=None), model=student).split("## License")[1]


def test_full_size_backbones_are_named_by_their_weights():
    from modeling_amlpf.evaluation.identity import identify

    uni = {"model_type": "amlpf_teacher", "backbone": UNI_BACKBONE, "backbone_weights": "hf-hub:MahmoodLab/uni",
           "backbone_kwargs": {"img_size": 224, "patch_size": 16, "init_values": 1e-5}}
    assert identify(uni).description == "UNI ViT-L/16" and identify(uni).paper_backbone
    scratch = dict(uni, backbone_weights=None)
    assert identify(scratch).description == "ViT-L/16 from random initialisation, not UNI"
    assert not identify(scratch).paper_backbone and not identify(scratch).test_preset
    other = dict(uni, backbone_weights="my_vit.safetensors")
    assert identify(other).description == "ViT-L/16 initialised from my_vit.safetensors"
    assert not identify(other).uses_uni
    rn50 = {"model_type": "amlpf_clip", "timm_model_name": "resnet50_clip", "timm_model_kwargs": None,
            "projection_dim": 1024, "text_config": {"hidden_size": 512}}
    assert identify(rn50).description == "CLIP RN50" and identify(rn50).paper_backbone
    assert identify({"model_type": "bert"}) is None
