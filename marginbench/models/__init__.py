"""Model zoo: registry of paper codes, loading (weights_only), feature/head split."""

from marginbench.models.loading import load_model
from marginbench.models.registry import (
    ModelEntry,
    checkpoint_path,
    list_models,
    paper_code,
    resolve_model,
)
from marginbench.models.split import FeatureHeadSplit, split_model

__all__ = [
    "FeatureHeadSplit",
    "ModelEntry",
    "checkpoint_path",
    "list_models",
    "load_model",
    "paper_code",
    "resolve_model",
    "split_model",
]
