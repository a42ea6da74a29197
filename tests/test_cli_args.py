"""The command line as a user meets it: every mistake fails at parse time (before data or models load) with one
message and exit code 2; the recipe and effective arguments are logged; presets win over the recipe's backbone;
resume as in the Hugging Face examples; global batch; several processes on CPUs; output folders per data root.

Most tests run the real scripts in a subprocess (a few seconds each: the imports); the variants of one point
run in-process through ``parse_script_args``, which is what the scripts call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, STUDENT_TINY, TEACHER_TINY, free_port
from data_trees import make_imagefolder_tree, make_lunghist700_tree
from huggingface_hub.utils import validate_repo_id
from transformers import TrainingArguments

import distill_student
import train_teacher
from modeling_amlpf.cli import arguments, protocol
from modeling_amlpf.cli.arguments import parse_script_args
from modeling_amlpf.cli.launch import has_accelerator
from modeling_amlpf.data import data_root_tag

TEACHER_SCRIPT = str(REPO_ROOT / "train_teacher.py")
STUDENT_SCRIPT = str(REPO_ROOT / "distill_student.py")
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def script_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               AMLPF_OUTPUT_DIR=str(tmp_path / "outputs"), AMLPF_DATA_DIR=str(tmp_path / "data"))
    env.update(extra)
    return env


def run(*command: str, tmp_path: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """A script run as the user runs it, in tmp_path (relative outputs stay there)."""
    return subprocess.run([sys.executable, *command], cwd=tmp_path, env=script_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=timeout)


def launch(*command: str, tmp_path: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """The README's `accelerate launch --multi_gpu --num_processes 2 SCRIPT ...` (on a free port)."""
    port = free_port()
    return run("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--main_process_port", str(port), *command, tmp_path=tmp_path)


def parse(script, argv: list[str]):
    """What the script's main() parses, in-process."""
    section = "teacher" if script is train_teacher else "student"
    model_arguments = train_teacher.TeacherArguments if script is train_teacher else distill_student.StudentArguments
    defaults = getattr(script, "STUDENT_DEFAULTS", None)
    return parse_script_args(model_arguments, section, argv, script.derived_defaults, defaults=defaults)


def parse_error(script, argv: list[str], capsys) -> str:
    """The message of a parse error (exit code 2), without the usage line."""
    with pytest.raises(SystemExit) as exit_info:
        parse(script, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "Traceback" not in err
    return err.splitlines()[-1].split(" error: ", 1)[1]


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("AMLPF_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("AMLPF_DATA_DIR", str(tmp_path / "data"))
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "outputs"


# ------------------------------------------------------------------------------------- 14.1 choices at parse time
def test_a_bad_choice_fails_at_parse_time_naming_the_valid_values(tmp_path):
    """`--fusion learnt` used to train to the end and then write a checkpoint that does not load."""
    result = run(STUDENT_SCRIPT, "--dataset", "lunghist700", "--fusion", "learnt", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "distill_student.py: error: argument --fusion: invalid choice 'learnt'; valid values: learned, softmax"
    )
    assert "Traceback" not in result.stderr and "Recipe:" not in result.stderr  # nothing ran after the parse
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("script", "flag", "value", "message"),
    [
        (distill_student, "--resampling", "difficult",
         "argument --resampling: invalid choice 'difficult'; valid values: none, difficulty, "
         "difficulty_inverse_frequency"),
        (distill_student, "--kd_loss", "l1", "argument --kd_loss/--kd-loss: invalid choice 'l1'; valid values: l2, "
                                             "l2_per_sample, mse, kl"),
        (distill_student, "--teacher_dtype", "int8",
         "argument --teacher_dtype/--teacher-dtype: invalid choice 'int8'; valid values: bfloat16 (bf16), "
         "float16 (fp16, half), float32 (fp32, float)"),
        (distill_student, "--prompt_levels", "label,detail",
         "argument --prompt_levels/--prompt-levels: unknown prompt level(s) ['detail']; choose from ['label', "
         "'basic', 'detailed'] (e.g. --prompt_levels label,detailed)."),
        (train_teacher, "--on_bad_image", "ignore",
         "argument --on_bad_image/--on-bad-image: invalid choice 'ignore'; valid values: error, skip"),
        (train_teacher, "--protocol", "random", "argument --protocol: invalid choice 'random'; valid values: "
                                                "resplit, official"),
        (train_teacher, "--task", "5class", "argument --task: invalid choice '5class'; valid values: 8class, "
                                            "binary, 3class, 7class"),
        (train_teacher, "--dataset", "camelyon", "argument --dataset: invalid choice 'camelyon'; valid values: "
                                                 "chaoyang, breakhis, lunghist700, imagefolder, demo"),
    ],
)
def test_every_fixed_choice_is_checked_at_parse_time(outputs, capsys, script, flag, value, message):
    argv = ["--dataset", "chaoyang", flag, value] if flag != "--dataset" else [flag, value]
    assert parse_error(script, argv, capsys) == message


def test_choices_accept_any_case_and_the_usual_dtype_aliases(outputs):
    for alias, dtype in (("bf16", "bfloat16"), ("BFloat16", "bfloat16"), ("fp16", "float16"), ("half", "float16"),
                         ("fp32", "float32"), ("float", "float32")):
        _, model_args, _, _ = parse(distill_student, ["--dataset", "lunghist700", "--teacher_dtype", alias])
        assert model_args.teacher_dtype == dtype
    data_args, model_args, _, _ = parse(distill_student, ["--dataset", "BREAKHIS", "--magnification", "40",
                                                          "--fusion", "Softmax", "--prompt_levels", "detailed, label"])
    assert (data_args.dataset, data_args.magnification) == ("breakhis", "40X")
    assert model_args.fusion == "softmax" and model_args.prompt_levels == "label,detailed"


def test_a_recipe_value_and_a_dataset_option_are_checked_too(outputs, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "lunghist700", "student": {"fusion": "learnt"}}))
    assert parse_error(distill_student, ["--config", str(recipe)], capsys) == (
        f"{recipe}: fusion: invalid choice 'learnt'; valid values: learned, softmax"
    )
    assert parse_error(train_teacher, ["--dataset", "chaoyang", "--task", "binary"], capsys) == (
        "--task does not apply to --dataset chaoyang; its options: --protocol"
    )
    assert parse_error(train_teacher, ["--dataset", "lunghist700", "--task", "binary"], capsys) == (
        "--task binary does not apply to --dataset lunghist700; its tasks: 3class, 7class"
    )
    assert parse_error(train_teacher, ["--dataset", "demo", "--lr_schedule", "2:1e-4"], capsys) == (
        "--lr_schedule must give the learning rate of epoch 1, got '2:1e-4'"
    )


