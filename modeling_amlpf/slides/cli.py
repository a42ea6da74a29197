"""`python -m modeling_amlpf.export wsinfer --model DIR --output_dir OUT --spacing_um_px S [--patch_size_pixels N]`.

Writes a WSInfer model (config.json, torchscript_model.pt, README.md) from a trained teacher or student and, with
--push_to_hub, uploads that layout to a Hub model repository (--hub_model_id, default: the output folder's name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers.hf_argparser import string_to_bool

from ..utils import UserError
from .wsinfer_export import export_wsinfer, push_wsinfer_export

COMMANDS = ("wsinfer",)
# boolean flags as the training scripts take them (HfArgumentParser): `--push_to_hub` or `--push_to_hub True`
FLAG = {"type": string_to_bool, "nargs": "?", "const": True, "default": False}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m modeling_amlpf.export", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{wsinfer}")
    wsinfer = commands.add_parser(
        "wsinfer", help="a WSInfer / QuPath model (TorchScript + config.json + README)",
        description="Export a trained AMLPF teacher or student as a WSInfer model.",
    )
    wsinfer.add_argument("--model", required=True, help="checkpoint folder (save_pretrained output) or Hub id")
    wsinfer.add_argument("--output_dir", required=True, help="folder for config.json, torchscript_model.pt, README.md")
    wsinfer.add_argument(
        "--spacing_um_px", type=float, default=None,
        help="micrometres per pixel of the training images; default: the documented value of the checkpoint's "
        "dataset (split.json), refused when none is documented",
    )
    wsinfer.add_argument(
        "--patch_size_pixels", type=int, default=None,
        help="tile side in pixels; default: the size of the (square) training images listed by split.json",
    )
    wsinfer.add_argument("--trust_remote_code", **FLAG, help="load the checkpoint's own code")
    wsinfer.add_argument("--push_to_hub", **FLAG, help="upload the WSInfer files to the Hub")
    wsinfer.add_argument("--hub_model_id", default=None, help="Hub repository (default: the output folder's name)")
    wsinfer.add_argument("--hub_private_repo", **FLAG, help="create the Hub repository as private")
    wsinfer.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hub_model_id = args.hub_model_id or (Path(args.output_dir).resolve().name if args.push_to_hub else None)
    try:
        result = export_wsinfer(
            args.model, args.output_dir, spacing_um_px=args.spacing_um_px, patch_size_pixels=args.patch_size_pixels,
            trust_remote_code=args.trust_remote_code, hub_model_id=hub_model_id,
        )
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = result.config
    print(f"WSInfer model written to {result.output_dir}: {', '.join(path.name for path in result.files)}")
    print(f"  {config['num_classes']} classes, {config['patch_size_pixels']} px tiles ({result.patch_size_source})")
    print(f"  spacing {config['spacing_um_px']:g} um/px ({result.spacing_source})")
    print(f"  max probability difference to AutoModel + processor: {result.max_probability_difference:.2e}")
    print(f"  run: wsinfer run -i SLIDES -o RESULTS -c {result.output_dir / 'config.json'} "
          f"-p {result.output_dir / 'torchscript_model.pt'}")
    if args.push_to_hub:
        repo_id = push_wsinfer_export(
            result.output_dir, hub_model_id, private=args.hub_private_repo or None, token=args.hub_token
        )
        print(f"  uploaded to https://huggingface.co/{repo_id}")
    return 0
