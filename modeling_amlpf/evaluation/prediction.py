"""Batch prediction with a trained AMLPF-CLIP student or teacher (what `predict.py` runs).

Image files, folders (recursive) or a CSV column of paths go in; `predictions.csv` (one row per image),
`summary.json` and one overlay PNG per image come out. Decoding and the views run in DataLoader workers (the
dataset's `__getitem__` calls the model's own processor), the model runs whole batches (bf16 autocast on GPUs)
and overlays are drawn on a background thread, so the model does not wait on files or on matplotlib.

The crop windows on the overlays are asked of the processor (`resized_size`, then
`crop_positions(..., training=False)`), never recomputed here, so they follow the processor's evaluation
geometry whatever it is configured to do.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.index import IMAGE_SUFFIXES, is_os_metadata, join_relative, split_image_files, walk_files
from ..models.image_decoding import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS, printable_path, to_rgb

logger = logging.getLogger(__name__)

PREVIEW_SIDE = 768  # longest side of the image drawn on an overlay (boxes stay in original pixels)
PRECISIONS = ("auto", "bf16", "fp32")
SAMPLE_LIMIT = 20  # skipped files listed by name in summary.json


class PredictionInputError(ValueError):
    """A problem with the command line, the inputs or the model that the user can fix (the CLI exits with 2)."""


class UnreadableImageError(RuntimeError):
    """An input could not be decoded and `strict=True` asked to stop (the CLI exits with 1)."""


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ImageInputs:
    """The images to predict, in output order, and the folder entries that were not images. ``labels``: the true
    class name of each path when the input carries labels (a ``split.json``; None for the other paths), else
    None."""

    paths: list[str]
    skipped: list[str] = field(default_factory=list)
    labels: list[str | None] | None = None


def read_csv_paths(csv_file: str | os.PathLike, path_column: str = "path") -> list[str]:
    """Image paths from one column of a CSV file; relative paths are taken relative to the CSV's folder."""
    csv_file = os.fspath(csv_file)
    if not os.path.isfile(csv_file):
        raise PredictionInputError(f"--csv {csv_file}: no such file.")
    with open(csv_file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        if path_column not in columns:
            raise PredictionInputError(
                f"--csv {csv_file} has no column {path_column!r} (columns: {', '.join(columns) or 'none'}); "
                "name the column that holds the image paths with --path_column."
            )
        reader.fieldnames = columns
        values = [(row.get(path_column) or "").strip() for row in reader]
    empty = [str(number) for number, value in enumerate(values, start=2) if not value]
    if empty:
        raise PredictionInputError(
            f"--csv {csv_file}: column {path_column!r} is empty on line(s) {', '.join(empty[:10])}"
            f"{' ...' if len(empty) > 10 else ''}; every row needs an image path."
        )
    if not values:
        raise PredictionInputError(f"--csv {csv_file} has no rows.")
    base = os.path.dirname(csv_file)
    return [os.path.join(base, value) for value in values]


def read_split_paths(
    split_file: str | os.PathLike, part: str = "test", data_dir: str | os.PathLike | None = None
) -> list[str]:
    """Image paths of one part of a `split.json` written by the training scripts (`export_split`): its paths
    are relative to the data root recorded in the file, or to `data_dir` when the data has moved."""
    return read_split_entries(split_file, part, data_dir)[0]


def read_split_entries(
    split_file: str | os.PathLike, part: str = "test", data_dir: str | os.PathLike | None = None
) -> tuple[list[str], list[str]]:
    """`(paths, labels)` of one part of a `split.json`: the paths as `read_split_paths`, the labels as class
    names (the file's `class_names`)."""
    from ..data import load_split_file

    split_file = os.fspath(split_file)
    try:
        split = load_split_file(split_file)
    except (OSError, ValueError) as error:
        raise PredictionInputError(f"--split_file {split_file}: {' '.join(str(error).split())}") from error
    if part not in split["parts"]:
        raise PredictionInputError(
            f"--split_file {split_file} has no part {part!r} (parts: {', '.join(split['parts'])}); choose one with "
            "--split_part."
        )
    root = os.fspath(data_dir) if data_dir is not None else split.get("data_root")
    if not root or not os.path.isdir(root):
        raise PredictionInputError(
            f"--split_file {split_file}: its data root {root!r} is not a folder here; pass the folder that holds the "
            "images with --data_dir."
        )
    entries = split["parts"][part]
    if not entries:
        raise PredictionInputError(f"--split_file {split_file}: part {part!r} is empty.")
    names = list(split.get("class_names") or [])
    labels = [names[int(entry[1])] if 0 <= int(entry[1]) < len(names) else str(entry[1]) for entry in entries]
    return [join_relative(root, entry[0]) for entry in entries], labels


def find_images(
    inputs: Iterable[str | os.PathLike],
    csv_file: str | os.PathLike | None = None,
    path_column: str = "path",
    *,
    split_file: str | os.PathLike | None = None,
    split_part: str = "test",
    data_dir: str | os.PathLike | None = None,
) -> ImageInputs:
    """Expand files and folders (recursively, sorted) into image paths, then append the rows of `csv_file`
    and the entries of one part of `split_file` (see `read_csv_paths`, `read_split_paths`).

    Folders keep files with an image suffix and skip OS clutter and hidden entries as the dataset readers do
    (`.DS_Store`, `Thumbs.db`, AppleDouble `._*`); other files are listed in `skipped`. A folder without any
    image, or a path that does not exist, is an error. Files named directly are tried whatever their suffix;
    a file reached twice (a folder and a file in it) is predicted once. CSV rows and split entries are kept one
    for one (a missing file becomes an error row of predictions.csv).
    """
    paths: list[str] = []
    skipped: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)

    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            images, others = split_image_files(walk_files(item))
            skipped += [join_relative(item, relative) for relative in others]
            for relative in images:
                add(join_relative(item, relative))
            if not images:
                raise PredictionInputError(
                    f"no image files in folder {item} (searched recursively for {' '.join(IMAGE_SUFFIXES)}; "
                    "hidden files and OS clutter are skipped)."
                )
        elif os.path.isfile(item):
            if is_os_metadata(os.path.basename(item)):
                skipped.append(item)
            else:
                add(item)
        elif os.path.islink(item):
            raise PredictionInputError(
                f"{printable_path(item)}: a symbolic link that leads to no file (broken, or a loop of links)."
            )
        else:
            raise PredictionInputError(f"{printable_path(item)}: no such file or folder.")
    if csv_file is not None:
        paths.extend(read_csv_paths(csv_file, path_column))
    labels = None
    if split_file is not None:
        split_paths, split_labels = read_split_entries(split_file, split_part, data_dir)
        labels = [None] * len(paths) + split_labels
        paths.extend(split_paths)
    if not paths:
        raise PredictionInputError(
            "no images to predict: pass image files or folders, --csv FILE --path_column COLUMN, "
            "or --split_file split.json."
        )
    return ImageInputs(paths=paths, skipped=skipped, labels=labels)


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------


