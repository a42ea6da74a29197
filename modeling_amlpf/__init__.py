"""amlpf: AMLPF-CLIP (IEEE JBHI 2025) for histopathology image classification, Hugging Face native.

Importing the package registers both models with the transformers Auto classes (AutoConfig, AutoModel,
AutoModelForImageClassification, AutoImageProcessor; AutoVideoProcessor as having none) and marks them for
``register_for_auto_class`` so that ``save_pretrained`` ships their code (``trust_remote_code`` loading without
this package).

Subpackages, by concern: ``models`` (what ships as remote code), ``data`` (datasets, splits, demo data),
``pretrained`` (external weights, conversion, presets, prompts), ``training`` (trainers, losses, resampling,
training views, teacher cache), ``evaluation`` (metrics, reports, figures, cards, prediction) and ``cli`` (the
scripts' plumbing).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoVideoProcessor,
)

from .models import (
    AmlpfClipConfig,
    AmlpfClipForImageClassification,
    AmlpfClipOutput,
    AmlpfImageClassifierOutput,
    AmlpfImageProcessor,
    AmlpfPreTrainedModel,
    AmlpfTeacherConfig,
    AmlpfTeacherForImageClassification,
    AmlpfTeacherOutput,
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
    "AmlpfPreTrainedModel",
    "AmlpfTeacherConfig",
    "AmlpfTeacherForImageClassification",
    "AmlpfTeacherOutput",
    "aggregate_view_logits",
]
