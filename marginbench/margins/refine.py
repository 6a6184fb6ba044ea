"""Post-attack refinement: bisection along the found perturbation towards the boundary
(``line_search``), a warm-started eps search (``shrink``) and FAB-style projections onto the
boundary linearised at the best point (``project``).

For a verified adversarial ``x + delta`` the points ``x + t * delta`` with t in [0, 1] stay
inside the box (it is convex and both ends are in it), and their norm is ``t * ||delta||``.
A bisection over t keeps the smallest t that was *checked* to still flip the prediction,
so the result is never worse than the input and is re-verified afterwards anyway.
Cost: ``steps`` forward passes per refined sample (no gradients).
"""

from __future__ import annotations

import torch
from pyautoattack.fab_projections import projection_l2, projection_linf
from torch import Tensor, nn

from marginbench.margins.counting import charged_to
from marginbench.margins.verify import is_adversarial, lp_norm


@torch.no_grad()
def line_search(
    model: nn.Module, x: Tensor, x_adv: Tensor, y_pred: Tensor, steps: int = 10,
    adversarial: Tensor | None = None,
) -> Tensor:
    """Shrink each adversarial perturbation along its own direction by bisection.

    ``adversarial``: bool (B,) of samples whose ``x_adv`` is known to flip the prediction
    (computed with one forward pass when not given). Other samples are returned unchanged.
    """
    if adversarial is None:
        adversarial = is_adversarial(model, x_adv, y_pred)
    idx = adversarial.nonzero().squeeze(1)
    if idx.numel() == 0 or steps <= 0:
        return x_adv
    xs, delta, ys = x[idx], (x_adv[idx] - x[idx]), y_pred[idx]
    view = (-1,) + (1,) * (x.ndim - 1)
    lo = torch.zeros(idx.numel(), device=x.device, dtype=x.dtype)
    hi = torch.ones_like(lo)
    best = x_adv[idx].clone()
    with charged_to(model, idx):
        for _ in range(steps):
            t = (lo + hi) / 2
            cand = (xs + t.view(view) * delta).clamp_(0.0, 1.0)
            adv = is_adversarial(model, cand, ys)
            hi = torch.where(adv, t, hi)
            lo = torch.where(adv, lo, t)
            best = torch.where(adv.view(view), cand, best)
    out = x_adv.clone()
    out[idx] = best
    return out


def _project(delta: Tensor, radius: Tensor, norm: str) -> Tensor:
    view = (-1,) + (1,) * (delta.ndim - 1)
    if norm == "Linf":
        r = radius.view(view)
        return torch.maximum(torch.minimum(delta, r), -r)
    n = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    return delta * torch.clamp(radius / n, max=1.0).view(view)


def _runner_up_gap(logits: Tensor, y: Tensor) -> Tensor:
    """max_{j != y} f_j - f_y: > 0 iff the prediction changed (ties aside)."""
    other = logits.clone()
    other.scatter_(1, y.unsqueeze(1), -float("inf"))
    return other.amax(dim=1) - logits.gather(1, y.unsqueeze(1)).squeeze(1)


def _pgd_in_ball(model: nn.Module, xs: Tensor, ys: Tensor, start: Tensor, radius: Tensor,
                 norm: str, steps: int) -> tuple[Tensor, Tensor]:
    """Per sample, the first point seen to flip the prediction inside ``B(xs, radius)``.

    Returns ``(points, found)``; where ``found`` is false the point is ``start`` unchanged.

    ``steps`` PGD steps on the runner-up gap from ``start`` projected into the ball, with a
    step of a quarter of the radius halved every step. Only the rows still searching go
    through the model (the others are done), so a round costs what it needs.
    """
    out = start.clone()
    found = torch.zeros(xs.shape[0], dtype=torch.bool, device=xs.device)
    z = (xs + _project(start - xs, radius, norm)).clamp_(0.0, 1.0)
    live = torch.arange(xs.shape[0], device=xs.device)  # rows still searching
    for s in range(steps + 1):
        need_grad = s < steps
        with charged_to(model, live), torch.enable_grad():
            z.requires_grad_(need_grad)
            gap = _runner_up_gap(model(z), ys[live])
            grad = torch.autograd.grad(gap.sum(), z)[0] if need_grad else None
        z = z.detach()
        flipped = gap.detach() > 0
        out[live[flipped]] = z[flipped]
        found[live[flipped]] = True
        keep = ~flipped
        if grad is None or not bool(keep.any()):
            break
        live, z, grad = live[keep], z[keep], grad[keep]
        z = _step_in_ball(z, grad, xs[live], radius[live], s, norm)
    return out, found


