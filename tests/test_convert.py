"""open_clip / OpenAI ResNet CLIP -> student conversion, against open_clip itself (random weights, offline)."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, OPENAI_CLIP_MEAN
from transformers.utils import ModelOutput

import modeling_amlpf  # noqa: F401  (registers the Auto classes)
from modeling_amlpf.pretrained import convert
from modeling_amlpf.pretrained.prompts import load_prompt_spec

open_clip = pytest.importorskip("open_clip")

ATOL = 1e-4


def _randomise_(model: nn.Module, seed: int) -> nn.Module:
    """open_clip zero-initialises each bottleneck's last BatchNorm and starts norms at identity, which would hide
    a wrongly mapped tensor: give every norm, bias and running statistic random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point() or name == "logit_scale" or name.endswith("attn_mask"):
                continue
            if name.endswith("running_var") or (tensor.dim() == 1 and name.endswith("weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif tensor.dim() == 1:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
        model.logit_scale.fill_(3.0)
    return model.eval()


def _open_clip_model(name: str, state_dict: dict) -> nn.Module:
    model = open_clip.create_model(name, pretrained=None)
    model.load_state_dict(state_dict)
    return model.eval()


@pytest.fixture(scope="module")
def rn50():
    """A randomised open_clip RN50 (GELU text tower) and its state dict."""
    torch.manual_seed(0)
    model = _randomise_(open_clip.create_model("RN50", pretrained=None), seed=0)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def rn50_quickgelu(rn50):
    """The same weights in open_clip's QuickGELU variant (what OpenAI trained)."""
    return _open_clip_model("RN50-quickgelu", rn50[1])


@pytest.fixture(scope="module")
def chaoyang():
    return load_prompt_spec("chaoyang")


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    return open_clip.get_tokenizer("RN50")


@pytest.fixture(scope="module")
def probe_tokens(chaoyang, open_clip_tokenizer):
    """open_clip tokens (padded with 0 to 77) of a basic and a detailed prompt (open_clip always encodes all 77
    positions, so every probe costs a full-context pass: keep them few)."""
    return open_clip_tokenizer([chaoyang["prompts"]["basic"][3], chaoyang["prompts"]["detailed"][3]])


def _features(output) -> torch.Tensor:
    """Projected features of ``get_image_features``/``get_text_features``: a tensor, or (transformers 5's CLIP
    contract) a ModelOutput whose ``pooler_output`` holds them."""
    return output.pooler_output if isinstance(output, ModelOutput) else output


def _features_equal(ours, reference: torch.Tensor) -> None:
    torch.testing.assert_close(_features(ours), reference, atol=ATOL, rtol=0)


def test_rn50_bin_checkpoint_converts_to_an_equivalent_student(tmp_path, rn50, chaoyang, probe_tokens,
                                                               open_clip_tokenizer):
    reference, state_dict = rn50
    checkpoint = tmp_path / "rn50.bin"
    torch.save(state_dict, checkpoint)
    out = tmp_path / "student"
    convert.main(["open_clip", "--checkpoint", str(checkpoint), "--model", "RN50", "--output_dir", str(out),
                  "--prompts", "chaoyang"])

    student = AutoModel.from_pretrained(out).eval()
    assert student.config.timm_model_name == "resnet50_clip"
    assert student.config.text_config.hidden_act == "gelu"
    assert [student.config.id2label[i] for i in range(4)] == chaoyang["class_names"]
    assert student.logit_scale.item() == pytest.approx(3.0)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _features_equal(student.get_image_features(images), reference.encode_image(images))
        _features_equal(student.get_text_features(probe_tokens), reference.encode_text(probe_tokens))
        # The stored prompt embeddings were made with the converted tokenizer: they equal open_clip's
        # normalised embeddings of open_clip's tokens.
        labels = open_clip_tokenizer(chaoyang["prompts"]["label"])
        expected = torch.nn.functional.normalize(reference.encode_text(labels), dim=-1)
        level = student.config.prompt_levels.index("label")
        _features_equal(student.prompt_embeds[level], expected)

    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.image_mean == pytest.approx(IMAGENET_DEFAULT_MEAN) and processor.crop_size == 224
    assert AutoTokenizer.from_pretrained(out).eos_token_id == 49407
    assert json.loads((out / "conversion.json").read_text())["openai_archive"] is False


def test_rn50_quickgelu_safetensors_uses_quick_gelu(tmp_path, rn50, rn50_quickgelu, probe_tokens):
    from safetensors.torch import save_file

    gelu_reference, state_dict = rn50
    checkpoint = tmp_path / "rn50-quickgelu.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(checkpoint))
    out = tmp_path / "student"
    convert.main(["open_clip", "--checkpoint", str(checkpoint), "--model", "RN50-quickgelu", "--output_dir", str(out),
                  "--class_names", "benign,malignant", "--image_stats", "clip"])

    student = AutoModel.from_pretrained(out).eval()
    assert student.config.text_config.hidden_act == "quick_gelu"
    assert student.config.id2label == {0: "benign", 1: "malignant"}
    assert student.config.prompts["basic"] == ["The tissue sample is a benign.", "The tissue sample is a malignant."]
    # The image tower (ReLU, no GELU anywhere) is the one compared with open_clip in the RN50 test.
    detailed = probe_tokens[1:]
    with torch.no_grad():
        ours = _features(student.get_text_features(detailed))
        _features_equal(ours, rn50_quickgelu.encode_text(detailed))
        # The activation matters: the GELU reading of the same weights is measurably different.
        assert (ours - gelu_reference.encode_text(detailed)).abs().max() > 100 * ATOL
    assert AutoImageProcessor.from_pretrained(out).image_mean == pytest.approx(OPENAI_CLIP_MEAN)


def _torchscript_archive(state_dict: dict, path) -> None:
    """A TorchScript archive with the state-dict layout of OpenAI's RN50.pt (the model tensors plus the
    ``input_resolution``/``context_length``/``vocab_size`` entries). Scripting the whole CLIP would take seconds;
    the converter only reads ``torch.jit.load(path).state_dict()``."""
    root = nn.Module()
    for key, tensor in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, tensor)
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        root.register_buffer(key, torch.tensor(value))
    torch.jit.script(root).save(str(path))


@pytest.fixture(scope="module")
def openai_archive(tmp_path_factory, rn50):
    path = tmp_path_factory.mktemp("openai") / "RN50.pt"
    _torchscript_archive(rn50[1], path)
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_openai_torchscript_archive_is_read_and_recognised(openai_archive, rn50):
    state_dict = rn50[1]
    read, is_openai = convert.read_clip_checkpoint(openai_archive)
    assert is_openai and set(read) == set(state_dict)  # the three OpenAI entries are dropped
    assert all(torch.equal(read[k], v) for k, v in state_dict.items())
    # QuickGELU + these weights == open_clip's RN50-quickgelu is what the safetensors test checks numerically.
    assert convert.uses_quick_gelu("RN50", is_openai_archive=True)
    assert not convert.uses_quick_gelu("RN50", is_openai_archive=False)
    assert convert.uses_quick_gelu("RN50", quick_gelu=True) and convert.uses_quick_gelu("RN50-quickgelu")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_cli_on_openai_archive_picks_quick_gelu_and_placeholders(tmp_path, monkeypatch, openai_archive, rn50,
                                                                 open_clip_tokenizer):
    """The CLI's decisions without paying for a second full RN50 build: the archive is read for real, the
    student build is replaced by a recorder (the build itself is tested above)."""
    seen = {}

    def recording_student(state_dict, model_name, class_names, prompts, *, quick_gelu):
        seen.update(keys=set(state_dict), model_name=model_name, class_names=class_names, prompts=prompts,
                    quick_gelu=quick_gelu)
        return SimpleNamespace(save_pretrained=lambda path: path.mkdir(parents=True)), convert.openai_clip_tokenizer()

    monkeypatch.setattr(convert, "student_from_open_clip", recording_student)
    out = tmp_path / "student"
    convert.main(["open_clip", "--checkpoint", str(openai_archive), "--model", "RN50", "--output_dir", str(out)])
    assert seen["quick_gelu"] is True and seen["model_name"] == "RN50" and seen["keys"] == set(rn50[1])
    assert seen["class_names"] == ["class_0", "class_1"]  # documented placeholders
    assert seen["prompts"]["label"] == ["class 0", "class 1"]
    record = json.loads((out / "conversion.json").read_text())
    assert record["openai_archive"] is True and record["text_activation"] == "quick_gelu"
    assert AutoImageProcessor.from_pretrained(out).image_mean == pytest.approx(IMAGENET_DEFAULT_MEAN)
    ids = AutoTokenizer.from_pretrained(out)("serrated adenoma")["input_ids"]
    assert open_clip_tokenizer(["serrated adenoma"])[0, : len(ids)].tolist() == ids


def test_tokenizer_reproduces_open_clip_token_ids(chaoyang):
    ours = convert.openai_clip_tokenizer()
    reference = open_clip.get_tokenizer("RN50")
    texts = [text for level in chaoyang["prompts"].values() for text in level] + [
        "An H&E-stained  slide, 40x; it's  HYPERCHROMATIC (grade 3/4)!",
        "tubulo-villous adenoma, 2.5 mm",
    ]
    expected = reference(texts)
    for text, row, ids in zip(texts, expected, ours(texts)["input_ids"]):
        assert ids[0] == 49406 and ids[-1] == 49407, text
        assert row[: len(ids)].tolist() == ids, text
        assert not row[len(ids):].any(), text  # open_clip pads with 0 after the end-of-text token


def test_wrong_architecture_is_reported(rn50):
    with pytest.raises(ValueError, match=r"RN101.*missing keys \(\d+\): \['stages\.2\.6"):
        convert.student_from_open_clip(rn50[1], "RN101")


def test_truncated_text_tower_is_reported(rn50):
    state_dict = {k: v for k, v in rn50[1].items() if not k.startswith("transformer.resblocks.11.")}
    expected = r"lacks the text-tower tensor 'transformer\.resblocks\.11\.attn\.in_proj_weight'"
    with pytest.raises(ValueError, match=expected):
        convert.student_from_open_clip(state_dict, "RN50")


def test_non_resnet_models_are_refused():
    with pytest.raises(ValueError, match="not a ResNet CLIP"):
        convert.open_clip_model_config("ViT-B-32")
    with pytest.raises(ValueError, match="has no model config"):
        convert.open_clip_model_config("RN51")


class _NotATensor:
    pass


def test_pickles_with_objects_are_refused(tmp_path):
    path = tmp_path / "trojan.pt"
    torch.save({"state_dict": {"logit_scale": torch.tensor(1.0)}, "obj": _NotATensor()}, path)
    with pytest.raises(ValueError, match=r"trojan\.pt is not a plain state dict"):
        convert.read_clip_checkpoint(path)


def test_files_that_are_not_checkpoints_are_named(tmp_path):
    text = tmp_path / "RN50.pt"
    text.write_text("<html>not a checkpoint</html>\n")  # a failed download saved under the checkpoint's name
    with pytest.raises(ValueError, match=r"RN50\.pt is not a PyTorch weights file"):
        convert.read_clip_checkpoint(text)


def test_a_non_empty_output_dir_is_refused_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "student"
    out.mkdir()
    (out / "config.json").write_text("{}")
    monkeypatch.setattr(convert, "read_clip_checkpoint", lambda path: pytest.fail("read before the folder check"))
    with pytest.raises(FileExistsError, match=r"student is not empty \(1 entries\).*--overwrite_output_dir"):
        convert.main(["open_clip", "--checkpoint", "RN50.pt", "--model", "RN50", "--output_dir", str(out)])


def test_training_checkpoints_are_unwrapped(tmp_path):
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {"module.logit_scale": torch.tensor(2.0)}}, path)
    state_dict, is_openai = convert.read_clip_checkpoint(path)
    assert list(state_dict) == ["logit_scale"] and not is_openai


