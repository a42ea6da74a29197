"""Both models behave like transformers' own image classifiers (issue 9), checked without transformers' test mixins:
partial loads are initialised properly, gradient checkpointing changes no gradient, hidden states are returned
on request only, the feature methods follow transformers 5 CLIP, problem types pick the library's loss, and the
pipeline asks nothing about remote code."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import STUDENT_TINY, TEACHER_TINY
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoTokenizer,
    AutoVideoProcessor,
    CLIPConfig,
    CLIPModel,
    Trainer,
    TrainingArguments,
    pipeline,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_amlpf import (
    AmlpfClipConfig,
    AmlpfClipForImageClassification,
    AmlpfImageProcessor,
    AmlpfTeacherConfig,
    AmlpfTeacherForImageClassification,
)

TINY_CLIP_VISION = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "image_size": 32, "patch_size": 8, "projection_dim": 64, "hidden_act": "quick_gelu",
}


def _pixels(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _teacher(**overrides):
    torch.manual_seed(0)
    return AmlpfTeacherForImageClassification(AmlpfTeacherConfig.from_pretrained(TEACHER_TINY, **overrides)).eval()


def _student(**overrides):
    config, _ = AmlpfClipConfig.get_config_dict(STUDENT_TINY)
    torch.manual_seed(0)  # overrides go in before construction, so that sub-config dicts become configs
    return AmlpfClipForImageClassification(AmlpfClipConfig.from_dict({**config, **overrides})).eval()


def _clip_student(**overrides):
    return _student(vision_backend="clip", vision_config=TINY_CLIP_VISION, **overrides)


def _assert_std(tensor, expected, rel=0.2):
    std = float(tensor.detach().float().std())
    assert abs(std - expected) <= rel * expected, f"std {std:.4g}, expected {expected:.4g}"


def _all_finite(model):
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    assert not bad, f"non-finite tensors: {bad[:5]}"


# ------------------------------------------------------------------------------------------- partial loads
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Both tiny models saved once: {kind: (directory, state dict as saved)}."""
    out = {}
    for kind, model in (("teacher", _teacher()), ("student", _student())):
        path = tmp_path_factory.mktemp(kind)
        model.save_pretrained(path)
        out[kind] = (path, load_file(path / "model.safetensors"))
    return out


def _without(saved_dir, state, dropped, target):
    target.mkdir()
    for name in ("config.json",):
        (target / name).write_bytes((saved_dir / name).read_bytes())
    save_file({k: v for k, v in state.items() if k not in dropped}, target / "model.safetensors",
              metadata={"format": "pt"})
    return target


def test_teacher_with_dropped_keys_gets_timm_and_head_init(saved, tmp_path):
    path, state = saved["teacher"]
    dropped = {k for k in state if k.startswith(("backbone.blocks.1.", "head.2.")) or k in
               {"backbone.pos_embed", "backbone.cls_token", "backbone.norm.weight", "backbone.norm.bias"}}
    model = AmlpfTeacherForImageClassification.from_pretrained(_without(path, state, dropped, tmp_path / "ckpt"))
    _all_finite(model)
    loaded = model.state_dict()
    for key in set(state) - dropped:  # what the checkpoint had is untouched
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)
    backbone, config = model.backbone, model.config
    _assert_std(backbone.pos_embed, 0.02)  # timm ViT: trunc_normal(std=.02)
    assert 0 < float(backbone.cls_token.abs().max()) < 1e-4  # timm ViT: normal(std=1e-6)
    _assert_std(backbone.blocks[1].attn.qkv.weight, 0.02)
    _assert_std(backbone.blocks[1].mlp.fc1.weight, 0.02)
    assert not backbone.blocks[1].attn.qkv.bias.any()
    init_values = config.backbone_kwargs["init_values"]  # LayerScale
    gamma = backbone.blocks[1].ls1.gamma
    torch.testing.assert_close(gamma, torch.full_like(gamma, init_values))
    assert bool((backbone.norm.weight == 1).all()) and not backbone.norm.bias.any()
    head = model.head[2]  # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1 / math.sqrt(head.in_features)
    assert float(head.weight.abs().max()) <= bound and float(head.bias.abs().max()) <= bound
    _assert_std(head.weight, bound / math.sqrt(3))
    assert torch.isfinite(model(pixel_values=_pixels(2, 9, 3, 64, 64)).logits).all()