def crop_boxes(processor: Any, height: int, width: int) -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) of each evaluation crop, in pixels of the ORIGINAL `height` x `width` image.

    The processor cuts its crops from the upsized image (`processor.resized_size`) at
    `processor.crop_positions(..., training=False)`; the upsizing is undone here so that the boxes can be drawn
    on the original image."""
    resized_height, resized_width = processor.resized_size(height, width)
    positions, _ = processor.crop_positions(resized_height, resized_width, training=False)
    scale_y, scale_x = height / resized_height, width / resized_width
    size = processor.crop_size
    return [
        (left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y) for top, left in positions
    ]


# ----------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------


def describe_error(error: BaseException) -> str:
    """One line naming the exception and its message, for the error column."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class ImageFileDataset(Dataset):
    """Decodes image files and makes the model's views in DataLoader workers.

    An item holds `index`, `pixel_values` (V, 3, S, S), the decoded `size` (height, width) and, for the first
    `preview_count` images, a `preview` (uint8 HWC, longest side `preview_side`) to draw the overlay on. A file
    that cannot be decoded yields `error` (one line) instead of failing the worker: the caller decides.
    """

    def __init__(self, paths: Sequence[str], processor: Any, preview_count: int = 0, preview_side: int = PREVIEW_SIDE):
        self.paths = list(paths)
        self.processor = processor
        self.preview_count = int(preview_count)
        self.preview_side = int(preview_side)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        item = {"index": index, "pixel_values": None, "size": None, "preview": None, "error": ""}
        try:
            # Decoded once, here: the processor takes the RGB image as is, and its size places the overlay boxes.
            # Refused by size (the processor's limits) from the file's header, before its pixels are decoded.
            rgb = to_rgb(
                self.paths[index],
                convert=getattr(self.processor, "do_convert_rgb", True),
                max_pixels=getattr(self.processor, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
                max_aspect_ratio=getattr(self.processor, "max_aspect_ratio", DEFAULT_MAX_ASPECT_RATIO),
            )
            item["pixel_values"] = self.processor(rgb, return_tensors="pt")["pixel_values"][0]
        except Exception as error:  # any decoding or view failure belongs to this file alone
            item["error"] = describe_error(error)
            return item
        item["size"] = (rgb.height, rgb.width)
        if index < self.preview_count:
            rgb.thumbnail((self.preview_side, self.preview_side))
            item["preview"] = np.asarray(rgb)
        return item


def collate_items(items: list[dict]) -> dict:
    """Stack the views of the decoded images; keep the per-item records (failures included) in order."""
    tensors = [item.pop("pixel_values") for item in items]
    good = [tensor for tensor in tensors if tensor is not None]
    return {"items": items, "pixel_values": torch.stack(good) if good else None}


# ----------------------------------------------------------------------------------------------------------
# Model, device
# ----------------------------------------------------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when CUDA is available, else the CPU; otherwise any torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        message = f"--device {name!r} is not a torch device (try auto, cpu, cuda, cuda:1)."
        raise PredictionInputError(message) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictionInputError(f"--device {name}: no CUDA GPU is visible; use --device cpu (or auto).")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a run: bf16 on GPUs that support it (`auto`), or as asked; None means fp32."""
    if precision not in PRECISIONS:
        raise PredictionInputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def load_model_and_processor(name_or_path: str, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """The model and its processor from a checkpoint folder or a Hub id, in eval mode on the CPU.

    Checkpoints of this package load through the registered Auto classes, also with `trust_remote_code=True`
    (transformers prefers a registered class); the flag only lets transformers run the code saved in a
    checkpoint whose model type is not registered in this process. A local checkpoint needs its
    `preprocessor_config.json` (its views), and refused pickles are named: both `PredictionInputError`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from ..pretrained.weights import hub_access_error, refused_pickle_message

    local = os.path.isdir(name_or_path)
    if not local:
        if os.path.exists(name_or_path):
            raise PredictionInputError(
                f"--model {name_or_path} is a file; pass the checkpoint folder (save_pretrained output) or a Hub id."
            )
        try:
            validate_repo_id(name_or_path)
        except HFValidationError as error:
            raise PredictionInputError(
                f"--model {name_or_path}: no such folder, and not a Hub id (org/name)."
            ) from error
    if local and not os.path.isfile(os.path.join(name_or_path, "preprocessor_config.json")):
        raise PredictionInputError(
            f"--model {name_or_path} has no preprocessor_config.json: the views it was trained with (crop size, "
            "upsizing, normalisation) are unknown, and default views would give wrong predictions. Copy it from the "
            "run that trained the model (its output folder, beside config.json)."
        )
    try:
        model = AutoModelForImageClassification.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except pickle.UnpicklingError as error:
        raise PredictionInputError(f"--model {name_or_path}: {refused_pickle_message(error)}") from None
    except (OSError, ValueError) as error:
        explained = None if local else hub_access_error(
            error, name_or_path, local_hint=f"download it (hf download {name_or_path} --local-dir DIR) and pass DIR"
        )
        message = " ".join(str(explained or error).split())
        if "trust_remote_code" in message:
            message += " (pass --trust_remote_code)"
        if not local:
            message = f"no folder {name_or_path} here, and as a Hub id: {message}"
        raise PredictionInputError(f"--model {name_or_path}: {message}") from error
    missing = [name for name in ("resized_size", "crop_positions", "crop_size") if not hasattr(processor, name)]
    if missing:
        raise PredictionInputError(
            f"--model {name_or_path}: its image processor ({type(processor).__name__}) is not the AMLPF multi-view "
            "processor (no crop geometry); pass an AMLPF-CLIP student or teacher checkpoint."
        )
    return model.eval(), processor


def class_names_of(model: Any) -> list[str]:
    return [str(model.config.id2label[index]) for index in range(model.config.num_labels)]


def level_names_of(model: Any) -> list[str]:
    """The student's prompt levels (the rows of `level_logits`); none for the teacher."""
    return [str(level) for level in (getattr(model.config, "prompt_levels", None) or [])]


def csv_columns(class_names: Sequence[str], level_names: Sequence[str] = (), with_labels: bool = False) -> list[str]:
    """Columns of predictions.csv: path, the fused prediction, the true `label` (when the input carries labels),
    one probability per class, the global view's prediction, each prompt level's prediction (students), the
    overlay file and the error (empty when fine)."""
    columns = ["path", "prediction"] + (["label"] if with_labels else []) + ["probability"]
    columns += [f"prob_{name}" for name in class_names]
    columns += ["pred_global_view", "prob_global_view"]
    for level in level_names:
        columns += [f"pred_level_{level}", f"prob_level_{level}"]
    return columns + ["overlay", "error"]


# ----------------------------------------------------------------------------------------------------------
# Overlays
# ----------------------------------------------------------------------------------------------------------


def class_colors(count: int) -> list[tuple[float, float, float, float]]:
    """One distinct colour per class: tab10, tab20, then evenly spaced hues."""
    import matplotlib

    if count <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(index) for index in range(count)]
    if count <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(index) for index in range(count)]
    cmap = matplotlib.colormaps["hsv"]
    return [cmap(index / count) for index in range(count)]


