"""Pure math on margins: no torch, no I/O (numpy, scipy, scikit-learn, pandas only).

Conventions (paper_protocol.md §1-§4):

* ``d_in``  input margin: norm of the closest adversarial example found; ``+inf`` where the
  attack failed (the authors' code silently used 0 there; we keep the failure visible).
* ``d_out`` logit margin: top-1 minus top-2 raw logit (>= 0).
* A sample is **non-robust at eps** iff ``d_in <= eps``; that is the *positive* class of the
  detection task, scored by ``-d_out`` (a small logit margin flags a brittle decision).
* Every rate returned here is a fraction in [0, 1]; tables multiply by 100.
* Undefined quantities (a single class, fewer than two samples) are ``nan`` and come with
  ``skipped=True``; :func:`summarize` turns them into ``None`` so summary.json stays valid JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import cdist
from sklearn.metrics import (
    auc,
    average_precision_score,
    det_curve,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from marginbench.jsonio import json_clean

# The α grid of Algorithm 1 exactly as in the authors' code (nbutils.determine_lda):
# note that 0.975 is *not* in it although the paper writes "0.80, 0.825, ..., 0.99".
ALG1_ALPHAS: tuple[float, ...] = (0.80, 0.825, 0.85, 0.875, 0.90, 0.925, 0.95, 0.99)
# An ε of the sweep is skipped when the non-robust share is outside [0.001, 0.999] [P App. B].
SKIP_MIN_SHARE = 0.001
SKIP_MAX_SHARE = 0.999
PAPER_EPS_LINF: tuple[float, ...] = tuple(k / 255 for k in (2, 4, 8, 12, 16, 32))

_DUAL_ORDER = {"linf": 1.0, "l2": 2.0, "l1": math.inf}
_CDIST_METRIC = {1.0: "cityblock", 2.0: "euclidean", math.inf: "chebyshev"}


# --------------------------------------------------------------------------- margins


def logit_margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 raw logit per row (float64, >= 0; 0 on ties)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, K) with K >= 2, got shape {z.shape}")
    top2 = np.partition(z, z.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def dual_order(norm: str) -> float:
    """q of the dual norm used for feature margins: 1 for Linf, 2 for L2 (inf for L1)."""
    key = str(norm).strip().lower().replace("-", "").replace("∞", "inf")
    if key not in _DUAL_ORDER:
        raise ValueError(f"unknown norm {norm!r}: use Linf or L2")
    return _DUAL_ORDER[key]


def head_pair_distances(head_weight: np.ndarray, norm: str) -> np.ndarray:
    """(K, K) matrix of ||w_i - w_j||_q, q the dual norm of ``norm``."""
    w = np.asarray(head_weight, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"head_weight must be (K, D), got shape {w.shape}")
    return cdist(w, w, metric=_CDIST_METRIC[dual_order(norm)])


def head_pair_distance_values(head_weight: np.ndarray, norm: str) -> np.ndarray:
    """||w_i - w_j||_q over the K(K-1)/2 unordered class pairs (i < j): the equidistance data."""
    d = head_pair_distances(head_weight, norm)
    iu = np.triu_indices(d.shape[0], k=1)
    return d[iu]


def feature_margin(
    logits: np.ndarray, head_weight: np.ndarray, norm: str, chunk: int = 4096
) -> np.ndarray:
    """Exact feature-space margin min_{j != ŷ} (f_ŷ - f_j) / ||w_ŷ - w_j||_q.

    The distance (in the norm dual to ``q``, i.e. the threat model's own norm measured in
    feature space) from h(x) to the closest decision hyperplane of the linear head; the bias
    is already inside the logits. q = 1 for Linf, q = 2 for L2. Pairs with identical weight
    rows (||w_ŷ - w_j|| = 0) can never be crossed by moving h and are ignored (+inf).
    """
    z = np.asarray(logits, dtype=np.float64)
    dist = head_pair_distances(head_weight, norm)
    if z.ndim != 2 or z.shape[1] != dist.shape[0]:
        raise ValueError(
            f"logits {z.shape} and head_weight with {dist.shape[0]} classes do not match"
        )
    n, k = z.shape
    out = np.empty(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, n, chunk):
            zc = z[start : start + chunk]
            pred = zc.argmax(axis=1)
            rows = np.arange(len(zc))
            gap = zc[rows, pred][:, None] - zc  # (B, K) >= 0
            denom = dist[pred]  # (B, K)
            ratio = np.where(denom > 0, gap / np.where(denom > 0, denom, 1.0), np.inf)
            ratio[rows, pred] = np.inf
            out[start : start + chunk] = ratio.min(axis=1)
    return out


def equidistance_stats(head_weight: np.ndarray, norm: str) -> dict[str, float]:
    """How far the head is from equidistant classes (coefficient of variation 0 = equidistant)."""
    v = head_pair_distance_values(head_weight, norm)
    mean = float(v.mean())
    return {
        "mean": mean,
        "std": float(v.std()),
        "cv": float(v.std() / mean) if mean > 0 else float("nan"),
        "min": float(v.min()),
        "max": float(v.max()),
    }


# --------------------------------------------------------------------------- correlations


def _pair(d_in, d_out) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(d_in, dtype=np.float64).ravel()
    b = np.asarray(d_out, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"d_in {a.shape} and d_out {b.shape} differ in length")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def kendall_tau(d_in, d_out) -> float:
    """Kendall's tau-b, computed as ``scipy.stats.kendalltau(d_out, d_in)`` (paper §2.4).

    +inf input margins (attack failures) are kept: they rank above every finite margin and tie
    among themselves (tau-b corrects for those ties). NaN pairs are dropped. Returns nan when
    fewer than two samples remain or one side is constant.
    """
    a, b = _pair(d_in, d_out)
    if a.size < 2:
        return float("nan")
    return float(stats.kendalltau(b, a).statistic)


def spearman(d_in, d_out) -> float:
    """Spearman's rho on ranks; +inf ranks largest (as in :func:`kendall_tau`)."""
    a, b = _pair(d_in, d_out)
    if a.size < 2:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(stats.spearmanr(b, a).statistic)


