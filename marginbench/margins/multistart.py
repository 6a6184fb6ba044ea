"""Multi-start: targeted FAB from random points of the best ball, every candidate polished.

Why: against exact MILP margins (results/oracle, scripts/bench_oracle.py) a single
minimum-norm search stops in a local optimum: where it misses, the exact point flips to
another runner-up class (rank 2-4 at x) or lies in another orthant of the ball. Independent
searches towards each runner-up class, started at random points at the distance of the best
margin so far and each finished by the base estimator's polish and bisection, escape it:
measured in README "Exact margins and the oracle benchmark".

What, per sample with a verified adversarial of norm r (others are left alone):

- a *round* runs, for each of the ``targets`` strongest runner-up classes at x (by logit,
  or by first-order distance to their boundary with ``order`` "linear"; the class the best
  point already lands in counted last: ``target_classes``), one
  targeted pyautoattack FAB run of ``steps`` iterations from a random start at radius ~r
  (FAB's own random start, radius eps/2 with eps = 2 r rounded up to a power of 2 so that
  samples of similar margins share a call), then polish (refine.shrink) and bisection
  (refine.line_search) of the point it found: one *candidate* per target;
- the best verified candidate replaces the point when smaller;
- ``agreement``: how many searches (the base estimator's and every candidate so far) ended
  within 1 % (AGREE_RTOL) of the sample's best margin;
- up to ``rounds`` rounds; after each, a sample whose agreement reached ``agree`` stops:
  the budget goes to samples where the searches disagree.

The searches towards several targets run *stacked*: one call on the rows repeated once per
target (as many targets per call as fit in ``stack_rows`` rows; a radius group larger than
that runs one target per call) instead of one call per target. Every row's search is its
own (FAB, the polish and the bisection never mix rows), and in L-inf FAB's random starts are
the same numbers (one CPU draw of all the rows gives what one draw per target gave); the
margins differ only by floating-point sums over other batch sizes (fm_madry: 100/100 within
1e-5). Two things do change: L2 starts (randn) are drawn differently, and ``project`` runs
its rounds while *any* row of the call improves, so stacked rows hold it open for each
other (+1-2 % passes). It pays because the polish drops each row once it flips, and the calls
of one target alone shrink to a few rows, where the model's kernels are several times slower
per row (fm_madry: 1.1 ms per row at 1 row, 0.22 at 64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pyautoattack.fab_pt import FABAttack_PT
from torch import Tensor, nn

from marginbench.margins.counting import charged_to
from marginbench.margins.refine import line_search, project, shrink
from marginbench.margins.verify import is_adversarial, lp_norm

AGREE_RTOL = 0.01  # two margins "agree" when within 1 % (README: margin_agreement)
# A candidate replaces the best point only when smaller by more than this factor: the final
# verification (another batch composition) may step a boundary point back out by 0.1 %
# (base.BACKOFF_FACTORS), which must not make the result worse than the point it replaced.
MIN_GAIN = 1.001
# "logit": by logit at x; "linear": by the first-order distance to each class's boundary at
# x (MALT's ordering, arXiv 2407.02240): one gradient per ranked class, once per sample
TARGET_ORDERS = ("logit", "linear")
# Rows per stacked call (MultiStart.stack_rows). fm_madry, 100 images, fmn_polish_multistart_9,
# one thread, one process (results/bench/round7): one target per call 66.1 s, at most 256 /
# 512 / all 900 rows per call 49.8 / 49.2 / 52.3 s (an earlier run in the other order: 74.8,
# 256: 60.2, all: 48.3): 256 to all differ by less than the run-to-run noise, while the
# memory a call needs grows with its rows; 256 keeps it near a usual batch's.
STACK_ROWS = 256


@dataclass(frozen=True)
class Polish:
    """The base estimator's finishing steps, applied to every candidate."""

    rounds: int = 24
    steps: int = 5
    rho: float = 0.05
    min_rho: float = 0.0
    refine_steps: int = 10
    project_rounds: int = 0


@dataclass(frozen=True)
class MultiStart:
    """Budget (configs/attack options ``multistart_*``; see the module docstring)."""

    targets: int = 9
    rounds: int = 1
    steps: int = 20
    agree: int = 0  # 0: every sample runs every round
    seed: int = 0
    order: str = "logit"  # how runner-up classes are ranked: TARGET_ORDERS
    # rows per stacked call (see the module docstring): targets are stacked while the call
    # stays within this many rows (a group larger than this runs one target per call);
    # 0 = one target per call. Bounds the memory a call needs, like a batch size.
    stack_rows: int = STACK_ROWS



