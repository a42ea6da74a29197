"""Multi-view image processor of AMLPF-CLIP: 8 grid crops plus one global view per image.

Self-contained on purpose (torch, numpy, PIL, transformers and the sibling `image_decoding.py`):
`save_pretrained` copies both files into checkpoints that load with `trust_remote_code=True`.

Views, by default exactly as the paper's reference code computes them (shared/METHOD.md, "Views"):
decode to RGB (EXIF orientation applied to files, as `datasets` does); when a side is below `min_short_side`,
upsize so the short side equals it (torchvision's `Resize(512)` on the PIL image: Pillow's bilinear, long side
truncated); in training flip the whole upsized image with probability 0.5 and draw `num_crops` grid indices
uniformly with replacement; in evaluation keep the row-major grid indices k * (n // num_crops); cut
`crop_size` windows from the grid of top-left positions with stride `crop_stride` (`large_crop_stride` once
a side reaches `large_side_threshold`); append the whole image resized to `crop_size` x `crop_size` (bilinear,
no antialiasing) as the last view. Only the kept windows are sliced and normalised: the patch grid is never
materialised. `resample="bicubic", antialias=True` switches to antialiased bicubic resizing instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import TensorType, logging

from .image_decoding import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS, check_image_size, to_rgb

logger = logging.get_logger(__name__)

# Keyword arguments of the small test/debug configuration (`AmlpfImageProcessor(**TINY_PRESET)`).
TINY_PRESET = {
    "min_short_side": 128,
    "crop_size": 64,
    "crop_stride": 8,
    "large_crop_stride": 12,
    "large_side_threshold": 256,
}

DEFAULT_MIN_SHORT_SIDE = 512
RESAMPLE_MODES = ("bilinear", "bicubic")
_PIL_RESAMPLE = {int(Image.Resampling.BILINEAR): "bilinear", int(Image.Resampling.BICUBIC): "bicubic"}

# Settings another image processor (CLIP's, say) shares with this one, with the same meaning.
_SHARED_SETTINGS = ("image_mean", "image_std", "do_convert_rgb", "do_rescale", "rescale_factor", "do_normalize")
# Keys that only a foreign processor's configuration holds.
_FOREIGN_KEYS = ("size", "do_resize", "do_center_crop")
_TYPE_KEYS = ("image_processor_type", "feature_extractor_type", "processor_class")


class AmlpfImageProcessorKwargs(TypedDict, total=False):
    """Every parameter of the processor: overridable in `from_pretrained(..., **overrides)` and per call."""

    min_short_side: int
    crop_size: int
    num_crops: int
    crop_stride: int
    large_crop_stride: int
    large_side_threshold: int
    resample: str
    antialias: bool
    do_convert_rgb: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: list[float]
    image_std: list[float]
    max_image_pixels: int
    max_aspect_ratio: float


PARAMETER_NAMES = tuple(AmlpfImageProcessorKwargs.__annotations__)


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


def _per_image_generators(generator: Any, count: int) -> list[torch.Generator | None]:
    """One generator per image: a list gives image i its own generator[i]; one generator is shared in order."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != count:
            raise ValueError(
                f"generator is a list of {len(generator)} entries for {count} images; give one per image."
            )
        return [_as_generator(item) for item in generator]
    shared = _as_generator(generator)
    return [shared] * count


