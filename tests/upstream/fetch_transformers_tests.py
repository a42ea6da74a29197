"""Fetch transformers' common test mixins for ``make test-upstream`` (never needed by ``make test``).

They live only in the source distribution of the installed version: download it with pip, keep its ``tests``
folder in a cache directory, and install ``parameterized`` (which they import) beside it, outside the venv.

    python tests/upstream/fetch_transformers_tests.py .cache/transformers-src   # prints the tests folder
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import transformers

TEST_DEPENDENCIES = ["parameterized>=0.9"]


def fetch(cache: Path) -> Path:
    """``<cache>/transformers-<version>/tests`` (downloaded once) and ``<cache>/deps`` (the test-only packages)."""
    version = transformers.__version__
    root = cache / f"transformers-{version}"
    tests = root / "tests"
    if not (tests / "test_modeling_common.py").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-binary", ":all:",
             "--no-deps", "--quiet", "-d", str(cache)],
            check=True, stdout=sys.stderr,  # stdout carries the tests folder only
        )
        sdist = cache / f"transformers-{version}.tar.gz"
        if not sdist.is_file():
            raise FileNotFoundError(f"pip did not leave {sdist}; found {sorted(p.name for p in cache.iterdir())}")
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(f"transformers-{version}/tests/")]
            archive.extractall(cache, members=members, filter="data")
        if not (tests / "test_modeling_common.py").is_file():
            raise FileNotFoundError(f"{sdist} has no tests/test_modeling_common.py")
    # The repository's tests/__init__.py is empty and not in the sdist; test_configuration_common executes it.
    (tests / "__init__.py").touch()
    deps = cache / "deps"
    if not (deps / "parameterized").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(deps),
             *TEST_DEPENDENCIES],
            check=True, stdout=sys.stderr,  # stdout carries the tests folder only
        )
    return tests


if __name__ == "__main__":
    print(fetch(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/transformers-src")))
