"""Core models: aggregation and fusion equations, frozen parts, save/load round trips, remote code, pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import HIDE_PACKAGE, STUDENT_TINY, TEACHER_TINY
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

from modeling_amlpf import (
    AmlpfClipConfig,
    AmlpfClipForImageClassification,
    AmlpfImageProcessor,
    AmlpfTeacherConfig,
    AmlpfTeacherForImageClassification,
    aggregate_view_logits,
)


def _views(batch=2, views=9, size=64, seed=0):
    return torch.randn(batch, views, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_aggregation_matches_the_paper_formula():
    z = torch.randn(3, 9, 5)
    expected = torch.stack([(sum(z[b, i] for i in range(8)) / 8 + z[b, 8]) / 2 for b in range(3)])
    torch.testing.assert_close(aggregate_view_logits(z), expected)
    torch.testing.assert_close(aggregate_view_logits(z[:, :1]), z[:, 0])


def test_teacher_forward_aggregates_view_logits_and_computes_ce(tiny_teacher):
    tiny_teacher.eval()
    pixel_values, labels = _views(), torch.tensor([1, 3])
    out = tiny_teacher(pixel_values=pixel_values, labels=labels)
    assert out.logits.shape == (2, 4) and out.view_logits.shape == (2, 9, 4)
    # independent computation: each view separately through backbone + head
    per_view = torch.stack(
        [tiny_teacher.head(tiny_teacher.backbone(pixel_values[:, v])) for v in range(9)], dim=1
    )
    torch.testing.assert_close(out.view_logits, per_view, atol=1e-5, rtol=1e-5)
    expected = (per_view[:, :8].mean(1) + per_view[:, 8]) / 2
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, labels), atol=1e-5, rtol=1e-5)
    single = tiny_teacher(pixel_values=pixel_values[:, 8])
    torch.testing.assert_close(single.logits, per_view[:, 8], atol=1e-5, rtol=1e-5)


def test_teacher_head_is_the_papers_mlp():
    config = AmlpfTeacherConfig.from_pretrained(TEACHER_TINY)
    config.head_hidden_sizes = [512, 256]
    model = AmlpfTeacherForImageClassification(config)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    relus = [m for m in model.head if isinstance(m, torch.nn.ReLU)]
    expected = [(model.backbone.num_features, 512), (512, 256), (256, 4)]
    assert [(m.in_features, m.out_features) for m in linears] == expected
    assert len(relus) == 2


def test_default_teacher_config_is_uni():
    config = AmlpfTeacherConfig()
    assert config.backbone == "vit_large_patch16_224"
    assert config.backbone_kwargs == {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}
    assert list(config.head_hidden_sizes) == [512, 256]


def _student_levels_by_hand(model, pixel_values):
    """Fused, level and view logits from the towers' raw outputs, computed independently."""
    b, v = pixel_values.shape[:2]
    feats = model.vision_model(pixel_values.flatten(0, 1))
    feats = feats / feats.norm(dim=-1, keepdim=True)
    scale = model.logit_scale.exp()
    level_logits = []
    for level in model.config.prompt_levels:
        ids = model.config.prompt_input_ids[level]
        text = torch.stack([model.text_model(input_ids=torch.tensor([seq])).text_embeds[0] for seq in ids])
        text = text / text.norm(dim=-1, keepdim=True)
        level_logits.append(scale * feats @ text.T)  # (N, C)
    weights = model.fusion_weights if model.config.fusion == "learned" else torch.softmax(model.fusion_weights, 0)
    fused = sum(w * s for w, s in zip(weights, level_logits)).view(b, v, -1)
    levels = torch.stack(level_logits, dim=1).view(b, v, len(level_logits), -1)
    return fused, levels


@pytest.mark.parametrize("fusion", ["learned", "softmax"])
def test_student_fusion_matches_independent_computation(tiny_student, fusion):
    model, _ = tiny_student
    model.config.fusion = fusion
    with torch.no_grad():
        model.fusion_weights.copy_(torch.tensor([0.3, -1.2, 2.0]))
    model.eval()
    pixel_values = _views()
    out = model(pixel_values=pixel_values, labels=torch.tensor([0, 2]))
    fused, levels = _student_levels_by_hand(model, pixel_values)
    torch.testing.assert_close(out.view_logits, fused, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits, (fused[:, :8].mean(1) + fused[:, 8]) / 2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.level_logits, (levels[:, :8].mean(1) + levels[:, 8]) / 2, atol=1e-4, rtol=1e-4)
    weights = model.effective_fusion_weights()
    if fusion == "softmax":
        assert float(weights.detach().sum()) == pytest.approx(1.0) and bool((weights > 0).all())
    else:
        torch.testing.assert_close(weights, torch.tensor([0.3, -1.2, 2.0]))