def render_overlay(
    image: np.ndarray,
    size: tuple[int, int],
    boxes: Sequence[tuple[float, float, float, float]],
    class_names: Sequence[str],
    probabilities: np.ndarray,
    view_probabilities: np.ndarray | None = None,
    level_probabilities: np.ndarray | None = None,
    level_names: Sequence[str] = (),
    title: str = "",
):
    """A matplotlib Figure (Agg canvas, no display): the image with each crop window at its box, edged in the
    colour of that crop's own predicted class and numbered; the whole image framed (dashed) in the colour of the
    global view's class; a class legend; the fused probabilities as bars; and what the fused prediction, the
    global view, each crop and each prompt level said, with probabilities.

    `image` may be a downsized preview: it is drawn over the original `size` (height, width) so that `boxes`
    (original pixels, see `crop_boxes`) land where the crops were cut. `view_probabilities` is (V, C) with the
    crops first and the global view last; `level_probabilities` is (L, C) in the order of `level_names`.
    Fixed axes positions and plain text rows (no layout engine, no table) keep one figure cheap to draw.
    """
    from .fonts import fonts_for

    with fonts_for([*map(str, class_names), title]):
        return _render_overlay(image, size, boxes, class_names, probabilities, view_probabilities,
                               level_probabilities, level_names, title)