def test_other_resnet_layouts_convert_exactly(tmp_path):
    """A ResNet CLIP that is none of OpenAI's sizes goes through the explicit-stages timm path; registered as an
    open_clip config (name unique to this test), it is small enough to compare images and text cheaply."""
    name = "RN-amlpf-tiny-test"
    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16, "patch_size": None},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(4)
    reference = _randomise_(open_clip.create_model(name, pretrained=None), seed=4)

    student, tokenizer = convert.student_from_open_clip(reference.state_dict(), name, ["a", "b"])
    assert student.config.timm_model_name == "resnet50_clip"
    assert student.config.timm_model_kwargs["stem_chs"] == [8, 8, 16]
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    tokens = open_clip.get_tokenizer(name)(["adenoma", "a histopathology image of serrated crypts"])
    with torch.no_grad():
        _features_equal(student.get_image_features(images), reference.encode_image(images))
        _features_equal(student.get_text_features(tokens), reference.encode_text(tokens))


def test_unknown_resnet_layouts_describe_their_stages():
    name, kwargs = convert.timm_tower_for({"layers": [1, 1, 1, 1], "width": 16, "image_size": 64})
    assert name == "resnet50_clip" and kwargs["stem_chs"] == [8, 8, 16]
    assert [b["c"] for b in kwargs["blocks"]] == [64, 128, 256, 512]
    assert convert.timm_tower_for({"layers": [4, 6, 10, 6], "width": 80, "image_size": 288}) == (
        "resnet50x4_clip", {"img_size": 288})
