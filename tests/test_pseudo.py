"""Pseudo-margin learner: learns a monotone synthetic target, deterministic, cacheable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marginbench import metrics
from marginbench.config import PseudoConfig
from marginbench.errors import MarginbenchError
from marginbench.pseudo import PseudoMarginModel, build_network, train_pseudo_margin


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny networks: thread start-up dominates, and the test machine has 2 shared cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


W = np.random.default_rng(123).normal(size=10)


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, W.size)).astype(np.float32)
    margin = 0.001 + 0.2 / (1 + np.exp(-(x @ W) / 2))  # monotone in a linear score
    return x, margin


def _cfg(variant):
    return PseudoConfig(enabled=True, variant=variant, epochs=150, lr=1e-2, hidden=32)


@pytest.mark.parametrize("variant", ["code", "text"])
def test_learns_monotone_target(variant):
    x, m = _data()
    m_with_fail = m.copy()
    m_with_fail[:5] = np.inf  # failed attacks are excluded from training
    model = train_pseudo_margin(x, m_with_fail, _cfg(variant), device="cpu", seed=0)
    h = model.history
    assert h["n_excluded_failed"] == 5 and h["n_train"] + h["n_val"] == 395
    assert h["final_train_mse"] < 0.2 * h["initial_train_mse"]
    assert h["val_mse"][-1] < h["val_mse"][0]
    x_new, m_new = _data(300, seed=9)  # unseen samples
    pred = model.predict(x_new)
    assert pred.shape == (300,) and np.all(pred >= 0)
    assert metrics.kendall_tau(m_new, pred) > 0.9


def test_code_variant_architecture_matches_authors():
    net = build_network("code", 10, 512)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "Linear", "ReLU", "Linear", "ReLU", "Linear", "Sigmoid"]
    assert net[0].in_features == 10 and net[5].out_features == 1
    text = [type(m).__name__ for m in build_network("text", 32, 512)]
    assert text.count("Linear") == 5 and text[-1] == "Sigmoid"


def test_deterministic_and_state_roundtrip(tmp_path):
    x, m = _data(200)
    cfg = PseudoConfig(variant="text", epochs=20, lr=1e-3, hidden=32)
    a = train_pseudo_margin(x, m, cfg, device="cpu", seed=3)
    b = train_pseudo_margin(x, m, cfg, device="cpu", seed=3)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    torch.save(a.state_dict(), tmp_path / "p.pt")
    c = PseudoMarginModel.from_state(torch.load(tmp_path / "p.pt", weights_only=False))
    np.testing.assert_allclose(c.predict(x), a.predict(x), rtol=1e-6)
    assert c.history["train_mse"] == a.history["train_mse"]


def test_target_scaling_for_large_margins():
    x, m = _data(200)
    model = train_pseudo_margin(x, m * 100, PseudoConfig(epochs=5, hidden=16), seed=0)
    assert model.target_scale == pytest.approx(np.sqrt((m * 100).max()) / 0.9)
    small = train_pseudo_margin(x, m, PseudoConfig(epochs=5, hidden=16), seed=0)
    assert small.target_scale == 1.0  # sqrt(margin) < 0.9: unscaled, as in the authors' code


def test_errors():
    x, m = _data(50)
    with pytest.raises(MarginbenchError):
        train_pseudo_margin(x, np.full(50, np.inf), PseudoConfig(epochs=1), seed=0)
    with pytest.raises(MarginbenchError):
        train_pseudo_margin(x, m, PseudoConfig(epochs=1, variant="bogus"), seed=0)
    model = train_pseudo_margin(x, m, PseudoConfig(epochs=1, hidden=8), seed=0)
    with pytest.raises(MarginbenchError):
        model.predict(np.zeros((3, 4)))
