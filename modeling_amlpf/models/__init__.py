"""The models as they ship: exactly the files ``save_pretrained`` copies into a checkpoint as remote code
(configuration, modeling, image processing, image decoding). Nothing here imports the rest of the package."""

from .configuration_amlpf import AmlpfClipConfig, AmlpfTeacherConfig
from .image_processing_amlpf import AmlpfImageProcessor
from .modeling_amlpf import (
    AmlpfClipForImageClassification,
    AmlpfClipOutput,
    AmlpfImageClassifierOutput,
    AmlpfPreTrainedModel,
    AmlpfTeacherForImageClassification,
    AmlpfTeacherOutput,
    aggregate_view_logits,
)

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
