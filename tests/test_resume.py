"""Kill and resume: a run resumed from a mid-epoch checkpoint ends with the weights, the resampling history and the
training metrics (``train_loss``, the logged losses that ``losses.png`` draws) of the uninterrupted run, in one
process and in two (``accelerate launch``, gloo on CPU).

The pipeline is the student's: random training views of image files (``training_views.attach_views``, a pure
function of seed, epoch and row), ``DistillationTrainer`` with a frozen teacher, ``ClassBalancedResampling``,
the epoch-step schedule and checkpoints every few steps. The interrupted run is a new process state: new
model, new Trainer, new callbacks, only the checkpoint folder carried over.

Run as a script (``accelerate launch tests/test_resume.py OUT_DIR``), it does both runs and writes
``OUT_DIR/{full,resumed}/`` with the final ``model.safetensors``, ``resampling_history.json``,
``trainer_state.json`` and ``train_results.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

NUM_IMAGES = 24
LABELS = [0] * 9 + [1] * 7 + [2] * 5 + [3] * 3
CLASS_NAMES = ["normal", "hyperplastic", "adenoma", "carcinoma"]  # the tiny presets' classes
BATCH = 4


def make_images(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, label in enumerate(LABELS):
        pixels = rng.integers(0, 200, (72 + 4 * (i % 3), 80, 3), dtype=np.uint8) + np.uint8(12 * label)
        path = folder / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def train(output_dir: Path, image_dir: Path, resume_from: str | None = None):
    """One run of the student's training; returns the trainer."""
    from conftest import STUDENT_TINY, TEACHER_TINY
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from transformers import AutoConfig, AutoModel, TrainingArguments

    from modeling_amlpf import AmlpfImageProcessor
    from modeling_amlpf.cli.run_files import WholeRunTrainLoss
    from modeling_amlpf.training.resampling import ClassBalancedResampling
    from modeling_amlpf.training.trainers import DistillationTrainer, training_collator
    from modeling_amlpf.training.views import ViewEpochCallback, attach_views

    paths = sorted(image_dir.glob("*.png"), key=lambda p: int(p.stem))
    features = Features(image=ImageFeature(mode="RGB"), label=ClassLabel(names=CLASS_NAMES))
    train_part = Dataset.from_dict({"image": [str(p) for p in paths], "label": LABELS}, features=features)
    processor = AmlpfImageProcessor(min_short_side=64, crop_size=64, crop_stride=8, num_crops=2)
    views = attach_views({"train": train_part}, processor, seed=7)
    torch.manual_seed(0)
    student = AutoModel.from_config(AutoConfig.from_pretrained(STUDENT_TINY))
    teacher_config = AutoConfig.from_pretrained(TEACHER_TINY)
    teacher_config.id2label = dict(enumerate(CLASS_NAMES))
    teacher_config.label2id = {name: i for i, name in enumerate(CLASS_NAMES)}
    teacher = AutoModel.from_config(teacher_config)
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=BATCH, num_train_epochs=2, learning_rate=1e-3,
        save_strategy="steps", save_steps=2 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 4,
        eval_strategy="no", logging_strategy="epoch", report_to="none", remove_unused_columns=False, seed=7,
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, restore_callback_states_from_checkpoint=True,
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=views["train"], data_collator=training_collator,
        callbacks=[ViewEpochCallback(), ClassBalancedResampling(CLASS_NAMES), WholeRunTrainLoss()],
        lr_schedule=[(1, 1e-3), (2, 5e-4)], teacher_model=teacher,
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model()
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return trainer


def mid_epoch_checkpoint(run_dir: Path, steps_per_epoch: int) -> Path:
    """The first checkpoint inside the second epoch (class weights set, some of the epoch's records taken)."""
    steps = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
    step = next(s for s in steps if s > steps_per_epoch and s % steps_per_epoch)
    return run_dir / f"checkpoint-{step}"


def full_and_resumed(root: Path) -> tuple[Path, Path]:
    """The uninterrupted run into root/full, then a run resumed from its mid-epoch checkpoint into root/resumed."""
    from accelerate import PartialState

    state = PartialState()
    image_dir = root / "images"
    if state.is_main_process:
        make_images(image_dir)
    state.wait_for_everyone()
    full = train(root / "full", image_dir)
    steps_per_epoch = full.state.max_steps // 2
    checkpoint = mid_epoch_checkpoint(root / "full", steps_per_epoch)
    if state.is_main_process:  # the interrupted run's folder: only what it had written by then
        shutil.copytree(checkpoint, root / "resumed" / checkpoint.name)
    state.wait_for_everyone()
    train(root / "resumed", image_dir, resume_from=str(root / "resumed" / checkpoint.name))
    return root / "full", root / "resumed"


def assert_same_end(full: Path, resumed: Path) -> None:
    from safetensors.torch import load_file

    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    history = json.loads((full / "resampling_history.json").read_text())
    assert len(history["epochs"]) == 2
    assert [epoch["records"] for epoch in history["epochs"]] == [NUM_IMAGES, NUM_IMAGES]  # every rank's draws
    assert json.loads((resumed / "resampling_history.json").read_text()) == history
    first_weights = history["epochs"][0]["next_epoch_class_weights"]
    assert len(set(first_weights.values())) > 1  # the second epoch really drew with class weights
    assert_same_training_metrics(full, resumed)


def logged_losses(run_dir: Path) -> list[tuple]:
    """(step, loss, ce_loss, kd_loss) of every training-loss entry of the run's final trainer_state.json."""
    log = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [(e["step"], e["loss"], e.get("ce_loss"), e.get("kd_loss")) for e in log if "loss" in e]


def assert_same_training_metrics(full: Path, resumed: Path) -> None:
    """train_loss and the curve points of the resumed run are the uninterrupted run's (float noise aside), and
    train_loss is the step-weighted mean of the logged losses, computed here independently."""
    full_log, resumed_log = logged_losses(full), logged_losses(resumed)
    assert [e[0] for e in full_log] == [e[0] for e in resumed_log]
    np.testing.assert_allclose([e[1:] for e in full_log], [e[1:] for e in resumed_log], rtol=1e-4, atol=1e-5)
    steps = [0] + [e[0] for e in full_log]
    expected = sum(e[1] * (b - a) for e, a, b in zip(full_log, steps, steps[1:])) / steps[-1]
    full_loss = json.loads((full / "train_results.json").read_text())["train_loss"]
    resumed_loss = json.loads((resumed / "train_results.json").read_text())["train_loss"]
    final = json.loads((resumed / "trainer_state.json").read_text())["log_history"][-1]
    assert final["train_loss"] == resumed_loss  # the log entry too, not only the returned metrics
    np.testing.assert_allclose(full_loss, expected, rtol=1e-4)  # logged losses are rounded to 4 digits
    np.testing.assert_allclose(resumed_loss, full_loss, rtol=1e-5)


def test_resume_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    full, resumed = full_and_resumed(tmp_path)
    checkpoint = next(resumed.glob("checkpoint-*"))
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]
    saved = saved["ClassBalancedResampling"]
    assert saved["attributes"]["epoch_records"] and len(saved["attributes"]["history"]) == 1  # a partial epoch
    assert_same_end(full, resumed)


def test_resume_mid_epoch_in_two_processes(tmp_path):
    from conftest import free_port

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(Path(__file__).resolve()), str(tmp_path)]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert_same_end(tmp_path / "full", tmp_path / "resumed")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import modeling_amlpf  # noqa: F401  (registers the Auto classes)

    full_and_resumed(Path(sys.argv[1]))
