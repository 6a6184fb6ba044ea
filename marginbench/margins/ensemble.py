"""Ensembles: run several estimators and keep, per sample, the smallest verified margin.

Per sample, ``agreement`` counts the members whose margin is within 1 % (multistart.AGREE_RTOL) of
that minimum: independent searches that land on the same margin are evidence (not proof)
that it is not a lone local optimum."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor, nn

from marginbench.margins.base import (
    Estimator,
    MarginBatch,
    check_inputs,
    check_predictions,
    settle_status,
)
from marginbench.margins.counting import CountingModel, frozen_parameters
from marginbench.margins.multistart import agreement_count


class Ensemble:
    """Members run one after the other on the same batch; per sample the minimum margin
    wins (the first member on ties) and ``found_by`` names it. Costs and seconds add up."""

    def __init__(self, name: str, members: list[Estimator], norm: str):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.name = name
        self.members = members
        self.norm = norm

    def __repr__(self) -> str:
        return f"Ensemble({self.name}, members={self.members})"

    def __call__(self, model: nn.Module, x: Tensor, y_pred: Tensor, _checked: bool = False) -> MarginBatch:
        check_inputs(model, x, y_pred, self.norm)
        n = x.shape[0]
        pre_fwd = np.zeros(n, dtype=np.int64)
        pre_sec = 0.0
        if not _checked and n:
            counting = CountingModel(model, n)
            start = time.perf_counter()
            with frozen_parameters(model):
                check_predictions(counting, x, y_pred)
            pre_sec = time.perf_counter() - start
            pre_fwd = counting.forward_counts.numpy().copy()
        results = [m(model, x, y_pred, _checked=True) for m in self.members]
        margins = np.stack([r.margin for r in results])  # (M, B)
        winner = np.argmin(margins, axis=0)  # first minimum on ties; all-inf -> 0 (a failure)
        rows = np.arange(n)
        margin = margins[winner, rows]
        success = np.stack([r.success for r in results])[winner, rows]
        found_by = np.stack([r.found_by.astype(object) for r in results])[winner, rows]
        found_by = np.where(success, found_by, "").astype(str)
        x_adv = torch.stack([r.x_adv for r in results])[torch.as_tensor(winner), torch.as_tensor(rows)]
        margin = np.where(success, margin, np.inf).astype(np.float64)
        agreement = agreement_count(torch.from_numpy(margins), torch.from_numpy(margin)).numpy().astype(np.int64)
        # every member's lower bound is certified, so the largest holds (attacks give 0)
        lower = np.minimum(np.max([r.lower_bound for r in results], axis=0), margin)
        certified = np.any([r.status != "attack" for r in results], axis=0)
        return MarginBatch(
            margin=margin,
            success=success.astype(bool),
            found_by=found_by,
            x_adv=x_adv,
            n_forward=pre_fwd + sum(r.n_forward for r in results),
            n_backward=sum(r.n_backward for r in results).astype(np.int64),
            seconds=pre_sec / max(n, 1) + sum(r.seconds for r in results),
            lower_bound=lower,
            status=settle_status(margin, lower, certified),
            agreement=agreement,
        )

