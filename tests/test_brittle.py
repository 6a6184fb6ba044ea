"""BrittleDetector: flags match the threshold, detector.json round-trips, other weights refused."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from marginbench.brittle import (
    BrittleDetector,
    DetectorSpec,
    calibrate_from_samples,
    weights_sha256,
)
from marginbench.errors import MarginbenchError


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def test_detector_flags_and_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    d_in = rng.random(300)
    samples = pd.DataFrame({"index": np.arange(300) + 1000, "input_margin": d_in,
                            "logit_margin": 5 * d_in})
    model = _model()
    spec = calibrate_from_samples(samples, 0.4, "Linf", weights_sha256(model), n_calibration=200)
    assert spec.n_calibration == 200 and min(spec.calibration_indices) >= 1000
    # perfectly consistent score: λ is a non-robust sample's margin, so λ/5 <= eps
    assert spec.threshold <= 5 * 0.4
    loaded = DetectorSpec.load(spec.save(tmp_path / "detector.json"))
    assert loaded == spec
    det = BrittleDetector(model, loaded)
    x = torch.randn(16, 4)
    logits, brittle, score = det(x)
    top2 = model(x).topk(2, 1).values
    assert torch.equal(brittle, (top2[:, 0] - top2[:, 1]) <= spec.threshold)
    assert torch.allclose(logits, model(x)) and score.shape == (16,)


def test_other_weights_are_refused():
    spec = DetectorSpec(threshold=1.0, eps=0.1, norm="Linf", target_recall=0.95, delta=0.05,
                        n_calibration=1, n_calibration_nonrobust=1, calibration_indices=[0],
                        weights_sha256=weights_sha256(_model(0)))
    with pytest.raises(MarginbenchError, match="recalibrate"):
        BrittleDetector(_model(1), spec)
