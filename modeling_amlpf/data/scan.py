"""Verify that every image decodes, once per file version, and remember the answer.

A full decode is the only reliable way to catch truncated files (Pillow's `verify()` misses many), so the
scan decodes each image; JPEGs at 1/8 scale through `draft()`, which still reads every byte of the
entropy-coded data. The scan also records each image's size in pixels (to flag tiny images) and a content
fingerprint (`content_fingerprint`: file size + hash of the first 64 KiB), which `split.json` stores so that a
teacher can be checked against the images it was trained on. Results are cached in
`$AMLPF_CACHE/scan/<root hash>.json` (default `~/.cache/amlpf/scan/`), keyed by relative path and checked
against (size, mtime): a second load of the same tree decodes nothing. Images whose modes Pillow cannot
convert to RGB faithfully (16-bit, float, real transparency) get an 8-bit RGB copy in `$AMLPF_CACHE/rgb8/`
that the dataset reads instead. Images beyond the size limits of the views (`check_image_size`: more than
`max_image_pixels`, or more elongated than `max_aspect_ratio`) are bad images, found from the size the file
declares without decoding it; that answer is not cached, as it depends on the limits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageFile, ImageOps

from ..models.image_decoding import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageSizeError,
    check_image_size,
    needs_rgb8_copy,
    to_rgb,
)
from .index import join_relative

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "AMLPF_CACHE"
CACHE_VERSION = 2
OK, BAD, RGB8 = "ok", "bad", "rgb8"
TOO_LARGE = "too_large"  # a bad image by the size limits: reported as BAD, never cached
FINGERPRINT_BYTES = 64 * 1024


def cache_dir(*parts: str) -> str:
    """`$AMLPF_CACHE/<parts>` or `~/.cache/amlpf/<parts>` (not created here)."""
    base = os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "amlpf")
    return os.path.join(os.path.abspath(base), *parts)


def content_fingerprint(path: str) -> str:
    """`<file size>:<sha1 of the first 64 KiB, 16 hex digits>`: cheap, and tells copies from other images.

    Two files with equal fingerprints hold the same image for every practical purpose (same size and same
    header and leading pixel data); names play no part, so equal names in two cohorts never match by accident.
    """
    with open(path, "rb") as handle:
        head = handle.read(FINGERPRINT_BYTES)
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
    return f"{size}:{hashlib.sha1(head).hexdigest()[:16]}"


@dataclasses.dataclass
class ScanReport:
    """What the image scan found.

    Attributes:
        bad_images: (path relative to the data root, reason) of every file that does not decode.
        skipped: True when bad images or missing files were left out (`on_bad_image="skip"`).
        rgb8_copies: relative paths read through an 8-bit RGB copy (16-bit, float or transparent images).
        num_scanned: images checked (cached answers included).
        num_decoded: images actually decoded by this scan (cache misses).
        missing_files: (expected relative path, reason) of images a label file names but that do not exist.
        non_image_files: files in image folders whose suffix is not an image format; never read.
        small_images: (relative path, "<width>x<height>") of images with a side below `min_image_side`.
        min_image_side: the threshold used for `small_images`, in pixels.
        max_image_pixels, max_aspect_ratio: the size limits beyond which images were bad images (0: none).
    """

    bad_images: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: bool = False
    rgb8_copies: list[str] = dataclasses.field(default_factory=list)
    num_scanned: int = 0
    num_decoded: int = 0
    missing_files: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    non_image_files: list[str] = dataclasses.field(default_factory=list)
    small_images: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    min_image_side: int = 0
    max_image_pixels: int = 0
    max_aspect_ratio: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ScanReport:
        known = {field.name for field in dataclasses.fields(cls)}
        report = cls(**{key: value for key, value in data.items() if key in known})
        for name in ("bad_images", "missing_files", "small_images"):
            setattr(report, name, [tuple(entry) for entry in getattr(report, name)])
        return report


def rgb8_copy_path(copy_dir: str, absolute_path: str, size: int, mtime_ns: int) -> str:
    """Where the 8-bit RGB copy of one file version lives."""
    digest = hashlib.sha1(f"{absolute_path}|{size}|{mtime_ns}".encode()).hexdigest()
    return os.path.join(copy_dir, f"{digest}.png")


def check_image(
    path: str,
    rgb8_path: str,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> tuple[str, str, str, int, int]:
    """Decode one file: (status, detail, fingerprint, width, height) with status OK (detail: mode), RGB8 after
    writing its 8-bit copy, BAD (detail: the reason; width and height 0), or TOO_LARGE (beyond the size limits,
    from the declared size: nothing decoded)."""
    try:
        if os.path.getsize(path) == 0:
            return BAD, "empty file (0 bytes)", "", 0, 0
        fingerprint = content_fingerprint(path)
        with Image.open(path) as image:
            width, height = image.size  # before draft(), which shrinks the decoded size
            try:
                check_image_size(width, height, max_pixels, max_aspect_ratio, name="the image")
            except ImageSizeError as error:
                return TOO_LARGE, str(error), fingerprint, width, height
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
            mode = image.mode
            if needs_rgb8_copy(image):
                _write_rgb8_copy(path, rgb8_path)
                return RGB8, mode, fingerprint, width, height
            if mode != "RGB":
                image.convert("RGB")  # fails for modes Pillow cannot map to RGB
            return OK, mode, fingerprint, width, height
    except Exception as error:  # noqa: BLE001 - any decoder failure makes the file unusable
        return BAD, f"{type(error).__name__}: {error}", "", 0, 0


def _write_rgb8_copy(path: str, target: str) -> None:
    with Image.open(path) as image:
        image.load()
        converted = to_rgb(ImageOps.exif_transpose(image))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".png")
    os.close(handle)
    converted.save(temporary, format="PNG")
    os.replace(temporary, target)


def _cache_file(root: str) -> str:
    return cache_dir("scan", hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:16] + ".json")


def _read_cache(path: str, root: str) -> dict[str, list]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    if data.get("version") != CACHE_VERSION or data.get("root") != root:
        return {}
    return data.get("entries", {})


def _write_cache(path: str, root: str, entries: dict[str, list]) -> None:
    """Atomic write so that concurrent loaders (one per rank) never read half a file."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"version": CACHE_VERSION, "root": root, "entries": entries}, out)
        os.replace(temporary, path)
    except OSError as error:
        logger.warning("Could not write the image scan cache %s (%s); the next load will scan again.", path, error)


