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
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import huggingface_hub
import torch
import transformers

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


# Rank and world size come from the launcher's variables, not accelerate's PartialState: PartialState() would
# initialise the process group before the arguments are checked (a bad flag would then wait for every rank to
# connect) and would fix the backend and timeout before TrainingArguments (--ddp_backend, --ddp_timeout) set them.
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
        else:  # a run in the same process after one with --disable_tqdm draws its bars again
            transformers.utils.logging.enable_progress_bar()
            huggingface_hub.utils.enable_progress_bars()
            datasets.enable_progress_bars()
    if not main:
        huggingface_hub.utils.logging.set_verbosity(logging.ERROR)


WATCHDOG_INTERVAL_S = 1.0


def start_launcher_watchdog(interval_s: float = WATCHDOG_INTERVAL_S) -> threading.Thread | None:
    """In a process started by a launcher (``accelerate launch``, ``torchrun``: ``LOCAL_RANK`` is set), end this
    process when the launcher dies. A launcher stops its workers when it is interrupted or one of them fails, but a
    launcher killed outright (SIGKILL, a crashed session) leaves them training to the end, writing into the output
    folder that a new run may already use. A daemon thread polls the parent pid; when the process is re-parented
    it sends itself SIGTERM (the default action ends it at once, also inside native code). Not started for a
    process run directly (``nohup python train_teacher.py ...`` outlives its shell on purpose).
    (``prctl(PR_SET_PDEATHSIG)`` is not used: it fires when the parent *thread* that started the process ends.)"""
    parent = os.getppid()
    if "LOCAL_RANK" not in os.environ and not _is_launcher(parent):
        return None
    if parent == 1:  # the launcher died before this process got here
        os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                print(f"[rank {process_rank()}] the launcher (pid {parent}) is gone: stopping", file=sys.stderr,
                      flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="amlpf-launcher-watchdog", daemon=True)
    thread.start()
    return thread


def _is_launcher(pid: int) -> bool:
    """Whether process ``pid`` is ``accelerate launch`` or ``torchrun`` (Linux: its command line), which start a
    single process without ``LOCAL_RANK``."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    names = {os.path.basename(word) for word in words[:3]}
    return bool(names & {"torchrun", "torch.distributed.run"}) or (
        bool({"accelerate", "accelerate.commands.launch", "accelerate.commands.accelerate_cli"} & names)
        and "launch" in " ".join(words[:4])
    )


def run_cli(main: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Run a script's ``main(argv)``; a user error (:data:`USER_ERRORS`) becomes one message on stderr (once per
    launch, see :func:`report_user_error`) and exit code 2, and so does a full disk (the path named, see
    ``run_files.disk_full_message``). ``AMLPF_TRACEBACK=1`` re-raises them with their traceback. A worker of a
    launcher stops when the launcher dies (:func:`start_launcher_watchdog`)."""
    from .run_files import disk_full_message  # local: run_lock imports this module
    from .run_lock import held_folder, release_all

    argv = sys.argv[1:] if argv is None else argv
    start_launcher_watchdog()
    prog = os.path.basename(sys.argv[0]) or "amlpf"
    traceback = os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes")
    try:
        main(argv)
    except (*USER_ERRORS, pickle.UnpicklingError) as err:
        if traceback:
            raise
        # A weights file that weights_only refuses (a checkpoint's pytorch_model.bin): the user's file, not a bug.
        message = refused_pickle_message(err) if isinstance(err, pickle.UnpicklingError) else err
        report_user_error(f"{prog}: error: {message}")
        return 2
    except Exception as err:  # OSError, torch's RuntimeError, safetensors' SafetensorError: a full disk?
        try:
            message = disk_full_message(err, held_folder())
        except Exception:  # never hide the error itself
            message = None
        if message is None or traceback:
            raise
        report_user_error(f"{prog}: error: {message}")
        return 2
    finally:
        release_all()  # the run is over: its output folder is free
    return 0
