"""AMLPF-CLIP models: the UNI-style teacher and the multi-level-prompt CLIP student.

Both take ``pixel_values`` of shape (B, V, 3, H, W) (the processor's 8 crops + 1 global view, global last)
or (B, 3, H, W) for a single view, and aggregate per-view logits as the paper does:
``(mean(crop logits) + global logits) / 2``.

This module imports only ``configuration_amlpf`` from the package: ``save_pretrained`` copies both files into
the checkpoint, so ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` works without the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_amlpf import AmlpfClipConfig, AmlpfTeacherConfig

logger = logging.get_logger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its temperature at 100


@dataclass
class AmlpfImageClassifierOutput(ModelOutput):
    """Teacher output. ``logits`` are the view-aggregated image logits (B, C); ``view_logits`` (B, V, C)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    view_logits: torch.FloatTensor | None = None


@dataclass
class AmlpfClipOutput(ModelOutput):
    """Student output: fused image logits (B, C), per-view fused logits (B, V, C), and the per-level logits
    (B, L, C) aggregated over views like the fused ones (useful to see what each prompt level contributes)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    view_logits: torch.FloatTensor | None = None
    level_logits: torch.FloatTensor | None = None


def aggregate_view_logits(view_logits: torch.Tensor) -> torch.Tensor:
    """Aggregate (B, V, ...) per-view logits: the view itself when V == 1, else (mean of crops + global) / 2,
    the global view being last."""
    if view_logits.shape[1] == 1:
        return view_logits[:, 0]
    return (view_logits[:, :-1].mean(dim=1) + view_logits[:, -1]) / 2


def flatten_views(pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, V, 3, H, W) -> (B*V, 3, H, W), B, V; a 4-D batch is one view per image."""
    if pixel_values.dim() == 4:
        return pixel_values, pixel_values.shape[0], 1
    if pixel_values.dim() == 5:
        b, v = pixel_values.shape[:2]
        return pixel_values.reshape(b * v, *pixel_values.shape[2:]), b, v
    raise ValueError(
        f"pixel_values must have shape (B, V, 3, H, W) or (B, 3, H, W), got {tuple(pixel_values.shape)}; "
        "use AmlpfImageProcessor to make the views"
    )


def create_timm_model(name: str, model_kwargs: dict | None = None, **overrides) -> nn.Module:
    """Build a randomly initialised timm model. ``model_kwargs`` is JSON (it lives in config.json): a
    ``blocks`` list of dicts is turned into timm ``ByoBlockCfg``s so that small members of the
    ``resnet*_clip`` family (tests, demo) can be described in a config."""
    kwargs = dict(model_kwargs or {})
    if isinstance(kwargs.get("blocks"), (list, tuple)) and kwargs["blocks"] and isinstance(kwargs["blocks"][0], dict):
        from timm.models.byobnet import ByoBlockCfg

        kwargs["blocks"] = tuple(ByoBlockCfg(**block) for block in kwargs["blocks"])
    for key in ("stem_chs", "img_size"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    kwargs.update(overrides)
    return timm.create_model(name, pretrained=False, **kwargs)


def _classification_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    return None if labels is None else F.cross_entropy(logits, labels.to(logits.device).long())


class _AmlpfPreTrainedModel(PreTrainedModel):
    """Shared conventions of both models."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The losses are per-batch means: the Trainer must scale them for gradient accumulation itself.
    accepts_loss_kwargs = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        # One class serves AutoModel and AutoModelForImageClassification; register_for_auto_class only
        # records one of them in auto_map, so add the other before the config is written.
        if self._auto_class is not None:
            full_name = f"{self.__class__.__module__.split('.')[-1]}.{self.__class__.__name__}"
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            for auto_class in ("AutoModel", "AutoModelForImageClassification"):
                auto_map.setdefault(auto_class, full_name)
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


class AmlpfMLPHead(nn.Sequential):
    """The paper's head: Linear(F, 512)-ReLU-Linear(512, 256)-ReLU-Linear(256, C)."""

    def __init__(self, in_features: int, hidden_sizes: list[int], num_labels: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            if dropout:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_labels))
        super().__init__(*layers)


