"""Strict JSON for every file marginbench writes (summaries, detectors, reports)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def json_clean(obj: Any) -> Any:
    """Numpy scalars and arrays -> Python values; nan/±inf -> None (JSON has neither: the
    count fields next to a value say what happened)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_clean(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(value: Any) -> str:
    """Indented strict JSON of ``json_clean(value)``, keys in insertion order."""
    return json.dumps(json_clean(value), indent=2, allow_nan=False)