@dataclasses.dataclass
class ScanResult:
    """Per-image outcome aligned with the scanned paths, plus the report."""

    status: list[str]
    details: list[str]
    image_files: list[str]
    fingerprints: list[str]
    sizes: list[tuple[int, int]]
    report: ScanReport


def _known_outcome(cached: list | None, key: list, copy_dir: str, absolute: str) -> tuple[list, str] | None:
    """(status, detail, fingerprint, width, height) and the file to open, from the cache when the file version
    matches and any copy exists."""
    if cached is None or cached[:2] != key:
        return None
    outcome = cached[2:]
    if outcome[0] != RGB8:
        return outcome, absolute
    copy = rgb8_copy_path(copy_dir, absolute, *key)
    return (outcome, copy) if os.path.isfile(copy) else None


def scan_images(
    root: str,
    relative_paths: list[str],
    workers: int | None = None,
    min_side: int = 0,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> ScanResult:
    """Check every image under `root`; `image_files[i]` is what the dataset should open for path i.

    Images with a side below `min_side` pixels are listed in `report.small_images` (they are still used);
    images beyond `max_pixels` or `max_aspect_ratio` (see `check_image_size`) are bad images.
    """
    root = os.path.abspath(root)
    cache_path = _cache_file(root)
    cache = _read_cache(cache_path, root)
    copy_dir = cache_dir("rgb8")
    count = len(relative_paths)
    status, details, image_files = [BAD] * count, [""] * count, [""] * count
    fingerprints, sizes = [""] * count, [(0, 0)] * count
    todo: list[tuple[int, str, str, list]] = []
    for position, relative in enumerate(relative_paths):
        absolute = image_files[position] = join_relative(root, relative)
        try:
            stat = os.stat(absolute)
        except OSError as error:
            details[position] = f"cannot stat: {error}"
            continue
        key = [stat.st_size, stat.st_mtime_ns]
        known = _known_outcome(cache.get(relative), key, copy_dir, absolute)
        if known is None:
            todo.append((position, absolute, rgb8_copy_path(copy_dir, absolute, *key), key))
        else:
            (status[position], details[position], fingerprints[position], *size), image_files[position] = known
            sizes[position] = tuple(size)
    if todo:
        logger.info("Checking %d images under %s that the scan cache does not know yet.", len(todo), root)
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set, so truncated images decode and pass the scan.")
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            outcomes = list(
                pool.map(lambda item: check_image(item[1], item[2], max_pixels, max_aspect_ratio), todo)
            )
        for (position, absolute, copy, key), outcome in zip(todo, outcomes):
            status[position], details[position], fingerprints[position], *size = outcome
            sizes[position] = tuple(size)
            image_files[position] = copy if outcome[0] == RGB8 else absolute
            if outcome[0] != TOO_LARGE:
                cache[relative_paths[position]] = key + list(outcome)
        _write_cache(cache_path, root, cache)
    for position, (width, height) in enumerate(sizes):
        if status[position] in (OK, RGB8):  # a cached answer, given under other limits
            try:
                check_image_size(width, height, max_pixels, max_aspect_ratio, name="the image")
            except ImageSizeError as error:
                status[position], details[position] = TOO_LARGE, str(error)
    status = [BAD if value == TOO_LARGE else value for value in status]
    report = ScanReport(
        bad_images=[(relative_paths[i], details[i]) for i, s in enumerate(status) if s == BAD],
        rgb8_copies=[relative_paths[i] for i, s in enumerate(status) if s == RGB8],
        num_scanned=count,
        num_decoded=len(todo),
        small_images=[
            (relative_paths[i], f"{width}x{height}")
            for i, (width, height) in enumerate(sizes)
            if status[i] != BAD and min(width, height) < min_side
        ],
        min_image_side=min_side,
        max_image_pixels=int(max_pixels or 0),
        max_aspect_ratio=float(max_aspect_ratio or 0),
    )
    return ScanResult(status, details, image_files, fingerprints, sizes, report)
