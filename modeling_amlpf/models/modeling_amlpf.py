"""AMLPF-CLIP models: the UNI-style teacher and the multi-level-prompt CLIP student.

Both take ``pixel_values`` of shape (B, V, 3, H, W) (the processor's 8 crops + 1 global view, global last)
or (B, 3, H, W) for a single view, and aggregate per-view logits as the paper does:
``(mean(crop logits) + global logits) / 2``.

Both follow transformers' conventions for image classifiers: ``self.loss_function`` (honours
``config.problem_type``), ``output_hidden_states``/``output_attentions``/``return_dict`` with config defaults,
gradient checkpointing, and proper initialisation of whatever ``from_pretrained`` finds missing.

This module imports only ``configuration_amlpf`` from the package: ``save_pretrained`` copies both files into
the checkpoint, so ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` works without the package.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from timm.models.byobnet import ByoBlockCfg
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple

from .configuration_amlpf import AmlpfClipConfig, AmlpfTeacherConfig

logger = logging.get_logger(__name__)


@dataclass
class AmlpfTeacherOutput(ModelOutput):
    """Teacher output. ``logits`` are the view-aggregated image logits (B, C); ``view_logits`` (B, V, C).
    ``hidden_states`` (only when asked for): the backbone's per-block outputs from timm's
    ``forward_intermediates`` (NCHW), shaped (B, V, ...) for multi-view input. ``attentions``: timm exposes none."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    view_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


AmlpfImageClassifierOutput = AmlpfTeacherOutput  # the name before 0.2 (outputs are named after their model)


