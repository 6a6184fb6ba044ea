"""Deterministic tiny models for end-to-end tests, importable as `tiny_models:FACTORY`
(tests put this directory on PYTHONPATH for subprocesses)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """A small seeded CNN on 1x28x28 inputs; the same weights on every call."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 12 * 12, 16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    )
    torch.random.set_rng_state(generator_state)
    return model


class ConstantModel(nn.Module):
    """Ignores its input: no attack can change its prediction."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(28 * 28, num_classes)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.arange(num_classes, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def constant(num_classes: int = 10) -> nn.Module:
    return ConstantModel(num_classes)


def broken(num_classes: int = 10) -> nn.Module:
    raise RuntimeError("this factory always fails (used to test failing sweep jobs)")
