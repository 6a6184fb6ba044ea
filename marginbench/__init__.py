"""marginbench: margin consistency of robust image classifiers.

Python API (the CLI is a shell around the same calls)::

    import marginbench
    result = marginbench.run("model=aa_resnet18", "dataset=npz", "dataset.path=imgs.npz", n_samples=100)
    result.summary["kendall_tau"], result.samples.head()
    cfg = marginbench.compose(model="XU80", eps="4/255")    # the same config the CLI builds
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from marginbench.pipeline import RunResult


def _to_overrides(overrides: tuple[str, ...], keys: dict[str, Any]) -> list[str]:
    items = list(overrides)
    for key, value in keys.items():
        if value is None:
            text = "null"
        elif isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, (list, tuple)):
            text = "[" + ",".join(str(v) for v in value) + "]"
        else:
            text = str(value)
        items.append(f"{key}={text}")
    return items


def compose(*overrides: str, **keys: Any) -> DictConfig:
    """The validated config for these overrides (``"model=XU80"`` strings and/or keywords)."""
    from marginbench import overrides as cli_overrides

    items = cli_overrides.expand_model_shorthand(_to_overrides(overrides, keys))
    cli_overrides.validate_overrides(items)
    return cli_overrides.compose(items)


def run(*overrides: str, run_dir: str | Path | None = None, **keys: Any) -> RunResult:
    """Run the pipeline; returns a RunResult with ``.summary`` (dict) and ``.samples``
    (one row per sample). Cached stages are reused exactly as by the CLI."""
    from marginbench import pipeline

    return pipeline.run(compose(*overrides, **keys), run_dir)


def __getattr__(name: str) -> Any:
    # BrittleDetector needs torch: import it on first use so `import marginbench` stays light
    if name in ("BrittleDetector", "DetectorSpec"):
        from marginbench import brittle

        return getattr(brittle, name)
    raise AttributeError(f"module 'marginbench' has no attribute {name!r}")


__all__ = ["run", "compose", "BrittleDetector", "DetectorSpec", "__version__"]