def _render_overlay(image, size, boxes, class_names, probabilities, view_probabilities, level_probabilities,
                    level_names, title):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    height, width = size
    colors = class_colors(len(class_names))
    probabilities = np.asarray(probabilities, dtype=float)
    fused = int(probabilities.argmax())
    crop_probabilities = None if view_probabilities is None else np.asarray(view_probabilities)[: len(boxes)]
    global_probabilities = None if view_probabilities is None else np.asarray(view_probabilities)[-1]

    figure = Figure(figsize=(12, 6.4), dpi=100)
    FigureCanvasAgg(figure)
    figure.suptitle(f"{title}\nprediction: {class_names[fused]} ({probabilities[fused]:.3f})", fontsize=11)

    image_axes = figure.add_axes((0.01, 0.1, 0.56, 0.76))
    image_axes.imshow(image, extent=(0, width, height, 0), interpolation="antialiased")
    for number, (left, top, right, bottom) in enumerate(boxes, start=1):
        if crop_probabilities is None:
            color = (0.5, 0.5, 0.5, 1.0)
        else:
            color = colors[int(crop_probabilities[number - 1].argmax())]
        image_axes.add_patch(
            Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=color, linewidth=2.0,
                      label=f"crop {number}")
        )
        image_axes.text(left + 2, top + 2, str(number), color="white", fontsize=8, va="top", ha="left",
                        bbox={"facecolor": color, "edgecolor": "none", "pad": 1.0})
    if global_probabilities is not None:
        image_axes.add_patch(
            Rectangle((0, 0), width, height, fill=False, linestyle="--", linewidth=4.0, label="global view",
                      edgecolor=colors[int(global_probabilities.argmax())])
        )
    image_axes.set_xlim(0, width)
    image_axes.set_ylim(height, 0)
    image_axes.set_axis_off()
    image_axes.set_title(f"{width}x{height} px; numbered boxes: the crops, in the colour of their own prediction; "
                         "dashed frame: the global view", fontsize=8)
    handles = [Patch(facecolor=color, edgecolor="none", label=name) for name, color in zip(class_names, colors)]
    image_axes.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=min(4, len(handles)),
                      fontsize=8, frameon=False)

    bar_axes = figure.add_axes((0.74, 0.66, 0.23, 0.2))
    positions = np.arange(len(class_names))
    bar_axes.barh(positions, probabilities, color=colors, label="fused")
    if global_probabilities is not None:
        bar_axes.scatter(global_probabilities, positions, marker="|", s=150, color="black", label="global view")
        bar_axes.legend(fontsize=7, loc="lower right", frameon=False)
    bar_axes.set_yticks(positions, list(class_names), fontsize=8)
    bar_axes.invert_yaxis()
    bar_axes.set_xlim(0, 1)
    bar_axes.tick_params(axis="x", labelsize=7)
    bar_axes.set_title("probabilities", fontsize=9)

    rows: list[tuple[str, np.ndarray]] = [("fused (image)", probabilities)]
    if global_probabilities is not None:
        rows.append(("global view", global_probabilities))
    if crop_probabilities is not None:
        rows += [(f"crop {number}", crop) for number, crop in enumerate(crop_probabilities, start=1)]
    if level_probabilities is not None:
        rows += [(f"prompt level {name}", level) for name, level in zip(level_names, level_probabilities, strict=True)]
    step = min(0.035, 0.55 / (len(rows) + 1))
    top = 0.58
    for x, header in ((0.62, "what said it"), (0.78, "predicted class"), (0.93, "p")):
        figure.text(x, top, header, fontsize=8, fontweight="bold", va="center")
    for row, (name, p) in enumerate(rows, start=1):
        y = top - row * step
        best = int(p.argmax())
        figure.text(0.62, y, name, fontsize=8, va="center")
        figure.text(0.78, y, class_names[best], fontsize=8, va="center",
                    bbox={"facecolor": (*colors[best][:3], 0.35), "edgecolor": "none", "pad": 1.0})
        figure.text(0.93, y, f"{float(p[best]):.3f}", fontsize=8, va="center", family="monospace")
    return figure


