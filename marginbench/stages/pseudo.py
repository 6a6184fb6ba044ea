"""Stage: the pseudo-margin (Table 2).

The learner is fitted on the input margins of a held-out split of the training set, which go
through the same margin and output stages as the test images (their own cache entries), then
predicts a pseudo-margin for every evaluated test sample.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from marginbench.cache import Artifact, ArtifactStore, Writers, artifact_key, atomic_save_npz
from marginbench.jsonio import json_clean
from marginbench.models.handle import LazyModel
from marginbench.stages import Execution, data_key
from marginbench.stages.margins import MarginParams, compute_margins, margins_key
from marginbench.stages.outputs import compute_outputs, outputs_key
from marginbench.versions import PSEUDO_VERSION

log = logging.getLogger("marginbench")


@dataclass(frozen=True)
class PseudoParams:
    """The learner's settings (configs/pseudo) and the seed: what can change its output."""

    config: Mapping[str, Any]  # the whole configs/pseudo node, as the learner records it
    seed: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PseudoParams:
        return cls(OmegaConf.to_container(cfg.pseudo, resolve=True), int(cfg.seed))

    def key_params(self) -> dict[str, Any]:
        # "enabled" says whether the stage runs at all, not what it computes
        return {**{k: v for k, v in self.config.items() if k != "enabled"}, "seed": self.seed}

    @property
    def feature(self) -> str:
        """The learner's input: logits (authors' code) or penultimate features (paper text)."""
        return "logits" if self.config["variant"] == "code" else "features"


@dataclass(frozen=True)
class PseudoInputs:
    """What the pseudo stage builds on: the model, the held-out split and the test outputs."""

    model: LazyModel
    model_key: str
    holdout: Any  # data.EvalSet of held-out training images
    test_outputs: dict[str, np.ndarray]
    test_outputs_key: str
    dataset: str


def compute_pseudo(
    store: ArtifactStore, inputs: PseudoInputs, margin_params: MarginParams, params: PseudoParams, run: Execution
) -> Artifact:
    holdout = inputs.holdout
    holdout_key = data_key(holdout.images, holdout.labels, holdout.indices)
    meta = {"model_key": inputs.model_key, "data_key": holdout_key, "dataset": inputs.dataset, "split": "train-heldout"}
    train_margins_key = margins_key(margin_params, inputs.model_key, holdout_key)
    margins = compute_margins(
        store, train_margins_key, holdout.images, inputs.model, margin_params, run,
        {**meta, "config": margin_params.key_params()}, label="train-split margins",
    ).artifact
    assert margins is not None  # no sharding of the held-out split
    train_margins = margins.arrays()
    train_outputs_key = outputs_key(inputs.model_key, holdout_key, train_margins_key)
    train_outputs = compute_outputs(
        store, train_outputs_key, holdout.images, train_margins, inputs.model, run, meta, label="train-split outputs"
    ).arrays()
    key = artifact_key("pseudo", PSEUDO_VERSION, params.key_params(),
                       {"margins": train_margins_key, "outputs": train_outputs_key, "test": inputs.test_outputs_key})

    def compute() -> tuple[Writers, dict[str, Any]]:
        arrays, info = fit_and_predict(train_outputs, train_margins, inputs.test_outputs, params, run)
        return {"arrays.npz": lambda path: atomic_save_npz(path, arrays)}, {**meta, "pseudo": info}

    return store.get_or_compute("pseudo", key, compute, "pseudo-margin")


def fit_and_predict(
    train_outputs: dict[str, np.ndarray], train_margins: dict[str, np.ndarray],
    test_outputs: dict[str, np.ndarray], params: PseudoParams, run: Execution,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train the learner; return its test predictions + weights as arrays, and plain info."""
    from marginbench import pseudo

    n_train = int(len(train_margins["margin"]))
    log.info("pseudo-margin: training the %s variant on %d held-out samples (%s in)",
             params.config["variant"], n_train, params.feature)
    learner = pseudo.train_pseudo_margin(
        train_outputs[params.feature], train_margins["margin"], OmegaConf.create(dict(params.config)), run.device, params.seed
    )
    prediction = np.asarray(learner.predict(test_outputs[params.feature]), dtype=np.float64)
    state = learner.state_dict()
    # network weights as arrays; the rest (scales, normalisation, config) is small plain data
    arrays = {"test_prediction": prediction, **{f"network/{k}": v.numpy() for k, v in state["network"].items()}}
    info = {
        "variant": params.config["variant"],
        "n_train": n_train,
        "n_train_failures": int((~train_margins["success"]).sum()),
        "learner": json_clean({k: v for k, v in state.items() if k not in ("network", "history")}),
        "history": json_clean(state.get("history")),
    }
    return arrays, info
