"""The ordered stages of a marginbench run and their wiring.

    load data + model identity -> input margins -> logits/features -> [pseudo-margin]
    -> per-sample table + metrics ("runs" record) -> run directory files + figures

Each stage's artifact is cached (marginbench.cache) under a key made of the config values that
can change its numbers and the keys of its inputs; device, batch size and paths never enter a
key, and ``eps`` only enters the last stage, so an eps sweep reuses margins and outputs. The
model is loaded lazily: a run whose artifacts are all cached never touches the checkpoint.
Nothing here knows about Hydra or the command line.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from marginbench.cache import (
    Artifact,
    ArtifactStore,
    artifact_key,
    atomic_save_npz,
    atomic_write_text,
    sha256_arrays,
    sha256_file,
)
from marginbench.config import MarginbenchConfig, attack_label, parse_eps
from marginbench.device import resolve_device
from marginbench.errors import MarginbenchError
from marginbench import jsonio
from marginbench.jsonio import json_clean
from marginbench.versions import (
    MARGINS_VERSION,
    OUTPUTS_VERSION,
    PSEUDO_VERSION,
    RUNS_VERSION,
    STAGE_VERSIONS,
)

log = logging.getLogger("marginbench")


DEFAULT_EPS = {("Linf", "fashion_mnist"): "0.1", ("Linf", "imagenet"): "4/255", ("L2", None): "0.5"}


# --------------------------------------------------------------------------------------------
# Settings derived from the config, validated before anything is written
# --------------------------------------------------------------------------------------------


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
        if not cfg.model.factory:
            raise MarginbenchError("model=custom needs model.factory=MODULE:FUNCTION (a function returning an nn.Module)")
        return registry.ModelEntry(
            code=f"custom:{cfg.model.factory}",
            source="custom",
            dataset=cfg.model.dataset or (cfg.dataset.name if cfg.dataset.name != "auto" else "npz"),
            threat_model=cfg.model.norm,
            robustbench_id=None,
            architecture="custom",
            clean_acc=None,
            robust_acc=None,
            num_classes=cfg.model.num_classes,
        )
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


# --------------------------------------------------------------------------------------------
# Identities of the inputs
# --------------------------------------------------------------------------------------------


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


def model_identity(cfg: DictConfig, entry: Any, settings: RunSettings, store: ArtifactStore) -> dict[str, Any]:
    """What identifies the model's numbers: its name and the hash of its weights file."""
    from marginbench.models.registry import checkpoint_path

    identity: dict[str, Any] = {"code": entry.code, "source": entry.source}
    if entry.source == "custom":
        identity["factory"] = cfg.model.factory
        weights = Path(cfg.model.weights) if cfg.model.weights else None
    else:
        weights = checkpoint_path(entry, settings.model_dir)
    if weights is not None and weights.is_file():
        identity["weights_sha256"] = file_digest(weights, store)
    elif weights is not None:
        identity["weights_path"] = str(weights)  # not downloaded yet; loading will fetch it
    return identity


def ensure_model_available(cfg: DictConfig, entry: Any, settings: RunSettings, model: LazyModel) -> None:
    """Fail in seconds, before data loading or any attack, when the weights cannot be had;
    reject a file that is not a checkpoint (an HTML page from a failed download)."""
    from marginbench.models.loading import check_checkpoint_file, weights_url
    from marginbench.models.registry import checkpoint_path

    if entry.source == "custom":
        if cfg.model.weights and not Path(cfg.model.weights).is_file():
            raise MarginbenchError(f"model.weights={cfg.model.weights} does not exist; give the path of a state_dict file or drop model.weights")
        if cfg.model.weights:
            check_checkpoint_file(Path(cfg.model.weights))
        return
    weights = checkpoint_path(entry, settings.model_dir)
    if weights is None:
        return
    url = weights_url(entry) if entry.source == "robustbench" else None
    if weights.is_file():
        check_checkpoint_file(weights, url)
    elif entry.source == "robustbench":
        model.get()  # downloads the checkpoint, or stops with the exact file to place


