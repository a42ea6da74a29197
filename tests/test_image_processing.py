"""Tests of the multi-view processor against a port of the reference code's view function.

`reference_views` below re-implements the reference from shared/METHOD.md ("Exactly what the reference code
does") with torchvision's functional transforms, independently of the processor: upsize with `Resize(512)`
(bilinear) when a side is below 512, flip the whole image in training, normalise, materialise every grid
patch, keep grid indices k * (n // 8) in evaluation, and resize the normalised image bilinearly without
antialiasing for the global view.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import HIDE_PACKAGE
from PIL import Image
from torchvision.transforms import InterpolationMode

from modeling_amlpf.models.image_processing_amlpf import TINY_PRESET, AmlpfImageProcessor

MEAN = [0.485, 0.456, 0.406]  # ImageNet, written out so the test does not reuse the module's constants
STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CROP = TINY_PRESET["crop_size"]
GREY = 1.0 / 255 / min(STD)  # one grey level in normalised units
PAPER = dict(min_side=512, crop=224, stride=32, large_stride=48, threshold=1024)
TINY = dict(min_side=128, crop=64, stride=8, large_stride=12, threshold=256)


def smooth_image(height, width, seed=0):
    """A uint8 RGB image with structure at several scales, so that misplaced crops or flips are visible."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 6, height)[:, None, None]
    cols = np.linspace(0, 9, width)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 1, 3))
    base = 127 + 80 * np.sin(rows * 1.3 + cols * 0.7 + phase) + 40 * np.cos(cols * 2.1 - rows * 0.4)
    noise = rng.integers(-6, 7, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def reference_views(image, min_side, crop, stride, large_stride, threshold, num_crops=8, flip=False, indices=None,
                    mean=MEAN, std=STD):
    """The reference's views of one uint8 HWC image: (V, 3, crop, crop); `indices` replaces the evaluation ones."""
    pil = Image.fromarray(image)
    if min(pil.size) < min_side:
        pil = TF.resize(pil, min_side, interpolation=InterpolationMode.BILINEAR)
    if flip:
        pil = TF.hflip(pil)
    tensor = TF.normalize(TF.to_tensor(pil), mean, std)
    height, width = tensor.shape[-2:]
    step = large_stride if max(height, width) >= threshold else stride
    patches = tensor.unfold(1, crop, step).unfold(2, crop, step)  # (3, rows, cols, crop, crop)
    rows, cols = patches.shape[1:3]
    patches = patches.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, crop, crop)
    if indices is None:
        indices = [k * (rows * cols // num_crops) for k in range(num_crops)]
    global_view = TF.resize(tensor, [crop, crop], interpolation=InterpolationMode.BILINEAR, antialias=False)
    return torch.cat([patches[list(indices)], global_view[None]])


def grid_indices_from_geometry(geometry, height, width, crop, stride):
    """Grid indices, on the (flipped) image the reference crops, of the processor's reported crop geometry."""
    columns = (width - crop) // stride + 1
    indices = []
    for top, left, flipped in geometry[:-1].tolist():
        left_on_grid = width - crop - left if flipped else left
        assert top % stride == 0 and left_on_grid % stride == 0, (top, left, flipped)
        indices.append(top // stride * columns + left_on_grid // stride)
    return indices


@pytest.fixture
def tiny():
    return AmlpfImageProcessor(**TINY_PRESET)


# ----------------------------------------------------------------------------------------------------------
# shapes and call conventions
# ----------------------------------------------------------------------------------------------------------


def test_paper_sizes_give_nine_views_for_a_batch_of_different_sizes():
    processor = AmlpfImageProcessor()
    small = smooth_image(300, 400)
    large = Image.fromarray(smooth_image(1200, 1600, seed=1))
    pixel_values = processor([small, large], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 9, 3, 224, 224)
    assert pixel_values.dtype == torch.float32 and pixel_values.is_contiguous()
    assert processor.num_views == 9


def test_zero_crops_gives_the_global_view_alone(tiny):
    single = AmlpfImageProcessor(**TINY_PRESET, num_crops=0)
    images = [smooth_image(100, 150), smooth_image(140, 130, seed=2)]
    pixel_values = single(images)["pixel_values"]
    assert pixel_values.shape == (2, 1, 3, CROP, CROP)
    torch.testing.assert_close(pixel_values[:, 0], tiny(images)["pixel_values"][:, -1])


def test_numpy_output_and_rejected_arguments(tiny):
    image = smooth_image(100, 150)
    as_numpy = tiny(image, return_tensors="np", return_view_geometry=True)
    assert isinstance(as_numpy["pixel_values"], np.ndarray) and as_numpy["pixel_values"].shape == (1, 9, 3, CROP, CROP)
    assert as_numpy["view_geometry"].dtype == np.int64
    np.testing.assert_array_equal(as_numpy["pixel_values"], tiny(image)["pixel_values"].numpy())
    with pytest.raises(TypeError, match="num_crops"):
        tiny(image, num_crop=0)
    with pytest.raises(ValueError, match="min_short_side"):
        AmlpfImageProcessor(min_short_side=200, crop_size=224)
    with pytest.raises(ValueError, match="resample"):
        AmlpfImageProcessor(resample="nearest")


def test_pipeline_style_call(tiny):
    # ImageClassificationPipeline calls image_processor(images=image, return_tensors="pt").to(dtype)
    image = Image.fromarray(smooth_image(100, 150))
    batch = tiny(images=image, return_tensors="pt").to(torch.float16)
    assert batch["pixel_values"].dtype == torch.float16 and batch["pixel_values"].shape == (1, 9, 3, CROP, CROP)


# ----------------------------------------------------------------------------------------------------------
# geometry: upsizing, strides, crop positions
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width", [(300, 400), (400, 300), (460, 700), (600, 500), (500, 600), (520, 100), (511, 2000)]
)
def test_upsizing_gives_torchvision_resize_sizes_when_a_side_is_short(height, width):
    processor = AmlpfImageProcessor()
    expected = TF.resize(Image.new("RGB", (width, height)), 512, interpolation=InterpolationMode.BILINEAR)
    assert processor.resized_size(height, width) == (expected.height, expected.width)
    upsized = processor.resize_short_side(Image.fromarray(smooth_image(height, width)))
    assert (upsized.height, upsized.width) == (expected.height, expected.width)


def test_images_without_a_short_side_are_never_resized():
    processor = AmlpfImageProcessor()
    for size in [(512, 512), (1200, 1600), (512, 3000)]:
        assert processor.resized_size(*size) == size
    large = Image.fromarray(smooth_image(520, 600))
    np.testing.assert_array_equal(np.asarray(processor.resize_short_side(large)), np.asarray(large))
    assert processor.resized_size(300, 400) == (512, 682)  # 400 * 512 / 300 = 682.67, truncated as torchvision


def test_large_stride_applies_to_the_side_after_upsizing():
    processor = AmlpfImageProcessor()
    assert processor.crop_grid(1023, 1023)[0] == 32
    assert processor.crop_grid(600, 1024)[0] == 48
    assert processor.crop_grid(1024, 600)[0] == 48
    # 300 x 700 becomes 512 x 1194, so its grid uses the large stride although the input was under 1024
    height, width = processor.resized_size(300, 700)
    assert (height, width) == (512, 1194)
    stride, rows, columns = processor.crop_grid(height, width)
    assert (stride, rows, columns) == (48, (512 - 224) // 48 + 1, (1194 - 224) // 48 + 1)


def test_evaluation_positions_are_the_reference_grid_indices():
    processor = AmlpfImageProcessor()
    positions, flips = processor.crop_positions(512, 512)
    # shared/METHOD.md: 10 x 10 grid, step 12: (row, col) (0,0) (1,2) (2,4) (3,6) (4,8) (6,0) (7,2) (8,4) x 32 px
    cells = [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8), (6, 0), (7, 2), (8, 4)]
    assert positions == [(32 * row, 32 * col) for row, col in cells] and flips == [False] * 8
    # LungHist700 1200 x 1600: stride 48, 21 x 29 grid, n = 609, step 76
    positions, _ = processor.crop_positions(1200, 1600)
    assert positions == [(48 * (76 * k // 29), 48 * (76 * k % 29)) for k in range(8)]


@pytest.mark.parametrize("height, width", [(600, 900), (1200, 1600)])
def test_training_positions_lie_on_the_grid_of_the_flipped_image(height, width):
    processor = AmlpfImageProcessor()
    stride = 48 if max(height, width) >= 1024 else 32
    seen_flips = set()
    for seed in range(12):
        positions, flips = processor.crop_positions(height, width, training=True, generator=seed)
        assert len(positions) == len(flips) == 8
        assert len(set(flips)) == 1  # one flip for the whole image
        seen_flips.add(flips[0])
        for top, left in positions:
            on_grid = width - 224 - left if flips[0] else left
            assert top % stride == 0 and on_grid % stride == 0
            assert 0 <= top <= height - 224 and 0 <= left <= width - 224
    assert seen_flips == {False, True}


def test_training_positions_are_drawn_uniformly_with_replacement():
    processor = AmlpfImageProcessor(min_short_side=64, crop_size=64, crop_stride=8, num_crops=8)
    grid = [(0, left) for left in range(0, 57, 8)]  # 64 x 120 holds exactly 8 grid positions
    counts = dict.fromkeys(grid, 0)
    draws_with_repeats = 0
    flipped = 0
    for seed in range(400):
        positions, flips = processor.crop_positions(64, 120, training=True, generator=seed)
        draws_with_repeats += len(set(positions)) < 8
        flipped += flips[0]
        for position in positions:
            counts[position] += 1  # a KeyError would mean a position off the grid
    # Without replacement every draw would be a permutation of the 8 positions; with replacement
    # P(8 distinct) = 8! / 8^8 = 0.24%, so nearly every draw repeats a position.
    assert draws_with_repeats > 390
    expected = 400 * 8 / 8
    assert all(abs(count - expected) < 5 * expected**0.5 for count in counts.values()), counts
    assert abs(flipped - 200) < 5 * 10  # p = 0.5, sd = 10


# ----------------------------------------------------------------------------------------------------------
# pixel content against the reference port
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, settings",
    [(100, 150, TINY), (150, 100, TINY), (130, 200, TINY), (300, 700, TINY), (300, 400, PAPER), (512, 512, PAPER)],
)
def test_evaluation_views_equal_the_reference(height, width, settings):
    processor = AmlpfImageProcessor(
        min_short_side=settings["min_side"], crop_size=settings["crop"], crop_stride=settings["stride"],
        large_crop_stride=settings["large_stride"], large_side_threshold=settings["threshold"],
    )
    image = smooth_image(height, width, seed=height + width)
    expected = reference_views(image, **settings)
    pixel_values = processor(image)["pixel_values"][0]
    torch.testing.assert_close(pixel_values[:-1], expected[:-1], atol=1e-5, rtol=0)  # crops: same 8-bit pixels
    torch.testing.assert_close(pixel_values[-1], expected[-1], atol=1e-4, rtol=0)  # global view: float rounding


@pytest.mark.parametrize("height, width", [(100, 150), (130, 205), (64, 300)])
def test_training_views_equal_the_reference_for_the_drawn_flip_and_indices(tiny, height, width):
    image = smooth_image(height, width, seed=width)
    flips = set()
    for seed in range(6):
        out = tiny(image, training=True, generator=seed, return_view_geometry=True)
        geometry = out["view_geometry"][0]
        upsized_height, upsized_width = tiny.resized_size(height, width)
        stride = 12 if max(upsized_height, upsized_width) >= 256 else 8
        flip = bool(geometry[-1, 2])
        assert geometry[-1, :2].tolist() == [-1, -1] and set(geometry[:, 2].tolist()) == {int(flip)}
        indices = grid_indices_from_geometry(geometry, upsized_height, upsized_width, CROP, stride)
        expected = reference_views(image, **TINY, flip=flip, indices=indices)
        torch.testing.assert_close(out["pixel_values"][0], expected, atol=1e-4, rtol=0)
        flips.add(flip)
    assert flips == {False, True}  # the seeds exercise both branches


def test_equal_geometry_gives_identical_views(tiny):
    image = smooth_image(100, 130, seed=7)
    out = tiny([image] * 40, training=True, generator=list(range(40)), return_view_geometry=True)
    by_geometry = {}
    for views, geometry in zip(out["pixel_values"], out["view_geometry"]):
        for view, key in zip(views, map(tuple, geometry.tolist())):
            if key in by_geometry:
                assert torch.equal(by_geometry[key], view), key
            by_geometry[key] = view
    assert len(by_geometry) < 40 * 9  # keys did repeat, so the equality above was exercised
    assert {key[2] for key in by_geometry} == {0, 1}


def test_view_geometry_does_not_change_pixel_values(tiny):
    images = [smooth_image(100, 150), smooth_image(300, 260, seed=4)]
    for training in (False, True):
        plain = tiny(images, training=training, generator=3)
        with_geometry = tiny(images, training=training, generator=3, return_view_geometry=True)
        assert "view_geometry" not in plain
        assert torch.equal(plain["pixel_values"], with_geometry["pixel_values"])
        geometry = with_geometry["view_geometry"]
        assert geometry.shape == (2, 9, 3) and geometry.dtype == torch.long
    evaluation = tiny(images, return_view_geometry=True)["view_geometry"][0]
    positions, _ = tiny.crop_positions(128, 192)
    assert evaluation[:-1].tolist() == [[top, left, 0] for top, left in positions]
    assert evaluation[-1].tolist() == [-1, -1, 0]


def test_global_view_flips_with_the_crops(tiny):
    image = smooth_image(100, 150, seed=5)
    evaluation = tiny(image)["pixel_values"][0, -1]
    for seed in range(8):
        out = tiny(image, training=True, generator=seed, return_view_geometry=True)
        flipped = bool(out["view_geometry"][0, -1, 2])
        expected = evaluation.flip(-1) if flipped else evaluation
        torch.testing.assert_close(out["pixel_values"][0, -1], expected, atol=1e-4, rtol=0)


def test_evaluation_views_are_deterministic(tiny):
    images = [smooth_image(100, 150), smooth_image(300, 260, seed=4)]
    torch.manual_seed(0)
    first = tiny(images)["pixel_values"]
    torch.manual_seed(1)
    assert torch.equal(first, tiny(images, generator=9)["pixel_values"])


def test_training_views_vary_per_call_and_repeat_with_a_seed(tiny):
    images = [smooth_image(100, 150), smooth_image(300, 260, seed=4)]
    torch.manual_seed(0)
    first = tiny(images, training=True)["pixel_values"]
    second = tiny(images, training=True)["pixel_values"]
    assert not torch.equal(first[:, :-1], second[:, :-1])
    seeded = tiny(images, training=True, generator=5)["pixel_values"]
    assert torch.equal(seeded, tiny(images, training=True, generator=5)["pixel_values"])
    from_generator = tiny(images, training=True, generator=torch.Generator().manual_seed(5))["pixel_values"]
    assert torch.equal(seeded, from_generator)
    assert not torch.equal(seeded, tiny(images, training=True, generator=6)["pixel_values"])


def test_a_list_of_generators_makes_each_image_depend_on_its_own(tiny):
    a, b, c = smooth_image(100, 150), smooth_image(140, 200, seed=1), smooth_image(180, 130, seed=2)
    batch = tiny([a, b, c], training=True, generator=[11, 12, 13], return_view_geometry=True)
    for index, (image, seed) in enumerate([(a, 11), (b, 12), (c, 13)]):
        alone = tiny(image, training=True, generator=[torch.Generator().manual_seed(seed)], return_view_geometry=True)
        assert torch.equal(batch["pixel_values"][index], alone["pixel_values"][0])
        assert torch.equal(batch["view_geometry"][index], alone["view_geometry"][0])
    reordered = tiny([c, a], training=True, generator=[13, 11])["pixel_values"]
    assert torch.equal(reordered[0], batch["pixel_values"][2]) and torch.equal(reordered[1], batch["pixel_values"][0])
    with pytest.raises(ValueError, match="one per image"):
        tiny([a, b], training=True, generator=[1])


# ----------------------------------------------------------------------------------------------------------
# interpolation options
# ----------------------------------------------------------------------------------------------------------


def test_antialiased_global_view_option(tiny):
    image = smooth_image(100, 150, seed=3)
    smooth = AmlpfImageProcessor(**TINY_PRESET, antialias=True)(image)["pixel_values"][0]
    reference = reference_views(image, **TINY)
    torch.testing.assert_close(smooth[:-1], reference[:-1], atol=1e-5, rtol=0)  # crops do not change
    upsized = TF.normalize(TF.to_tensor(TF.resize(Image.fromarray(image), 128)), MEAN, STD)
    expected = TF.resize(upsized, [CROP, CROP], interpolation=InterpolationMode.BILINEAR, antialias=True)
    torch.testing.assert_close(smooth[-1], expected, atol=1e-4, rtol=0)
    assert (smooth[-1] - reference[-1]).abs().max() > 3 * GREY  # the option does change the global view


def test_bicubic_option_resizes_as_pil_bicubic():
    image = smooth_image(100, 150, seed=8)
    processor = AmlpfImageProcessor(**TINY_PRESET, resample="bicubic", antialias=True)
    assert AmlpfImageProcessor(**TINY_PRESET, resample=3).resample == "bicubic"  # PIL.Image.BICUBIC
    pixel_values = processor(image)["pixel_values"][0]
    upsized = np.asarray(Image.fromarray(image).resize((192, 128), Image.Resampling.BICUBIC))
    crops = reference_views(upsized, **TINY)  # no further upsizing: the same grid on PIL's bicubic pixels
    difference = (pixel_values[:-1] - crops[:-1]).abs()
    assert difference.max() <= 1.01 * GREY and difference.mean() < 0.05 * GREY  # torch's uint8 kernel is PIL's
    global_view = Image.fromarray(upsized).resize((CROP, CROP), Image.Resampling.BICUBIC)
    expected = TF.normalize(TF.to_tensor(global_view), MEAN, STD)
    assert (pixel_values[-1] - expected).abs().max() <= 1.01 * GREY  # PIL rounds to 8 bits, the processor not
    assert (pixel_values[:-1] - reference_views(image, **TINY)[:-1]).abs().max() > GREY  # differs from bilinear


# ----------------------------------------------------------------------------------------------------------
# per-call overrides
# ----------------------------------------------------------------------------------------------------------

OVERRIDES = {
    "min_short_side": 150,
    "crop_size": 48,
    "num_crops": 3,
    "crop_stride": 6,
    "large_crop_stride": 10,
    "large_side_threshold": 180,
    "resample": "bicubic",
    "antialias": True,
    "do_rescale": False,
    "rescale_factor": 0.5 / 255,
    "do_normalize": False,
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_each_setting_can_be_overridden_per_call(tiny, name):
    # upsized to 128 x 192 (stride 8) and 128 x 281 (the large stride, 12): every setting matters to one
    image = [smooth_image(100, 150, seed=6), smooth_image(100, 220, seed=6)]
    before = tiny.to_dict()
    per_call = tiny(image, training=True, generator=4, return_view_geometry=True, **{name: OVERRIDES[name]})
    configured = AmlpfImageProcessor(**{**TINY_PRESET, name: OVERRIDES[name]})
    expected = configured(image, training=True, generator=4, return_view_geometry=True)
    assert torch.equal(per_call["pixel_values"], expected["pixel_values"])
    assert torch.equal(per_call["view_geometry"], expected["view_geometry"])
    assert not torch.equal(per_call["pixel_values"], tiny(image, training=True, generator=4)["pixel_values"])
    assert tiny.to_dict() == before  # the processor itself is unchanged


def test_rescale_and_normalisation_overrides_compute_the_documented_values(tiny):
    image = smooth_image(100, 150, seed=6)
    reference = reference_views(image, **TINY, mean=[0.0] * 3, std=[1.0] * 3)  # intensities in [0, 1]
    raw = tiny(image, do_normalize=False)["pixel_values"][0]
    torch.testing.assert_close(raw, reference, atol=1e-5, rtol=0)
    unscaled = tiny(image, do_normalize=False, do_rescale=False)["pixel_values"][0]
    torch.testing.assert_close(unscaled[:-1], (reference[:-1] * 255).round(), atol=1e-3, rtol=0)
    halved = tiny(image, do_normalize=False, rescale_factor=0.5 / 255)["pixel_values"][0]
    torch.testing.assert_close(halved, reference / 2, atol=1e-5, rtol=0)
    clip = tiny(image, image_mean=CLIP_MEAN, image_std=CLIP_STD)["pixel_values"][0]
    torch.testing.assert_close(clip, reference_views(image, **TINY, mean=CLIP_MEAN, std=CLIP_STD), atol=1e-4, rtol=0)
    assert tiny(image, num_crops=0)["pixel_values"].shape == (1, 1, 3, CROP, CROP)


def test_do_convert_rgb_false_refuses_what_it_would_convert(tiny):
    grey = smooth_image(100, 150)[:, :, 0]
    converted = tiny(grey)["pixel_values"]
    torch.testing.assert_close(converted, tiny(np.repeat(grey[:, :, None], 3, axis=2))["pixel_values"])
    with pytest.raises(ValueError, match="do_convert_rgb"):
        tiny(grey, do_convert_rgb=False)
    with pytest.raises(ValueError, match="do_convert_rgb"):
        tiny(Image.fromarray(grey), do_convert_rgb=False)
    rgb = smooth_image(100, 150)
    assert torch.equal(tiny(rgb, do_convert_rgb=False)["pixel_values"], tiny(rgb)["pixel_values"])


# ----------------------------------------------------------------------------------------------------------
# serialisation and auto classes
# ----------------------------------------------------------------------------------------------------------

CUSTOM = {
    "min_short_side": 96,
    "crop_size": 48,
    "num_crops": 3,
    "crop_stride": 6,
    "large_crop_stride": 10,
    "large_side_threshold": 200,
    "resample": "bicubic",
    "antialias": True,
    "do_convert_rgb": False,
    "do_rescale": False,
    "rescale_factor": 0.5,
    "do_normalize": False,
    "image_mean": [0.5, 0.4, 0.3],
    "image_std": [0.2, 0.25, 0.3],
}


def test_save_and_load_round_trip_every_parameter(tmp_path):
    processor = AmlpfImageProcessor(**CUSTOM)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "AmlpfImageProcessor"
    loaded = AmlpfImageProcessor.from_pretrained(tmp_path)
    for name, value in CUSTOM.items():
        assert saved[name] == value and getattr(loaded, name) == value, name
    image = smooth_image(100, 120)
    assert torch.equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])
    for name, value in [("num_crops", 1), ("do_convert_rgb", True), ("resample", "bilinear"), ("antialias", False)]:
        overridden = AmlpfImageProcessor.from_pretrained(tmp_path, **{name: value})
        assert getattr(overridden, name) == value and overridden.crop_size == 48, name


def test_configs_saved_before_the_new_options_load_with_the_reference_defaults(tmp_path):
    old = {key: value for key, value in AmlpfImageProcessor(**TINY_PRESET).to_dict().items()
           if key in ("min_short_side", "crop_size", "num_crops", "crop_stride", "large_crop_stride",
                      "large_side_threshold", "image_mean", "image_std", "image_processor_type")}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(old))
    loaded = AmlpfImageProcessor.from_pretrained(tmp_path)
    assert (loaded.resample, loaded.antialias, loaded.do_convert_rgb) == ("bilinear", False, True)
    assert (loaded.do_rescale, loaded.rescale_factor, loaded.do_normalize) == (True, 1 / 255, True)
    image = smooth_image(100, 150)
    torch.testing.assert_close(loaded(image)["pixel_values"][0], reference_views(image, **TINY), atol=1e-4, rtol=0)


@pytest.mark.parametrize("folder", ["student-tiny", "teacher-tiny"])
def test_committed_tiny_presets_load_with_every_setting(folder):
    from conftest import REPO_ROOT

    saved = json.loads((REPO_ROOT / "configs" / "models" / folder / "preprocessor_config.json").read_text())
    loaded = AmlpfImageProcessor.from_pretrained(REPO_ROOT / "configs" / "models" / folder)
    assert {key: saved[key] for key in TINY_PRESET} == TINY_PRESET
    assert {key: value for key, value in loaded.to_dict().items() if key != "auto_map"} == saved


def test_auto_image_processor_loads_it_once_registered(tmp_path):
    from transformers import AutoImageProcessor, PreTrainedConfig

    class RegistrationTestConfig(PreTrainedConfig):
        model_type = "amlpf_image_processing_test"

    AutoImageProcessor.register(
        RegistrationTestConfig,
        image_processor_classes={"pil": AmlpfImageProcessor, "torchvision": AmlpfImageProcessor},
    )
    AmlpfImageProcessor(**CUSTOM).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is AmlpfImageProcessor
    assert {name: getattr(loaded, name) for name in CUSTOM} == CUSTOM


# ----------------------------------------------------------------------------------------------------------
# a CLIP checkpoint's processor configuration
# ----------------------------------------------------------------------------------------------------------


def test_a_clip_folder_maps_onto_the_processor(tmp_path):
    from transformers import CLIPImageProcessor
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    CLIPImageProcessor().save_pretrained(tmp_path / "clip")
    logger = logging.get_logger("modeling_amlpf.models.image_processing_amlpf")
    with CaptureLogger(logger) as captured:
        processor = AmlpfImageProcessor.from_pretrained(tmp_path / "clip")
    assert "CLIPImageProcessor" in captured.out and "resample" in captured.out and "size" in captured.out
    np.testing.assert_allclose(processor.image_mean, CLIP_MEAN)
    np.testing.assert_allclose(processor.image_std, CLIP_STD)
    default = AmlpfImageProcessor()
    assert processor.crop_size == 224 and processor.resample == "bilinear"  # CLIP's resample=3 is not taken
    geometry = ("min_short_side", "num_crops", "crop_stride", "large_crop_stride", "large_side_threshold")
    assert {key: getattr(processor, key) for key in geometry} == {key: getattr(default, key) for key in geometry}
    image = smooth_image(300, 400)
    expected = reference_views(image, **PAPER, mean=CLIP_MEAN, std=CLIP_STD)
    torch.testing.assert_close(processor(image)["pixel_values"][0], expected, atol=1e-4, rtol=0)
    processor.save_pretrained(tmp_path / "mapped")  # saved as ours: loads without a second mapping
    saved = json.loads((tmp_path / "mapped" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "AmlpfImageProcessor" and "size" not in saved
    assert AmlpfImageProcessor.from_pretrained(tmp_path / "mapped").to_dict() == processor.to_dict()
    # the reference's ImageNet statistics instead of the checkpoint's: overrides win over the mapping
    imagenet = AmlpfImageProcessor.from_pretrained(tmp_path / "clip", image_mean=MEAN, image_std=STD)
    assert (imagenet.image_mean, imagenet.image_std, imagenet.crop_size) == (MEAN, STD, 224)


def test_clip_input_sizes_become_the_crop_size():
    from transformers import CLIPImageProcessor

    large = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).to_dict()
    assert AmlpfImageProcessor.from_clip_image_processor_dict(large).crop_size == 336
    huge = AmlpfImageProcessor.from_dict({**large, "crop_size": {"height": 640, "width": 640}})
    assert (huge.crop_size, huge.min_short_side) == (640, 640)
    with pytest.raises(ValueError, match="square"):
        AmlpfImageProcessor.from_dict({**large, "crop_size": {"height": 224, "width": 256}})


# ----------------------------------------------------------------------------------------------------------
# trust_remote_code checkpoints
# ----------------------------------------------------------------------------------------------------------


def test_checkpoint_copy_loads_with_trust_remote_code_without_the_package(tmp_path):
    """The processor file and its decoder are copied into the checkpoint; a process without the package loads
    them and computes the same views (EXIF orientation of a file included)."""
    import subprocess
    import sys
    import textwrap

    AmlpfImageProcessor.register_for_auto_class()  # what the package does on import
    checkpoint = tmp_path / "ckpt"
    processor = AmlpfImageProcessor(num_crops=2, min_short_side=96, crop_size=48, antialias=True)
    processor.save_pretrained(checkpoint)
    assert (checkpoint / "image_processing_amlpf.py").is_file() and (checkpoint / "image_decoding.py").is_file()
    assert "auto_map" in json.loads((checkpoint / "preprocessor_config.json").read_text())
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "sideways.jpg"
    Image.fromarray(smooth_image(70, 110)).save(path, quality=95, exif=exif.tobytes())
    expected = processor(str(path))["pixel_values"].numpy()
    np.save(tmp_path / "expected.npy", expected)
    script = HIDE_PACKAGE + textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from transformers import AutoImageProcessor
        loaded = AutoImageProcessor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert "modeling_amlpf" not in sys.modules
        assert type(loaded).__module__.startswith("transformers_modules"), type(loaded).__module__
        views = loaded({str(path)!r}, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(views, np.load({str(tmp_path / "expected.npy")!r}))
        """
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------------------------------------------------------------------
# Bounded memory per image (issue 23): sizes no tile has are refused from the header, before any upsizing
# ----------------------------------------------------------------------------------------------------------

MEMORY_PROBE = r"""
import json, resource, sys
from PIL import Image
from modeling_amlpf.models.image_processing_amlpf import AmlpfImageProcessor

processor = AmlpfImageProcessor()  # the paper's views: short side upsized to 512, 224-pixel crops
processor(Image.new("RGB", (600, 600), (200, 120, 160)))  # warm-up: torch's own first-call allocations
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome = {}
for path in sys.argv[1:]:
    try:
        outcome[path] = list(processor(path)["pixel_values"].shape)
    except ValueError as error:
        outcome[path] = str(error)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_peak_kib": peak - base, "outcome": outcome}))
"""


def test_views_of_the_odd_size_catalogue_stay_below_a_gigabyte(tmp_path):
    """The whole catalogue in one process, measured by its peak resident memory (not traced: torch allocates
    outside Python). Before the limits, the 1x5000 strip alone took 19 GB and two minutes (512 x 2,560,000)."""
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from data_trees import write_declared_png, write_strip

    files = {
        "1x5000": write_strip(tmp_path / "1x5000.png", 1, 5000),
        "5000x1": write_strip(tmp_path / "5000x1.png", 5000, 1),
        "bomb": write_declared_png(tmp_path / "bomb.png", 100_000, 100_000),
        "big": write_declared_png(tmp_path / "big.png", 8000, 8000),
        "breakhis": write_strip(tmp_path / "breakhis.png", 700, 460),
        "lunghist700": write_strip(tmp_path / "lunghist700.jpg", 1200, 1600),
        "chaoyang": write_strip(tmp_path / "chaoyang.png", 512, 512),
        "elongated_at_limit": write_strip(tmp_path / "strip.png", 32, 512),  # 16:1, upsized to 512 x 8192
    }
    near_limit = tmp_path / "near_limit.png"  # 39.7 Mpx, just under max_image_pixels: decoded whole
    Image.new("RGB", (6300, 6300), (180, 100, 150)).save(near_limit, compress_level=1)
    files["near_limit"] = near_limit
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *map(str, files.values())], env=env,
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    outcome = {name: report["outcome"][str(path)] for name, path in files.items()}
    for name in ("breakhis", "lunghist700", "chaoyang", "elongated_at_limit", "near_limit"):
        assert outcome[name] == [1, 9, 3, 224, 224], name
    assert "1x5000 px (width x height): its aspect ratio 5000:1 exceeds max_aspect_ratio=16" in outcome["1x5000"]
    assert "5000x1 px" in outcome["5000x1"] and str(files["5000x1"]) in outcome["5000x1"]
    assert "64,000,000 pixels exceed max_image_pixels=40,000,000" in outcome["big"]
    assert "decompression bomb" in outcome["bomb"]
    assert report["extra_peak_kib"] < 2**20, report  # below 1 GiB above the warmed-up process


def test_size_limits_are_checked_before_decoding_and_upsizing(tiny, tmp_path):
    from data_trees import write_declared_png

    header_only = write_declared_png(tmp_path / "big.png", 8000, 6000)  # decoding it would fail: no pixel data
    with pytest.raises(ValueError, match=r"big\.png' is 8000x6000 px .*48,000,000 pixels exceed max_image_pix"):
        tiny(str(header_only))
    with pytest.raises(ValueError, match=r"a ndarray image is 3x100 px .*aspect ratio 33\.33:1"):
        tiny(np.zeros((100, 3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"a Image image is 17x1 px"):
        tiny(Image.new("RGB", (17, 1)))
    assert tiny(Image.new("RGB", (16, 1)))["pixel_values"].shape == (1, 9, 3, CROP, CROP)  # 16:1 is allowed
    unlimited = tiny.with_overrides(max_aspect_ratio=0)
    assert unlimited(Image.new("RGB", (40, 2)))["pixel_values"].shape == (1, 9, 3, CROP, CROP)
    with pytest.raises(ValueError, match="max_aspect_ratio is long side / short side"):
        AmlpfImageProcessor(max_aspect_ratio=0.5)


def test_size_limits_are_saved_and_old_configs_get_the_defaults(tmp_path):
    processor = AmlpfImageProcessor(**TINY_PRESET, max_image_pixels=1_000_000, max_aspect_ratio=4)
    processor.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "preprocessor_config.json").read_text())
    assert (saved["max_image_pixels"], saved["max_aspect_ratio"]) == (1_000_000, 4.0)
    loaded = AmlpfImageProcessor.from_pretrained(tmp_path / "new")
    with pytest.raises(ValueError, match=r"aspect ratio 5:1 exceeds max_aspect_ratio=4"):
        loaded(Image.new("RGB", (500, 100)))
    old = {key: value for key, value in saved.items() if not key.startswith("max_")}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "preprocessor_config.json").write_text(json.dumps(old))
    loaded = AmlpfImageProcessor.from_pretrained(tmp_path / "old")
    assert (loaded.max_image_pixels, loaded.max_aspect_ratio) == (40_000_000, 16.0)
