"""Which images Pillow's own `convert("RGB")` would decode unfaithfully.

The `image` column decodes with `datasets.Image(mode="RGB")`, i.e. Pillow's `convert("RGB")`. That is exact
for L, P, CMYK, YCbCr and opaque RGBA, but it clips 16/32-bit grey levels at 255 (a 16-bit scan turns
white) and drops transparency (transparent pixels keep whatever colour lies under them, often black).
Such images are read through an 8-bit RGB copy written once into the cache by the image processor's
`to_rgb` (16-bit values / 257, transparency composited on white), so both paths agree.
"""

from __future__ import annotations

from PIL import Image

HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
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
