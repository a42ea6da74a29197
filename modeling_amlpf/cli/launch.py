"""How a training script runs as a process: which process speaks, how logging is set up, and how a user's
mistake ends the run (one message, exit code 2, no traceback; once, not once per ``accelerate launch`` process).

Launchers (``accelerate launch``, ``torchrun``) describe the run in environment variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``); these helpers read them before ``TrainingArguments`` sets up
the devices, so that argument checks can speak on one process only and correct a launch before it starts.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
from collections.abc import Callable

import torch

from ..data import DataLayoutError
from ..pretrained.weights import HubAccessError, refused_pickle_message
from ..utils import UserError

TRACEBACK_ENV = "AMLPF_TRACEBACK"
# How long a process other than the main one waits before it reports a user error itself. Every process of a
# launch parses the same arguments and reads the same files, so the main process normally fails the same way at
# the same moment, prints, exits, and the launcher stops the others (SIGTERM) during this wait: one message.
# An error that only this process meets is still reported, after the wait, marked with its rank.
REPLICA_GRACE_S = 5.0


# Exceptions that mean "the input is wrong" rather than "the code is wrong": a missing or unexpected file or
# folder, a dataset folder in the wrong layout (DataLayoutError, BadImageError), weights the Hub will not give
# (gated, not found, offline: HubAccessError), a weights file that is not a plain state dict (WeightsFileError, a
# UserError; `run_cli` also treats the UnpicklingError of a refused pickle so). Their messages name the file and
# the fix, so a traceback adds nothing. Anything else (ValueError included) keeps its traceback: it may be a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    DataLayoutError,
    HubAccessError,
    UserError,
)


def process_rank() -> int:
    """This process's global rank as the launcher set it (0 when not launched)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def is_main_process() -> bool:
    """True on the process that prints (rank 0, or the only process)."""
    return process_rank() == 0


def launched_world_size() -> int:
    """Number of processes the launcher started (``WORLD_SIZE``; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_world_size() -> int:
    """Number of processes the launcher started on this machine."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)


def has_accelerator() -> bool:
    """Whether torch sees an accelerator (CUDA, XPU, MPS, ...) that the Trainer would use."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def report_user_error(message: str) -> None:
    """Print a user error once per launch: at once on the main process, on the others only if they are still
    running after :data:`REPLICA_GRACE_S` (the main process did not meet it), marked with their rank."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)
        return
    time.sleep(REPLICA_GRACE_S)
    print(f"[rank {process_rank()}] {message}", file=sys.stderr, flush=True)


def setup_logging(training_args=None) -> None:
    """Log format and levels as in the Hugging Face example scripts: INFO on the main process, warnings only
    on the other processes (``--log_level``/``--log_level_replica`` once ``training_args`` are known), so each
    message of an ``accelerate launch`` run appears once. Replicas also silence huggingface_hub's retries."""
    import datasets
    import huggingface_hub
    import transformers

    if training_args is None:
        level = logging.INFO if is_main_process() else logging.WARNING
    else:
        level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logging.getLogger().setLevel(level)
    if training_args is not None:
        transformers.utils.logging.set_verbosity(level)
        datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    if not is_main_process():
        huggingface_hub.utils.logging.set_verbosity(logging.ERROR)


def run_cli(main: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Run a script's ``main(argv)``; a user error (:data:`USER_ERRORS`) becomes one message on stderr (once per
    launch, see :func:`report_user_error`) and exit code 2. ``AMLPF_TRACEBACK=1`` re-raises it with its traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        main(argv)
    except (*USER_ERRORS, pickle.UnpicklingError) as err:
        if os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
            raise
        # A weights file that weights_only refuses (a checkpoint's pytorch_model.bin): the user's file, not a bug.
        message = refused_pickle_message(err) if isinstance(err, pickle.UnpicklingError) else err
        report_user_error(f"{os.path.basename(sys.argv[0]) or 'amlpf'}: error: {message}")
        return 2
    return 0