def write_overlay(path: str | os.PathLike, kwargs: dict) -> str:
    """Render one overlay (`render_overlay(**kwargs)`) to a PNG file; a top-level function so that worker
    processes can run it."""
    render_overlay(**kwargs).savefig(path)
    return os.fspath(path)


def default_overlay_processes(overlay_count: int, num_workers: int) -> int:
    """Processes that draw overlays: none (one background thread) for a few overlays or few cores, else the
    cores the DataLoader workers leave, at most 8. Drawing one costs about as much as a 9-view forward pass of
    a large model on a GPU, so many overlays need many cores to keep up."""
    spare = (os.cpu_count() or 1) - num_workers - 1
    return 0 if overlay_count <= 32 or spare < 2 else min(8, spare)


class _OverlayWriter:
    """Draws overlays beside inference: on one background thread (`processes=0`) or in a pool of spawned
    processes. At most `max_pending` previews wait in memory; submitting beyond waits for the oldest, which
    also raises the first drawing error."""

    def __init__(self, processes: int = 0, max_pending: int = 16):
        self.written = 0
        self._pending: collections.deque[Future] = collections.deque()
        self._max_pending = max(max_pending, 2 * processes)
        if processes > 0:
            self._executor: Executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        else:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="amlpf-overlays")

    def submit(self, path: Path, **kwargs) -> None:
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
            self.written += 1
        self._pending.append(self._executor.submit(write_overlay, path, kwargs))

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the overlays still drawing (or, when an error ends the run, drop them)."""
        try:
            while raise_errors and self._pending:
                self._pending.popleft().result()
                self.written += 1
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)


def choose_overlays(
    predictions: Sequence[int | None], count: int, labels: Sequence[int | None] | None = None,
    confidences: Sequence[float] | None = None,
) -> list[int]:
    """Indices of the `count` images to draw, in input order: spread across the predicted classes (one of each
    predicted class in turn), and, when true labels are known, the mistakes first (the most confident mistakes
    first), then correct predictions. Images without a prediction (unreadable) are never chosen."""
    confidences = list(confidences) if confidences is not None else [0.0] * len(predictions)
    known = labels is not None
    candidates = [i for i, p in enumerate(predictions) if p is not None]
    mistakes = [i for i in candidates if known and labels[i] is not None and labels[i] != predictions[i]]
    wrong = set(mistakes)
    rest = [i for i in candidates if i not in wrong]
    chosen: list[int] = []
    for group, by_confidence in ((mistakes, True), (rest, False)):
        by_class: dict[int, list[int]] = {}
        for i in sorted(group, key=lambda i: -confidences[i]) if by_confidence else group:
            by_class.setdefault(int(predictions[i]), []).append(i)
        queues = [by_class[c] for c in sorted(by_class)]
        while len(chosen) < count and any(queues):
            for queue in queues:
                if queue and len(chosen) < count:
                    chosen.append(queue.pop(0))
        if len(chosen) >= count:
            break
    return sorted(chosen)


def overlay_name(index: int, path: str, total: int) -> str:
    """`<index>_<file stem>.png`: unique even when two folders hold files of the same name."""
    digits = max(5, len(str(total)))
    stem = printable_path(Path(path).stem).replace("\\", "")  # undecodable bytes as `xe9`: a UTF-8 name
    return f"{index:0{digits}d}_{stem}.png"


def overlay_title(path: str, label: str | None = None) -> str:
    """An overlay's title: the file, and its true class when known."""
    return path if label is None else f"{path}\ntrue class: {label}"


