"""Stage: input margins (batched, resumable, shardable).

Every finished batch is stored as a part file (cache ``margins/<key>.parts/``), so a killed
run resumes with at most the batch in flight lost. Batches are cut the same way whether a
run is fresh, resumed or sharded, and each batch seeds its own random draws, so all three
give the same margins, sample for sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from marginbench.cache import Artifact, ArtifactStore, artifact_key, atomic_save_npz
from marginbench.errors import MarginbenchError
from marginbench.models.handle import LazyModel
from marginbench.progress import PassProgress, attach, estimator_budget, progress_bar
from marginbench.stages import Execution
from marginbench.versions import MARGINS_VERSION, MULTISTART_VERSION

log = logging.getLogger("marginbench")

MARGIN_FIELDS = ("position", "pred", "margin", "success", "found_by", "escalated", "lower_bound", "status",
                 "agreement", "x_adv",
                 "n_forward", "n_backward", "seconds")


@dataclass(frozen=True)
class MarginParams:
    """What can change a margin: the estimator config, the norm and the seed. Nothing else
    (eps, device, batch size) can reach the margin key."""

    attack: Mapping[str, Any]
    norm: str
    seed: int

    @classmethod
    def from_config(cls, cfg: DictConfig, norm: str) -> MarginParams:
        return cls(OmegaConf.to_container(cfg.attack, resolve=True), norm, int(cfg.seed))

    def key_params(self) -> dict[str, Any]:
        attack = dict(self.attack)
        if not attack.get("escalate"):  # no escalation: the keys of runs before it existed
            attack.pop("escalate", None)
        if (attack.get("options") or {}).get("multistart_rounds"):
            # only multi-start estimators changed with it: other estimators keep their keys
            attack["multistart_version"] = MULTISTART_VERSION
        return {**attack, "norm": self.norm, "seed": self.seed}


@dataclass(frozen=True)
class Shard:
    count: int = 1
    index: int | None = None  # None: all shards (computed, or assembled when count > 1)


@dataclass
class MarginStageResult:
    artifact: Artifact | None  # None when only one shard was computed
    computed_samples: int
    message: str = ""


def margins_key(params: MarginParams, model_key: str, data_key: str) -> str:
    return artifact_key("margins", MARGINS_VERSION, params.key_params(), {"model": model_key, "data": data_key})


def shard_positions(n: int, count: int, batch_size: int) -> list[np.ndarray]:
    """Contiguous shards made of whole batches, so a sharded run attacks exactly the batches
    an unsharded run with the same batch size would (identical results, sample for sample)."""
    batches = np.array_split(np.arange(math.ceil(n / batch_size)), count)
    return [np.arange(b[0] * batch_size, min((b[-1] + 1) * batch_size, n)) if b.size else np.arange(0) for b in batches]


def contiguous_batches(positions: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split sorted positions into batches that never straddle a gap, so resumed and
    uninterrupted runs cut the same batches."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    batches = []
    for run in np.split(positions, breaks):
        batches.extend(run[i : i + batch_size] for i in range(0, run.size, batch_size))
    return batches


def compute_margins(
    store: ArtifactStore,
    key: str,
    images: torch.Tensor,
    model: LazyModel,
    params: MarginParams,
    run: Execution,
    meta: dict[str, Any],
    label: str = "margins",
    shard: Shard = Shard(),
) -> MarginStageResult:
    cached = store.get("margins", key)
    if cached is not None:
        log.info("%s: cached (margins/%s), margin stage skipped", label, key)
        return MarginStageResult(cached, 0)
    n = images.shape[0]
    done = _covered(store.load_parts("margins", key, part_problem), n)
    shards = shard_positions(n, shard.count, run.batch_size)
    wanted = _wanted_positions(n, done, shards, shard)
    todo = wanted[~done[wanted]]
    if todo.size:
        resumed = int(done[wanted].sum())
        log.info(
            "%s: %s on %d samples%s (attack=%s, norm=%s)", label, "resuming" if resumed else "computing",
            todo.size, f", {resumed} already done" if resumed else "", params.attack.get("name"), params.norm,
        )
        _attack_and_store(store, key, images, todo, model, params, run, label)
        finished_elsewhere = store.get("margins", key)  # a concurrent run of the same config
        if finished_elsewhere is not None:
            return MarginStageResult(finished_elsewhere, int(todo.size))
    parts = store.load_parts("margins", key, part_problem)
    covered = _covered(parts, n)
    if shard.index is not None and not covered.all():
        finished = [i for i, positions in enumerate(shards) if covered[positions].all()]
        message = (f"shard {shard.index}/{shard.count} done; finished shards: {finished}. "
                   "Run without shard.index to assemble when all are done.")
        return MarginStageResult(None, int(todo.size), message)
    if not covered.all():  # parts vanish when a concurrent run of this config assembled them
        finished_elsewhere = store.get("margins", key)
        if finished_elsewhere is not None:
            return MarginStageResult(finished_elsewhere, int(todo.size))
        raise MarginbenchError(f"margin batches for {int((~covered).sum())} samples disappeared from the cache; run again")
    return MarginStageResult(_assemble(store, key, parts, n, meta, int(todo.size), label), int(todo.size))


def part_problem(part: dict[str, np.ndarray]) -> str | None:
    """Why a stored batch cannot be used (None: it can): every field of MARGIN_FIELDS, one
    row per sample in each. A part written by a killed process is never half there (atomic
    rename), but a disk can still truncate or flip it."""
    missing = [name for name in MARGIN_FIELDS if name not in part]
    if missing:
        return f"missing {', '.join(missing)}"
    lengths = {name: len(part[name]) for name in MARGIN_FIELDS}
    if len(set(lengths.values())) != 1 or lengths["position"] == 0:
        return f"inconsistent lengths {lengths}"
    return None


def _covered(parts: list[dict[str, np.ndarray]], n: int) -> np.ndarray:
    covered = np.zeros(n, dtype=bool)
    for part in parts:
        covered[part["position"]] = True
    return covered


def _wanted_positions(n: int, done: np.ndarray, shards: list[np.ndarray], shard: Shard) -> np.ndarray:
    """The positions this process is responsible for: one shard, or all of them (assembling
    shards only once every one is finished)."""
    if shard.index is not None:
        return shards[shard.index]
    if shard.count > 1:
        missing = [i for i, positions in enumerate(shards) if not done[positions].all()]
        if missing:
            raise MarginbenchError(
                f"margin shards {missing} of shard.count={shard.count} are not finished; "
                f"run them with shard.index=<i> (e.g. -m shard.index={','.join(map(str, missing))})"
            )
    return np.arange(n)


def _attack_and_store(
    store: ArtifactStore, key: str, images: torch.Tensor, todo: np.ndarray,
    model: LazyModel, params: MarginParams, run: Execution, label: str,
) -> None:
    from marginbench.margins import build_estimator

    estimator = build_estimator(params.attack, params.norm)
    net = model.get()
    with progress_bar(total=int(todo.size), desc=label, enabled=run.progress) as bar:
        tracker = None
        for batch in contiguous_batches(todo, run.batch_size):
            x = images[batch].to(run.device)
            if tracker is None:  # the first batch's cost is guessed from the budget and K
                with torch.no_grad():
                    n_classes = int(net(x[:1]).shape[1])
                tracker = PassProgress(bar, label, estimator_budget(estimator, n_classes), log)
                attach(estimator, tracker)
            tracker.start_batch(int(batch[0]), len(batch))
            # A seed per batch start: a batch redone after a crash gets the same random draws.
            torch.manual_seed(params.seed * 1_000_003 + int(batch[0]))
            arrays = _attack_batch(estimator, net, x, batch)
            store.save_part("margins", key, int(batch[0]), int(batch[-1]) + 1, arrays)
            tracker.finish_batch()


def _attack_batch(estimator: Any, net: torch.nn.Module, x: torch.Tensor, batch: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        pred = net(x).argmax(1)
    result = estimator(net, x, pred)
    return {
        "position": batch.astype(np.int64),
        "pred": pred.cpu().numpy().astype(np.int64),
        "margin": np.asarray(result.margin, dtype=np.float64),
        "success": np.asarray(result.success, dtype=bool),
        "found_by": np.asarray(result.found_by, dtype=str),
        "escalated": np.asarray(result.escalated, dtype=str),
        "lower_bound": np.asarray(result.lower_bound, dtype=np.float64),
        "status": np.asarray(result.status, dtype=str),
        "agreement": np.asarray(result.agreement, dtype=np.int64),
        "x_adv": result.x_adv.detach().cpu().numpy().astype(np.float32),
        "n_forward": np.asarray(result.n_forward, dtype=np.int64),
        "n_backward": np.asarray(result.n_backward, dtype=np.int64),
        "seconds": np.asarray(result.seconds, dtype=np.float64),
    }


def _assemble(
    store: ArtifactStore, key: str, parts: list[dict[str, np.ndarray]], n: int,
    meta: dict[str, Any], computed: int, label: str,
) -> Artifact:
    merged = _merge_parts(parts, n)
    summary = {
        "n_samples": n,
        "n_failures": int((~merged["success"]).sum()),
        "seconds_total": float(merged["seconds"].sum()),
        "computed_in_this_process": computed,
    }
    artifact = store.put("margins", key, {"arrays.npz": lambda path: atomic_save_npz(path, merged)}, {**meta, "summary": summary})
    log.info("%s: stored margins/%s (%d failures)", label, key, summary["n_failures"])
    return artifact


def _merge_parts(parts: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    merged = {name: np.concatenate([part[name] for part in parts]) for name in MARGIN_FIELDS}
    order = np.argsort(merged["position"], kind="stable")
    # keep the first copy of a position (two shards may have overlapped after a change of count)
    positions = merged["position"][order]
    first = np.concatenate([[True], positions[1:] != positions[:-1]])
    keep = order[first]
    out = {name: merged[name][keep] for name in MARGIN_FIELDS}
    if out["position"].size != n:
        raise MarginbenchError("margin parts do not cover every sample; delete the .parts directory and run again")
    return out
