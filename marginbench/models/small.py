"""Small local architectures: a fast CNN for Fashion-MNIST and the CIFAR ResNet-18.

Every network here maps images in [0,1] to raw logits and ends with an ``nn.Linear`` that
produces the logits directly, so the feature/head split (features = input of the last
Linear) is well defined. No normalisation layer: inputs are used as they are, which is what
the authors' own adversarially trained ResNet-18s did too.
"""

from __future__ import annotations

from torch import nn

from marginbench.errors import MarginbenchError


class SmallCNN(nn.Module):
    """Fashion-MNIST CNN, 28x28x1 -> logits.

    conv(1->w,3)-ReLU-maxpool -> conv(w->2w,3)-ReLU-maxpool -> flatten (2w*7*7)
    -> Linear(.,hidden)-ReLU -> Linear(hidden,K). With w=16, hidden=100 it has ~164k
    parameters (~0.65 MB of float32 weights) and trains at a few seconds per 10k images with
    5-step PGD on two CPU cores. Max-pooling early keeps the flop count small.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, hidden: int = 100, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class PairCNN(nn.Module):
    """Fashion-MNIST pairs CNN, 28x56x1 -> logits (issue 15: the same network at K=100 and
    K=10, so estimator costs can be compared across K alone).

    Three conv(3)-ReLU-maxpool blocks (16, 32, 32 channels: 14x28, 7x14, 3x7) -> Linear(672,
    hidden)-ReLU -> Linear(hidden, K). ~63k parameters at K=100 (~0.25 MB of float32): small
    enough to ship in the zoo, trained in minutes on two CPU cores.
    """

    def __init__(self, num_classes: int = 100, hidden: int = 64):
        super().__init__()
        blocks = []
        for c_in, c_out in ((1, 16), (16, 32), (32, 32)):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(32 * 3 * 7, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def _cifar_resnet18(num_classes: int) -> nn.Module:
    # The CIFAR variant (3x3 stem, no max-pool, 4x4 average pool) used by the authors and by
    # AutoAttack's example model; imported from the pyautoattack wheel rather than copied.
    try:
        from pyautoattack.examples.resnet import BasicBlock, ResNet
    except ImportError as exc:  # pragma: no cover - pyautoattack is a hard dependency
        raise MarginbenchError(
            "resnet18 needs the pyautoattack package; install it with `pip install pyautoattack`"
        ) from exc
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


ARCHITECTURES = {
    "small_cnn": lambda k: SmallCNN(num_classes=k),
    "small_cnn_wide": lambda k: SmallCNN(num_classes=k, width=32, hidden=128),
    "resnet18": _cifar_resnet18,
    "pair_cnn": lambda k: PairCNN(num_classes=k),
}


def build_architecture(name: str, num_classes: int) -> nn.Module:
    """Build an untrained network by name (see ``ARCHITECTURES``)."""
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise MarginbenchError(
            f"unknown architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    return factory(num_classes)
