"""Where data and caches live when the caller does not say."""

from __future__ import annotations

import os

DATA_DIR_ENV = "AMLPF_DATA_DIR"
CACHE_DIR_ENV = "AMLPF_CACHE"


def cache_dir(*parts: str) -> str:
    """`$AMLPF_CACHE/<parts>` or `~/.cache/amlpf/<parts>` (not created here)."""
    base = os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "amlpf")
    return os.path.join(os.path.abspath(base), *parts)


def default_data_dir(name: str) -> str:
    """`$AMLPF_DATA_DIR/<name>` when the variable is set, else `data/<name>` below the working directory."""
    base = os.environ.get(DATA_DIR_ENV) or "data"
    return os.path.abspath(os.path.join(base, name))
