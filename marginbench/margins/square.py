"""Square attack (pyautoattack, Andriushchenko et al. 2020) with a per-sample eps search.

Square is gradient-free (random square-shaped updates accepted when they lower the margin
loss), so it still sees a boundary that gradient masking hides from FAB, APGD and FMN. It is
a *bounded* attack: like ``advlib.apgd_bisect`` it is wrapped in a per-sample eps search,
doubling from ``eps_init`` until a first success, then bisection.

pyautoattack's ``SquareAttack`` takes one scalar eps and sub-selects the rows it still
attacks internally, so a per-sample eps cannot be passed as a tensor; each search step runs
one Square call per distinct eps instead. A successful step sets ``hi`` to the eps tried
(not the found norm), so the samples stay on a shared dyadic grid of eps values and the
calls per step stay few (all samples share eps while doubling).
"""

from __future__ import annotations

import torch
from pyautoattack.square import SquareAttack
from torch import Tensor

from marginbench.margins.base import AttackSpec, OptionRule, check_options, isolated_rng
from marginbench.margins.counting import CountingModel
from marginbench.margins.verify import keep_smallest_flip

# the options only square reads besides base.OPTION_RULES' (pyautoattack's SquareAttack loss)
SQUARE_RULES = {"loss": OptionRule("choice", choices=("margin", "ce"))}


def check_square_options(spec: AttackSpec) -> None:
    """Build-time check of square's own option (margins.ATTACK_CHECKS)."""
    check_options(spec.name, spec.options, SQUARE_RULES)


def _square_at(model: CountingModel, x: Tensor, y: Tensor, eps: Tensor, norm: str, spec: AttackSpec,
               opts: dict) -> Tensor:
    """One Square run per distinct eps; rows are attributed to their samples for the cost."""
    out = x.clone()
    for value in torch.unique(eps):
        rows = (eps == value).nonzero().squeeze(1)
        attack = SquareAttack(model, norm=norm, n_queries=spec.steps, eps=float(value),
                              n_restarts=spec.restarts, seed=spec.seed, device=x.device, **opts)
        with model.subset(rows):
            out[rows] = attack.perturb(x[rows], y[rows])
    return out


def square_bisect(model: CountingModel, x: Tensor, y: Tensor, norm: str, spec: AttackSpec) -> Tensor:
    """Square at a per-sample eps, searched per sample (see the module docstring).

    options: search_steps (10 Square runs), eps_init (8/255 Linf, 0.5 L2), p_init (0.8),
    loss (margin). ``steps`` = queries per run, ``restarts`` = Square restarts per run.
    """
    opts = dict(spec.library_options())
    search_steps = int(opts.pop("search_steps", 10))
    eps_init = float(opts.pop("eps_init", 8 / 255 if norm == "Linf" else 0.5))
    n = x.shape[0]
    lo = torch.zeros(n, dtype=torch.float64, device=x.device)
    hi = torch.full((n,), float("inf"), dtype=torch.float64, device=x.device)
    best, best_norm = x.clone(), hi.clone()
    with isolated_rng(x.device, spec.seed), torch.no_grad():
        for _ in range(search_steps):
            eps = torch.where(torch.isinf(hi), torch.where(lo > 0, 2 * lo, torch.full_like(lo, eps_init)), (lo + hi) / 2)
            cand = _square_at(model, x, y, eps, norm, spec, opts)
            best, best_norm, flipped = keep_smallest_flip(model, x, y, cand, best, best_norm, norm)
            hi = torch.where(flipped, torch.minimum(hi, eps), hi)
            lo = torch.where(flipped, lo, torch.maximum(lo, eps))
    return best
