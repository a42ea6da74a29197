"""transformers' own common tests (``ModelTesterMixin``, ``ConfigTester``, ``ImageProcessingTestMixin``, from the
source distribution of the installed version) applied to both models and the processor, as
``tests/models/clip/test_modeling_clip.py`` applies them to CLIP. Run with ``make test-upstream``, which fetches
them and sets ``AMLPF_UPSTREAM_TESTS``; the file name keeps ``pytest tests`` (offline) from collecting it.

Tests that do not apply to this architecture are skipped with the reason; the README lists them.
"""

from __future__ import annotations

import copy
import os
import unittest

import torch
from conftest import STUDENT_TINY, TEACHER_TINY
from standins import import_upstream
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

from modeling_amlpf import (
    AmlpfClipConfig,
    AmlpfClipForImageClassification,
    AmlpfImageProcessor,
    AmlpfTeacherConfig,
    AmlpfTeacherForImageClassification,
)

TESTS_DIR = os.environ.get("AMLPF_UPSTREAM_TESTS")
if not TESTS_DIR:
    raise RuntimeError("run `make test-upstream`: it fetches transformers' common tests and sets AMLPF_UPSTREAM_TESTS")
modeling_common = import_upstream(TESTS_DIR, "test_modeling_common")
configuration_common = import_upstream(TESTS_DIR, "test_configuration_common")
image_processing_common = import_upstream(TESTS_DIR, "test_image_processing_common")
ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor

TINY_CLIP_VISION = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "image_size": 32, "patch_size": 8, "projection_dim": 64, "hidden_act": "quick_gelu",
}


def _skip(reason):
    return unittest.skip(reason)


class AmlpfModelTester:
    """What ``ModelTesterMixin`` asks of a model tester, for one tiny preset. Hidden-state counts and shapes are
    described (``expected_num_hidden_layers``, ``seq_length``, ``hidden_size``) where the layout is transformers'
    (B, sequence, hidden), i.e. for CLIP towers."""

    def __init__(self, parent, make_config, image_size, batch_size=3, **attributes):
        self.parent = parent
        self.make_config = make_config
        self.image_size = image_size
        self.batch_size = batch_size
        self.is_training = True
        self.num_channels = 3
        self.__dict__.update(attributes)

    def get_config(self):
        return self.make_config()

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class AmlpfTextTester:
    """Inputs of the student's ``get_text_features`` (its frozen CLIP text tower)."""

    def __init__(self, make_config, batch_size=3, seq_length=7):
        self.make_config, self.batch_size, self.seq_length = make_config, batch_size, seq_length
        text_config = make_config().text_config
        self.num_hidden_layers, self.hidden_size = text_config.num_hidden_layers, text_config.hidden_size

    def prepare_config_and_inputs_for_common(self):
        config = self.make_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], config.text_config.vocab_size)
        return config, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _teacher_config():
    config = AmlpfTeacherConfig.from_pretrained(TEACHER_TINY)
    config.backbone_kwargs["depth"] = 2  # the common tests want at most 2 layers
    return config


def _student_config(**overrides):
    config, _ = AmlpfClipConfig.get_config_dict(STUDENT_TINY)
    return AmlpfClipConfig.from_dict({**config, **overrides})


def _clip_student_config():
    # CLIP's own tester keeps CLIPConfig's logit scale (ln 14.3) rather than the pretrained ln 100: the logits
    # compared in fp16 (eager vs sdpa) are then of the size of CLIP's
    return _student_config(
        vision_backend="clip", vision_config=copy.deepcopy(TINY_CLIP_VISION), logit_scale_init_value=2.6592
    )


class _AmlpfCommonTests(ModelTesterMixin):
    """Shared set-up and the skips that hold for both models."""

    has_attentions = False
    test_resize_embeddings = False  # image models: no token embeddings to resize

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # transformers adds labels for its own image classifiers (by class name); ours get class indices too
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            batch = inputs_dict["pixel_values"].shape[0]
            inputs_dict["labels"] = torch.arange(batch) % self.model_tester.get_config().num_labels
        return inputs_dict

    @_skip("no token embeddings: the models take pixel_values only (get_input_embeddings is not applicable)")
    def test_model_get_set_embeddings(self):
        pass

    @_skip("no token embeddings: nothing to tie or resize")
    def test_inputs_embeds(self):
        pass

    @_skip("no token embeddings: nothing to tie or resize")
    def test_inputs_embeds_matches_input_ids(self):
        pass


PROMPT_BUFFER = (
    "prompt_embeds is a buffer computed from weights (the text tower encodes the config's prompts), not a constant: "
    "a model built without weight init has zeros there, one initialised from meta has its prompts encoded"
)
TIMM_CHECKPOINTING = (
    "the timm image tower checkpoints with timm's own set_grad_checkpointing, not transformers' "
    "GradientCheckpointingLayer this test hooks into; gradient equality is checked in tests/test_conformance.py"
)
TIMM_HIDDEN_STATES = (
    "timm hidden states are NCHW feature maps (as TimmWrapperModel gives them), not (B, seq, hidden); "
    "shapes are checked in tests/test_conformance.py"
)


