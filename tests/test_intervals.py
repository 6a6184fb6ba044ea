"""Robust-accuracy intervals: known answers and coverage on a synthetic finite population."""

import math

import numpy as np
import pytest

from marginbench import intervals

# fixed data and the interval ppi-python 0.2.3 gives for it:
# ppi_py.ppi_mean_ci(Y, Yhat, Yhat_unlabeled, alpha=0.1, lam=1) -> (0.36802963, 0.83197037)
# (computed once from the wheel's source; the package needs numba and statsmodels, which
# marginbench does not otherwise depend on, so the test keeps the numbers, not the package)
Y = [0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1]
YHAT = [0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1]
YU = [1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 0,
      0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1]


def test_ppi_matches_ppi_python():
    r = intervals.ppi_mean_interval(Y, YHAT, YU, level=0.9)
    assert r["low"] == pytest.approx(0.36802963, abs=1e-8)
    assert r["high"] == pytest.approx(0.83197037, abs=1e-8)


def test_perfect_predictor_is_classical_on_all_samples():
    rng = np.random.default_rng(0)
    y_all = rng.random(300) < 0.7
    idx = rng.choice(300, 50, replace=False)
    ppi = intervals.ppi_mean_interval(y_all[idx], y_all[idx], y_all)
    wald = intervals.wald_interval(y_all)
    assert (ppi["low"], ppi["high"]) == pytest.approx((wald["low"], wald["high"]))
    fp = intervals.ppi_mean_interval(y_all[idx], y_all[idx], y_all, finite_population=True)
    assert fp["width"] == 0 and fp["estimate"] == pytest.approx(y_all.mean())


def test_finite_population_formula_tiny():
    # rectifier y - f on the labelled = [0, 0, 1, 0]: mean 1/4, S² = 1/4; mean_N f = 1/2;
    # fpc = 1 - 4/8; the upper end is clipped at 1, the lower one is not
    r = intervals.ppi_mean_interval([1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0, 1, 0, 1, 0],
                                    finite_population=True)
    half = 1.959963984540054 * math.sqrt(0.5 * 0.25 / 4)
    assert r["estimate"] == 0.75 and r["low"] == pytest.approx(0.75 - half) and r["high"] == 1


def test_clopper_pearson_known_answer():
    r = intervals.clopper_pearson_interval(np.zeros(10, bool))
    assert r["low"] == 0 and r["high"] == pytest.approx(1 - 0.025 ** 0.1)


def test_coverage_on_synthetic_finite_population():
    # a fixed population of 1000 with a noisy score; truth = its own robust accuracy
    rng = np.random.default_rng(3)
    d_in = rng.exponential(0.2, 1000)
    d_out = d_in * 10 * np.exp(rng.normal(0, 0.4, 1000))
    correct = rng.random(1000) < 0.85
    truth = float((correct & (d_in > 0.1)).mean())
    hits = {"ppi": 0, "ppi_finite_population": 0, "clopper_pearson": 0}
    for seed in range(150):
        out = intervals.robust_accuracy_intervals(d_in, d_out, correct, 0.1, n_attacked=100, seed=seed,
                                                  algorithm1=False)
        for m in out["methods"]:
            if m["method"] in hits:
                hits[m["method"]] += m["low"] <= truth <= m["high"]
    assert all(h / 150 >= 0.95 - 0.05 for h in hits.values()), hits


def test_summary_entry_shape():
    rng = np.random.default_rng(4)
    d_in = rng.exponential(0.2, 200)
    out = intervals.robust_accuracy_intervals(d_in, d_in * 5, np.ones(200, bool), 0.1,
                                              attack_seconds=np.ones(200))
    assert out["n_attacked"] == 100 and out["attack_seconds_saved"] == 100
    assert [m["method"] for m in out["methods"]][:2] == ["ppi", "ppi_finite_population"]
