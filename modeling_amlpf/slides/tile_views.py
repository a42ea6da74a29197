"""The evaluation views of `AmlpfImageProcessor`, recomputed inside a TorchScript module from a normalised tile.

WSInfer hands a model the tile as `ToTensor` + `Normalize` made it: float32, (B, 3, N, N). The processor instead
upsizes the 8-bit image first (Pillow's bilinear resize, which rounds to 8 bits after each of its two passes),
then cuts the crops and normalises. `TileViews` undoes WSInfer's normalisation exactly (the tile came from 8-bit
pixels, so rounding recovers them), repeats Pillow's fixed-point resize with precomputed integer weights (float64
sums of integer products are exact), and then does what the processor does, in the same order. The views
therefore equal the processor's up to float32 rounding, on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Pillow's resampling (libImaging/Resample.c): weights in fixed point with this many fractional bits.
PIL_PRECISION_BITS = 32 - 8 - 2


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def pil_resize_weights(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) float64 matrix of Pillow's integer bilinear weights for a resize of one axis.

    As Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: the window of each output pixel, the triangle
    filter widened when downscaling, weights normalised to sum 1 and then rounded to `PIL_PRECISION_BITS`."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale
    weights = torch.zeros((out_size, in_size), dtype=torch.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        values = [_bilinear((x - center + 0.5) / filter_scale) for x in range(first, last)]
        total = sum(values)
        for offset, value in enumerate(values):
            value = value / total if total != 0.0 else value
            fixed = value * (1 << PIL_PRECISION_BITS)
            weights[out, first + offset] = math.trunc(fixed - 0.5 if fixed < 0 else fixed + 0.5)
    return weights


def _pil_pass(pixels: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """One of Pillow's passes on float64 8-bit values along `dim` (-1: columns, -2: rows), rounded and clipped
    to 8 bits as Pillow's `clip8` does (add half, arithmetic shift, clip)."""
    summed = pixels @ weights.t() if dim == -1 else weights @ pixels
    half = float(1 << (PIL_PRECISION_BITS - 1))
    return torch.floor((summed + half) / float(1 << PIL_PRECISION_BITS)).clamp(0.0, 255.0)


def _upsized_size(side: int, min_short_side: int) -> int:
    """A square tile's side after the processor's upsizing rule (only upward, to `min_short_side`)."""
    return side if side >= min_short_side else min_short_side


class TileViews(nn.Module):
    """(B, 3, N, N) tiles normalised with `tile_mean`/`tile_std` -> (B, V, 3, S, S): the processor's evaluation views.

    Built for one tile size N (WSInfer resizes every tile to its `patch_size_pixels`); `processor` is the
    checkpoint's `AmlpfImageProcessor`, whose geometry, interpolation and normalisation are reproduced."""

    def __init__(self, processor, tile_size: int, tile_mean, tile_std):
        super().__init__()
        if tile_size < processor.crop_size:
            raise ValueError(f"a {tile_size}-pixel tile cannot hold the processor's {processor.crop_size}-pixel crops")
        self.tile_size = int(tile_size)
        self.crop_size = int(processor.crop_size)
        self.resample = processor.resample
        self.antialias = bool(processor.antialias)
        side = _upsized_size(self.tile_size, processor.min_short_side)
        self.upsize = side != self.tile_size
        self.upsized_side = side
        positions, _ = processor.crop_positions(side, side, training=False)
        self.positions = [(int(top), int(left)) for top, left in positions]
        scales, offsets = processor._scale_and_offset()
        view = (1, 3, 1, 1)
        self.register_buffer("tile_mean", torch.tensor(tile_mean, dtype=torch.float32).view(view), persistent=False)
        self.register_buffer("tile_std", torch.tensor(tile_std, dtype=torch.float32).view(view), persistent=False)
        self.register_buffer("scale", torch.tensor(scales, dtype=torch.float32).view(view), persistent=False)
        self.register_buffer("offset", torch.tensor(offsets, dtype=torch.float32).view(view), persistent=False)
        weights = pil_resize_weights(self.tile_size, side) if self.upsize else torch.zeros(0, 0, dtype=torch.float64)
        self.register_buffer("pil_weights", weights, persistent=False)

    def pixels(self, tiles: torch.Tensor) -> torch.Tensor:
        """The tile's 8-bit pixel values (as float), recovered from WSInfer's ToTensor + Normalize."""
        return torch.round((tiles * self.tile_std + self.tile_mean) * 255.0).clamp(0.0, 255.0)

    def upsized(self, pixels: torch.Tensor) -> torch.Tensor:
        """The processor's upsizing of the 8-bit tile (float 8-bit values; the tile itself when not upsized)."""
        if not self.upsize:
            return pixels
        side = self.upsized_side
        if self.resample == "bilinear":
            wide = _pil_pass(pixels.double(), self.pil_weights, dim=-1)
            return _pil_pass(wide, self.pil_weights, dim=-2).to(pixels.dtype)
        # bicubic: the processor's own call, torch's antialiased uint8 kernel (CPU only), on a CPU copy
        as_bytes = pixels.to(torch.uint8).cpu().contiguous(memory_format=torch.channels_last)
        return F.interpolate(as_bytes, size=(side, side), mode="bicubic", antialias=True).to(pixels)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        pixels = self.upsized(self.pixels(tiles))
        size = self.crop_size
        views = [pixels[:, :, top : top + size, left : left + size] for top, left in self.positions]
        whole = F.interpolate(
            pixels, size=(size, size), mode=self.resample, align_corners=False, antialias=self.antialias
        )
        if self.resample == "bicubic":
            whole = whole.clamp(0.0, 255.0)
        views.append(whole)
        stacked = torch.stack(views, dim=1)  # (B, V, 3, S, S) in 8-bit units
        return stacked * self.scale.unsqueeze(1) - self.offset.unsqueeze(1)
