"""The frozen teacher sees the views it was trained on: its processor is compared with the student's at start-up.

In distillation the teacher is fed the student's ``pixel_values`` (one set of views per batch, so that both
models judge the same image windows). Nothing guarantees that the two processors agree: a student converted
with CLIP's statistics (``convert --image_stats clip``) would hand the teacher CLIP-normalised pixels, and an
RN50x4 student (288 px) would hand a 224-px teacher views of another size. So, before training:

* every setting that decides *which pixels* a view holds (``VIEW_GEOMETRY_SETTINGS``: upsizing, crop size,
  number of crops, strides, interpolation) must be equal, else ``teacher_input_map`` refuses with both values
  and the fixes;
* the settings that only map 8-bit pixels to numbers (``rescale_factor``, ``do_rescale``, ``do_normalize``,
  ``image_mean``, ``image_std``: one affine map per channel, value = pixel * a - b) may differ: the student's
  values are then mapped onto the teacher's on the device, ``x_t = x_s * a_t / a_s + (b_s * a_t / a_s - b_t)``
  per channel (with normalisation and the same rescaling: ``x_t = (x_s * std_s + mean_s - mean_t) / std_t``).
  The map is exact up to float32 rounding, deterministic, and applied before the teacher-logit cache, whose
  keys are view geometry only, so the cache stays exact.

``do_convert_rgb`` is not compared: it decides whether a non-RGB file is converted or refused, never the pixels
of an image both processors accept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging

from ..models.image_processing_amlpf import AmlpfImageProcessor
from ..pretrained.weights import is_local_path

logger = logging.get_logger(__name__)

PREPROCESSOR_FILE = "preprocessor_config.json"
# Settings of AmlpfImageProcessor that change which pixels a view holds (anything but the value map).
VIEW_GEOMETRY_SETTINGS = (
    "min_short_side", "crop_size", "num_crops", "crop_stride", "large_crop_stride", "large_side_threshold",
    "resample", "antialias",
)
# Settings that map 8-bit pixels to the model's input values: one affine map per channel.
VALUE_SETTINGS = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")


@dataclass(frozen=True)
class ChannelAffine:
    """``x -> x * scale + offset`` per channel on (..., 3, H, W) tensors: the teacher's values from the student's."""

    scale: torch.Tensor  # (3,) float32
    offset: torch.Tensor  # (3,) float32

    def to(self, device) -> ChannelAffine:
        return ChannelAffine(self.scale.to(device), self.offset.to(device))

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[-3] != 3:
            raise ValueError(f"expected (..., 3, H, W) pixel values, got shape {tuple(pixel_values.shape)}")
        shape = (3, 1, 1)
        scale = self.scale.to(pixel_values.device, pixel_values.dtype).view(shape)
        offset = self.offset.to(pixel_values.device, pixel_values.dtype).view(shape)
        return torch.addcmul(offset, pixel_values, scale)


def _value_map(settings: dict) -> tuple[list[float], list[float]]:
    """Per channel (a, b) with value = pixel * a - b (pixel in 8-bit units), from a processor's settings."""
    factor = float(settings["rescale_factor"]) if settings["do_rescale"] else 1.0
    if not settings["do_normalize"]:
        return [factor] * 3, [0.0] * 3
    means, stds = settings["image_mean"], settings["image_std"]
    return [factor / float(s) for s in stds], [float(m) / float(s) for m, s in zip(means, stds)]


def _describe(settings: dict, names) -> str:
    return ", ".join(f"{name}={settings[name]}" for name in names)


def teacher_input_map(
    student_processor, teacher_processor, teacher_name: str = "the teacher", student_name: str = "the student"
) -> ChannelAffine | None:
    """``None`` when the teacher's processor makes exactly the student's input, a ``ChannelAffine`` when only
    the value settings (mean/std/rescaling) differ; a ``ValueError`` naming both settings when the views differ.

    Both processors are ``AmlpfImageProcessor``s (anything with ``settings()`` returning their parameters)."""
    student, teacher = student_processor.settings(), teacher_processor.settings()
    differing = [name for name in VIEW_GEOMETRY_SETTINGS if student[name] != teacher[name]]
    if differing:
        raise ValueError(
            f"{teacher_name} was trained on other views than {student_name}'s processor makes, so it cannot judge "
            f"the student's views: {teacher_name}: {_describe(teacher, differing)}; {student_name}: "
            f"{_describe(student, differing)}. Fix: retrain the teacher with the student's view settings (its "
            f"processor, saved as {PREPROCESSOR_FILE}, with {_describe(student, differing)}), or distil a student "
            f"whose processor makes the teacher's views ({_describe(teacher, differing)}; e.g. a student whose input "
            "size is the teacher's crop size), or train without distillation (--kd_weight 0)."
        )
    a_s, b_s = _value_map(student)
    a_t, b_t = _value_map(teacher)
    if (a_s, b_s) == (a_t, b_t):
        return None
    scale = [t / s for s, t in zip(a_s, a_t)]
    offset = [bs * r - bt for bs, r, bt in zip(b_s, scale, b_t)]
    logger.warning(
        f"{teacher_name} was trained with {_describe(teacher, VALUE_SETTINGS)}, {student_name}'s processor uses "
        f"{_describe(student, VALUE_SETTINGS)}: the teacher's input is re-normalised on the device "
        f"(x_teacher = x_student * {[round(v, 6) for v in scale]} + {[round(v, 6) for v in offset]} per channel)"
    )
    return ChannelAffine(torch.tensor(scale, dtype=torch.float32), torch.tensor(offset, dtype=torch.float32))


def load_teacher_processor(teacher_path: str | os.PathLike):
    """The image processor saved with the teacher (``<teacher>/preprocessor_config.json``, as ``train_teacher.py``
    writes it; a Hub teacher's from its repository), or None with a warning when it has none to compare."""
    path = str(teacher_path)
    if is_local_path(path):
        if not (Path(path) / PREPROCESSOR_FILE).is_file():
            logger.warning(
                f"{Path(path) / PREPROCESSOR_FILE} not found: cannot check that the teacher was trained on the "
                "student's views (train_teacher.py saves it beside the teacher)"
            )
            return None
        return AmlpfImageProcessor.from_pretrained(path)
    try:
        return AmlpfImageProcessor.from_pretrained(path)
    except OSError as error:  # no processor in the repository (or offline)
        logger.warning(f"no image processor for the teacher {path} ({error}): cannot check its views")
        return None