def pearson(d_in, d_out) -> float:
    """Pearson's r over the pairs where both values are finite (inf has no linear meaning)."""
    a, b = _pair(d_in, d_out)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.pearsonr(b, a).statistic)


# --------------------------------------------------------------------------- detection


def nonrobust_labels(d_in, eps: float) -> np.ndarray:
    """Positive class: non-robust at eps (d_in <= eps). +inf / nan (failed attack) -> robust."""
    a = np.asarray(d_in, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return a <= eps


def fpr_at_tpr(y_true, score, target: float = 0.95) -> tuple[float, float, float]:
    """(fpr, tpr, threshold) at TPR >= target, exactly as the authors' ``get_FPR_at_TPR``.

    On sklearn's ``det_curve`` (thresholds increasing, TPR non-increasing) it takes the first
    point whose TPR is the smallest TPR >= target: the *smallest threshold* among those giving
    that TPR, hence the largest FPR among them. ``threshold`` is in score units: a sample is
    flagged positive when ``score >= threshold``.
    """
    fpr, fnr, thr = det_curve(np.asarray(y_true).astype(int), np.asarray(score, dtype=np.float64))
    tpr = 1 - fnr
    idx = int(np.argmin(tpr[tpr >= target]))
    return float(fpr[idx]), float(tpr[idx]), float(thr[idx])


def _undefined_detection(share: float, n: int, n_pos: int) -> dict[str, Any]:
    nan = float("nan")
    return {
        "auroc": nan,
        "aupr": nan,
        "average_precision": nan,
        "fpr_at_95": nan,
        "threshold_at_95": nan,
        "nonrobust_share": share,
        "n": n,
        "n_nonrobust": n_pos,
        "skipped": True,
    }


def detection_metrics(
    d_in, d_out, eps: float, *, min_share: float = 0.0, max_share: float = 1.0
) -> dict[str, Any]:
    """Detection of non-robust samples (d_in <= eps) by the score ``-d_out``.

    Returns fractions: ``auroc`` (roc_auc_score), ``aupr`` = the paper's trapezoid
    ``auc(recall, precision)`` over ``precision_recall_curve``, ``average_precision`` (sklearn's
    step-wise AP, beside it), ``fpr_at_95`` (:func:`fpr_at_tpr`), ``threshold_at_95`` (the
    logit-margin threshold λ: flagged iff d_out <= λ), ``nonrobust_share``, ``n``,
    ``n_nonrobust`` and ``skipped``. When only one class is present, or the non-robust share is
    outside [min_share, max_share] (the ε-sweep rule passes 0.001 / 0.999), all metric values
    are nan and ``skipped`` is True.
    """
    a, b = _pair(d_in, d_out)
    y = nonrobust_labels(a, eps)
    n = int(y.size)
    n_pos = int(y.sum())
    share = n_pos / n if n else float("nan")
    if n == 0 or n_pos in (0, n) or share < min_share or share > max_share:
        return _undefined_detection(share, n, n_pos)
    score = -b
    auroc = float(roc_auc_score(y, score))
    precision, recall, _ = precision_recall_curve(y, score)
    aupr = float(auc(recall, precision))
    ap = float(average_precision_score(y, score))
    fpr95, _, thr95 = fpr_at_tpr(y, score, 0.95)
    return {
        "auroc": auroc,
        "aupr": aupr,
        "average_precision": ap,
        "fpr_at_95": fpr95,
        "threshold_at_95": -thr95,
        "nonrobust_share": share,
        "n": n,
        "n_nonrobust": n_pos,
        "skipped": False,
    }


def detection_curves(d_in, d_out, eps: float) -> dict[str, np.ndarray] | None:
    """ROC (fpr, tpr) and PR (recall, precision) curves for plotting; None if undefined."""
    a, b = _pair(d_in, d_out)
    y = nonrobust_labels(a, eps)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, -b)
    precision, recall, _ = precision_recall_curve(y, -b)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}


