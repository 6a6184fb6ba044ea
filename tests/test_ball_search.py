"""Ball search (margins/ball_search.py): closed-form and exact-MILP oracles, never worse, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from marginbench.config import AttackConfig, attack_preset
from marginbench.errors import MarginbenchError
from marginbench.margins import build_estimator
from marginbench.margins.ball_search import BallSearch, ball_search, runner_up_classes
from marginbench.margins.base import EXACT_TOL
from marginbench.margins.counting import CountingModel
from marginbench.margins.verify import verify
from marginbench.oracle import ORACLE_DIR, load_oracle

K = 10
SHAPE = (3, 4, 4)


@pytest.fixture(scope="module")
def linear():
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
    # the 10 samples farthest from a tie: margins ~1e-5 would test float32 rounding, not the search
    x = x[(top2[:, 0] - top2[:, 1]).argsort(descending=True)[:10]]
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, lin, x, y


def closed_form(lin: nn.Linear, model: nn.Module, x, y, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Per sample the exact margin min_j (f_y - f_j) / ||w_y - w_j||_q and its minimising
    perturbation (q: 1 for Linf, 2 for L2; inputs far enough from 0 and 1 for the box not to bind)."""
    W = lin.weight.detach().double()
    with torch.no_grad():
        f = model(x).double()
    margins, deltas = [], []
    for i in range(len(x)):
        yi = int(y[i])
        best = None
        for j in range(K):
            if j == yi:
                continue
            w = W[j] - W[yi]
            q = 1 if norm == "Linf" else 2
            m = float((f[i, yi] - f[i, j]) / torch.linalg.vector_norm(w, ord=q))
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
    start, ok, _ = verify(model, x, loose, y, norm)
    assert ok.all()
    out = ball_search(model, x, loose, y, norm, BallSearch(rhos=(0.05, 0.01), rounds=60))
    margin, ok, _ = verify(model, x, out, y, norm)
    assert ok.all()
    ratio = margin / exact
    assert (ratio >= 1 - 1e-4).all(), ratio  # never below the truth
    # a sample stops once r * 0.99 has no adversarial: within 1/0.99 of exact
    assert (ratio <= 1 / 0.99 + 1e-4).all(), ratio
    assert (margin <= start + 1e-7).all()  # never worse than its input


def test_only_adversarial_rows_are_searched_and_charged(linear):
    model, lin, x, y = linear
    _, delta = closed_form(lin, model, x, y, "Linf")
    start = x + 1.6 * delta
    start[:3] = x[:3]  # not adversarial: left alone
    counting = CountingModel(model, len(x))
    out = ball_search(counting, x, start, y, "Linf", BallSearch(rounds=3))
    assert torch.equal(out[:3], x[:3])
    bwd = counting.backward_counts.numpy()
    assert (bwd[:3] == 0).all() and (bwd[3:] > 0).all()
    # each radius tried costs at most targets * starts * steps backward passes per sample;
    # a sample tries at most rounds + len(rhos) radii
    b = BallSearch(rounds=3)
    assert bwd.max() <= (b.rounds + len(b.rhos)) * b.targets * b.starts * b.steps


def test_runner_up_classes_are_the_strongest_other_logits():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.5], [0.0, 4.0, 1.0, 2.0]])
    model = nn.Identity()
    got = runner_up_classes(model, logits, torch.tensor([0, 1]), 2)
    assert got.tolist() == [[2, 1], [3, 2]]
    assert runner_up_classes(model, logits, torch.tensor([0, 1]), 99).shape == (2, 3)  # capped at K - 1


@pytest.mark.parametrize("net", ["mlp_std", "cnn_pgd"])
def test_oracle_ball_search_is_tighter_and_never_below_exact(net):
    """On the exact-margin networks: fab_polish_ball <= fab_polish on every sample, never below
    the certified lower bound, and more samples within 1 % of the exact margin."""
    oracle = load_oracle(ORACLE_DIR / net)
    x, table = oracle.images, oracle.table
    pred = torch.tensor(table["pred"].to_numpy())
    exact, lower = table["margin"].to_numpy(), table["lower_bound"].to_numpy()
    base = build_estimator(AttackConfig(**attack_preset("fab_polish")), "Linf")(oracle.model, x, pred)
    ball = build_estimator(AttackConfig(**attack_preset("fab_polish_ball")), "Linf")(oracle.model, x, pred)
    assert ball.success.all() and base.success.all()
    assert (ball.margin <= base.margin + 1e-7).all()
    assert (ball.margin >= lower - EXACT_TOL).all()
    within = lambda m: float(np.mean(m <= exact * 1.01))  # noqa: E731
    assert within(ball.margin) > within(base.margin) + 0.05, (within(ball.margin), within(base.margin))


@pytest.mark.parametrize("options", [{"ball_rhos": [1.5]}, {"ball_steps": 0}, {"ball_targets": 0}])
def test_bad_ball_options_are_one_line_errors(linear, options):
    model, _, x, y = linear
    cfg = attack_preset("fab_polish_ball")
    cfg = AttackConfig(**{**cfg, "options": {**cfg["options"], **options}})
    with pytest.raises(MarginbenchError, match="ball_rhos value in"):
        build_estimator(cfg, "Linf")(model, x, y)


def test_scalar_rho_from_the_command_line_is_accepted(linear):
    model, _, x, y = linear
    cfg = attack_preset("fab_polish_ball")
    cfg = AttackConfig(**{**cfg, "steps": 3, "options": {**cfg["options"], "ball_rhos": 0.02, "ball_rounds": 1}})
    assert build_estimator(cfg, "Linf")(model, x, y).success.all()