def _draw_chosen_overlays(
    rows: list[dict], drawn: dict[int, dict], paths: Sequence[str], labels: Sequence[str | None] | None,
    class_names: Sequence[str], level_names: Sequence[str], processor: Any, count: int, overlay_dir: Path,
    overlays: _OverlayWriter,
) -> None:
    """Choose `count` of the predicted images (`choose_overlays`), decode their previews again and submit their
    overlays; fills the `overlay` column of their rows."""
    index_of = {name: i for i, name in enumerate(class_names)}
    predictions = [index_of.get(row["prediction"]) if row["prediction"] else None for row in rows]
    true = None if labels is None else [index_of.get(label, -1) if label is not None else None for label in labels]
    confidences = [float(row["probability"]) if row["probability"] else 0.0 for row in rows]
    for index in choose_overlays(predictions, count, true, confidences):
        preview = to_rgb(paths[index], convert=getattr(processor, "do_convert_rgb", True))
        preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        name = overlay_name(index, paths[index], len(paths))
        rows[index]["overlay"] = f"overlays/{name}"
        facts = drawn[index]
        height, width = facts["size"]
        overlays.submit(
            overlay_dir / name, image=np.asarray(preview), boxes=crop_boxes(processor, height, width),
            class_names=class_names, level_names=level_names,
            title=overlay_title(printable_path(paths[index]), None if labels is None else labels[index]), **facts,
        )


def label_summary(rows: Sequence[Mapping[str, str]], class_names: Sequence[str]) -> dict:
    """Accuracy over the rows with a true label and a prediction, overall and per true class (the recall of
    each class): `{"num_labelled", "accuracy", "per_class_accuracy": {class: {"images", "correct",
    "accuracy"}}}`; a class without labelled images has accuracy None."""
    per_class = {name: {"images": 0, "correct": 0} for name in class_names}
    for row in rows:
        if row.get("label") and row.get("prediction"):
            entry = per_class.setdefault(row["label"], {"images": 0, "correct": 0})
            entry["images"] += 1
            entry["correct"] += int(row["prediction"] == row["label"])
    for entry in per_class.values():
        entry["accuracy"] = entry["correct"] / entry["images"] if entry["images"] else None
    total = sum(entry["images"] for entry in per_class.values())
    correct = sum(entry["correct"] for entry in per_class.values())
    return {"num_labelled": total, "accuracy": correct / total if total else None, "per_class_accuracy": per_class}


# ----------------------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------------------