def eps_key(eps: float) -> str:
    """Readable, stable key for an ε: '%g' when short (0.5, 0.1, 2), else 'k/255' when ε·255 is
    an integer (8/255), else '%g'."""
    short = f"{eps:g}"
    if len(short.replace("0.", "").replace(".", "")) <= 2:
        return short
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{int(round(k))}/255"
    return short


def eps_sweep(d_in, d_out, eps_list: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Detection metrics for every ε, reusing the same margins; skip rule of [P App. B].

    Keys are :func:`eps_key` strings; each entry also carries the float ``eps``.
    """
    out: dict[str, dict[str, Any]] = {}
    for eps in sorted(float(e) for e in eps_list):
        m = detection_metrics(
            d_in, d_out, eps, min_share=SKIP_MIN_SHARE, max_share=SKIP_MAX_SHARE
        )
        out[eps_key(eps)] = {"eps": eps, **m}
    return out


def per_class_tau(d_in, d_out, classes) -> dict[int, dict[str, float]]:
    """Kendall's tau within each class, with the class size."""
    a = np.asarray(d_in, dtype=np.float64)
    b = np.asarray(d_out, dtype=np.float64)
    c = np.asarray(classes)
    out = {}
    for k in np.unique(c):
        m = c == k
        out[int(k)] = {"tau": kendall_tau(a[m], b[m]), "n": int(m.sum())}
    return out


# --------------------------------------------------------------------------- robust accuracy


def robust_accuracy_attack(correct, d_in, eps: float) -> float:
    """Share of samples that are correct AND have d_in > eps (failed attacks count robust)."""
    c = np.asarray(correct, dtype=bool)
    if c.size == 0:
        return float("nan")
    return float((c & ~nonrobust_labels(d_in, eps)).mean())


def _lambda_at_tpr(y: np.ndarray, d_out: np.ndarray, alpha: float) -> float:
    """Logit-margin threshold λ at TPR alpha (flag iff d_out <= λ).

    A subset with no non-robust sample gives λ = -inf (nothing flagged); a subset with only
    non-robust samples gives λ = +inf (everything flagged).
    """
    if not y.any():
        return -math.inf
    if y.all():
        return math.inf
    return -fpr_at_tpr(y, -d_out, alpha)[2]


def _robust_acc_threshold(correct: np.ndarray, d_out: np.ndarray, lam: float) -> float:
    return float((correct & (d_out > lam)).mean())


def _subset_threshold(
    y_s: np.ndarray, c_s: np.ndarray, b_s: np.ndarray, candidates: Sequence[float], fixed: bool
) -> tuple[float, float]:
    """(λ, α) among the candidate TPR levels whose threshold best reproduces the subset's
    attack-based robust accuracy; the first α wins ties, as in the authors' code. ``fixed``:
    the one candidate is taken whatever its error (the fixed-TPR variant)."""
    target = float((c_s & ~y_s).mean())
    best_lam, best_err, best_alpha = math.inf, math.inf, candidates[0]
    for al in candidates:
        lam = _lambda_at_tpr(y_s, b_s, al)
        err = abs(target - _robust_acc_threshold(c_s, b_s, lam))
        if err < best_err or fixed:
            best_lam, best_err, best_alpha = lam, err, al
    return best_lam, best_alpha


def robust_accuracy_from_subset(
    d_in,
    d_out,
    correct,
    eps: float,
    *,
    n_subset: int = 500,
    n_repeats: int = 10,
    alphas: Sequence[float] = ALG1_ALPHAS,
    alpha: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Robust accuracy estimated from a small attacked subset (Algorithm 1, App. F.1).

    Each repeat draws ``n_subset`` samples without replacement; ``alpha=None`` picks, among
    ``alphas``, the TPR level whose threshold λ best reproduces the subset's attack-based robust
    accuracy (first α wins ties, as in the authors' code); ``alpha=0.95`` is the fixed-TPR
    variant of [R]. λ is then applied to all samples (robust iff correct and d_out > λ), and the
    estimates are averaged. Only the subset's input margins are used. Fractions throughout.
    """
    a = np.asarray(d_in, dtype=np.float64)
    b = np.asarray(d_out, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    n = a.size
    if n == 0:
        return {"estimate": float("nan"), "skipped": True}
    m = min(int(n_subset), n)
    rng = np.random.default_rng(seed)
    estimates, lambdas, chosen, taus = [], [], [], []
    for _ in range(int(n_repeats)):
        idx = rng.choice(n, size=m, replace=False)
        taus.append(kendall_tau(a[idx], b[idx]))  # τ seen on the subset alone
        candidates = [alpha] if alpha is not None else list(alphas)
        best_lam, best_alpha = _subset_threshold(nonrobust_labels(a[idx], eps), c[idx], b[idx], candidates, alpha is not None)
        estimates.append(_robust_acc_threshold(c, b, best_lam))
        lambdas.append(best_lam)
        chosen.append(best_alpha)
    attack = robust_accuracy_attack(c, a, eps)
    est = float(np.mean(estimates))
    return {
        "estimate": est,
        "std": float(np.std(estimates)),
        "estimates": [float(e) for e in estimates],
        "lambdas": [float(x) for x in lambdas],
        "alphas": [float(x) for x in chosen],
        "tau_subset": float(np.nanmean(taus)) if np.isfinite(taus).any() else float("nan"),
        "n_subset": m,
        "n_repeats": int(n_repeats),
        "alpha": alpha,
        "attack_based": attack,
        "abs_error": abs(est - attack),
        "skipped": False,
    }


# --------------------------------------------------------------------------- Table 4


def adversarial_margin_check(adv_logit_margin, d_in, d_out, eps: float) -> dict[str, Any]:
    """Table 4: are adversarial examples themselves flagged by the 95%-TPR threshold?

    Compares the 99th percentile of the logit margin at the adversarial examples (successful
    attacks only) with λ95, the logit-margin threshold reaching 95% TPR on the test set.
    """
    adv = np.asarray(adv_logit_margin, dtype=np.float64)
    a = np.asarray(d_in, dtype=np.float64)
    ok = np.isfinite(adv) & np.isfinite(a)
    det = detection_metrics(a, d_out, eps)
    lam = det["threshold_at_95"]
    if not ok.any():
        p99 = float("nan")
        flagged = float("nan")
    else:
        p99 = float(np.percentile(adv[ok], 99))
        flagged = float((adv[ok] <= lam).mean()) if np.isfinite(lam) else float("nan")
    return {
        "adv_logit_margin_p99": p99,
        "logit_margin_threshold_95": lam,
        "adv_flagged_share": flagged,
        "n_adv": int(ok.sum()),
    }


# --------------------------------------------------------------------------- summary


def _as_bool(values) -> np.ndarray:
    s = pd.Series(values)
    if s.dtype == bool:
        return s.to_numpy()
    if s.dtype == object:
        return s.astype(str).str.strip().str.lower().isin(["true", "1", "yes"]).to_numpy()
    return s.fillna(0).astype(float).to_numpy() != 0


def _col(samples: pd.DataFrame, name: str) -> np.ndarray | None:
    if name not in samples.columns:
        return None
    v = pd.to_numeric(samples[name], errors="coerce").to_numpy(dtype=np.float64)
    return None if np.isnan(v).all() else v


def score_metrics(d_in, score_margin, eps: float) -> dict[str, Any]:
    """Table 1 metrics of any margin-like score (logit, feature or pseudo-margin)."""
    det = detection_metrics(d_in, score_margin, eps)
    return {"kendall_tau": kendall_tau(d_in, score_margin), **det}


def summarize(
    samples: pd.DataFrame,
    eps: float,
    eps_list: Sequence[float] | None = None,
    *,
    n_subset: int = 500,
    n_repeats: int = 10,
    seed: int = 0,
    class_column: str = "label",
) -> dict[str, Any]:
    """The metric keys of summary.json from the per-sample table (see docs/interfaces.md).

    Values are fractions (never x100); undefined values are None. The main-ε detection metrics
    are reported whenever both classes exist; the ``per_eps`` sweep applies the paper's skip
    rule (non-robust share outside [0.001, 0.999]). Failed attacks (input_margin = +inf) count
    as robust and are counted in ``n_attack_failures``.
    """
    d_in, d_out, correct, failed = _summary_columns(samples)
    eps = float(eps)
    eps_list = list(eps_list) if eps_list is not None else [eps]
    out = _headline_metrics(d_in, d_out, correct, failed, eps)
    out.update(_cost_totals(samples))
    out.update(_feature_metrics(samples, d_in, d_out, eps))
    out["per_eps"] = eps_sweep(d_in, d_out, eps_list)
    if class_column in samples.columns:
        out["per_class_tau"] = {
            str(k): v for k, v in per_class_tau(d_in, d_out, samples[class_column]).items()
        }
    subset = {"n_subset": n_subset, "n_repeats": n_repeats, "seed": seed}
    out["robust_acc_from_subset"] = {
        "algorithm1": robust_accuracy_from_subset(d_in, d_out, correct, eps, **subset),
        "tpr95": robust_accuracy_from_subset(d_in, d_out, correct, eps, **subset, alpha=0.95),
    }
    adv = _col(samples, "adv_logit_margin")
    if adv is not None:
        out["adversarial_margin"] = adversarial_margin_check(adv, d_in, d_out, eps)
    pm = _col(samples, "pseudo_margin")
    if pm is not None:
        out["pseudo"] = score_metrics(d_in, pm, eps)
    return json_clean(out)


def _summary_columns(samples: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(input margin, logit margin, correct, attack failed) of the per-sample table."""
    if "input_margin" not in samples.columns or "logit_margin" not in samples.columns:
        raise ValueError("samples need at least the input_margin and logit_margin columns")
    d_in = pd.to_numeric(samples["input_margin"], errors="coerce").to_numpy(np.float64)
    d_out = pd.to_numeric(samples["logit_margin"], errors="coerce").to_numpy(np.float64)
    if "correct" in samples.columns:
        correct = _as_bool(samples["correct"])
    elif {"label", "pred"} <= set(samples.columns):
        correct = samples["label"].to_numpy() == samples["pred"].to_numpy()
    else:
        raise ValueError("samples need a correct column (or label and pred)")
    failed = ~_as_bool(samples["attack_success"]) if "attack_success" in samples.columns else ~np.isfinite(d_in)
    return d_in, d_out, correct, failed


def _headline_metrics(
    d_in: np.ndarray, d_out: np.ndarray, correct: np.ndarray, failed: np.ndarray, eps: float
) -> dict[str, Any]:
    n = int(d_in.size)
    det = detection_metrics(d_in, d_out, eps)
    return {
        "n_samples": n,
        "clean_accuracy": float(correct.mean()) if n else float("nan"),
        "robust_accuracy_attack": robust_accuracy_attack(correct, d_in, eps),
        "kendall_tau": kendall_tau(d_in, d_out),
        "kendall_tau_feature": float("nan"),  # filled in by _feature_metrics when available
        "spearman": spearman(d_in, d_out),
        "pearson": pearson(d_in, d_out),
        "auroc": det["auroc"],
        "aupr": det["aupr"],
        "average_precision": det["average_precision"],
        "fpr_at_95": det["fpr_at_95"],
        "logit_margin_threshold_95": det["threshold_at_95"],
        "nonrobust_share": det["nonrobust_share"],
        "n_nonrobust": det["n_nonrobust"],
        "detection_skipped": det["skipped"],
        "n_attack_failures": int(failed.sum()),
    }


def _cost_totals(samples: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, col in (
        ("attack_seconds_total", "attack_seconds"),
        ("n_forward_total", "n_forward"),
        ("n_backward_total", "n_backward"),
    ):
        v = _col(samples, col)
        total = float(np.nansum(v)) if v is not None else float("nan")
        out[key] = int(total) if key.startswith("n_") and not math.isnan(total) else total
    return out


def _feature_metrics(samples: pd.DataFrame, d_in: np.ndarray, d_out: np.ndarray, eps: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fm = _col(samples, "feature_margin")
    if fm is not None:
        out["kendall_tau_feature"] = kendall_tau(d_in, fm)
        out["feature"] = {"kendall_tau": out["kendall_tau_feature"], **detection_metrics(d_in, fm, eps)}
    fd = _col(samples, "feature_distance")
    if fd is not None:
        out["kendall_tau_feature_distance"] = kendall_tau(d_in, fd)
        out["kendall_tau_logit_vs_feature_distance"] = kendall_tau(fd, d_out)
    return out
