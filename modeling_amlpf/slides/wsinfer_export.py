"""Every AMLPF checkpoint as a WSInfer model: `torchscript_model.pt`, WSInfer's `config.json` and a model card.

WSInfer (and QuPath's WSInfer extension) tiles a slide at `spacing_um_px`, resizes each tile to
`patch_size_pixels`, applies `ToTensor` + `Normalize` and runs a TorchScript module on the batch; it applies the
softmax to what the module returns. The exported module therefore takes the normalised tiles and does the rest
itself: the processor's evaluation views (`TileViews`), the model, and the view aggregation the model applies
((mean of the crop logits + global logits) / 2), returning the image logits.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import HfApi
from torch import nn

from ..evaluation.prediction import PredictionInputError, load_model_and_processor
from ..utils import UserError
from .model_card import wsinfer_model_card
from .spacing import read_split_info, resolve_patch_size, resolve_spacing
from .tile_views import TileViews

SPEC_VERSION = "1.0"
MODEL_FILE = "torchscript_model.pt"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
WSINFER_FILES = (CONFIG_FILE, MODEL_FILE, CARD_FILE)
KIND_OF_MODEL_TYPE = {"amlpf_teacher": "teacher", "amlpf_clip": "student"}
CHECK_TILES = 4  # synthetic tiles the export runs through both paths to measure its exactness


class WsinferModule(nn.Module):
    """(B, 3, N, N) normalised tiles -> (B, C) image logits: the processor's evaluation views, then the model."""

    def __init__(self, model: nn.Module, views: TileViews):
        super().__init__()
        self.views = views
        self.model = model

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        # return_dict=False: a tuple whose first entry is the aggregated image logits (loss is None, so dropped)
        return self.model(pixel_values=self.views(tiles), return_dict=False)[0]


@dataclass
class WsinferExport:
    """What `export_wsinfer` wrote and measured."""

    output_dir: Path
    config: dict
    spacing_source: str
    patch_size_source: str
    max_probability_difference: float
    check_tiles: int = CHECK_TILES
    files: list[Path] = field(default_factory=list)


def tile_transform(processor) -> list[dict]:
    """WSInfer's transform list: the tile to `patch_size` (a no-op at the model's spacing), ToTensor, Normalize."""
    mean = list(processor.image_mean) if processor.do_normalize else [0.0, 0.0, 0.0]
    std = list(processor.image_std) if processor.do_normalize else [1.0, 1.0, 1.0]
    return [{"name": "ToTensor"}, {"name": "Normalize", "arguments": {"mean": mean, "std": std}}]


def wsinfer_config(model, processor, patch_size: int, spacing: float) -> dict:
    """WSInfer's model configuration (spec_version 1.0), as its schema defines it."""
    config = model.config
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    transform = [{"name": "Resize", "arguments": {"size": int(patch_size)}}, *tile_transform(processor)]
    return {
        "spec_version": SPEC_VERSION,
        "architecture": architecture_name(config),
        "num_classes": int(config.num_labels),
        "class_names": names,
        "patch_size_pixels": int(patch_size),
        "spacing_um_px": float(spacing),
        "transform": transform,
    }


def architecture_name(config) -> str:
    """A readable architecture: the AMLPF kind and its image tower (WSInfer only displays it)."""
    kind = KIND_OF_MODEL_TYPE.get(config.model_type, config.model_type)
    if kind == "teacher":
        tower = config.backbone
    elif getattr(config, "vision_backend", None) == "timm":
        tower = config.timm_model_name
    else:
        tower = "clip-vit"
    return f"amlpf-{kind} ({tower})"


