"""Shared test set-up: offline, deterministic, tiny models built from the committed presets."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TEACHER_TINY = REPO_ROOT / "configs" / "models" / "teacher-tiny"
STUDENT_TINY = REPO_ROOT / "configs" / "models" / "student-tiny"
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import modeling_amlpf  # noqa: E402,F401  (registers the Auto classes)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Demo data, scan caches and HF module caches go to a per-session temporary folder."""
    cache = tmp_path_factory.mktemp("amlpf-cache")
    os.environ["AMLPF_CACHE"] = str(cache)
    os.environ["HF_MODULES_CACHE"] = str(cache / "hf_modules")
    yield cache


@pytest.fixture(scope="session")
def demo_data_dir(_isolated_cache):
    """The synthetic demo images, generated once per session."""
    from modeling_amlpf.data.demo import ensure_demo_data

    return ensure_demo_data(str(_isolated_cache / "demo"))


@pytest.fixture
def tiny_teacher():
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    return AutoModel.from_config(AutoConfig.from_pretrained(TEACHER_TINY))


@pytest.fixture
def tiny_student():
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(STUDENT_TINY))
    return model, AutoTokenizer.from_pretrained(STUDENT_TINY)


# The first lines of a script run in a child process "as if amlpf were not installed": importing the package
# fails, so checkpoints must load through their own remote code.
HIDE_PACKAGE = """
import importlib.abc, sys

class HidePackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_amlpf" or name.startswith("modeling_amlpf."):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, HidePackage())
"""


def free_port() -> int:
    """A TCP port free right now, for `accelerate launch --main_process_port` (a fixed port can be taken)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
