"""Pretrained weights: UNI-format teacher backbones, Hub error messages, HF CLIP students, load_student."""

import json
import os

import httpx2
import pytest
import timm
import torch
import torch.nn.functional as F
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from safetensors.torch import save_file
from transformers import AutoModel, CLIPConfig, CLIPModel
from transformers.utils import ModelOutput

from modeling_amlpf import (
    AmlpfClipForImageClassification,
    AmlpfTeacherConfig,
    AmlpfTeacherForImageClassification,
)
from modeling_amlpf.models.configuration_amlpf import UNI_BACKBONE, UNI_BACKBONE_KWARGS
from modeling_amlpf.pretrained import weights as pretrained
from modeling_amlpf.pretrained.presets import build_tiny_tokenizer

# UNI's architecture (LayerScale, dynamic image size) at a size that builds in milliseconds.
TINY_VIT = dict(
    img_size=32, patch_size=16, init_values=1e-5, dynamic_img_size=True, embed_dim=32, depth=2, num_heads=2
)
CLASSES = ["normal", "adenoma"]
PROMPTS = {
    "label": ["normal", "adenoma"],
    "basic": ["The tissue sample is normal mucosa.", "The tissue sample is an adenoma."],
    "detailed": ["Regular crypts with goblet cells and small round nuclei.",
                 "Crowded glands with elongated hyperchromatic nuclei and reduced mucin."],
}


# ----------------------------------------------------------------------------------------------------- teacher
def _uni_like_backbone(seed: int = 0, **overrides):
    """A randomised tiny UNI-format backbone (LayerScale gammas too, so that every tensor matters)."""
    torch.manual_seed(seed)
    model = timm.create_model(UNI_BACKBONE, pretrained=False, num_classes=0, **dict(TINY_VIT, **overrides))
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if tensor.dim() == 1:
                offset = 1.0 if name.endswith(("norm.weight", "gamma")) else 0.0
                tensor.copy_(torch.randn_like(tensor) * 0.1 + offset)
    return model.eval()


def _teacher(**overrides):
    config = AmlpfTeacherConfig(backbone=UNI_BACKBONE, backbone_kwargs=dict(TINY_VIT, **overrides),
                                head_hidden_sizes=[16], class_names=CLASSES)
    return AmlpfTeacherForImageClassification(config).eval()


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_uni_state_dict_loads_strictly_and_survives_save_pretrained(tmp_path, images):
    reference = _uni_like_backbone()
    weights = tmp_path / "uni" / "pytorch_model.bin"
    weights.parent.mkdir()
    torch.save(reference.state_dict(), weights)

    teacher = _teacher()
    description = pretrained.load_teacher_backbone(teacher, str(weights))
    assert "pytorch_model.bin" in description and UNI_BACKBONE in description
    assert teacher.config.backbone_weights == "pytorch_model.bin"  # the name, not the local path
    with torch.no_grad():
        torch.testing.assert_close(teacher.backbone(images), reference(images), atol=1e-6, rtol=0)
        logits = teacher(images[:, None]).logits

    teacher.save_pretrained(tmp_path / "saved")
    reloaded = AutoModel.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.config.backbone_weights == "pytorch_model.bin"
    with torch.no_grad():  # not re-initialised by post_init / from_pretrained
        torch.testing.assert_close(reloaded.backbone(images), reference(images), atol=1e-6, rtol=0)
        torch.testing.assert_close(reloaded(images[:, None]).logits, logits, atol=1e-6, rtol=0)


def test_directories_safetensors_and_wrapped_state_dicts_load(tmp_path, images):
    reference = _uni_like_backbone(seed=1)
    state_dict = reference.state_dict()
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp_path / "uni.safetensors"))
    wrapped = {"epoch": 7, "model": {f"module.backbone.{k}": v for k, v in state_dict.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    (tmp_path / "hub_download").mkdir()
    torch.save(state_dict, tmp_path / "hub_download" / "pytorch_model.bin")

    for source in (tmp_path / "uni.safetensors", tmp_path / "ckpt.pth", tmp_path / "hub_download"):
        teacher = _teacher()
        pretrained.load_teacher_backbone(teacher, source)
        with torch.no_grad():
            torch.testing.assert_close(teacher.backbone(images), reference(images), atol=1e-6, rtol=0)


def test_key_mismatch_lists_keys_and_the_expected_architecture(tmp_path):
    torch.save(_uni_like_backbone(depth=3).state_dict(), tmp_path / "deeper.bin")
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.backbone.state_dict().items()}
    with pytest.raises(ValueError) as info:
        pretrained.load_teacher_backbone(teacher, tmp_path / "deeper.bin")
    message = str(info.value)
    assert "deeper.bin" in message and f"timm '{UNI_BACKBONE}'" in message and "'depth': 2" in message
    assert "unexpected keys (" in message and "blocks.2.attn.qkv.weight" in message
    assert all(torch.equal(before[k], v) for k, v in teacher.backbone.state_dict().items())  # nothing half-loaded
    assert teacher.config.backbone_weights is None


def test_non_strict_loading_still_refuses_shape_mismatches(tmp_path):
    torch.save(_uni_like_backbone(embed_dim=64).state_dict(), tmp_path / "wider.bin")
    expected = r"shape mismatches \(\d+\): \['cls_token: \(1, 1, 64\) \(expected \(1, 1, 32\)\)"
    with pytest.raises(ValueError, match=expected):
        pretrained.load_teacher_backbone(_teacher(), tmp_path / "wider.bin", strict=False)


class _Payload:
    """Something a weights-only unpickler must refuse."""


def test_pickles_that_need_more_than_tensors_are_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"sd": _uni_like_backbone().state_dict(), "obj": _Payload()}, path)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is not a plain state dict.*only tensors"):
        pretrained.load_teacher_backbone(_teacher(), path)
    torch.save({"weights": torch.zeros(1), "note": "hello"}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match=r"mixed\.pt: entries \['note'\] are not tensors"):
        pretrained.read_state_dict(tmp_path / "mixed.pt")


def test_files_that_are_not_weights_are_named(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, these are notes\n")  # torch.load alone says "KeyError: 101"
    with pytest.raises(ValueError, match=r"notes\.pt is not a PyTorch weights file \(neither a torch\.save archive"):
        pretrained.read_state_dict(text)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match=r"broken\.safetensors is not a plain state dict"):
        pretrained.read_state_dict(broken)
    with pytest.raises(ValueError, match=r"unknown weights format; expected one of \['\.bin'"):
        pretrained.read_state_dict(tmp_path / "weights.npz")


@pytest.mark.parametrize(
    "text, local",
    [
        ("MahmoodLab/uni", False), ("hf-hub:MahmoodLab/uni", False), ("vinid/plip", False),
        ("./teacher", True), ("/abs/teacher", True), ("~/teacher", True), ("outputs/chaoyang/teacher", True),
        ("teacher", True), ("C:\\models\\teacher", True), ("org/..", True), ("a/b/c", True),
    ],
)
def test_is_local_path_decides_local_or_hub(text, local):
    assert pretrained.is_local_path(text) is local


def test_an_existing_folder_wins_over_a_hub_id_of_the_same_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not pretrained.is_local_path("org/model")
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert pretrained.is_local_path("org/model") and pretrained.is_local_path(tmp_path / "org" / "model")
    assert pretrained.is_local_path("org/typo")  # a missing checkpoint inside an existing folder: local


