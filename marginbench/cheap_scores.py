"""Cheap brittleness scores beside the logit margin, and their leaderboard (pure math).

Every score follows the logit-margin convention: *larger = more robust*, so each is judged by
:func:`marginbench.metrics.score_metrics` exactly like the logit margin (Kendall τ with the
input margin; AUROC, AUPR, FPR@95 of detecting d_in <= eps by -score). The softmax scores come
from the logits the outputs stage already caches: no extra forward or backward pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.special import log_softmax

from marginbench.metrics import logit_margin, score_metrics

# What each score costs beyond the clean forward pass every run already does.
SCORE_COSTS: dict[str, dict[str, Any]] = {
    "logit_margin": {"extra_forward": 0, "extra_backward": 0, "needs": "logits"},
    "prob_margin": {"extra_forward": 0, "extra_backward": 0, "needs": "logits"},
    "max_softmax": {"extra_forward": 0, "extra_backward": 0, "needs": "logits"},
    "neg_entropy": {"extra_forward": 0, "extra_backward": 0, "needs": "logits"},
    "feature_margin": {"extra_forward": 0, "extra_backward": 0, "needs": "logits + head weights"},
    # stages/scores.py: one backward pass per runner-up candidate (3), shared by both scores;
    # samples.csv score_seconds has the measured wall time per sample
    "first_order_margin": {"extra_forward": 1, "extra_backward": 3, "needs": "input gradients"},
    "neg_grad_norm": {"extra_forward": 1, "extra_backward": 3, "needs": "input gradients (shared)"},
    "pseudo_margin": {"extra_forward": 0, "extra_backward": 0,
                      "needs": "a trained pseudo-margin MLP (one small forward) and attacked training data"},
}


def softmax_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Probability margin (p1 - p2), max softmax probability, negated entropy, per row.

    log_softmax keeps large logits finite (exp of a raw logit overflows for confident models).
    """
    z = np.asarray(logits, dtype=np.float64)
    logp = log_softmax(z, axis=1)
    p = np.exp(logp)
    top2 = np.sort(p, axis=1)[:, -2:]
    return {
        "prob_margin": top2[:, 1] - top2[:, 0],
        "max_softmax": top2[:, 1],
        # sum p log p = -entropy; 0 log 0 counts as 0
        "neg_entropy": np.sum(np.where(p > 0, p * logp, 0.0), axis=1),
    }


def score_columns(samples: pd.DataFrame) -> list[str]:
    """The score columns present in a samples table, in leaderboard order."""
    return [c for c in SCORE_COSTS if c in samples.columns and samples[c].notna().any()]


def leaderboard(samples: pd.DataFrame, eps: float) -> dict[str, dict[str, Any]]:
    """{score: Table 1 metrics at eps + its cost} for every score column of the table."""
    d_in = pd.to_numeric(samples["input_margin"], errors="coerce").to_numpy(np.float64)
    out: dict[str, dict[str, Any]] = {}
    for name in score_columns(samples):
        score = pd.to_numeric(samples[name], errors="coerce").to_numpy(np.float64)
        m = score_metrics(d_in, score, eps)
        out[name] = {k: m[k] for k in ("kendall_tau", "auroc", "aupr", "fpr_at_95", "skipped")}
        out[name]["cost"] = dict(SCORE_COSTS[name])
        if SCORE_COSTS[name]["extra_backward"] and "score_seconds" in samples.columns:
            out[name]["cost"]["seconds_per_sample"] = float(samples["score_seconds"].mean())
    return out


def check_logits_match(logits: np.ndarray, samples: pd.DataFrame, tol: float = 1e-5) -> None:
    """Raise if cached logits do not belong to this samples table (logit margins differ)."""
    lm = logit_margin(logits)
    ref = samples["logit_margin"].to_numpy(np.float64)
    if lm.shape != ref.shape or not np.allclose(lm, ref, rtol=tol, atol=tol):
        raise ValueError("cached logits do not reproduce the samples' logit_margin column")
