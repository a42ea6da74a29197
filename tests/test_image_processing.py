"""Tests of the multi-view processor: geometry of the views, pixel content, RGB decoding and serialisation."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_amlpf.image_processing_amlpf import TINY_PRESET, AmlpfImageProcessor, to_rgb

MEAN = np.array([0.485, 0.456, 0.406])  # ImageNet, written out so the test does not reuse the module's constants
STD = np.array([0.229, 0.224, 0.225])
CROP = TINY_PRESET["crop_size"]


def smooth_image(height, width, seed=0):
    """A uint8 RGB image with structure at several scales, so that misplaced crops or flips are visible."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 6, height)[:, None, None]
    cols = np.linspace(0, 9, width)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 1, 3))
    base = 127 + 80 * np.sin(rows * 1.3 + cols * 0.7 + phase) + 40 * np.cos(cols * 2.1 - rows * 0.4)
    noise = rng.integers(-6, 7, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def normalise(uint8_hwc):
    """Independent reference normalisation, (H, W, 3) uint8 -> (3, H, W) float."""
    return ((uint8_hwc / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def upsized_pixels(image_hwc, height, width):
    return np.array(Image.fromarray(image_hwc).resize((width, height), Image.Resampling.BICUBIC))


@pytest.fixture
def tiny():
    return AmlpfImageProcessor(**TINY_PRESET)


# ----------------------------------------------------------------------------------------------------------
# shapes
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
    as_numpy = tiny(image, return_tensors="np")["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.shape == (1, 9, 3, CROP, CROP)
    np.testing.assert_array_equal(as_numpy, tiny(image)["pixel_values"].numpy())
    with pytest.raises(TypeError, match="num_crops=0"):
        tiny(image, num_crops=0)
    with pytest.raises(ValueError, match="min_short_side"):
        AmlpfImageProcessor(min_short_side=200, crop_size=224)


# ----------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------


def test_small_images_are_upsized_to_the_short_side_and_large_ones_kept():
    processor = AmlpfImageProcessor()
    landscape = processor.resize_short_side(Image.fromarray(smooth_image(300, 400)))
    assert (landscape.height, landscape.width) == (512, 683)  # 400 * 512 / 300 = 682.67
    portrait = processor.resize_short_side(Image.fromarray(smooth_image(400, 300)))
    assert (portrait.height, portrait.width) == (683, 512)
    large = Image.fromarray(smooth_image(1200, 1600))
    assert processor.resize_short_side(large).size == large.size  # never downsized
    narrow = processor.resize_short_side(Image.fromarray(smooth_image(520, 100)))
    assert (narrow.height, narrow.width) == (2662, 512)  # 520 * 512 / 100 = 2662.4


def test_large_stride_applies_to_the_side_after_upsizing():
    processor = AmlpfImageProcessor()
    assert processor.crop_grid(1023, 1023)[0] == 32
    assert processor.crop_grid(600, 1024)[0] == 48
    assert processor.crop_grid(1024, 600)[0] == 48
    # 300 x 700 becomes 512 x 1195, so its grid uses the large stride although the input was under 1024
    height, width = processor.resized_size(300, 700)
    assert (height, width) == (512, 1195)
    stride, rows, columns = processor.crop_grid(height, width)
    assert (stride, rows, columns) == (48, (512 - 224) // 48 + 1, (1195 - 224) // 48 + 1)


@pytest.mark.parametrize("height, width", [(600, 900), (1200, 1600)])
def test_training_positions_lie_on_the_stride_grid_inside_the_image(height, width):
    processor = AmlpfImageProcessor()
    stride = 48 if max(height, width) >= 1024 else 32
    for seed in range(5):
        positions, flips = processor.crop_positions(height, width, training=True, generator=seed)
        assert len(positions) == len(flips) == 8
        assert len(set(positions)) == 8  # distinct: the grid has far more than 8 positions
        for top, left in positions:
            assert top % stride == 0 and left % stride == 0
            assert 0 <= top <= height - 224 and 0 <= left <= width - 224


def test_positions_are_distinct_when_possible_and_repeat_on_small_grids():
    processor = AmlpfImageProcessor(min_short_side=64, crop_size=64, crop_stride=8, num_crops=8)
    positions, _ = processor.crop_positions(64, 88, training=True, generator=0)  # 4 grid positions
    assert len(positions) == 8
    assert set(positions) <= {(0, 0), (0, 8), (0, 16), (0, 24)}
    full_grid = {(0, left) for left in range(0, 57, 8)}  # 64 x 120 holds exactly 8 positions
    for seed in range(3):
        positions, _ = processor.crop_positions(64, 120, training=True, generator=seed)
        assert set(positions) == full_grid  # drawn without replacement, so every position once
    evaluation, flips = processor.crop_positions(64, 64, training=False)
    assert evaluation == [(0, 0)] * 8 and not any(flips)


@pytest.mark.parametrize("height,width", [(600, 900), (1200, 1600), (900, 600)])
def test_evaluation_positions_spread_evenly_over_both_axes(height, width):
    processor = AmlpfImageProcessor()
    stride = 48 if max(height, width) >= 1024 else 32
    rows, columns = (height - 224) // stride + 1, (width - 224) // stride + 1
    positions, flips = processor.crop_positions(height, width, training=False)
    assert len(set(positions)) == 8 and not any(flips)
    tops = sorted({top for top, _ in positions})
    lefts = sorted({left for _, left in positions})
    # a 2 x 4 lattice (4 x 2 for portrait images), corners included, evenly spaced along each axis
    lattice_rows, lattice_cols = (2, 4) if width >= height else (4, 2)
    assert len(tops) == lattice_rows and len(lefts) == lattice_cols
    assert tops == [round(i * (rows - 1) / (lattice_rows - 1)) * stride for i in range(lattice_rows)]
    assert lefts == [round(i * (columns - 1) / (lattice_cols - 1)) * stride for i in range(lattice_cols)]
    assert positions[0] == (0, 0) and positions[-1] == ((rows - 1) * stride, (columns - 1) * stride)


# ----------------------------------------------------------------------------------------------------------
# pixel content
# ----------------------------------------------------------------------------------------------------------


def test_global_view_is_last_and_equals_an_independent_resize(tiny):
    image = smooth_image(100, 150)  # upsized to 128 x 192
    pixel_values = tiny(Image.fromarray(image))["pixel_values"][0]
    upsized = torch.from_numpy(upsized_pixels(image, 128, 192)).permute(2, 0, 1)[None].double()
    reference = torch.nn.functional.interpolate(
        upsized, size=(CROP, CROP), mode="bicubic", antialias=True, align_corners=False
    )
    reference = reference.round().clamp(0, 255)[0].permute(1, 2, 0).numpy()
    global_view = pixel_values[-1].double().numpy()
    # torch's antialiased bicubic and PIL's differ by at most one grey level
    assert np.abs(global_view - normalise(reference)).max() <= 1.01 / 255 / STD.min()
    assert np.abs(global_view - normalise(reference)).mean() < 0.2 / 255 / STD.min()


def test_evaluation_crops_equal_regions_of_the_upsized_image(tiny):
    image = smooth_image(100, 150)
    pixel_values = tiny(image)["pixel_values"][0].double().numpy()
    upsized = upsized_pixels(image, 128, 192)
    positions, flips = tiny.crop_positions(128, 192, training=False)
    assert not any(flips)
    resized = np.asarray(tiny.resize_short_side(Image.fromarray(image)))
    assert resized.shape == (128, 192, 3)
    grey = 1.0 / 255 / STD.min()
    for view, (top, left) in enumerate(positions):
        # exactly the window of the processor's own upsized image ...
        region = resized[top : top + CROP, left : left + CROP]
        np.testing.assert_allclose(pixel_values[view], normalise(region), atol=1e-5)
        # ... which is PIL's bicubic upsizing within one grey level (torch's uint8 kernel is PIL's)
        independent = normalise(upsized[top : top + CROP, left : left + CROP])
        assert np.abs(pixel_values[view] - independent).max() <= 1.01 * grey
        assert np.abs(pixel_values[view] - independent).mean() < 0.05 * grey


def test_training_crops_equal_flipped_regions_at_the_drawn_positions(tiny):
    image = smooth_image(130, 200, seed=3)  # already large enough: no upsizing
    positions, flips = tiny.crop_positions(130, 200, training=True, generator=11)
    assert any(flips) and not all(flips)  # the seed exercises both branches
    pixel_values = tiny(image, training=True, generator=11)["pixel_values"][0].double().numpy()
    for view, ((top, left), flip) in enumerate(zip(positions, flips)):
        region = image[top : top + CROP, left : left + CROP]
        region = region[:, ::-1] if flip else region
        np.testing.assert_allclose(pixel_values[view], normalise(region), atol=1e-5)


def test_evaluation_views_are_deterministic(tiny):
    images = [smooth_image(100, 150), smooth_image(300, 260, seed=4)]
    torch.manual_seed(0)
    first = tiny(images)["pixel_values"]
    torch.manual_seed(1)
    assert torch.equal(first, tiny(images)["pixel_values"])


def test_training_views_vary_per_call_and_repeat_with_a_seed(tiny):
    images = [smooth_image(100, 150), smooth_image(300, 260, seed=4)]
    torch.manual_seed(0)
    first = tiny(images, training=True)["pixel_values"]
    second = tiny(images, training=True)["pixel_values"]
    assert not torch.equal(first[:, :-1], second[:, :-1])
    torch.testing.assert_close(first[:, -1], second[:, -1])  # the global view is never augmented
    seeded = tiny(images, training=True, generator=5)["pixel_values"]
    assert torch.equal(seeded, tiny(images, training=True, generator=5)["pixel_values"])
    from_generator = tiny(images, training=True, generator=torch.Generator().manual_seed(5))["pixel_values"]
    assert torch.equal(seeded, from_generator)
    assert not torch.equal(seeded, tiny(images, training=True, generator=6)["pixel_values"])


def test_only_the_kept_views_are_converted_to_float(tiny, monkeypatch):
    converted = []
    original = AmlpfImageProcessor._normalise

    def counting(self, views):
        converted.append(views.size)
        assert views.dtype == np.uint8
        return original(self, views)

    monkeypatch.setattr(AmlpfImageProcessor, "_normalise", counting)
    tiny([smooth_image(300, 400), smooth_image(128, 128)], training=True)
    assert converted == [2 * 9 * CROP * CROP * 3]


# ----------------------------------------------------------------------------------------------------------
# inputs and RGB decoding
# ----------------------------------------------------------------------------------------------------------


def test_input_types_give_the_same_views(tiny, tmp_path):
    image = smooth_image(130, 150)
    path = tmp_path / "tile.png"
    Image.fromarray(image).save(path)
    expected = tiny(image)["pixel_values"]
    inputs = [
        Image.fromarray(image),
        str(path),
        path,
        torch.from_numpy(image).permute(2, 0, 1).contiguous(),
        torch.from_numpy(image).permute(2, 0, 1).float() / 255,
        image.astype(np.uint16) * 257,
        image / 255.0,
    ]
    for item in inputs:
        torch.testing.assert_close(tiny(item)["pixel_values"], expected, atol=0, rtol=0, msg=repr(type(item)))
    batched = tiny(torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2))["pixel_values"]
    assert torch.equal(batched, torch.cat([expected, expected]))


def test_pipeline_style_call(tiny):
    # ImageClassificationPipeline calls image_processor(images=image, return_tensors="pt").to(dtype)
    image = Image.fromarray(smooth_image(100, 150))
    batch = tiny(images=image, return_tensors="pt").to(torch.float16)
    assert batch["pixel_values"].dtype == torch.float16 and batch["pixel_values"].shape == (1, 9, 3, CROP, CROP)


def test_bad_inputs_name_the_problem(tiny, tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tiny(str(missing))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_rgb(np.full((8, 8, 3), 1.5))
    with pytest.raises(ValueError, match="uint16"):
        to_rgb(np.full((8, 8, 3), 300, dtype=np.int32))
    with pytest.raises(ValueError, match="No images"):
        tiny([])


def pixel(image, x=0, y=0):
    return tuple(int(v) for v in np.asarray(image)[y, x])


def test_grey_and_bilevel_images_become_grey_rgb():
    rgb = to_rgb(Image.fromarray(np.array([[0, 77], [200, 255]], dtype=np.uint8)))
    assert rgb.mode == "RGB" and pixel(rgb, 1, 0) == (77, 77, 77) and pixel(rgb, 0, 1) == (200, 200, 200)
    bilevel = to_rgb(Image.fromarray(np.array([[0, 1]], dtype=bool)))
    assert pixel(bilevel, 0) == (0, 0, 0) and pixel(bilevel, 1) == (255, 255, 255)
    assert pixel(to_rgb(np.array([[9]], dtype=np.uint8))) == (9, 9, 9)


def test_transparency_is_composited_onto_white():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 0, 0, 0)  # fully transparent red
    rgba[0, 1] = (0, 90, 0, 255)  # opaque green
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black
    for source in (Image.fromarray(rgba), rgba):
        rgb = to_rgb(source)
        assert rgb.mode == "RGB"
        assert pixel(rgb, 0) == (255, 255, 255)
        assert pixel(rgb, 1) == (0, 90, 0)
        expected_half = round(255 * (1 - 128 / 255))
        assert all(abs(v - expected_half) <= 1 for v in pixel(rgb, 2))
    grey_alpha = to_rgb(Image.fromarray(np.array([[[40, 0], [40, 255]]], dtype=np.uint8), mode="LA"))
    assert pixel(grey_alpha, 0) == (255, 255, 255) and pixel(grey_alpha, 1) == (40, 40, 40)


def test_palette_transparency_from_a_png_file(tmp_path):
    palette = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255, 10, 200, 30] + [0] * (256 * 3 - 9))
    path = tmp_path / "palette.png"
    palette.save(path, transparency=0)
    with Image.open(path) as reloaded:
        assert reloaded.mode == "P" and "transparency" in reloaded.info
    rgb = to_rgb(str(path))
    assert [pixel(rgb, x) for x in range(3)] == [(255, 255, 255), (0, 0, 255), (10, 200, 30)]
    opaque = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    opaque.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    assert [pixel(to_rgb(opaque), x) for x in range(2)] == [(255, 0, 0), (0, 0, 255)]


def test_cmyk_colours():
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))
    cmyk.putpixel((2, 0), (0, 0, 0, 255))
    rgb = to_rgb(cmyk)
    assert [pixel(rgb, x) for x in range(3)] == [(255, 255, 255), (0, 255, 255), (0, 0, 0)]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as reloaded:
        assert reloaded.mode in ("I;16", "I")
    rgb = to_rgb(str(path))
    assert [pixel(rgb, x) for x in range(4)] == [(v, v, v) for v in (0, 4, 128, 255)]  # value / 257
    wide = to_rgb(Image.fromarray(np.array([[-100, 0, 155]], dtype=np.int32), mode="I"))
    assert [pixel(wide, x)[0] for x in range(3)] == [0, 100, 255]  # out of the 16-bit range: min-max
    float_image = to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F"))
    assert [pixel(float_image, x)[0] for x in range(3)] == [0, 128, 255]


