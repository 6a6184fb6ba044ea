"""Run settings: what a config means once the model is known, checked before any work.

``validate(cfg)`` does every check that needs neither data nor a model (sizes, shards, the
model name, the threat model, eps, the device, the attack name) and returns the model's
registry entry and the derived :class:`RunSettings`. It raises MarginbenchError and writes
nothing, so the CLI can validate every job of a sweep before Hydra starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from marginbench.config import MarginbenchConfig, parse_eps
from marginbench.device import resolve_device
from marginbench.errors import MarginbenchError

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
    return entry, settings


def dataset_config(cfg: DictConfig, settings: RunSettings) -> DictConfig:
    """The dataset node with ``auto`` replaced by the model's own dataset."""
    if cfg.dataset.name != "auto":
        return cfg.dataset
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset["name"] = settings.dataset
    return OmegaConf.create(dataset)