def test_student_with_dropped_keys_gets_timm_clip_and_own_init(saved, tmp_path):
    path, state = saved["student"]
    prefixes = ("vision_model.stages.1.", "vision_model.head.", "text_model.text_model.encoder.layers.1.")
    own = {"prompt_embeds", "fusion_weights", "logit_scale"}
    own.add("text_model.text_model.embeddings.position_embedding.weight")
    dropped = {k for k in state if k.startswith(prefixes) or k in own}
    model = AmlpfClipForImageClassification.from_pretrained(_without(path, state, dropped, tmp_path / "ckpt"))
    _all_finite(model)
    loaded = model.state_dict()
    for key in set(state) - dropped:
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)
    tower = model.vision_model
    conv = tower.stages[1][0].conv2_kxk.conv  # timm ByobNet: normal(0, sqrt(2 / fan_out))
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    _assert_std(conv.weight, math.sqrt(2 / fan_out))
    bn = tower.stages[1][0].conv2_kxk.bn
    assert bool((bn.running_var == 1).all()) and not bn.running_mean.any() and not bn.bias.any()
    pool = tower.head  # timm attention pool: trunc_normal(std=in_features ** -0.5)
    _assert_std(pool.pos_embed, pool.pos_embed.shape[-1] ** -0.5)
    # CLIP's own init for the text tower: fc1 ~ N(0, (2 * hidden) ** -0.5), positions ~ N(0, 0.02)
    text = model.text_model.text_model
    hidden = model.config.text_config.hidden_size
    _assert_std(text.encoder.layers[1].mlp.fc1.weight, (2 * hidden) ** -0.5)
    _assert_std(text.embeddings.position_embedding.weight, 0.02)
    torch.testing.assert_close(model.fusion_weights.detach(), torch.ones(3))
    assert float(model.logit_scale) == pytest.approx(model.config.logit_scale_init_value)
    # prompt embeddings re-derived from the config's token ids with the text tower as loaded
    for index, level in enumerate(model.config.prompt_levels):
        for cls, ids in enumerate(model.config.prompt_input_ids[level]):
            expected = F.normalize(model.text_model(input_ids=torch.tensor([ids])).text_embeds[0], dim=-1)
            torch.testing.assert_close(model.prompt_embeds[index, cls], expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(model(pixel_values=_pixels(2, 9, 3, 64, 64)).logits).all()


def test_loading_another_image_size_reinitialises_position_embeddings(saved):
    path, state = saved["teacher"]
    kwargs = dict(AmlpfTeacherConfig.from_pretrained(path).backbone_kwargs, img_size=32)
    teacher = AmlpfTeacherForImageClassification.from_pretrained(
        path, backbone_kwargs=kwargs, ignore_mismatched_sizes=True
    )
    assert teacher.backbone.pos_embed.shape == (1, 1 + 4 * 4, 64)
    _assert_std(teacher.backbone.pos_embed, 0.02)
    torch.testing.assert_close(teacher.backbone.blocks[0].attn.qkv.weight, state["backbone.blocks.0.attn.qkv.weight"])
    assert torch.isfinite(teacher(pixel_values=_pixels(2, 3, 32, 32)).logits).all()

    path, state = saved["student"]
    kwargs = dict(AmlpfClipConfig.from_pretrained(path).timm_model_kwargs, img_size=32)
    student = AmlpfClipForImageClassification.from_pretrained(
        path, timm_model_kwargs=kwargs, ignore_mismatched_sizes=True
    )
    pos_embed = student.vision_model.head.pos_embed
    assert pos_embed.shape == (1 + 1, 256) and not torch.equal(pos_embed, state["vision_model.head.pos_embed"][:2])
    _assert_std(pos_embed, 256 ** -0.5, rel=0.25)
    torch.testing.assert_close(student.prompt_embeds, state["prompt_embeds"])
    assert torch.isfinite(student(pixel_values=_pixels(2, 3, 32, 32)).logits).all()


@pytest.mark.parametrize("kind", ["teacher", "student", "clip-student"])
def test_from_pretrained_with_an_empty_state_dict_initialises_everything(kind):
    reference = {"teacher": _teacher, "student": _student, "clip-student": _clip_student}[kind]()
    model = type(reference).from_pretrained(None, config=reference.config, state_dict={})
    _all_finite(model)
    size = 32 if kind == "clip-student" else 64
    assert torch.isfinite(model(pixel_values=_pixels(2, 9, 3, size, size)).logits).all()
    if kind != "teacher":
        norms = model.prompt_embeds.norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        assert model.prompt_embeds.std() > 0.01  # encoded, distinct prompts, not zeros


def test_loaded_student_keeps_its_frozen_parts_frozen(saved):
    """from_pretrained re-creates loaded parameters with requires_grad=True; the frozen text tower and (by
    default) the logit scale must stay frozen or the optimizer would train them."""
    model = AmlpfClipForImageClassification.from_pretrained(saved["student"][0])
    assert not any(p.requires_grad for p in model.text_model.parameters())
    assert not model.logit_scale.requires_grad
    assert model.fusion_weights.requires_grad and all(p.requires_grad for p in model.vision_model.parameters())


# ------------------------------------------------------------------------------------------- checkpointing
def _block(model):
    tower = model._vision_tower()
    if hasattr(tower, "blocks"):
        return tower.blocks[0]
    if hasattr(tower, "stages"):
        return tower.stages[0][0]
    return tower.vision_model.encoder.layers[0].layer_norm1  # transformers checkpoints inside the layer's hooks


def _grads_and_calls(model, pixel_values, labels):
    calls = []
    handle = _block(model).register_forward_pre_hook(lambda *_: calls.append(1))  # recompute may stop early
    model.train()
    model.zero_grad()
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    handle.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)


