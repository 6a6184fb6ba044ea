"""Multi-start stage (margins/multistart.py) and the agreement column: closed-form and
exact-MILP oracles, never worse than the base, the adaptive rule, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from marginbench.config import AttackConfig, attack_preset
from marginbench.errors import MarginbenchError
from marginbench.margins import DEFAULT_ATTACK, build_estimator
from marginbench.margins.base import EXACT_TOL
from marginbench.margins.counting import CountingModel
from marginbench.margins.multistart import (
    MIN_GAIN,
    MultiStart,
    Polish,
    _candidate,
    _round,
    linear_distances,
    multistart,
    runner_up_scores,
    target_classes,
)
from marginbench.margins.verify import is_adversarial, lp_norm, verify
from marginbench.oracle import ORACLE_DIR, load_oracle
from marginbench.stages.margins import MarginParams
from marginbench.versions import MULTISTART_VERSION

K = 10
SHAPE = (3, 4, 4)
PRESET = "fab_polish_multistart_all"


def preset(name: str, **options) -> AttackConfig:
    cfg = attack_preset(name)
    return AttackConfig(**{**cfg, "options": {**(cfg["options"] or {}), **options}})


@pytest.fixture(scope="module")
def linear():
    """A linear classifier and the 10 of 40 inputs farthest from a tie (margins ~1e-5 would
    test float32 rounding, not the search); inputs far enough from 0 and 1 for the box not to bind."""
    torch.manual_seed(3)
    d = int(np.prod(SHAPE))
    lin = nn.Linear(d, K)
    with torch.no_grad():
        lin.weight.normal_()
        lin.bias.copy_(-0.5 * lin.weight.sum(1))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.4 + 0.2 * torch.rand(40, *SHAPE)
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1).values
    x = x[(top2[:, 0] - top2[:, 1]).argsort(descending=True)[:10]]
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, lin, x, y


def closed_form(lin: nn.Linear, model: nn.Module, x, y, norm: str) -> tuple[np.ndarray, torch.Tensor]:
    """Per sample min_j (f_y - f_j) / ||w_y - w_j||_q (q = 1 for Linf, 2 for L2) and the
    perturbation that reaches it."""
    W = lin.weight.detach().double()
    with torch.no_grad():
        f = model(x).double()
    margins, deltas = [], []
    for i in range(len(x)):
        yi = int(y[i])
        best = None
        for j in range(K):
            if j != yi:
                w = W[j] - W[yi]
                m = float((f[i, yi] - f[i, j]) / torch.linalg.vector_norm(w, ord=1 if norm == "Linf" else 2))
                if best is None or m < best[0]:
                    best = (m, (w.sign() if norm == "Linf" else w / w.norm()) * m)
        margins.append(best[0])
        deltas.append(best[1].reshape(SHAPE).float())
    return np.array(margins), torch.stack(deltas)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_linear_model_reaches_the_closed_form_from_a_loose_start(linear, norm):
    model, lin, x, y = linear
    exact, delta = closed_form(lin, model, x, y, norm)
    loose = x + 1.6 * delta  # adversarial (the gap is linear along the ray), 60 % too large
    # every runner-up class: the loose start's own (closest) class is searched last
    out, agreement = multistart(model, x, loose, y, norm, MultiStart(targets=K - 1), Polish())
    margin, ok, _ = verify(model, x, out, y, norm)
    assert ok.all()
    ratio = margin / exact
    assert (ratio >= 1 - 1e-4).all(), ratio  # never below the truth
    assert (ratio <= 1.01).all(), ratio
    # the loose start is 60 % off, so it agrees with nothing; the search towards the
    # closest class lands on the margin (others may land within 1 % of it too)
    assert (agreement >= 1).all() and (agreement <= K - 1).all()


def _targeted_distance(lin: nn.Linear, x, y, cls: torch.Tensor, norm: str = "Linf") -> torch.Tensor:
    """Closed form of the distance from x[i] to the boundary between y[i] and cls[i] on the
    linear model: (f_y - f_c) / ||w_y - w_c||_dual (L1 for L-inf, L2 for L2)."""
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    f = x.flatten(1).double() @ W.T + b  # the logits in float64, not the model's float32
    u = torch.arange(len(x))
    return (f[u, y] - f[u, cls]) / (W[cls] - W[y]).norm(p=1 if norm == "Linf" else 2, dim=1)


# The fixture's 10 rows fall into radius groups of 1, 8 and 1 rows. stack_rows 0: one target
# per call; 5: the 8-row group is larger than a call may be (one target per call), the single
# rows get their 9 targets in calls of 5 and 4; 20: the 8-row group in chunks of 2, 2, 2, 2
# and 1 targets; 256: every group's 9 targets in one call.
@pytest.mark.parametrize("stack_rows", [0, 5, 20, 256])
def test_stacked_searches_keep_each_row_and_target_apart(linear, stack_rows):
    """Each candidate of a (stacked) round is the targeted search of its own row towards its
    own target: unpolished, targeted FAB on a linear model lands within a few % above the
    closed-form distance to *that* class's boundary (the classes' distances of one row differ
    up to 1.9x), so a candidate handed to the wrong row or target falls outside [1, 1.1]. The
    best point of every row is then its own smallest candidate (or the start), and flips it."""
    model, lin, x, y = linear
    _, delta = closed_form(lin, model, x, y, "Linf")
    start = x + 1.6 * delta
    r0 = lp_norm(start - x, "Linf").double()
    scores = runner_up_scores(model, x, y, "logit", "Linf")
    targets = target_classes(model, scores, start, K - 1)
    budget = MultiStart(targets=K - 1, steps=20, stack_rows=stack_rows)
    best, r = start.clone(), r0.clone()
    norms = _round(model, x, y, best, r, "Linf", budget, scores, Polish(rounds=0, refine_steps=0))
    want = torch.stack([_targeted_distance(lin, x, y, targets[:, t]) for t in range(K - 1)])
    ratio = norms / want
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.1).all(), ratio
    expected = r0.clone()  # the old one-target-per-call rule: replace when smaller by MIN_GAIN
    for t in range(K - 1):
        expected = torch.where(norms[t] * MIN_GAIN < expected, norms[t], expected)
    assert torch.equal(r, expected)
    assert torch.allclose(lp_norm(best - x, "Linf").double(), r, rtol=1e-6)
    assert is_adversarial(model, best, y).all()


def test_rows_fab_does_not_attack_come_back_unattacked_and_the_others_keep_their_targets(linear):
    """FAB attacks only the rows whose clean prediction equals y (a near-tie at x can flip
    when recomputed in another batch composition) and hands its step that subset; the row
    targets must follow it (before: a shape error that ended the run)."""
    model, lin, x, y = linear
    torch.manual_seed(0)  # FAB's random starts: this test's own, whatever ran before it
    skipped = 4  # a middle row: the targets after it must shift by one, those before it not
    labels = y.clone()
    labels[skipped] = (y[skipped] + 1) % K  # FAB sees it as misclassified and skips it
    others = model(x).detach().scatter(1, y.unsqueeze(1), -math.inf)
    aims = others.argsort(1, descending=True)[:, 1]  # each row's 2nd runner-up: a real target
    want = _targeted_distance(lin, x, y, aims)
    eps = float(2.0 ** math.ceil(math.log2(2 * float(want.max()))))  # as multistart's radius groups
    point = _candidate(model, x, labels, "Linf", eps, aims, 20, K, Polish(rounds=0, refine_steps=0))
    assert torch.equal(point[skipped], x[skipped])
    rest = torch.arange(len(x)) != skipped
    ratio = lp_norm(point[rest] - x[rest], "Linf").double() / want[rest]
    assert is_adversarial(model, point[rest], y[rest]).all()
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.15).all(), ratio


def test_non_adversarial_rows_are_left_alone_and_not_charged(linear):
    model, lin, x, y = linear
    _, delta = closed_form(lin, model, x, y, "Linf")
    start = x + 1.6 * delta
    start[:3] = x[:3]
    counting = CountingModel(model, len(x))
    out, agreement = multistart(counting, x, start, y, "Linf", MultiStart(targets=2), Polish(rounds=2))
    assert torch.equal(out[:3], x[:3])
    assert (agreement[:3] == 0).all()
    bwd = counting.backward_counts.numpy()
    assert (bwd[:3] == 0).all() and (bwd[3:] > 0).all()


def test_adaptive_rule_spends_more_rounds_only_where_searches_disagree(linear):
    """Every runner-up class, up to 3 rounds, from a loose start that agrees with nothing.
    Each round's search towards the closest class lands on the margin, so with agree = 2 a
    sample stops after round one if two searches already agree there, else after round two;
    with agree = 0 all three rounds run."""
    model, lin, x, y = linear
    _, delta = closed_form(lin, model, x, y, "Linf")
    start = x + 1.6 * delta
    costs, agreements = {}, {}
    for rounds, agree in ((1, 0), (3, 2), (3, 0)):
        counting = CountingModel(model, len(x))
        _, agreements[rounds, agree] = multistart(counting, x, start, y, "Linf",
                                                  MultiStart(targets=K - 1, rounds=rounds, agree=agree), Polish())
        costs[rounds, agree] = counting.backward_counts.numpy()
    settled = agreements[1, 0] >= 2  # two searches agreed in round one: no second round
    assert (~settled).any()
    assert (costs[3, 2][settled] == costs[1, 0][settled]).all()
    assert (costs[3, 2][~settled] > costs[1, 0][~settled]).all()
    assert (costs[3, 0] > costs[3, 2]).all()  # nobody needed round three
    assert (agreements[3, 2] >= 2).all() and (agreements[3, 0] >= agreements[3, 2]).all()


def test_agreement_defaults_single_estimators_and_ensembles(linear):
    model, _, x, y = linear
    single = build_estimator(preset("fab_polish"), "Linf")(model, x, y)
    assert (single.agreement == 1).all()
    twins = AttackConfig(name="ensemble", members=["fmn", "fmn@again"], steps=100, restarts=1, refine=False,
                         options={})
    both = build_estimator(twins, "Linf")(model, x, y)
    assert (both.agreement == 2).all()  # the same attack twice: identical margins


def test_preset_is_never_worse_than_its_base_and_records_agreement(linear):
    model, _, x, y = linear
    base = build_estimator(preset("fab_polish"), "Linf")(model, x, y)
    more = build_estimator(preset(PRESET), "Linf")(model, x, y)
    assert (more.margin <= base.margin + 1e-7).all()
    assert (more.agreement >= 1).all() and (more.agreement <= 1 + 9 * 4).all()
    assert (more.n_backward > base.n_backward).all()


def _oracle_check(net: str, rows: slice, min_gain: float) -> None:
    oracle = load_oracle(ORACLE_DIR / net)
    x, table = oracle.images[rows], oracle.table.iloc[rows]
    pred = torch.tensor(table["pred"].to_numpy())
    exact, lower = table["margin"].to_numpy(), table["lower_bound"].to_numpy()
    base = build_estimator(preset("fab_polish"), "Linf")(oracle.model, x, pred)
    more = build_estimator(preset(PRESET), "Linf")(oracle.model, x, pred)
    assert more.success.all()
    assert (more.margin <= base.margin + 1e-7).all()
    assert (more.margin >= lower - EXACT_TOL).all()  # an upper bound: never below the truth
    within = lambda m: float(np.mean(m <= exact * 1.01))  # noqa: E731
    assert within(more.margin) >= within(base.margin) + min_gain, (within(more.margin), within(base.margin))


@pytest.mark.parametrize("net", ["mlp_std", "cnn_pgd"])
def test_oracle_multistart_is_tighter_few(net):
    _oracle_check(net, slice(0, 40), min_gain=0.05)  # 40 samples: 2 of them


@pytest.mark.slow
@pytest.mark.parametrize("net", ["mlp_std", "cnn_pgd"])
def test_oracle_multistart_is_tighter_all(net):
    _oracle_check(net, slice(None), min_gain=0.1)


@pytest.mark.parametrize(("options", "message"), [
    ({"multistart_targets": 0}, "multistart_targets must be an integer >= 1; got 0$"),
    ({"multistart_steps": 0}, "multistart_steps must be an integer >= 1; got 0$"),
    ({"multistart_agree": -1}, "multistart_agree must be an integer >= 0; got -1$"),
    ({"multistart_stack_rows": -1}, "multistart_stack_rows must be an integer >= 0; got -1$"),
    ({"multistart_order": "random"}, "multistart_order must be one of logit, linear; got 'random'$"),
    # checked although this preset runs no multi-start round: a typo is not ignored
    ({"multistart_rounds": 0, "multistart_targets": -2}, "multistart_targets must be an integer >= 1; got -2$"),
])
def test_bad_multistart_options_are_one_line_errors(options, message):
    # at build time (settings.validate builds the estimator before any model is loaded)
    with pytest.raises(MarginbenchError, match=message):
        build_estimator(preset(PRESET, **options), "Linf")


def test_targets_are_runner_ups_by_logit_with_the_landed_class_last(linear):
    model, lin, x, y = linear
    _, delta = closed_form(lin, model, x, y, "Linf")
    best = x + 1.6 * delta  # lands in each row's closest class
    with torch.no_grad():
        logits, landed = model(x), model(best).argmax(1)
    scores = runner_up_scores(model, x, y, "logit", "Linf")
    targets = target_classes(model, scores, best, K - 1)
    for i in range(len(x)):
        others = [int(j) for j in logits[i].argsort(descending=True) if j not in (y[i], landed[i])]
        assert targets[i].tolist() == others + [int(landed[i])]
    assert torch.equal(target_classes(model, scores, best, 2), targets[:, :2])


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_linear_order_is_the_exact_distance_on_a_linear_model(linear, norm):
    """On a linear model the first-order distance to class j's boundary is exact:
    (f_y - f_j) / ||w_y - w_j||_dual, the closed form of the pairwise boundary."""
    model, lin, x, y = linear
    dist = linear_distances(model, x, y, norm)
    for j in range(K):
        expected = _targeted_distance(lin, x, y, torch.full_like(y, j), norm)
        for i in range(len(x)):
            if j == int(y[i]):
                assert math.isinf(dist[i, j])
                continue
            assert float(dist[i, j]) == pytest.approx(float(expected[i]), rel=1e-4)
    # best = x lands in y itself: no runner-up is pushed last, the order is the distances'
    order = target_classes(model, runner_up_scores(model, x, y, "linear", norm), x.clone(), K - 1)
    assert torch.equal(order, dist.argsort(1)[:, : K - 1])
    # a best point that lands in the nearest class puts that class last
    _, delta = closed_form(lin, model, x, y, norm)
    landed_best = x + 1.6 * delta
    with torch.no_grad():
        landed = model(landed_best).argmax(1)
    order = target_classes(model, runner_up_scores(model, x, y, "linear", norm), landed_best, K - 1)
    assert torch.equal(order[:, -1], landed)


def test_only_multistart_estimators_carry_the_multistart_version_in_their_margins_key():
    def key(name: str) -> dict:
        return MarginParams(attack=dict(attack_preset(name)), norm="Linf", seed=0).key_params()

    assert key(DEFAULT_ATTACK)["multistart_version"] == MULTISTART_VERSION
    assert "multistart_version" not in key("fab_polish_escalate")  # the demo's margins keep their key
    assert "multistart_version" not in key("fab")


@pytest.mark.slow
def test_truth_preset_is_within_one_percent_of_exact_on_the_oracle():
    """Issue 12's target on the oracle networks (240 samples, both nets pooled): the
    closest-to-the-truth preset is within 1 % of the exact MILP margin on >= 95 % of the
    samples, with a mean overshoot <= 0.5 %, and never below the certified lower bound."""
    within, overshoot = [], []
    for net in ("mlp_std", "cnn_pgd"):
        oracle = load_oracle(ORACLE_DIR / net)
        table = oracle.table
        pred = torch.tensor(table["pred"].to_numpy())
        exact, lower = table["margin"].to_numpy(), table["lower_bound"].to_numpy()
        result = build_estimator(preset("fmn_polish_multistart_all"), "Linf")(oracle.model, oracle.images, pred)
        assert result.success.all()
        assert (result.margin >= lower - EXACT_TOL).all()
        known = table["status"].to_numpy() == "exact"
        within.append(result.margin[known] <= exact[known] * 1.01)
        overshoot.append(result.margin[known] / exact[known] - 1)
    assert np.concatenate(within).mean() >= 0.95, [w.mean() for w in within]
    assert np.concatenate(overshoot).mean() <= 0.005


ATTACK_PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "attack").glob("*.yaml"))


L2_ONLY = {"alma", "ddn"}  # adv-lib attacks that minimise the L2 norm only


@pytest.mark.parametrize("name", ATTACK_PRESETS)
def test_every_attack_preset_finds_the_linear_closed_form(linear, name):
    """Every configs/attack preset, as shipped, on the linear model whose minimal perturbation
    is known in closed form: every sample broken and never below the closed form. Presets
    that refine their points (polish, projection, bisection) end within 1 % of it; the raw
    attacks may overshoot even here (FMN +21 %, APGD with an eps search +11 %, Square +84 %
    on one of these 10 samples), so they are only held to 2x. ``exact`` equals it to 1e-6."""
    model, lin, x, y = linear
    norm = "L2" if name in L2_ONLY else "Linf"
    exact, _ = closed_form(lin, model, x, y, norm)
    cfg = preset(name)
    result = build_estimator(cfg, norm)(model, x, y)
    assert result.success.all(), name
    if name == "exact":
        assert np.abs(result.margin - exact).max() <= 1e-6, result.margin - exact
        return
    ratio = result.margin / exact
    upper = 1.01 if cfg.refine else 2.0
    assert (ratio >= 1 - 1e-5).all() and (ratio <= upper).all(), (name, ratio)


def test_linear_order_pool_ranks_only_the_strongest_runner_ups_at_pool_gradients(linear):
    """``pool``: only the strongest runner-up classes by logit get a distance, at one backward
    pass each (not K - 1); the distances they get are the full ranking's."""
    model, _, x, y = linear
    full = linear_distances(model, x, y, "Linf")
    counting = CountingModel(model, len(x))
    pooled = linear_distances(counting, x, y, "Linf", pool=3)
    assert (counting.backward_counts == 3).all(), counting.backward_counts
    with torch.no_grad():
        top3 = model(x).scatter(1, y.unsqueeze(1), -math.inf).topk(3, dim=1).indices
    ranked = torch.zeros_like(full, dtype=torch.bool).scatter_(1, top3, True)
    assert torch.equal(pooled[ranked], full[ranked])
    assert torch.isinf(pooled[~ranked]).all()