def _softmax(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.float().softmax(dim=-1).cpu().numpy()


def predict_files(
    model: Any,
    processor: Any,
    paths: Sequence[str],
    output_dir: str | os.PathLike,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    precision: str = "auto",
    max_overlays: int | None = None,
    overlay_processes: int | None = None,
    strict: bool = False,
    model_name: str | None = None,
    skipped: Sequence[str] = (),
    progress: bool = True,
    labels: Sequence[str | None] | None = None,
) -> dict:
    """Predict every path; write `predictions.csv`, `summary.json` and `overlays/*.png` to `output_dir`.

    Probabilities are the softmax of the model's fused `logits` in fp32 (the model itself may run under bf16
    autocast, see `autocast_dtype`). `max_overlays`: overlays for N images (None: all, 0: none) chosen by
    `choose_overlays` (across the predicted classes, mistakes first when labels are known), drawn by
    `overlay_processes` processes (0: one background thread; None: `default_overlay_processes`). `labels`: the
    true class name of each path (None where unknown, e.g. from `find_images` with a split file): adds a
    `label` column to predictions.csv and the per-class accuracy to summary.json.
    An unreadable file gets a row with an empty prediction and the reason in `error`, and the run goes on;
    `strict=True` raises `UnreadableImageError` instead (so does a run where no file could be read, after
    writing the CSV and the summary). Paths whose bytes are not UTF-8 are written with `\\x..` escapes.
    Returns the summary (also written as JSON).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise PredictionInputError(f"--batch_size must be >= 1, got {batch_size}.")
    if num_workers < 0:
        raise PredictionInputError(f"--num_workers must be >= 0, got {num_workers}.")
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = autocast_dtype(device, precision)
    output_dir = Path(output_dir)
    overlay_dir = output_dir / "overlays"
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = list(paths)
    if labels is not None and len(labels) != len(paths):
        raise PredictionInputError(f"{len(labels)} labels for {len(paths)} images: give one label (or None) per path.")
    labelled = labels is not None and any(label is not None for label in labels)
    overlay_count = len(paths) if max_overlays is None or max_overlays < 0 else min(int(max_overlays), len(paths))
    # Drawing only some images: chosen after inference (across classes, mistakes first), so rows wait until then.
    choose_later = 0 < overlay_count < len(paths)
    if overlay_count:
        overlay_dir.mkdir(exist_ok=True)

    class_names = class_names_of(model)
    level_names = level_names_of(model)
    columns = csv_columns(class_names, level_names, with_labels=labelled)
    model = model.to(device).eval()
    loader = DataLoader(
        ImageFileDataset(paths, processor, preview_count=0 if choose_later else overlay_count),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
    )
    counts = dict.fromkeys(class_names, 0)
    failures: list[dict] = []
    if overlay_processes is None:
        overlay_processes = default_overlay_processes(overlay_count, num_workers)
    overlays = _OverlayWriter(processes=overlay_processes if overlay_count else 0)
    start = time.perf_counter()
    finished = False
    rows: list[dict] = []  # every row, in input order (written at the end when overlays are chosen later)
    drawn: dict[int, dict] = {}  # what an overlay needs of each predicted image, when they are chosen later
    try:
        csv_file = open(output_dir / "predictions.csv", "w", newline="", encoding="utf-8", errors="backslashreplace")
        with csv_file as handle, tqdm(total=len(paths), unit="img", desc="predict", disable=not progress) as bar:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for batch in loader:
                outputs = None
                if batch["pixel_values"] is not None:
                    pixel_values = batch["pixel_values"].to(device, non_blocking=True)
                    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
                    with torch.inference_mode(), autocast:
                        outputs = model(pixel_values=pixel_values)
                    probs = _softmax(outputs.logits)
                    view_probs = _softmax(getattr(outputs, "view_logits", None))
                    level_probs = _softmax(getattr(outputs, "level_logits", None))
                row_in_batch = 0
                for item in batch["items"]:
                    path = paths[item["index"]]
                    row = dict.fromkeys(columns, "")
                    row["path"] = printable_path(path)  # a name that is not UTF-8 is shown escaped, never fatal
                    if item["error"]:
                        if strict:
                            raise UnreadableImageError(
                                f"cannot read {row['path']}: {item['error']} (without --strict unreadable files are "
                                "reported in predictions.csv and the run goes on)"
                            )
                        row["error"] = item["error"]
                        failures.append({"path": row["path"], "error": item["error"]})
                        if labelled:
                            row["label"] = labels[item["index"]] or ""
                        rows.append(row)
                        if not choose_later:
                            writer.writerow(row)
                        continue
                    p = probs[row_in_batch]
                    views = None if view_probs is None else view_probs[row_in_batch]
                    levels = None if level_probs is None else level_probs[row_in_batch]
                    row_in_batch += 1
                    best = int(p.argmax())
                    counts[class_names[best]] += 1
                    row["prediction"] = class_names[best]
                    if labelled:
                        row["label"] = labels[item["index"]] or ""
                    row["probability"] = f"{p[best]:.6g}"
                    for name, value in zip(class_names, p, strict=True):
                        row[f"prob_{name}"] = f"{value:.6g}"
                    if views is not None:
                        row["pred_global_view"] = class_names[int(views[-1].argmax())]
                        row["prob_global_view"] = f"{views[-1].max():.6g}"
                    if levels is not None:
                        for level, level_p in zip(level_names, levels, strict=True):
                            row[f"pred_level_{level}"] = class_names[int(level_p.argmax())]
                            row[f"prob_level_{level}"] = f"{level_p.max():.6g}"
                    if choose_later:
                        drawn[item["index"]] = dict(size=item["size"], probabilities=p, view_probabilities=views,
                                                    level_probabilities=levels)
                    if item["preview"] is not None:
                        name = overlay_name(item["index"], path, len(paths))
                        row["overlay"] = f"overlays/{name}"
                        height, width = item["size"]
                        overlays.submit(
                            overlay_dir / name,
                            image=item["preview"], size=item["size"], boxes=crop_boxes(processor, height, width),
                            class_names=class_names, probabilities=p, view_probabilities=views,
                            level_probabilities=levels, level_names=level_names,
                            title=overlay_title(row["path"], labels[item["index"]] if labelled else None),
                        )
                    rows.append(row)
                    if not choose_later:
                        writer.writerow(row)
                bar.update(len(batch["items"]))
            if choose_later:
                _draw_chosen_overlays(
                    rows, drawn, paths, labels if labelled else None, class_names, level_names, processor,
                    overlay_count, overlay_dir, overlays,
                )
                writer.writerows(rows)
        seconds = time.perf_counter() - start
        finished = True
    finally:
        overlays.close(raise_errors=finished)
    total_seconds = time.perf_counter() - start

    predicted = len(paths) - len(failures)
    summary = {
        "model": model_name,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "kind": "student" if level_names else "teacher",
        "class_names": class_names,
        "prompt_levels": level_names,
        "device": str(device),
        "precision": "bf16" if dtype is not None else "fp32",
        "batch_size": batch_size,
        "num_workers": num_workers,
        "num_images": len(paths),
        "num_predicted": predicted,
        "num_failed": len(failures),
        "counts": counts,
        **(label_summary(rows, class_names) if labelled else {}),
        "failures": failures,
        "skipped_files": {"count": len(skipped), "examples": list(map(printable_path, list(skipped)[:SAMPLE_LIMIT]))},
        "overlays": overlays.written,
        "overlay_processes": overlay_processes,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(paths) / seconds, 2) if seconds > 0 else None,
        "seconds_with_overlays": round(total_seconds, 3),
        "outputs": {"predictions": "predictions.csv", "overlays": "overlays/" if overlay_count else None},
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if predicted == 0:
        raise UnreadableImageError(
            f"none of the {len(paths)} images could be read (first: {failures[0]['path']}: {failures[0]['error']}); "
            f"see {output_dir / 'predictions.csv'} and summary.json"
        )
    return summary


__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFileDataset",
    "ImageInputs",
    "PredictionInputError",
    "UnreadableImageError",
    "autocast_dtype",
    "choose_overlays",
    "class_colors",
    "collate_items",
    "crop_boxes",
    "csv_columns",
    "default_overlay_processes",
    "find_images",
    "label_summary",
    "load_model_and_processor",
    "predict_files",
    "read_csv_paths",
    "read_split_entries",
    "read_split_paths",
    "render_overlay",
    "resolve_device",
    "write_overlay",
]
