"""Verification of every adversarial example an estimator returns.

An attack's own bookkeeping is never trusted: the returned point is re-evaluated by the
model and kept only if it (1) is finite and lies in the box [0,1], (2) changes the
prediction (argmax != y_pred), and (3) differs from x. The margin stored is the norm of
``x_adv - x`` recomputed in float64. Anything else is a failure: margin +inf,
success False, x_adv = x. A failure is never a margin of 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

NORMS = ("Linf", "L2")


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample Lp norm of a (B, ...) tensor, computed in float64."""
    # flatten(1), not reshape(B, -1): a batch with no rows left (every sample already done)
    # must give an empty result, not an error
    flat = (delta.detach().flatten(1) if delta.ndim > 1 else delta.detach().unsqueeze(1)).double()
    if norm == "Linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else torch.zeros(flat.shape[0], dtype=torch.float64)
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


@torch.no_grad()
def is_adversarial(model: nn.Module, x_adv: Tensor, y_pred: Tensor) -> Tensor:
    """Bool (B,) on x_adv's device: the model's argmax differs from ``y_pred``."""
    return model(x_adv).argmax(dim=1) != y_pred


@torch.no_grad()
def keep_smallest_flip(model: nn.Module, x: Tensor, y_pred: Tensor, cand: Tensor, best: Tensor,
                       best_norm: Tensor, norm: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample, keep ``cand`` over ``best`` when it flips the prediction at a smaller,
    non-zero norm (one forward pass; the final ``verify`` re-checks the winner anyway).
    Returns ``(best, best_norm, flipped)``; ``best_norm`` is float64 on x's device."""
    flipped = is_adversarial(model, cand, y_pred)
    res = lp_norm(cand - x, norm).to(x.device)
    better = flipped & (res > 0) & (res < best_norm)
    best_norm = torch.where(better, res, best_norm)
    best = torch.where(better.view(-1, *[1] * (x.ndim - 1)), cand, best)
    return best, best_norm, flipped


@torch.no_grad()
def verify(
    model: nn.Module, x: Tensor, x_adv: Tensor, y_pred: Tensor, norm: str
) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """Re-check candidates. Returns (margin float64 (B,), success bool (B,), x_adv on x's device).

    ``x_adv`` of failed samples is replaced by ``x``.
    """
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv has shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    x_adv = x_adv.detach().to(device=x.device, dtype=x.dtype)
    flat = x_adv.flatten(1)
    in_box = torch.isfinite(flat).all(dim=1) & (flat >= 0).all(dim=1) & (flat <= 1).all(dim=1)
    safe = torch.where(in_box.view(-1, *[1] * (x.ndim - 1)), x_adv, x)
    flips = is_adversarial(model, safe, y_pred)
    margin = lp_norm(safe - x, norm)
    success = in_box & flips & (margin > 0).to(in_box.device)
    margin = torch.where(success.to(margin.device), margin, torch.full_like(margin, float("inf")))
    x_out = torch.where(success.view(-1, *[1] * (x.ndim - 1)), safe, x)
    return margin.cpu().numpy(), success.cpu().numpy(), x_out