class AmlpfTeacherForImageClassification(_AmlpfPreTrainedModel):
    """UNI-style teacher: timm backbone (pooled features) + MLP head, with multi-view aggregation."""

    config_class = AmlpfTeacherConfig
    config: AmlpfTeacherConfig
    base_model_prefix = "teacher"

    def __init__(self, config: AmlpfTeacherConfig):
        super().__init__(config)
        self.backbone = create_timm_model(config.backbone, config.backbone_kwargs, num_classes=0)
        self.head = AmlpfMLPHead(
            self.backbone.num_features, config.head_hidden_sizes, config.num_labels, config.head_dropout
        )
        self.post_init()

    def _init_weights(self, module):
        # timm initialises its own backbone in its constructor (and pretrained weights are loaded after
        # construction), so only the head is initialised here, with PyTorch's default Linear init.
        if isinstance(module, AmlpfMLPHead):
            for layer in module:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> AmlpfImageClassifierOutput | tuple:
        x, batch, views = flatten_views(pixel_values)
        view_logits = self.head(self.backbone(x)).view(batch, views, -1)
        logits = aggregate_view_logits(view_logits)
        output = AmlpfImageClassifierOutput(
            loss=_classification_loss(logits, labels), logits=logits, view_logits=view_logits
        )
        return output if return_dict is not False else output.to_tuple()


