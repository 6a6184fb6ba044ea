"""Stage: one run's per-sample table and summary at one eps (the "runs" record).

This is the only stage that sees eps: it turns the cached margins and outputs into
samples.csv (one row per evaluated sample) and summary.json (Kendall tau, detection metrics,
robust accuracy, attack cost, the cache keys and stage versions that produced them).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from marginbench import jsonio
from marginbench.cache import Artifact, ArtifactStore, Writers, artifact_key
from marginbench.versions import RUNS_VERSION, STAGE_VERSIONS

log = logging.getLogger("marginbench")

# samples.csv columns that hold wall time: the only ones two runs of one config may differ in
WALL_TIME_COLUMNS = ("attack_seconds", "score_seconds")


@dataclass(frozen=True)
class MetricsParams:
    eps: float
    eps_list: tuple[float, ...]
    norm: str

    def key_params(self) -> dict[str, Any]:
        return {"eps": self.eps, "eps_list": list(self.eps_list), "norm": self.norm}


@dataclass(frozen=True)
class RunData:
    """Everything the record is computed from (all already cached upstream)."""

    labels: np.ndarray
    indices: np.ndarray
    margins: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    pseudo_margin: np.ndarray | None = None
    pseudo_info: dict[str, Any] | None = None
    gradient_scores: dict[str, np.ndarray] | None = None  # stages/scores.py arrays


def runs_key(params: MetricsParams, input_keys: dict[str, str]) -> str:
    return artifact_key("runs", RUNS_VERSION, params.key_params(), input_keys)


def compute_metrics(
    store: ArtifactStore, key: str, params: MetricsParams, data: RunData,
    header: dict[str, Any], input_keys: dict[str, str],
) -> Artifact:
    """``header``: the identification fields that open summary.json (model, dataset, attack...)."""

    def compute() -> tuple[Writers, dict[str, Any]]:
        samples = build_samples_table(data, params)
        summary = run_summary(header, samples, params, input_keys, data.pseudo_info)
        writers = {
            "summary.json": lambda path: path.write_text(jsonio.dumps(summary)),
            "samples.csv": lambda path: samples.to_csv(path, index=False, float_format="%.9g"),
            "head_weight.npy": lambda path: np.save(path, data.outputs["head_weight"]),
        }
        meta = {"kind": "run", "model": header["model_code"], "dataset": header["dataset"], "eps": params.eps,
                "keys": input_keys}
        return writers, meta

    return store.get_or_compute("runs", key, compute, "metrics")


def build_samples_table(data: RunData, params: MetricsParams) -> pd.DataFrame:
    from marginbench import metrics

    margins, outputs = data.margins, data.outputs
    pred = outputs["logits"].argmax(1)
    if not np.array_equal(pred, margins["pred"]):
        # the margin stage attacked the prediction it saw; a mismatch means nondeterminism
        log.warning("%d predictions differ between margin and output stages", int((pred != margins["pred"]).sum()))
    input_margin = margins["margin"].astype(np.float64)
    success = margins["success"].astype(bool)
    correct = pred == data.labels
    nonrobust = success & (input_margin <= params.eps)
    table = pd.DataFrame(
        {
            "index": data.indices.astype(np.int64),
            "label": data.labels.astype(np.int64),
            "pred": pred.astype(np.int64),
            "correct": correct,
            "input_margin": input_margin,
            "margin_lower_bound": margins["lower_bound"].astype(np.float64),
            "margin_status": margins["status"].astype(str),
            "margin_agreement": margins["agreement"].astype(np.int64),
            "attack_success": success,
            "found_by": margins["found_by"].astype(str),
            "escalated": margins["escalated"].astype(str),
            "logit_margin": metrics.logit_margin(outputs["logits"]),
            "feature_margin": metrics.feature_margin(outputs["logits"], outputs["head_weight"], params.norm),
            "feature_distance": outputs["feature_distance"],
            "adv_logit_margin": np.where(success, metrics.logit_margin(outputs["logits_adv"]), np.nan),
            "n_forward": margins["n_forward"].astype(np.int64),
            "n_backward": margins["n_backward"].astype(np.int64),
            "attack_seconds": margins["seconds"].astype(np.float64),
            "nonrobust": nonrobust,
            "robust_correct": correct & ~nonrobust,
        }
    )
    # free scores from the same cached logits (leaderboard of cheap scores, issue 13)
    from marginbench.cheap_scores import softmax_scores

    for name, values in softmax_scores(outputs["logits"]).items():
        table[name] = values
    if data.gradient_scores is not None:
        for name in ("first_order_margin", "neg_grad_norm"):
            table[name] = data.gradient_scores[name].astype(np.float64)
        table["score_seconds"] = data.gradient_scores["seconds"].astype(np.float64)
    if data.pseudo_margin is not None:
        table["pseudo_margin"] = data.pseudo_margin.astype(np.float64)
    return table


def run_summary(
    header: dict[str, Any], samples: pd.DataFrame, params: MetricsParams,
    input_keys: dict[str, str], pseudo_info: dict[str, Any] | None,
) -> dict[str, Any]:
    from marginbench import metrics

    computed = metrics.summarize(samples, params.eps, list(params.eps_list))
    summary: dict[str, Any] = {**header, **computed, "keys": input_keys, "versions": dict(STAGE_VERSIONS)}
    if pseudo_info is not None:
        # the learned score is judged exactly like the logit margin (Table 2 = Table 1 metrics)
        d_in = samples["input_margin"].to_numpy()
        score = samples["pseudo_margin"].to_numpy()
        summary["pseudo"] = {
            **pseudo_info,
            "kendall_tau": metrics.kendall_tau(d_in, score),
            **metrics.detection_metrics(d_in, score, params.eps),
        }
    summary["robust_accuracy_interval"] = _robust_accuracy_interval(samples, params.eps)
    from marginbench.cheap_scores import leaderboard

    summary["scores"] = leaderboard(samples, params.eps)
    return jsonio.json_clean(summary)


def _robust_accuracy_interval(samples: pd.DataFrame, eps: float) -> dict[str, Any]:
    """PPI / classical / Algorithm 1 robust accuracy from a seeded subset of the run's samples
    (n = min(500, N // 2) treated as the only attacked ones): what attacking fewer would give."""
    from marginbench import intervals

    return intervals.robust_accuracy_intervals(
        samples["input_margin"].to_numpy(np.float64), samples["logit_margin"].to_numpy(np.float64),
        samples["correct"].to_numpy(bool), eps, attack_seconds=samples["attack_seconds"].to_numpy(np.float64),
    )


def read_record(record: Artifact) -> tuple[dict[str, Any], pd.DataFrame]:
    return json.loads(record.file("summary.json").read_text()), pd.read_csv(record.file("samples.csv"))
