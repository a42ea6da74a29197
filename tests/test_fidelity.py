"""Fidelity to the reference's optimisation (issue 11 item 5) and the teacher's own views (item 7).

Expected values are computed here: the reference's AdamW over every parameter, the unclamped CLIP logit formula,
the teacher processor's own output on the same image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TrainingArguments, default_data_collator

from modeling_amlpf.models.image_processing_amlpf import TINY_PRESET, AmlpfImageProcessor
from modeling_amlpf.training.losses import distillation_loss
from modeling_amlpf.training.teacher_inputs import load_teacher_processor, teacher_input_map
from modeling_amlpf.training.trainers import AmlpfTrainer, DistillationTrainer

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
LABELS = [0, 1, 2, 3]


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-2,
        weight_decay=0.1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        remove_unused_columns=False,
    )
    values.update(overrides)
    return TrainingArguments(**values)


# ----------------------------------------------------------------------------- item 5: weight decay, logit scale
class NormsAndBiases(torch.nn.Module):
    """Every kind of parameter the Trainer's rule treats specially, plus a frozen one and a bare scalar."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 4)
        self.layer_norm = torch.nn.LayerNorm(4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.frozen = torch.nn.Linear(4, 4).requires_grad_(False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))
        torch.nn.init.normal_(self.layer_norm.weight)
        torch.nn.init.normal_(self.layer_norm.bias)

    def forward(self, pixel_values, labels=None):
        return {"logits": self.bn(self.layer_norm(self.linear(pixel_values))) * self.logit_scale.exp()}


def _groups(optimizer) -> tuple[set[int], set[int]]:
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    return decayed, plain


def test_decay_all_parameters_puts_biases_and_norms_in_the_decayed_group(tmp_path):
    model = NormsAndBiases()
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}

    reference = AmlpfTrainer(model=model, args=_args(tmp_path), decay_all_parameters=True)
    decayed, plain = _groups(reference.create_optimizer())
    assert decayed == trainable and not plain  # every trainable parameter, frozen ones nowhere
    assert {"linear.bias", "layer_norm.weight", "layer_norm.bias", "bn.weight", "bn.bias"} <= {
        names[i] for i in decayed}

    trainer_rule = AmlpfTrainer(model=model, args=_args(tmp_path), decay_all_parameters=False)
    decayed, plain = _groups(trainer_rule.create_optimizer())
    assert {names[i] for i in plain} == {"linear.bias", "layer_norm.weight", "layer_norm.bias", "bn.bias"}
    assert {names[i] for i in decayed} == {"linear.weight", "bn.weight", "logit_scale"}


def test_decay_all_parameters_steps_like_the_references_adamw(tmp_path):
    """One step with a zero gradient: AdamW's decoupled decay alone, p <- p * (1 - lr * wd), on every parameter
    (the reference: ``torch.optim.AdamW(model.parameters(), weight_decay=wd)``)."""
    model = NormsAndBiases()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = _args(tmp_path, optim="adamw_torch")
    optimizer = AmlpfTrainer(model=model, args=args, decay_all_parameters=True).create_optimizer()
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()
    shrink = 1 - args.learning_rate * args.weight_decay
    for name, p in model.named_parameters():
        expected = before[name] * (shrink if p.requires_grad else 1.0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=name)


def test_tiny_student_biases_are_decayed_only_with_the_switch(tmp_path, tiny_student):
    student, _ = tiny_student
    names = {id(p): n for n, p in student.named_parameters()}
    on = _groups(AmlpfTrainer(model=student, args=_args(tmp_path), decay_all_parameters=True).create_optimizer())
    off = _groups(AmlpfTrainer(model=student, args=_args(tmp_path)).create_optimizer())
    biases = {i for i, n in names.items() if n.endswith("bias") and n.startswith("vision_model")}
    assert biases and biases <= on[0] and biases <= off[1]
    assert not any(n.startswith("text_model") for i, n in names.items() if i in on[0] | off[0])  # frozen tower


def _unclamped_logits(student, pixel_values):
    """CLIP's logits written out: exp(logit_scale) * f . T_l, fused with the raw weights, views aggregated."""
    with torch.no_grad():
        features = student.get_image_features(pixel_values).pooler_output
        f = torch.nn.functional.normalize(features.reshape(-1, features.shape[-1]), dim=-1)
        levels = math.exp(student.logit_scale.item()) * torch.einsum("nd,lcd->nlc", f, student.prompt_embeds)
        views = torch.einsum("nlc,l->nc", levels, student.fusion_weights).view(pixel_values.shape[0], -1, 4)
        return (views[:, :-1].mean(1) + views[:, -1]) / 2


