"""Failure escalation: samples the estimator leaves unbroken go through other attack families.

A failure of one attack is not evidence of robustness: gradient masking (logit pairing,
non-differentiable steps) blinds FAB while the boundary is close. ``attack.escalate`` lists
families, each a configs/attack/<family>.yaml preset, e.g. ``[apgd_bisect, fmn, square,
fab_restarts]``. :class:`Escalation` runs the base estimator, then each family in order on
the samples still unbroken only (and stops once none is left):

- a family's result is verified like any estimator's (verify.py); the stored margin is
  the verified norm and ``found_by`` names the family;
- its passes and seconds are added to the escalated samples' cost columns;
- ``escalated`` records, per sample, the families tried ("" where the base estimator
  succeeded), so a sample that survives all of them (margin +inf, success False) says
  what it survived.

Samples the base estimator broke are never touched: their results are bit-identical to a
run without escalation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from marginbench.config import attack_preset
from marginbench.errors import MarginbenchError
from marginbench.margins.base import (
    OWN_OPTIONS,
    AttackSpec,
    Estimator,
    MarginBatch,
    MarginEstimator,
)

log = logging.getLogger("marginbench")


@dataclass(frozen=True)
class Finish:
    """The base estimator's own finishing steps (polish rounds, bisection), applied to the
    escalation families' points too: a family stops at the first point that flips the class,
    which alone is loose (on fm_alp's failures APGD's median margin 0.224, max 1.0; polished
    and bisected 0.189, max 0.549, for 1.6x its time)."""

    refine: bool = False
    options: dict = field(default_factory=dict)

    def polish_options(self) -> dict:
        return {k: v for k, v in self.options.items() if k in OWN_OPTIONS and k != "seed"}


def family_spec(family: str, finish: Finish = Finish()) -> AttackSpec:
    """The budget of ``family`` (its configs/attack preset, read from the YAML only), with
    the base estimator's finishing steps."""
    preset = attack_preset(family)
    if preset.get("members") or preset.get("escalate"):
        raise MarginbenchError(f"escalation family {family!r} must be a single attack (no members, no escalate)")
    return AttackSpec(str(preset["name"]), steps=int(preset["steps"]), restarts=int(preset["restarts"]),
                      refine=bool(preset["refine"]) or finish.refine,
                      options={**dict(preset["options"] or {}), **finish.polish_options()})


class Escalation:
    """``base`` first, then each family on what is still unbroken (see the module docstring)."""

    def __init__(self, base: MarginEstimator, families: Sequence[Estimator], norm: str):
        self.base = base
        self.families = list(families)
        self.norm = norm
        self.name = getattr(base, "name", "escalate")

    @property
    def members(self) -> list:
        # progress.py sizes its bar from the members' budgets: the base's alone, since the
        # families only run on the (usually few) failures.
        return list(getattr(self.base, "members", [self.base]))

    def __repr__(self) -> str:
        return f"Escalation({self.base!r}, families={[f.name for f in self.families]})"

    def __call__(self, model: nn.Module, x: Tensor, y_pred: Tensor, _checked: bool = False) -> MarginBatch:
        result = self.base(model, x, y_pred, _checked=_checked)
        tried = [[] for _ in range(len(result))]
        for family in self.families:
            left = np.flatnonzero(~result.success)
            if left.size == 0:
                break
            # how many: the progress bar only names the family that is running
            log.info("escalation: %d of %d samples still unbroken; trying %s", left.size, len(result), family.name)
            idx = torch.as_tensor(left, device=x.device)
            # the base already checked y_pred against the model on the whole batch
            sub = family(model, x[idx], y_pred[idx], _checked=True)
            _merge(result, left, sub, family.name)
            for i in left:
                tried[i].append(family.name)
        result.escalated = np.array([",".join(t) for t in tried], dtype=str)
        return result


def _merge(result: MarginBatch, left: np.ndarray, sub: MarginBatch, name: str) -> None:
    """Write a family's verified successes on rows ``left`` into ``result``; every row it
    ran on pays its passes and seconds."""
    won = left[sub.success]
    result.margin[won] = sub.margin[sub.success]
    result.success[won] = True
    result.agreement[won] = sub.agreement[sub.success]
    found_by = result.found_by.astype(object)
    found_by[won] = name
    result.found_by = found_by.astype(str)
    result.x_adv[torch.as_tensor(won, dtype=torch.long)] = sub.x_adv[torch.as_tensor(sub.success)]
    result.n_forward[left] += sub.n_forward
    result.n_backward[left] += sub.n_backward
    result.seconds[left] += sub.seconds


def wrap(base: MarginEstimator, families: Sequence[str], norm: str,
         make: Callable[[str, AttackSpec, str, str], Estimator], finish: Finish = Finish()) -> MarginEstimator:
    """``base`` escalated through ``families`` (preset names); ``make(name, spec, norm, label)``
    builds a single estimator (margins.__init__._single, passed in to avoid an import cycle)."""
    families = [str(f) for f in families]
    if not families:
        return base
    dupes = sorted({f for f in families if families.count(f) > 1})
    if dupes:
        raise MarginbenchError(f"attack.escalate lists {dupes} more than once")
    built = []
    for family in families:
        spec = family_spec(family, finish)
        built.append(make(spec.name, spec, norm, family))
    return Escalation(base, built, norm)
