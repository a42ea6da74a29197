"""Run folders: one run per output folder (a lock naming its holder, stale locks taken over, workers that stop with
their launcher), only complete checkpoints resumed (each problem named), extras written after the Trainer's own
files, a full disk named, and a finished run that a re-run never retrains nor rewrites."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, TEACHER_TINY, free_port
from data_trees import make_lunghist700_tree
from safetensors.torch import save_file

import train_teacher
from modeling_amlpf.cli import run_lock
from modeling_amlpf.cli.arguments import parse_script_args
from modeling_amlpf.cli.launch import run_cli
from modeling_amlpf.cli.run_files import (
    LoadableCheckpoints,
    checkpoint_problem,
    disk_full_message,
    newest_complete_checkpoint,
    whole_run_train_loss,
)
from modeling_amlpf.cli.run_lock import LOCK_NAME, RunLock, describe_holder, read_lock
from modeling_amlpf.utils import UserError

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")


# ----------------------------------------------------------------------------------------- complete checkpoints
def write_checkpoint(folder: Path, step: int) -> Path:
    """The files the Trainer writes into checkpoint-<step>, with real formats (safetensors, torch zip, JSON)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, folder / "model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda c: (c / "trainer_state.json").write_text(""), "trainer_state.json is empty"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_st'), "trainer_state.json is not a Trainer state"),
        (lambda c: truncate(c / "model.safetensors"), "model.safetensors is truncated"),
        (lambda c: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda c: truncate(c / "optimizer.pt", 0.9), "optimizer.pt is truncated"),
        (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    ],
)
def test_checkpoint_problem_names_the_broken_file(tmp_path, damage, named):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-4", 4)
    assert checkpoint_problem(checkpoint) is None
    damage(checkpoint)
    problem = checkpoint_problem(checkpoint)
    assert problem is not None and named in problem and str(checkpoint) in problem


