"""Decoding any image input to 8-bit RGB: the one decoder of the package.

The image processor (views for the models) and the data readers (scan, cached 8-bit copies) both use it, so
training, `pipeline(...)` and `processor(path)` see the same pixels. Files and encoded bytes are opened as
`datasets.Image.decode_example` opens them (which training goes through): the image is loaded and, when it
carries an EXIF Orientation tag, transposed upright with `PIL.ImageOps.exif_transpose`. Already decoded
inputs (PIL images, arrays, tensors) are taken as they are, as `datasets` and transformers' processors do.
Unlike Pillow's own `convert("RGB")`, 16/32-bit grey levels are scaled (not clipped at 255) and transparent
pixels are composited on white.

Self-contained (numpy, torch, PIL only): `save_pretrained` copies it beside the processor for
`trust_remote_code` checkpoints.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

_WHITE = (255, 255, 255, 255)
# Size limits of an image (see `check_image_size`); the processor saves its own in preprocessor_config.json.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_ASPECT_RATIO = 16.0
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
HIGH_BIT_DEPTH_MODES = _SIXTEEN_BIT_MODES | {"I", "F"}
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def has_transparency(image: Image.Image) -> bool:
    """True when some pixel is not fully opaque (an all-opaque alpha channel converts exactly)."""
    if image.mode in ALPHA_MODES:
        return image.getchannel("A").getextrema()[0] < 255
    if "transparency" in image.info:
        return image.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def needs_rgb8_copy(image: Image.Image) -> bool:
    """True when Pillow's `convert("RGB")` would not be faithful for this (loaded) image."""
    return image.mode in HIGH_BIT_DEPTH_MODES or has_transparency(image)


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Histology slides are scanned on white glass, so transparent pixels become white, not black."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(values[:, :, None], 3, axis=2))


def _scale_integer_gray(image: Image.Image) -> Image.Image:
    """Map 16-bit and 32-bit integer grey levels to 8 bits by scaling (Pillow's own convert clips at 255).

    16-bit modes divide by 257 (65535 -> 255). Mode "I" holds 16-bit PNG/TIFF content when its values lie
    in [0, 65535] and is scaled the same way; other ranges are stretched linearly from min to max.
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(np.rint(values / 257.0).astype(np.uint8))
    return _levels_to_rgb(values, full_scale=65535.0)


def _scale_float_gray(image: Image.Image) -> Image.Image:
    """Mode "F": values in [0, 1] are intensities; any other range is stretched linearly from min to max."""
    values = np.asarray(image).astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("A mode 'F' image contains NaN or infinite values; it cannot be mapped to RGB.")
    return _levels_to_rgb(values, full_scale=1.0)


def _levels_to_rgb(values: np.ndarray, full_scale: float) -> Image.Image:
    """Grey levels in [0, full_scale] are intensities (scaled to 0-255); any other range is stretched linearly
    from min to max; a constant image outside it is black."""
    low, high = float(values.min()), float(values.max())
    if 0.0 <= low and high <= full_scale:
        scaled = values * (255.0 / full_scale)
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return _gray_to_rgb(np.rint(scaled).astype(np.uint8))


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ALPHA_MODES or "transparency" in image.info:
        # Covers P with a transparent palette entry and L/RGB with a tRNS colour.
        return _composite_on_white(image)
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return _scale_integer_gray(image)
    if mode == "F":
        return _scale_float_gray(image)
    if mode == "1":
        return image.convert("L").convert("RGB")
    try:
        return image.convert("RGB")  # L, P, CMYK, YCbCr, HSV, ...
    except ValueError as error:
        raise ValueError(
            f"Cannot convert a PIL image of mode {mode!r} to RGB; convert it before passing it."
        ) from error


def _array_to_uint8(values: np.ndarray) -> np.ndarray:
    """Bring a numeric array to uint8 without clipping: uint16 / 257, floats in [0, 1] * 255."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype == np.uint16:
        return np.rint(values / 257.0).astype(np.uint8)
    if np.issubdtype(values.dtype, np.floating):
        if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            raise ValueError(
                "Float images must hold intensities in [0, 1] (got values outside it or NaN); "
                "rescale them, or pass uint8 (0-255) or uint16 (0-65535) data."
            )
        return np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)
    if np.issubdtype(values.dtype, np.integer):
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(
                f"Integer images of dtype {values.dtype} must hold 8-bit values in [0, 255]; "
                "pass 16-bit data as uint16 so it is scaled by 257."
            )
        return values.astype(np.uint8)
    raise TypeError(f"Unsupported image array dtype {values.dtype}; use uint8, uint16 or float in [0, 1].")


