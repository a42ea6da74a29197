"""What a checkpoint is, read from its config (and, when known, where its weights came from), so that model cards,
report tables and pictures never overstate a run: a tiny random-init test preset is called that, UNI's name and
licence belong only to UNI's weights, and the paper's published values sit beside a run only when it used the
paper's backbones (a UNI ViT-L/16 teacher, an OpenAI CLIP RN50 student).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAPER_BACKBONES = "a UNI ViT-L/16 teacher and an OpenAI CLIP RN50 student"
# UNI ViT-L/16 (timm defaults of vit_large_patch16_224 as UNI uses them) and OpenAI RN50 (1024-d embeddings).
_VIT_L = {"embed_dim": 1024, "depth": 24, "num_heads": 16, "patch_size": 16}
_RN50_EMBED_DIM = 1024
_UNI = re.compile(r"(^|[^a-z])uni([^a-z]|$)|mahmoodlab", re.IGNORECASE)
# Below these widths a model is a test preset, not a backbone anyone would train for use.
_TINY_WIDTH = 256


@dataclass(frozen=True)
class ModelIdentity:
    """``description``: what the model is, for titles and captions; ``tiny``: a small test preset; ``uses_uni``:
    its backbone weights are UNI's; ``paper_backbone``: the backbone the paper used for this kind."""

    kind: str
    description: str
    tiny: bool = False
    random_init: bool = False
    uses_uni: bool = False
    paper_backbone: bool = False

    @property
    def test_preset(self) -> bool:
        """A tiny model trained from random weights: exercises the pipeline, says nothing about the method."""
        return self.tiny and self.random_init


def _as_dict(config: Any) -> dict:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    return config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))


def identify(config: Any) -> ModelIdentity | None:
    """The identity of a teacher (``amlpf_teacher``) or student (``amlpf_clip``) config (a config object or its
    ``config.json`` dict); None for anything else."""
    config = _as_dict(config)
    model_type = config.get("model_type")
    if model_type == "amlpf_teacher":
        return _teacher_identity(config)
    if model_type == "amlpf_clip":
        return _student_identity(config)
    return None


def identify_folder(folder: str | Path) -> ModelIdentity | None:
    """``identify`` of ``<folder>/config.json`` (None when there is none)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        return identify(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _teacher_identity(config: dict) -> ModelIdentity:
    kwargs = config.get("backbone_kwargs") or {}
    backbone = str(config.get("backbone") or "")
    weights = config.get("backbone_weights")
    vit_l = backbone == "vit_large_patch16_224" and all(kwargs.get(k, v) == v for k, v in _VIT_L.items())
    width, depth = kwargs.get("embed_dim"), kwargs.get("depth")
    tiny = (width is not None and width < _TINY_WIDTH) or (depth is not None and depth < 6)
    uses_uni = bool(weights) and bool(_UNI.search(str(weights)))
    if tiny and not weights:
        shape = f"{depth}-layer ViT, width {width}" if width and depth else backbone
        description = f"tiny random-init test preset ({shape}), not UNI"
    elif uses_uni and vit_l:
        description = "UNI ViT-L/16"
    elif weights:
        description = f"{'ViT-L/16' if vit_l else backbone} initialised from {weights}"
    else:
        description = f"{'ViT-L/16' if vit_l else backbone} from random initialisation, not UNI"
    return ModelIdentity("teacher", description, tiny=tiny, random_init=not weights, uses_uni=uses_uni,
                         paper_backbone=vit_l and uses_uni)


def _student_identity(config: dict) -> ModelIdentity:
    embed_dim = config.get("projection_dim")
    text_width = (config.get("text_config") or {}).get("hidden_size")
    rn50 = (
        config.get("vision_backend", "timm") == "timm"
        and config.get("timm_model_name") == "resnet50_clip"
        and not config.get("timm_model_kwargs")
        and embed_dim == _RN50_EMBED_DIM
    )
    tiny = any(value is not None and value < _TINY_WIDTH for value in (embed_dim, text_width))
    if tiny:
        description = f"tiny random-init test preset (small CLIP, {embed_dim}-d embeddings), not OpenAI CLIP RN50"
    elif rn50:
        description = "CLIP RN50"
    else:
        tower = config.get("timm_model_name") if config.get("vision_backend", "timm") == "timm" else "ViT"
        description = f"CLIP ({tower}, {embed_dim}-d embeddings)"
    return ModelIdentity("student", description, tiny=tiny, random_init=tiny, paper_backbone=rn50)


def paper_comparison(identities: list[ModelIdentity | None]) -> tuple[bool, str]:
    """``(allowed, reason)``: the paper's values may be drawn beside these runs only when every run's backbone is
    the paper's; otherwise ``reason`` says what the runs used instead (for a caption or a note)."""
    known = [identity for identity in identities if identity is not None]
    if not known:
        return False, "the runs' model configs (config.json) are missing, so their backbones are unknown"
    others = [identity for identity in known if not identity.paper_backbone]
    if not others:
        return True, ""
    used = "; ".join(sorted({f"{identity.kind}: {identity.description}" for identity in others}))
    return False, f"these runs do not use the paper's backbones ({PAPER_BACKBONES}) but {used}"
