"""Checkpoints of locally trained models (the demo zoo and ``marginbench train`` outputs).

A checkpoint is one ``torch.save``d dict that carries everything needed to rebuild the model
and to know where it came from (nanoGPT style: weights travel with the config that made
them)::

    {
      "format": "marginbench-checkpoint-v1",
      "arch": "small_cnn",            # a name in marginbench.models.small.ARCHITECTURES
      "num_classes": 10,
      "dataset": "fashion_mnist",     # cifar10 | cifar100 | fashion_mnist
      "threat_model": "Linf",
      "state_dict": {...},            # float32 tensors
      "train_config": {...},          # the TrainConfig fields, primitives only
      "data": {...},                  # dataset, n_train, seed, augment
      "metrics": {...},               # clean / PGD accuracy, wall time, losses per epoch
    }

Only primitives and tensors are stored, so it loads with ``torch.load(weights_only=True)``
(no pickled code is executed when a user loads a checkpoint from elsewhere).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from marginbench.errors import MarginbenchError
from marginbench.models import sources
from marginbench.models.small import build_architecture

FORMAT = "marginbench-checkpoint-v1"
META_KEYS = ("arch", "num_classes", "dataset", "threat_model", "train_config", "data", "metrics")


def save_local_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    dataset: str,
    threat_model: str = "Linf",
    train_config: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then os.replace).

    A crash mid-write leaves either the old file or none, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "arch": arch,
        "num_classes": int(num_classes),
        "dataset": dataset,
        "threat_model": threat_model,
        "state_dict": state,
        "train_config": dict(train_config or {}),
        "data": dict(data or {}),
        "metrics": dict(metrics or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata (everything but the weights), validated."""
    payload = _read(Path(path))
    return {k: payload[k] for k in META_KEYS}


def load_local_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint: (model in eval mode on ``device``, meta dict)."""
    path = Path(path)
    payload = _read(path)
    model = build_architecture(payload["arch"], payload["num_classes"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MarginbenchError(
            f"checkpoint {path} does not match architecture {payload['arch']!r} ({first}); "
            "retrain it with `marginbench train`"
        ) from None
    model.to(device).eval()
    return model, {k: payload[k] for k in META_KEYS}


def find_local_checkpoint(name: str, model_dir: Path | None = None) -> Path | None:
    """``<model_dir>/local/<name>.pt`` (user-trained) first, then the bundled demo zoo."""
    candidates = []
    if model_dir is not None:
        candidates.append(Path(model_dir) / "local" / f"{name}.pt")
    candidates.append(sources.ZOO_DIR / f"{name}.pt")
    for cand in candidates:
        if cand.is_file():
            return cand
    return None


def list_local_checkpoints(model_dir: Path | None = None) -> dict[str, Path]:
    """name -> path of every demo-zoo and user-trained checkpoint (user-trained wins)."""
    found: dict[str, Path] = {p.stem: p for p in sorted(sources.ZOO_DIR.glob("*.pt"))}
    if model_dir is not None:
        found.update({p.stem: p for p in sorted((Path(model_dir) / "local").glob("*.pt"))})
    return found


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MarginbenchError(
            f"checkpoint {path} not found; train it with `marginbench train` or `make zoo`"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, pickled code ...
        raise MarginbenchError(
            f"cannot read checkpoint {path} ({type(exc).__name__}); delete it and retrain"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MarginbenchError(
            f"{path} is not a marginbench checkpoint (expected format {FORMAT!r}); "
            "load other weights with model.kind=custom"
        )
    missing = [k for k in ("state_dict", *META_KEYS) if k not in payload]
    if missing:
        raise MarginbenchError(f"checkpoint {path} lacks {missing}; delete it and retrain")
    return payload
