"""Configurations of the AMLPF-CLIP teacher (UNI-style timm backbone + MLP head) and student (CLIP).

Both are transformers 5 dataclass configs. This module imports nothing else from the package so that a
checkpoint saved with ``register_for_auto_class`` carries it as standalone remote code.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# The UNI architecture (MahmoodLab/uni): timm ViT-L/16 with LayerScale, pooled 1024-d feature.
UNI_BACKBONE = "vit_large_patch16_224"
UNI_BACKBONE_KWARGS = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}
PROMPT_LEVELS = ("label", "basic", "detailed")
FUSION_MODES = ("learned", "softmax")
VISION_BACKENDS = ("timm", "clip")
CLIP_LOGIT_SCALE_MAX = math.log(100.0)  # CLIP's own training clamp of its temperature (at most 100)


def _labels_from_class_names(config: PreTrainedConfig, class_names) -> None:
    if class_names is not None:
        config.id2label = {i: str(n) for i, n in enumerate(class_names)}
        config.label2id = {str(n): i for i, n in enumerate(class_names)}
    elif config.id2label is not None and not config.label2id:
        config.label2id = {v: k for k, v in config.id2label.items()}


@strict
class AmlpfTeacherConfig(PreTrainedConfig):
    r"""Teacher: a timm backbone (UNI's ViT-L/16 by default) followed by the paper's MLP head
    ``Linear(F, 512)-ReLU-Linear(512, 256)-ReLU-Linear(256, C)`` on the pooled feature.

    Args:
        backbone: timm model name (``vit_large_patch16_224`` for UNI). The backbone is always created with
            ``num_classes=0`` (pooled features) and random weights; pretrained weights are loaded after
            construction (see ``modeling_amlpf.pretrained.weights``).
        backbone_kwargs: extra keyword arguments of ``timm.create_model`` (architecture only).
        backbone_weights: where the pretrained backbone weights came from (informational, for the model card).
        head_hidden_sizes: hidden widths of the MLP head.
        head_dropout: dropout before each head Linear.
        class_names: convenience; sets ``id2label``/``label2id``.
    """

    model_type = "amlpf_teacher"
    keys_to_ignore_at_inference = ["view_logits", "hidden_states", "attentions"]

    backbone: str = UNI_BACKBONE
    backbone_kwargs: dict | None = None
    backbone_weights: str | None = None
    head_hidden_sizes: list[int] | tuple[int, ...] = (512, 256)
    head_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        class_names = kwargs.pop("class_names", None)
        if self.backbone_kwargs is None:
            self.backbone_kwargs = dict(UNI_BACKBONE_KWARGS) if self.backbone == UNI_BACKBONE else {}
        self.head_hidden_sizes = [int(h) for h in self.head_hidden_sizes]
        super().__post_init__(**kwargs)
        _labels_from_class_names(self, class_names)


@strict
class AmlpfClipConfig(PreTrainedConfig):
    r"""Student: a CLIP model whose logits are the adaptive fusion of three prompt levels.

    Args:
        vision_backend: ``"timm"`` (a timm CLIP trunk such as ``resnet50_clip``, OpenAI RN50's image tower;
            any timm model whose head maps to ``projection_dim`` works) or ``"clip"`` (a transformers
            ``CLIPVisionModelWithProjection`` built from ``vision_config``, for HF CLIP checkpoints).
        timm_model_name / timm_model_kwargs: the timm image tower (created with ``num_classes=projection_dim``).
        vision_config: ``CLIPVisionConfig`` for the ``"clip"`` backend.
        text_config: ``CLIPTextConfig`` of the frozen text tower (``projection_dim`` must match).
        projection_dim: the joint embedding width (1024 for RN50).
        prompts: ``{level: [one prompt per class]}`` for the levels in ``prompt_levels``; stored so that a
            checkpoint describes itself.
        prompt_levels: which levels are fused (the paper: label, basic, detailed).
        prompt_input_ids: the tokenised prompts ``{level: [[ids], ...]}``, written by ``set_prompts`` with the
            checkpoint's tokenizer so that the model can re-encode its prompts without a tokenizer.
        fusion: ``"learned"`` (the paper: unconstrained weights, init ``fusion_init``) or ``"softmax"``
            (weights on the simplex, uniform at init).
        logit_scale_init_value: log of CLIP's logit scale (``ln 100``, OpenAI's pretrained value).
        train_logit_scale: whether the logit scale is trained (CLIP's pretrained value is kept by default; the
            paper recipes train it, as the reference does).
        logit_scale_max: upper bound of the logit scale in the forward (``logit_scale.clamp(max=...)``); None
            (default) applies none, as the reference, which trains the scale freely. ``CLIP_LOGIT_SCALE_MAX``
            (``ln 100``) restores CLIP's bound. A saved config without this key that trained its logit scale
            loads with ``ln 100``: the bound it was trained with (``from_dict``).
        class_names: convenience; sets ``id2label``/``label2id``.
    """

    model_type = "amlpf_clip"
    keys_to_ignore_at_inference = ["view_logits", "level_logits", "hidden_states", "attentions"]
    sub_configs_defaults = {
        "text_config": CLIPTextConfig,
        "vision_config": SubConfigSpec(CLIPVisionConfig, optional=True),
    }

    vision_backend: str = "timm"
    timm_model_name: str = "resnet50_clip"
    timm_model_kwargs: dict | None = None
    vision_config: dict | CLIPVisionConfig | None = None
    text_config: dict | CLIPTextConfig | None = None
    projection_dim: int = 1024
    prompts: dict | None = None
    prompt_levels: list[str] | tuple[str, ...] = PROMPT_LEVELS
    prompt_input_ids: dict | None = None
    fusion: str = "learned"
    fusion_init: float = 1.0
    logit_scale_init_value: float = 4.605170185988092
    train_logit_scale: bool = False
    logit_scale_max: float | None = None
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        class_names = kwargs.pop("class_names", None)
        if self.text_config is None:
            # OpenAI RN50 text tower: 12 layers, width 512, 8 heads, context 77, vocab 49408, quick_gelu.
            self.text_config = {
                "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                "num_attention_heads": 8, "max_position_embeddings": 77, "vocab_size": 49408,
                "hidden_act": "quick_gelu", "projection_dim": self.projection_dim,
                "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
            }
        self.prompt_levels = [str(level) for level in self.prompt_levels]
        super().__post_init__(**kwargs)
        _labels_from_class_names(self, class_names)
        self.validate_architecture()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As ``PreTrainedConfig.from_dict``; a config saved before ``logit_scale_max`` existed keeps the bound
        its model was trained with: ``ln 100`` when it trained its logit scale (then always clamped), else none
        (a frozen pretrained CLIP scale is at most ``ln 100``: the bound never applied)."""
        if "logit_scale_max" not in config_dict and config_dict.get("train_logit_scale"):
            config_dict = {**config_dict, "logit_scale_max": CLIP_LOGIT_SCALE_MAX}
        return super().from_dict(config_dict, **kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: catch inconsistent student configs at construction time."""
        if self.vision_backend not in VISION_BACKENDS:
            raise ValueError(f"vision_backend must be one of {VISION_BACKENDS}, got {self.vision_backend!r}")
        if self.vision_backend == "clip" and self.vision_config is None:
            raise ValueError("vision_backend='clip' needs a vision_config (a CLIPVisionConfig or its dict)")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        unknown = [lvl for lvl in self.prompt_levels if lvl not in PROMPT_LEVELS]
        if unknown or not self.prompt_levels:
            raise ValueError(f"prompt_levels must be a non-empty subset of {PROMPT_LEVELS}, got {self.prompt_levels}")
        text_dim = getattr(self.text_config, "projection_dim", None)
        if text_dim is not None and text_dim != self.projection_dim:
            raise ValueError(
                f"text_config.projection_dim ({text_dim}) must equal projection_dim ({self.projection_dim}): "
                "image and text embeddings share one space"
            )


__all__ = ["AmlpfClipConfig", "AmlpfTeacherConfig"]