class AmlpfClipForImageClassification(_AmlpfPreTrainedModel):
    """CLIP student that classifies by similarity to frozen prompt embeddings at several levels.

    For an L2-normalised image embedding f and the frozen, L2-normalised prompt embeddings T_l (C x D) of
    level l, the level logits are ``s_l = exp(logit_scale) * f @ T_l^T`` and the fused logits
    ``sum_l w_l * s_l`` with learned ``w`` (``fusion="learned"``: raw weights, init 1; ``"softmax"``:
    ``w = softmax(fusion_weights)``). Fusion is per view, then views are aggregated.
    """

    config_class = AmlpfClipConfig
    config: AmlpfClipConfig
    base_model_prefix = "student"
    _supports_sdpa = True
    _supports_flash_attn = False

    def __init__(self, config: AmlpfClipConfig):
        super().__init__(config)
        if config.vision_backend == "timm":
            self.vision_model = create_timm_model(
                config.timm_model_name, config.timm_model_kwargs, num_classes=config.projection_dim
            )
        else:
            self.vision_model = CLIPVisionModelWithProjection._from_config(config.vision_config)
        self.text_model = CLIPTextModelWithProjection._from_config(config.text_config)
        self.text_model.requires_grad_(False)
        self.logit_scale = nn.Parameter(
            torch.tensor(float(config.logit_scale_init_value)), requires_grad=bool(config.train_logit_scale)
        )
        num_levels = len(config.prompt_levels)
        self.fusion_weights = nn.Parameter(torch.full((num_levels,), self._fusion_init_value()))
        self.register_buffer(
            "prompt_embeds", torch.zeros(num_levels, config.num_labels, config.projection_dim), persistent=True
        )
        self.post_init()
        if config.prompt_input_ids is not None:
            self.encode_prompts()

    # ----------------------------------------------------------------------------------------- init / train
    def _fusion_init_value(self) -> float:
        return float(self.config.fusion_init) if self.config.fusion == "learned" else 0.0

    def _init_weights(self, module):
        # Only this module's own tensors: the timm tower keeps timm's init, the CLIP towers get CLIP's
        # (they are PreTrainedModels and are dispatched to their own _init_weights).
        if module is self:
            with torch.no_grad():
                self.fusion_weights.fill_(self._fusion_init_value())
                self.logit_scale.fill_(float(self.config.logit_scale_init_value))

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_model.eval()  # frozen: never in training mode
        return self

    # ----------------------------------------------------------------------------------------- features
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings before normalisation: (N, D) for 4-D input, (B, V, D) for 5-D."""
        x, batch, views = flatten_views(pixel_values)
        if self.config.vision_backend == "timm":
            feats = self.vision_model(x)
        else:
            feats = self.vision_model(pixel_values=x).image_embeds
        return feats if pixel_values.dim() == 4 else feats.view(batch, views, -1)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text embeddings before normalisation, as ``CLIPModel.get_text_features``."""
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask).text_embeds

    def effective_fusion_weights(self) -> torch.Tensor:
        """The weights w applied to the level logits."""
        if self.config.fusion == "softmax":
            return self.fusion_weights.softmax(dim=0)
        return self.fusion_weights

    # ----------------------------------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode_prompts(self) -> None:
        """Encode ``config.prompt_input_ids`` with the frozen text tower into the normalised buffer."""
        ids = self.config.prompt_input_ids
        if not ids:
            raise ValueError("the config has no prompt_input_ids: call set_prompts(prompts, tokenizer) first")
        if self.logit_scale.device.type == "meta":  # from_pretrained builds on meta, then loads the buffer
            return
        device = self.logit_scale.device
        pad_id = self.config.text_config.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
        was_training = self.text_model.training
        self.text_model.eval()
        levels = []
        for level in self.config.prompt_levels:
            seqs = ids.get(level)
            if seqs is None or len(seqs) != self.config.num_labels:
                raise ValueError(
                    f"prompt level {level!r} needs one tokenised prompt per class "
                    f"({self.config.num_labels}), got {None if seqs is None else len(seqs)}"
                )
            length = max(len(s) for s in seqs)
            input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long, device=device)
            mask = torch.zeros_like(input_ids)
            for row, seq in enumerate(seqs):
                input_ids[row, : len(seq)] = torch.as_tensor(seq, device=device)
                mask[row, : len(seq)] = 1
            levels.append(F.normalize(self.get_text_features(input_ids, mask).float(), dim=-1))
        self.text_model.train(was_training)
        self.prompt_embeds = torch.stack(levels).to(self.prompt_embeds.dtype)

    def set_prompts(self, prompts: dict, tokenizer, class_names: list[str] | None = None, levels=None) -> None:
        """Set the prompts (``{level: [prompt per class]}``), tokenise them with the checkpoint's tokenizer,
        store both in the config and re-encode the prompt embeddings. Changing the classes or the number of
        levels re-creates the fusion weights (do it before building the optimizer)."""
        levels = [str(level) for level in (levels or self.config.prompt_levels)]
        if class_names is None:
            class_names = [self.config.id2label[i] for i in range(self.config.num_labels)]
        missing = [level for level in levels if level not in prompts]
        if missing:
            raise ValueError(f"prompts lack the level(s) {missing}; given: {sorted(prompts)}")
        for level in levels:
            if len(prompts[level]) != len(class_names):
                raise ValueError(
                    f"prompt level {level!r} has {len(prompts[level])} prompts for {len(class_names)} classes"
                )
        eos = self.config.text_config.eos_token_id
        if eos not in (None, 2) and getattr(tokenizer, "eos_token_id", eos) != eos:
            # CLIP pools the text at the end-of-text token: a tokenizer with another id silently pools the wrong
            # position (every prompt would get the same embedding).
            raise ValueError(
                f"the tokenizer's eos_token_id ({tokenizer.eos_token_id}) differs from the text tower's "
                f"text_config.eos_token_id ({eos}): use the tokenizer saved with this checkpoint"
            )
        max_len = self.config.text_config.max_position_embeddings
        input_ids = {}
        for level in levels:
            encoded = tokenizer(list(prompts[level]), truncation=True, max_length=max_len)["input_ids"]
            too_long = [p for p, e in zip(prompts[level], encoded) if len(e) >= max_len]
            if too_long:
                logger.warning(f"{len(too_long)} {level!r} prompt(s) truncated to {max_len} tokens: {too_long[0]!r}")
            input_ids[level] = [list(map(int, e)) for e in encoded]
        relayout = levels != list(self.config.prompt_levels) or len(class_names) != self.config.num_labels
        self.config.prompts = {level: list(prompts[level]) for level in levels}
        self.config.prompt_input_ids = input_ids
        self.config.prompt_levels = levels
        self.config.id2label = {i: str(n) for i, n in enumerate(class_names)}
        self.config.label2id = {str(n): i for i, n in enumerate(class_names)}
        if relayout:
            device = self.logit_scale.device
            self.fusion_weights = nn.Parameter(torch.full((len(levels),), self._fusion_init_value(), device=device))
        self.encode_prompts()

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> AmlpfClipOutput | tuple:
        if not self.config.prompt_input_ids:
            raise ValueError("the student has no prompts: call set_prompts(prompts, tokenizer) first")
        x, batch, views = flatten_views(pixel_values)
        image_embeds = F.normalize(self.get_image_features(x), dim=-1)
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        prompt_embeds = self.prompt_embeds.to(image_embeds.dtype)
        level_logits = scale * torch.einsum("nd,lcd->nlc", image_embeds, prompt_embeds)  # (N, L, C)
        fused = torch.einsum("nlc,l->nc", level_logits, self.effective_fusion_weights().to(level_logits.dtype))
        view_logits = fused.view(batch, views, -1)
        logits = aggregate_view_logits(view_logits)
        output = AmlpfClipOutput(
            loss=_classification_loss(logits, labels),
            logits=logits,
            view_logits=view_logits,
            level_logits=aggregate_view_logits(level_logits.view(batch, views, *level_logits.shape[1:])),
        )
        return output if return_dict is not False else output.to_tuple()