def _array_to_pil(values: np.ndarray, channels_first: bool, convert: bool = True) -> Image.Image:
    """HW, HWC (or CHW when `channels_first`) arrays with 1-4 channels -> PIL RGB."""
    if values.ndim == 3 and channels_first:
        values = np.moveaxis(values, 0, -1)
    if not convert and (values.ndim != 3 or values.shape[-1] != 3):
        raise ValueError(
            f"do_convert_rgb=False needs 3-channel RGB input, got an array of shape {tuple(values.shape)}; "
            "leave do_convert_rgb=True (the default) to convert it."
        )
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[:, :, 0]
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] not in (2, 3, 4)):
        layout = "CHW" if channels_first else "HWC"
        raise ValueError(
            f"Expected one image as an HW or {layout} array with 1-4 channels, got shape {tuple(values.shape)}."
        )
    values = np.ascontiguousarray(_array_to_uint8(values))
    if values.ndim == 2:
        return _gray_to_rgb(values)
    if values.shape[-1] == 2:  # grey + alpha: expand to RGBA so it is composited like PIL "LA"
        gray, alpha = values[:, :, :1], values[:, :, 1:]
        values = np.concatenate([gray, gray, gray, alpha], axis=2)
    return _pil_to_rgb(Image.fromarray(values))


class ImageSizeError(ValueError):
    """An image is larger or more elongated than any histology tile: decoding and upsizing it would take gigabytes."""


def check_image_size(
    width: int,
    height: int,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
    name: str = "an image",
) -> None:
    """Raise `ImageSizeError` when `width` x `height` exceeds a limit (None or 0 turns a limit off).

    Both limits bound the memory of the views: a large image is decoded whole, and an elongated one is upsized
    until its short side reaches `min_short_side` (a 1x5000 image would become 512x2,560,000, 19 GB of pixels).
    Known tiles are far inside them: BreaKHis 700x460 (ratio 1.5), LungHist700 1600x1200 (1.9 Mpx), Chaoyang
    512x512, BACH 2048x1536 (3.1 Mpx). A whole-slide image or a strip of pixels is not a tile.
    """
    problems = []
    if max_pixels and width * height > max_pixels:
        problems.append(f"{width * height:,} pixels exceed max_image_pixels={max_pixels:,}")
    if max_aspect_ratio and max(width, height) > max_aspect_ratio * max(1, min(width, height)):
        ratio = max(width, height) / max(1, min(width, height))
        problems.append(f"its aspect ratio {ratio:.4g}:1 exceeds max_aspect_ratio={max_aspect_ratio:g}")
    if problems:
        raise ImageSizeError(
            f"{name} is {width}x{height} px (width x height): {' and '.join(problems)}, beyond any histology "
            "tile; its views would need gigabytes of memory. Cut it into tiles, or raise the limit (the image "
            "processor's max_image_pixels / max_aspect_ratio in preprocessor_config.json; 0 turns it off)."
        )


def _describe_source(source: str | os.PathLike | bytes) -> str:
    """A file name for messages that never fails: undecodable bytes of a name are shown escaped (`\\xe9`)."""
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    return f"'{printable_path(source)}'"


