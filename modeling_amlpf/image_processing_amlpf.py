"""Multi-view image processor of AMLPF-CLIP: 8 grid crops plus one global view per image.

Self-contained on purpose (only torch, numpy, PIL and transformers): `save_pretrained` copies this single
file into checkpoints that load with `trust_remote_code=True`.

Views (paper, "Views"): decode to RGB; upsize so the short side is at least `min_short_side`; take
`num_crops` windows of `crop_size` from the grid of top-left positions with stride `crop_stride`
(`large_crop_stride` once a side reaches `large_side_threshold`), random positions and horizontal flips in
training, evenly spaced positions in evaluation; append the whole image resized to `crop_size` x `crop_size`
as the last view. Only the kept windows are sliced, converted to float and normalised: the patch grid is
never materialised.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import TensorType

# Keyword arguments of the small test/debug configuration (`AmlpfImageProcessor(**TINY_PRESET)`).
TINY_PRESET = {
    "min_short_side": 128,
    "crop_size": 64,
    "crop_stride": 8,
    "large_crop_stride": 12,
    "large_side_threshold": 256,
}

_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class AmlpfImageProcessorKwargs(TypedDict, total=False):
    """Parameters that `from_pretrained(..., **overrides)` may override (read by `ImageProcessingMixin.from_dict`)."""

    min_short_side: int
    crop_size: int
    num_crops: int
    crop_stride: int
    large_crop_stride: int
    large_side_threshold: int
    image_mean: list[float]
    image_std: list[float]


# ----------------------------------------------------------------------------------------------------------
# Decoding to RGB
# ----------------------------------------------------------------------------------------------------------


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
        scaled = values / 257.0
    else:
        low, high = float(values.min()), float(values.max())
        if 0.0 <= low and high <= 65535.0:
            scaled = values / 257.0
        elif high > low:
            scaled = (values - low) * (255.0 / (high - low))
        else:
            scaled = np.zeros_like(values)
    return _gray_to_rgb(np.rint(scaled).astype(np.uint8))


def _scale_float_gray(image: Image.Image) -> Image.Image:
    """Mode "F": values in [0, 1] are intensities; any other range is stretched linearly from min to max."""
    values = np.asarray(image).astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("A mode 'F' image contains NaN or infinite values; it cannot be mapped to RGB.")
    low, high = float(values.min()), float(values.max())
    if 0.0 <= low and high <= 1.0:
        scaled = values * 255.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return _gray_to_rgb(np.rint(scaled).astype(np.uint8))


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _ALPHA_MODES or "transparency" in image.info:
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


def _array_to_pil(values: np.ndarray, channels_first: bool) -> Image.Image:
    """HW, HWC (or CHW when `channels_first`) arrays with 1-4 channels -> PIL L/RGB/RGBA."""
    if values.ndim == 3 and channels_first:
        values = np.moveaxis(values, 0, -1)
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


def _open_path(path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError as error:
        raise FileNotFoundError(f"Image file not found: {os.fspath(path)!r}.") from error
    except Image.UnidentifiedImageError as error:
        raise ValueError(f"{os.fspath(path)!r} is not an image file Pillow can decode.") from error


def to_rgb(image: Any) -> Image.Image:
    """Decode one image (PIL image, HWC numpy array, CHW torch tensor or file path) to an 8-bit RGB PIL image.

    Transparent pixels are composited onto white; 16-bit data is scaled to 8 bits rather than clipped.
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        return _pil_to_rgb(_open_path(image))
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.float()
        values = tensor.numpy()
        channels_first = values.ndim == 3 and values.shape[0] <= 4
        return _array_to_pil(values, channels_first=channels_first)
    if isinstance(image, np.ndarray):
        channels_first = image.ndim == 3 and image.shape[-1] > 4 and image.shape[0] <= 4
        return _array_to_pil(image, channels_first=channels_first)
    raise TypeError(
        f"Unsupported image type {type(image).__name__}; pass a PIL image, a numpy HWC array, "
        "a torch CHW tensor, a file path, or a list of these."
    )


def _as_image_list(images: Any) -> list[Any]:
    """A single image, a list/tuple of images, or a 4-D batch array/tensor -> list of single images."""
    if isinstance(images, (list, tuple)):
        items = list(images)
    elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ValueError("No images were given to the processor.")
    return items


def _as_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}.")


# ----------------------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------------------


