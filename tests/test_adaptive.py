"""The adaptive attacker: verified points, and success exactly where the optimum allows it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from marginbench.adaptive import adaptive_attack, verify


class TwoClassLinear(nn.Module):
    """logits (s, -s) with s = w·x - c: the best gap class 1 can reach within an L∞ ball of
    radius eps (pixels far from 0 and 1) is 2 (eps·‖w‖₁ - s), in closed form."""

    def __init__(self, w: torch.Tensor, c: float):
        super().__init__()
        self.w, self.c = nn.Parameter(w, requires_grad=False), c

    def forward(self, x):
        s = x.flatten(1) @ self.w - self.c
        return torch.stack([s, -s], 1)


def test_success_matches_the_closed_form_on_a_linear_model():
    torch.manual_seed(0)
    d, eps, lam = 20, 0.05, 0.6
    w = torch.randn(d)
    x = 0.3 + 0.4 * torch.rand(200, 1, 4, 5)  # pixels in [0.3, 0.7]: the [0,1] box never binds
    model = TwoClassLinear(w, c=float((x.flatten(1) @ w).median()))
    s = (x.flatten(1) @ w - model.c).abs()  # distance of the clean logit gap's half from 0
    best = 2 * (eps * w.abs().sum() - s)  # best reachable gap of the other class
    out = adaptive_attack(model, x, eps, lam, steps=50, restarts=2)
    clear = (best - lam).abs() > 0.05  # leave out the knife-edge cases
    assert clear.sum() > 100 and 0 < out.success.mean() < 1
    np.testing.assert_array_equal(out.success[clear.numpy()], (best > lam).numpy()[clear.numpy()])
    assert (out.x_adv - x).abs().flatten(1).amax(1).max() <= eps


def test_tiny_cnn_points_are_verified_and_a_huge_threshold_is_never_evaded():
    from tiny_models import tiny_cnn

    model = tiny_cnn()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = adaptive_attack(model, x, 0.3, -1e9, steps=30, restarts=2)  # any flip evades
    assert out.flipped.any() and np.array_equal(out.success, out.flipped)
    evades, margin, _ = verify(model, x, out.x_adv, model(x).argmax(1), 0.3, -1e9, "Linf")
    assert np.array_equal(evades, out.success) and np.allclose(margin, out.adv_margin)
    assert not adaptive_attack(model, x, 0.3, 1e9, steps=10, restarts=1).success.any()
    l2 = adaptive_attack(model, x, 2.0, -1e9, norm="L2", steps=30, restarts=1)
    assert (l2.x_adv - x).flatten(1).norm(dim=1).max() <= 2.0 and l2.flipped.any()