def printable_path(path: str | os.PathLike | bytes) -> str:
    """`path` as text that any UTF-8 file or terminal takes: bytes of a name that are not UTF-8 (Python holds
    them as surrogates) are written as `\\xe9` escapes, so the name stays recognisable and unambiguous."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def open_image(
    source: str | os.PathLike | bytes,
    max_pixels: int | None = None,
    max_aspect_ratio: float | None = None,
) -> Image.Image:
    """Open an image file (path) or encoded bytes as `datasets.Image` does: load, then apply EXIF orientation.

    The mode is left as stored (convert with `to_rgb`). An EXIF Orientation tag (a phone or scanner writing
    the pixels sideways) is applied exactly when `datasets.Image.decode_example` applies it, so a file is
    seen the same way in training (through `datasets`) and through `processor(path)` / `pipeline(...)`.
    `max_pixels`, `max_aspect_ratio`: checked on the size the file declares, before any pixel is decoded
    (`check_image_size`); Pillow's own decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) applies too.
    """
    name = _describe_source(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as image:
            check_image_size(*image.size, max_pixels, max_aspect_ratio, name=name)
            image.load()  # all pixels in memory, so the file can close (multi-frame files too)
            if image.getexif().get(ExifTags.Base.Orientation) is not None:
                return ImageOps.exif_transpose(image)
            return image
    except FileNotFoundError as error:
        raise FileNotFoundError(f"Image file not found: {name}.") from error
    except Image.UnidentifiedImageError as error:
        raise ValueError(f"{name} is not an image file Pillow can decode.") from error
    except Image.DecompressionBombError as error:
        raise ImageSizeError(f"{name}: {error}") from error


def _check_rgb8(image: Image.Image) -> Image.Image:
    if image.mode != "RGB" or "transparency" in image.info:
        detail = "RGB with a transparent colour" if image.mode == "RGB" else f"mode {image.mode!r}"
        raise ValueError(
            f"do_convert_rgb=False needs 3-channel RGB input without transparency, got {detail}; "
            "leave do_convert_rgb=True (the default) to convert it."
        )
    return image


def _declared_size(image: Any) -> tuple[int, int] | None:
    """(width, height) of an already decoded image, None for anything else."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, torch.Tensor) and image.ndim in (2, 3):
        channels_first = image.ndim == 3 and image.shape[0] <= 4
        return (image.shape[-1], image.shape[-2]) if channels_first else (image.shape[1], image.shape[0])
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        channels_first = image.ndim == 3 and image.shape[-1] > 4 and image.shape[0] <= 4
        return (image.shape[2], image.shape[1]) if channels_first else (image.shape[1], image.shape[0])
    return None


def to_rgb(
    image: Any,
    *,
    convert: bool = True,
    max_pixels: int | None = None,
    max_aspect_ratio: float | None = None,
) -> Image.Image:
    """Decode one image to an 8-bit RGB PIL image.

    `image`: a PIL image, an HW/HWC numpy array, a CHW torch tensor, a file path, encoded bytes, or a
    `datasets.Image` value left undecoded (a dict with "path" and/or "bytes"). Files and bytes go through
    `open_image` (EXIF orientation applied). Transparent pixels are composited onto white; 16-bit data is
    scaled to 8 bits rather than clipped. `convert=False` (the processor's `do_convert_rgb=False`) converts
    no colour mode: inputs that are not already 3-channel RGB raise instead (bit depths are still mapped).
    `max_pixels`, `max_aspect_ratio` (None: no limit) raise `ImageSizeError` before any decoding or conversion.
    """
    if isinstance(image, dict) and ("path" in image or "bytes" in image):
        source = image.get("bytes") or image.get("path")
        if source is None:
            raise ValueError(f"An image dict needs a 'path' or 'bytes' value, got {sorted(image)} both empty.")
        image = source
    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        image = open_image(image, max_pixels, max_aspect_ratio)
    elif max_pixels or max_aspect_ratio:
        size = _declared_size(image)
        if size is not None:
            check_image_size(*size, max_pixels, max_aspect_ratio, name=f"a {type(image).__name__} image")
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image) if convert else _check_rgb8(image)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.float()
        values = tensor.numpy()
        channels_first = values.ndim == 3 and values.shape[0] <= 4
        return _array_to_pil(values, channels_first=channels_first, convert=convert)
    if isinstance(image, np.ndarray):
        channels_first = image.ndim == 3 and image.shape[-1] > 4 and image.shape[0] <= 4
        return _array_to_pil(image, channels_first=channels_first, convert=convert)
    raise TypeError(
        f"Unsupported image type {type(image).__name__}; pass a PIL image, a numpy HWC array, "
        "a torch CHW tensor, a file path, encoded bytes, or a list of these."
    )


__all__ = ["ALPHA_MODES", "HIGH_BIT_DEPTH_MODES", "has_transparency", "needs_rgb8_copy", "to_rgb"]