class _TimmTowerTests(_AmlpfCommonTests):
    """Skips for models whose image tower is a timm model."""

    @_skip(TIMM_CHECKPOINTING)
    def test_gradient_checkpointing_enable_disable(self):
        pass

    @_skip(TIMM_CHECKPOINTING)
    def test_training_gradient_checkpointing(self):
        pass

    @_skip(TIMM_CHECKPOINTING)
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    @_skip(TIMM_CHECKPOINTING)
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass

    @_skip(TIMM_HIDDEN_STATES)
    def test_hidden_states_output(self):
        pass

    @_skip("timm initialises its weights itself (constructor or init_weights), outside the seeded `_init_weights` "
           "this test compares (transformers exempts TimmWrapper weights for the same reason); partial loads are "
           "checked against timm's init rules in tests/test_conformance.py")
    def test_can_init_all_missing_weights(self):
        pass


class AmlpfTeacherModelTest(_TimmTowerTests, unittest.TestCase):
    all_model_classes = (AmlpfTeacherForImageClassification,)

    def setUp(self):
        self.model_tester = AmlpfModelTester(self, _teacher_config, image_size=64)
        self.config_tester = ConfigTester(
            self, config_class=AmlpfTeacherConfig, has_text_modality=False, common_properties=[],
            **{"backbone": "vit_large_patch16_224", "head_hidden_sizes": [16, 8]},
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @_skip("timm's forward_intermediates returns reshaped copies of the ViT block outputs, off the path to the "
           "logits, so they receive no gradient")
    def test_retain_grad_hidden_states_attentions(self):
        pass


class AmlpfStudentModelTest(_TimmTowerTests, unittest.TestCase):
    """The default student: timm ResNet image tower (OpenAI RN50 layout), frozen CLIP text tower."""

    all_model_classes = (AmlpfClipForImageClassification,)

    # the timm tower's last_hidden_state is an NCHW feature map, so its width is not a vision_config.hidden_size
    skip_test_image_features_output_shape = True

    def setUp(self):
        self.model_tester = AmlpfModelTester(
            self, _student_config, image_size=64, text_model_tester=AmlpfTextTester(_student_config),
            # the timm ResNet's hidden states: stem + 4 stages
            vision_model_tester=AmlpfModelTester(self, _student_config, image_size=64, expected_num_hidden_layers=5),
        )
        self.config_tester = ConfigTester(
            self, config_class=AmlpfClipConfig, has_text_modality=False, common_properties=[],
            **{"projection_dim": 32, "fusion": "softmax", "prompt_levels": ["label", "detailed"]},
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @_skip(PROMPT_BUFFER)
    def test_init_weights_can_init_buffers(self):
        pass


class AmlpfStudentClipVisionModelTest(_AmlpfCommonTests, unittest.TestCase):
    """The student with a transformers CLIP image tower (``vision_backend="clip"``, for HF CLIP checkpoints)."""

    all_model_classes = (AmlpfClipForImageClassification,)
    has_attentions = True
    # config file without a copyright year: the test would take it for a pre-2023 model and skip it
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        layers, tokens = TINY_CLIP_VISION["num_hidden_layers"], (32 // 8) ** 2 + 1
        vision = {
            "image_size": 32, "num_hidden_layers": layers, "seq_length": tokens,
            "hidden_size": TINY_CLIP_VISION["hidden_size"],
            "num_attention_heads": TINY_CLIP_VISION["num_attention_heads"],
        }
        self.model_tester = AmlpfModelTester(
            self, _clip_student_config, **vision, text_model_tester=AmlpfTextTester(_clip_student_config),
            vision_model_tester=AmlpfModelTester(self, _clip_student_config, **vision),
        )

    @_skip(PROMPT_BUFFER)
    def test_init_weights_can_init_buffers(self):
        pass


class AmlpfImageProcessingTester(image_processing_common.ImageProcessingTester):
    """The processor returns V views per image: (B, V, 3, crop, crop)."""

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("crop_size", 32)
        kwargs.setdefault("min_short_side", 48)
        super().__init__(parent, batch_size=3, min_resolution=40, max_resolution=90, **kwargs)

    def _get_image_processing_classes(self):
        # one class serves both backends (it resizes with torch); registered so by `import modeling_amlpf`
        return dict(IMAGE_PROCESSOR_MAPPING[AmlpfClipConfig])

    def prepare_image_processor_dict(self):
        return {"crop_size": self.crop_size, "min_short_side": self.min_short_side}

    def expected_output_image_shape(self, images):
        processor = AmlpfImageProcessor(**self.prepare_image_processor_dict())
        return processor.num_views, self.num_channels, self.crop_size, self.crop_size


class AmlpfImageProcessingTest(image_processing_common.ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = AmlpfImageProcessingTester

    @_skip("downloads a COCO image from the Hub (this run is offline); both backends are one class, and the "
           "batched variant on random images passes")
    def test_backends_equivalence(self):
        pass

    @_skip("4-channel input with 4-value mean/std and do_convert_rgb=False: AMLPF views are RGB for an RGB-trained "
           "model (RGBA is composited on white, as histology is scanned on white glass); refusing it is the intent")
    def test_call_numpy_4_channels(self):
        pass
