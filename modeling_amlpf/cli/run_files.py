"""Every folder a run saves or pushes loads on its own: code, processors, tokenizer and the project's card.

With ``--push_to_hub`` the Trainer pushes its output folder at every save (``hub_strategy`` ``every_save``,
``checkpoint``, ``all_checkpoints``): it first copies the checkpoint's config and weights into the output folder
and saves ``processing_class`` there, then uploads it in the background; with
``checkpoint``/``all_checkpoints`` it also uploads the checkpoint folder itself (``last-checkpoint/``,
``checkpoint-N/``). The output folder holds no code files before the end of training, the student's tokenizer is
not its ``processing_class`` (the image processor is), and the final ``Trainer.push_to_hub`` writes the Trainer's
generic card (``create_model_card``) into the folder it uploads, so some revisions would not load, or carry a card
with false facts.

``LoadableCheckpoints`` (a ``TrainerCallback``) writes the missing files before anything is pushed: the extras (the
tokenizer and a card of the run in progress) into the output folder when training begins, and into each checkpoint
folder once the Trainer has written all of its own files (weights and code through ``save_pretrained``, processor,
optimizer, scheduler, RNG states, and ``trainer_state.json`` last): in ``on_push_begin``, which the Trainer calls
after those files and before it uploads anything, else in ``on_save``, which it calls after the save. Before each
push the checkpoint's code files are also copied into the output folder (the Trainer copies only config and weights
there). So a run killed during a save leaves a folder without ``trainer_state.json`` (skipped on resume, see
:func:`newest_complete_checkpoint`), never one that looks complete before it is. Files are never written while an
upload of their folder may be running. ``push_output_folder`` makes the final push: it waits for the pushes in
flight and uploads the output folder with the project's card, in one commit (no revision with the generic card).

Resuming: :func:`checkpoint_problem` says what makes a checkpoint folder unusable (a missing or truncated file,
named), :func:`newest_complete_checkpoint` picks the newest usable one. ``WholeRunTrainLoss`` keeps ``train_loss``
(and the logged curves) of a resumed run equal to the uninterrupted run's. :func:`disk_full_message` turns the ways
a full disk surfaces during a save into one sentence naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open
from transformers import TrainerCallback
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME, logging

logger = logging.get_logger(__name__)

# What the Trainer leaves out of its pushes of the output folder (its push_to_hub and its checkpoint pushes).
PUSH_IGNORE_PATTERNS = ["_*", f"{PREFIX_CHECKPOINT_DIR}-*"]


def copy_code_files(checkpoint: str | Path, folder: str | Path) -> None:
    """The Python modules that ``trust_remote_code`` loading needs, copied from a checkpoint folder (the Trainer's
    ``save_pretrained`` of the model and of its processor writes them there) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for module in sorted(Path(checkpoint).glob("*.py")):
        shutil.copy2(module, folder / module.name)


