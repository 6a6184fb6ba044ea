"""Which torch device a run uses: the one place that turns ``device=...`` into a torch.device."""

from __future__ import annotations

import torch

from marginbench.errors import MarginbenchError


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = "auto" if name is None else str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MarginbenchError(f"device={name} asked for but CUDA is not available; use device=auto or device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MarginbenchError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
