"""One training run per output folder, held for the whole run by every process of a launch.

Two runs into one ``--output_dir`` mix silently: each one's checkpoint rotation deletes the other's checkpoints,
and the final weights, state and results come from different runs. So a training run holds ``_amlpf_run.lock`` in
its output folder (the root folder with ``--split_seeds``), which names the holder: pid, host, start time, command
and the launch it belongs to. The main process creates it and keeps an exclusive ``fcntl.flock`` on it until it
exits; the kernel drops that lock when the process dies, however it dies, so a lock file nobody holds is stale (a
killed run) and is taken over with a warning naming the dead holder. A second run finds the lock held and is
refused at once, naming the holder. The other processes of the same launch (``accelerate launch``, ``torchrun``)
share the main process's lock: they wait until the file names their launch (same rendezvous address, port and run
id) and refuse to run when it names another one. The leading ``_`` keeps the file out of the Trainer's and the
project's pushes to the Hub.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from transformers.utils import logging

from ..utils import UserError
from .launch import is_main_process, launched_world_size

try:  # POSIX; elsewhere the file alone marks the run (no stale-lock detection)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.get_logger(__name__)

LOCK_NAME = "_amlpf_run.lock"
REPLICA_WAIT_S = 120.0  # how long the other processes of a launch wait for the main process to take the lock
_held: dict[Path, RunLock] = {}  # the folders this process holds, in the order taken


def launch_id() -> str:
    """What the processes of one launch share and no concurrent launch does: the rendezvous address and port
    (bound by the launch while it runs) and torchelastic's run id; a process not launched is its own launch."""
    if launched_world_size() > 1 or "LOCAL_RANK" in os.environ:
        keys = ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
        return "launch:" + "/".join(os.environ.get(key, "") for key in keys)
    return f"process:{socket.gethostname()}:{os.getpid()}"


def describe_holder(info: dict) -> str:
    """'pid 123 on host h, started 2026-12-06 10:00:00 UTC (python train_teacher.py ...)'."""
    text = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
    command = info.get("command")
    return f"{text} ({command})" if command else text


def read_lock(path: str | Path) -> dict | None:
    """The holder's description in a lock file (None when there is none or it is unreadable)."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return info if isinstance(info, dict) else None


class RunLock:
    """The lock of one output folder (module docstring). ``acquire()`` on the main process, ``join()`` on the
    others; ``release()`` (also at exit) removes the file."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``UserError`` naming the live holder; a stale lock is taken over with a warning.
        A process that already holds the folder (a second run in one Python session) keeps its lock."""
        if self.folder.resolve() in _held:
            return _held[self.folder.resolve()]
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # retried only when another run replaced the file between our open and our lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not self._lock(fd):
                os.close(fd)
                holder = read_lock(self.path) or {}
                raise UserError(
                    f"--output_dir {self.folder} is in use by another run: {describe_holder(holder)}. Wait for it to "
                    f"end or stop it, or choose another --output_dir (two runs in one folder delete each other's "
                    f"checkpoints)"
                )
            try:
                same_file = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the holder released (removed) it between our open and our lock: try again
                os.close(fd)
                continue
            previous = _read_fd(fd)
            if previous and previous.get("pid"):
                logger.warning(
                    f"{self.path}: the run that held this folder ({describe_holder(previous)}) is gone, it was "
                    "stopped without cleaning up; taking over its lock"
                )
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "launch": launch_id(),
                "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:500],
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info, indent=1).encode(), 0)
            os.fsync(fd)
            self._fd = fd
            _held[self.folder.resolve()] = self
            atexit.register(self.release)
            return self
        raise UserError(f"{self.path}: could not take the run lock (it keeps being replaced by another run)")

    def join(self, wait_s: float = REPLICA_WAIT_S) -> RunLock:
        """Another process of the launch: wait until the lock names this launch; refuse a folder that another run
        holds."""
        own, deadline = launch_id(), time.monotonic() + wait_s
        while True:
            info = read_lock(self.path)
            if info is not None and info.get("launch") == own:
                _held[self.folder.resolve()] = self
                return self
            if info is not None and holder_alive(info):
                raise UserError(f"--output_dir {self.folder} is in use by another run: {describe_holder(info)}")
            if time.monotonic() > deadline:
                raise UserError(f"{self.path}: the main process of this launch did not take the run lock in "
                                f"{wait_s:.0f} s")
            time.sleep(0.2)

    @staticmethod
    def _lock(fd: int) -> bool:
        if fcntl is None:  # pragma: no cover
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent); another process of the launch only lets go."""
        if _held.get(self.folder.resolve()) is self:
            del _held[self.folder.resolve()]
        if self._fd is None:
            return
        try:
            if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                os.unlink(self.path)  # while still locked, so no one takes over a file about to vanish
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def held_folder() -> Path | None:
    """The output folder this process's run holds (None outside a training run)."""
    return next(reversed(_held.values())).folder if _held else None


def in_use_by(folder: str | Path) -> dict | None:
    """The holder of ``folder``'s lock when another launch holds it and still runs (a read-only check at parse
    time, before any data loads; the lock itself is taken by :func:`hold_run_folder`)."""
    info = read_lock(Path(folder) / LOCK_NAME)
    if info is None or info.get("launch") == launch_id():
        return None
    return info if holder_alive(info) else None


def hold_run_folder(training_args) -> RunLock | None:
    """The scripts' call right after parsing: a training run holds ``training_args.output_dir`` (with
    ``--split_seeds`` the root of the splits) until the process exits; the main process takes the lock, the other
    processes of the launch join it. Evaluations (``--do_train False``) write their own folders and take none."""
    if not training_args.do_train or not training_args.output_dir:
        return None
    lock = RunLock(training_args.output_dir)
    return lock.acquire() if is_main_process() else lock.join()


def holder_alive(info: dict) -> bool:
    """Whether the process a lock file names still runs: judged by its pid on this host; a holder on another host
    counts as alive (only its own host could tell)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        pid = int(info.get("pid", 0))
        if pid <= 0:
            return False
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _read_fd(fd: int) -> dict | None:
    try:
        size = os.fstat(fd).st_size
        info = json.loads(os.pread(fd, size, 0).decode("utf-8")) if size else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def release_all() -> None:
    """Release every folder this process holds (the end of a run started by ``launch.run_cli``)."""
    for lock in list(_held.values()):
        lock.release()