@pytest.mark.parametrize("kind", ["teacher", "student", "clip-student"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    model = {"teacher": _teacher, "student": _student, "clip-student": _clip_student}[kind]()
    size = 32 if kind == "clip-student" else 64
    pixel_values, labels = _pixels(2, 3, 3, size, size, seed=1), torch.tensor([0, 3])
    plain, plain_calls = _grads_and_calls(model, pixel_values, labels)
    assert model.supports_gradient_checkpointing and not model.is_activation_checkpointing
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    checkpointed, calls = _grads_and_calls(model, pixel_values, labels)
    assert plain_calls == 1 and calls == 2  # the block really is recomputed in the backward pass
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing and _grads_and_calls(model, pixel_values, labels)[1] == 1


class _Views(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"pixel_values": _pixels(9, 3, 64, 64, seed=index), "labels": index % 4}


def test_trainer_runs_with_gradient_checkpointing_and_predicts_logits_only(tmp_path):
    model = _teacher(output_hidden_states=True)
    args = TrainingArguments(
        output_dir=str(tmp_path), gradient_checkpointing=True, max_steps=1, per_device_train_batch_size=2,
        per_device_eval_batch_size=2, report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Views(), eval_dataset=_Views())
    trainer.train()
    assert model.backbone.grad_checkpointing and model.is_activation_checkpointing
    # config.output_hidden_states is on, yet prediction gathers the logits only
    predictions = trainer.predict(_Views()).predictions
    assert isinstance(predictions, np.ndarray) and predictions.shape == (4, 4)


# ------------------------------------------------------------------------------------------- hidden states
def test_teacher_hidden_states_on_request_and_from_config():
    model = _teacher()
    depth, width = model.config.backbone_kwargs["depth"], model.config.backbone_kwargs["embed_dim"]
    out = model(pixel_values=_pixels(2, 9, 3, 64, 64))
    assert out.hidden_states is None and out.attentions is None and set(out.keys()) == {"logits", "view_logits"}
    out = model(pixel_values=_pixels(2, 9, 3, 64, 64), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == depth and out.attentions is None
    assert all(h.shape == (2, 9, width, 8, 8) for h in out.hidden_states)  # (B, V, C, H/8, W/8)
    single = model(pixel_values=_pixels(2, 3, 64, 64), output_hidden_states=True)
    assert [h.shape for h in single.hidden_states] == [(2, width, 8, 8)] * depth
    torch.testing.assert_close(single.logits, model(pixel_values=_pixels(2, 3, 64, 64)).logits)  # same result
    model.config.output_hidden_states = True
    assert len(model(pixel_values=_pixels(1, 3, 64, 64)).hidden_states) == depth
    for key in ("hidden_states", "attentions", "view_logits"):
        assert key in model.config.keys_to_ignore_at_inference


def test_student_hidden_states_timm_and_clip_towers():
    model = _student()
    out = model(pixel_values=_pixels(2, 9, 3, 64, 64), output_hidden_states=True, output_attentions=True)
    assert out.attentions is None  # a ResNet has no attention maps: accepted, None
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 9, 16, 32, 32), (2, 9, 32, 16, 16), (2, 9, 64, 8, 8), (2, 9, 128, 4, 4), (2, 9, 256, 2, 2)
    ]
    assert model(pixel_values=_pixels(1, 3, 64, 64)).hidden_states is None

    clip = _clip_student()  # attention maps need eager attention (sdpa computes none), as in transformers' CLIP
    clip = AmlpfClipForImageClassification._from_config(clip.config, attn_implementation="eager").eval()
    out = clip(pixel_values=_pixels(2, 3, 32, 32), output_hidden_states=True, output_attentions=True)
    layers, tokens = TINY_CLIP_VISION["num_hidden_layers"], (32 // 8) ** 2 + 1
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, tokens, 32)] * (layers + 1)
    assert [tuple(a.shape) for a in out.attentions] == [(2, 2, tokens, tokens)] * layers
    out = clip(pixel_values=_pixels(2, 9, 3, 32, 32), output_hidden_states=True)
    assert out.hidden_states[0].shape == (2, 9, tokens, 32) and out.attentions is None


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_return_dict_argument_and_config_default(which):
    model = _teacher() if which == "teacher" else _student()
    pixel_values, labels = _pixels(2, 3, 64, 64), torch.tensor([1, 2])
    as_dict = model(pixel_values=pixel_values, labels=labels)
    as_tuple = model(pixel_values=pixel_values, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    model.config.return_dict = False
    assert isinstance(model(pixel_values=pixel_values), tuple)


# ------------------------------------------------------------------------------------------- v5 features
def _reference_clip(student):
    """A transformers CLIPModel holding the student's towers."""
    config = CLIPConfig(
        text_config=student.config.text_config.to_dict(), vision_config=student.config.vision_config.to_dict(),
        projection_dim=student.config.projection_dim,
    )
    clip = CLIPModel(config).eval()
    clip.text_model.load_state_dict(student.text_model.text_model.state_dict())
    clip.text_projection.load_state_dict(student.text_model.text_projection.state_dict())
    clip.vision_model.load_state_dict(student.vision_model.vision_model.state_dict())
    clip.visual_projection.load_state_dict(student.vision_model.visual_projection.state_dict())
    return clip


def test_feature_methods_match_transformers_clip():
    student = _clip_student()
    clip = _reference_clip(student)
    tokenizer = AutoTokenizer.from_pretrained(STUDENT_TINY)
    ids = tokenizer(["an adenoma", "normal colon tissue"], padding=True, return_tensors="pt")
    images = _pixels(2, 3, 32, 32)
    with torch.no_grad():
        for ours, theirs in (
            (student.get_text_features(**ids), clip.get_text_features(**ids)),
            (student.get_image_features(images), clip.get_image_features(pixel_values=images)),
        ):
            assert isinstance(ours, BaseModelOutputWithPooling) and type(ours) is type(theirs)
            assert ours.keys() == theirs.keys()
            for key in ours.keys():
                torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=1e-5)
        as_tuple = student.get_text_features(**ids, return_dict=False)
        reference = clip.get_text_features(**ids, return_dict=False)
        assert isinstance(as_tuple, tuple) and len(as_tuple) == len(reference)
        torch.testing.assert_close(as_tuple[1], reference[1], atol=1e-5, rtol=1e-5)


