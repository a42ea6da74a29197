"""The package layout: imports point one way, and checkpoints saved before the layout still load."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import HIDE_PACKAGE
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "modeling_amlpf"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre_layout"

# folder -> folders of the package it must never import (``models/`` ships as remote code: nothing at all)
FORBIDDEN = {
    "models": {"data", "pretrained", "training", "evaluation", "cli", "utils"},
    "data": {"pretrained", "training", "evaluation", "cli"},
    "pretrained": {"training", "evaluation", "cli"},
    "training": {"evaluation", "cli"},
    "evaluation": {"training", "cli"},
    "slides": {"training", "cli"},
    "utils": {"models", "data", "pretrained", "training", "evaluation", "cli"},
}


def package_imports(path: Path) -> set[str]:
    """Top-level folders (or modules) of ``modeling_amlpf`` that the file imports, at any depth of the file."""
    module_parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    package_parts = module_parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [alias.name] for alias in node.names] if not node.module else [target]
            else:
                names = [node.module.split(".")] if node.module else []
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for parts in names:
            if parts and parts[0] == "modeling_amlpf" and len(parts) > 1:
                found.add(parts[1])
    return found


def owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_imports_point_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        folder = owner(path)
        for target in package_imports(path) - {folder}:
            if target in FORBIDDEN.get(folder, set()):
                wrong.append(f"{path.relative_to(REPO_ROOT)} imports modeling_amlpf.{target}")
    assert not wrong, "\n".join(wrong)


def test_the_walker_sees_relative_and_absolute_imports(tmp_path):
    """The check above would pass vacuously if the walker missed imports: it must see both spellings."""
    sample = PACKAGE / "training" / "_probe_for_test.py"
    sample.write_text("from ..evaluation import metrics\nimport modeling_amlpf.cli.launch\nfrom . import views\n")
    try:
        assert package_imports(sample) == {"evaluation", "cli", "training"}
    finally:
        sample.unlink()


def test_models_folder_is_exactly_the_remote_code(tiny_teacher, tmp_path):
    """``models/`` holds the files ``save_pretrained`` copies into a checkpoint, and nothing else."""
    tiny_teacher.save_pretrained(tmp_path)
    copied = {p.name for p in tmp_path.glob("*.py")}
    here = {p.name for p in (PACKAGE / "models").glob("*.py")} - {"__init__.py"}
    assert {"configuration_amlpf.py", "modeling_amlpf.py"} <= copied <= here
    assert here == {"configuration_amlpf.py", "modeling_amlpf.py", "image_processing_amlpf.py", "image_decoding.py"}


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_checkpoint_saved_before_the_layout_loads_and_predicts_the_same(kind):
    """A folder written by the flat-layout code (``tests/fixtures/pre_layout``) loads through the Auto classes
    and gives the logits it gave then, processor included. (The student folder keeps its weights, configs and
    tokenizer only: its copy of the flat-layout code is the teacher folder's, which the remote-code test runs.)"""
    from transformers import AutoImageProcessor, AutoModel

    import modeling_amlpf

    folder = FIXTURES / kind
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(model, (modeling_amlpf.AmlpfTeacherForImageClassification,
                              modeling_amlpf.AmlpfClipForImageClassification))
    expected = load_file(FIXTURES / f"{kind}_expected.safetensors")
    images = [image.permute(1, 2, 0).numpy() for image in expected["image"]]
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)


def test_checkpoint_saved_before_the_layout_loads_as_remote_code(tmp_path):
    """With ``trust_remote_code`` and without the package, the checkpoint's own (flat-layout) files define the
    model, and it gives the logits it gave when it was saved."""
    script = HIDE_PACKAGE + textwrap.dedent(
        f"""
        import json
        import torch
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        folder = {str(FIXTURES / "teacher")!r}
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        expected = load_file({str(FIXTURES / "teacher_expected.safetensors")!r})
        images = [image.permute(1, 2, 0).numpy() for image in expected["image"]]
        with torch.no_grad():
            logits = model(**processor(images, return_tensors="pt")).logits
        print(json.dumps(float((logits - expected["logits"]).abs().max())))
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"))
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5
