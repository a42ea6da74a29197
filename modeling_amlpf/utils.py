"""Small pieces every part of the package shares: the user-error type, JSON-safe results, the recipe folder."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CONFIG_DIR", "UserError", "json_safe"]

# the repository's recipes (configs/<dataset>.yaml), prompt files and presets
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class UserError(Exception):
    """A mistake the user can fix (a flag, a file, a folder): the scripts print its message and exit with 2.

    Raise it (or a subclass) for user-facing errors that are not already one of :data:`USER_ERRORS`."""


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf as None (JSON ``null``), numpy scalars and arrays as Python values, tuples as lists.

    ``json.dumps`` writes NaN as the bare word ``NaN``, which strict JSON parsers reject; an undefined metric
    (AUROC with a single class in the test labels) must read back as ``null``. Use on everything written as
    results (``trainer.save_metrics``, summaries, histories).
    """
    if isinstance(obj, Mapping):
        return {json_safe(key) if not isinstance(key, str) else key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # a torch tensor
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj
