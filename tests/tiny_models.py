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
    """Its input moves every logit by the same tiny amount: no attack can change its
    prediction, yet its input gradient is non-zero (so it passes the pre-flight checks)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(28 * 28, num_classes)
        with torch.no_grad():
            self.head.weight.fill_(1e-6)
            self.head.bias.copy_(torch.arange(num_classes, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def constant(num_classes: int = 10) -> nn.Module:
    return ConstantModel(num_classes)


def broken(num_classes: int = 10) -> nn.Module:
    raise RuntimeError("this factory always fails (used to test failing sweep jobs)")


class _Scaled(nn.Module):
    """tiny_cnn followed by a fixed operation (for the pre-flight checks' bad models)."""

    def __init__(self, op: str, num_classes: int) -> None:
        super().__init__()
        self.net, self.op = tiny_cnn(num_classes), op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.op == "softmax":
            return out.softmax(1)
        if self.op == "nan":
            return out * torch.nan
        if self.op == "random":
            return out + torch.randn_like(out)
        if self.op == "detached":
            return out.detach() + 0 * x.sum()
        return out


def five_outputs(num_classes: int = 10) -> nn.Module:
    return tiny_cnn(5)


def softmax_last(num_classes: int = 10) -> nn.Module:
    return _Scaled("softmax", num_classes)


def nan_outputs(num_classes: int = 10) -> nn.Module:
    return _Scaled("nan", num_classes)


def random_outputs(num_classes: int = 10) -> nn.Module:
    return _Scaled("random", num_classes)


def detached(num_classes: int = 10) -> nn.Module:
    return _Scaled("detached", num_classes)


def slow_cnn(num_classes: int = 10) -> nn.Module:
    """tiny_cnn that sleeps in every forward pass: a run long enough to be killed mid-way."""
    return _Slow(tiny_cnn(num_classes))


class _Slow(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.004)
        return self.net(x)


def no_linear(num_classes: int = 10) -> nn.Module:
    """Logits from a convolution, no nn.Linear head: the feature/head split cannot hold."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, num_classes, 28), nn.Flatten())
