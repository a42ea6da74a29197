"""The README and docs/ as a newcomer meets them: short, every page linked, every link resolving, nothing that points
outside the repository, and every command that can run offline (the tiny presets, ``-h``, ``--print_config``)
run exactly as written, from the repository root, on a small look-alike of the dataset it names.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from data_trees import make_lunghist700_tree

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
# what needs nothing downloaded: the tiny presets, the help, the effective settings
OFFLINE_MARKERS = ("configs/models/teacher-tiny", "configs/models/student-tiny", "--print_config")
HELP_FLAGS = ("-h", "--help", "--help-all")
SCRIPTS = ("train_teacher.py", "distill_student.py", "predict.py")
# paths that name something outside this repository (a shared workspace, a file of another project)
OUTSIDE = ("shared/", "METHOD.md", "/work/", "/tmp/")


def bash_commands(page: Path) -> list[str]:
    """The commands of the ```bash blocks of a page, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def runnable(command: str) -> bool:
    words = shlex.split(command)
    if not any(word in SCRIPTS for word in words):
        return False
    return any(marker in words for marker in HELP_FLAGS) or any(marker in command for marker in OFFLINE_MARKERS)


def offline_commands() -> list[str]:
    """Every runnable command of the README and docs, once, in the order a reader meets them."""
    return list(dict.fromkeys(c for page in PAGES for c in bash_commands(page) if runnable(c)))


def test_the_readme_is_short_and_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for page in DOCS:
        assert f"](docs/{page.name})" in text, f"README does not link docs/{page.name}"
    for section in ("## The two commands", "## Quick start on a real dataset", "## The scripts", "## Read more"):
        assert section in text


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves_and_nothing_points_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    for word in OUTSIDE:
        assert word not in text, f"{page.name} mentions {word!r}"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link {target} does not resolve"
        assert REPO_ROOT in resolved.parents or resolved == REPO_ROOT, f"{page.name}: {target} leaves the repository"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", resolved.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {github_anchor(h) for h in headings}, f"{page.name}: no heading #{anchor} in {path}"
    # files of the repository named in code spans exist (patterns with <...>, * or {...} are descriptions)
    for path in re.findall(r"`((?:configs|docs|tests|benchmarks|modeling_amlpf)/[^`\s]*)`", text):
        if not re.search(r"[<>*{}]", path):
            assert (REPO_ROOT / path).exists(), f"{page.name} names {path}, which is not in the repository"


def test_pages_stand_alone():
    """A page cut out of the old README must not point "below"/"above" at text that may now live on another
    page: it links the section instead."""
    pointer = re.compile(r"\((?:see )?(?:below|above)\)|\bsee (?:below|above)\b|, (?:below|above)\)"
                         r"|\b(?:command|commands|pictures|files|table) (?:below|above)\b")
    for page in PAGES:
        found = pointer.findall(" ".join(page.read_text(encoding="utf-8").split()))
        assert not found, f"{page.name}: {found}"


def test_the_docs_commands_that_run_offline_are_selected():
    commands = offline_commands()
    readme = [c for c in bash_commands(README) if runnable(c)]
    assert any("train_teacher.py" in c and "teacher-tiny" in c for c in readme)
    assert any("distill_student.py" in c and "student-tiny" in c for c in readme)
    assert any("--print_config" in c for c in readme) and any("-h" in shlex.split(c) for c in readme)
    assert len(commands) >= 4


def test_every_offline_command_of_the_readme_and_docs_runs_as_written(tmp_path):
    """Run from the repository root as the README says, with $AMLPF_DATA_DIR holding a look-alike LungHist700
    download and $AMLPF_OUTPUT_DIR a temporary folder (so that nothing is written into the checkout)."""
    make_lunghist700_tree(tmp_path / "data")  # -> data/LungHist700, the name the download unpacks to
    outputs = tmp_path / "outputs"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    env.update(HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               AMLPF_DATA_DIR=str(tmp_path / "data"), AMLPF_OUTPUT_DIR=str(outputs),
               AMLPF_CACHE=str(tmp_path / "cache"), COLUMNS="119")
    before = set(os.listdir(REPO_ROOT))
    for command in offline_commands():
        words = shlex.split(command)
        if words[:2] == ["accelerate", "launch"]:
            words = [sys.executable, "-m", "accelerate.commands.launch", *words[2:]]
        elif words[0] in ("python", "python3"):
            words = [sys.executable, *words[1:]]
        result = subprocess.run(words, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        script = next(word for word in words if word in SCRIPTS)
        if any(flag in words for flag in HELP_FLAGS):
            assert result.stdout.startswith(f"usage: {script}"), command
            assert len(result.stdout.splitlines()) <= (400 if "--help-all" in words else 120), command
        elif "--print_config" in words:
            assert "effective settings" in result.stdout and "folders:" in result.stdout, command
        else:  # a tiny training run: what it read, then the model it wrote where the README says
            role = "teacher" if script == "train_teacher.py" else "student"
            dataset = words[words.index("--dataset") + 1]
            folder = outputs / dataset / role
            for name in ("config.json", "model.safetensors", "test_results.json", "split.json", "README.md"):
                assert (folder / name).is_file(), f"{command}: no {folder / name}"
            assert "Run data and models:" in result.stderr
            assert f"  data folder  {tmp_path / 'data' / 'LungHist700'}" in result.stderr
    assert set(os.listdir(REPO_ROOT)) == before  # nothing written into the checkout