@dataclass
class AmlpfClipOutput(ModelOutput):
    """Student output: fused image logits (B, C), per-view fused logits (B, V, C), and the per-level logits
    (B, L, C) aggregated over views like the fused ones (useful to see what each prompt level contributes).
    ``hidden_states``/``attentions`` (only when asked for) are the image tower's, shaped (B, V, ...) for
    multi-view input: timm towers give ``forward_intermediates`` (NCHW) and no attentions."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    view_logits: torch.FloatTensor | None = None
    level_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


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


def _unflatten_views(output: ModelOutput, batch: int, views: int) -> ModelOutput:
    """Reshape every tensor of a per-view output from (B*V, ...) back to (B, V, ...)."""

    def unflatten(value):
        if isinstance(value, torch.Tensor):
            return value.unflatten(0, (batch, views))
        if isinstance(value, (tuple, list)):
            return tuple(unflatten(v) for v in value)
        return value

    for key in list(output.keys()):
        output[key] = unflatten(output[key])
    return output


def create_timm_model(name: str, model_kwargs: dict | None = None, **overrides) -> nn.Module:
    """Build a randomly initialised timm model. ``model_kwargs`` is JSON (it lives in config.json): a
    ``blocks`` list of dicts is turned into timm ``ByoBlockCfg``s so that small members of the
    ``resnet*_clip`` family (tests, demo) can be described in a config.

    Not transformers' ``TimmWrapperModel``, although it computes the teacher's features exactly (0.0 difference on
    the tiny preset and on UNI's ViT-L/16, tested): it would move every weight under ``timm_model.`` (teacher
    checkpoints and the Trainer's resume, which loads state dicts without transformers' key conversion, would no
    longer match) and its ``num_classes=0`` drops the CLIP ResNet's attention-pool projection the student needs."""
    kwargs = dict(model_kwargs or {})
    if isinstance(kwargs.get("blocks"), (list, tuple)) and kwargs["blocks"] and isinstance(kwargs["blocks"][0], dict):
        kwargs["blocks"] = tuple(ByoBlockCfg(**block) for block in kwargs["blocks"])
    for key in ("stem_chs", "img_size"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    kwargs.update(overrides)
    return timm.create_model(name, pretrained=False, **kwargs)


# --------------------------------------------------------------------------------------------- timm towers
def _is_loaded(tensor: torch.Tensor) -> bool:
    """``from_pretrained`` flags every tensor it filled from the checkpoint (and transformers' init skips them)."""
    return bool(getattr(tensor, "_is_hf_initialized", False))


def _tensor_slots(module: nn.Module) -> Iterator[tuple[str, nn.Module, str, str, torch.Tensor]]:
    """(qualified name, owner, "_parameters" | "_buffers", attribute, tensor) of every tensor of ``module``."""
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for kind in ("_parameters", "_buffers"):
            for attribute, tensor in getattr(owner, kind).items():
                if tensor is not None:
                    yield (f"{prefix}.{attribute}" if prefix else attribute), owner, kind, attribute, tensor


def mark_initialised(module: nn.Module) -> None:
    """Flag the tensors of ``module`` as initialised, as ``from_pretrained`` does with loaded ones. Meta tensors
    (``from_pretrained`` builds on meta) stay unflagged: a flag there would hide them from its missing keys."""
    for *_, tensor in _tensor_slots(module):
        if tensor.device.type != "meta":
            tensor._is_hf_initialized = True


@torch.no_grad()
def init_timm_weights(tower: nn.Module, build: Callable[[], nn.Module]) -> list[str]:
    """Give the tensors of a timm model that no checkpoint filled (missing or size-mismatched keys of
    ``from_pretrained``) timm's own initialisation, leaving loaded tensors as they are; return their names.

    timm initialises a whole model at once (``init_weights()`` of ViTs/ResNets/..., else in its constructor), so:
    a model with ``init_weights`` runs it with the loaded tensors swapped for meta-device stand-ins (writes to them
    cost nothing and change nothing); any other model is built afresh by ``build`` and the missing tensors copied.
    """
    slots = list(_tensor_slots(tower))
    missing = [name for name, *_, tensor in slots if not _is_loaded(tensor)]
    if not missing:
        return []
    if callable(getattr(tower, "init_weights", None)):
        loaded = [(owner, kind, attr, tensor) for _, owner, kind, attr, tensor in slots if _is_loaded(tensor)]
        for owner, kind, attribute, tensor in loaded:
            stand_in = torch.empty_like(tensor, device="meta")
            if kind == "_parameters":
                stand_in = nn.Parameter(stand_in, requires_grad=tensor.requires_grad)
            getattr(owner, kind)[attribute] = stand_in
        try:
            tower.init_weights()
        finally:
            for owner, kind, attribute, tensor in loaded:
                getattr(owner, kind)[attribute] = tensor
    else:
        fresh = {name: tensor for name, *_, tensor in _tensor_slots(build())}
        current = {name: tensor for name, *_, tensor in _tensor_slots(tower)}
        for name in missing:
            current[name].copy_(fresh[name])
    for module in tower.modules():  # buffers that no checkpoint holds (rotary tables, ...)
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    mark_initialised(tower)
    return missing


def timm_features(
    tower: nn.Module, pixel_values: torch.Tensor, output_hidden_states: bool | list[int] | None = False
) -> BaseModelOutputWithPooling:
    """Run a timm model as transformers' ``TimmWrapperModel`` does: ``last_hidden_state`` from
    ``forward_features`` (``forward_intermediates`` when hidden states are asked for, which gives them in timm's
    NCHW layout), ``pooler_output`` from ``forward_head`` (equal to ``tower(pixel_values)``). A list of indices
    keeps those hidden states (negative ones count from the end) and puts None in the other places, as
    transformers' ``output_hidden_states=[...]`` does."""
    if output_hidden_states is not None and output_hidden_states is not False:
        if not hasattr(tower, "forward_intermediates"):
            raise ValueError(
                f"output_hidden_states needs a timm model with forward_intermediates; {type(tower).__name__} has none"
            )
        last_hidden_state, hidden_states = tower.forward_intermediates(pixel_values)
        if isinstance(output_hidden_states, (list, tuple)):
            kept = {index % len(hidden_states) for index in output_hidden_states}
            hidden_states = [h if i in kept else None for i, h in enumerate(hidden_states)]
        hidden_states = tuple(hidden_states)
    else:
        last_hidden_state, hidden_states = tower.forward_features(pixel_values), None
    return BaseModelOutputWithPooling(
        last_hidden_state=last_hidden_state, pooler_output=tower.forward_head(last_hidden_state),
        hidden_states=hidden_states,
    )


def _warn_no_timm_attentions(output_attentions: bool | None, tower: nn.Module) -> None:
    if output_attentions:
        logger.warning_once(
            f"output_attentions: the timm model {type(tower).__name__} exposes no attention maps; attentions is None"
        )


class AmlpfPreTrainedModel(PreTrainedModel):
    """Shared conventions of both models: loss, initialisation of a timm tower, gradient checkpointing."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The losses are per-batch means: the Trainer must scale them for gradient accumulation itself.
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True

    def _vision_tower(self) -> nn.Module:
        raise NotImplementedError

    def _build_timm_tower(self) -> nn.Module:
        """A freshly initialised copy of the timm tower (what timm's constructor gives)."""
        raise NotImplementedError

    def _uses_timm_tower(self) -> bool:
        return not isinstance(self._vision_tower(), PreTrainedModel)

    def _timm_tower_built(self, tower: nn.Module) -> None:
        """Call right after creating the timm tower in ``__init__``: timm has initialised it, so ``post_init`` must
        not do it again."""
        mark_initialised(tower)
        self.supports_gradient_checkpointing = hasattr(tower, "set_grad_checkpointing")

    def _freeze(self) -> None:
        """Re-apply ``requires_grad=False`` to frozen parts: loading gives every loaded parameter ``requires_grad``."""

    @torch.no_grad()
    def initialize_weights(self):
        """transformers' initialisation (``_init_weights`` on what is not initialised yet; ``from_pretrained`` runs
        it after loading, on what the checkpoint lacked) plus timm's own initialisation for a timm tower.

        CLIP towers run their own ``initialize_weights`` first, as when loaded on their own: run from this (custom
        code) model, transformers would skip CLIP's per-layer rules for modules without tensors of their own
        (attention, MLP, projection) and leave their weights with the generic N(0, 0.02)."""
        for child in self.children():
            if isinstance(child, PreTrainedModel):
                child.initialize_weights()
        super().initialize_weights()
        if self._uses_timm_tower():
            initialised = init_timm_weights(self._vision_tower(), self._build_timm_tower)
            if initialised:
                logger.info(f"timm's initialisation for {len(initialised)} image-tower tensor(s): {initialised[:5]}")
        self._freeze()

    # The override point transformers' own TimmWrapperModel uses: gradient_checkpointing_enable() calls it.
    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Callable = checkpoint, every_n_layers: int = 1
    ):
        # CLIP towers are PreTrainedModels (the frozen text tower runs without gradients, so its flag changes
        # nothing); a timm tower has its own switch and its own checkpoint function.
        for child in self.children():
            if isinstance(child, PreTrainedModel):
                child._set_gradient_checkpointing(
                    enable=enable, gradient_checkpointing_func=gradient_checkpointing_func,
                    every_n_layers=every_n_layers,
                )
        tower = self._vision_tower()
        if not isinstance(tower, PreTrainedModel):
            if enable and every_n_layers != 1:
                logger.warning_once("every_n_layers is ignored for timm towers: timm checkpoints every block")
            tower.set_grad_checkpointing(enable)
        self.gradient_checkpointing = enable  # read by `is_activation_checkpointing`

    def _output_flags(self, kwargs: dict) -> tuple:
        """``(output_hidden_states, output_attentions)`` of a forward call, the config's where not given."""
        hidden = kwargs.get("output_hidden_states")
        attentions = kwargs.get("output_attentions")
        return (
            self.config.output_hidden_states if hidden is None else hidden,
            self.config.output_attentions if attentions is None else attentions,
        )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """transformers' image-classification loss: cross-entropy, BCE-with-logits or MSE by ``config.problem_type``
        (inferred from ``num_labels`` and the labels' dtype when unset, as transformers' classifiers do)."""
        return None if labels is None else self.loss_function(labels, logits, self.config)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # One class serves AutoModel and AutoModelForImageClassification; register_for_auto_class only
        # records one of them in auto_map, so add the other before the config is written.
        if self._auto_class is not None:  # set by register_for_auto_class; transformers offers no getter
            full_name = f"{self.__class__.__module__.split('.')[-1]}.{self.__class__.__name__}"
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            for auto_class in ("AutoModel", "AutoModelForImageClassification"):
                auto_map.setdefault(auto_class, full_name)
            self.config.auto_map = auto_map
        result = super().save_pretrained(save_directory, *args, **kwargs)
        _weights_follow_umask(save_directory)
        return result


def _weights_follow_umask(save_directory) -> None:
    """Give the weights the permissions of the config.json written beside them (the umask's: 0644 under 022).

    safetensors >= 0.8 writes through a temporary file created with mode 0600 and renames it into place
    (safetensors/safetensors#782), so a model saved for a team or a container would be readable by its owner
    only, unlike every other file of the checkpoint."""
    config = os.path.join(save_directory, "config.json")
    if not os.path.isfile(config):
        return
    mode = os.stat(config).st_mode & 0o777
    for path in glob.glob(os.path.join(glob.escape(os.fspath(save_directory)), "*.safetensors")):
        if os.stat(path).st_mode & 0o777 != mode:
            os.chmod(path, mode)


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


class AmlpfTeacherForImageClassification(AmlpfPreTrainedModel):
    """UNI-style teacher: timm backbone (pooled features) + MLP head, with multi-view aggregation."""

    config_class = AmlpfTeacherConfig
    config: AmlpfTeacherConfig
    base_model_prefix = "teacher"

    def __init__(self, config: AmlpfTeacherConfig):
        super().__init__(config)
        self.backbone = self._build_timm_tower()
        self._timm_tower_built(self.backbone)
        self.head = AmlpfMLPHead(
            self.backbone.num_features, config.head_hidden_sizes, config.num_labels, config.head_dropout
        )
        self.post_init()

    def _vision_tower(self) -> nn.Module:
        return self.backbone

    def _build_timm_tower(self) -> nn.Module:
        return create_timm_model(self.config.backbone, self.config.backbone_kwargs, num_classes=0)

    def _init_weights(self, module):
        # The head gets PyTorch's default Linear init (the reference code's); the backbone timm's own init
        # (initialize_weights), never transformers' generic one.
        if isinstance(module, nn.Linear) and any(module is layer for layer in self.head):
            module.reset_parameters()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> AmlpfTeacherOutput:
        r"""
        labels: class indices (B,) for single-label classification; (B, C) floats for
            ``problem_type="multi_label_classification"``; floats for regression.
        output_hidden_states: return the backbone's per-block outputs (defaults to ``config.output_hidden_states``;
            a list of indices keeps only those).
        output_attentions: accepted for the common interface; timm backbones expose no attention maps.
        """
        output_hidden_states, output_attentions = self._output_flags(kwargs)
        _warn_no_timm_attentions(output_attentions, self.backbone)
        x, batch, views = flatten_views(pixel_values)
        features = timm_features(self.backbone, x, output_hidden_states)
        view_logits = self.head(features.pooler_output).view(batch, views, -1)
        logits = aggregate_view_logits(view_logits)
        hidden_states = features.hidden_states
        if hidden_states is not None and pixel_values.dim() == 5:
            hidden_states = _unflatten_views(features, batch, views).hidden_states
        return AmlpfTeacherOutput(
            loss=self._loss(logits, labels), logits=logits, view_logits=view_logits, hidden_states=hidden_states
        )


class AmlpfClipForImageClassification(AmlpfPreTrainedModel):
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
        # _from_config: how transformers' own composite models (CLIPModel) build their towers (attention
        # implementation and dtype from the config); no public constructor does that.
        if config.vision_backend == "timm":
            self.vision_model = self._build_timm_tower()
            self._timm_tower_built(self.vision_model)
        else:
            self.vision_model = CLIPVisionModelWithProjection._from_config(config.vision_config)
        self.text_model = CLIPTextModelWithProjection._from_config(config.text_config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        num_levels = len(config.prompt_levels)
        self.fusion_weights = nn.Parameter(torch.full((num_levels,), self._fusion_init_value()))
        self.register_buffer(
            "prompt_embeds", torch.zeros(num_levels, config.num_labels, config.projection_dim), persistent=True
        )
        self._freeze()
        self.post_init()  # encodes the prompts (_init_weights)

    def _vision_tower(self) -> nn.Module:
        return self.vision_model

    def _build_timm_tower(self) -> nn.Module:
        return create_timm_model(
            self.config.timm_model_name, self.config.timm_model_kwargs, num_classes=self.config.projection_dim
        )

    # ----------------------------------------------------------------------------------------- init / train
    def _fusion_init_value(self) -> float:
        return float(self.config.fusion_init) if self.config.fusion == "learned" else 0.0

    @torch.no_grad()
    def reset_fusion_weights(self) -> None:
        """Every fusion weight at the initial value of ``config.fusion`` (1 for ``learned``, uniform for
        ``softmax``), e.g. after the fusion mode of a checkpoint was changed."""
        self.fusion_weights.fill_(self._fusion_init_value())

    def _init_weights(self, module):
        # Only this module's own tensors: the timm tower gets timm's init (initialize_weights), the CLIP towers
        # CLIP's (they are PreTrainedModels and are dispatched to their own _init_weights). transformers' init
        # functions leave tensors loaded from a checkpoint alone. Runs after the towers (children first), so the
        # prompts are encoded by the initialised (or loaded) text tower.
        if module is self:
            init.constant_(self.fusion_weights, self._fusion_init_value())
            init.constant_(self.logit_scale, float(self.config.logit_scale_init_value))
            if not _is_loaded(self.prompt_embeds):
                if self.config.prompt_input_ids:
                    self.encode_prompts()
                else:
                    init.zeros_(self.prompt_embeds)

    def _freeze(self) -> None:
        self.text_model.requires_grad_(False)
        self.logit_scale.requires_grad_(bool(self.config.train_logit_scale))

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_model.eval()  # frozen: never in training mode
        return self

    # ----------------------------------------------------------------------------------------- features
    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """As transformers 5 ``CLIPModel.get_image_features``: ``pooler_output`` holds the projected image
        embeddings before normalisation, (N, D) for 4-D input and (B, V, D) for 5-D input (every tensor of the
        output then has the view axis). Extra keyword arguments go to a CLIP tower (timm towers take none)."""
        x, batch, views = flatten_views(pixel_values)
        if self.config.vision_backend == "timm":
            if kwargs:
                raise TypeError(f"the timm image tower takes no {sorted(kwargs)}")
            if output_hidden_states is None:
                output_hidden_states = self.config.output_hidden_states
            if output_attentions is None:
                output_attentions = self.config.output_attentions
            _warn_no_timm_attentions(output_attentions, self.vision_model)
            output = timm_features(self.vision_model, x, output_hidden_states)
        else:
            # unset flags stay unset, so that the CLIP tower falls back on its own config
            flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
            flags = {key: value for key, value in flags.items() if value is not None}
            tower = self.vision_model(pixel_values=x, return_dict=True, **flags, **kwargs)
            output = BaseModelOutputWithPooling(
                last_hidden_state=tower.last_hidden_state, pooler_output=tower.image_embeds,
                hidden_states=tower.hidden_states, attentions=tower.attentions,
            )
        return output if pixel_values.dim() == 4 else _unflatten_views(output, batch, views)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """As transformers 5 ``CLIPModel.get_text_features``: ``pooler_output`` holds the projected text
        embeddings before normalisation."""
        text = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=text.last_hidden_state, pooler_output=text.text_embeds,
            hidden_states=text.hidden_states, attentions=text.attentions,
        )

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
        if self.logit_scale.device.type == "meta":  # from_pretrained builds on meta; loading (re-)encodes
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
            embeds = self.get_text_features(input_ids, mask, return_dict=True).pooler_output
            levels.append(F.normalize(embeds.float(), dim=-1))
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
            too_long = [name for name, e in zip(class_names, encoded) if len(e) >= max_len]
            if too_long:  # name the classes, not the (long) prompts themselves
                logger.warning_once(
                    f"the {level!r} prompt(s) of {too_long} exceed the text tower's {max_len} tokens and are truncated"
                )
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
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> AmlpfClipOutput:
        r"""
        labels: class indices (B,) for single-label classification; (B, C) floats for
            ``problem_type="multi_label_classification"``; floats for regression.
        output_hidden_states / output_attentions: return the image tower's (default: the config's; a list of
            indices keeps only those hidden states); timm towers have no attention maps (None).
        """
        if not self.config.prompt_input_ids:
            raise ValueError("the student has no prompts: call set_prompts(prompts, tokenizer) first")
        output_hidden_states, output_attentions = self._output_flags(kwargs)
        _, batch, views = flatten_views(pixel_values)
        features = self.get_image_features(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            return_dict=True,
        )
        image_embeds = F.normalize(features.pooler_output.reshape(batch * views, -1), dim=-1)
        scale = self.logit_scale
        if self.config.logit_scale_max is not None:  # the reference: no bound (None, the default)
            scale = scale.clamp(max=self.config.logit_scale_max)
        scale = scale.exp()
        prompt_embeds = self.prompt_embeds.to(image_embeds.dtype)
        level_logits = scale * torch.einsum("nd,lcd->nlc", image_embeds, prompt_embeds)  # (N, L, C)
        fused = torch.einsum("nlc,l->nc", level_logits, self.effective_fusion_weights().to(level_logits.dtype))
        view_logits = fused.view(batch, views, -1)
        logits = aggregate_view_logits(view_logits)
        return AmlpfClipOutput(
            loss=self._loss(logits, labels),
            logits=logits,
            view_logits=view_logits,
            level_logits=aggregate_view_logits(level_logits.view(batch, views, *level_logits.shape[1:])),
            hidden_states=features.hidden_states if output_hidden_states else None,
            attentions=features.attentions if output_attentions else None,
        )


__all__ = [
    "AmlpfClipForImageClassification",
    "AmlpfClipOutput",
    "AmlpfImageClassifierOutput",
    "AmlpfMLPHead",
    "AmlpfPreTrainedModel",
    "AmlpfTeacherForImageClassification",
    "AmlpfTeacherOutput",
    "aggregate_view_logits",
]