def _step_in_ball(z: Tensor, grad: Tensor, xs: Tensor, radius: Tensor, step: int, norm: str) -> Tensor:
    """Step ``step`` (from 0) of the in-ball PGD: up the gradient (its sign for L-inf, its
    direction for L2) by a quarter of the radius halved every step, then back into the
    ball around ``xs`` and the [0, 1] box."""
    view = (-1,) + (1,) * (xs.ndim - 1)
    alpha = (radius * 0.25 * 0.5 ** step).view(view)
    if norm == "Linf":
        z = z + alpha * grad.sign()
    else:
        z = z + alpha * grad / grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(view)
    return (xs + _project(z - xs, radius, norm)).clamp_(0.0, 1.0)


def _adversarial_rows(model: nn.Module, x: Tensor, x_adv: Tensor, y_pred: Tensor, norm: str,
                      adversarial: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The rows whose ``x_adv`` flips the prediction (one forward pass unless ``adversarial``
    says): their indices, inputs, labels, a copy of their points and those points' norms."""
    if adversarial is None:
        adversarial = is_adversarial(model, x_adv, y_pred)
    idx = adversarial.nonzero().squeeze(1)
    best = x_adv[idx].clone()
    return idx, x[idx], y_pred[idx], best, lp_norm(best - x[idx], norm).to(device=x.device, dtype=x.dtype)


def shrink(
    model: nn.Module, x: Tensor, x_adv: Tensor, y_pred: Tensor, norm: str,
    rounds: int = 8, steps: int = 5, rho: float = 0.05, min_rho: float = 0.0,
    adversarial: Tensor | None = None,
) -> Tensor:
    """Warm-started eps search around verified adversarials ("polish").

    Each round asks, per sample, for an adversarial inside the ball of radius
    ``r * (1 - rho)`` (r: the best norm so far): ``steps`` PGD steps on the runner-up gap,
    started from the best point projected into that ball. A success shrinks r (and grows
    rho by 1.5), a failure halves rho; a sample stops once rho < ``min_rho``. The point
    returned is the best one that was seen to flip the prediction, never worse than the input. Cost per round and sample: at most
    ``steps`` forward + backward passes and one forward pass; a sample stops at its first
    success.
    """
    idx, xs, ys, best, r = _adversarial_rows(model, x, x_adv, y_pred, norm, adversarial)
    if idx.numel() == 0 or rounds <= 0:
        return x_adv
    view = (-1,) + (1,) * (x.ndim - 1)
    rho_t = torch.full_like(r, float(rho))
    with charged_to(model, idx):
        for _ in range(rounds):
            # a sample whose shrink factor fell below min_rho has converged: asking for
            # a < min_rho smaller ball is not worth its passes
            todo = (rho_t >= min_rho).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            target = r[todo] * (1 - rho_t[todo])
            with charged_to(model, todo):
                found_pt, found = _pgd_in_ball(model, xs[todo], ys[todo], best[todo], target, norm, steps)
            new_r = lp_norm(found_pt - xs[todo], norm).to(device=x.device, dtype=x.dtype)
            better = found & (new_r < r[todo])
            best[todo] = torch.where(better.view(view), found_pt, best[todo])
            r[todo] = torch.where(better, new_r, r[todo])
            rho_t[todo] = torch.where(better, (rho_t[todo] * 1.5).clamp(max=0.5), rho_t[todo] / 2)
    out = x_adv.clone()
    out[idx] = best
    return out


# Relative step past the linearised boundary: the projection lands on it up to float
# rounding, and a point that no longer flips the prediction is simply not taken.
PROJECT_OVERSHOOT = 1e-5


def _linearised_projection(model: nn.Module, xs: Tensor, ys: Tensor, z: Tensor, cls: Tensor, norm: str) -> Tensor:
    """The point of the box closest to ``xs`` (in ``norm``) on the boundary between ``ys``
    and ``cls`` as linearised at ``z``: FAB's projection step (pyautoattack's own
    projection onto hyperplane and box), from the clean input instead of FAB's iterate."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        logits = model(z)
        gap = logits.gather(1, cls.unsqueeze(1)).squeeze(1) - logits.gather(1, ys.unsqueeze(1)).squeeze(1)
        w = torch.autograd.grad(gap.sum(), z)[0].flatten(1)
    offset = (w * z.detach().flatten(1)).sum(1) - gap.detach()  # the hyperplane: w . p = offset
    project = projection_linf if norm == "Linf" else projection_l2
    d = project(xs.flatten(1), w, offset).view_as(xs)
    return (xs + d * (1 + PROJECT_OVERSHOOT)).clamp_(0.0, 1.0)


def project(
    model: nn.Module, x: Tensor, x_adv: Tensor, y_pred: Tensor, norm: str,
    rounds: int = 3, classes: int = 2, steps: int = 3, adversarial: Tensor | None = None,
) -> Tensor:
    """Newton-like polish of verified adversarials: project the clean input onto the decision
    boundary linearised at the best point, for each of the ``classes`` strongest runner-up
    classes there, ``steps`` times in a row (each step linearises at the previous
    projection); keep every projection that flips the prediction with a smaller norm.

    Why: on a piecewise-linear network the boundary is exactly linear inside the best point's
    activation region, so one projection lands on that region's closest boundary point,
    where shrink's sign-gradient PGD only creeps towards it. ``rounds`` repeats from the new
    best point, for the samples the last round improved: one it did not would repeat it
    exactly (same point, same linearisations). Cost per round and sample: ``classes *
    steps`` forward + backward passes and as many forward passes. Never worse than the input.
    """
    idx, xs, ys, best, r = _adversarial_rows(model, x, x_adv, y_pred, norm, adversarial)
    if idx.numel() == 0 or rounds <= 0:
        return x_adv
    live = torch.arange(idx.numel(), device=x.device)  # the rows the last round improved
    with charged_to(model, idx):
        for _ in range(rounds):
            with charged_to(model, live):
                best[live], r[live], improved = _project_round(model, xs[live], ys[live], best[live], r[live],
                                                               norm, classes, steps)
            live = live[improved]
            if live.numel() == 0:
                break
    out = x_adv.clone()
    out[idx] = best
    return out


def _project_round(model: nn.Module, xs: Tensor, ys: Tensor, best: Tensor, r: Tensor, norm: str,
                   classes: int, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """One round of ``project`` on these rows: their new best points and norms, and which improved."""
    view = (-1,) + (1,) * (xs.ndim - 1)
    improved = torch.zeros_like(r, dtype=torch.bool)
    with torch.no_grad():
        others = model(best).scatter(1, ys.unsqueeze(1), -float("inf"))
    for cls in others.topk(min(classes, others.shape[1] - 1), dim=1).indices.T:
        z = best
        for _ in range(steps):
            z = _linearised_projection(model, xs, ys, z, cls, norm)
            size = lp_norm(z - xs, norm).to(device=xs.device, dtype=xs.dtype)
            better = is_adversarial(model, z, ys) & (size < r)
            best = torch.where(better.view(view), z, best)
            r = torch.where(better, size, r)
            improved |= better
    return best, r, improved