def _resize_uint8(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """HWC uint8 -> HWC uint8, bicubic (a = -0.5) with antialiasing, as PIL's BICUBIC: torch's uint8 fast path."""
    nchw = pixels.permute(2, 0, 1).unsqueeze(0)  # a channels_last view, no copy
    return F.interpolate(nchw, size=(height, width), mode="bicubic", antialias=True)[0].permute(1, 2, 0)


def evaluation_lattice(rows: int, columns: int, count: int) -> list[int]:
    """Row-major grid indices of `count` evaluation crops spread over both axes.

    Evenly spaced indices of the flattened grid can all land in a few columns (when the step is a multiple of
    the row length, as for 1200x1600 images), so the crops are laid out as a `r x c` lattice whose shape
    follows the grid's aspect, with evenly spaced rows and columns; cells beyond `count` are dropped from the
    middle of the last lattice row. Grids too small for a lattice fall back to the flattened spacing."""
    best = None
    for lattice_rows in range(1, count + 1):
        lattice_cols = -(-count // lattice_rows)
        if lattice_rows > rows or lattice_cols > columns:
            continue
        waste = lattice_rows * lattice_cols - count
        mismatch = abs(np.log((lattice_rows / lattice_cols) / (rows / columns)))
        key = (waste, mismatch)
        if best is None or key < best[0]:
            best = (key, lattice_rows, lattice_cols)
    if best is None:
        return np.rint(np.linspace(0, rows * columns - 1, count)).astype(int).tolist()
    _, lattice_rows, lattice_cols = best
    row_at = np.rint(np.linspace(0, rows - 1, lattice_rows)).astype(int)
    col_at = np.rint(np.linspace(0, columns - 1, lattice_cols)).astype(int)
    cells = [(r, c) for r in range(lattice_rows) for c in range(lattice_cols)]
    cells = cells[:count] if len(cells) == count else cells[: count - 1] + [cells[-1]]
    return [int(row_at[r] * columns + col_at[c]) for r, c in cells]


class AmlpfImageProcessor(BaseImageProcessor):
    r"""Turns each image into `num_crops` grid crops plus one global view: `pixel_values` of shape (B, V, 3, S, S).

    V = `num_crops` + 1 with the global view last; S = `crop_size`. The global view is the whole upsized image
    resized (squashed) to S x S, so it needs no separate size parameter. `num_crops=0` yields the global view
    alone (V = 1), a plain single-view baseline.

    Args:
        min_short_side: images whose short side is below this are upsized (bicubic, aspect kept) so the short
            side equals it; larger images are never downsized. Must be >= `crop_size`.
        crop_size: side of the square crops and of the global view.
        num_crops: crops per image.
        crop_stride: stride of the grid of crop top-left positions.
        large_crop_stride: stride used instead when the upsized height or width is >= `large_side_threshold`.
        large_side_threshold: side length (after upsizing) from which `large_crop_stride` applies.
        image_mean, image_std: per-channel normalisation of [0, 1] intensities (ImageNet by default, as the
            reference uses for both the UNI teacher and the CLIP student).
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = AmlpfImageProcessorKwargs

    def __init__(
        self,
        min_short_side: int = 512,
        crop_size: int = 224,
        num_crops: int = 8,
        crop_stride: int = 32,
        large_crop_stride: int = 48,
        large_side_threshold: int = 1024,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.min_short_side = int(min_short_side)
        self.crop_size = int(crop_size)
        self.num_crops = int(num_crops)
        self.crop_stride = int(crop_stride)
        self.large_crop_stride = int(large_crop_stride)
        self.large_side_threshold = int(large_side_threshold)
        self.image_mean = [float(value) for value in image_mean]
        self.image_std = [float(value) for value in image_std]
        self._validate_parameters()

    def _validate_parameters(self) -> None:
        for name in ("crop_size", "crop_stride", "large_crop_stride", "large_side_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.num_crops < 0:
            raise ValueError(f"num_crops must be >= 0, got {self.num_crops}.")
        if self.crop_size > self.min_short_side:
            raise ValueError(
                f"crop_size ({self.crop_size}) must not exceed min_short_side ({self.min_short_side}), "
                "otherwise an image could be too small to hold a single crop; raise min_short_side."
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need one value per RGB channel (3 each).")
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}.")

    @property
    def num_views(self) -> int:
        """Views per image: the crops plus the global view."""
        return self.num_crops + 1

    # --- geometry ------------------------------------------------------------------------------------------

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the upsizing step: short side raised to `min_short_side`, aspect kept."""
        short = min(height, width)
        if short >= self.min_short_side:
            return height, width
        target = self.min_short_side

        def scale(side: int) -> int:  # round half up in integer arithmetic, exact for the short side
            return (2 * side * target + short) // (2 * short)

        return scale(height), scale(width)

    def resize_short_side(self, image: Image.Image) -> Image.Image:
        """Upsize (antialiased bicubic) so the short side is `min_short_side`; larger images are returned as is."""
        height, width = image.height, image.width
        new_height, new_width = self.resized_size(height, width)
        if (new_height, new_width) == (height, width):
            return image
        pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8))
        return Image.fromarray(_resize_uint8(pixels, new_height, new_width).numpy())

    def crop_grid(self, height: int, width: int) -> tuple[int, int, int]:
        """(stride, rows, columns) of the grid of crop top-left positions on a (resized) image of this size."""
        if min(height, width) < self.crop_size:
            raise ValueError(
                f"An image of {height}x{width} cannot hold a {self.crop_size}-pixel crop; "
                "pass the size after resize_short_side."
            )
        large = max(height, width) >= self.large_side_threshold
        stride = self.large_crop_stride if large else self.crop_stride
        rows = (height - self.crop_size) // stride + 1
        columns = (width - self.crop_size) // stride + 1
        return stride, rows, columns

    def crop_positions(
        self,
        height: int,
        width: int,
        training: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> tuple[list[tuple[int, int]], list[bool]]:
        """Top-left (top, left) of each crop on the resized image, and whether each crop is flipped.

        Training: grid positions drawn at random (distinct when the grid has at least `num_crops` of them,
        with replacement otherwise) and flips with probability 0.5, from `generator` (torch's global RNG
        when None). Evaluation: a lattice of `num_crops` positions spread evenly over both axes of the grid
        (e.g. 2 x 4 for a landscape image), corners included, no flips; see `evaluation_lattice`.
        """
        stride, rows, columns = self.crop_grid(height, width)
        n_positions = rows * columns
        if self.num_crops == 0:
            return [], []
        if training:
            generator = _as_generator(generator)
            if n_positions >= self.num_crops:
                indices = torch.randperm(n_positions, generator=generator)[: self.num_crops].tolist()
            else:
                indices = torch.randint(n_positions, (self.num_crops,), generator=generator).tolist()
            flips = (torch.rand(self.num_crops, generator=generator) < 0.5).tolist()
        else:
            indices = evaluation_lattice(rows, columns, self.num_crops)
            flips = [False] * self.num_crops
        positions = [((index // columns) * stride, (index % columns) * stride) for index in indices]
        return positions, flips

    # --- views ---------------------------------------------------------------------------------------------

    def _image_views(self, image: Any, training: bool, generator: torch.Generator | None) -> np.ndarray:
        """uint8 views of one image, shape (V, S, S, 3), global view last.

        Resizing runs on the uint8 pixels with torch's antialiased bicubic (PIL's kernel, within 1-2 grey
        levels of PIL, about twice as fast); only the kept windows are copied out of the resized image."""
        rgb = to_rgb(image)
        pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))  # HWC, one writable copy
        height, width = self.resized_size(rgb.height, rgb.width)
        if (height, width) != (rgb.height, rgb.width):
            pixels = _resize_uint8(pixels, height, width)
        size = self.crop_size
        views = torch.empty((self.num_views, size, size, 3), dtype=torch.uint8)
        views[-1] = _resize_uint8(pixels, size, size)
        positions, flips = self.crop_positions(height, width, training, generator)
        for view, ((top, left), flip) in enumerate(zip(positions, flips)):
            window = pixels[top : top + size, left : left + size]
            views[view] = window.flip(1) if flip else window
        return views.numpy()

    def _normalise(self, views: np.ndarray) -> torch.Tensor:
        """uint8 (..., S, S, 3) views -> normalised float32 (..., 3, S, S); the only uint8-to-float conversion,
        one strided pass per channel (three times faster than one HWC->CHW permute of the whole batch)."""
        views = torch.from_numpy(views)
        out = torch.empty((*views.shape[:-3], 3, *views.shape[-3:-1]), dtype=torch.float32)
        for channel in range(3):
            plane = out[..., channel, :, :]
            plane.copy_(views[..., channel])
            std = float(self.image_std[channel])
            plane.mul_(1.0 / (255.0 * std)).sub_(float(self.image_mean[channel]) / std)
        return out

    def preprocess(
        self,
        images: Any,
        training: bool = False,
        return_tensors: str | None = "pt",
        generator: torch.Generator | int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Build `pixel_values` (B, V, 3, S, S) for an image or a list of images.

        `training` switches on random crop positions and flips; `generator` (a torch.Generator or an int seed)
        makes them reproducible, and is consumed image after image. `return_tensors`: "pt" (default) or "np";
        None also returns a torch tensor.
        """
        if kwargs:
            raise TypeError(
                f"Unexpected arguments {sorted(kwargs)}; set view parameters on the processor itself "
                "(e.g. AmlpfImageProcessor(num_crops=0)) rather than per call."
            )
        generator = _as_generator(generator) if training else None
        views = np.stack([self._image_views(image, training, generator) for image in _as_image_list(images)])
        pixel_values = self._normalise(views)
        tensor_type = TensorType.PYTORCH if return_tensors is None else TensorType(return_tensors)
        if tensor_type == TensorType.NUMPY:
            return BatchFeature(data={"pixel_values": pixel_values.numpy()}, tensor_type=tensor_type)
        if tensor_type != TensorType.PYTORCH:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=tensor_type)

    def __call__(self, images: Any = None, *args, **kwargs) -> BatchFeature:
        """Same as `preprocess`; `images` may also be passed by keyword, as pipelines do."""
        if images is None:
            raise ValueError("AmlpfImageProcessor needs `images`.")
        return self.preprocess(images, *args, **kwargs)


__all__ = ["AmlpfImageProcessor", "TINY_PRESET", "to_rgb"]
