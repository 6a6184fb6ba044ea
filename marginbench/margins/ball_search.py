"""Ball search: a targeted, multi-start eps search below the best margin found so far.

Why: on the oracle networks (exact L-inf margins by MILP, results/oracle) a minimum-norm
attack stops in a local optimum. At the samples it gets wrong, the exact point either
flips to another runner-up class (rank 2-4 at x) or lies in another orthant of the ball
(10-50 % of the perturbation's signs differ; scripts/bench_oracle.py). Polish (refine.shrink)
only searches around the point it was given with 5 steps, so it cannot leave that optimum.

What: per sample with a verified adversarial of norm r, ask "is there an adversarial inside
the ball of radius r * (1 - rho)?" for each rho of ``rhos`` (largest first), with
``steps`` steps of PGD on f_t - f_pred towards each of the ``targets`` strongest runner-up
classes at x, from ``starts`` points: the best point pulled into the ball, then random
corners of the ball. Every (sample, target, start) is one row of one batch; a sample stops
searching a radius at the first row that flips its prediction. A success shrinks r to the
norm of the flipping point and starts again from the largest rho; a sample whose every rho
failed has converged. ``rounds`` caps the successes per sample.

The result is never worse than the input (only points seen to flip the prediction replace
it) and is verified again by the caller. Cost per sample and radius tried: at most
``targets * starts * steps`` backward passes (fewer as rows flip).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from marginbench.margins.counting import CountingModel
from marginbench.margins.verify import is_adversarial, lp_norm


@dataclass(frozen=True)
class BallSearch:
    """Budget of the search (configs/attack options ``ball_*``; see the module docstring)."""

    targets: int = 3
    starts: int = 3
    steps: int = 50
    rhos: tuple[float, ...] = (0.05, 0.01)
    rounds: int = 20
    seed: int = 0


def _subset(model: nn.Module, index: Tensor):
    if isinstance(model, CountingModel):
        return model.subset(index)
    return contextlib.nullcontext()


def _project(delta: Tensor, radius: Tensor, norm: str) -> Tensor:
    view = (-1,) + (1,) * (delta.ndim - 1)
    if norm == "Linf":
        r = radius.view(view)
        return torch.maximum(torch.minimum(delta, r), -r)
    n = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    return delta * torch.clamp(radius / n, max=1.0).view(view)


def runner_up_classes(model: nn.Module, x: Tensor, y: Tensor, k: int) -> Tensor:
    """(B, k) the k classes with the largest logits at x other than y (k capped at K - 1)."""
    with torch.no_grad():
        logits = model(x)
    logits = logits.clone()
    logits.scatter_(1, y.unsqueeze(1), -float("inf"))
    k = max(1, min(k, logits.shape[1] - 1))
    return logits.topk(k, dim=1).indices


def _random_corners(x: Tensor, radius: Tensor, norm: str, generator: torch.Generator) -> Tensor:
    """Points on the sphere of ``radius`` around each row of x: random sign corners (L-inf) or
    random directions (L2), clipped to [0, 1]."""
    view = (-1,) + (1,) * (x.ndim - 1)
    noise = torch.randn(x.shape, generator=generator).to(x)
    if norm == "Linf":
        delta = noise.sign() * radius.view(view)
    else:
        delta = noise / noise.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(view) * radius.view(view)
    return (x + delta).clamp(0.0, 1.0)


def _targeted_pgd(model: nn.Module, xs: Tensor, ys: Tensor, ts: Tensor, start: Tensor, radius: Tensor,
                  owner: Tensor, norm: str, steps: int) -> tuple[Tensor, Tensor]:
    """PGD on f_t - f_y inside B(xs, radius) from ``start``, one row per (sample, target,
    start); ``owner`` maps rows to samples (0..S-1). Returns per sample the first point seen
    to flip the prediction and whether one was seen. A sample's rows stop at its first flip.

    Step: half the radius at first, decaying geometrically to ~1/32 of it at the last step
    (a slower decay than polish's: the search must be able to leave the start's orthant)."""
    view = (-1,) + (1,) * (xs.ndim - 1)
    n_owners = int(owner.max()) + 1 if owner.numel() else 0
    found = torch.zeros(n_owners, dtype=torch.bool, device=xs.device)
    out = torch.zeros((n_owners, *xs.shape[1:]), dtype=xs.dtype, device=xs.device)
    z = (xs + _project(start - xs, radius, norm)).clamp_(0.0, 1.0)
    live = torch.arange(xs.shape[0], device=xs.device)
    for s in range(steps + 1):
        need_grad = s < steps
        with _subset(model, live), torch.enable_grad():
            z.requires_grad_(need_grad)
            logits = model(z)
            rows = torch.arange(live.numel(), device=xs.device)
            gap = logits[rows, ts[live]] - logits[rows, ys[live]]
            grad = torch.autograd.grad(gap.sum(), z)[0] if need_grad else None
        z = z.detach()
        flipped = logits.detach().argmax(1) != ys[live]
        for row in flipped.nonzero().squeeze(1).tolist():  # first flip per sample wins
            o = int(owner[live[row]])
            if not found[o]:
                found[o] = True
                out[o] = z[row]
        keep = ~found[owner[live]]
        if grad is None or not bool(keep.any()):
            break
        live, z, grad = live[keep], z[keep], grad[keep]
        r = radius[live]
        alpha = (r * 0.25 * (1 / 16) ** (s / max(steps - 1, 1))).view(view)
        if norm == "Linf":
            z = z + alpha * grad.sign()
        else:
            z = z + alpha * grad / grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(view)
        z = (xs[live] + _project(z - xs[live], r, norm)).clamp_(0.0, 1.0)
    return out, found


def _try_radius(model: nn.Module, x: Tensor, y: Tensor, targets: Tensor, best: Tensor, radius: Tensor,
                norm: str, budget: BallSearch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One radius per sample (rows of x): every (target, start) pair as a row of one batch."""
    n, k = x.shape[0], targets.shape[1]
    samples = torch.arange(n, device=x.device)
    owner = samples.repeat_interleave(k * budget.starts)
    xs, ys, rad = x[owner], y[owner], radius[owner]
    ts = targets.repeat_interleave(budget.starts, dim=1).reshape(-1)
    starts = [best] + [_random_corners(x, radius, norm, generator) for _ in range(budget.starts - 1)]
    start = torch.stack(starts, dim=1).unsqueeze(1).expand(n, k, budget.starts, *x.shape[1:])
    start = start.reshape(-1, *x.shape[1:])
    with _subset(model, owner):
        return _targeted_pgd(model, xs, ys, ts, start, rad, owner, norm, budget.steps)


