"""Failure escalation (margins/escalate.py): unbroken samples go through other families."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import marginbench.config as config
from marginbench.config import AttackConfig
from marginbench.margins import build_estimator
from marginbench.margins.escalate import Escalation

FAMILIES = ["apgd_bisect", "fmn", "square", "fab_restarts"]
# small budgets: the presets are read from a temporary config tree, as in a real run
PRESETS = {
    "apgd_bisect": "name: apgd_bisect\nsteps: 5\noptions: {search_steps: 3}\n",
    "fmn": "name: fmn\nsteps: 10\n",
    "square": "name: square\nsteps: 300\noptions: {search_steps: 8}\n",
    "fab_restarts": "name: fab_targeted\nsteps: 5\nrestarts: 2\n",
    "fab": "name: fab\nsteps: 10\n",
}


@pytest.fixture
def presets(tmp_path, monkeypatch):
    (tmp_path / "attack").mkdir()
    for name, text in PRESETS.items():
        (tmp_path / "attack" / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)


class MaskedLinear(nn.Module):
    """Class 1 minus class 0 = sum(x) - 0.95 * 64 on 1x8x8 inputs (exact Linf margin at
    x = 0.9 everywhere: 0.05). Rows whose mean is below ``open_below`` see the true gradient;
    the others get a zero one (the value is computed on a detached input), so gradient
    attacks are blind there, while random noise up to radius 0.125 (apgd_bisect's largest
    eps here) moves sum(x) by ~0.6 < 3.2: only a search that follows the loss values breaks it."""

    def __init__(self, open_below: float = 0.0):
        super().__init__()
        self.open_below = open_below

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        masked = flat.detach().sum(1) + 0.0 * flat.sum(1)
        s = torch.where(flat.mean(1) < self.open_below, flat.sum(1), masked)
        return torch.stack([0.95 * 64 - s, s - 0.95 * 64], dim=1)


def _escalating(**kw) -> AttackConfig:
    return AttackConfig(name="fab", steps=10, escalate=list(FAMILIES), **kw)


def test_masked_gradients_are_broken_by_square(presets):
    model = MaskedLinear()
    x = torch.full((3, 1, 8, 8), 0.9)
    x[1] += 0.01 * torch.randn(1, 8, 8)
    y = model(x).argmax(1)
    assert (y == 0).all()
    plain = build_estimator(AttackConfig(name="fab", steps=10), "Linf")(model, x, y)
    assert not plain.success.any()  # FAB is blind here
    torch.manual_seed(0)
    est = build_estimator(_escalating(), "Linf")
    assert isinstance(est, Escalation)
    result = est(model, x, y)
    assert result.success.all()
    assert set(result.found_by) == {"square"}
    assert set(result.escalated) == {"apgd_bisect,fmn,square"}  # fab_restarts never needed
    # verified: the stored margin is the norm of a flipping point, not below the exact 0.05
    assert (result.margin >= 0.05 - 1e-6).all() and (result.margin < 0.2).all()
    assert (model(result.x_adv).argmax(1) != y).all()
    assert (result.n_forward > plain.n_forward).all() and (result.seconds > 0).all()


def test_unbreakable_sample_stays_a_failure_with_every_family_listed(presets):
    from tiny_models import ConstantModel

    model = ConstantModel()
    x = torch.rand(2, 1, 28, 28)
    y = model(x).argmax(1)
    result = build_estimator(_escalating(), "Linf")(model, x, y)
    assert not result.success.any() and np.isinf(result.margin).all()
    assert list(result.found_by) == ["", ""]
    assert list(result.escalated) == [",".join(FAMILIES)] * 2
    assert torch.equal(result.x_adv, x)


def test_samples_broken_by_the_base_are_untouched(presets):
    model = MaskedLinear(open_below=0.85)  # rows 0, 1 have gradients, rows 2, 3 do not
    x = torch.cat([torch.full((2, 1, 8, 8), 0.8), torch.full((2, 1, 8, 8), 0.9)])
    x[0] += 0.05 * torch.rand(1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    runs = []
    for cfg in (AttackConfig(name="fab", steps=10), _escalating()):
        torch.manual_seed(0)
        runs.append(build_estimator(cfg, "Linf")(model, x, y))
    plain, esc = runs
    base_ok = np.flatnonzero(plain.success)
    assert list(base_ok) == [0, 1]
    for name in ("margin", "success", "found_by", "n_forward", "n_backward", "seconds"):
        if name != "seconds":  # wall time differs between runs; the rest is bit-identical
            assert np.array_equal(getattr(plain, name)[base_ok], getattr(esc, name)[base_ok]), name
    assert torch.equal(plain.x_adv[base_ok], esc.x_adv[base_ok])
    assert list(esc.escalated[base_ok]) == ["", ""]
    assert esc.success[2:].all() and set(esc.found_by[2:]) == {"square"}


def test_no_escalate_keeps_the_margin_key_and_label():
    from marginbench.config import attack_label, attack_preset
    from marginbench.stages.margins import MarginParams

    fab_polish = attack_preset("fab_polish")
    assert "escalate" not in MarginParams(fab_polish, "Linf", 0).key_params()
    assert attack_label(fab_polish) == "fab_polish"
    assert attack_label(attack_preset("fab_polish_escalate")) == "fab_polish_escalate"


def test_the_progress_hook_and_log_name_each_escalation_family(presets, caplog):
    """The families get a hook of their own (progress.attach): before, the bar kept naming
    the base and the log said nothing while a family ran on the failures."""
    import logging

    from tqdm import tqdm

    from marginbench.progress import ESCALATION_PREFIX, PassProgress, attach

    model = MaskedLinear()
    x = torch.full((2, 1, 8, 8), 0.9)
    y = model(x).argmax(1)
    est = build_estimator(_escalating(), "Linf")
    seen: list[str] = []
    bar = tqdm(total=2, disable=True)
    tracker = PassProgress(bar, "margins", 100.0, logging.getLogger("marginbench.test"), heartbeat_s=0)

    def hook(member: str, forward_rows: int, backward_rows: int) -> None:
        if not seen or seen[-1] != member:
            seen.append(member)
        tracker(member, forward_rows, backward_rows)

    attach(est, hook)
    tracker.start_batch(0, 2)
    with caplog.at_level(logging.INFO, logger="marginbench"):
        result = est(model, x, y)
    tracker.finish_batch()
    assert set(result.found_by) == {"square"}
    # the base, then each family that ran (fab_restarts never did: square broke both)
    ran = ("apgd_bisect", "fmn", "square")
    assert seen == ["fab"] + [ESCALATION_PREFIX + f for f in ran]
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["margins: samples 0-1: running fab"] + [
        line for f in ran for line in (f"escalation: 2 of 2 samples still unbroken; trying {f}",
                                       f"margins: samples 0-1: running {ESCALATION_PREFIX}{f}")]
    assert tracker.expected == (result.n_forward.sum() + result.n_backward.sum()) / 2
