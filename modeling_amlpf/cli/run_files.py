"""Every folder a run saves or pushes loads on its own: code, processors, tokenizer and the project's card.

With ``--push_to_hub`` the Trainer pushes its output folder at every save (``hub_strategy`` ``every_save``,
``checkpoint``, ``all_checkpoints``): it first copies the checkpoint's config and weights into the output folder
and saves ``processing_class`` there (``Trainer._push_from_checkpoint``), then uploads it in the background; with
``checkpoint``/``all_checkpoints`` it also uploads the checkpoint folder itself (``last-checkpoint/``,
``checkpoint-N/``). The output folder holds no code files before the end of training, the student's tokenizer is
not its ``processing_class`` (the image processor is), and the final ``Trainer.push_to_hub`` writes the Trainer's
generic card (``create_model_card``) into the folder it uploads, so some revisions would not load, or carry a card
with false facts.

``LoadableCheckpoints`` (a ``TrainerCallback``) writes the missing files before anything is pushed: into the output
folder when training begins (the model's and processor's code, the processor, the extras such as the tokenizer and
a card of the run in progress), and into each checkpoint folder just before the Trainer saves it (``on_step_end`` /
``on_epoch_end`` see ``control.should_save``, which the Trainer acts on right after; for ``save_strategy="best"``,
``on_evaluate`` applies the Trainer's own test for a new best metric). Files are never written while an upload of
their folder may be running. ``push_output_folder`` makes the final push: it waits for the pushes in flight and
uploads the output folder with the project's card, in one commit (no revision with the generic card).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

# What the Trainer leaves out of its pushes of the output folder (Trainer.push_to_hub / _push_from_checkpoint).
PUSH_IGNORE_PATTERNS = ["_*", f"{PREFIX_CHECKPOINT_DIR}-*"]


def write_code_files(model, processor, folder: str | Path) -> None:
    """The Python files that ``trust_remote_code`` loading needs (model, config and processor modules)."""
    from transformers.dynamic_module_utils import custom_object_save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if getattr(model, "_auto_class", None) is not None:
        custom_object_save(model, folder, config=model.config)
    if processor is not None and getattr(processor, "_auto_class", None) is not None:
        custom_object_save(processor, folder)


class LoadableCheckpoints(TrainerCallback):
    """Writes ``extras(folder)`` (e.g. the tokenizer and the run's card) and the code files into the output
    folder when training begins and into every checkpoint folder just before it is saved (module docstring).

    Args:
        extras: writes the files a loadable folder needs beyond the Trainer's own (tokenizer, card, ...).
        processor: the image processor (its code files go into the output folder too).
    """

    def __init__(self, extras: Callable[[Path], None], processor=None):
        self.extras = extras
        self.processor = processor

    def _write(self, folder: Path, model) -> None:
        if model is not None:
            write_code_files(model, self.processor, folder)
        self.extras(folder)

    def _before_save(self, args, state, model) -> None:
        if args.should_save:
            self._write(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.should_save:
            self._write(Path(args.output_dir), model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save:
            self._before_save(args, state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if control.should_save:
            self._before_save(args, state, model)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        strategy = str(getattr(args.save_strategy, "value", args.save_strategy))
        if strategy == "best" and _is_new_best(args, state, metrics):
            self._before_save(args, state, model)


def _is_new_best(args, state, metrics) -> bool:
    """The Trainer's test for a new best checkpoint (``Trainer._determine_best_metric``), before it updates."""
    if not metrics or args.metric_for_best_model is None:
        return False
    name = args.metric_for_best_model
    value = metrics.get(name if name.startswith("eval_") else f"eval_{name}")
    if value is None:
        return False
    best = state.best_metric
    if best is None:
        best = float("-inf") if args.greater_is_better else float("inf")
    return bool((np.greater if args.greater_is_better else np.less)(value, best))


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
