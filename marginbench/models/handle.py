"""The model as the pipeline sees it: its identity (what enters cache keys), an early check
that its weights can be had, and a lazy handle, so a fully cached run never loads it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from marginbench.cache import ArtifactStore, atomic_write_text, sha256_file
from marginbench.errors import MarginbenchError

log = logging.getLogger("marginbench")


def file_digest(path: Path, store: ArtifactStore) -> str:
    """sha256 of a (possibly large) checkpoint, memoised by path, size and mtime."""
    stat = path.stat()
    memo_path = store.root / "file_hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    token = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if token not in memo:
        memo[token] = sha256_file(path)
        atomic_write_text(memo_path, json.dumps(memo, indent=1))
    return memo[token]


def model_identity(cfg: DictConfig, entry: Any, model_dir: Path, store: ArtifactStore) -> dict[str, Any]:
    """What identifies the model's numbers: its name and the hash of its weights file."""
    from marginbench.models.sources import checkpoint_path

    identity: dict[str, Any] = {"code": entry.code, "source": entry.source}
    if entry.source == "custom":
        identity["factory"] = cfg.model.factory
        weights = Path(cfg.model.weights) if cfg.model.weights else None
    else:
        weights = checkpoint_path(entry, model_dir)
    if weights is not None and weights.is_file():
        identity["weights_sha256"] = file_digest(weights, store)
    elif weights is not None:
        identity["weights_path"] = str(weights)  # not downloaded yet; loading will fetch it
    return identity


class LazyModel:
    """Loads the model on first use, so a fully cached run never needs the checkpoint."""

    def __init__(self, model_cfg: DictConfig, model_dir: Path, device: torch.device) -> None:
        self._cfg, self._model_dir, self.device = model_cfg, model_dir, device
        self.example_input: torch.Tensor | None = None  # for the feature/head split's check
        self.preflight: Any = None  # a preflight.PreflightSpec: checked once, when first loaded
        self._model: torch.nn.Module | None = None
        self._split: Any = None
        self._checked = False

    def get(self) -> torch.nn.Module:
        from marginbench.models import split_model
        from marginbench.preflight import run_preflight

        if self._model is None:
            from marginbench.models import load_model

            log.info("loading model %s", self._cfg.name if self._cfg.kind == "zoo" else self._cfg.factory)
            model, _ = load_model(self._cfg, self._model_dir, self.device)
            self._model = model.eval()
        if self.preflight is not None and not self._checked:
            # here, not at start-up: a fully cached run never loads (or checks) the model
            run_preflight(self._model, self.preflight, self.device)
            self._split = split_model(self._model, example_input=self.preflight.example.to(self.device))
            self._checked = True
        return self._model

    def split(self) -> Any:
        net = self.get()  # the pre-flight checks already split the model when they ran
        if self._split is None:
            from marginbench.models import split_model

            example = self.example_input.to(self.device) if self.example_input is not None else None
            self._split = split_model(net, example_input=example)
        return self._split


def ensure_model_available(cfg: DictConfig, entry: Any, model_dir: Path, model: LazyModel) -> None:
    """Fail in seconds, before data loading or any attack, when the weights cannot be had;
    reject a file that is not a checkpoint (an HTML page from a failed download)."""
    from marginbench.models.loading import check_checkpoint_file
    from marginbench.models.sources import checkpoint_path, weights_url

    if entry.source == "custom":
        if cfg.model.weights and not Path(cfg.model.weights).is_file():
            raise MarginbenchError(f"model.weights={cfg.model.weights} does not exist; give the path of a state_dict file or drop model.weights")
        if cfg.model.weights:
            check_checkpoint_file(Path(cfg.model.weights))
        return
    weights = checkpoint_path(entry, model_dir)
    if weights is None:
        return
    url = weights_url(entry) if entry.source == "robustbench" else None
    if weights.is_file():
        check_checkpoint_file(weights, url)
    elif entry.source == "robustbench":
        model.get()  # downloads the checkpoint, or stops with the exact file to place
