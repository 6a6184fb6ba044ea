"""Calibrated brittle-decision detector: a logit-margin threshold with a recall guarantee.

Pure math (numpy, scipy); no torch. The detector flags an input as brittle when its logit
margin d_out <= λ. Positives are the non-robust inputs (d_in <= eps), as in
:mod:`marginbench.metrics`.

The rule (order statistic + binomial tail, the conformal / tolerance-interval argument)
---------------------------------------------------------------------------------------
Let s_(1) <= ... <= s_(n1) be the logit margins of the n1 non-robust calibration samples and F
the (unknown) distribution function of the logit margin of a non-robust input. Take
λ = s_(r). The recall of the detector on new non-robust inputs is F(λ) = F(s_(r)). For
continuous F, U_i = F(s_i) are i.i.d. uniform, so F(s_(r)) = U_(r) and

    P(F(λ) >= t) = P(U_(r) >= t) = P(#{i: U_i < t} <= r - 1) = BinomCDF(r - 1; n1, t).

We take the *smallest* r with BinomCDF(r - 1; n1, t) >= 1 - δ: the smallest threshold (hence the
fewest false alarms) whose recall is >= t with probability >= 1 - δ over the calibration draw.
The statement is distribution-free (no assumption on F, on the model, or on the robust
inputs), exact for continuous scores, and conservative with ties (flagging d_out <= λ can only
gain recall). It needs r <= n1, i.e. 1 - t^n1 >= 1 - δ: n1 >= log δ / log t (59 samples for
t = 0.95, δ = 0.05); with fewer the rule refuses instead of returning a threshold without the
guarantee.

The guarantee is on the population recall F(λ). The recall realised on a finite test set of m
non-robust inputs scatters around F(λ); :func:`realised_recall_coverage` gives the exact
probability (beta-binomial) that the realised recall on m exchangeable test inputs is >= t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from marginbench.errors import MarginbenchError
from marginbench.metrics import nonrobust_labels


def min_calibration_positives(target_recall: float, delta: float) -> int:
    """Smallest n1 for which the rule exists: the largest score must suffice, 1 - t^n1 >= 1 - δ."""
    _check_levels(target_recall, delta)
    return int(math.ceil(math.log(delta) / math.log(target_recall) - 1e-12))


def _check_levels(target_recall: float, delta: float) -> None:
    if not 0.0 < target_recall < 1.0 or not 0.0 < delta < 1.0:
        raise MarginbenchError(
            f"target_recall ({target_recall}) and delta ({delta}) must both be in (0, 1)"
        )


def calibration_rank(n1: int, target_recall: float, delta: float, n_test: int | None = None) -> int:
    """1-based rank r (from the smallest) of the calibration score used as λ.

    The smallest r with BinomCDF(r - 1; n1, t) >= 1 - δ (see the module docstring). With
    ``n_test`` (the number of non-robust inputs in the batch the detector will be judged on) the
    smallest r whose beta-binomial probability of a realised batch recall >= t is >= 1 - δ
    instead. Raises a one-line MarginbenchError when even r = n1 does not reach the confidence.
    """
    _check_levels(target_recall, delta)
    n1 = int(n1)
    need = min_calibration_positives(target_recall, delta)
    if n1 < need:
        raise MarginbenchError(
            f"{n1} non-robust calibration samples are too few for recall {target_recall} with "
            f"confidence {1 - delta:g}: need at least {need}; calibrate on more samples or at a larger eps "
            "(cached margins are reused), lower target_recall or raise delta"
        )
    if n_test is None:
        conf = stats.binom.cdf(np.arange(n1), n1, target_recall)  # conf[r-1] = P(Bin <= r-1)
    else:
        conf = realised_recall_coverage(n1, np.arange(1, n1 + 1), n_test, target_recall)
    ok = conf >= 1.0 - delta - 1e-12  # tolerance: exact-boundary cases are not lost to round-off
    if not ok.any():
        raise MarginbenchError(
            f"{n1} non-robust calibration samples are too few for recall {target_recall} on a batch of "
            f"{n_test} non-robust inputs with confidence {1 - delta:g}; calibrate on more samples"
        )
    # both confidences increase with r, so the first r reaching 1 - δ is the smallest threshold
    return int(np.argmax(ok)) + 1


def recall_confidence(n1: int, rank: int, target_recall: float) -> float:
    """P(population recall of λ = s_(rank) >= target) = BinomCDF(rank - 1; n1, target)."""
    return float(stats.binom.cdf(int(rank) - 1, int(n1), target_recall))


def realised_recall_coverage(n1: int, rank, m: int, target_recall: float):
    """Exact P(realised recall on m exchangeable non-robust test inputs >= target).

    Given U_(r) = u the number of test inputs flagged is Binomial(m, u) and U_(r) ~ Beta(r,
    n1 - r + 1), so the count is beta-binomial (exact for exchangeable continuous scores).
    ``rank`` may be an array (one probability per rank).
    """
    k_min = int(math.ceil(target_recall * m - 1e-12))
    r = np.asarray(rank)
    p = stats.betabinom(int(m), r, int(n1) - r + 1).sf(k_min - 1)
    return float(p) if np.ndim(p) == 0 else p


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold: flag as brittle iff logit margin <= ``threshold``."""

    threshold: float
    rank: int
    n_nonrobust: int
    n_calibration: int
    target_recall: float
    delta: float
    confidence: float  # BinomCDF(rank - 1; n1, t): population-recall confidence
    n_test: int | None = None  # batch size the rank was chosen for (None: population rule)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def calibrate_threshold(
    d_in, d_out, eps: float, *, target_recall: float = 0.95, delta: float = 0.05,
    n_test: int | None = None,
) -> Calibration:
    """λ with P(recall >= target_recall) >= 1 - delta over the calibration draw.

    ``d_in``/``d_out``: input and logit margins of the calibration samples (an i.i.d. or
    exchangeable draw from the inputs the detector will see). Only the non-robust samples'
    logit margins set λ; the robust ones are not needed for the guarantee (they only matter for
    the false-alarm rate, which the rule does not control). ``n_test``: see
    :func:`calibration_rank` (guarantee on a batch's realised recall, not the population's).
    """
    a = np.asarray(d_in, dtype=np.float64).ravel()
    b = np.asarray(d_out, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise MarginbenchError(f"d_in ({a.size}) and d_out ({b.size}) differ in length")
    scores = np.sort(b[nonrobust_labels(a, eps) & ~np.isnan(b)])
    r = calibration_rank(scores.size, target_recall, delta, n_test)
    return Calibration(
        threshold=float(scores[r - 1]),
        rank=r,
        n_nonrobust=int(scores.size),
        n_calibration=int(a.size),
        target_recall=float(target_recall),
        delta=float(delta),
        confidence=recall_confidence(scores.size, r, target_recall),
        n_test=n_test,
    )


def flag(d_out, threshold: float) -> np.ndarray:
    """Brittle flag: logit margin <= threshold."""
    return np.asarray(d_out, dtype=np.float64) <= threshold


def recall_and_fpr(d_in, d_out, eps: float, threshold: float) -> tuple[float, float]:
    """(recall on non-robust, false-positive rate on robust) of the flag d_out <= threshold."""
    y = nonrobust_labels(d_in, eps)
    f = flag(d_out, threshold)
    recall = float(f[y].mean()) if y.any() else float("nan")
    fpr = float(f[~y].mean()) if (~y).any() else float("nan")
    return recall, fpr
