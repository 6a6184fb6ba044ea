"""Stage: logits and penultimate features of the clean and the adversarial images.

Its numbers depend only on the model, the images and the adversarial examples of the margin
stage, so its key is made of those three input keys and nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from marginbench.cache import Artifact, ArtifactStore, Writers, artifact_key, atomic_save_npz
from marginbench.models.handle import LazyModel
from marginbench.progress import progress_bar
from marginbench.stages import Execution
from marginbench.versions import OUTPUTS_VERSION


def outputs_key(model_key: str, data_key: str, margins_key: str) -> str:
    return artifact_key("outputs", OUTPUTS_VERSION, {}, {"model": model_key, "data": data_key, "margins": margins_key})


def compute_outputs(
    store: ArtifactStore,
    key: str,
    images: torch.Tensor,
    margins: dict[str, np.ndarray],
    model: LazyModel,
    run: Execution,
    meta: dict[str, Any],
    label: str = "outputs",
) -> Artifact:
    def compute() -> tuple[Writers, dict[str, Any]]:
        arrays = forward_outputs(images, margins, model.split(), run, label)
        return {"arrays.npz": lambda path: atomic_save_npz(path, arrays)}, meta

    return store.get_or_compute("outputs", key, compute, label)


def forward_outputs(
    images: torch.Tensor, margins: dict[str, np.ndarray], split: Any, run: Execution, label: str
) -> dict[str, np.ndarray]:
    """Features and logits of clean and adversarial images, the feature distance between
    them (nan where the attack failed) and the linear head's weights."""
    x_adv_all = torch.from_numpy(margins["x_adv"])
    chunks: dict[str, list[np.ndarray]] = {"logits": [], "features": [], "logits_adv": [], "features_adv": []}
    n = images.shape[0]
    with torch.no_grad(), progress_bar(total=n, desc=label, enabled=run.progress) as bar:
        for start in range(0, n, run.batch_size):
            stop = min(start + run.batch_size, n)
            for suffix, batch in (("", images[start:stop]), ("_adv", x_adv_all[start:stop])):
                features = split.features(batch.to(run.device))
                logits = split.head(features)
                chunks["features" + suffix].append(features.float().cpu().numpy())
                chunks["logits" + suffix].append(logits.float().cpu().numpy())
            bar.update(stop - start)
    arrays = {name: np.concatenate(values) for name, values in chunks.items()}
    feature_distance = np.linalg.norm(arrays["features"] - arrays["features_adv"], axis=1).astype(np.float64)
    feature_distance[~margins["success"]] = np.nan
    arrays["feature_distance"] = feature_distance
    arrays["head_weight"] = split.head.weight.detach().float().cpu().numpy()
    bias = split.head.bias
    arrays["head_bias"] = (
        bias.detach().float().cpu().numpy() if bias is not None else np.zeros(arrays["head_weight"].shape[0], np.float32)
    )
    return arrays
