"""WSInfer in its own virtual environment, created once and cached (tests and benchmarks/bench_wsinfer.py).

WSInfer 0.6.1 pins what it imports loosely: it needs `zarr<3` and `tiffslide<2.6`, and brings h5py, opencv, pandas,
scikit-image and shapely that the project does not use. So it lives in `.cache/wsinfer-venv` (gitignored;
`AMLPF_WSINFER_VENV` moves it), with the project's own torch and torchvision versions. The first call installs it
(about a minute: torch comes from the project's environment, see ``ensure_wsinfer_venv``); later calls reuse it.
Extra pip arguments go in `AMLPF_WSINFER_PIP_ARGS` (e.g. `--extra-index-url https://download.pytorch.org/whl/cpu`
for CPU wheels).

WSInfer's CLI fetches its model-zoo registry when it is imported: `wsinfer_environment` points HOME at a folder
holding an empty registry and sets HF_HUB_OFFLINE=1, so nothing reaches the network.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "wsinfer_helper.py"
WSINFER_PINS = ("wsinfer==0.6.1", "zarr<3", "tiffslide<2.6")
STAMP = ".amlpf-wsinfer-ready"


def torch_pins() -> list[str]:
    """torch and torchvision at the versions the project runs (local build labels dropped)."""
    import torch
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]


def venv_dir() -> Path:
    return Path(os.environ.get("AMLPF_WSINFER_VENV") or REPO_ROOT / ".cache" / "wsinfer-venv")


def ensure_wsinfer_venv(path: Path | None = None) -> Path:
    """The venv's folder, installing WSInfer into it first when it is missing or was made with other pins.

    The venv sees the project's packages after its own (a ``.pth`` file naming the project's site-packages), so
    torch and torchvision are the project's very install (no second 5 GB copy; about a minute to set up), while
    WSInfer's own pins (zarr, tiffslide, ...) are installed into the venv and come first."""
    path = Path(path or venv_dir())
    pins = torch_pins() + list(WSINFER_PINS)
    stamp = path / STAMP
    if stamp.is_file() and stamp.read_text().split() == pins:
        return path
    if path.exists():
        shutil.rmtree(path)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = str(path / "bin" / "python")
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    Path(own, "amlpf-project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    extra = shlex.split(os.environ.get("AMLPF_WSINFER_PIP_ARGS", ""))
    result = subprocess.run([python, "-m", "pip", "install", "--quiet", *extra, *pins],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"installing {' '.join(pins)} into {path} failed:\n{result.stderr[-3000:]}")
    stamp.write_text("\n".join(pins) + "\n")
    return path


def wsinfer_environment(home: Path) -> dict[str, str]:
    """Environment for WSInfer: offline, CPU, HOME holding an empty model-zoo registry."""
    registry = Path(home) / ".wsinfer-zoo" / "wsinfer-zoo-registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    if not registry.is_file():
        registry.write_text(json.dumps({"models": {}}))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", WSINFER_FORCE_CPU="1")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_wsinfer(venv: Path, slides: Path, results: Path, export_dir: Path, home: Path, batch_size: int = 32,
                extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """`wsinfer run -i SLIDES -o RESULTS -c config.json -p torchscript_model.pt -n 1` as the docs give it."""
    command = [str(venv / "bin" / "wsinfer"), "run", "-i", str(slides), "-o", str(results),
               "-c", str(export_dir / "config.json"), "-p", str(export_dir / "torchscript_model.pt"),
               "-n", "1", "-b", str(batch_size)]
    env = {**wsinfer_environment(home), **(extra_env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=env)


def run_helper(venv: Path, *args: str) -> None:
    """tests/wsinfer_helper.py inside the WSInfer venv (it has tifffile and tiffslide)."""
    result = subprocess.run([str(venv / "bin" / "python"), str(HELPER), *map(str, args)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"wsinfer_helper.py {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")


def validate_config(venv: Path, config_path: Path) -> subprocess.CompletedProcess:
    """WSInfer's own validation of a model config (`wsinfer_zoo.client.validate_config_json`)."""
    code = ("import json, sys; from wsinfer_zoo.client import validate_config_json; "
            "validate_config_json(json.load(open(sys.argv[1])))")
    return subprocess.run([str(venv / "bin" / "python"), "-c", code, str(config_path)],
                          capture_output=True, text=True, env=wsinfer_environment(config_path.parent / "home"))