def _square_side(value: Any, name: str) -> int:
    """An int, or a transformers size dict of a square ({"height": s, "width": s}, {"shortest_edge": s})."""
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise ValueError(f"{name} must be square for AMLPF views, got {value}.")
            return int(value["height"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        raise ValueError(f"{name} must be an int or a dict with height/width or shortest_edge, got {value}.")
    return int(value)


def _resample_name(value: Any) -> str:
    """"bilinear" / "bicubic", also from PIL's resampling constants (2, 3) as transformers configs store them."""
    if isinstance(value, str) and value.lower() in RESAMPLE_MODES:
        return value.lower()
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) in _PIL_RESAMPLE:
        return _PIL_RESAMPLE[int(value)]
    raise ValueError(f"resample must be one of {RESAMPLE_MODES} (or PIL's BILINEAR/BICUBIC), got {value!r}.")


def _channel_values(value: Any, name: str) -> list[float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(item) for item in value]
    if len(values) != 3:
        raise ValueError(f"{name} needs one value per RGB channel (3), got {values}.")
    return values


def _resize_uint8_bicubic(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """HWC uint8 -> HWC uint8, antialiased bicubic (a = -0.5, PIL's kernel) on torch's uint8 fast path."""
    nchw = pixels.permute(2, 0, 1).unsqueeze(0)  # a channels_last view, no copy
    return F.interpolate(nchw, size=(height, width), mode="bicubic", antialias=True)[0].permute(1, 2, 0)


class AmlpfImageProcessor(BaseImageProcessor):
    r"""Turns each image into `num_crops` grid crops plus one global view: `pixel_values` of shape (B, V, 3, S, S).

    V = `num_crops` + 1 with the global view last; S = `crop_size`. The global view is the whole upsized image
    resized (squashed) to S x S, so it needs no separate size parameter. `num_crops=0` yields the global view
    alone (V = 1), a plain single-view baseline. The defaults reproduce the reference code's views exactly.

    Args:
        min_short_side: images with a side below this are upsized (aspect kept, long side truncated as
            torchvision's `Resize` does) so the short side equals it; larger images are never downsized.
            Must be >= `crop_size`.
        crop_size: side of the square crops and of the global view (an int, or a square size dict).
        num_crops: crops per image.
        crop_stride: stride of the grid of crop top-left positions.
        large_crop_stride: stride used instead when the upsized height or width is >= `large_side_threshold`.
        large_side_threshold: side length (after upsizing) from which `large_crop_stride` applies.
        resample: "bilinear" (the reference: Pillow's bilinear upsizing, as torchvision's `Resize` on a PIL
            image, and bilinear global view) or "bicubic" (antialiased bicubic upsizing, bicubic global view).
        antialias: antialias the global view's downscaling (the reference does not: False).
        do_convert_rgb: convert any colour mode to RGB (alpha on white, 16-bit scaled); False refuses inputs
            that are not already RGB instead of converting them.
        do_rescale, rescale_factor: multiply the 8-bit pixel values by `rescale_factor` (1/255).
        do_normalize, image_mean, image_std: per-channel normalisation (ImageNet by default, as the reference
            uses for both the UNI teacher and the CLIP student).
        max_image_pixels, max_aspect_ratio: images with more pixels, or a long side more than this many times
            the short side, raise a ValueError naming the size and the limit, checked on the size a file declares
            before any pixel is decoded or upsized (0 turns a limit off). They bound the memory per image: the
            views of a 1x5000 strip would need 19 GB. No histology tile comes near them (BreaKHis 700x460,
            LungHist700 1600x1200, Chaoyang 512x512); configurations saved without them get these defaults.

    Every parameter can also be given per call (`processor(images, num_crops=0, image_mean=...)`).
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = AmlpfImageProcessorKwargs

    def __init__(
        self,
        min_short_side: int = DEFAULT_MIN_SHORT_SIDE,
        crop_size: int | dict[str, int] = 224,
        num_crops: int = 8,
        crop_stride: int = 32,
        large_crop_stride: int = 48,
        large_side_threshold: int = 1024,
        resample: str | int = "bilinear",
        antialias: bool = False,
        do_convert_rgb: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] | float = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] | float = IMAGENET_DEFAULT_STD,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.min_short_side = int(min_short_side)
        self.crop_size = _square_side(crop_size, "crop_size")
        self.num_crops = int(num_crops)
        self.crop_stride = int(crop_stride)
        self.large_crop_stride = int(large_crop_stride)
        self.large_side_threshold = int(large_side_threshold)
        self.resample = _resample_name(resample)
        self.antialias = bool(antialias)
        self.do_convert_rgb = bool(do_convert_rgb)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _channel_values(image_mean, "image_mean")
        self.image_std = _channel_values(image_std, "image_std")
        self.max_image_pixels = int(max_image_pixels or 0)
        self.max_aspect_ratio = float(max_aspect_ratio or 0)
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
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}.")
        if not self.rescale_factor > 0:
            raise ValueError(f"rescale_factor must be positive, got {self.rescale_factor}.")
        if self.max_image_pixels < 0 or not self.max_aspect_ratio >= 0:
            raise ValueError(
                f"max_image_pixels and max_aspect_ratio must be >= 0 (0: no limit), got {self.max_image_pixels} "
                f"and {self.max_aspect_ratio}."
            )
        if 0 < self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio is long side / short side (>= 1; 0: none): {self.max_aspect_ratio}.")

    def check_image_size(self, height: int, width: int, name: str = "an image") -> None:
        """Raise a ValueError (`ImageSizeError`) naming the size and the limit when an image of this size is beyond
        `max_image_pixels` or `max_aspect_ratio`: for callers that know a size before decoding (a file's header)."""
        check_image_size(width, height, self.max_image_pixels, self.max_aspect_ratio, name=name)

    def decode(self, image: Any) -> Image.Image:
        """Any accepted input as 8-bit RGB, refused by size before it is decoded (files) or converted."""
        return to_rgb(
            image,
            convert=self.do_convert_rgb,
            max_pixels=self.max_image_pixels,
            max_aspect_ratio=self.max_aspect_ratio,
        )
    @property
    def num_views(self) -> int:
        """Views per image: the crops plus the global view."""
        return self.num_crops + 1

    def settings(self) -> dict[str, Any]:
        """The processor's settings as keyword arguments (what `to_dict` saves, without bookkeeping keys)."""
        return {name: getattr(self, name) for name in PARAMETER_NAMES}

    def with_overrides(self, **overrides: Any) -> AmlpfImageProcessor:
        """A processor with some settings replaced (validated as in `__init__`); `self` when there are none.

        None means "not given", as in transformers' processors. Unknown names raise a TypeError."""
        unknown = sorted(set(overrides) - set(PARAMETER_NAMES))
        if unknown:
            raise TypeError(
                f"Unexpected arguments {unknown}; AmlpfImageProcessor accepts per call: {', '.join(PARAMETER_NAMES)} "
                "(plus training, generator, return_tensors, return_view_geometry)."
            )
        overrides = {name: value for name, value in overrides.items() if value is not None}
        if not overrides:
            return self
        return type(self)(**{**self.settings(), **overrides})

    # --- loading configurations of other processors ---------------------------------------------------------

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs):
        """As transformers' `from_dict`; another processor's configuration (CLIP's) is mapped onto this one."""
        if cls._is_foreign(image_processor_dict):
            image_processor_dict = cls.map_foreign_config(image_processor_dict)
        return super().from_dict(image_processor_dict, **kwargs)

    @classmethod
    def from_clip_image_processor_dict(cls, image_processor_dict: dict[str, Any], **kwargs) -> AmlpfImageProcessor:
        """A processor from a `CLIPImageProcessor` configuration (see `map_foreign_config`)."""
        return super().from_dict(cls.map_foreign_config(image_processor_dict), **kwargs)

    @classmethod
    def _is_foreign(cls, config: dict[str, Any]) -> bool:
        kind = config.get("image_processor_type") or config.get("feature_extractor_type")
        return (kind is not None and kind != cls.__name__) or any(key in config for key in _FOREIGN_KEYS)

    @classmethod
    def map_foreign_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Keep what another processor's configuration (e.g. a CLIP checkpoint's) shares with AMLPF's views.

        Kept: the normalisation (`image_mean`, `image_std`: the statistics the checkpoint was trained with),
        `do_convert_rgb`, `do_rescale`, `rescale_factor`, `do_normalize`, and the model's input size (its
        `crop_size`, else its `size`) as `crop_size`. Replaced by AMLPF's multi-view geometry and
        interpolation (defaults of this class): resizing, centre cropping, `resample` and every other key.
        The mapping is logged once as a warning."""
        kind = config.get("image_processor_type") or config.get("feature_extractor_type") or "image processor"
        mapped = {key: config[key] for key in _SHARED_SETTINGS if config.get(key) is not None}
        size_key = next(
            (key for key in ("crop_size", "size") if config.get(key) is not None and (
                key != "crop_size" or config.get("do_center_crop", True))),
            None,
        )
        if size_key is not None:
            mapped["crop_size"] = _square_side(config[size_key], size_key)
            if mapped["crop_size"] > DEFAULT_MIN_SHORT_SIDE:
                mapped["min_short_side"] = mapped["crop_size"]
        replaced = sorted(key for key in config if key not in mapped and key not in _TYPE_KEYS)
        described = [f"{key}={mapped[key]}" if key == "crop_size" else key for key in mapped]
        logger.warning(
            f"Mapped a {kind} configuration onto AmlpfImageProcessor: kept {', '.join(described) or 'nothing'}; "
            f"replaced by AMLPF's multi-view geometry and interpolation: {', '.join(replaced) or 'nothing'}. "
            "save_pretrained() writes the mapped configuration."
        )
        return mapped

    # --- geometry ------------------------------------------------------------------------------------------

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after upsizing: when a side is below `min_short_side`, the short side becomes
        `min_short_side` and the long side int(min_short_side * long / short), as torchvision's `Resize(size)`."""
        short, long = min(height, width), max(height, width)
        if short >= self.min_short_side:
            return height, width
        new_short, new_long = self.min_short_side, int(self.min_short_side * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def resize_short_side(self, image: Any) -> Image.Image:
        """The upsized RGB image (`resample`'s kernel); images with no side below `min_short_side` as they are."""
        return Image.fromarray(self._upsized_pixels(self.decode(image)).numpy())

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

    def _draw_views(
        self, height: int, width: int, training: bool, generator: torch.Generator | None
    ) -> tuple[list[tuple[int, int]], bool]:
        """(top, left) of each crop in the unflipped upsized image, and whether the whole image is flipped."""
        stride, rows, columns = self.crop_grid(height, width)
        count = rows * columns
        if training:
            flip = bool(torch.rand((), generator=generator) < 0.5)
            indices = torch.randint(count, (self.num_crops,), generator=generator).tolist()
        else:
            flip = False
            indices = [k * (count // self.num_crops) for k in range(self.num_crops)] if self.num_crops else []
        positions = []
        for index in indices:
            top, left = (index // columns) * stride, (index % columns) * stride
            # The grid is laid on the flipped image: its column c is the mirrored window in the original.
            positions.append((top, width - self.crop_size - left if flip else left))
        return positions, flip

    def crop_positions(
        self,
        height: int,
        width: int,
        training: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> tuple[list[tuple[int, int]], list[bool]]:
        """Top-left (top, left) of each crop in the upsized (unflipped) image, and whether each crop is flipped.

        As the reference: training flips the whole image with probability 0.5 (so every crop, and the global
        view, shares one flip) and draws `num_crops` grid indices uniformly with replacement on the flipped
        image, from `generator` (torch's global RNG when None); evaluation keeps the row-major grid indices
        k * (n // num_crops), k = 0 .. num_crops - 1, of the n grid positions, unflipped. A crop at (top, left)
        with flip is `image[top:top+S, left:left+S]` mirrored. `height`, `width`: see `resized_size`.
        """
        positions, flip = self._draw_views(height, width, training, _as_generator(generator) if training else None)
        return positions, [flip] * len(positions)

    # --- views ---------------------------------------------------------------------------------------------

    def _upsized_pixels(self, rgb: Image.Image) -> torch.Tensor:
        """HWC uint8 pixels after the upsizing step (one writable copy)."""
        height, width = self.resized_size(rgb.height, rgb.width)
        if (height, width) != (rgb.height, rgb.width) and self.resample == "bilinear":
            # torchvision's Resize on a PIL image is exactly this call: bit-identical to the reference.
            rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))
        if pixels.shape[:2] != (height, width):
            pixels = _resize_uint8_bicubic(pixels, height, width)
        return pixels

    def _global_view(self, pixels: torch.Tensor, flip: bool) -> torch.Tensor:
        """(3, S, S) float in 0-255 units: the whole upsized image resized to S x S.

        Computed on float pixels, never rounded to 8 bits: bilinear interpolation commutes with the per-channel
        affine normalisation, so this equals the reference's resize of the normalised image (float rounding)."""
        size = self.crop_size
        whole = pixels.permute(2, 0, 1).unsqueeze(0).float()
        view = F.interpolate(
            whole, size=(size, size), mode=self.resample, align_corners=False, antialias=self.antialias
        )
        if self.resample == "bicubic":
            view = view.clamp_(0.0, 255.0)  # bicubic overshoots; 8-bit images cannot
        return view[0].flip(-1) if flip else view[0]

    def _image_views(
        self, image: Any, training: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
        """One image -> (crops uint8 (num_crops, S, S, 3), global view float (3, S, S), geometry rows)."""
        pixels = self._upsized_pixels(self.decode(image))
        height, width = pixels.shape[:2]
        positions, flip = self._draw_views(height, width, training, generator)
        size = self.crop_size
        crops = torch.empty((len(positions), size, size, 3), dtype=torch.uint8)
        for view, (top, left) in enumerate(positions):
            window = pixels[top : top + size, left : left + size]
            crops[view] = window.flip(1) if flip else window
        geometry = [(top, left, int(flip)) for top, left in positions] + [(-1, -1, int(flip))]
        return crops, self._global_view(pixels, flip), geometry

    def _scale_and_offset(self) -> tuple[list[float], list[float]]:
        """Per channel, value = pixel * scale - offset: rescaling and normalisation fused into one affine map."""
        factor = self.rescale_factor if self.do_rescale else 1.0
        if not self.do_normalize:
            return [factor] * 3, [0.0] * 3
        scales = [factor / std for std in self.image_std]
        return scales, [mean / std for mean, std in zip(self.image_mean, self.image_std)]

    def _write_normalised(self, out: torch.Tensor, crops: torch.Tensor, global_view: torch.Tensor) -> None:
        """Fill `out` (V, 3, S, S) float32: the only uint8-to-float conversion of the crops, one strided pass
        per channel (three times faster than one HWC->CHW permute)."""
        scales, offsets = self._scale_and_offset()
        for channel, (scale, offset) in enumerate(zip(scales, offsets)):
            planes = out[:, channel]
            planes[:-1].copy_(crops[..., channel])
            planes[-1].copy_(global_view[channel])
            planes.mul_(scale).sub_(offset)

    def preprocess(
        self,
        images: Any,
        training: bool = False,
        return_tensors: str | TensorType | None = "pt",
        generator: torch.Generator | int | Sequence[torch.Generator | int] | None = None,
        return_view_geometry: bool = False,
        **overrides: Any,
    ) -> BatchFeature:
        """Build `pixel_values` (B, V, 3, S, S) for an image or a list of images.

        Args:
            images: an image (PIL, array, tensor, file path, bytes) or a list of them, or a 4-D batch.
            training: random whole-image flips and crop positions (the reference's training views).
            return_tensors: "pt" (default; None too) or "np".
            generator: makes training views reproducible: a torch.Generator or an int seed, consumed image
                after image; or a list with one per image, so that image i's views depend only on
                generator[i]. Ignored in evaluation.
            return_view_geometry: also return `view_geometry`, (B, V, 3) int64 rows (top, left, flipped) of
                each crop in the upsized image, the global view (last) as (-1, -1, flipped). Equal rows of
                the same image are equal views; `pixel_values` does not depend on this flag.
            **overrides: any parameter of the processor for this call only (`num_crops=0`, `image_mean=...`).
        """
        processor = self.with_overrides(**overrides)
        items = _as_image_list(images)
        generators = _per_image_generators(generator, len(items))
        size = processor.crop_size
        pixel_values = torch.empty((len(items), processor.num_views, 3, size, size), dtype=torch.float32)
        geometry = []
        for index, (item, item_generator) in enumerate(zip(items, generators)):
            crops, global_view, rows = processor._image_views(item, training, item_generator)
            processor._write_normalised(pixel_values[index], crops, global_view)
            geometry.append(rows)
        data = {"pixel_values": pixel_values}
        if return_view_geometry:
            data["view_geometry"] = torch.tensor(geometry, dtype=torch.long)
        tensor_type = TensorType.PYTORCH if return_tensors is None else TensorType(return_tensors)
        if tensor_type == TensorType.NUMPY:
            return BatchFeature(data={key: value.numpy() for key, value in data.items()}, tensor_type=tensor_type)
        if tensor_type != TensorType.PYTORCH:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        return BatchFeature(data=data, tensor_type=tensor_type)

    def __call__(self, images: Any = None, *args, **kwargs) -> BatchFeature:
        """Same as `preprocess`; `images` may also be passed by keyword, as pipelines do."""
        if images is None:
            raise ValueError("AmlpfImageProcessor needs `images`.")
        return self.preprocess(images, *args, **kwargs)


__all__ = ["AmlpfImageProcessor", "RESAMPLE_MODES", "TINY_PRESET", "to_rgb"]
