"""A marginbench run: the ordered stages and their wiring, nothing more.

    validate -> data + model identity -> input margins -> logits/features -> [pseudo-margin]
    -> per-sample table + metrics ("runs" record) -> run directory files + figures

Each stage (marginbench/stages/) is cached under a key made of its parameter object and its
inputs' keys; device, batch size and paths never enter a key, and eps only enters the last
stage, so an eps sweep reuses margins and outputs. The model is loaded lazily: a run whose
artifacts are all cached never touches the checkpoint. Nothing here knows about Hydra or
the command line.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from marginbench.cache import ArtifactStore, artifact_key
from marginbench.config import MarginbenchConfig, attack_label
from marginbench.models.handle import LazyModel, ensure_model_available, model_identity
from marginbench.preflight import PreflightSpec
from marginbench.settings import RunSettings, as_config, dataset_config, validate
from marginbench.stages import Execution, data_key
from marginbench.stages.margins import MarginParams, Shard, compute_margins, margins_key
from marginbench.stages.metrics import (
    MetricsParams,
    RunData,
    compute_metrics,
    read_record,
    runs_key,
)
from marginbench.stages.outputs import compute_outputs, outputs_key
from marginbench.stages.pseudo import PseudoInputs, PseudoParams, compute_pseudo
from marginbench.stages.scores import ScoreParams, compute_gradient_scores, scores_key

log = logging.getLogger("marginbench")


@dataclass
class RunResult:
    summary: dict[str, Any]
    samples: pd.DataFrame | None
    run_dir: Path | None
    keys: dict[str, str] = field(default_factory=dict)
    shard_only: bool = False
    message: str = ""


def run(cfg: DictConfig | MarginbenchConfig, run_dir: Path | str | None = None,
        check_n_samples: Callable[[int], None] | None = None) -> RunResult:
    """Run the whole pipeline for one config; returns the summary and per-sample table.

    ``run_dir``: where summary.json, samples.csv and the figures go (None: nowhere; the
    results are still cached and returned). ``check_n_samples``: called with the number of
    evaluated samples once the data is loaded, before any attack (a caller's check that
    needs it, e.g. calibrate's split when n_samples is null: the whole test set)."""
    cfg = as_config(cfg)
    started = time.perf_counter()
    entry, settings = validate(cfg)
    model = LazyModel(cfg.model, settings.model_dir, settings.device)
    ensure_model_available(cfg, entry, settings.model_dir, model)
    eval_set = load_checked_eval_set(cfg, settings, entry, check_n_samples)
    store = ArtifactStore(settings.cache_dir)
    attach_checks(model, eval_set, entry)
    execution = Execution(settings.device, int(cfg.batch_size), bool(cfg.progress))

    model_id = model_identity(cfg, entry, settings.model_dir, store)
    keys = {"model": artifact_key("model", 1, model_id, {}), "data": data_key(eval_set.images, eval_set.labels, eval_set.indices)}
    common_meta = {"model": model_id, "dataset": settings.dataset, "n_samples": int(eval_set.images.shape[0]),
                   "data_key": keys["data"], "model_key": keys["model"]}

    margin_params = MarginParams.from_config(cfg, settings.norm)
    keys["margins"] = margins_key(margin_params, keys["model"], keys["data"])
    margin_result = compute_margins(store, keys["margins"], eval_set.images, model, margin_params, execution,
                                    {**common_meta, "config": margin_params.key_params()},
                                    shard=Shard(int(cfg.shard.count), cfg.shard.index))
    if margin_result.artifact is None:
        log.info(margin_result.message)
        return RunResult({}, None, None, keys, shard_only=True, message=margin_result.message)
    margins = margin_result.artifact.arrays()

    keys["outputs"] = outputs_key(keys["model"], keys["data"], keys["margins"])
    outputs = compute_outputs(store, keys["outputs"], eval_set.images, margins, model, execution, common_meta).arrays()

    keys["scores"] = scores_key(ScoreParams(settings.norm), keys["model"], keys["data"])
    scores = compute_gradient_scores(store, keys["scores"], eval_set.images, model, ScoreParams(settings.norm),
                                     execution, common_meta).arrays()
    pseudo_margin, pseudo_info = None, None
    if cfg.pseudo.enabled:
        pseudo = _pseudo_stage(cfg, settings, store, model, keys, outputs, margin_params, execution)
        pseudo_margin, pseudo_info = pseudo.arrays()["test_prediction"], pseudo.meta.get("pseudo", {})
    run_data = RunData(eval_set.labels.numpy(), np.asarray(eval_set.indices), margins, outputs,
                       pseudo_margin, pseudo_info, scores)

    metrics_params = MetricsParams(settings.eps, settings.eps_list, settings.norm)
    input_keys = dict(keys)
    keys["runs"] = runs_key(metrics_params, input_keys)
    record = compute_metrics(store, keys["runs"], metrics_params, run_data,
                             summary_header(cfg, entry, settings, len(eval_set.labels)), input_keys)
    summary, samples = read_record(record)
    warn_if_detection_undefined(samples, settings.eps_text)

    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        write_run_dir(run_dir, record, samples, summary, cfg.plots)
    log.info("run finished in %.1f s", time.perf_counter() - started)
    return RunResult(summary, samples, run_dir, keys)


def load_checked_eval_set(cfg: DictConfig, settings: RunSettings, entry: Any,
                          check_n_samples: Callable[[int], None] | None) -> Any:
    """The evaluated images, checked against the model's input and the caller's check."""
    from marginbench import data

    eval_set = data.load_eval_set(dataset_config(cfg, settings), settings.data_dir, cfg.n_samples,
                                  list(cfg.indices) if cfg.indices is not None else None)
    data.check_compatible(eval_set, entry)
    if check_n_samples is not None:
        check_n_samples(int(eval_set.images.shape[0]))
    return eval_set


def _pseudo_stage(
    cfg: DictConfig, settings: RunSettings, store: ArtifactStore, model: LazyModel, keys: dict[str, str],
    outputs: dict[str, np.ndarray], margin_params: MarginParams, execution: Execution,
) -> Any:
    """The pseudo-margin artifact; records its key in ``keys``."""
    from marginbench import data

    holdout = data.load_heldout_train(dataset_config(cfg, settings), settings.data_dir,
                                      int(cfg.pseudo.n_train), int(cfg.pseudo.split_seed))
    inputs = PseudoInputs(model, keys["model"], holdout, outputs, keys["outputs"], settings.dataset)
    pseudo = compute_pseudo(store, inputs, margin_params, PseudoParams.from_config(cfg), execution)
    keys["pseudo"] = pseudo.key
    return pseudo


def attach_checks(model: LazyModel, eval_set: Any, entry: Any) -> None:
    """What the model is checked against when (and only if) it is first loaded."""
    model.example_input = eval_set.images[:2]
    model.preflight = PreflightSpec(entry.code, eval_set.images[:4], entry.num_classes,
                                    int(eval_set.labels.max()) if len(eval_set.labels) else None)


def warn_if_detection_undefined(samples: pd.DataFrame, eps_text: str) -> None:
    """With one class only (every sample non-robust, or none), AUROC/AUPR/FPR@95 are not
    numbers anyone should read; say so instead of letting a nan or 0 pass as a result."""
    nonrobust = samples["nonrobust"].astype(bool)
    if len(nonrobust) and nonrobust.all():
        log.warning("eps=%s: every sample is non-robust; detection metrics (AUROC, AUPR, FPR@95) are undefined, choose a smaller eps", eps_text)
    elif len(nonrobust) and not nonrobust.any():
        log.warning("eps=%s: no sample is non-robust; detection metrics (AUROC, AUPR, FPR@95) are undefined, choose a larger eps", eps_text)


def summary_header(cfg: DictConfig, entry: Any, settings: RunSettings, n_samples: int) -> dict[str, Any]:
    """The fields that open summary.json: which model, data, threat model and estimator."""
    return {
        "model": cfg.model.name if cfg.model.kind == "zoo" else entry.code,
        "model_code": entry.code,
        "robustbench_id": entry.robustbench_id,
        "architecture": entry.architecture,
        "dataset": settings.dataset,
        "norm": settings.norm,
        "eps": settings.eps,
        "eps_text": settings.eps_text,
        "n_samples": int(n_samples),
        "attack": attack_label(cfg.attack),
        "attack_config": OmegaConf.to_container(cfg.attack, resolve=True),
        "clean_accuracy_published": entry.clean_acc / 100 if entry.clean_acc is not None else None,
        "robust_accuracy_published": entry.robust_acc / 100 if entry.robust_acc is not None else None,
    }


def write_run_dir(run_dir: Path, record: Any, samples: pd.DataFrame, summary: dict[str, Any], plots: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "samples.csv"):
        shutil.copyfile(record.file(name), run_dir / name)
    if plots:
        from marginbench.report.run_plots import plot_run

        plot_run(samples, summary, run_dir)


__all__ = ["run", "RunResult", "validate"]