class LoadableCheckpoints(TrainerCallback):
    """Writes ``extras(folder)`` (e.g. the tokenizer and the run's card) into the output folder when training
    begins and into every checkpoint folder once the Trainer's own files are in it; before each push of the output
    folder, the code files of the checkpoint being pushed go there too (module docstring).

    Args:
        extras: writes the files a loadable folder needs beyond the Trainer's own (tokenizer, card, ...).
        processor: kept for callers of earlier versions; the processor's code comes from the checkpoints.
    """

    def __init__(self, extras: Callable[[Path], None], processor=None):
        self.extras = extras
        self.processor = processor
        self._written_step: int | None = None

    def _complete_checkpoint(self, args, state) -> None:
        """The extras of the checkpoint just saved (once per step; the Trainer's files are all written)."""
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not args.should_save or self._written_step == state.global_step or not folder.is_dir():
            return
        self.extras(folder)
        self._written_step = state.global_step

    def on_train_begin(self, args, state, control, **kwargs):
        if args.should_save:
            self.extras(Path(args.output_dir))

    def on_push_begin(self, args, state, control, **kwargs):
        # the Trainer's checkpoint push: after the checkpoint's files, before the output folder (and the checkpoint)
        # are uploaded; the output folder gets the checkpoint's weights from the Trainer and its code from here
        self._complete_checkpoint(args, state)
        if args.should_save:
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            copy_code_files(checkpoint, args.output_dir)

    def on_save(self, args, state, control, **kwargs):
        self._complete_checkpoint(args, state)


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be resumed (the file named), or None when it holds all the Trainer reads back: weights
    whose safetensors header covers the file (or a readable ``pytorch_model.bin``), a ``trainer_state.json`` that
    parses, and optimizer and scheduler states that are whole torch archives. Only headers and zip directories are
    read, so the check costs milliseconds even for a ViT-L's optimizer state."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is no folder"
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"{state} is missing (the run stopped while this checkpoint was being saved)"
    try:
        content = json.loads(state.read_text(encoding="utf-8"))
        if not isinstance(content, dict) or "global_step" not in content:
            raise ValueError("no global_step")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        size = state.stat().st_size
        return f"{state} is {'empty' if size == 0 else f'not a Trainer state ({error})'}"
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            return f"{index} is not a safetensors index ({error})"
        weights = [folder / shard for shard in shards]
    elif (folder / SAFE_WEIGHTS_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        weights = [folder / SAFE_WEIGHTS_NAME]
    else:
        weights = []
        problem = _torch_archive_problem(folder / WEIGHTS_NAME)
        if problem:
            return problem
    for path in weights:
        if not path.is_file():
            return f"{path} is missing"
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own SafetensorError
            return f"{path} is truncated or not a safetensors file ({error})"
    for name in (OPTIMIZER_NAME, SCHEDULER_NAME):
        problem = _torch_archive_problem(folder / name)
        if problem:
            return problem
    return None


def _torch_archive_problem(path: Path) -> str | None:
    """``torch.save`` writes a zip archive whose directory sits at the end: a truncated file has none."""
    if not path.is_file():
        return f"{path} is missing"
    try:
        with zipfile.ZipFile(path):
            return None
    except (OSError, zipfile.BadZipFile) as error:
        return f"{path} is truncated or not a torch file ({error})"


_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders of ``output_dir``, newest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]


def newest_complete_checkpoint(output_dir: str | Path) -> tuple[str | None, list[str]]:
    """The newest checkpoint of ``output_dir`` that :func:`checkpoint_problem` accepts (or None), and why each
    newer one was skipped (``get_last_checkpoint`` takes the highest step whatever its state)."""
    skipped = []
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder), skipped
        skipped.append(f"{folder.name}: {problem}")
    return None, skipped


