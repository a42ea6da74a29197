"""Convert an open_clip / OpenAI ResNet CLIP checkpoint into an AMLPF-CLIP student checkpoint.

    python -m modeling_amlpf.convert open_clip --checkpoint RN50.pt --model RN50 --output_dir students/rn50 \
        [--prompts chaoyang] [--class_names a,b,c] [--quick_gelu] [--image_stats imagenet|clip] \
        [--overwrite_output_dir]

The checkpoint may be OpenAI's TorchScript archive (``RN50.pt``), an open_clip state dict or training checkpoint
(``.bin``/``.pt``/``.pth``, read with ``weights_only=True``) or a ``.safetensors`` file. The architecture comes
from open_clip's bundled model config of ``--model`` (``RN50``, ``RN101``, ``RN50x4``, ``RN50x16``, ``RN50x64``
and their ``-quickgelu`` variants). The image tower becomes the matching timm ``resnet*_clip`` model (keys
converted by timm's own OpenAI-CLIP checkpoint filter), the text tower a ``CLIPTextModelWithProjection``.

Activation of the text tower: OpenAI trained with QuickGELU; open_clip's plain ``RN50`` config means GELU and
``RN50-quickgelu`` QuickGELU. OpenAI's TorchScript archives are recognised by their ``input_resolution``,
``context_length`` and ``vocab_size`` entries and always get QuickGELU; for OpenAI weights re-saved as a plain
state dict, use ``--model RN50-quickgelu`` or ``--quick_gelu``.

Without ``--prompts``/``--class_names`` the checkpoint gets template prompts for the placeholder classes
``class_0, class_1``: replace them with ``set_prompts`` (the training CLI does it from the dataset's classes).
The image processor keeps the paper's views with the model's input size as crop size (224 for RN50, 288 for
RN50x4, ...) and the paper's ImageNet mean/std unless ``--image_stats clip`` is given. ``conversion.json`` records
the source file name, model name, activation and statistics. A non-empty ``--output_dir`` is refused unless
``--overwrite_output_dir`` is given.
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

import torch
from timm.models.byobnet import checkpoint_filter_fn
from transformers import CLIPTokenizer
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import logging

from ..models.configuration_amlpf import AmlpfClipConfig
from ..models.image_processing_amlpf import AmlpfImageProcessor
from ..models.modeling_amlpf import AmlpfClipForImageClassification
from .prompts import load_prompt_spec, load_prompts, template_prompts
from .weights import build_without_init, load_matching_state_dict, read_state_dict

logger = logging.get_logger(__name__)

OPENAI_ARCHIVE_KEYS = ("input_resolution", "context_length", "vocab_size")
PLACEHOLDER_CLASS_NAMES = ["class_0", "class_1"]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
IMAGE_STATS = {"imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), "clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)}
# open_clip ModifiedResNet (layers, width) -> the timm model with the same architecture.
TIMM_RESNET_CLIP = {
    ((3, 4, 6, 3), 64): "resnet50_clip",
    ((3, 4, 23, 3), 64): "resnet101_clip",
    ((4, 6, 10, 6), 80): "resnet50x4_clip",
    ((6, 8, 18, 8), 96): "resnet50x16_clip",
    ((3, 15, 36, 10), 128): "resnet50x64_clip",
}
# Text-tower options of open_clip that a CLIPTextModelWithProjection cannot express, with the supported value.
_TEXT_DEFAULTS = {
    "hf_model_name": None, "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False,
    "pool_type": "argmax", "proj_bias": False, "proj_type": "linear", "ls_init_value": None, "act_kwargs": None,
    "norm_kwargs": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
}


def _require_open_clip():
    try:
        import open_clip
    except ImportError as err:  # a dev extra: only conversion needs it
        raise ImportError(
            "converting open_clip/OpenAI checkpoints needs open_clip_torch: pip install 'open_clip_torch>=2.24' "
            "(or pip install 'amlpf[dev]')"
        ) from err
    return open_clip


# ----------------------------------------------------------------------------------------------------- reading
def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_clip_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict of an open_clip/OpenAI checkpoint and whether it is OpenAI's TorchScript archive.

    TorchScript archives are read with ``torch.jit.load`` (TorchScript code, not arbitrary pickled objects);
    everything else by :func:`~modeling_amlpf.pretrained.read_state_dict` (``weights_only=True`` or safetensors;
    training checkpoints ``{"state_dict": ...}`` and DDP ``module.`` prefixes are unwrapped).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CLIP checkpoint {path} does not exist (--checkpoint expects a file)")
    if _is_torchscript_archive(path):
        state_dict = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    else:
        state_dict = read_state_dict(path)
    is_openai_archive = all(key in state_dict for key in OPENAI_ARCHIVE_KEYS)
    for key in OPENAI_ARCHIVE_KEYS:
        state_dict.pop(key, None)
    return state_dict, is_openai_archive


# ----------------------------------------------------------------------------------------------------- tokenizer
def openai_clip_tokenizer(context_length: int = 77) -> CLIPTokenizer:
    """OpenAI's CLIP BPE tokenizer built offline from open_clip's bundled vocabulary, the way OpenAI's
    ``SimpleTokenizer`` builds it (byte symbols, their ``</w>`` forms, 48894 merges, then the two special
    tokens: ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407)."""
    _require_open_clip()
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)


# ----------------------------------------------------------------------------------------------------- configs
def open_clip_model_config(model_name: str) -> dict:
    """open_clip's bundled config of ``model_name``, checked to be a ResNet CLIP this converter supports."""
    open_clip = _require_open_clip()
    config = open_clip.get_model_config(model_name)
    supported = sorted(name for name in open_clip.list_models() if name.startswith("RN"))
    if config is None:
        raise ValueError(f"open_clip has no model config {model_name!r}; ResNet CLIP models: {supported}")
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if not isinstance(vision.get("layers"), (list, tuple)) or vision.get("timm_model_name"):
        raise ValueError(
            f"{model_name!r} is not a ResNet CLIP (only {supported} convert to a timm resnet*_clip tower); "
            "for ViT CLIPs use a transformers CLIP checkpoint with modeling_amlpf.pretrained.student_from_hf_clip"
        )
    unsupported = {k: text[k] for k, default in _TEXT_DEFAULTS.items() if text.get(k, default) != default}
    if unsupported:
        raise ValueError(f"{model_name!r}: text tower options {unsupported} have no CLIPTextModel equivalent")
    return config