def test_student_learned_fusion_starts_at_one_and_softmax_uniform(tiny_student):
    model, _ = tiny_student
    torch.testing.assert_close(model.effective_fusion_weights().detach(), torch.ones(3))
    config = AmlpfClipConfig.from_pretrained(STUDENT_TINY, fusion="softmax")
    softmax_model = AmlpfClipForImageClassification(config)
    torch.testing.assert_close(softmax_model.effective_fusion_weights().detach(), torch.full((3,), 1 / 3))


def test_prompt_embeddings_are_normalised_and_distinct(tiny_student):
    model, _ = tiny_student
    norms = model.prompt_embeds.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    for level in range(3):
        sims = model.prompt_embeds[level] @ model.prompt_embeds[level].T
        assert (sims - torch.eye(4)).abs().max() > 1e-4  # classes differ


def test_training_step_updates_image_tower_and_fusion_only(tiny_student):
    model, _ = tiny_student
    model.train()
    assert not model.text_model.training  # frozen tower stays in eval mode
    text_before = {k: v.clone() for k, v in model.text_model.state_dict().items()}
    prompts_before = model.prompt_embeds.clone()
    vision_before = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    fusion_before = model.fusion_weights.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model(pixel_values=_views(), labels=torch.tensor([0, 3]))
    out.loss.backward()
    assert all(p.grad is None for p in model.text_model.parameters())
    assert model.fusion_weights.grad is not None and model.fusion_weights.grad.abs().sum() > 0
    optimizer.step()
    for k, v in model.text_model.state_dict().items():
        torch.testing.assert_close(v, text_before[k], rtol=0, atol=0)
    torch.testing.assert_close(model.prompt_embeds, prompts_before, rtol=0, atol=0)
    assert not torch.equal(model.fusion_weights.detach(), fusion_before)
    changed = [
        k for k, v in model.vision_model.state_dict().items()
        if v.dtype.is_floating_point and not torch.equal(v, vision_before[k])
    ]
    assert any(k.startswith("head.proj") for k in changed) and any(k.startswith("stem") for k in changed)


