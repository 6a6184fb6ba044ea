"""An attacker that knows the detector: an adversarial example the detector does not flag.

Goal per input x with prediction y: x' with ‖x' − x‖ ≤ ε, x' in [0,1], argmax f(x') = t ≠ y
and logit margin f_t(x') − max_{k≠t} f_k(x') > λ (the calibrated threshold), so a
BrittleDetector passes the wrong decision as robust. PGD maximises, for a class t,

    gap_t(x') = f_t(x') − max_{k≠t} f_k(x')

which is > 0 exactly when t is the new top-1 and > λ exactly when the detector is evaded;
clipping the loss at max(λ, 0) + margin_slack stops pushing a sample that already evades, so the step
budget goes to the others. Restart 0 takes t = the best non-y class at every step (untargeted),
restart r ≥ 1 targets the clean logits' (r+1)-th class from a random start. Every reported
success is re-verified on the final point (flipped, in [0,1], ‖δ‖ ≤ ε, margin > λ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from marginbench.errors import MarginbenchError


@dataclass
class AdaptiveResult:
    success: np.ndarray  # verified: flipped, in [0,1], within eps, logit margin > threshold
    x_adv: torch.Tensor  # best point found (the clean image where nothing flipped)
    adv_margin: np.ndarray  # logit margin (top-1 − top-2) at x_adv
    flipped: np.ndarray  # prediction changed at x_adv (evading or not)


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


def _project(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    # a radius a hair inside eps: float rounding in x + δ then can never leave the ε-ball
    radius = eps * (1 - 1e-5)
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-radius, radius)
    else:
        scale = (radius / _norm(delta, norm).clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * scale.view(-1, *[1] * (x.dim() - 1))
    return (x + delta).clamp(0.0, 1.0)


def _gap(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """gap_t: logit of t minus the largest other logit; t = best non-y class when target is None."""
    if target is None:
        target = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    others = logits.scatter(1, target[:, None], float("-inf")).amax(1)
    return logits.gather(1, target[:, None]).squeeze(1) - others


def _step(grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return alpha * grad.sign()
    g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
    return alpha * g


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, eps: float,
         cap: float, norm: str, steps: int, random_start: bool) -> torch.Tensor:
    """PGD ascent on min(gap_t, cap); step size halves at 50 % and 75 % of the steps."""
    x_adv = x.clone()
    if random_start:
        x_adv = _project(x, x + eps * (2 * torch.rand_like(x) - 1), eps, norm)
    best, best_gap = x_adv.clone(), torch.full((x.shape[0],), float("-inf"), device=x.device)
    for i in range(steps + 1):
        x_adv.requires_grad_(True)
        gap = _gap(model(x_adv), y, target)
        improved = gap.detach() > best_gap
        best[improved], best_gap[improved] = x_adv.detach()[improved], gap.detach()[improved]
        if i == steps:
            break
        grad, = torch.autograd.grad(gap.clamp(max=cap).sum(), x_adv)
        alpha = 2.5 * eps / steps * 4 * (0.5 ** (int(i >= steps // 2) + int(i >= 3 * steps // 4)))
        x_adv = _project(x, x_adv.detach() + _step(grad, alpha, norm), eps, norm)
    return best


def verify(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, eps: float,
           threshold: float, norm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(evades, logit margin at x_adv, flipped): each condition recomputed on the final point."""
    with torch.no_grad():
        logits = model(x_adv)
    top2 = logits.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    flipped = logits.argmax(1) != y
    inside = (_norm(x_adv - x, norm) <= eps) & (x_adv >= 0).flatten(1).all(1) & (x_adv <= 1).flatten(1).all(1)
    evades = flipped & inside & (margin > threshold)
    return evades.cpu().numpy(), margin.float().cpu().numpy(), flipped.cpu().numpy()


def adaptive_attack(model: nn.Module, x: torch.Tensor, eps: float, threshold: float, *, norm: str = "Linf",
                    steps: int = 100, restarts: int = 4, margin_slack: float = 0.5, seed: int = 0) -> AdaptiveResult:
    """Search, per input, a verified adversarial example within eps that the detector misses."""
    if norm not in ("Linf", "L2"):
        raise MarginbenchError(f"norm={norm!r}: the adaptive attack supports Linf and L2")
    torch.manual_seed(seed)  # random starts: the same draws on every call
    with torch.no_grad():
        clean = model(x)
    y = clean.argmax(1)
    ranked = clean.argsort(1, descending=True)
    # a flip needs gap > 0 anyway: a cap below 0 (λ < 0) would zero every gradient
    cap = max(float(threshold), 0.0) + margin_slack
    x_best = x.clone()
    success = np.zeros(x.shape[0], dtype=bool)
    for r in range(max(1, restarts)):
        target = None if r == 0 else ranked[:, min(r, clean.shape[1] - 1)]
        candidate = _pgd(model, x, y, target, eps, cap, norm, steps, random_start=r > 0)
        evades, _, flipped = verify(model, x, candidate, y, eps, threshold, norm)
        _, _, best_flipped = verify(model, x, x_best, y, eps, threshold, norm)
        # keep an evading point; else at least a flipping one (reported as flipped, not success)
        take = torch.from_numpy((evades & ~success) | (flipped & ~best_flipped & ~success)).to(x.device)
        x_best[take] = candidate[take]
        success |= evades
    evades, margin, flipped = verify(model, x, x_best, y, eps, threshold, norm)
    return AdaptiveResult(evades, x_best, margin, flipped)
