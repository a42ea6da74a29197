"""How a training script runs as a process: which process speaks, how logging is set up, and how a user's
mistake ends the run (one message, exit code 2, no traceback; once, not once per ``accelerate launch`` process).

Launchers (``accelerate launch``, ``torchrun``) describe the run in environment variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``); these helpers read them before ``TrainingArguments`` sets up
the devices, so that argument checks can speak on one process only and correct a launch before it starts.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

import torch

from ..data import DataLayoutError
from ..pretrained.weights import HubAccessError
from ..utils import UserError

TRACEBACK_ENV = "AMLPF_TRACEBACK"
# How long a process other than the main one waits before it reports a user error itself. Every process of a
# launch parses the same arguments and reads the same files, so the main process normally fails the same way at
# the same moment, prints, exits, and the launcher stops the others (SIGTERM) during this wait: one message.
# An error that only this process meets is still reported, after the wait, marked with its rank.
REPLICA_GRACE_S = 5.0


# Exceptions that mean "the input is wrong" rather than "the code is wrong": a missing or unexpected file or
# folder, a dataset folder in the wrong layout (DataLayoutError, BadImageError), weights the Hub will not give
# (gated, not found, offline: HubAccessError). Their messages name the file and the fix, so a traceback adds
# nothing. Anything else (ValueError included) keeps its traceback: it may be a bug.
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


# The loggers of this project (the package and the scripts): INFO on the main process unless --log_level says
# otherwise, while the libraries keep their own level (transformers: warnings).
PROJECT_LOGGERS = ("modeling_amlpf", "train_teacher", "distill_student", "predict", "__main__")


def setup_logging(training_args=None) -> None:
    """Log format and levels of a launch, each message once: the main process logs this project's INFO lines and
    the libraries' warnings (``--log_level`` sets both); the other processes log errors only
    (``--log_level_replica``, default error in the scripts' protocol), since every process meets the same warnings;
    Python warnings go through logging, so they follow the same rule. With ``--disable_tqdm`` no progress bar of
    transformers (e.g. "Writing model shards"), datasets or huggingface_hub is drawn."""
    import datasets
    import huggingface_hub
    import transformers

    main = is_main_process()
    if training_args is None:
        level = logging.INFO if main else logging.ERROR
        ours = level
    else:
        level = training_args.get_process_log_level()
        chosen = training_args.log_level if main else training_args.log_level_replica
        ours = logging.INFO if main and chosen == "passive" else level
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logging.getLogger().setLevel(level)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(ours)
    logging.captureWarnings(True)
    if training_args is not None:
        transformers.utils.logging.set_verbosity(level)
        datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
        if training_args.disable_tqdm:
            transformers.utils.logging.disable_progress_bar()
            huggingface_hub.utils.disable_progress_bars()
            datasets.disable_progress_bars()
    if not main:
        huggingface_hub.utils.logging.set_verbosity(logging.ERROR)


def run_cli(main: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Run a script's ``main(argv)``; a user error (:data:`USER_ERRORS`) becomes one message on stderr (once per
    launch, see :func:`report_user_error`) and exit code 2. ``AMLPF_TRACEBACK=1`` re-raises it with its traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        main(argv)
    except USER_ERRORS as err:
        if os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
            raise
        report_user_error(f"{os.path.basename(sys.argv[0]) or 'amlpf'}: error: {err}")
        return 2
    return 0
