"""Tests of the one image decoder (`modeling_amlpf.image_decoding`): RGB conversion, EXIF as `datasets` does."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_amlpf.models.image_decoding import open_image, to_rgb
from modeling_amlpf.models.image_processing_amlpf import TINY_PRESET, AmlpfImageProcessor


def pixel(image, x=0, y=0):
    return tuple(int(v) for v in np.asarray(image)[y, x])


def pattern(height, width, seed=0):
    """An image without symmetries, so a rotation or a mirror always changes it."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height)[:, None, None]
    cols = np.linspace(0, 1, width)[None, :, None]
    base = 40 + 150 * rows * cols + 60 * rows**2 + rng.integers(0, 10, (height, width, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture
def tiny():
    return AmlpfImageProcessor(**TINY_PRESET)


# ----------------------------------------------------------------------------------------------------------
# EXIF orientation: the same pixels as datasets.Image, which training goes through
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_file_gives_the_views_of_datasets_decoding(tiny, tmp_path, orientation):
    import datasets

    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated_{orientation}.jpg"
    Image.fromarray(pattern(100, 150)).save(path, quality=95, exif=exif.tobytes())
    decoded = datasets.Image(mode="RGB").decode_example({"path": str(path), "bytes": None})
    expected_size = (150, 100) if orientation == 3 else (100, 150)  # 6 and 8 turn the stored image sideways
    assert decoded.size == expected_size
    from_datasets = tiny(decoded)["pixel_values"]
    for source in (str(path), path, path.read_bytes(), {"path": str(path), "bytes": None}):
        assert torch.equal(tiny(source)["pixel_values"], from_datasets), type(source)
    np.testing.assert_array_equal(np.asarray(to_rgb(str(path))), np.asarray(decoded))
    with Image.open(path) as stored:  # the stored pixels, orientation not applied, give other views
        stored_views = tiny(stored.convert("RGB"))["pixel_values"]
    assert stored_views.shape != from_datasets.shape or (stored_views - from_datasets).abs().mean() > 0.1


def test_open_image_keeps_the_mode_and_loads_the_pixels(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(pattern(20, 30)[:, :, 0]).save(path)
    image = open_image(path)
    assert image.mode == "L" and image.size == (30, 20)
    np.testing.assert_array_equal(np.asarray(image), pattern(20, 30)[:, :, 0])
    assert np.asarray(open_image(path.read_bytes())).shape == (20, 30)


# ----------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------


def test_input_types_give_the_same_views(tiny, tmp_path):
    image = pattern(130, 150)
    path = tmp_path / "tile.png"
    Image.fromarray(image).save(path)
    expected = tiny(image)["pixel_values"]
    inputs = [
        Image.fromarray(image),
        str(path),
        path,
        path.read_bytes(),
        {"bytes": path.read_bytes(), "path": None},
        torch.from_numpy(image).permute(2, 0, 1).contiguous(),
        torch.from_numpy(image).permute(2, 0, 1).float() / 255,
        image.astype(np.uint16) * 257,
        image / 255.0,
    ]
    for item in inputs:
        torch.testing.assert_close(tiny(item)["pixel_values"], expected, atol=0, rtol=0, msg=repr(type(item)))
    batched = tiny(torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2))["pixel_values"]
    assert torch.equal(batched, torch.cat([expected, expected]))


def test_bad_inputs_name_the_problem(tiny, tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tiny(str(missing))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        to_rgb(text)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_rgb(np.full((8, 8, 3), 1.5))
    with pytest.raises(ValueError, match="uint16"):
        to_rgb(np.full((8, 8, 3), 300, dtype=np.int32))
    with pytest.raises(ValueError, match="No images"):
        tiny([])
    with pytest.raises(TypeError, match="file path"):
        to_rgb(3.5)


def test_convert_false_refuses_colour_conversions_but_maps_bit_depth():
    rgb = pattern(4, 5)
    np.testing.assert_array_equal(np.asarray(to_rgb(rgb, convert=False)), rgb)
    np.testing.assert_array_equal(np.asarray(to_rgb(rgb.astype(np.uint16) * 257, convert=False)), rgb)
    for image in (rgb[:, :, 0], np.dstack([rgb, np.full((4, 5), 255, np.uint8)]), Image.fromarray(rgb).convert("L"),
                  Image.fromarray(rgb).convert("RGBA"), Image.fromarray(rgb).convert("CMYK")):
        with pytest.raises(ValueError, match="do_convert_rgb"):
            to_rgb(image, convert=False)


# ----------------------------------------------------------------------------------------------------------
# colour modes
# ----------------------------------------------------------------------------------------------------------


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