# ------------------------------------------------------------------------------- 14.2 names, recipe and arguments
def test_dataset_names_are_case_insensitive_and_the_recipe_and_arguments_are_logged(tmp_path):
    """`--dataset BreaKHis` used to skip configs/breakhis.yaml and train with Hugging Face defaults."""
    result = run(TEACHER_SCRIPT, "--dataset", "BreaKHis", "--data_dir", str(tmp_path / "nowhere"), tmp_path=tmp_path)
    log = result.stderr
    recipe = REPO_ROOT / "configs" / "breakhis.yaml"
    assert f"Recipe: {recipe} (the paper's settings for breakhis); flags override it, --config none skips it" in log
    assert "  dataset = 'breakhis'  [flag]\n" in log
    assert "  learning_rate = 0.0003  [recipe]\n" in log and "  num_train_epochs = 100  [recipe]\n" in log
    assert f"  output_dir = '{tmp_path / 'outputs' / 'breakhis' / 'teacher'}'  [derived]\n" in log
    # 14.9: a missing data folder is a user error: one message, exit code 2, no traceback
    assert result.returncode == 2 and "Traceback" not in log
    assert log.count(f"train_teacher.py: error: The breakhis data folder {tmp_path / 'nowhere'} (given as "
                     "data_dir) does not exist.") == 1


def test_the_effective_arguments_hide_tokens(outputs, caplog):
    caplog.set_level("INFO", logger="modeling_amlpf.cli.arguments")
    parse(train_teacher, ["--dataset", "demo", "--hub_token", "hf_secret123"])
    assert "  hub_token = <hidden>  [flag]" in caplog.text and "hf_secret123" not in caplog.text


def test_without_a_recipe_the_log_says_so(outputs, caplog):
    caplog.set_level("INFO", logger="modeling_amlpf.cli.arguments")
    parse(train_teacher, ["--dataset", "lunghist700", "--config", "none"])
    assert "Recipe: none (--config none): flags and TrainingArguments' own defaults apply" in caplog.text
    caplog.clear()
    parse(train_teacher, ["--dataset", "imagefolder", "--data_dir", str(outputs)])
    assert "Recipe: none (no configs/imagefolder.yaml): flags and TrainingArguments' own defaults apply" in caplog.text