def synthetic_tiles(count: int, size: int, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 tissue-like tiles (smooth pink/purple texture with noise), for checks."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 8, 8, 3))
    grid = np.linspace(0, 7, size)
    rows = np.floor(grid).astype(int).clip(0, 6)
    frac = (grid - rows)[None, :, None, None]
    smooth = coarse[:, rows] * (1 - frac) + coarse[:, rows + 1] * frac
    frac_t = frac.transpose(0, 2, 1, 3)
    smooth = smooth[:, :, rows] * (1 - frac_t) + smooth[:, :, rows + 1] * frac_t
    colour = np.array([200.0, 120.0, 180.0]) * (0.6 + 0.4 * smooth) + rng.normal(0, 12, (count, size, size, 3))
    return colour.clip(0, 255).astype(np.uint8)


def normalised_tiles(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """What WSInfer's ToTensor + Normalize make of (B, N, N, 3) uint8 tiles: (B, 3, N, N) float32."""
    tiles = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    return (tiles - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def reference_probabilities(model, processor, pixels: np.ndarray) -> np.ndarray:
    """Softmax of `model` on the processor's evaluation views of (B, N, N, 3) uint8 tiles (the checkpoint's
    own prediction path: AutoModel + its processor)."""
    inputs = processor(list(pixels), return_tensors="pt")
    return model(**inputs).logits.float().softmax(-1).numpy()


@torch.no_grad()
def scripted_probabilities(module, pixels: np.ndarray, mean, std) -> np.ndarray:
    return module(normalised_tiles(pixels, mean, std)).float().softmax(-1).numpy()


def trace_module(model, processor, patch_size: int) -> tuple[torch.jit.ScriptModule, list[float], list[float]]:
    """The traced WSInfer module for tiles of `patch_size` pixels, and the Normalize mean/std it expects."""
    normalize = tile_transform(processor)[-1]["arguments"]
    mean, std = normalize["mean"], normalize["std"]
    module = WsinferModule(model.eval(), TileViews(processor, patch_size, mean, std)).eval()
    example = normalised_tiles(synthetic_tiles(2, patch_size, seed=1), mean, std)
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on shape checks (constant for a fixed tile size) and on torch.jit's deprecation
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
    return traced, mean, std


def load_checkpoint(model_dir: str, trust_remote_code: bool = False):
    """The model (eval mode, CPU, float32) and its `AmlpfImageProcessor`, as `predict.py` loads them."""
    try:
        model, processor = load_model_and_processor(model_dir, trust_remote_code=trust_remote_code)
    except PredictionInputError as error:
        raise UserError(str(error)) from error
    if not hasattr(processor, "crop_positions"):
        raise UserError(
            f"--model {model_dir}: its image processor is {type(processor).__name__}, not AmlpfImageProcessor; "
            "export a checkpoint saved by train_teacher.py or distill_student.py"
        )
    return model.float().eval(), processor


def export_wsinfer(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    spacing_um_px: float | None = None,
    patch_size_pixels: int | None = None,
    trust_remote_code: bool = False,
    hub_model_id: str | None = None,
) -> WsinferExport:
    """Write `torchscript_model.pt`, `config.json` and `README.md` for WSInfer into `output_dir`.

    The spacing and tile size are resolved (and refused when unknown) before the model is loaded. The export then
    runs a few synthetic tiles through both the exported module and AutoModel + processor and records the
    largest probability difference in the model card."""
    model_dir = os.fspath(model_dir)
    split_info = read_split_info(model_dir) if os.path.isdir(model_dir) else None
    spacing, spacing_source = resolve_spacing(spacing_um_px, split_info)
    patch_size, patch_source = resolve_patch_size(patch_size_pixels, split_info)
    model, processor = load_checkpoint(model_dir, trust_remote_code=trust_remote_code)
    if patch_size < processor.crop_size:
        raise UserError(
            f"--patch_size_pixels {patch_size} is smaller than the model's {processor.crop_size}-pixel crops: "
            f"pass at least {processor.crop_size}"
        )
    traced, mean, std = trace_module(model, processor, patch_size)
    pixels = synthetic_tiles(CHECK_TILES, patch_size)
    difference = float(np.abs(
        scripted_probabilities(traced, pixels, mean, std) - reference_probabilities(model, processor, pixels)
    ).max())
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    traced.save(str(out / MODEL_FILE))
    config = wsinfer_config(model, processor, patch_size, spacing)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    result = WsinferExport(out, config, spacing_source, patch_source, difference)
    (out / CARD_FILE).write_text(
        wsinfer_model_card(result, model_dir, processor, hub_model_id=hub_model_id), encoding="utf-8"
    )
    result.files = [out / name for name in WSINFER_FILES]
    return result


def push_wsinfer_export(folder: str | os.PathLike, repo_id: str, private: bool | None = None, token=None,
                        api=None) -> str:
    """Upload the WSInfer layout (config.json, torchscript_model.pt, README.md) to a Hub model repository."""
    api = api or HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=getattr(repo, "repo_id", repo_id), folder_path=os.fspath(folder), allow_patterns=list(WSINFER_FILES),
        commit_message="WSInfer export of an AMLPF checkpoint",
    )
    return getattr(repo, "repo_id", repo_id)
