#!/usr/bin/env python
"""Predict with a trained AMLPF-CLIP student or teacher on image files, folders or a CSV column of paths.

    python predict.py --model outputs/lunghist700/student path/to/images_or_dirs ... --output_dir preds/
    python predict.py --model you/amlpf-student --csv tiles.csv --path_column path --output_dir preds/
    python predict.py --model outputs/demo/student --split_file outputs/demo/student/split.json  # its test part

Writes to --output_dir: `predictions.csv` (one row per image: path, predicted class, one `prob_<class>` column
per class, the global view's and, for students, each prompt level's prediction, the overlay file, an error
column), `summary.json` (counts per predicted class, failures, images/s, model, device) and `overlays/*.png`
(the image with its 8 crop windows coloured by their own predicted class, and what every view and prompt level
said). Unreadable files are reported in the CSV and the run goes on (`--strict` stops instead).

Boolean flags take an optional value (`--strict`, `--strict True`): put them after the image paths, or end them
with `--`, so that a path is not read as their value.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

import modeling_amlpf  # noqa: F401  (registers the Auto classes: checkpoints load without trust_remote_code)
from modeling_amlpf.evaluation.prediction import (
    PRECISIONS,
    PredictionInputError,
    UnreadableImageError,
    find_images,
    load_model_and_processor,
    predict_files,
    resolve_device,
)

logger = logging.getLogger("predict")


@dataclass
class PredictionArguments:
    """Flags of predict.py (image files and folders are positional arguments)."""

    model: str = field(metadata={"help": "Checkpoint folder (a student or teacher output_dir) or Hub id."})
    output_dir: str = field(
        default="predictions", metadata={"help": "Where predictions.csv, summary.json and overlays/ are written."}
    )
    csv: str | None = field(
        default=None,
        metadata={"help": "A CSV file listing images (relative paths are relative to the CSV's folder)."},
    )
    path_column: str = field(default="path", metadata={"help": "The --csv column that holds the image paths."})
    split_file: str | None = field(
        default=None,
        metadata={"help": "A split.json written by the training scripts: predict the images of one of its parts."},
    )
    split_part: str = field(
        default="test",
        metadata={"help": "The --split_file part to predict.", "choices": ["train", "validation", "test"]},
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Where the --split_file images are, when not at the data root recorded in it."},
    )
    batch_size: int = field(default=16, metadata={"help": "Images per forward pass (each has 9 views)."})
    num_workers: int | None = field(
        default=None,
        metadata={"help": "DataLoader workers that decode images and make views; None: min(4, CPU cores)."},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:1, ..."})
    precision: str = field(
        default="auto",
        metadata={"help": "auto: bf16 autocast on GPUs that support it, fp32 otherwise.", "choices": list(PRECISIONS)},
    )
    max_overlays: int | None = field(
        default=None,
        metadata={"help": "Overlay PNGs for N images, chosen across the predicted classes (mistakes first when a "
                          "--split_file gives the true labels); None: every image, 0: none."},
    )
    overlay_processes: int | None = field(
        default=None,
        metadata={"help": "Processes that draw overlays; 0: a background thread; None: the spare CPU cores (max 8)."},
    )
    strict: bool = field(
        default=False, metadata={"help": "Stop at the first unreadable file instead of reporting it in the CSV."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Let transformers run the code saved in a checkpoint whose model type this package does not "
                          "register; checkpoints of this package always load with the installed package's code."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        PredictionArguments,
        prog="predict.py",
        description=__doc__.split("\n\n")[0],
        epilog="Outputs: predictions.csv, summary.json, overlays/<index>_<name>.png.",
    )
    parser.add_argument(
        "inputs", nargs="*", metavar="IMAGE_OR_FOLDER",
        help="Image files and folders (searched recursively; OS clutter and hidden files are skipped).",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[PredictionArguments, list[str]]:
    """Flags and paths in any order (`parse_intermixed_args`), into the dataclass and the list of inputs."""
    parser = build_parser()
    namespace = vars(parser.parse_intermixed_args(argv))
    (args,) = parser.parse_dict(namespace, allow_extra_keys=True)
    return args, list(namespace["inputs"])


def main(argv: list[str] | None = None) -> int:
    args, inputs = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        found = find_images(
            inputs, args.csv, args.path_column, split_file=args.split_file, split_part=args.split_part,
            data_dir=args.data_dir,
        )
        device = resolve_device(args.device)
        model, processor = load_model_and_processor(args.model, trust_remote_code=args.trust_remote_code)
        num_workers = min(4, os.cpu_count() or 1) if args.num_workers is None else args.num_workers
        if found.skipped:
            logger.info(f"skipped {len(found.skipped)} file(s) that are not images (listed in summary.json)")
        logger.info(f"predicting {len(found.paths)} image(s) with {args.model} on {device}")
        summary = predict_files(
            model, processor, found.paths, args.output_dir,
            batch_size=args.batch_size, num_workers=num_workers, device=device, precision=args.precision,
            max_overlays=args.max_overlays, overlay_processes=args.overlay_processes, strict=args.strict,
            model_name=args.model, skipped=found.skipped, progress=args.progress, labels=found.labels,
        )
    except PredictionInputError as error:
        print(f"predict.py: error: {error}", file=sys.stderr)
        return 2
    except UnreadableImageError as error:
        print(f"predict.py: error: {error}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{name}: {count}" for name, count in summary["counts"].items())
    logger.info(
        f"{summary['num_predicted']} predicted, {summary['num_failed']} unreadable, "
        f"{summary['images_per_second']} images/s; {counts}"
    )
    written = os.path.join(args.output_dir, "predictions.csv")
    logger.info(f"wrote {written}, summary.json and {summary['overlays']} overlay(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