def test_logit_scale_above_ln_100_is_not_clamped_by_default(tiny_student):
    student, _ = tiny_student
    assert student.config.logit_scale_max is None
    pixel_values = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        student.logit_scale.fill_(math.log(300.0))
    student.eval()
    logits = student(pixel_values=pixel_values).logits
    torch.testing.assert_close(logits, _unclamped_logits(student, pixel_values), rtol=1e-5, atol=1e-5)
    student.config.logit_scale_max = math.log(100.0)  # CLIP's bound, on request
    clamped = student(pixel_values=pixel_values).logits
    torch.testing.assert_close(clamped, logits / 3, rtol=1e-5, atol=1e-5)


def test_logit_scale_max_round_trips_and_old_configs_keep_their_bound(tmp_path, tiny_student):
    import json

    from transformers import AutoConfig

    student, _ = tiny_student
    student.config.train_logit_scale = True
    student.config.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert "logit_scale_max" in saved and saved["logit_scale_max"] is None
    assert AutoConfig.from_pretrained(tmp_path / "new").logit_scale_max is None
    # a student saved before the option existed, with a trained scale, was trained and evaluated clamped
    del saved["logit_scale_max"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    assert AutoConfig.from_pretrained(tmp_path / "old").logit_scale_max == pytest.approx(math.log(100.0))
    saved["train_logit_scale"] = False  # a frozen pretrained scale: the bound never applied
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    assert AutoConfig.from_pretrained(tmp_path / "old").logit_scale_max is None


def test_paper_recipes_train_the_logit_scale_unclipped():
    from modeling_amlpf.cli.arguments import CONFIG_DIR, read_config

    for dataset in ("chaoyang", "breakhis", "lunghist700"):
        student = read_config(CONFIG_DIR / f"{dataset}.yaml", "student")
        assert student["train_logit_scale"] is True, dataset
        assert student["max_grad_norm"] == 0.0, dataset


def test_recipe_train_logit_scale_makes_the_logit_scale_trainable(tmp_path):
    from conftest import STUDENT_TINY

    import distill_student
    from modeling_amlpf.cli.arguments import StudentArguments, parse_script_args
    from modeling_amlpf.pretrained.prompts import template_prompts

    argv = ["--dataset", "breakhis", "--student_model", str(STUDENT_TINY), "--output_dir", str(tmp_path)]
    _, model_args, _, _ = parse_script_args(
        StudentArguments, "student", argv, distill_student.derived_defaults, defaults=distill_student.STUDENT_DEFAULTS
    )
    assert model_args.train_logit_scale is True  # from configs/breakhis.yaml
    classes = ["normal", "hyperplastic", "adenoma", "carcinoma"]
    model, _ = distill_student.build_student(model_args, classes, template_prompts(classes))
    assert model.logit_scale.requires_grad
    model_args.train_logit_scale = False
    model, _ = distill_student.build_student(model_args, classes, template_prompts(classes))
    assert not model.logit_scale.requires_grad


# ----------------------------------------------------------------------------- item 7: the teacher's own views
def _image(height=150, width=170, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _processor(**overrides) -> AmlpfImageProcessor:
    return AmlpfImageProcessor(**{**TINY_PRESET, "num_crops": 4, **overrides})


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize(
    "student_values",
    [
        {"image_mean": CLIP_MEAN, "image_std": CLIP_STD},  # a student converted with CLIP's statistics
        {"do_normalize": False},  # values in [0, 1]
        {"do_rescale": False, "image_mean": [100.0, 110.0, 120.0], "image_std": [50.0, 60.0, 70.0]},
    ],
)
def test_renormalised_input_equals_the_teachers_own_processor(student_values, training):
    student, teacher = _processor(**student_values), _processor()  # the teacher: ImageNet statistics
    images = [_image(seed=0), _image(200, 140, seed=1)]
    input_map = teacher_input_map(student, teacher)
    assert input_map is not None
    x_student = student(images, training=training, generator=[3, 4]).pixel_values
    x_teacher = teacher(images, training=training, generator=[3, 4]).pixel_values
    assert not torch.allclose(x_student, x_teacher, atol=1e-2)
    torch.testing.assert_close(input_map(x_student), x_teacher, rtol=0, atol=2e-5)


def test_renormalisation_is_the_per_channel_affine_map():
    input_map = teacher_input_map(_processor(image_mean=CLIP_MEAN, image_std=CLIP_STD), _processor())
    x = torch.randn(2, 5, 3, 8, 8)
    mean_s, std_s = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    mean_t, std_t = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(input_map(x), (x * std_s + mean_s - mean_t) / std_t, rtol=1e-6, atol=1e-6)


def test_same_processor_settings_need_no_map():
    assert teacher_input_map(_processor(), _processor()) is None
    # do_convert_rgb never changes the pixels of an image both processors accept
    assert teacher_input_map(_processor(do_convert_rgb=False), _processor()) is None


@pytest.mark.parametrize(
    "setting, student_value",
    [("crop_size", 96), ("num_crops", 8), ("crop_stride", 16), ("min_short_side", 160), ("resample", "bicubic"),
     ("antialias", True), ("large_crop_stride", 24), ("large_side_threshold", 512)],
)
def test_other_view_geometry_is_refused_naming_both_settings(setting, student_value):
    teacher = _processor()
    with pytest.raises(ValueError) as error:
        teacher_input_map(_processor(**{setting: student_value}), teacher)
    message = str(error.value)
    assert f"{setting}={student_value}" in message and f"{setting}={getattr(teacher, setting)}" in message
    assert "retrain the teacher" in message and "--kd_weight 0" in message


def test_teacher_processor_is_loaded_from_the_teacher_dir(tmp_path):
    _processor(image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(tmp_path / "teacher")
    loaded = load_teacher_processor(tmp_path / "teacher")
    assert loaded.image_mean == pytest.approx(CLIP_MEAN) and loaded.crop_size == TINY_PRESET["crop_size"]
    (tmp_path / "bare").mkdir()
    assert load_teacher_processor(tmp_path / "bare") is None  # nothing to compare: a warning, no guess


def _distillation_batch():
    """Student views of 4 images made with CLIP statistics; the tiny presets' 64-px crops."""
    student = _processor(image_mean=CLIP_MEAN, image_std=CLIP_STD)
    images = [_image(seed=s) for s in range(4)]
    features = student(images, training=True, generator=list(range(4)), return_view_geometry=True)
    batch = {
        "pixel_values": features.pixel_values, "labels": torch.tensor(LABELS),
        "sample_index": np.arange(4), "view_geometry": features.view_geometry.numpy(),
    }
    return student, images, batch


@pytest.mark.parametrize("cached", [False, True])
def test_distillation_trainer_feeds_the_teacher_its_own_normalisation(tmp_path, tiny_student, tiny_teacher, cached):
    from modeling_amlpf.training.teacher_cache import TeacherLogitCache

    student_model, _ = tiny_student
    with torch.no_grad():  # layer scales of a trained ViT, not timm's 1e-5 init: the logits depend on the input
        for name, parameter in tiny_teacher.named_parameters():
            if name.endswith(".gamma"):
                parameter.fill_(1.0)
    student_processor, images, batch = _distillation_batch()
    teacher_processor = _processor()
    trainer = DistillationTrainer(
        model=student_model, args=_args(tmp_path), processing_class=student_processor, teacher_model=tiny_teacher,
        teacher_processor=teacher_processor, teacher_cache=TeacherLogitCache() if cached else None,
        data_collator=default_data_collator,
    )
    student_model.train()
    loss = trainer.compute_loss(student_model, dict(batch))
    # expected: the teacher on its own processor's views of the same images (same generators: same windows)
    teacher_views = teacher_processor(images, training=True, generator=list(range(4))).pixel_values
    with torch.no_grad():
        s_logits = student_model(pixel_values=batch["pixel_values"]).logits
        t_logits = tiny_teacher(pixel_values=teacher_views).logits
        t_unmapped = tiny_teacher(pixel_values=batch["pixel_values"]).logits
    ce = torch.nn.functional.cross_entropy(s_logits, batch["labels"])
    torch.testing.assert_close(loss.detach(), ce + distillation_loss(s_logits, t_logits, "l2"), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(t_logits, t_unmapped, atol=1e-4)  # the map matters for this teacher


def test_distillation_trainer_refuses_a_teacher_of_other_views(tmp_path, tiny_student, tiny_teacher):
    student_model, _ = tiny_student
    with pytest.raises(ValueError, match=r"crop_size=64.*crop_size=96"):
        DistillationTrainer(
            model=student_model, args=_args(tmp_path), processing_class=_processor(crop_size=96),
            teacher_model=tiny_teacher, teacher_processor=_processor(),
        )
