"""The pipeline's stages, one module each, in the order a run calls them.

    margins.py   input margins of the evaluated images (batched, resumable, shardable)
    outputs.py   logits and penultimate features of clean and adversarial images
    pseudo.py    the pseudo-margin learner (Table 2), on a held-out training split
    metrics.py   the per-sample table and summary of one run at one eps ("runs" record)

Each stage is a function of a small frozen parameter object and its inputs' artifacts;
its cache key hashes exactly that parameter object (plus a stage version and the input
keys), so what is not in the object cannot reach the key: eps, for instance, exists only in
:class:`~marginbench.stages.metrics.MetricsParams`, and an eps sweep reuses the margins.
How a stage runs (device, batch size, progress bars) is :class:`Execution`, never a key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Execution:
    """How work runs, not what it computes: never part of a cache key."""

    device: torch.device
    batch_size: int
    progress: bool = True


def data_key(images: torch.Tensor, labels: torch.Tensor, indices: object) -> str:
    """Identity of an evaluated image set: a hash of its pixels, labels and source indices."""
    import numpy as np

    from marginbench.cache import sha256_arrays

    return sha256_arrays(images.numpy(), labels.numpy(), np.asarray(indices))[:20]