def test_missing_files_and_unknown_sources_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.load_teacher_backbone(_teacher(), tmp_path / "absent.bin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.resolve_weights_source(str(tmp_path / "uni"))
    with pytest.raises(ValueError, match="neither a weights file"):
        pretrained.resolve_weights_source("not a model")
    assert pretrained.resolve_weights_source("MahmoodLab/uni") == ("hub", "hf-hub:MahmoodLab/uni")
    assert pretrained.resolve_weights_source("vit_large_patch16_224.augreg_in21k")[0] == "timm"


def test_uni_key_names_and_shapes_match_the_default_teacher():
    """The real ViT-L/16 of UNI (model card arguments) against the default teacher, built on the meta device."""
    with torch.device("meta"):
        uni = timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
                                num_classes=0, dynamic_img_size=True)
        teacher = AmlpfTeacherForImageClassification(AmlpfTeacherConfig(class_names=CLASSES))
    assert teacher.config.backbone == UNI_BACKBONE and teacher.config.backbone_kwargs == UNI_BACKBONE_KWARGS
    uni_shapes = {k: tuple(v.shape) for k, v in uni.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in teacher.backbone.state_dict().items()} == uni_shapes
    assert uni_shapes["pos_embed"] == (1, 197, 1024) and uni_shapes["blocks.23.ls2.gamma"] == (1024,)
    assert teacher.backbone.pos_embed.device.type == "meta"


# ----------------------------------------------------------------------------------------------------- hub errors
def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/MahmoodLab/uni"))


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


HUB_FAILURES = {
    "gated": lambda: GatedRepoError("403 Client Error: Cannot access gated repo", response=_response(403)),
    "auth-401": lambda: HfHubHTTPError("401 Client Error: Unauthorized", response=_response(401)),
    "not-found": lambda: RepositoryNotFoundError("401 Client Error: Repository Not Found", response=_response(401)),
    "offline-cache": lambda: LocalEntryNotFoundError("Cannot find the requested files in the disk cache"),
    "offline-mode": lambda: OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled"),
    # what huggingface_hub raises when the Hub is unreachable and the file is not cached
    "connection": lambda: _raised_from(
        LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub"),
        httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"),
    ),
}
EXPECTED_ADVICE = {
    "gated": ["gated repository", "accept its terms on https://huggingface.co/MahmoodLab/uni",
              "https://huggingface.co/MahmoodLab/UNI", "hf auth login", "HF_TOKEN", "--teacher_weights PATH",
              "(Hub: GatedRepoError: 403 Client Error: Cannot access gated repo)"],
    "auth-401": ["not authorised", "hf auth login", "HF_TOKEN", "--teacher_weights PATH"],
    "not-found": ["check the name", "hf auth login", "--teacher_weights PATH"],
    "offline-cache": ["not in the local Hugging Face cache", "pytorch_model.bin", "--teacher_weights PATH"],
    "offline-mode": ["Hub cannot be reached", "--teacher_weights PATH"],
    "connection": ["Hub cannot be reached", "--teacher_weights PATH"],
}


@pytest.mark.parametrize("failure", sorted(HUB_FAILURES))
def test_teacher_hub_failures_say_what_to_do(monkeypatch, failure):
    teacher = _teacher()

    def failing_create_model(*args, **kwargs):
        raise HUB_FAILURES[failure]()

    monkeypatch.setattr(pretrained.timm, "create_model", failing_create_model)
    with pytest.raises(pretrained.HubAccessError) as info:
        pretrained.load_teacher_backbone(teacher, "hf-hub:MahmoodLab/uni")
    for advice in EXPECTED_ADVICE[failure]:
        assert advice in str(info.value), (failure, advice, str(info.value))
    assert teacher.config.backbone_weights is None


