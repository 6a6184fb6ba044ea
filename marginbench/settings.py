"""Run settings: what a config means once the model is known, checked before any work.

``validate(cfg)`` does every check that needs neither data nor a model (sizes, shards, the
model name, the threat model, eps, the device, the attack name) and returns the model's
registry entry and the derived :class:`RunSettings`. It raises MarginbenchError and writes
nothing, so the CLI can validate every job of a sweep before Hydra starts.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from marginbench.config import MarginbenchConfig, parse_eps
from marginbench.device import resolve_device
from marginbench.errors import MarginbenchError

# Below this much free space a run would die mid-write (a part, an artifact): refuse to start.
MIN_FREE_BYTES = 64 << 20

# The paper's eps per (norm, dataset); (norm, None) is the norm's default, else 8/255.
DEFAULT_EPS = {("Linf", "fashion_mnist"): "0.1", ("Linf", "imagenet"): "4/255", ("L2", None): "0.5"}


@dataclass(frozen=True)
class RunSettings:
    eps: float
    eps_text: str
    eps_list: tuple[float, ...]
    norm: str
    dataset: str
    device: torch.device
    cache_dir: Path
    model_dir: Path
    data_dir: Path


def default_eps(norm: str, dataset: str) -> str:
    return DEFAULT_EPS.get((norm, dataset)) or DEFAULT_EPS.get((norm, None)) or "8/255"


def as_config(cfg: DictConfig | MarginbenchConfig) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    return OmegaConf.structured(cfg)


def model_entry(cfg: DictConfig) -> Any:
    """The registry entry of the configured model (a synthetic one for custom models)."""
    from marginbench.models import registry

    if cfg.model.kind == "custom":
        return registry.custom_entry(cfg.model, cfg.dataset.name)
    if cfg.model.kind != "zoo":
        raise MarginbenchError(f"model.kind={cfg.model.kind!r} is unknown; use a model name (model=XU80) or model=custom")
    return registry.resolve_model(cfg.model.name, model_dir=Path(cfg.paths.model_dir))


def settings_for(cfg: DictConfig, entry: Any) -> RunSettings:
    norm = entry.threat_model
    if norm not in ("Linf", "L2"):
        raise MarginbenchError(f"threat model {norm!r} is not supported; use Linf or L2")
    dataset = cfg.dataset.name if cfg.dataset.name != "auto" else entry.dataset
    eps_text = str(cfg.eps) if str(cfg.eps) != "auto" else default_eps(norm, dataset)
    return RunSettings(
        eps=parse_eps(eps_text),
        eps_text=eps_text,
        eps_list=tuple(parse_eps(e) for e in cfg.eps_list),
        norm=norm,
        dataset=dataset,
        device=resolve_device(cfg.device),
        cache_dir=Path(cfg.paths.cache_dir),
        model_dir=Path(cfg.paths.model_dir),
        data_dir=Path(cfg.paths.data_dir),
    )


def validate(cfg: DictConfig) -> tuple[Any, RunSettings]:
    """Every check that needs no data and no model; raises MarginbenchError, writes nothing."""
    if cfg.n_samples is not None and cfg.n_samples <= 0:
        raise MarginbenchError(f"n_samples={cfg.n_samples} must be positive (or null for the whole test set)")
    if cfg.batch_size <= 0:
        raise MarginbenchError(f"batch_size={cfg.batch_size} must be positive")
    if cfg.shard.count < 1:
        raise MarginbenchError(f"shard.count={cfg.shard.count} must be >= 1")
    if cfg.shard.index is not None and not 0 <= cfg.shard.index < cfg.shard.count:
        raise MarginbenchError(f"shard.index={cfg.shard.index} must be in 0..{cfg.shard.count - 1} (shard.count={cfg.shard.count})")
    if cfg.pseudo.variant not in ("code", "text"):
        raise MarginbenchError(f"pseudo.variant={cfg.pseudo.variant!r} is unknown; use code or text")
    entry = model_entry(cfg)
    settings = settings_for(cfg, entry)
    from marginbench.margins import build_estimator

    build_estimator(cfg.attack, settings.norm)  # unknown attack names fail here, before any work
    check_paths(settings)
    return entry, settings


def check_paths(settings: RunSettings) -> None:
    """Unusable directories fail here, in one line naming the path, before any data is loaded
    (otherwise the first write, deep inside a stage, raises a traceback)."""
    check_dir("paths.cache_dir", settings.cache_dir, write=True)
    check_dir("paths.model_dir", settings.model_dir, write=False)
    check_dir("paths.data_dir", settings.data_dir, write=False)


def check_dir(key: str, path: Path | str, write: bool) -> None:
    """``path`` is (or can become) a directory we may read, and write when ``write``.

    A missing directory is fine (it is created when needed), so the checks apply to its
    nearest existing ancestor. Permissions come from os.access, which honours read-only
    mounts (root ignores mode bits but not those)."""
    target = Path(path).absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise MarginbenchError(f"{key}={path}: {existing} is a file, not a directory; move it or point {key} elsewhere")
    mode, verb = (os.R_OK | os.W_OK | os.X_OK, "write to") if write else (os.R_OK | os.X_OK, "read")
    if not os.access(existing, mode):
        raise MarginbenchError(f"{key}={path}: no permission to {verb} {existing}; fix its permissions or point {key} elsewhere")
    if write:
        free = shutil.disk_usage(existing).free
        if free < MIN_FREE_BYTES:
            raise MarginbenchError(
                f"{key}={path}: no space left on the device of {existing} ({free >> 20} MiB free); free some or point {key} elsewhere"
            )


def check_out_file(key: str, path: Path | str) -> None:
    """``path`` can be written as a file: not a directory, in a folder we may write to.
    Checked before the work whose result it holds (the write itself comes last)."""
    if Path(path).is_dir():
        raise MarginbenchError(f"{key}={path} is a directory; give a file name in it, e.g. {Path(path) / 'bench.csv'}")
    check_dir(key, Path(path).absolute().parent, write=True)


def dataset_config(cfg: DictConfig, settings: RunSettings) -> DictConfig:
    """The dataset node with ``auto`` replaced by the model's own dataset."""
    if cfg.dataset.name != "auto":
        return cfg.dataset
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset["name"] = settings.dataset
    return OmegaConf.create(dataset)
