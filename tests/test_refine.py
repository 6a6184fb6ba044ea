"""refine.project: FAB-style projections onto the boundary linearised at the best point.
Oracle: on a linear classifier the linearisation is exact, so one projection lands on the
closed-form minimal perturbation (test_multistart's fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_multistart import closed_form, linear  # noqa: F401  (linear is a fixture)

from marginbench.margins.counting import CountingModel
from marginbench.margins.refine import project, shrink
from marginbench.margins.verify import verify
from marginbench.oracle import ORACLE_DIR, load_oracle


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_one_projection_lands_on_the_linear_closed_form(linear, norm):  # noqa: F811
    model, lin, x, y = linear
    exact, delta = closed_form(lin, model, x, y, norm)
    loose = x + 1.6 * delta  # 60 % too large, in the closest class
    out = project(model, x, loose, y, norm, rounds=1, classes=1, steps=1)
    margin, ok, _ = verify(model, x, out, y, norm)
    assert ok.all()
    ratio = margin / exact
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1 + 1e-3).all(), ratio


def _loose_adversarials(model, x, y):
    """Per row, the first of growing steps along the sign of the runner-up gap's gradient
    that flips the prediction (an FGSM-like start, far from the boundary)."""
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    runner_up = logits.detach().scatter(1, y.unsqueeze(1), -float("inf")).argmax(1)
    gap = logits.gather(1, runner_up.unsqueeze(1)) - logits.gather(1, y.unsqueeze(1))
    direction = torch.autograd.grad(gap.sum(), xr)[0].sign()
    start = x.clone()
    for eps in (0.05, 0.1, 0.2, 0.4, 0.8):
        with torch.no_grad():
            cand = (x + eps * direction).clamp(0, 1)
            flips = (model(cand).argmax(1) != y) & (start == x).flatten(1).all(1)
        start[flips] = cand[flips]
    assert not torch.equal(start[2:], x[2:])
    return start


def test_never_worse_and_leaves_non_adversarial_rows_alone():
    oracle = load_oracle(ORACLE_DIR / "mlp_std")  # a trained ReLU network
    model, x = oracle.model, oracle.images[:12]
    with torch.no_grad():
        y = model(x).argmax(1)
    start = _loose_adversarials(model, x, y)
    start[:2] = x[:2]  # not adversarial
    before, ok_before, _ = verify(model, x, start, y, "Linf")
    counting = CountingModel(model, len(x))
    out = project(counting, x, start, y, "Linf", rounds=2)
    after, ok_after, _ = verify(model, x, out, y, "Linf")
    assert torch.equal(out[:2], x[:2]) and (counting.backward_counts[:2] == 0).all()
    assert (ok_after == ok_before).all()
    assert (after[ok_before] <= before[ok_before] + 1e-7).all()
    assert np.any(after[ok_before] < 0.9 * before[ok_before])  # and it does move points


@pytest.mark.parametrize("refiner", [shrink, project])
def test_no_adversarial_rows_is_a_no_op(linear, refiner):  # noqa: F811
    model, _, x, y = linear
    assert torch.equal(refiner(model, x, x.clone(), y, "Linf"), x)


def test_polish_min_rho_stops_converged_samples_early_and_stays_within_one_percent(linear):  # noqa: F811
    """``min_rho`` (the presets' ``polish_min_rho``): a sample stops once its shrink factor
    fell below it. On the linear closed form both polishes end within 1 % of the exact
    margin and never below it, and the early stop spends fewer backward passes."""
    model, lin, x, y = linear
    exact, delta = closed_form(lin, model, x, y, "Linf")
    loose = x + 1.6 * delta
    margins, passes = {}, {}
    for min_rho in (0.0, 0.002):
        counting = CountingModel(model, len(x))
        out = shrink(counting, x, loose, y, "Linf", rounds=24, steps=5, rho=0.05, min_rho=min_rho)
        margin, ok, _ = verify(model, x, out, y, "Linf")
        assert ok.all()
        margins[min_rho], passes[min_rho] = margin / exact, counting.backward_counts.sum()
    for ratio in margins.values():
        assert (ratio >= 1 - 1e-5).all() and (ratio <= 1.01).all(), ratio
    assert passes[0.002] < 0.8 * passes[0.0], passes


def test_only_the_rows_a_round_improved_run_the_next_one(linear):  # noqa: F811
    """A row the last round did not improve would repeat that round exactly: it stops, the
    others go on (they used to hold the round open for every row)."""
    model, lin, x, y = linear
    _, delta = closed_form(lin, model, x, y, "Linf")
    settled = project(model, x, x + 1.6 * delta, y, "Linf", rounds=1)  # on the boundary already
    start = torch.cat([settled[:5], (x + 1.6 * delta)[5:]])  # rows 5-9: 60 % too far
    counting = CountingModel(model, len(x))
    out = project(counting, x, start, y, "Linf", rounds=3)
    per_round = 2 * 3  # classes * steps backward passes per row and round
    assert (counting.backward_counts[:5] == per_round).all(), counting.backward_counts
    # round 1 moves them onto the boundary, round 2 finds nothing better: they stop there
    assert (counting.backward_counts[5:] == 2 * per_round).all(), counting.backward_counts
    assert torch.equal(out[:5], settled[:5])
    margin, ok, _ = verify(model, x, out, y, "Linf")
    exact, _ = closed_form(lin, model, x, y, "Linf")
    assert ok.all() and (margin <= exact * (1 + 1e-3)).all()