class LazyModel:
    """Loads the model on first use, so a fully cached run never needs the checkpoint."""

    def __init__(self, cfg: DictConfig, settings: RunSettings, example_input: torch.Tensor | None = None) -> None:
        self._cfg, self._settings = cfg, settings
        self.example_input = example_input
        self._model: torch.nn.Module | None = None
        self._split: Any = None

    def get(self) -> torch.nn.Module:
        if self._model is None:
            from marginbench.models import load_model

            log.info("loading model %s", self._cfg.model.name if self._cfg.model.kind == "zoo" else self._cfg.model.factory)
            model, _ = load_model(self._cfg.model, self._settings.model_dir, self._settings.device)
            self._model = model.eval()
        return self._model

    def split(self) -> Any:
        if self._split is None:
            from marginbench.models import split_model

            example = self.example_input.to(self._settings.device) if self.example_input is not None else None
            self._split = split_model(self.get(), example_input=example)
        return self._split


# --------------------------------------------------------------------------------------------
# Stage: input margins (batched, resumable, shardable)
# --------------------------------------------------------------------------------------------

MARGIN_FIELDS = ("position", "pred", "margin", "success", "found_by", "x_adv", "n_forward", "n_backward", "seconds")


def shard_positions(n: int, count: int, batch_size: int) -> list[np.ndarray]:
    """Contiguous shards made of whole batches, so a sharded run attacks exactly the batches
    an unsharded run with the same batch size would (identical results, sample for sample)."""
    batches = np.array_split(np.arange(math.ceil(n / batch_size)), count)
    return [np.arange(b[0] * batch_size, min((b[-1] + 1) * batch_size, n)) if b.size else np.arange(0) for b in batches]