def test_newest_complete_checkpoint_skips_incomplete_ones(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-2", 2)
    write_checkpoint(tmp_path / "checkpoint-10", 10)
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("")  # a full disk during the save
    (tmp_path / "checkpoint-12").mkdir()  # killed during the save: only the project's card so far
    (tmp_path / "checkpoint-12" / "README.md").write_text("card")
    last, skipped = newest_complete_checkpoint(tmp_path)
    assert last == str(tmp_path / "checkpoint-2")  # by step, not by name: 10 and 12 sort after 2
    assert [s.split(":")[0] for s in skipped] == ["checkpoint-12", "checkpoint-10"]


def parse(argv, output_dir: Path):
    return parse_script_args(
        train_teacher.TeacherArguments, "teacher",
        ["--dataset", "lunghist700", "--config", "none", "--output_dir", str(output_dir), *argv],
        train_teacher.derived_defaults,
    )


def test_resume_takes_the_newest_complete_checkpoint_and_names_a_broken_one(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    write_checkpoint(out / "checkpoint-2", 2)
    write_checkpoint(out / "checkpoint-4", 4)
    truncate(out / "checkpoint-4" / "model.safetensors")
    (out / "checkpoint-6").mkdir()
    for argv in ([], ["--resume_from_checkpoint", "True"]):  # automatic and explicit "True"
        *_, training_args = parse(argv, out)
        assert training_args.resume_from_checkpoint == str(out / "checkpoint-2")
    with pytest.raises(SystemExit) as exit_info:
        parse(["--resume_from_checkpoint", str(out / "checkpoint-4")], out)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-4' / 'model.safetensors'} is truncated" in err
    # only incomplete checkpoints: refused, each problem named
    lonely = tmp_path / "lonely"
    (lonely / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(SystemExit):
        parse([], lonely)
    assert f"{lonely / 'checkpoint-3' / 'trainer_state.json'} is missing" in capsys.readouterr().err


class TinyRegression:
    """A two-weight model and its data: the Trainer's save and push paths in a second."""

    @staticmethod
    def trainer(output_dir: Path, callbacks, **args):
        from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments

        class Tiny(PreTrainedModel):
            config_class = PretrainedConfig

            def __init__(self, config):
                super().__init__(config)
                self.linear = torch.nn.Linear(2, 1)

            def forward(self, x, labels=None):
                return {"loss": ((self.linear(x).squeeze(-1) - labels) ** 2).mean()}

        data = [{"x": torch.tensor([float(i), 1.0]), "labels": torch.tensor(float(i % 3))} for i in range(8)]
        args = TrainingArguments(str(output_dir), per_device_train_batch_size=2, num_train_epochs=2,
                                 save_strategy="steps", save_steps=2, logging_strategy="no", report_to="none",
                                 use_cpu=True, disable_tqdm=True, **args)
        return Trainer(Tiny(PretrainedConfig()), args, train_dataset=data, callbacks=callbacks)


def recording_extras(seen: list):
    def extras(folder: Path) -> None:
        seen.append((folder.name, {p.name for p in folder.iterdir()}))
        (folder / "README.md").write_text("card")

    return extras


TRAINER_FILES = {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"}


def test_checkpoint_extras_are_written_after_the_trainers_files(tmp_path):
    """A kill at any moment of a save leaves either no trainer_state.json or a complete checkpoint: the project's
    files (card, tokenizer, code) are written only once the Trainer's own are all there."""
    seen = []
    TinyRegression.trainer(tmp_path / "out", [LoadableCheckpoints(recording_extras(seen))]).train()
    checkpoints = [(name, files) for name, files in seen if name.startswith("checkpoint-")]
    assert [name for name, _ in checkpoints] == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    for name, files in checkpoints:
        assert TRAINER_FILES <= files, name
        assert checkpoint_problem(tmp_path / "out" / name) is None
    assert seen[0][0] == "out"  # the output folder, when training begins


class FakeHub:
    """The Hub API as the Trainer uses it: each upload copies the folder as it is at that moment."""

    def __init__(self, root: Path):
        self.root, self.uploads = root, []

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, **kwargs):
        from concurrent.futures import Future

        self.uploads.append((path_in_repo, sorted(p.name for p in Path(folder_path).iterdir())))
        done = Future()
        done.set_result("commit")
        return done


def test_every_pushed_checkpoint_is_complete_and_carries_the_extras(tmp_path, monkeypatch):
    import transformers.trainer

    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    seen = []
    trainer = TinyRegression.trainer(tmp_path / "out", [LoadableCheckpoints(recording_extras(seen))],
                                     push_to_hub=True, hub_model_id="me/tiny", hub_strategy="all_checkpoints")
    trainer.train()
    pushed = {where: files for where, files in hub.uploads if where}
    assert sorted(pushed) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    for name, files in pushed.items():
        assert TRAINER_FILES | {"README.md"} <= set(files), name
    assert [name for name, _ in seen].count("checkpoint-4") == 1  # once: not rewritten after its upload began


def test_whole_run_train_loss_needs_every_step_logged():
    log = [{"loss": 2.0, "step": 2}, {"eval_loss": 9.0, "step": 2}, {"loss": 1.0, "step": 3}]
    assert whole_run_train_loss(log, 3, call_loss=0.5, last_step=5) == pytest.approx((2 * 2 + 1 + 0.5 * 2) / 5)
    assert whole_run_train_loss(log[:1], 3, call_loss=0.5, last_step=5) is None  # steps 3 unlogged


# ----------------------------------------------------------------------------------------------- full disk
def test_a_full_disk_is_named(tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    message = disk_full_message(OSError(errno.ENOSPC, "No space left on device", str(checkpoint / "x.pt")), tmp_path)
    assert message.startswith(f"no space left on device while writing {checkpoint / 'x.pt'}")
    assert disk_full_message(ValueError("unrelated"), tmp_path) is None
    torch_error = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos; basic_ios::clear: "
                               "iostream error")
    assert disk_full_message(torch_error, tmp_path) is None  # this disk has room: another cause
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 4096})())
    assert f"writing {checkpoint} (0 MiB free now)" in disk_full_message(torch_error, tmp_path)  # the half-saved one