def ball_search(model: nn.Module, x: Tensor, x_adv: Tensor, y_pred: Tensor, norm: str,
                budget: BallSearch = BallSearch(), adversarial: Tensor | None = None) -> Tensor:
    """Smaller adversarials than ``x_adv`` where the search finds them (module docstring)."""
    if adversarial is None:
        adversarial = is_adversarial(model, x_adv, y_pred)
    idx = adversarial.nonzero().squeeze(1)
    if idx.numel() == 0 or budget.rounds <= 0 or not budget.rhos:
        return x_adv
    generator = torch.Generator().manual_seed(budget.seed)
    xs, ys, best = x[idx], y_pred[idx], x_adv[idx].clone()
    with _subset(model, idx):
        targets = runner_up_classes(model, xs, ys, budget.targets)
        r = lp_norm(best - xs, norm).to(device=x.device, dtype=x.dtype)
        level = torch.zeros(idx.numel(), dtype=torch.long, device=x.device)  # index into rhos
        successes = torch.zeros_like(level)
        rhos = torch.tensor(budget.rhos, dtype=x.dtype, device=x.device)
        while True:
            todo = ((level < len(budget.rhos)) & (successes < budget.rounds)).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            radius = r[todo] * (1 - rhos[level[todo]])
            with _subset(model, todo):
                point, found = _try_radius(model, xs[todo], ys[todo], targets[todo], best[todo], radius,
                                           norm, budget, generator)
            new_r = lp_norm(point - xs[todo], norm).to(device=x.device, dtype=x.dtype)
            better = found & (new_r < r[todo])
            won = todo[better]
            best[won], r[won] = point[better], new_r[better]
            successes[won] += 1
            level[won] = 0
            level[todo[~better]] += 1
    out = x_adv.clone()
    out[idx] = best
    return out