def _contiguous_batches(positions: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split sorted positions into batches that never straddle a gap, so resumed and
    uninterrupted runs cut the same batches."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    batches = []
    for run in np.split(positions, breaks):
        batches.extend(run[i : i + batch_size] for i in range(0, run.size, batch_size))
    return batches


@dataclass
class MarginStageResult:
    artifact: Artifact | None  # None when only one shard was computed
    computed_samples: int
    message: str = ""


def margin_stage(
    store: ArtifactStore,
    key: str,
    images: torch.Tensor,
    model: LazyModel,
    cfg: DictConfig,
    settings: RunSettings,
    meta: dict[str, Any],
    label: str = "margins",
    shard_count: int = 1,
    shard_index: int | None = None,
    on_batch_done: Callable[[int], None] | None = None,
) -> MarginStageResult:
    cached = store.get("margins", key)
    if cached is not None:
        log.info("%s: cached (margins/%s), margin stage skipped", label, key)
        return MarginStageResult(cached, 0)

    n = images.shape[0]
    done = np.zeros(n, dtype=bool)
    for part in store.load_parts("margins", key):
        done[part["position"]] = True
    shards = shard_positions(n, shard_count, int(cfg.batch_size))
    if shard_index is not None:
        wanted = shards[shard_index]
    elif shard_count > 1:
        missing = [i for i, positions in enumerate(shards) if not done[positions].all()]
        if missing:
            raise MarginbenchError(
                f"margin shards {missing} of shard.count={shard_count} are not finished; "
                f"run them with shard.index=<i> (e.g. -m shard.index={','.join(map(str, missing))})"
            )
        wanted = np.arange(n)
    else:
        wanted = np.arange(n)
    todo = wanted[~done[wanted]]

    if todo.size:
        from marginbench.margins import build_estimator

        estimator = build_estimator(cfg.attack, settings.norm)
        net = model.get()
        resumed = int(done[wanted].sum())
        log.info(
            "%s: %s on %d samples%s (attack=%s, norm=%s)",
            label,
            "resuming" if resumed else "computing",
            todo.size,
            f", {resumed} already done" if resumed else "",
            cfg.attack.name,
            settings.norm,
        )
        batches = _contiguous_batches(todo, cfg.batch_size)
        with _progress(total=int(todo.size), desc=label, unit="sample", enabled=cfg.progress) as bar:
            for batch in batches:
                # A seed per batch start: a batch redone after a crash gets the same random draws.
                torch.manual_seed(int(cfg.seed) * 1_000_003 + int(batch[0]))
                x = images[batch].to(settings.device)
                with torch.no_grad():
                    pred = net(x).argmax(1)
                result = estimator(net, x, pred)
                store.save_part(
                    "margins",
                    key,
                    int(batch[0]),
                    int(batch[-1]) + 1,
                    {
                        "position": batch.astype(np.int64),
                        "pred": pred.cpu().numpy().astype(np.int64),
                        "margin": np.asarray(result.margin, dtype=np.float64),
                        "success": np.asarray(result.success, dtype=bool),
                        "found_by": np.asarray(result.found_by, dtype=str),
                        "x_adv": result.x_adv.detach().cpu().numpy().astype(np.float32),
                        "n_forward": np.asarray(result.n_forward, dtype=np.int64),
                        "n_backward": np.asarray(result.n_backward, dtype=np.int64),
                        "seconds": np.asarray(result.seconds, dtype=np.float64),
                    },
                )
                bar.update(len(batch))
                if on_batch_done is not None:
                    on_batch_done(int(batch[-1]) + 1)

    parts = store.load_parts("margins", key)
    covered = np.zeros(n, dtype=bool)
    for part in parts:
        covered[part["position"]] = True
    if shard_index is not None and not covered.all():
        finished = [i for i, positions in enumerate(shards) if covered[positions].all()]
        return MarginStageResult(
            None,
            int(todo.size),
            f"shard {shard_index}/{shard_count} done; finished shards: {finished}. "
            "Run without shard.index to assemble when all are done.",
        )
    if not covered.all():  # cannot happen unless parts vanished underneath us
        raise MarginbenchError(f"margin batches for {int((~covered).sum())} samples disappeared from the cache; run again")
    merged = _merge_parts(parts, n)
    summary = {
        "n_samples": n,
        "n_failures": int((~merged["success"]).sum()),
        "seconds_total": float(merged["seconds"].sum()),
        "computed_in_this_process": int(todo.size),
    }
    artifact = store.put(
        "margins",
        key,
        {"arrays.npz": lambda path: atomic_save_npz(path, merged)},
        {**meta, "summary": summary},
    )
    log.info("%s: stored margins/%s (%d failures)", label, key, summary["n_failures"])
    return MarginStageResult(artifact, int(todo.size))


def _merge_parts(parts: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    merged: dict[str, np.ndarray] = {}
    for name in MARGIN_FIELDS:
        merged[name] = np.concatenate([part[name] for part in parts])
    order = np.argsort(merged["position"], kind="stable")
    # keep the first copy of a position (two shards may have overlapped after a change of count)
    positions = merged["position"][order]
    first = np.concatenate([[True], positions[1:] != positions[:-1]])
    keep = order[first]
    out = {name: merged[name][keep] for name in MARGIN_FIELDS}
    if out["position"].size != n:
        raise MarginbenchError("margin parts do not cover every sample; delete the .parts directory and run again")
    return out


# --------------------------------------------------------------------------------------------
# Stage: logits and features of clean and adversarial inputs
# --------------------------------------------------------------------------------------------


def outputs_stage(
    store: ArtifactStore,
    key: str,
    images: torch.Tensor,
    margins: dict[str, np.ndarray],
    model: LazyModel,
    cfg: DictConfig,
    settings: RunSettings,
    meta: dict[str, Any],
    label: str = "outputs",
) -> Artifact:
    cached = store.get("outputs", key)
    if cached is not None:
        log.info("%s: cached (outputs/%s)", label, key)
        return cached
    split = model.split()
    x_adv_all = torch.from_numpy(margins["x_adv"])
    chunks: dict[str, list[np.ndarray]] = {"logits": [], "features": [], "logits_adv": [], "features_adv": []}
    n = images.shape[0]
    with torch.no_grad(), _progress(total=n, desc=label, unit="sample", enabled=cfg.progress) as bar:
        for start in range(0, n, cfg.batch_size):
            stop = min(start + cfg.batch_size, n)
            for suffix, batch in (("", images[start:stop]), ("_adv", x_adv_all[start:stop])):
                features = split.features(batch.to(settings.device))
                logits = split.head(features)
                chunks["features" + suffix].append(features.float().cpu().numpy())
                chunks["logits" + suffix].append(logits.float().cpu().numpy())
            bar.update(stop - start)
    arrays = {name: np.concatenate(values) for name, values in chunks.items()}
    failed = ~margins["success"]
    feature_distance = np.linalg.norm(arrays["features"] - arrays["features_adv"], axis=1).astype(np.float64)
    feature_distance[failed] = np.nan
    arrays["feature_distance"] = feature_distance
    arrays["head_weight"] = split.head.weight.detach().float().cpu().numpy()
    bias = split.head.bias
    arrays["head_bias"] = (
        bias.detach().float().cpu().numpy() if bias is not None else np.zeros(arrays["head_weight"].shape[0], np.float32)
    )
    return store.put("outputs", key, {"arrays.npz": lambda path: atomic_save_npz(path, arrays)}, meta)


# --------------------------------------------------------------------------------------------
# Stage: pseudo-margin (Table 2): margins of a held-out training split, then a learner
# --------------------------------------------------------------------------------------------


def pseudo_stage(
    store: ArtifactStore,
    cfg: DictConfig,
    settings: RunSettings,
    entry: Any,
    model: LazyModel,
    model_key: str,
    attack_params: dict[str, Any],
    test_outputs: dict[str, np.ndarray],
    test_outputs_key: str,
) -> Artifact:
    from marginbench.data import load_heldout_train

    dataset_cfg = cfg.dataset if cfg.dataset.name != "auto" else _with_dataset(cfg, settings.dataset)
    holdout = load_heldout_train(dataset_cfg, settings.data_dir, int(cfg.pseudo.n_train), int(cfg.pseudo.split_seed))
    holdout_key = sha256_arrays(holdout.images.numpy(), holdout.labels.numpy(), np.asarray(holdout.indices))[:20]
    meta = {"model_key": model_key, "data_key": holdout_key, "dataset": settings.dataset, "split": "train-heldout"}
    margins_key = artifact_key("margins", MARGINS_VERSION, attack_params, {"model": model_key, "data": holdout_key})
    margins = margin_stage(
        store, margins_key, holdout.images, model, cfg, settings, {**meta, "config": attack_params}, label="train-split margins"
    ).artifact
    assert margins is not None  # no sharding of the held-out split
    train_margins = margins.arrays()
    outputs_key = artifact_key("outputs", OUTPUTS_VERSION, {}, {"model": model_key, "data": holdout_key, "margins": margins_key})
    train_outputs = outputs_stage(
        store, outputs_key, holdout.images, train_margins, model, cfg, settings, meta, label="train-split outputs"
    ).arrays()

    params = OmegaConf.to_container(cfg.pseudo, resolve=True)
    params.pop("enabled", None)
    params["seed"] = int(cfg.seed)
    key = artifact_key("pseudo", PSEUDO_VERSION, params, {"margins": margins_key, "outputs": outputs_key, "test": test_outputs_key})
    cached = store.get("pseudo", key)
    if cached is not None:
        log.info("pseudo-margin: cached (pseudo/%s)", key)
        return cached

    from marginbench import pseudo

    feature = "logits" if cfg.pseudo.variant == "code" else "features"
    log.info("pseudo-margin: training the %s variant on %d held-out samples (%s in)", cfg.pseudo.variant, len(holdout.labels), feature)
    learner = pseudo.train_pseudo_margin(
        train_outputs[feature], train_margins["margin"], cfg.pseudo, settings.device, int(cfg.seed)
    )
    prediction = np.asarray(learner.predict(test_outputs[feature]), dtype=np.float64)
    state = learner.state_dict()
    # network weights as arrays; the rest (scales, normalisation, config) is small plain data
    arrays = {"test_prediction": prediction, **{f"network/{k}": v.numpy() for k, v in state["network"].items()}}
    info = {
        "variant": cfg.pseudo.variant,
        "n_train": int(len(holdout.labels)),
        "n_train_failures": int((~train_margins["success"]).sum()),
        "learner": json_clean({k: v for k, v in state.items() if k not in ("network", "history")}),
        "history": json_clean(state.get("history")),
    }
    return store.put("pseudo", key, {"arrays.npz": lambda path: atomic_save_npz(path, arrays)}, {**meta, "pseudo": info})


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    summary: dict[str, Any]
    samples: pd.DataFrame | None
    run_dir: Path | None
    keys: dict[str, str] = field(default_factory=dict)
    shard_only: bool = False
    message: str = ""


def build_samples_table(
    labels: np.ndarray,
    indices: np.ndarray,
    margins: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    norm: str,
    eps: float,
    pseudo_margin: np.ndarray | None,
) -> pd.DataFrame:
    from marginbench import metrics

    pred = outputs["logits"].argmax(1)
    if not np.array_equal(pred, margins["pred"]):
        # the margin stage attacked the prediction it saw; a mismatch means nondeterminism
        log.warning("%d predictions differ between margin and output stages", int((pred != margins["pred"]).sum()))
    input_margin = margins["margin"].astype(np.float64)
    success = margins["success"].astype(bool)
    correct = pred == labels
    nonrobust = success & (input_margin <= eps)
    table = pd.DataFrame(
        {
            "index": indices.astype(np.int64),
            "label": labels.astype(np.int64),
            "pred": pred.astype(np.int64),
            "correct": correct,
            "input_margin": input_margin,
            "attack_success": success,
            "found_by": margins["found_by"].astype(str),
            "logit_margin": metrics.logit_margin(outputs["logits"]),
            "feature_margin": metrics.feature_margin(outputs["logits"], outputs["head_weight"], norm),
            "feature_distance": outputs["feature_distance"],
            "adv_logit_margin": np.where(success, metrics.logit_margin(outputs["logits_adv"]), np.nan),
            "n_forward": margins["n_forward"].astype(np.int64),
            "n_backward": margins["n_backward"].astype(np.int64),
            "attack_seconds": margins["seconds"].astype(np.float64),
            "nonrobust": nonrobust,
            "robust_correct": correct & ~nonrobust,
        }
    )
    if pseudo_margin is not None:
        table["pseudo_margin"] = pseudo_margin.astype(np.float64)
    return table


def _write_csv(frame: pd.DataFrame) -> Callable[[Path], None]:
    return lambda path: frame.to_csv(path, index=False, float_format="%.9g")


def _write_json(value: dict[str, Any]) -> Callable[[Path], None]:
    return lambda path: path.write_text(jsonio.dumps(value))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run(cfg: DictConfig | MarginbenchConfig, run_dir: Path | str | None = None) -> RunResult:
    """Run the whole pipeline for one config; returns the summary and per-sample table.

    ``run_dir``: where summary.json, samples.csv and the figures go (None: nowhere, the
    results are still cached and returned).
    """
    cfg = as_config(cfg)
    started = time.perf_counter()
    entry, settings = validate(cfg)
    from marginbench.data import load_eval_set

    model = LazyModel(cfg, settings)
    ensure_model_available(cfg, entry, settings, model)
    eval_set = load_eval_set(cfg.dataset if cfg.dataset.name != "auto" else _with_dataset(cfg, settings.dataset),
                             settings.data_dir, cfg.n_samples, list(cfg.indices) if cfg.indices is not None else None)
    _check_data_against_model(eval_set, entry, settings)
    store = ArtifactStore(settings.cache_dir)
    model.example_input = eval_set.images[:2]  # for the feature/head split's check

    data_key = sha256_arrays(eval_set.images.numpy(), eval_set.labels.numpy(), np.asarray(eval_set.indices))[:20]
    model_id = model_identity(cfg, entry, settings, store)
    model_key = artifact_key("model", 1, model_id, {})
    attack_params = {**OmegaConf.to_container(cfg.attack, resolve=True), "norm": settings.norm, "seed": int(cfg.seed)}
    margins_key = artifact_key("margins", MARGINS_VERSION, attack_params, {"model": model_key, "data": data_key})
    common_meta = {
        "model": model_id,
        "dataset": settings.dataset,
        "n_samples": int(eval_set.images.shape[0]),
        "data_key": data_key,
        "model_key": model_key,
    }

    margin_result = margin_stage(
        store,
        margins_key,
        eval_set.images,
        model,
        cfg,
        settings,
        {**common_meta, "config": attack_params},
        shard_count=int(cfg.shard.count),
        shard_index=cfg.shard.index,
    )
    keys = {"model": model_key, "data": data_key, "margins": margins_key}
    if margin_result.artifact is None:
        log.info(margin_result.message)
        return RunResult({}, None, None, keys, shard_only=True, message=margin_result.message)
    margins = margin_result.artifact.arrays()

    outputs_key = artifact_key("outputs", OUTPUTS_VERSION, {}, {"model": model_key, "data": data_key, "margins": margins_key})
    outputs = outputs_stage(store, outputs_key, eval_set.images, margins, model, cfg, settings, common_meta).arrays()
    keys["outputs"] = outputs_key

    pseudo_margin = None
    pseudo_summary: dict[str, Any] | None = None
    if cfg.pseudo.enabled:
        pseudo_artifact = pseudo_stage(store, cfg, settings, entry, model, model_key, attack_params, outputs, outputs_key)
        pseudo_arrays = pseudo_artifact.arrays()
        pseudo_margin = pseudo_arrays["test_prediction"]
        pseudo_summary = pseudo_artifact.meta.get("pseudo", {})
        keys["pseudo"] = pseudo_artifact.key

    runs_params = {"eps": settings.eps, "eps_list": list(settings.eps_list), "norm": settings.norm}
    runs_key = artifact_key("runs", RUNS_VERSION, runs_params, {k: v for k, v in keys.items() if k != "data"} | {"data": data_key})
    record = store.get("runs", runs_key)
    if record is None:
        samples = build_samples_table(
            eval_set.labels.numpy(), np.asarray(eval_set.indices), margins, outputs, settings.norm, settings.eps, pseudo_margin
        )
        summary = _summary(cfg, entry, settings, samples, keys, pseudo_summary)
        record = store.put(
            "runs",
            runs_key,
            {
                "summary.json": _write_json(summary),
                "samples.csv": _write_csv(samples),
                "head_weight.npy": lambda path: np.save(path, outputs["head_weight"]),
            },
            {"kind": "run", "model": entry.code, "dataset": settings.dataset, "eps": settings.eps, "keys": keys},
        )
    else:
        log.info("metrics: cached (runs/%s)", runs_key)
    keys["runs"] = runs_key
    summary = json.loads(record.file("summary.json").read_text())
    samples = pd.read_csv(record.file("samples.csv"))

    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "samples.csv"):
            shutil.copyfile(record.file(name), run_dir / name)
        if cfg.plots:
            from marginbench.report.run_plots import plot_run

            plot_run(samples, summary, run_dir)
    wall = time.perf_counter() - started
    log.info("run finished in %.1f s", wall)
    return RunResult(summary, samples, run_dir, keys)


def _with_dataset(cfg: DictConfig, name: str) -> DictConfig:
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset["name"] = name
    return OmegaConf.create(dataset)


def _check_data_against_model(eval_set: Any, entry: Any, settings: RunSettings) -> None:
    from marginbench import data

    check = getattr(data, "check_compatible", None)
    if check is not None:
        check(eval_set, entry)


def _summary(
    cfg: DictConfig,
    entry: Any,
    settings: RunSettings,
    samples: pd.DataFrame,
    keys: dict[str, str],
    pseudo_summary: dict[str, Any] | None,
) -> dict[str, Any]:
    from marginbench import metrics

    computed = metrics.summarize(samples, settings.eps, list(settings.eps_list))
    summary: dict[str, Any] = {
        "model": cfg.model.name if cfg.model.kind == "zoo" else entry.code,
        "model_code": entry.code,
        "robustbench_id": entry.robustbench_id,
        "architecture": entry.architecture,
        "dataset": settings.dataset,
        "norm": settings.norm,
        "eps": settings.eps,
        "eps_text": settings.eps_text,
        "n_samples": int(len(samples)),
        "attack": attack_label(cfg.attack),
        "attack_config": OmegaConf.to_container(cfg.attack, resolve=True),
        "clean_accuracy_published": entry.clean_acc / 100 if entry.clean_acc is not None else None,
        "robust_accuracy_published": entry.robust_acc / 100 if entry.robust_acc is not None else None,
        **computed,
        "keys": keys,
        "versions": dict(STAGE_VERSIONS),
    }
    if pseudo_summary is not None:
        # the learned score is judged exactly like the logit margin (Table 2 = Table 1 metrics)
        d_in = samples["input_margin"].to_numpy()
        score = samples["pseudo_margin"].to_numpy()
        summary["pseudo"] = {
            **pseudo_summary,
            "kendall_tau": metrics.kendall_tau(d_in, score),
            **metrics.detection_metrics(d_in, score, settings.eps),
        }
    return json_clean(summary)


class _progress:
    """tqdm with ETA, or a no-op when progress=false."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, smoothing=0.1)

    def __enter__(self) -> Any:
        return self._bar

    def __exit__(self, *exc: Any) -> None:
        self._bar.close()


def human_summary(result: RunResult) -> str:
    s = result.summary
    if result.shard_only:
        return result.message

    def pct(name: str) -> str:
        value = s.get(name)
        return "n/a" if value is None else f"{100 * value:.2f}"

    lines = [
        f"{s['model']} on {s['dataset']} ({s['norm']}, eps={s.get('eps_text', s['eps'])}, n={s['n_samples']}, attack={s['attack']})",
        f"  clean acc {pct('clean_accuracy')}%   robust acc (attack) {pct('robust_accuracy_attack')}%"
        + (f"   published {pct('robust_accuracy_published')}%" if s.get("robust_accuracy_published") is not None else ""),
        f"  Kendall tau {s.get('kendall_tau', float('nan')):.3f}   AUROC {pct('auroc')}   AUPR {pct('aupr')}   FPR@95 {pct('fpr_at_95')}",
        f"  attack failures {s.get('n_attack_failures', 0)}   non-robust share {pct('nonrobust_share')}%",
    ]
    if s.get("pseudo"):
        p = s["pseudo"]
        lines.append(
            f"  pseudo-margin: tau {p.get('kendall_tau', float('nan')):.3f}   AUROC {100 * (p.get('auroc') or float('nan')):.2f}"
        )
    if result.run_dir is not None:
        lines.append(f"  results: {result.run_dir}/summary.json, samples.csv")
    return "\n".join(lines)


__all__ = ["run", "RunResult", "validate", "human_summary", "asdict"]