def _radius_groups(r: Tensor) -> list[tuple[float, Tensor]]:
    """Rows grouped by the power of 2 just above 2 r: (eps, rows) per group."""
    exps = torch.ceil(torch.log2((2 * r).clamp_min(1e-12))).to(torch.int64)
    return [(float(2.0 ** int(e)), (exps == e).nonzero().squeeze(1)) for e in torch.unique(exps)]


class _RowTargetFAB(FABAttack_PT):
    """pyautoattack's targeted FAB with one target *class per row*: FAB itself takes one
    logit rank for the whole batch (``target_class``), which cannot skip, per sample, the
    class the best point already lands in. Everything else is FAB's own iteration.

    FAB attacks only the rows whose clean prediction (its first ``_get_predicted_label``
    call) equals ``y`` and hands the gradient step that subset: the row targets follow the
    same subset. Why: a near-tie at x can flip when recomputed in another batch composition
    (stacked calls make many); that row is then returned unattacked, not a shape error."""

    def __init__(self, *args, row_targets: Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.row_targets = row_targets
        self.target_class = 2  # FAB reads it to rank classes at x; row_targets replaces that rank
        self._labels: Tensor | None = None  # y of the running attack_single_run, until FAB's first prediction
        self._kept_targets = row_targets

    def attack_single_run(self, x, y=None, use_rand_start=False, is_targeted=False):
        self._labels, self._kept_targets = y, self.row_targets
        try:
            return super().attack_single_run(x, y, use_rand_start=use_rand_start, is_targeted=is_targeted)
        finally:
            self._labels = None

    def _get_predicted_label(self, x):
        labels = super()._get_predicted_label(x)
        if self._labels is not None:  # FAB's first call: the rows it will attack
            self._kept_targets = self.row_targets[labels == self._labels.to(labels.device)]
            self._labels = None
        return labels

    def get_diff_logits_grads_batch_targeted(self, imgs, la, la_target):
        return super().get_diff_logits_grads_batch_targeted(imgs, la, self._kept_targets)


def _candidate(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, target: Tensor,
               steps: int, n_classes: int, polish: Polish) -> Tensor:
    """One targeted FAB run towards ``target`` (a class per row) from a random start at
    radius eps/2, polished and bisected.

    Every candidate is polished: FAB's own point is usually far (> 30 %) above the margin
    the polish then reaches, and polishing only the points within 1.3x of the best margin
    lost 7 points of "within 1 % of exact" on the oracle (86 % -> 79 %)."""
    fab = _RowTargetFAB(model, norm=norm, n_restarts=1, n_iter=steps, eps=eps, seed=0, targeted=True,
                        n_target_classes=n_classes - 1, device=x.device, verbose=False, row_targets=target)
    with torch.no_grad():
        point = fab.attack_single_run(x.clone(), y.clone(), use_rand_start=True, is_targeted=True)
    point = shrink(model, x, point, y, norm, rounds=polish.rounds, steps=polish.steps,
                   rho=polish.rho, min_rho=polish.min_rho)
    if polish.project_rounds > 0:
        point = project(model, x, point, y, norm, rounds=polish.project_rounds)
    return line_search(model, x, point, y, steps=polish.refine_steps)


def linear_distances(model: nn.Module, x: Tensor, y: Tensor, norm: str, pool: int | None = None) -> Tensor:
    """(rows, K) first-order distance from x to each class's boundary: ``_distances_and_logits``."""
    return _distances_and_logits(model, x, y, norm, pool)[0]


def _distances_and_logits(model: nn.Module, x: Tensor, y: Tensor, norm: str,
                          pool: int | None) -> tuple[Tensor, Tensor]:
    """((rows, K) first-order distance from x to the boundary between y and each class j:
    (f_y - f_j) / ||grad (f_y - f_j)||_dual (L1 for L-inf, L2 for L2); +inf for j = y.
    ``pool``: only the ``pool`` strongest runner-up classes by logit get a distance (the
    others +inf), so the cost is ``pool`` backward passes per row whatever K is (None: all
    K - 1). One forward pass and those backward passes per row, once: not per attack step.
    Also the logits at x (detached), which order the classes outside the pool."""
    z = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(z)
        n_classes = logits.shape[1]
        others = logits.detach().scatter(1, y.unsqueeze(1), -math.inf)
        n_ranked = n_classes - 1 if pool is None else max(1, min(pool, n_classes - 1))
        ranked = others.topk(n_ranked, dim=1).indices  # (rows, n_ranked): the k-th runner-up per row
        own = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        dist = torch.full(logits.shape, math.inf, dtype=torch.float64, device=x.device)
        dual = 1 if norm == "Linf" else 2
        for k in range(n_ranked):
            gap = own - logits.gather(1, ranked[:, k: k + 1]).squeeze(1)
            grad = torch.autograd.grad(gap.sum(), z, retain_graph=k < n_ranked - 1)[0].flatten(1)
            d = (gap.detach() / grad.norm(p=dual, dim=1).clamp_min(1e-12)).double()
            dist.scatter_(1, ranked[:, k: k + 1], d.unsqueeze(1))
    # never a distance for the predicted class, even where a -inf logit tied with it in topk
    dist.scatter_(1, y.unsqueeze(1), math.inf)
    return dist, logits.detach()


# The linear order ranks only this many runner-up classes (the strongest by logit): on
# ImageNet ranking all 999 would cost 999 gradients per sample, more than the whole search.
LINEAR_ORDER_POOL = 20


def linear_pool(targets: int) -> int:
    """Runner-up classes the linear order ranks for ``targets`` searches: always more than
    the searches need, so none of them falls back to the unranked classes."""
    return max(LINEAR_ORDER_POOL, targets + 1)


def runner_up_scores(model: nn.Module, x: Tensor, y: Tensor, order: str, norm: str,
                     pool: int | None = LINEAR_ORDER_POOL) -> Tensor:
    """(rows, K) float64, higher = searched first; -inf for the predicted class itself (and
    only for it: every runner-up is finite, so ``target_classes`` never picks the prediction).
    ``order`` "logit": the logits at x; "linear": minus the first-order distance to each
    class's boundary (``linear_distances``) among the ``pool`` strongest runner-ups by logit;
    the classes outside the pool come after all of them, by logit. The linear order ranks
    classes by how close their boundary is, not by how large their logit is: on the
    pyautoattack ResNet-18 a sample whose nearest boundary found is its 4th class by logit is
    2nd by distance. Computed once per sample (multistart), not per round."""
    if order != "linear":
        with torch.no_grad():
            score = model(x).double().nan_to_num(neginf=torch.finfo(torch.float64).min / 2)
        return score.scatter_(1, y.unsqueeze(1), -math.inf)
    dist, logits = _distances_and_logits(model, x, y, norm, pool)
    score = -dist
    ranked = torch.isfinite(score)
    ranked.scatter_(1, y.unsqueeze(1), True)  # the prediction is set last, not an unranked one
    if not bool(ranked.all()):  # fewer ranked than runner-ups (K > pool + 1): place the rest
        floor = torch.where(torch.isfinite(score), score, torch.full_like(score, math.inf)).amin(1, keepdim=True)
        # below every ranked runner-up, in logit order among themselves (rank 0 = largest logit)
        by_logit = logits.argsort(1, descending=True).argsort(1).double()
        score = torch.where(ranked, score, floor - 1 - by_logit)
    return score.scatter_(1, y.unsqueeze(1), -math.inf)


@torch.no_grad()
def target_classes(model: nn.Module, scores: Tensor, best: Tensor, n: int) -> Tensor:
    """(rows, n) classes to search towards: the runner-up classes by ``scores``
    (runner_up_scores), except that the class the best point already lands in comes last.
    Why: a targeted search towards it mostly finds the same point again; on the oracle,
    skipping it took one candidate from 72.5 % to 76.2 % within 1 % of exact (README "Exact
    margins and the oracle benchmark")."""
    landed = model(best).argmax(1)
    score = scores.clone().scatter_(1, landed.unsqueeze(1), torch.finfo(scores.dtype).min)  # last of the runner-ups
    return score.argsort(1, descending=True)[:, :n]


def _target_chunks(n_targets: int, n_rows: int, stack_rows: int) -> list[range]:
    """Targets searched together in one stacked call: as many as fit in ``stack_rows`` rows
    (at least one per call; all in one call when they fit; ``stack_rows`` 0: one each), in
    as few calls as that allows, the largest as small as that allows (9 targets, 4 fit per
    call: 3, 3, 3 rather than 4, 4, 1)."""
    fit = 1 if stack_rows <= 0 else max(1, stack_rows // max(n_rows, 1))
    calls = -(-n_targets // fit)
    per = -(-n_targets // calls)
    return [range(t, min(n_targets, t + per)) for t in range(0, n_targets, per)]


def _round(model: nn.Module, x: Tensor, y: Tensor, best: Tensor, r: Tensor, norm: str, budget: MultiStart,
           scores: Tensor, polish: Polish) -> Tensor:
    """One candidate per target for every row; returns (targets, rows) candidate norms
    (+inf where a candidate does not flip the prediction) and updates best / r in place."""
    n_classes = scores.shape[1]
    n_targets = max(1, min(budget.targets, n_classes - 1))
    norms = torch.full((n_targets, x.shape[0]), math.inf, dtype=torch.float64, device=x.device)
    targets = target_classes(model, scores, best, n_targets)
    for eps, rows in _radius_groups(r):
        for chunk in _target_chunks(n_targets, rows.numel(), budget.stack_rows):
            # rows repeated once per target of the chunk, target-major: row i of target t is
            # stacked row t * len(rows) + i (the cost counter charges each to its sample)
            stacked = rows.repeat(len(chunk))
            xs, ys = x[stacked], y[stacked]
            aims = targets[rows][:, chunk.start: chunk.stop].T.reshape(-1)
            with charged_to(model, stacked):
                cand = _candidate(model, xs, ys, norm, eps, aims, budget.steps, n_classes, polish)
                flipped = is_adversarial(model, cand, ys)
            size = lp_norm(cand - xs, norm).to(x.device).double()
            size = torch.where(flipped & (size > 0), size, torch.full_like(size, math.inf))
            size, cand = size.reshape(len(chunk), -1), cand.reshape(len(chunk), rows.numel(), *x.shape[1:])
            for i, t in enumerate(chunk):  # in target order, as if searched one after another
                norms[t, rows] = size[i]
                better = size[i] * MIN_GAIN < r[rows]
                best[rows[better]] = cand[i][better]
                r[rows[better]] = size[i][better]
    return norms


def multistart(model: nn.Module, x: Tensor, x_adv: Tensor, y_pred: Tensor, norm: str, budget: MultiStart,
               polish: Polish) -> tuple[Tensor, np.ndarray]:
    """(points never worse than ``x_adv``, agreement per sample); see the module docstring.
    Rows whose ``x_adv`` does not flip the prediction are returned unchanged, agreement 0."""
    adversarial = is_adversarial(model, x_adv, y_pred)
    idx = adversarial.nonzero().squeeze(1)
    agreement = np.zeros(x.shape[0], dtype=np.int64)
    if idx.numel() == 0:
        return x_adv, agreement
    xs, ys, best = x[idx], y_pred[idx], x_adv[idx].clone()
    with charged_to(model, idx), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(budget.seed)
        scores = runner_up_scores(model, xs, ys, budget.order, norm, linear_pool(budget.targets))
        r = lp_norm(best - xs, norm).to(x.device).double()
        found = [r.clone()]  # every search's margin, the base estimator's first
        todo = torch.arange(idx.numel(), device=x.device)
        for _ in range(max(budget.rounds, 0)):
            if todo.numel() == 0:
                break
            sub_best, sub_r = best[todo], r[todo]
            with charged_to(model, todo):
                norms = _round(model, xs[todo], ys[todo], sub_best, sub_r, norm, budget, scores[todo], polish)
            best[todo], r[todo] = sub_best, sub_r
            full = torch.full((norms.shape[0], idx.numel()), math.inf, dtype=torch.float64, device=x.device)
            full[:, todo] = norms
            found.extend(full)
            agree = agreement_count(torch.stack(found), r)
            todo = todo[agree[todo] < budget.agree] if budget.agree > 0 else todo
    agreement[idx.cpu().numpy()] = agreement_count(torch.stack(found), r).cpu().numpy()
    out = x_adv.clone()
    out[idx] = best
    return out, agreement


def agreement_count(found: Tensor, r: Tensor) -> Tensor:
    """(searches, rows) margins -> per row how many are within AGREE_RTOL of r (also the
    ensemble's count of agreeing members)."""
    return (torch.isfinite(found) & (found <= r * (1 + AGREE_RTOL))).sum(0)
