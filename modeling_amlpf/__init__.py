"""amlpf: AMLPF-CLIP (IEEE JBHI 2025) for histopathology image classification, Hugging Face native.

Importing the package registers both models with the transformers Auto classes (AutoConfig, AutoModel,
AutoModelForImageClassification, AutoImageProcessor; AutoVideoProcessor as having none) and marks them for
``register_for_auto_class`` so that ``save_pretrained`` ships their code (``trust_remote_code`` loading without
this package).

Submodules: ``data`` (datasets, splits, demo data), ``sampling`` (class-balanced sampler), ``losses``
(distillation), ``trainers`` (Trainer subclasses), ``metrics`` (evaluate module, reports), ``prompts``,
``pretrained`` and ``convert`` (external weights).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoVideoProcessor,
)

from .models.configuration_amlpf import AmlpfClipConfig, AmlpfTeacherConfig
from .models.image_processing_amlpf import AmlpfImageProcessor
from .models.modeling_amlpf import (
    AmlpfClipForImageClassification,
    AmlpfClipOutput,
    AmlpfImageClassifierOutput,
    AmlpfTeacherForImageClassification,
    aggregate_view_logits,
)

__version__ = "0.1.0"

for _config, _model in (
    (AmlpfTeacherConfig, AmlpfTeacherForImageClassification),
    (AmlpfClipConfig, AmlpfClipForImageClassification),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForImageClassification.register(_config, _model, exist_ok=True)
    _processors = {"pil": AmlpfImageProcessor, "torchvision": AmlpfImageProcessor}
    AutoImageProcessor.register(_config, image_processor_classes=_processors, exist_ok=True)
    # No video processor, said explicitly: pipeline("image-classification") also tries AutoVideoProcessor, which
    # would otherwise derive "AmlpfVideoProcessor" from the image processor's auto_map and ask whether to run it.
    AutoVideoProcessor.register(_config, video_processor_classes={}, exist_ok=True)
    _config.register_for_auto_class()
    _model.register_for_auto_class("AutoModelForImageClassification")
AmlpfImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "AmlpfClipConfig",
    "AmlpfClipForImageClassification",
    "AmlpfClipOutput",
    "AmlpfImageClassifierOutput",
    "AmlpfImageProcessor",
    "AmlpfTeacherConfig",
    "AmlpfTeacherForImageClassification",
    "aggregate_view_logits",
]