def test_teacher_training_step_updates_backbone_and_head(tiny_teacher):
    tiny_teacher.train()
    before = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    optimizer = torch.optim.SGD(tiny_teacher.parameters(), lr=0.5)
    tiny_teacher(pixel_values=_views(), labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    changed = {k for k, v in tiny_teacher.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("head.") for k in changed) and any(k.startswith("backbone.blocks") for k in changed)


def test_set_prompts_changes_classes_and_reencodes(tiny_student):
    model, tokenizer = tiny_student
    prompts = {
        "label": ["benign", "malignant"],
        "basic": ["The tissue sample is benign.", "The tissue sample is malignant."],
        "detailed": ["Regular glands with small nuclei.", "Crowded glands with large dark nuclei."],
    }
    model.set_prompts(prompts, tokenizer, class_names=["benign", "malignant"], levels=["label", "detailed"])
    assert model.config.num_labels == 2 and model.config.prompt_levels == ["label", "detailed"]
    assert model.prompt_embeds.shape == (2, 2, model.config.projection_dim)
    assert model.fusion_weights.shape == (2,)
    out = model(pixel_values=_views(batch=1))
    assert out.logits.shape == (1, 2) and out.level_logits.shape == (1, 2, 2)
    text = model.get_text_features(torch.tensor([tokenizer("malignant")["input_ids"]]))
    expected = F.normalize(text.pooler_output, dim=-1)
    torch.testing.assert_close(model.prompt_embeds[0, 1], expected[0], atol=1e-5, rtol=1e-5)


def test_student_without_prompts_or_with_wrong_tokenizer_fails_clearly(tiny_student):
    model, tokenizer = tiny_student
    config = AmlpfClipConfig.from_pretrained(STUDENT_TINY)
    config.prompt_input_ids = None
    bare = AmlpfClipForImageClassification(config)
    with pytest.raises(ValueError, match="set_prompts"):
        bare(pixel_values=_views(batch=1))
    tokenizer.eos_token = tokenizer.bos_token  # another end-of-text id than the text tower pools at
    with pytest.raises(ValueError, match="eos_token_id"):
        model.set_prompts(model.config.prompts, tokenizer)


def test_text_features_and_image_features_shapes(tiny_student):
    model, tokenizer = tiny_student
    ids = tokenizer(["an adenoma", "normal colon"], padding=True, return_tensors="pt")
    assert model.get_text_features(**ids).pooler_output.shape == (2, 64)
    assert model.get_image_features(_views()[:, 0]).pooler_output.shape == (2, 64)
    assert model.get_image_features(_views()).pooler_output.shape == (2, 9, 64)


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_save_and_load_with_auto_classes_gives_identical_logits(tmp_path, tiny_teacher, tiny_student, which):
    model = tiny_teacher if which == "teacher" else tiny_student[0]
    model.eval()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert set(config.auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    for auto in (AutoModel, AutoModelForImageClassification):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is type(model)
        pixel_values = _views(seed=3)
        torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)


def test_from_config_builds_tiny_presets():
    for preset in (TEACHER_TINY, STUDENT_TINY):
        model = AutoModel.from_config(AutoConfig.from_pretrained(preset))
        assert model(pixel_values=_views(batch=1)).logits.shape == (1, 4)
        assert sum(p.numel() for p in model.parameters()) < 1_000_000  # tiny: builds in milliseconds on CPU
        processor = AutoImageProcessor.from_pretrained(preset)
        assert isinstance(processor, AmlpfImageProcessor) and processor.crop_size == 64 and processor.num_views == 9


def _save_checkpoint(model, processor, path, tokenizer=None):
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_trust_remote_code_load_without_the_package(tmp_path, tiny_teacher, tiny_student, which):
    model = (tiny_teacher if which == "teacher" else tiny_student[0]).eval()
    processor = AmlpfImageProcessor.from_pretrained(TEACHER_TINY)
    ckpt = tmp_path / "ckpt"
    _save_checkpoint(model, processor, ckpt)
    assert (ckpt / "modeling_amlpf.py").is_file() and (ckpt / "configuration_amlpf.py").is_file()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 170, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    expected = model(**processor(image, return_tensors="pt")).logits
    script = HIDE_PACKAGE + textwrap.dedent(
        f"""
        import sys
        try:
            import modeling_amlpf
            raise SystemExit("package still importable")
        except ModuleNotFoundError:
            pass
        import json
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModel
        model = AutoModel.from_pretrained({str(ckpt)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        processor = AutoImageProcessor.from_pretrained({str(ckpt)!r}, trust_remote_code=True)
        inputs = processor(Image.open({str(tmp_path / 'x.png')!r}), return_tensors="pt")
        print(json.dumps(model(**inputs).logits.tolist()))
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"))
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logits = torch.tensor(__import__("json").loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_pipeline_classifies_pil_images(tmp_path, tiny_student):
    model, tokenizer = tiny_student
    processor = AmlpfImageProcessor.from_pretrained(STUDENT_TINY)
    _save_checkpoint(model.eval(), processor, tmp_path, tokenizer)
    processor_loaded = AutoImageProcessor.from_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path), image_processor=processor_loaded)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (140, 180, 3), dtype=np.uint8)) for _ in range(2)]
    results = classifier(images, top_k=4)
    assert len(results) == 2
    for image, result in zip(images, results):
        assert {r["label"] for r in result} == {"normal", "hyperplastic", "adenoma", "carcinoma"}
        assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-4)
        probs = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
        best = int(probs.argmax())
        assert result[0]["label"] == model.config.id2label[best]
        assert result[0]["score"] == pytest.approx(float(probs[best]), abs=1e-4)


def test_timm_wrapper_computes_the_teachers_features_exactly(tiny_teacher):
    """transformers' TimmWrapperModel carries the teacher's timm config and weights exactly; why the teacher still
    holds the timm model itself is in ``create_timm_model``'s docstring (checkpoint key layout, resume)."""
    from transformers import TimmWrapperConfig, TimmWrapperModel

    config = tiny_teacher.config
    wrapper_config = TimmWrapperConfig(architecture=config.backbone, model_args=dict(config.backbone_kwargs))
    wrapper = TimmWrapperModel(wrapper_config)
    wrapper.timm_model.load_state_dict(tiny_teacher.backbone.state_dict(), strict=True)
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = tiny_teacher.eval().backbone(pixel_values)
        theirs = wrapper.eval()(pixel_values=pixel_values).pooler_output
    torch.testing.assert_close(tiny_teacher.head(theirs), tiny_teacher.head(ours), rtol=0, atol=1e-5)