def test_sixteen_bit_arrays_are_scaled():
    rgb16 = np.array([[[65535, 257 * 10, 0]]], dtype=np.uint16)
    assert pixel(to_rgb(rgb16)) == (255, 10, 0)


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
    overridden = AmlpfImageProcessor.from_pretrained(tmp_path, num_crops=1)
    assert overridden.num_crops == 1 and overridden.crop_size == 48


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


def test_checkpoint_copy_loads_with_trust_remote_code(tmp_path):
    """The module file alone must be enough: a fresh process without this package loads the saved copy."""
    import subprocess
    import sys
    import textwrap

    AmlpfImageProcessor.register_for_auto_class()  # what the package does on import
    checkpoint = tmp_path / "ckpt"
    AmlpfImageProcessor(num_crops=2, min_short_side=96, crop_size=48).save_pretrained(checkpoint)
    assert (checkpoint / "image_processing_amlpf.py").is_file()
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from transformers import AutoImageProcessor
        loaded = AutoImageProcessor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert "modeling_amlpf" not in sys.modules
        assert type(loaded).__module__.startswith("transformers_modules"), type(loaded).__module__
        assert loaded(np.zeros((50, 70, 3), np.uint8))["pixel_values"].shape == (1, 3, 3, 48, 48)
        """
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
