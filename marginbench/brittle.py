"""BrittleDetector: a classifier wrapped with its calibrated logit-margin threshold.

``detector.json`` carries everything needed to trust a flag later: the score, the threshold,
eps and norm it was calibrated for, the recall guarantee (target_recall, delta), which samples
calibrated it, and the sha256 of the model's weights, so the threshold is never applied to a
different model (thresholds are model-specific: logit scales differ between models).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from marginbench import __version__, detect
from marginbench.errors import MarginbenchError


def weights_sha256(model_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over the state dict (names, dtypes, shapes, values) in key order.

    Hashing the tensors, not a file, makes the hash independent of how the weights were
    saved or loaded, and of the device they are on.
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class DetectorSpec:
    threshold: float
    eps: float
    norm: str
    target_recall: float
    delta: float
    n_calibration: int
    n_calibration_nonrobust: int
    calibration_indices: list[int]
    weights_sha256: str
    score: str = "logit_margin"
    rule: str = "order statistic, smallest r with BinomCDF(r-1; n1, target) >= 1-delta"
    marginbench_version: str = __version__
    # the model config it was calibrated for (`marginbench detect` loads it when no model= is given)
    model: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    # held-out attacked samples (disjoint from the calibration ones): realised recall and FPR
    test: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> DetectorSpec:
        try:
            spec = cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise MarginbenchError(f"cannot read detector file {path}: {exc}") from None
        problem = spec.problem()
        if problem:
            raise MarginbenchError(f"detector file {path}: {problem}; recalibrate with `marginbench calibrate`")
        return spec

    def problem(self) -> str | None:
        """What makes this spec unusable, or None. Why: JSON gives any type to any field, and
        a threshold of NaN flagged nothing, +inf everything, a delta of 0 promised a
        guarantee no calibration gives, all silently (round 10); a string threshold or
        model crashed after the model was loaded."""
        def number(v: Any) -> bool:  # JSON ints may exceed int64 (np.isfinite raised on 2**64)
            return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and math.isfinite(v))

        def count(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        checks = [
            ("threshold", number(self.threshold), "a finite number (a logit margin)"),
            ("eps", number(self.eps) and self.eps > 0, "a finite number > 0"),
            ("norm", self.norm in ("Linf", "L2"), "Linf or L2"),
            ("target_recall", number(self.target_recall) and 0 < self.target_recall < 1, "a number in (0, 1)"),
            ("delta", number(self.delta) and 0 < self.delta < 1, "a number in (0, 1)"),
            ("n_calibration", count(self.n_calibration) and self.n_calibration > 0, "an integer > 0"),
            ("n_calibration_nonrobust", count(self.n_calibration_nonrobust), "an integer >= 0"),
            ("calibration_indices", isinstance(self.calibration_indices, list)
             and all(count(i) for i in self.calibration_indices), "a list of sample indices"),
            ("weights_sha256", isinstance(self.weights_sha256, str) and len(self.weights_sha256) == 64
             and all(c in "0123456789abcdef" for c in self.weights_sha256), "a sha256 hex digest"),
            ("score", self.score == "logit_margin", "logit_margin (the only score a detector applies)"),
            ("model", isinstance(self.model, dict), "a mapping (the model config)"),
            ("dataset", self.dataset is None or isinstance(self.dataset, str), "a dataset name or null"),
            ("test", isinstance(self.test, dict), "a mapping (the held-out figures)"),
            ("extra", isinstance(self.extra, dict), "a mapping"),
        ]
        for name, ok, need in checks:
            if not ok:
                return f"{name} must be {need}; got {getattr(self, name)!r}"
        return None


def calibrate_from_samples(
    samples: pd.DataFrame, eps: float, norm: str, weights_hash: str, *, target_recall: float = 0.95,
    delta: float = 0.05, n_calibration: int | None = None, seed: int = 0, **fields: Any,
) -> DetectorSpec:
    """Calibrate on a run's per-sample table (all rows, or a seeded random ``n_calibration``);
    ``fields``: further DetectorSpec fields (model, dataset, test)."""
    n = len(samples)
    rows = np.arange(n) if n_calibration is None else np.sort(
        np.random.default_rng(seed).choice(n, size=min(int(n_calibration), n), replace=False))
    sub = samples.iloc[rows]
    cal = detect.calibrate_threshold(sub["input_margin"].to_numpy(np.float64),
                                     sub["logit_margin"].to_numpy(np.float64), eps,
                                     target_recall=target_recall, delta=delta)
    return DetectorSpec(
        threshold=cal.threshold, eps=float(eps), norm=str(norm), target_recall=target_recall,
        delta=delta, n_calibration=int(rows.size), n_calibration_nonrobust=cal.n_nonrobust,
        calibration_indices=[int(i) for i in sub["index"]], weights_sha256=weights_hash,
        extra={"rank": cal.rank, "confidence": cal.confidence, "seed": seed}, **fields,
    )


class BrittleDetector(nn.Module):
    """``forward(x) -> (logits, brittle, score)``: brittle iff logit margin <= threshold."""

    def __init__(self, model: nn.Module, spec: DetectorSpec):
        super().__init__()
        actual = weights_sha256(model)
        if actual != spec.weights_sha256:
            raise MarginbenchError(
                f"detector was calibrated for weights {spec.weights_sha256[:12]}, this model has "
                f"{actual[:12]}; recalibrate it for this model with `marginbench calibrate`"
            )
        self.model = model
        self.spec = spec
        self.register_buffer("threshold", torch.tensor(float(spec.threshold)))

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> BrittleDetector:
        """The detector of ``detector.json`` around ``model``; refuses other weights."""
        return cls(model, DetectorSpec.load(Path(path)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        top2 = logits.topk(2, dim=1).values
        score = top2[:, 0] - top2[:, 1]
        return logits, score <= self.threshold, score