def test_many_classes_targets_come_from_the_pool_never_the_prediction():
    """K = 30 > pool + 1: the linear order ranks the 20 strongest runner-ups (20 gradients
    per row), the other 9 come after them in logit order, the class the best point lands in
    last, and the predicted class is never a target, even when all 29 are asked for."""
    torch.manual_seed(5)
    n_classes, d = 30, int(np.prod(SHAPE))
    lin = nn.Linear(d, n_classes)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(6, *SHAPE)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    counting = CountingModel(model, len(x))
    scores = runner_up_scores(counting, x, y, "linear", "Linf", pool=20)
    assert (counting.backward_counts == 20).all(), counting.backward_counts
    assert (counting.forward_counts == 1).all(), counting.forward_counts  # the ranking's logits order the rest
    best = x.clone()  # lands in y: no runner-up is pushed last
    targets = target_classes(model, scores, best, n_classes - 1)
    pool = logits.scatter(1, y.unsqueeze(1), -math.inf).topk(20, dim=1).indices
    dist = linear_distances(model, x, y, "Linf", pool=20)
    for i in range(len(x)):
        row = targets[i].tolist()
        assert int(y[i]) not in row and sorted(row) == sorted(set(range(n_classes)) - {int(y[i])})
        assert set(row[:20]) == set(pool[i].tolist())
        assert row[:20] == dist[i].argsort()[:20].tolist()  # the pool by distance
        rest = [j for j in logits[i].argsort(descending=True).tolist() if j not in row[:20] and j != int(y[i])]
        assert row[20:] == rest  # the others by logit
    # a best point landing outside the pool still goes last
    outside = targets[:, 25]
    lands = nn.Sequential(model, _Relabel(outside, n_classes)).eval()
    last = target_classes(lands, scores, best, n_classes - 1)
    assert torch.equal(last[:, -1], outside)
    assert not (last == y.unsqueeze(1)).any()


class _Relabel(nn.Module):
    """A head that makes every input land in ``cls`` (per row), to place the landed class."""

    def __init__(self, cls: torch.Tensor, n_classes: int):
        super().__init__()
        self.onehot = nn.functional.one_hot(cls, n_classes).float() * 1e3

    def forward(self, logits):
        return logits + self.onehot[: len(logits)]