# ------------------------------------------------------------------- 14.4 a preset on the command line wins
def test_a_preset_on_the_command_line_wins_over_the_recipe_backbone(tmp_path):
    """configs/lunghist700.yaml names UNI (gated, offline here): `--teacher_config teacher-tiny` must not fetch it,
    and `--student_model student-tiny` replaces the recipe's checkpoints/clip-rn50. The README's tiny run."""
    tree = make_lunghist700_tree(tmp_path / "download", patients=6, images_per_folder=2)
    (tmp_path / "data").mkdir()
    shutil.move(str(tree.data_dir), tmp_path / "data" / "lunghist700")
    short = ["--num_train_epochs", "1", "--global_train_batch_size", "4", "--per_device_eval_batch_size", "8",
             "--do_predict", "False"]
    teacher = run(TEACHER_SCRIPT, "--dataset", "lunghist700", "--teacher_config", str(TEACHER_TINY), *short,
                  tmp_path=tmp_path)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    assert ("--teacher_config given: the recipe's teacher_backbone (hf-hub:MahmoodLab/uni) does not apply; pass "
            "--teacher_backbone to use one with this architecture") in teacher.stderr
    assert "Hugging Face cache" not in teacher.stderr  # nothing was fetched (offline, this would have failed)
    assert "'pin_memory' argument is set as true" not in teacher.stderr  # 14.9: torch's warning on CPU machines
    student = run(STUDENT_SCRIPT, "--dataset", "lunghist700", "--student_model", str(STUDENT_TINY), *short,
                  tmp_path=tmp_path)
    assert student.returncode == 0, student.stderr[-3000:]
    assert f"  student_model = '{STUDENT_TINY}'  [flag]\n" in student.stderr
    out = tmp_path / "outputs" / "lunghist700"
    assert json.loads((out / "teacher" / "config.json").read_text())["backbone_weights"] is None
    assert (out / "student" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------- 14.5 help
def test_help_needs_no_dataset_and_documents_the_recipe_flag(tmp_path):
    result = run(TEACHER_SCRIPT, "-h", tmp_path=tmp_path, COLUMNS="119")
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert help_text.startswith("usage: train_teacher.py --dataset NAME [--config FILE.yaml|none] [--FLAG VALUE ...]")
    assert "--config VALUE YAML recipe: shared keys plus teacher:/student: sections" in help_text
    for flag in ("--global_train_batch_size", "--overwrite_output_dir", "--teacher_config", "--learning_rate"):
        assert flag in help_text
    assert "{chaoyang,breakhis,lunghist700,imagefolder,demo}" in help_text
    assert len(result.stdout.splitlines()) <= 120


# ------------------------------------------------------------------------------- 19 -h that helps, --print_config
HEADINGS = ("data: ", "models: ", "method: ", "run: ")


def help_of(script, capsys, flag: str = "-h") -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(script, [flag])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def help_entries(text: str) -> dict[str, str]:
    """``--flag`` -> its entry (invocation, help and default, joined over its wrapped lines)."""
    entries, current = {}, None
    for line in text.splitlines():
        if line.startswith("  --"):
            current = line.split()[0]
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("script", [train_teacher, distill_student])
def test_help_groups_the_projects_flags_and_leaves_the_trainers_to_help_all(outputs, capsys, monkeypatch, script):
    """-h was 609/650 lines with ~100 TrainingArguments flags (neftune, liger...) among the project's."""
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal: the help keeps its width and length
    text = help_of(script, capsys)
    lines = text.splitlines()
    assert len(lines) <= 120
    starts = [next(i for i, line in enumerate(lines) if line.startswith(heading)) for heading in HEADINGS]
    assert starts == sorted(starts)
    groups = dict(zip(HEADINGS, ["\n".join(lines[a:b]) for a, b in zip(starts, [*starts[1:], len(lines)])]))
    assert "\n  --dataset " in groups["data: "] and "\n  --split_seeds " in groups["data: "]
    assert "\n  --model_name_or_path " in groups["models: "]
    assert "\n  --lr_schedule " in groups["method: "] and "\n  --num_train_epochs " in groups["method: "]
    assert "\n  --print_config " in groups["run: "] and "\n  --output_dir " in groups["run: "]
    entries = help_entries(text)
    for flag in ("--neftune_noise_alpha", "--use_liger_kernel", "--eval_strategy", "--fp16", "--deepspeed"):
        assert flag not in entries
    assert "--help-all lists them" in " ".join(text.split())
    everything = help_of(script, capsys, "--help-all")
    assert "\nTrainer flags: every other transformers.TrainingArguments flag" in everything
    for flag in ("--neftune_noise_alpha", "--eval_strategy", "--fp16", "--print_config", "--dataset"):
        assert flag in help_entries(everything)
    if script is distill_student:
        for flag in ("--teacher_model", "--student_model"):
            assert f"\n  {flag} " in groups["models: "]
        for flag in ("--kd_weight", "--resampling", "--fusion", "--prompts_file"):
            assert f"\n  {flag} " in groups["method: "]


def test_help_shows_the_defaults_a_dataset_run_uses(outputs, capsys, tmp_path):
    """The defaults shown were TrainingArguments' own (3.0 epochs, lr 5e-05) where the recipe decides."""
    entries = help_entries(help_of(distill_student, capsys))
    recipes = {path.stem: arguments.read_config(path, "student") for path in (REPO_ROOT / "configs").glob("*.yaml")}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    assert all("num_train_epochs" in recipe for recipe in recipes.values())
    assert entries["--num_train_epochs"].endswith(f"[recipe; else {defaults['num_train_epochs']}]")
    assert entries["--learning_rate"].endswith(f"[recipe; else {defaults['learning_rate']}]")
    assert "max_grad_norm" not in recipes["demo"] and recipes["lunghist700"]["max_grad_norm"] == 0.0
    # the scripts' own default, not TrainingArguments' clipping at 1.0: no default clips silently
    assert arguments.PROTOCOL_DEFAULTS["max_grad_norm"] == 0.0 != defaults["max_grad_norm"]
    assert entries["--max_grad_norm"].endswith("[paper recipes; else 0.0]")
    assert entries["--output_dir"].endswith(f"[default: {outputs}/<dataset>/student]")  # $AMLPF_OUTPUT_DIR
    assert entries["--teacher_model"].endswith(f"[default: {outputs}/<dataset>/teacher]")
    # what "[default: X]" promises is what a run without a recipe gets
    data_args, model_args, run_args, training = parse(
        distill_student, ["--dataset", "imagefolder", "--data_dir", str(tmp_path), "--kd_weight", "0"]
    )
    values = {**vars(data_args), **vars(model_args), **vars(run_args), **training.to_dict()}
    checked = 0
    for flag, entry in entries.items():
        name = flag[2:]
        if "[default: " not in entry or name in ("output_dir", "teacher_model", "hub_model_id", "kd_weight"):
            continue
        assert not any(name in recipe for recipe in recipes.values()), flag
        shown = entry.rsplit("[default: ", 1)[1].rstrip("]")
        assert shown == str(values[name]), (flag, values[name])
        checked += 1
    assert checked >= 12


def refuse(*args, **kwargs):
    raise AssertionError("nothing may be read or loaded here")


def test_print_config_prints_the_effective_settings_without_reading_data_or_models(outputs, monkeypatch, capsys):
    monkeypatch.setattr(protocol, "load_split", refuse)
    monkeypatch.setattr(distill_student, "load_student", refuse)
    monkeypatch.setattr(distill_student.AutoModel, "from_pretrained", refuse)
    data = outputs.parent / "data"
    with pytest.raises(SystemExit) as exit_info:
        distill_student.main(["--dataset", "lunghist700", "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    recipe = yaml.safe_load((REPO_ROOT / "configs" / "lunghist700.yaml").read_text())
    assert out.split(": ", 1)[1].startswith("effective settings (--print_config: nothing was loaded")
    assert f"Recipe: {REPO_ROOT / 'configs' / 'lunghist700.yaml'} (the paper's settings for lunghist700)" in out
    assert f"  data       {data / 'lunghist700'} (not found)\n" in out
    assert f"  output     {outputs / 'lunghist700' / 'student'}\n" in out
    assert f"  teacher    {outputs / 'lunghist700' / 'teacher'} (not found)\n" in out
    assert f"  student    {recipe['student']['student_model']} (not found)\n" in out
    assert f"  num_train_epochs = {recipe['student']['num_train_epochs']}  [recipe]\n" in out
    assert f"  lr_schedule = '{recipe['student']['lr_schedule']}'  [recipe]\n" in out
    assert "  dataset = 'lunghist700'  [flag]\n" in out
    assert f"  per_device_train_batch_size = {recipe['student']['global_train_batch_size']}  [auto]\n" in out
    assert "no trained teacher at" not in out.split("notes:")[0]  # a note, not an error
    assert not data.exists() and not outputs.exists()


def test_print_config_runs_as_a_command_without_the_data_folder(tmp_path):
    result = subprocess.run([sys.executable, "train_teacher.py", "--dataset", "demo", "--print_config"],
                            cwd=REPO_ROOT, env=script_env(tmp_path, AMLPF_CACHE=str(tmp_path / "cache")),
                            capture_output=True, text=True, timeout=600)  # from the repository root, as documented
    assert result.returncode == 0, result.stderr
    assert "(SYNTHETIC images, generated there on first use)\n" in result.stdout
    assert "  teacher    configs/models/teacher-tiny\n" in result.stdout  # the demo recipe's preset
    assert "  teacher_config = 'configs/models/teacher-tiny'  [recipe]\n" in result.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "outputs").exists()


def test_a_missing_teacher_or_student_is_refused_before_any_data_loads(outputs, monkeypatch, tmp_path):
    """The missing teacher used to be found after the data loaded and the student was built."""
    monkeypatch.setattr(protocol, "load_split", refuse)
    teacher = outputs / "lunghist700" / "teacher"
    with pytest.raises(FileNotFoundError, match=f"no trained teacher at {teacher}: run `python train_teacher.py "
                                                "--dataset lunghist700`"):
        distill_student.main(["--dataset", "lunghist700", "--student_model", str(STUDENT_TINY)])
    with pytest.raises(FileNotFoundError, match="no student model at checkpoints/clip-rn50. Convert"):
        distill_student.main(["--dataset", "lunghist700", "--kd_weight", "0"])
    with pytest.raises(FileNotFoundError, match="--teacher_config ./nowhere/tiny: no such file or folder"):
        train_teacher.main(["--dataset", "lunghist700", "--teacher_config", "./nowhere/tiny"])
    with pytest.raises(AssertionError, match="nothing may be read"):  # without distillation the data load comes
        distill_student.main(["--dataset", "lunghist700", "--student_model", str(STUDENT_TINY), "--kd_weight", "0"])
    (teacher / "split_2").mkdir(parents=True)
    (teacher / "split_2" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"no trained teacher at {teacher}: "):  # split 1 has none
        distill_student.main(["--dataset", "lunghist700", "--student_model", str(STUDENT_TINY),
                              "--split_seeds", "1,2"])


# ---------------------------------------------------------------------------------------- 19 logs that say what
def test_the_run_data_block_names_the_folder_read_classes_and_images_per_part_and_class(outputs, tmp_path):
    from collections import Counter

    from modeling_amlpf.cli.run_data import load_split, run_data_summary

    parent = tmp_path / "downloads"
    tree = make_lunghist700_tree(parent)
    assert tree.data_dir != parent  # the parent folder is given; the loader reads LungHist700/ inside it
    data_args, model_args, _, training = parse(
        distill_student, ["--dataset", "lunghist700", "--data_dir", str(parent), "--student_model", str(STUDENT_TINY)]
    )
    dd = load_split(data_args, 1)
    block = run_data_summary(dd, data_args, model_args, training.output_dir, split_seed=1).splitlines()
    assert block[0] == "Run data and models:"
    assert block[1] == f"  data folder  {Path(tree.data_dir).resolve()} (given as --data_dir {parent})"
    assert block[2].startswith("  dataset      lunghist700, split seed 1: generated (patient-disjoint)")
    assert block[3] == f"  classes      3: {', '.join(tree.class_names)}"
    for line, part in zip(block[4:7], ("train", "validation", "test")):
        counts = Counter(dd[part]["label"])
        expected = ", ".join(f"{name} {counts[i]}" for i, name in enumerate(tree.class_names))
        assert line == f"  {part:<12} {len(dd[part])} images: {expected}"
    assert sum(len(dd[part]) for part in dd) == len(tree.labels)
    assert block[7] == f"  teacher      {outputs / 'lunghist700' / 'teacher'}"
    assert block[8] == f"  student      {STUDENT_TINY}"
    assert block[9] == f"  output       {outputs / 'lunghist700' / 'student'}"


def test_disable_tqdm_silences_third_party_progress_bars(tmp_path, tiny_teacher, capfd):
    """"Writing model shards" (transformers' save_pretrained) used to be drawn under --disable_tqdm."""
    import datasets
    import huggingface_hub
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    from modeling_amlpf.cli.launch import setup_logging

    try:
        setup_logging(TrainingArguments(output_dir=str(tmp_path), disable_tqdm=False))
        tiny_teacher.save_pretrained(tmp_path / "with_bars")
        assert "Writing model shards" in capfd.readouterr().err  # the bar this test is about
        setup_logging(TrainingArguments(output_dir=str(tmp_path), disable_tqdm=True))
        assert not hf_logging.is_progress_bar_enabled()
        assert huggingface_hub.utils.are_progress_bars_disabled() and not datasets.is_progress_bar_enabled()
        tiny_teacher.save_pretrained(tmp_path / "without_bars")
        assert "Writing model shards" not in capfd.readouterr().err
    finally:
        hf_logging.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()
        datasets.enable_progress_bars()


def test_replicas_log_errors_only_and_the_project_logs_info_on_the_main_process(outputs, monkeypatch):
    import logging

    from modeling_amlpf.cli.launch import setup_logging

    root_level = logging.getLogger().level
    try:
        *_, training = parse(train_teacher, ["--dataset", "demo"])
        setup_logging(training)
        assert logging.getLogger("modeling_amlpf").getEffectiveLevel() == logging.INFO
        assert logging.getLogger("distill_student").getEffectiveLevel() == logging.INFO
        assert logging.getLogger("transformers").getEffectiveLevel() == logging.WARNING  # passive: theirs
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setattr(type(training), "should_log", property(lambda self: False))
        setup_logging(training)
        for name in ("modeling_amlpf", "distill_student", "py.warnings", "transformers"):
            assert logging.getLogger(name).getEffectiveLevel() == logging.ERROR, name
    finally:
        for name in ("modeling_amlpf", "train_teacher", "distill_student", "predict", "__main__"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger().setLevel(root_level)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_warning()


# --------------------------------------------------------------------------------------------------- 14.6 resume
def make_checkpoint(folder: Path, step: int) -> Path:
    """A complete checkpoint-<step> (weights, optimizer, scheduler, state): only those are resumed."""
    from test_run_folder import write_checkpoint

    return write_checkpoint(folder / f"checkpoint-{step}", step)


def test_a_checkpoint_in_the_output_folder_is_resumed(tmp_path):
    out = tmp_path / "outputs" / "lunghist700" / "teacher"
    make_checkpoint(out, 2)
    last = make_checkpoint(out, 10)
    result = run(TEACHER_SCRIPT, "--dataset", "lunghist700", "--data_dir", str(tmp_path / "nowhere"),
                 tmp_path=tmp_path)
    assert (f"Checkpoint detected, resuming training at {last}. To avoid this behavior, change the `--output_dir` "
            "or add `--overwrite_output_dir` to train from scratch.") in result.stderr
    assert f"  resume_from_checkpoint = '{last}'  [auto]" in result.stderr
    assert result.returncode == 2  # then the missing data folder


def test_a_wrong_resume_path_names_the_real_problem(tmp_path):
    result = run(TEACHER_SCRIPT, "--dataset", "lunghist700", "--resume_from_checkpoint", str(tmp_path / "ckpt"),
                 tmp_path=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"train_teacher.py: error: --resume_from_checkpoint {tmp_path / 'ckpt'}: no such folder"
    )


def test_resume_flags_and_non_empty_output_folders(outputs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "notes.txt").parent.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    base = ["--dataset", "lunghist700", "--output_dir", str(run_dir)]
    assert parse_error(train_teacher, base, capsys) == (
        f"--output_dir {run_dir} already exists and is not empty (notes.txt) and holds no checkpoint to resume: pass "
        "--overwrite_output_dir to train into it from scratch, or choose another --output_dir"
    )
    *_, training = parse(train_teacher, [*base, "--overwrite_output_dir"])
    assert training.resume_from_checkpoint is None
    *_, training = parse(train_teacher, [*base, "--do_train", "False"])  # an evaluation writes beside
    assert training.resume_from_checkpoint is None
    assert parse_error(train_teacher, [*base, "--resume_from_checkpoint", str(run_dir)], capsys) == (
        f"--resume_from_checkpoint {run_dir} is not a Trainer checkpoint (no trainer_state.json): a checkpoint is "
        "one of the checkpoint-<step> folders that training writes into --output_dir (it may also have stopped "
        "while this one was being saved)"
    )
    assert parse_error(train_teacher, [*base, "--resume_from_checkpoint", "True"], capsys) == (
        f"--resume_from_checkpoint True: --output_dir {run_dir} holds no checkpoint-<step> folder"
    )
    last = make_checkpoint(run_dir, 7)
    assert parse_error(train_teacher, [*base, "--resume_from_checkpoint", str(run_dir)], capsys) == (
        f"--resume_from_checkpoint {run_dir} is not a Trainer checkpoint (no trainer_state.json): it holds checkpoint "
        f"folders; the last is {last}"
    )
    for value in ("True", str(last)):
        *_, training = parse(train_teacher, [*base, "--resume_from_checkpoint", value])
        assert training.resume_from_checkpoint == str(last)
    *_, training = parse(train_teacher, base)  # detected
    assert training.resume_from_checkpoint == str(last)


# ------------------------------------------------------------------------------------------- 14.7 Hub repo name
def test_the_default_hub_repo_names_dataset_task_and_role(outputs, tmp_path):
    hub = ["--push_to_hub", "True"]
    *_, teacher = parse(train_teacher, ["--dataset", "lunghist700", "--task", "7class", *hub])
    *_, student = parse(distill_student, ["--dataset", "breakhis", "--task", "binary", "--magnification", "40x", *hub])
    *_, cohort = parse(distill_student, ["--dataset", "imagefolder", "--data_dir", str(tmp_path / "Cohort A"), *hub])
    *_, named = parse(train_teacher, ["--dataset", "chaoyang", *hub, "--hub_model_id", "me/uni-chaoyang"])
    *_, local = parse(train_teacher, ["--dataset", "chaoyang"])
    assert teacher.hub_model_id == "amlpf-lunghist700-7class-teacher"
    assert student.hub_model_id == "amlpf-breakhis-binary-40x-student"
    tag = data_root_tag(tmp_path / "Cohort A")
    assert cohort.hub_model_id == f"amlpf-imagefolder-{tag.replace('_', '-')}-student"
    for repo in (teacher.hub_model_id, student.hub_model_id, cohort.hub_model_id):
        validate_repo_id(repo)
    assert named.hub_model_id == "me/uni-chaoyang" and local.hub_model_id is None  # the card names no repo


def test_the_default_hub_repo_is_logged_by_the_script(tmp_path):
    result = run(STUDENT_SCRIPT, "--dataset", "chaoyang", "--push_to_hub", "True", "--data_dir",
                 str(tmp_path / "nowhere"), tmp_path=tmp_path)
    assert "  hub_model_id = 'amlpf-chaoyang-student'  [derived]\n" in result.stderr
    assert result.returncode == 2


# ----------------------------------------------------------------------------------------------------- 14.9 noise
def test_other_processes_leave_a_parse_error_to_the_main_process(outputs, capsys, monkeypatch):
    """Rank 1 waits (the launcher stops it when rank 0 exits with the same error) and only then speaks, marked."""
    from modeling_amlpf.cli import launch as launch_module

    assert launch_module.REPLICA_GRACE_S >= 2  # time for the main process to print and exit first
    monkeypatch.setattr(launch_module, "REPLICA_GRACE_S", 0.0)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_info:
        parse(distill_student, ["--dataset", "lunghist700", "--fusion", "learnt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("[rank 1] ") and "usage:" not in err
    assert err.rstrip().endswith("error: argument --fusion: invalid choice 'learnt'; valid values: learned, softmax")


def test_a_user_error_under_accelerate_launch_prints_once(tmp_path):
    result = launch(TEACHER_SCRIPT, "--dataset", "lunghist700", "--data_dir", str(tmp_path / "nowhere"),
                    tmp_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    message = f"train_teacher.py: error: The lunghist700 data folder {tmp_path / 'nowhere'} (given as data_dir) does"
    assert output.count(message) == 1, output[-4000:]
    assert output.count("Recipe: ") == 1  # the parse logs once too
    assert "Traceback (most recent call last):\n  File \"" + TEACHER_SCRIPT not in output


def test_dataloader_workers_fit_the_machine(outputs, monkeypatch, caplog):
    monkeypatch.setattr(arguments, "available_cpus", lambda: 3)
    caplog.set_level("INFO", logger="modeling_amlpf.cli.arguments")
    *_, training = parse(train_teacher, ["--dataset", "chaoyang"])  # the recipe asks for 4
    assert training.dataloader_num_workers == 3
    assert "dataloader_num_workers 4 lowered to 3: this machine has 3 CPU core(s) for 1 process(es)" in caplog.text
    if not has_accelerator():
        assert training.dataloader_pin_memory is False


def test_installing_the_package_prints_no_setuptools_warning(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "modeling_amlpf", source / "modeling_amlpf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index", "-w",
         str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # setuptools' own warnings about the project's metadata (pip's notes and other tools' messages do not count)
    setuptools_warnings = [line for line in (result.stdout + result.stderr).splitlines()
                           if "SetuptoolsDeprecationWarning" in line or "would be ignored" in line
                           or "SetuptoolsWarning" in line or line.strip() == "!!"]
    assert not setuptools_warnings, setuptools_warnings
    from zipfile import ZipFile

    names = ZipFile(next((tmp_path / "dist").glob("amlpf-*.whl"))).namelist()
    assert "modeling_amlpf/evaluation/metrics/amlpf_classification/amlpf_classification.py" in names
    assert not [n for n in names if "__pycache__" in n]


# ---------------------------------------------------------------------------- 14.12 several processes on CPUs
@pytest.mark.skipif(has_accelerator(), reason="the correction applies to machines without an accelerator")
def test_accelerate_launch_on_cpus_trains_data_parallel(tmp_path):
    """The README's `accelerate launch --multi_gpu --num_processes 2 distill_student.py ...` without --use_cpu used
    to leave each process at world size 1, training its own copy on all the data."""
    tree = make_imagefolder_tree(tmp_path / "cohort", {"tumour": 8, "stroma": 8, "normal": 8}, images_per_group=2)
    result = launch(STUDENT_SCRIPT, "--dataset", "imagefolder", "--data_dir", str(tree.data_dir), "--groups_csv",
                    str(tree.groups_csv), "--student_model", str(STUDENT_TINY), "--kd_weight", "0",
                    "--global_train_batch_size", "4", "--max_steps", "1", "--eval_strategy", "no", "--save_strategy",
                    "no", "--load_best_model_at_end", "False", "--do_eval", "False", "--do_predict", "False",
                    "--output_dir", str(tmp_path / "student"), "--log_level", "info", tmp_path=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert ("2 processes launched on a machine without an accelerator: use_cpu=True, so that they train "
            "data-parallel on CPUs (gloo) instead of as independent copies") in log
    assert "global batch 4 = 2 process(es) x 1 accumulation step(s) x 2 per device" in log
    assert "Instantaneous batch size per device = 2" in log
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in log
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in log
    assert log.count("Recipe: ") == 1  # logged by rank 0 only
    # every process meets these warnings; only the main process prints them (they printed twice)
    assert log.count("no bundled prompts for dataset 'imagefolder'") == 1
    warnings = [line.split(" WARNING ", 1)[1] for line in log.splitlines() if " WARNING " in line]
    assert warnings and len(warnings) == len(set(warnings)), warnings
    assert log.count("Run data and models:") == 1


# ---------------------------------------------------------------------------------------- 11.8 the global batch
def test_the_global_batch_is_split_over_accumulation_or_refused(outputs, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="modeling_amlpf.cli.arguments")
    *_, training = parse(distill_student, ["--dataset", "lunghist700", "--gradient_accumulation_steps", "3"])
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (6, 3)  # 18 = 1 x 3 x 6
    assert "global batch 18 = 1 process(es) x 3 accumulation step(s) x 6 per device" in caplog.text
    assert ("kd_loss l2 is a Frobenius norm over each micro-batch of 6: averaged over 3 micro-batches its weight "
            "against the cross-entropy is about 1/sqrt(3) of one batch of the same global size; --kd_weight 1.73 "
            "restores the reference's single-batch balance") in caplog.text
    *_, training = parse(distill_student, ["--dataset", "lunghist700", "--per_device_train_batch_size", "5"])
    assert training.per_device_train_batch_size == 5  # a per-device batch on the command line wins
    *_, training = parse(train_teacher, ["--dataset", "lunghist700", "--global_train_batch_size", "8"])
    assert training.per_device_train_batch_size == 8
    both = tmp_path / "both.yaml"
    both.write_text("dataset: demo\nglobal_train_batch_size: 8\nper_device_train_batch_size: 4\n")
    assert parse_error(train_teacher, ["--config", str(both)], capsys) == (
        f"{both} sets both global_train_batch_size and per_device_train_batch_size; keep one"
    )
    assert parse_error(train_teacher, ["--dataset", "lunghist700", "--global_train_batch_size", "8",
                                       "--per_device_train_batch_size", "4"], capsys) == (
        "give --global_train_batch_size or --per_device_train_batch_size, not both"
    )


def test_a_global_batch_that_does_not_divide_is_refused(tmp_path):
    result = run(STUDENT_SCRIPT, "--dataset", "lunghist700", "--gradient_accumulation_steps", "4", tmp_path=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "distill_student.py: error: global_train_batch_size 18 does not divide into 1 process(es) x 4 gradient "
        "accumulation step(s): choose a multiple of 4, change --gradient_accumulation_steps, or set "
        "--per_device_train_batch_size instead"
    )


def test_paper_recipes_state_the_global_batch():
    from modeling_amlpf.cli.arguments import CONFIG_DIR, read_config

    for dataset in ("chaoyang", "breakhis", "lunghist700"):
        teacher = read_config(CONFIG_DIR / f"{dataset}.yaml", "teacher")
        student = read_config(CONFIG_DIR / f"{dataset}.yaml", "student")
        assert teacher["global_train_batch_size"] == 24 and student["global_train_batch_size"] == 18
        assert "per_device_train_batch_size" not in teacher and "per_device_train_batch_size" not in student


# ------------------------------------------------------------------------------ 16.3 output folders per data root
def test_imagefolder_outputs_and_teacher_follow_the_data_root(tmp_path):
    cohort = tmp_path / "hospital" / "slides"
    result = run(STUDENT_SCRIPT, "--dataset", "imagefolder", "--data_dir", str(cohort), tmp_path=tmp_path)
    root = tmp_path / "outputs" / f"imagefolder-{data_root_tag(cohort)}"
    assert f"  output_dir = '{root / 'student'}'  [derived]\n" in result.stderr
    assert f"  teacher_model = '{root / 'teacher'}'  [derived]\n" in result.stderr
    assert result.returncode == 2  # its teacher is missing: found before the (missing) data folder
    assert f"distill_student.py: error: no trained teacher at {root / 'teacher'}: run `python train_teacher.py" in (
        result.stderr
    )


def test_two_cohorts_get_two_output_folders(outputs, tmp_path):
    folders = []
    for name in ("a/images", "b/images"):
        _, model_args, _, training = parse(distill_student, ["--dataset", "imagefolder", "--data_dir",
                                                             str(tmp_path / name)])
        assert Path(model_args.teacher_model).parent == Path(training.output_dir).parent
        folders.append(Path(training.output_dir).parent.name)
        *_, teacher = parse(train_teacher, ["--dataset", "imagefolder", "--data_dir", str(tmp_path / name)])
        assert teacher.output_dir == model_args.teacher_model
    assert folders[0] != folders[1] and all(f.startswith("imagefolder-images-") for f in folders)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--min_class_share", "1.5"], "--min_class_share must lie in [0, 1] (0: the reference formula), got 1.5"),
        (["--teacher_cache_max_mb", "-1"], "--teacher_cache_max_mb must be >= 0 (0 stores nothing; omit it for no "
                                           "bound), got -1.0"),
        (["--do_train", "False", "--model_name_or_path", "m", "--external_cohort", "--split_seeds", "1-2"],
         "--external_cohort evaluates every image of the folder, the same for every seed: drop --split_seeds"),
    ],
)
def test_numeric_and_combined_options_are_checked_at_parse_time(argv, message, capsys):
    assert parse_error(distill_student, ["--dataset", "lunghist700", *argv], capsys) == message


def test_a_bad_class_map_is_refused_at_parse_time(capsys):
    message = parse_error(distill_student, ["--dataset", "imagefolder", "--class_map", "no_equals_sign"], capsys)
    assert "no_equals_sign" in message