def timm_tower_for(vision_cfg: dict) -> tuple[str, dict]:
    """The timm model name and kwargs of an open_clip ModifiedResNet: a named ``resnet*_clip`` model when the
    layers/width are OpenAI's, else ``resnet50_clip`` with the stages and stem described explicitly."""
    layers, width = tuple(int(n) for n in vision_cfg["layers"]), int(vision_cfg["width"])
    kwargs = {"img_size": int(vision_cfg["image_size"])}
    name = TIMM_RESNET_CLIP.get((layers, width))
    if name is None:
        name = "resnet50_clip"
        kwargs["stem_chs"] = [width // 2, width // 2, width]
        kwargs["blocks"] = [
            {"type": "bottle", "d": depth, "c": width * 4 * 2**i, "s": 1 if i == 0 else 2, "br": 0.25}
            for i, depth in enumerate(layers)
        ]
    return name, kwargs


def uses_quick_gelu(model_name: str, *, is_openai_archive: bool = False, quick_gelu: bool = False) -> bool:
    """Whether the text tower uses QuickGELU: forced (``--quick_gelu``), named (``-quickgelu`` configs), or
    OpenAI's TorchScript archive (OpenAI trained with QuickGELU, whatever ``--model`` says)."""
    named = bool(open_clip_model_config(model_name).get("quick_gelu", False))
    if is_openai_archive and not (quick_gelu or named):
        logger.warning(f"OpenAI TorchScript archive given with --model {model_name}: using QuickGELU as OpenAI did")
    return quick_gelu or named or is_openai_archive


def student_config_from_open_clip(
    model_name: str, *, quick_gelu: bool = False, class_names: list[str] | None = None
) -> AmlpfClipConfig:
    """The student architecture of an open_clip ResNet model. ``quick_gelu=True`` forces QuickGELU in the text
    tower; otherwise it follows the open_clip config (``-quickgelu`` names)."""
    config = open_clip_model_config(model_name)
    vision, text = config["vision_cfg"], config["text_cfg"]
    timm_name, timm_kwargs = timm_tower_for(vision)
    width = int(text.get("width", 512))
    text_config = {
        "vocab_size": int(text.get("vocab_size", 49408)),
        "hidden_size": width,
        "intermediate_size": int(width * float(text.get("mlp_ratio", 4.0))),
        "num_hidden_layers": int(text.get("layers", 12)),
        "num_attention_heads": int(text.get("heads", 8)),
        "max_position_embeddings": int(text.get("context_length", 77)),
        "hidden_act": "quick_gelu" if quick_gelu or config.get("quick_gelu", False) else "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": int(config["embed_dim"]),
        # OpenAI's vocabulary: pooling at the first <|endoftext|> equals open_clip's argmax pooling.
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
    }
    return AmlpfClipConfig(
        vision_backend="timm",
        timm_model_name=timm_name,
        timm_model_kwargs=timm_kwargs,
        text_config=text_config,
        projection_dim=int(config["embed_dim"]),
        class_names=list(class_names or PLACEHOLDER_CLASS_NAMES),
    )


# ----------------------------------------------------------------------------------------------------- weights
def convert_text_state_dict(
    state_dict: dict[str, torch.Tensor], num_layers: int
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """OpenAI/open_clip text-tower keys -> ``CLIPTextModelWithProjection`` keys (HF_NOTES.md mapping).
    Returns the converted tensors and the source keys they came from."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state_dict[key]

    out = {
        "text_model.embeddings.token_embedding.weight": take("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": take("positional_embedding"),
        "text_model.final_layer_norm.weight": take("ln_final.weight"),
        "text_model.final_layer_norm.bias": take("ln_final.bias"),
        # open_clip computes x @ P; a Linear computes x @ W^T.
        "text_projection.weight": take("text_projection").t().contiguous(),
    }
    renames = {
        "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    }
    for i in range(num_layers):
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = take(f"{src}attn.in_proj_{kind}").chunk(3, dim=0)
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{dst}self_attn.{name}.{kind}"] = part.contiguous()
            for old, new in renames.items():
                out[f"{dst}{new}.{kind}"] = take(f"{src}{old}.{kind}")
    return out, used


def convert_visual_state_dict(state_dict: dict[str, torch.Tensor], timm_model) -> dict[str, torch.Tensor]:
    """``visual.*`` keys -> the timm ``resnet*_clip`` layout, with timm's own OpenAI-CLIP checkpoint filter."""
    if "visual.conv1.weight" not in state_dict:
        raise ValueError("the checkpoint has no 'visual.conv1.weight': not an OpenAI/open_clip ResNet CLIP")
    return checkpoint_filter_fn(state_dict, timm_model)


def student_from_open_clip(
    state_dict: dict[str, torch.Tensor],
    model_name: str,
    class_names: list[str] | None = None,
    prompts: dict[str, list[str]] | None = None,
    *,
    quick_gelu: bool = False,
) -> tuple[AmlpfClipForImageClassification, CLIPTokenizer]:
    """Build the student of ``model_name`` and load an open_clip/OpenAI state dict into it; every tensor of
    the checkpoint must be used (an unused one means a wrong architecture and raises)."""
    class_names = list(class_names or PLACEHOLDER_CLASS_NAMES)
    config = student_config_from_open_clip(model_name, quick_gelu=quick_gelu, class_names=class_names)
    num_layers = config.text_config.num_hidden_layers
    expected = (f"open_clip {model_name!r} (image: timm {config.timm_model_name} {config.timm_model_kwargs}; "
                f"text: {num_layers} layers of width {config.text_config.hidden_size})")
    if "logit_scale" not in state_dict:
        raise ValueError(f"the checkpoint has no 'logit_scale': not a complete CLIP state dict ({expected})")
    model = build_without_init(AmlpfClipForImageClassification, config)

    visual = convert_visual_state_dict(state_dict, model.vision_model)
    load_matching_state_dict(model.vision_model, visual, origin="the checkpoint's image tower", expected=expected)
    try:
        text, text_keys = convert_text_state_dict(state_dict, num_layers)
    except KeyError as err:
        raise ValueError(f"the checkpoint lacks the text-tower tensor {err} of {expected}") from None
    load_matching_state_dict(model.text_model, text, origin="the checkpoint's text tower", expected=expected)
    unused = sorted(set(state_dict) - {k for k in state_dict if k.startswith("visual.")} - text_keys
                    - {"logit_scale", "attn_mask"})
    if unused:
        raise ValueError(f"checkpoint tensors not used by {expected}: {unused[:10]} ({len(unused)} in all)")
    with torch.no_grad():
        model.logit_scale.copy_(state_dict["logit_scale"].reshape(()))
    model.config.logit_scale_init_value = float(state_dict["logit_scale"])

    tokenizer = openai_clip_tokenizer(config.text_config.max_position_embeddings)
    model.set_prompts(prompts or template_prompts(class_names), tokenizer, class_names=class_names)
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------- CLI
def resolve_classes_and_prompts(
    class_names: list[str] | None, prompts: str | None
) -> tuple[list[str], dict[str, list[str]]]:
    """``--prompts`` (a file or bundled name; ordered by ``--class_names`` if given), else template prompts of
    ``--class_names``, else placeholders ``class_0, class_1``."""
    if prompts:
        if class_names:
            return list(class_names), load_prompts(prompts, class_names)
        spec = load_prompt_spec(prompts)
        return spec["class_names"], spec["prompts"]
    if class_names:
        return list(class_names), template_prompts(class_names)
    return list(PLACEHOLDER_CLASS_NAMES), template_prompts(PLACEHOLDER_CLASS_NAMES)


def check_output_dir(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse to write a checkpoint over a non-empty folder unless asked to (``--overwrite_output_dir``)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"--output_dir {output_dir} is a file; pass a folder for the converted checkpoint")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output_dir {output_dir} is not empty ({len(list(output_dir.iterdir()))} entries): pass an empty or "
            "new folder, or --overwrite_output_dir to write the converted checkpoint over it"
        )
    return output_dir


def convert_open_clip_checkpoint(
    checkpoint: str | Path,
    model_name: str,
    output_dir: str | Path,
    *,
    class_names: list[str] | None = None,
    prompts: str | None = None,
    quick_gelu: bool = False,
    image_stats: str = "imagenet",
    overwrite_output_dir: bool = False,
) -> Path:
    """Convert ``checkpoint`` and write a student checkpoint directory (model, tokenizer, image processor)."""
    if image_stats not in IMAGE_STATS:
        raise ValueError(f"image_stats must be one of {sorted(IMAGE_STATS)}, got {image_stats!r}")
    output_dir = check_output_dir(output_dir, overwrite_output_dir)
    state_dict, is_openai_archive = read_clip_checkpoint(checkpoint)
    config = open_clip_model_config(model_name)
    quick_gelu = uses_quick_gelu(model_name, is_openai_archive=is_openai_archive, quick_gelu=quick_gelu)
    names, level_prompts = resolve_classes_and_prompts(class_names, prompts)
    model, tokenizer = student_from_open_clip(state_dict, model_name, names, level_prompts, quick_gelu=quick_gelu)
    if not prompts and not class_names:  # said once the checkpoint has converted, not before it is checked
        logger.warning(
            f"no --prompts/--class_names: wrote template prompts for placeholder classes {PLACEHOLDER_CLASS_NAMES}; "
            "replace them with set_prompts (the training CLI does it from the dataset's classes)"
        )

    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    mean, std = IMAGE_STATS[image_stats]
    image_size = int(config["vision_cfg"]["image_size"])
    AmlpfImageProcessor(crop_size=image_size, image_mean=mean, image_std=std).save_pretrained(output_dir)
    source = {"checkpoint": Path(checkpoint).name, "open_clip_model": model_name, "openai_archive": is_openai_archive,
              "text_activation": "quick_gelu" if quick_gelu else "gelu", "image_stats": image_stats}
    (output_dir / "conversion.json").write_text(json.dumps(source, indent=2) + "\n")
    return output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_amlpf.convert", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="source", required=True)
    oc = sub.add_parser("open_clip", help="open_clip / OpenAI ResNet CLIP (RN50, RN101, RN50x4/x16/x64)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    oc.add_argument("--checkpoint", required=True,
                    help="OpenAI TorchScript .pt, open_clip .bin/.pt/.pth or .safetensors")
    oc.add_argument("--model", required=True, help="open_clip model name, e.g. RN50 or RN50-quickgelu")
    oc.add_argument("--output_dir", required=True)
    oc.add_argument("--class_names", default=None, help="comma-separated class names, in label order")
    oc.add_argument("--prompts", default=None, help="prompt file or bundled name (e.g. chaoyang)")
    oc.add_argument("--quick_gelu", action="store_true",
                    help="QuickGELU text tower (OpenAI weights saved as a plain state dict)")
    oc.add_argument("--image_stats", choices=sorted(IMAGE_STATS), default="imagenet",
                    help="normalisation of the image processor (the paper: imagenet)")
    oc.add_argument("--overwrite_output_dir", action="store_true",
                    help="write into a non-empty --output_dir (refused otherwise)")
    return parser


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    class_names = [n.strip() for n in args.class_names.split(",") if n.strip()] if args.class_names else None
    out = convert_open_clip_checkpoint(
        args.checkpoint, args.model, args.output_dir, class_names=class_names, prompts=args.prompts,
        quick_gelu=args.quick_gelu, image_stats=args.image_stats, overwrite_output_dir=args.overwrite_output_dir,
    )
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
