"""Model zoo: registry of paper codes, loading (weights_only), feature/head split.

Attributes are imported on first use: the registry (pure data) must stay cheap for
`marginbench models` and the report, which never need torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "load_model": "marginbench.models.loading",
    "ModelEntry": "marginbench.models.registry",
    "checkpoint_path": "marginbench.models.sources",
    "custom_entry": "marginbench.models.registry",
    "list_models": "marginbench.models.registry",
    "paper_code": "marginbench.models.registry",
    "resolve_model": "marginbench.models.registry",
    "FeatureHeadSplit": "marginbench.models.split",
    "split_model": "marginbench.models.split",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'marginbench.models' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