def test_timm_image_features_are_the_projected_tower_output():
    student = _student()
    images = _pixels(2, 9, 3, 64, 64)
    with torch.no_grad():
        features = student.get_image_features(images, output_hidden_states=True)
        expected = student.vision_model(images.flatten(0, 1)).view(2, 9, -1)
    assert isinstance(features, BaseModelOutputWithPooling)
    torch.testing.assert_close(features.pooler_output, expected)
    assert features.last_hidden_state.shape == (2, 9, 256, 2, 2) and len(features.hidden_states) == 5
    with torch.no_grad():
        single = student.get_image_features(images[:, 0])
    torch.testing.assert_close(single.pooler_output, expected[:, 0])
    assert single.hidden_states is None


# ------------------------------------------------------------------------------------------- problem types
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_multi_label_loss_is_bce_with_logits(which):
    model = (_teacher if which == "teacher" else _student)(problem_type="multi_label_classification")
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    out = model(pixel_values=_pixels(2, 9, 3, 64, 64), labels=labels)
    x = out.logits
    expected = -(labels * F.logsigmoid(x) + (1 - labels) * F.logsigmoid(-x)).mean()
    torch.testing.assert_close(out.loss, expected)


def test_regression_loss_is_mse():
    model = _teacher(id2label={0: "score"}, label2id={"score": 0})
    assert model.config.num_labels == 1
    labels = torch.tensor([0.25, -1.5])
    out = model(pixel_values=_pixels(2, 9, 3, 64, 64), labels=labels)
    assert out.logits.shape == (2, 1) and model.config.problem_type == "regression"
    expected = ((out.logits[:, 0] - labels) ** 2).mean()
    assert float(expected) > 0
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_single_label_loss_is_cross_entropy(which):
    model = _teacher() if which == "teacher" else _student()
    labels = torch.tensor([3, 0])
    out = model(pixel_values=_pixels(2, 9, 3, 64, 64), labels=labels)
    log_probs = out.logits.log_softmax(-1)
    torch.testing.assert_close(out.loss, -(log_probs[0, 3] + log_probs[1, 0]) / 2)
    assert model.config.problem_type == "single_label_classification"


# ------------------------------------------------------------------------------------------- pipeline
def test_pipeline_asks_nothing_about_remote_code(tmp_path, monkeypatch, capsys):
    """transformers asks ``[y/N]`` through ``input()``; with the package imported nothing may ask."""
    model = _student()
    model.save_pretrained(tmp_path)
    AmlpfImageProcessor.from_pretrained(STUDENT_TINY).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(STUDENT_TINY).save_pretrained(tmp_path)
    prompts = []
    monkeypatch.setattr(builtins, "input", lambda *args: prompts.append(args) or "n")
    classifier = pipeline("image-classification", model=str(tmp_path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 110, 3), dtype=np.uint8))
    result = classifier(image, top_k=4)
    assert prompts == [] and "[y/N]" not in capsys.readouterr().out
    assert {r["label"] for r in result} == set(model.config.id2label.values())
    with pytest.raises(ValueError):  # the models have no video processor, and say so without asking
        AutoVideoProcessor.from_pretrained(tmp_path)
    assert prompts == []