# --------------------------------------------------------------------------------------------- the run lock
HOLDER = textwrap.dedent("""
    import sys, time
    from modeling_amlpf.cli.run_lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def start_holder(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "run"
    holder = start_holder(folder)
    try:
        info = read_lock(folder / LOCK_NAME)
        assert info["pid"] == holder.pid and info["started"].endswith("UTC")
        with pytest.raises(UserError, match=f"in use by another run: pid {holder.pid} on host "):
            RunLock(folder).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its lock file stays behind, nobody holds it
        holder.wait()
    assert read_lock(folder / LOCK_NAME)["pid"] == holder.pid
    lock = RunLock(folder).acquire()
    assert f"({describe_holder(info)}) is gone" in caplog.text
    assert read_lock(folder / LOCK_NAME)["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_NAME).exists()


def test_the_processes_of_one_launch_share_the_lock(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    launch = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2",
              "LOCAL_RANK": "0"}
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    lock = RunLock(folder).acquire()  # rank 0
    try:
        assert RunLock(folder).join(wait_s=1) is not None  # rank 1 of the same launch
        monkeypatch.setenv("MASTER_PORT", "29512")  # a rank of another launch
        with pytest.raises(UserError, match="in use by another run"):
            RunLock(folder).join(wait_s=1)
    finally:
        lock.release()
        run_lock._held.clear()


WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from modeling_amlpf.cli.launch import run_cli

    def main(argv):
        Path(argv[0], f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
        time.sleep(300)

    sys.exit(run_cli(main))
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" if Path("/proc").is_dir() else True


def test_workers_stop_when_their_launcher_is_killed(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(script), str(tmp_path)]
    launcher = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not all((tmp_path / f"rank{r}.pid").is_file() for r in (0, 1)):
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-3000:]
            time.sleep(0.5)
        pids = [int((tmp_path / f"rank{r}.pid").read_text()) for r in (0, 1)]
        assert all(alive(pid) for pid in pids)
        launcher.send_signal(signal.SIGKILL)  # the launcher alone: its workers are orphaned
        launcher.wait()
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(alive(pid) for pid in pids)
    finally:
        for path in tmp_path.glob("rank*.pid"):
            try:
                os.kill(int(path.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------------------------ re-running a finished run
def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_is_not_retrained_and_a_longer_one_continues(tmp_path):
    tree = make_lunghist700_tree(tmp_path / "download", patients=8, images_per_folder=3)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "seed": 3, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "disable_tqdm": True,
        "use_cpu": True, "teacher_config": str(TEACHER_TINY), "learning_rate": 1e-3, "save_total_limit": 2,
    }))
    out = tmp_path / "teacher"
    command = [sys.executable, "train_teacher.py", "--dataset", "lunghist700", "--data_dir", str(tree.data_dir),
               "--config", str(config), "--output_dir", str(out)]

    def run(*flags):
        return subprocess.run([*command, *flags], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
                              timeout=600)

    # two runs into one folder: the second is refused at once, naming the first
    first = subprocess.Popen([*command, "--num_train_epochs", "2"], cwd=REPO_ROOT, env=ENV, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while read_lock(out / LOCK_NAME) is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGSTOP)  # paused while it holds the folder (a tiny run ends in seconds)
    try:
        second = run("--num_train_epochs", "2")
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert second.returncode == 2 and f"is in use by another run: pid {first.pid} on host " in second.stderr
    assert "Traceback" not in second.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and not (out / LOCK_NAME).exists()
    before = file_hashes(out)

    again = run("--num_train_epochs", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{out} holds a finished run: nothing was trained" in again.stdout
    assert f"trained 2 epochs ({state['global_step']} steps)" in again.stdout
    assert f"--do_train False --model_name_or_path {out}" in again.stdout and "--overwrite_output_dir" in again.stdout
    results = json.loads((out / "test_results.json").read_text())
    assert f"accuracy {results['test_accuracy']:.4g}" in again.stdout
    assert file_hashes(out) == before  # nothing rewritten, no lock left behind
    selected = out / Path(state["best_model_checkpoint"]).name
    assert {"README.md", "modeling_amlpf.py", "preprocessor_config.json"} <= {p.name for p in selected.iterdir()}

    longer = run("--num_train_epochs", "3")
    assert longer.returncode == 0, longer.stderr[-3000:]
    state3 = json.loads((out / "trainer_state.json").read_text())
    assert state3["epoch"] == 3 and state3["global_step"] == state["global_step"] * 3 // 2
    # the continued run's log starts with the finished run's: its epochs are not trained again
    first = [e for e in state["log_history"] if "loss" in e]
    assert [e for e in state3["log_history"] if "loss" in e][: len(first)] == first
    assert json.loads((out / "train_results.json").read_text())["epoch"] == 3


def test_a_full_disk_during_a_save_is_named_and_the_half_saved_checkpoint_skipped(tmp_path, monkeypatch, capsys):
    """The optimizer state of the first checkpoint hits a full disk (a patched writer): one message naming the
    checkpoint, exit code 2, and the next run refuses the folder naming the missing file instead of crashing."""
    tree = make_lunghist700_tree(tmp_path / "download", patients=8, images_per_folder=3)
    out = tmp_path / "teacher"
    argv = ["--dataset", "lunghist700", "--data_dir", str(tree.data_dir), "--config", "none", "--teacher_config",
            str(TEACHER_TINY), "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--use_cpu", "True",
            "--disable_tqdm", "True", "--output_dir", str(out)]
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            Path(f).write_bytes(b"PK\x03\x04")  # what a full disk leaves: the start of the archive
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_save)
    assert run_cli(train_teacher.main, argv) == 2
    err = capsys.readouterr().err
    checkpoint = out / "checkpoint-2"
    assert f"error: no space left on device while writing {checkpoint} (" in err and "Traceback" not in err
    assert not (out / LOCK_NAME).exists()  # the run is over: the folder is free
    monkeypatch.setattr(torch, "save", real_save)
    with pytest.raises(SystemExit):
        parse_script_args(train_teacher.TeacherArguments, "teacher", argv, train_teacher.derived_defaults)
    assert f"no complete checkpoint to resume (checkpoint-2: {checkpoint / 'trainer_state.json'} is missing" in (
        capsys.readouterr().err
    )


def write_finished_run(folder: Path, epochs: int = 2, steps_per_epoch: int = 3, keep_last: bool = True) -> dict:
    """The files a finished run leaves: final weights, final trainer_state.json, test results, checkpoints."""
    steps = epochs * steps_per_epoch
    best = folder / f"checkpoint-{steps_per_epoch}"
    write_checkpoint(best, steps_per_epoch)
    if keep_last:
        write_checkpoint(folder / f"checkpoint-{steps}", steps)
    save_file({"w": torch.zeros(4)}, folder / "model.safetensors")
    state = {"global_step": steps, "max_steps": steps, "epoch": float(epochs), "num_train_epochs": epochs,
             "best_model_checkpoint": str(best), "best_metric": 0.75, "log_history": []}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / "test_results.json").write_text(json.dumps({"test_accuracy": 0.8125, "test_macro_f1": 0.5}))
    return state


def test_finished_runs_at_parse_time(tmp_path, capsys):
    out = tmp_path / "run"
    write_finished_run(out)
    *_, training = parse(["--num_train_epochs", "4"], out)  # longer: continues from the last checkpoint
    assert training.resume_from_checkpoint == str(out / "checkpoint-6")
    with pytest.raises(SystemExit) as exit_info:
        parse(["--num_train_epochs", "2"], out)
    assert exit_info.value.code == 0
    report = capsys.readouterr().out
    assert "trained 2 epochs (6 steps)" in report
    assert "selected checkpoint: checkpoint-3, validation macro_f1 0.75" in report
    assert "test metrics: accuracy 0.8125, macro_f1 0.5" in report
    with pytest.raises(SystemExit) as exit_info:
        parse(["--num_train_epochs", "1"], out)
    assert exit_info.value.code == 2
    assert f"--output_dir {out} holds a finished run of 2 epochs; --num_train_epochs 1 is fewer" in (
        capsys.readouterr().err
    )
    *_, training = parse(["--num_train_epochs", "2", "--overwrite_output_dir"], out)  # trains again, on request
    assert training.resume_from_checkpoint is None

    stopped = tmp_path / "stopped"  # killed after training, before the test predictions: they are written now
    write_finished_run(stopped)
    (stopped / "test_results.json").unlink()
    *_, training = parse(["--num_train_epochs", "2"], stopped)
    assert training.resume_from_checkpoint == str(stopped / "checkpoint-6")  # the final step: nothing to train

    pruned = tmp_path / "pruned"  # --save_total_limit 1 kept only the selected checkpoint
    write_finished_run(pruned, keep_last=False)
    with pytest.raises(SystemExit) as exit_info:
        parse(["--num_train_epochs", "3"], pruned)
    assert exit_info.value.code == 2 and "continuing needs checkpoint-6" in capsys.readouterr().err

    root = tmp_path / "splits"
    for seed in (1, 2):
        write_finished_run(root / f"split_{seed}")
    with pytest.raises(SystemExit) as exit_info:
        parse(["--split_seeds", "1-2", "--num_train_epochs", "2"], root)
    assert exit_info.value.code == 0
    report = capsys.readouterr().out
    assert "split_1: trained 2 epochs" in report and "split_2: test metrics: accuracy 0.8125" in report
    for epochs, message in (("1", "is fewer"), ("3", "to train a split longer, run it alone")):
        with pytest.raises(SystemExit) as exit_info:
            parse(["--split_seeds", "1-2", "--num_train_epochs", epochs], root)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


FAKE_LAUNCHER = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2]])
    print(child.pid, flush=True)
    time.sleep(300)
""")
LONE_WORKER = textwrap.dedent("""
    import time
    from modeling_amlpf.cli.launch import start_launcher_watchdog
    assert start_launcher_watchdog(interval_s=0.2) is not None
    print("watching", flush=True)
    time.sleep(300)
""")


def test_a_single_process_launch_stops_with_its_launcher_and_a_shell_is_no_launcher(tmp_path):
    """``accelerate launch`` with one process sets no LOCAL_RANK: its command line tells it apart from a shell."""
    from modeling_amlpf.cli.launch import _is_launcher

    launcher_script = tmp_path / "accelerate"  # argv: python .../accelerate launch ...
    launcher_script.write_text(FAKE_LAUNCHER)
    env = {k: v for k, v in ENV.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    launcher = subprocess.Popen([sys.executable, str(launcher_script), "launch", LONE_WORKER], env=env,
                                stdout=subprocess.PIPE, text=True)
    worker = int(launcher.stdout.readline())
    try:
        assert launcher.stdout.readline().strip() == "watching"
        assert _is_launcher(launcher.pid) and not _is_launcher(os.getpid())
        assert alive(worker)
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 60
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(worker)
    finally:
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
