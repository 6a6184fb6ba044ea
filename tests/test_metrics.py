"""Known-answer tests of marginbench.metrics (hand computations and scipy/sklearn)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from marginbench import metrics as M

# --------------------------------------------------------------------------- margins


def test_logit_margin_hand_values_and_ties():
    z = np.array([[1.0, 5.0, 2.0], [3.0, 3.0, -1.0], [-2.0, -7.0, -1.5]])
    np.testing.assert_allclose(M.logit_margin(z), [3.0, 0.0, 0.5])


def test_feature_margin_equidistant_head_is_logit_margin_over_c():
    rng = np.random.default_rng(0)
    k, c = 10, 0.7
    w = c * np.eye(k)  # ||w_i - w_j||_1 = 2c, ||w_i - w_j||_2 = sqrt(2) c for every pair
    z = rng.normal(size=(50, k))
    np.testing.assert_allclose(M.feature_margin(z, w, "Linf"), M.logit_margin(z) / (2 * c))
    np.testing.assert_allclose(M.feature_margin(z, w, "L2"), M.logit_margin(z) / (math.sqrt(2) * c))
    assert M.equidistance_stats(w, "Linf")["cv"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("norm,q", [("Linf", 1), ("L2", 2)])
def test_feature_margin_matches_brute_force(norm, q):
    rng = np.random.default_rng(1)
    k, d, n = 7, 12, 40
    w = rng.normal(size=(k, d))
    b = rng.normal(size=k)
    h = rng.normal(size=(n, d))
    z = h @ w.T + b
    got = M.feature_margin(z, w, norm)
    for i in range(n):
        yhat = int(np.argmax(z[i]))
        best = min((z[i, yhat] - z[i, j]) / np.linalg.norm(w[yhat] - w[j], ord=q)
                   for j in range(k) if j != yhat)
        assert got[i] == pytest.approx(best, rel=1e-12)


def test_feature_margin_l2_is_a_true_feature_space_distance():
    # moving h by the margin along the normal of the closest boundary reaches a tie
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 8))
    h = rng.normal(size=8)
    z = w @ h
    fm = M.feature_margin(z[None], w, "L2")[0]
    yhat = int(np.argmax(z))
    j = min((j for j in range(5) if j != yhat),
            key=lambda j: (z[yhat] - z[j]) / np.linalg.norm(w[yhat] - w[j]))
    u = (w[yhat] - w[j]) / np.linalg.norm(w[yhat] - w[j])
    z2 = w @ (h - fm * u)
    assert z2[yhat] == pytest.approx(z2[j], abs=1e-9)


# --------------------------------------------------------------------------- correlations


def test_kendall_tau_extremes_and_ties_by_hand():
    a = np.arange(10.0)
    assert M.kendall_tau(a, 2 * a + 1) == pytest.approx(1.0)
    assert M.kendall_tau(a, -a) == pytest.approx(-1.0)
    # one tie in d_in: nc = 5, nd = 0, tau_b = 5 / sqrt(6 * 5)
    d_in, d_out = [1, 2, 2, 3], [1, 3, 2, 4]
    assert M.kendall_tau(d_in, d_out) == pytest.approx(5 / math.sqrt(30))
    assert M.kendall_tau(d_in, d_out) == pytest.approx(stats.kendalltau(d_out, d_in).statistic)


def test_infinite_input_margins_rank_largest():
    d_in = np.array([0.1, np.inf, 0.2, 0.3])
    assert M.kendall_tau(d_in, [1, 9, 2, 3]) == pytest.approx(1.0)
    assert M.kendall_tau(d_in, [1, 0, 2, 3]) == pytest.approx(0.0)
    assert M.spearman(d_in, [1, 9, 2, 3]) == pytest.approx(1.0)
    # pearson over finite pairs only
    assert M.pearson(d_in, [1, -5, 2, 3]) == pytest.approx(1.0)


def test_spearman_pearson_match_scipy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=100), rng.normal(size=100)
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(y, x).statistic)
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(y, x).statistic)
    assert math.isnan(M.kendall_tau([1.0], [2.0]))


# --------------------------------------------------------------------------- detection


def test_aupr_trapezoid_differs_from_average_precision_hand_example():
    # score -d_out ranks samples 0,1,2,3; positives (d_in <= eps) are samples 0 and 3.
    # PR points (R, P): (.5, 1), (.5, 1/2), (.5, 1/3), (1, 1/2), plus (0, 1).
    # AP = .5 * 1 + .5 * .5 = 0.75 ; trapezoid = .5 * 1 + .5 * (1/3 + 1/2) / 2 = 17/24
    d_in = np.array([0.1, 1.0, 1.0, 0.2])
    d_out = np.array([1.0, 2.0, 3.0, 4.0])
    m = M.detection_metrics(d_in, d_out, eps=0.5)
    assert m["aupr"] == pytest.approx(17 / 24)
    assert m["average_precision"] == pytest.approx(0.75)
    assert m["average_precision"] == pytest.approx(average_precision_score([1, 0, 0, 1], -d_out))
    assert m["auroc"] == pytest.approx(0.5)
    assert m["nonrobust_share"] == 0.5 and not m["skipped"]


def test_fpr_at_95_hand_example_authors_semantics():
    # 20 non-robust (positive) samples with logit margins 1..19 and 30; 6 robust ones at
    # 0.5, 19.5, 20.5, 25, 40, 50. TPR first reaches 19/20 = 0.95 at d_out = 19 (1 FP) and
    # stays 0.95 down to the threshold 25 (4 FP). The authors' det_curve rule takes the
    # smallest score threshold with that TPR: FPR = 4/6, lambda = 25.
    pos = list(range(1, 20)) + [30]
    neg = [0.5, 19.5, 20.5, 25, 40, 50]
    d_out = np.array(pos + neg, dtype=float)
    d_in = np.array([0.01] * 20 + [1.0] * 6)
    m = M.detection_metrics(d_in, d_out, eps=0.5)
    assert m["fpr_at_95"] == pytest.approx(4 / 6)
    assert m["threshold_at_95"] == pytest.approx(25.0)
    y = d_in <= 0.5
    assert m["auroc"] == pytest.approx(roc_auc_score(y, -d_out))


def test_fpr_at_95_perfect_and_undefined():
    d_in = np.r_[np.full(40, 0.01), np.full(60, 1.0)]
    d_out = np.r_[np.linspace(0, 1, 40), np.linspace(2, 3, 60)]
    m = M.detection_metrics(d_in, d_out, 0.5)
    assert m["fpr_at_95"] == 0.0 and m["auroc"] == 1.0 and m["aupr"] == pytest.approx(1.0)
    u = M.detection_metrics(np.full(5, 1.0), np.arange(5.0), 0.5)
    assert u["skipped"] and math.isnan(u["auroc"]) and u["nonrobust_share"] == 0.0


def test_eps_sweep_skip_rule():
    rng = np.random.default_rng(4)
    d_in = rng.uniform(0.01, 1, 2000)
    d_in[0] = 0.001  # a single non-robust sample at eps=0.005: share 0.0005 < 0.001
    d_out = d_in + rng.normal(0, 0.05, 2000)
    sweep = M.eps_sweep(d_in, d_out, [0.005, 0.5, 2.0])
    assert sweep["0.005"]["skipped"] and math.isnan(sweep["0.005"]["auroc"])
    assert not sweep["0.5"]["skipped"] and sweep["0.5"]["auroc"] > 0.9
    assert sweep["2"]["skipped"]  # everything non-robust
    assert M.eps_key(8 / 255) == "8/255" and M.eps_key(0.5) == "0.5" and M.eps_key(0.2) == "0.2"


def test_per_class_tau():
    d_in = np.array([1, 2, 3, 1, 2, 3.0])
    d_out = np.array([1, 2, 3, 3, 2, 1.0])
    r = M.per_class_tau(d_in, d_out, [0, 0, 0, 1, 1, 1])
    assert r[0]["tau"] == pytest.approx(1.0) and r[1]["tau"] == pytest.approx(-1.0)


# --------------------------------------------------------------------------- robust accuracy


def _consistent_data(n=10000, seed=5):
    rng = np.random.default_rng(seed)
    d_in = rng.gamma(2.0, 0.025, n)  # ~ 30% below 8/255
    d_out = 3.0 * d_in  # perfectly margin-consistent
    correct = rng.random(n) < 0.85
    return d_in, d_out, correct


def test_algorithm1_recovers_true_robust_accuracy_when_consistent():
    d_in, d_out, correct = _consistent_data()
    eps = 8 / 255
    truth = M.robust_accuracy_attack(correct, d_in, eps)
    r = M.robust_accuracy_from_subset(d_in, d_out, correct, eps, seed=0)
    assert r["attack_based"] == truth
    assert abs(r["estimate"] - truth) < 0.005
    assert len(r["estimates"]) == 10 and r["n_subset"] == 500
    assert set(r["alphas"]) <= set(M.ALG1_ALPHAS)
    # the fixed 95% TPR threshold misses ~5% of the non-robust points: over-estimates
    f = M.robust_accuracy_from_subset(d_in, d_out, correct, eps, alpha=0.95, seed=0)
    assert f["estimate"] > truth and f["alphas"] == [0.95] * 10
    # deterministic given the seed
    assert M.robust_accuracy_from_subset(d_in, d_out, correct, eps, seed=0) == r


def test_robust_accuracy_attack_counts_failures_as_robust():
    correct = np.array([True, True, False, True])
    d_in = np.array([0.01, np.inf, 1.0, 1.0])
    assert M.robust_accuracy_attack(correct, d_in, 0.03) == 0.5


def test_adversarial_margin_check():
    d_in, d_out, _ = _consistent_data(2000)
    adv = np.linspace(0, 0.01, 2000)
    r = M.adversarial_margin_check(adv, d_in, d_out, 8 / 255)
    assert r["adv_logit_margin_p99"] == pytest.approx(np.percentile(adv, 99))
    assert r["logit_margin_threshold_95"] > r["adv_logit_margin_p99"]
    assert r["adv_flagged_share"] == 1.0


# --------------------------------------------------------------------------- summarize


def test_summarize_keys_and_json():
    d_in, d_out, correct = _consistent_data(800)
    d_in[:3] = np.inf
    d_out[:3] = 100.0
    n = len(d_in)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "index": np.arange(n), "label": rng.integers(0, 10, n), "pred": 0,
        "correct": correct, "input_margin": d_in, "attack_success": np.isfinite(d_in),
        "found_by": "fab", "logit_margin": d_out, "feature_margin": d_out / 2,
        "feature_distance": d_in * 4, "n_forward": 10, "n_backward": 5,
        "attack_seconds": 0.01, "adv_logit_margin": 0.001,
    })
    s = M.summarize(df, 8 / 255, [1e-6, 8 / 255, 1.0])
    for key in ("clean_accuracy", "robust_accuracy_attack", "kendall_tau", "kendall_tau_feature",
                "spearman", "pearson", "auroc", "aupr", "average_precision", "fpr_at_95",
                "nonrobust_share", "n_attack_failures", "attack_seconds_total",
                "n_forward_total", "n_backward_total", "per_eps", "per_class_tau",
                "robust_acc_from_subset", "adversarial_margin"):
        assert key in s, key
    assert s["n_attack_failures"] == 3 and s["n_forward_total"] == 10 * n
    assert s["kendall_tau"] == pytest.approx(1.0) and s["auroc"] == pytest.approx(1.0)
    assert s["per_eps"]["8/255"]["eps"] == pytest.approx(8 / 255)
    assert s["per_eps"]["1e-06"]["skipped"] and s["per_eps"]["1e-06"]["auroc"] is None
    # failed attacks (+inf) stay robust at every eps
    assert s["per_eps"]["1"]["nonrobust_share"] == pytest.approx((n - 3) / n)
    assert 0 <= s["clean_accuracy"] <= 1
    json.loads(json.dumps(s, allow_nan=False))  # strict JSON
