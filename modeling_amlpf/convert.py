"""`python -m modeling_amlpf.convert`: OpenAI / open_clip checkpoints to students (`pretrained.convert`)."""

import sys

from .cli.launch import run_cli
from .pretrained import convert as _impl

main = _impl.main

if __name__ == "__main__":
    sys.exit(run_cli(main))  # a missing or refused weights file: one message and exit code 2
