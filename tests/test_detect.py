"""Calibrated detector: the order-statistic rule keeps its recall promise (by simulation)."""

import math

import numpy as np
import pytest
from scipy import stats

from marginbench import detect
from marginbench.errors import MarginbenchError

T, D = 0.95, 0.05


def test_rank_known_answers():
    # the largest score is needed exactly when 1 - t^n1 >= 1 - δ first holds: n1 = 59
    assert detect.min_calibration_positives(T, D) == 59
    assert detect.calibration_rank(59, T, D) == 59
    with pytest.raises(MarginbenchError, match="too few"):
        detect.calibration_rank(58, T, D)
    r = detect.calibration_rank(300, T, D)
    assert stats.binom.cdf(r - 1, 300, T) >= 1 - D > stats.binom.cdf(r - 2, 300, T)


def _population_recall_share(rank_shift: int, n1=120, trials=4000, seed=0):
    # uniform non-robust scores: the population recall of λ is λ itself
    rng = np.random.default_rng(seed)
    r = detect.calibration_rank(n1, T, D) + rank_shift
    lam = np.sort(rng.random((trials, n1)), axis=1)[:, r - 1]
    return float((lam >= T).mean())


def test_population_coverage_holds_and_is_tight():
    # simulation agrees with BinomCDF(r - 1; n1, t) at the chosen rank and one below it, so the
    # direction of the rule is right, it keeps 1 - δ, and one rank lower would not
    n1, se = 120, 3 * math.sqrt(D * (1 - D) / 4000)
    r = detect.calibration_rank(n1, T, D)
    for shift in (0, -1):
        exact = detect.recall_confidence(n1, r + shift, T)
        assert abs(_population_recall_share(shift, n1) - exact) < se
    assert detect.recall_confidence(n1, r, T) >= 1 - D > detect.recall_confidence(n1, r - 1, T)
    assert _population_recall_share(0, n1) >= 1 - D


def test_calibrate_threshold_on_mixture_and_batch_rule():
    rng = np.random.default_rng(1)
    hits_pop, hits_batch, trials, m = [], [], 600, 200
    for _ in range(trials):
        # 40% non-robust (d_in = 0) with smaller logit margins, then a test batch of m
        y = rng.random(400) < 0.4
        d_out = np.where(y, rng.exponential(1.0, 400), rng.exponential(3.0, 400))
        d_in = np.where(y, 0.0, 1.0)
        cal = detect.calibrate_threshold(d_in, d_out, 0.5, target_recall=T, delta=D, n_test=m)
        test = rng.exponential(1.0, m)
        hits_batch.append((test <= cal.threshold).mean() >= T)
        hits_pop.append(stats.expon.cdf(cal.threshold) >= T)
    se = math.sqrt(D * (1 - D) / trials)
    assert np.mean(hits_batch) >= 1 - D - 3 * se
    assert np.mean(hits_pop) >= 1 - D - 3 * se


def test_batch_coverage_is_beta_binomial():
    rng = np.random.default_rng(2)
    n1, m, r = 80, 50, 70
    u = np.sort(rng.random((20000, n1)), axis=1)[:, r - 1]
    realised = rng.binomial(m, u) / m
    exact = detect.realised_recall_coverage(n1, r, m, 0.9)
    assert abs((realised >= 0.9).mean() - exact) < 0.01


def test_recall_and_fpr():
    rec, fpr = detect.recall_and_fpr([0, 0, 1, 1], [0.1, 0.5, 0.2, 2.0], 0.5, 0.3)
    assert (rec, fpr) == (0.5, 0.5)