class WholeRunTrainLoss(TrainerCallback):
    """``train_loss`` over every step of the run, also after a resume, and a log entry at every checkpoint.

    The Trainer's ``train_loss`` averages the steps of the current ``train()`` call only, and the training loss
    accumulated since the last log is not saved with a checkpoint: after a resume both cover part of the run
    (5.98 uninterrupted vs 3.25 resumed). So this callback (1) asks for a log whenever a checkpoint is saved
    (``control.should_log``; with the scripts' epoch logging and epoch saves they coincide and nothing changes),
    so each checkpoint's ``log_history`` holds the loss of every step before it; (2) when the Trainer logs its final
    ``train_loss``, replaces it by the step-weighted mean of the run's ``loss`` entries before this call plus the
    Trainer's own mean over this call's steps, in the logged dict (the Trainer's ``TrainOutput.metrics``) and in
    ``state.log_history``. Without resume the value is the Trainer's own.
    """

    def __init__(self):
        self._first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._first_step = state.global_step  # the resumed checkpoint's step (0 for a new run)

    def _log_before_save(self, args, control) -> None:
        strategy = str(getattr(args.save_strategy, "value", args.save_strategy))
        if control.should_save or (strategy == "best" and control.should_evaluate):
            control.should_log = True

    def on_step_end(self, args, state, control, **kwargs):
        self._log_before_save(args, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._log_before_save(args, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_loss" not in logs or self._first_step == 0:
            return
        whole = whole_run_train_loss(state.log_history, self._first_step, logs["train_loss"], state.global_step)
        if whole is None:
            logger.warning(
                f"train_loss covers only the {state.global_step - self._first_step} steps since the resumed "
                f"checkpoint (step {self._first_step}): its log does not hold the loss of every earlier step"
            )
            return
        logs["train_loss"] = whole
        if state.log_history and "train_loss" in state.log_history[-1]:
            state.log_history[-1]["train_loss"] = whole


def whole_run_train_loss(log_history, first_step: int, call_loss: float, last_step: int) -> float | None:
    """Mean training loss over steps 1..``last_step`` from the ``loss`` log entries up to ``first_step`` (each the
    mean since the previous one) and ``call_loss``, the mean over steps ``first_step + 1``..``last_step``; None
    when the entries do not reach ``first_step``."""
    total, covered = 0.0, 0
    for entry in log_history:
        step = entry.get("step")
        if "loss" not in entry or step is None or step > first_step or step <= covered:
            continue
        total += float(entry["loss"]) * (step - covered)
        covered = step
    if covered != first_step:
        return None
    total += float(call_loss) * (last_step - first_step)
    return total / max(last_step, 1)


DISK_FULL_MARKERS = ("no space left", "storagefull", "iostream error", "file write failed", "failed writing")


def disk_full_message(error: BaseException, output_dir: str | Path | None) -> str | None:
    """One sentence for an error that a full disk caused during a save (None for any other error).

    A full disk surfaces as ``OSError(ENOSPC)``, as torch's ``RuntimeError: ... iostream error`` /
    ``PytorchStreamWriter failed writing file`` or as safetensors' ``IoError ... StorageFull``; torch's messages
    name no file and may have other causes, so they count only when the output folder's disk is (nearly) full.
    The path named is the error's own file, else the newest incomplete checkpoint, else the output folder."""
    errors, seen = [], set()
    while error is not None and id(error) not in seen:  # the error and its causes
        seen.add(id(error))
        errors.append(error)
        error = error.__cause__ or error.__context__
    certain = any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in errors)
    texts = " ".join(str(e).lower() for e in errors)
    if not certain and not any(marker in texts for marker in DISK_FULL_MARKERS):
        return None
    filename = next((e.filename for e in errors if isinstance(e, OSError) and e.filename), None)
    where = Path(filename) if filename else None
    free = None
    if output_dir is not None:
        folder = Path(output_dir)
        probe = next((p for p in (folder, *folder.parents) if p.exists()), None)
        free = shutil.disk_usage(probe).free if probe is not None else None
        if not certain and "no space left" not in texts and "storagefull" not in texts:
            if free is None or free > 256 * 2**20:
                return None  # an iostream error on a disk with room: not a full disk
        if where is None:
            incomplete = [p for p in checkpoint_folders(folder)[:1] if checkpoint_problem(p) is not None]
            where = incomplete[0] if incomplete else folder
    shown = f" ({free / 2**20:.0f} MiB free now)" if free is not None else ""
    return (
        f"no space left on device while writing {where or 'the run outputs'}{shown}: free space on that disk (or "
        "choose another --output_dir) and run the same command again; an incomplete checkpoint is skipped when "
        "the run resumes"
    )


def push_output_folder(api, trainer, output_dir: str | Path, commit_message: str):
    """The final push of a run: wait for the Trainer's pushes in flight, then upload ``output_dir`` (already
    holding the project's card) in one commit, leaving out what the Trainer leaves out. Main process only."""
    if not trainer.is_world_process_zero():
        return None
    in_flight = getattr(trainer, "push_in_progress", None)
    if in_flight is not None and not in_flight.is_done():
        logger.info("waiting for the checkpoint pushes in progress before the final push")
        in_flight.wait_until_done()
    return api.upload_folder(
        repo_id=trainer.hub_model_id,
        folder_path=os.fspath(output_dir),
        commit_message=commit_message,
        ignore_patterns=PUSH_IGNORE_PATTERNS,
        revision=trainer.args.hub_revision,
    )
