"""Robust accuracy with confidence intervals from a few attacked samples (pure math).

The attack (the input margin) is the expensive part of a run; the logit margin is free. Attack
n of the N samples (a simple random sample), and estimate the robust accuracy
θ = mean over the N of Y, Y = correct and d_in > eps, three ways:

* **classical**: from the n attacked samples alone (Wald and Clopper-Pearson);
* **prediction-powered (PPI)**: predictor f = correct and d_out > λ, known on all N;
  θ̂ = mean_N(f) + mean_n(Y - f) (Angelopoulos et al., Science 2023), the z interval of
  ppi-python's ``ppi_mean_ci(..., lam=1)``: var = std_N(f)² / N + std_n(Y - f)² / n;
* **PPI, finite population**: the same θ̂, but the target is the mean of *these* N samples and
  the n are drawn from them without replacement. mean_N(f) is then a constant, θ̂ is exactly
  unbiased and var = (1 - n / N) S²_n(Y - f) / n (the textbook SRS variance of the rectifier).
  This is the right interval for "robust accuracy on this test set"; the plain PPI interval
  targets a super-population and is conservative here (no finite-population correction).

λ: the 95%-TPR logit-margin threshold of the labelled (attacked) subset, the fixed-TPR variant
of Algorithm 1 [R]. PPI is valid for a predictor fixed before seeing the labels; λ is fit on
the same n labels, but it is one scalar, and the rectifier mean_n(Y - f) corrects the bias of
*whatever* λ is used, so the reuse costs little; ``scripts/check_intervals.py`` measures the
coverage this gives on the demo runs instead of assuming it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from marginbench.metrics import _lambda_at_tpr, nonrobust_labels, robust_accuracy_from_subset


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def _interval(method: str, est: float, half: float, level: float) -> dict[str, Any]:
    # the estimand is a proportion: clip the normal interval to [0, 1]
    lo, hi = max(0.0, est - half), min(1.0, est + half)
    return {"method": method, "estimate": est, "low": lo, "high": hi, "width": hi - lo, "level": level}


def wald_interval(y, level: float = 0.95) -> dict[str, Any]:
    """Normal interval for a mean of 0/1 values: mean ± z sqrt(p(1 - p) / n)."""
    y = np.asarray(y, dtype=np.float64)
    p = float(y.mean())
    return _interval("wald", p, _z(level) * math.sqrt(p * (1 - p) / y.size), level)


def clopper_pearson_interval(y, level: float = 0.95) -> dict[str, Any]:
    """Exact binomial interval (beta quantiles) for a mean of 0/1 values."""
    y = np.asarray(y, dtype=bool)
    k, n, a = int(y.sum()), int(y.size), 1 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return {"method": "clopper_pearson", "estimate": k / n, "low": lo, "high": hi,
            "width": hi - lo, "level": level}


def ppi_mean_interval(y, yhat, yhat_all, level: float = 0.95, *, finite_population: bool = False
                      ) -> dict[str, Any]:
    """Prediction-powered interval for the mean of ``y``.

    ``y``/``yhat``: labels and predictions on the n labelled samples; ``yhat_all``: predictions
    on all N samples. ``finite_population=False`` is ppi-python's ``ppi_mean_ci(Y, Yhat,
    Yhat_unlabeled, lam=1)`` (np.std with ddof 0); ``True``: the labelled samples are a simple
    random sample of the N and the target is the mean over the N (see the module docstring).
    """
    y, f, fa = (np.asarray(v, dtype=np.float64) for v in (y, yhat, yhat_all))
    n, big_n = y.size, fa.size
    rect = y - f
    est = float(fa.mean() + rect.mean())
    if finite_population:
        var = (1 - n / big_n) * rect.var(ddof=1) / n if n > 1 else math.inf
        return _interval("ppi_finite_population", est, _z(level) * math.sqrt(var), level)
    se = math.sqrt(fa.std() ** 2 / big_n + rect.std() ** 2 / n)
    return _interval("ppi", est, _z(level) * se, level)


def _attacked_subset(n_total: int, n_attacked: int | None, seed: int) -> np.ndarray:
    m = min(500, n_total // 2) if n_attacked is None else min(int(n_attacked), n_total)
    return np.random.default_rng(seed).choice(n_total, size=m, replace=False)


def robust_accuracy_intervals(
    d_in, d_out, correct, eps: float, *, n_attacked: int | None = None, level: float = 0.95,
    seed: int = 0, tpr: float = 0.95, attack_seconds=None, algorithm1: bool = True,
) -> dict[str, Any]:
    """Robust accuracy from a seeded random attacked subset: PPI, classical and Algorithm 1.

    Default subset size n = min(500, N // 2). ``attack_seconds`` (per sample, optional) gives
    the attack time the subset saves. Only the subset's input margins are used. Algorithm 1's
    point estimate (same subset size, its own seeded repeats) is listed last when ``algorithm1``.
    """
    a, b = np.asarray(d_in, dtype=np.float64), np.asarray(d_out, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    idx = _attacked_subset(a.size, n_attacked, seed)
    if idx.size < 2:  # no variance from fewer than two attacked samples
        return {"n_attacked": int(idx.size), "n_total": int(a.size), "skipped": True, "methods": []}
    y_nonrobust = nonrobust_labels(a[idx], eps)
    y = c[idx] & ~y_nonrobust
    lam = _lambda_at_tpr(y_nonrobust, b[idx], tpr)
    f_all = c & (b > lam)
    methods = [
        ppi_mean_interval(y, f_all[idx], f_all, level),
        ppi_mean_interval(y, f_all[idx], f_all, level, finite_population=True),
        clopper_pearson_interval(y, level),
        wald_interval(y, level),
    ]
    if algorithm1:  # point estimate only: Algorithm 1 has no interval (10 repeats: the cost)
        alg1 = robust_accuracy_from_subset(a, b, c, eps, n_subset=idx.size, seed=seed)
        methods.append({"method": "algorithm1", "estimate": alg1["estimate"], "low": None,
                        "high": None, "width": None, "level": None})
    out = {"n_attacked": int(idx.size), "n_total": int(a.size), "seed": seed, "level": level,
           "lambda": float(lam), "tpr": tpr, "attack_share_saved": 1 - idx.size / a.size,
           "methods": methods}
    if attack_seconds is not None:
        sec = np.asarray(attack_seconds, dtype=np.float64)
        out["attack_seconds_saved"] = float(np.nansum(sec) - np.nansum(sec[idx]))
    return out
