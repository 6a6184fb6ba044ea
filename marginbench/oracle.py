"""Oracle networks: small ReLU classifiers whose exact L-inf margins are known.

``scripts/make_oracle.py`` trains them and writes ``results/oracle/<net>/``:

- ``weights.pt``: the state dict (loads with ``torch.load(weights_only=True)``);
- ``samples.npz``: the evaluated images (float32 NCHW 1x14x14 in [0,1]), labels and
  Fashion-MNIST test-set indices;
- ``margins.csv``: one row per sample: ``index``, ``label``, ``pred``, the exact
  ``margin``, the certified ``lower_bound`` and the ``status`` of attack=exact, and how the
  solver got there.

The networks see Fashion-MNIST averaged over 2x2 blocks (14x14, :func:`downsample`): a
MILP over 196 inputs is about 3x faster than over 784 (measured), which is what keeps the
exact margins at seconds per sample. ``samples.npz`` works as a dataset of its own:
``marginbench run model=custom model.factory=marginbench.oracle:mlp_std
model.weights=results/oracle/mlp_std/weights.pt dataset=npz
dataset.path=results/oracle/mlp_std/samples.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from marginbench.errors import MarginbenchError

ORACLE_DIR = Path(__file__).resolve().parents[1] / "results" / "oracle"


def mlp_std() -> nn.Sequential:
    """196-32-16-10 MLP (48 ReLUs); trained with plain cross-entropy."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(196, 32), nn.ReLU(),
        nn.Linear(32, 16), nn.ReLU(),
        nn.Linear(16, 10),
    )


def cnn_pgd() -> nn.Sequential:
    """Conv 5x5 stride 3 (4 channels, 4x4) - 32 - 10 (96 ReLUs); PGD-adversarially trained."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )


ARCHITECTURES = {"mlp_std": mlp_std, "cnn_pgd": cnn_pgd}


def downsample(images: torch.Tensor) -> torch.Tensor:
    """float32 NCHW 28x28 in [0,1] -> the 14x14 mean of each 2x2 block (still in [0,1])."""
    return F.avg_pool2d(images, 2)


@dataclass
class Oracle:
    name: str
    model: nn.Module  # eval mode, CPU
    images: torch.Tensor  # float32 (N, 1, 14, 14)
    labels: torch.Tensor  # int64 (N,)
    table: pd.DataFrame  # margins.csv, row i <-> images[i]


def load_oracle(path: str | Path) -> Oracle:
    """``results/oracle/<net>`` (or a bare net name) -> :class:`Oracle`."""
    folder = Path(path)
    if not folder.exists() and (ORACLE_DIR / str(path)).exists():
        folder = ORACLE_DIR / str(path)
    if folder.name not in ARCHITECTURES:
        raise MarginbenchError(
            f"{folder} is not an oracle folder; use results/oracle/<net>, net one of {', '.join(ARCHITECTURES)}"
        )
    files = [folder / f for f in ("weights.pt", "samples.npz", "margins.csv")]
    if not all(f.exists() for f in files):
        raise MarginbenchError(f"{folder} lacks weights.pt, samples.npz or margins.csv; run scripts/make_oracle.py")
    model = ARCHITECTURES[folder.name]()
    model.load_state_dict(torch.load(files[0], map_location="cpu", weights_only=True))
    with np.load(files[1]) as data:
        images, labels = torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]).long()
    table = pd.read_csv(files[2], keep_default_na=False)
    return Oracle(folder.name, model.eval(), images, labels, table)