def test_other_failures_are_not_disguised_as_hub_errors(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("No pretrained weights exist for this model")

    teacher = _teacher()
    monkeypatch.setattr(pretrained.timm, "create_model", broken)
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        pretrained.load_teacher_backbone(teacher, "vit_large_patch16_224.augreg_in21k")


def test_hub_weights_are_copied_with_the_configs_architecture_and_token(monkeypatch, images):
    """A successful Hub load, with timm's download replaced by a local model: the call timm receives, the token
    it sees, and the copy into the teacher."""
    downloaded = _uni_like_backbone(seed=2)
    calls = []

    def fake_create_model(name, **kwargs):
        calls.append((name, kwargs, os.environ.get("HF_TOKEN")))
        return downloaded

    teacher = _teacher()
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(pretrained.timm, "create_model", fake_create_model)
    pretrained.load_teacher_backbone(teacher, "MahmoodLab/uni", token="hf_secret")
    assert calls == [("hf-hub:MahmoodLab/uni", dict(pretrained=True, num_classes=0, **TINY_VIT), "hf_secret")]
    assert "HF_TOKEN" not in os.environ
    assert teacher.config.backbone_weights == "hf-hub:MahmoodLab/uni"
    with torch.no_grad():
        torch.testing.assert_close(teacher.backbone(images), downloaded(images), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------- students
@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _tiny_clip(tokenizer, eos_token_id: int) -> CLIPModel:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_token_id, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, hidden_act="quick_gelu"),
        projection_dim=24,
        logit_scale_init_value=2.5,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # non-trivial norms so that a misplaced tensor would show
        for name, tensor in model.named_parameters():
            if "norm" in name:
                tensor.add_(torch.randn_like(tensor) * 0.2)
    return model


@pytest.fixture(scope="module", params=["legacy-eos-2", "eos-id"])
def clip_dir(request, tmp_path_factory, tokenizer):
    """A tiny transformers CLIP checkpoint with its tokenizer; OpenAI's HF configs keep the legacy
    ``eos_token_id=2`` (argmax pooling), newer ones the tokenizer's id."""
    eos = 2 if request.param == "legacy-eos-2" else tokenizer.eos_token_id
    clip = _tiny_clip(tokenizer, eos)
    path = tmp_path_factory.mktemp(request.param)
    clip.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, clip


def _features(output):
    """Projected features of ``get_image_features``/``get_text_features``: a tensor, or (transformers 5's CLIP
    contract) a ModelOutput whose ``pooler_output`` holds them."""
    return output.pooler_output if isinstance(output, ModelOutput) else output


def _text_features(clip: CLIPModel, tokenizer, texts):
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return _features(clip.get_text_features(**encoded))


def test_hf_clip_becomes_an_equivalent_student(clip_dir, tokenizer, images):
    path, clip = clip_dir
    student, student_tokenizer = pretrained.student_from_hf_clip(path, CLASSES, PROMPTS)
    assert isinstance(student, AmlpfClipForImageClassification) and student.config.vision_backend == "clip"
    assert student_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert student.logit_scale.item() == pytest.approx(2.5)
    assert student.config.text_config.eos_token_id == clip.config.text_config.eos_token_id
    with torch.no_grad():
        torch.testing.assert_close(_features(student.get_image_features(images)),
                                   _features(clip.get_image_features(pixel_values=images)), atol=1e-5, rtol=0)
        texts = PROMPTS["detailed"] + PROMPTS["label"]
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        torch.testing.assert_close(_features(student.get_text_features(**encoded)),
                                   _text_features(clip, tokenizer, texts), atol=1e-5, rtol=0)
        for index, level in enumerate(student.config.prompt_levels):
            expected = F.normalize(_text_features(clip, tokenizer, PROMPTS[level]), dim=-1)
            torch.testing.assert_close(student.prompt_embeds[index], expected, atol=1e-5, rtol=0)
        # CLIP's own zero-shot logits for one level equal the student's level logits.
        clip_logits = clip(pixel_values=images, **tokenizer(PROMPTS["basic"], padding=True, return_tensors="pt"))
        level_logits = student(images).level_logits[:, student.config.prompt_levels.index("basic")]
        torch.testing.assert_close(level_logits, clip_logits.logits_per_image, atol=1e-4, rtol=0)


def test_load_student_dispatches_on_the_checkpoint_kind(clip_dir, tokenizer, tmp_path, images):
    path, _ = clip_dir
    ablation = {level: PROMPTS[level] for level in ("label", "detailed")}
    two_levels, _ = pretrained.load_student(path, CLASSES, ablation)
    assert two_levels.config.prompt_levels == ["label", "detailed"] and two_levels.prompt_embeds.shape[0] == 2
    from_clip, _ = pretrained.load_student(path, CLASSES, PROMPTS)
    assert from_clip.config.vision_backend == "clip"

    saved = tmp_path / "student"
    from_clip.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    same, same_tokenizer = pretrained.load_student(saved)
    assert same.config.id2label == {0: "normal", 1: "adenoma"}
    assert same_tokenizer.get_vocab() == tokenizer.get_vocab()
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(images).logits, from_clip(images).logits, atol=1e-5, rtol=0)

    # Other classes and levels re-run set_prompts with the saved tokenizer.
    names = ["tumour", "stroma", "normal"]
    prompts = {"label": names, "detailed": [f"{n} tissue with many cells" for n in names]}
    relabelled, _ = pretrained.load_student(saved, names, prompts)
    assert relabelled.config.id2label == dict(enumerate(names))
    assert relabelled.config.prompt_levels == ["label", "detailed"]
    assert relabelled.prompt_embeds.shape == (2, 3, 24) and relabelled.fusion_weights.shape == (2,)
    with torch.no_grad():
        encoded = tokenizer(prompts["detailed"], padding=True, return_tensors="pt")
        expected = F.normalize(_features(relabelled.get_text_features(**encoded)), dim=-1)
    torch.testing.assert_close(relabelled.prompt_embeds[1], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pass prompts for the new classes"):
        pretrained.load_student(saved, names)


def test_config_only_preset_gives_a_randomly_initialised_student(tmp_path, tokenizer, images):
    from modeling_amlpf.pretrained.presets import tiny_student_config

    preset = tmp_path / "student-tiny"
    model = AmlpfClipForImageClassification(tiny_student_config(tokenizer, CLASSES))
    model.set_prompts(PROMPTS, tokenizer, class_names=CLASSES)
    model.config.save_pretrained(preset)
    tokenizer.save_pretrained(preset)
    assert not any(p.name.endswith((".safetensors", ".bin")) for p in preset.iterdir())

    student, _ = pretrained.load_student(preset)
    assert student.config.prompt_input_ids == model.config.prompt_input_ids
    assert student.prompt_embeds.abs().sum() > 0  # prompts encoded by the (random) text tower at construction
    assert student(F.interpolate(images, size=64)).logits.shape == (2, 2)


def test_load_student_refuses_other_checkpoints(tmp_path):
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="model_type 'vit'.*modeling_amlpf.convert open_clip"):
        pretrained.load_student(vit)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        pretrained.load_student(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.load_student(tmp_path / "students" / "typo")
    (tmp_path / "RN50.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="python -m modeling_amlpf.convert open_clip --checkpoint"):
        pretrained.load_student(tmp_path / "RN50.pt")


def test_student_hub_failures_say_what_to_do(monkeypatch):
    def gated(*args, **kwargs):
        try:
            raise GatedRepoError("403 Client Error", response=_response(403))
        except GatedRepoError as err:  # what transformers does: OSError raised from the hub error
            raise OSError("You are trying to access a gated repo.") from err

    monkeypatch.setattr(pretrained.CLIPModel, "from_pretrained", gated)
    gated_advice = r"(?s)gated repository.*hf download org/gated-clip --local-dir"
    with pytest.raises(pretrained.HubAccessError, match=gated_advice):
        pretrained.student_from_hf_clip("org/gated-clip", CLASSES, PROMPTS)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'") from LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(pretrained.AutoConfig, "from_pretrained", offline)
    with pytest.raises(pretrained.HubAccessError, match="not in the local Hugging Face cache"):
        pretrained.load_student("org/some-student", CLASSES, PROMPTS)


def test_mismatched_eos_ids_are_refused(tokenizer):
    with pytest.raises(ValueError, match=r"eos_token_id \(5\) differs from the tokenizer's"):
        pretrained._check_text_pooling({"eos_token_id": 5}, tokenizer, "ckpt")
    pretrained._check_text_pooling({"eos_token_id": 2}, tokenizer, "ckpt")  # legacy: argmax pooling
    pretrained._check_text_pooling({"eos_token_id": tokenizer.eos_token_id}, tokenizer, "ckpt")
