"""FAB (pyautoattack) adapters.

``fab`` reproduces what the paper's authors ran: ``AutoAttack(model, norm, eps=np.inf,
version='custom', attacks_to_run=['fab'])`` on the *predicted* labels. That is
``FABAttack_PT(model, norm, n_restarts=5, n_iter=100, eps=inf, alpha_max=0.1, eta=1.05,
beta=0.9).perturb(x, y_pred)``, untargeted. "Unbounded" works like this in pyautoattack:
``perturb`` accepts a restart's result when it flips the label and its norm is
``<= eps`` (never false with eps = inf); a sample on which every run fails keeps
``x_adv = x``. Restarts only touch samples still unbroken and start from a random point at
radius ``min(1e10, eps) / 2``, clipped to the box. marginbench records those failures as
failures (verify.py), not margin 0.

The loop over restarts below is ``FABAttack.perturb`` (untargeted branch) line by line,
calling the library's own ``attack_single_run``; it is re-written only to tell the cost
counter which samples each restart works on. tests/test_margins.py checks that it returns
exactly what a direct ``FABAttack_PT(...).perturb`` call returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from pyautoattack.fab_pt import FABAttack_PT
from torch import Tensor

from marginbench.margins.base import JACOBIAN_MODES, AttackSpec, check_options, isolated_rng
from marginbench.margins.counting import CountingModel
from marginbench.margins.verify import keep_smallest_flip, lp_norm

UNBOUNDED = float("inf")
# eps whose half is the radius of FAB's random restarts where the attack itself is unbounded
RANDOM_START_EPS = {"Linf": 8 / 255, "L2": 0.5}


@contextlib.contextmanager
def _vjp_batch(model, m: int) -> Iterator[None]:
    """Tell the cost counter that the next gradient call is m backward passes in one."""
    if not isinstance(model, CountingModel):
        yield
        return
    previous, model.vjp_batch = model.vjp_batch, m
    try:
        yield
    finally:
        model.vjp_batch = previous


def batched_input_grads(model, y: Tensor, im: Tensor, cotangents: Tensor) -> Tensor:
    """``(m, B, ...)`` input gradients of ``<cotangents[i], y>`` for each i, in one batched
    vector-Jacobian call (autograd vmaps the backward graph) instead of m ``backward``s:
    one pass through Python and the graph, m-times larger kernels."""
    with _vjp_batch(model, int(cotangents.shape[0])):
        (g,) = torch.autograd.grad(y, im, grad_outputs=cotangents, is_grads_batched=True)
    return g


class BatchedFABAttack(FABAttack_PT):
    """pyautoattack FAB whose full K-class Jacobian is one batched VJP instead of K
    ``backward(retain_graph=True)`` calls; the rest of ``get_diff_logits_grads_batch`` is the
    library's, line by line. Same gradients up to floating-point summation order."""

    def get_diff_logits_grads_batch(self, imgs, la):
        im = imgs.clone().requires_grad_()
        with torch.enable_grad():
            y = self.predict(im)
            k = y.shape[-1]
            eye = torch.eye(k, device=y.device, dtype=y.dtype).unsqueeze(1).expand(k, *y.shape)
            g2 = batched_input_grads(self.predict, y, im, eye)  # (K, B, ...)
        g2 = torch.transpose(g2, 0, 1).detach()
        y2 = y.detach()
        u = torch.arange(imgs.shape[0])
        df = y2 - y2[u, la].unsqueeze(1)
        dg = g2 - g2[u, la].unsqueeze(1)
        df[u, la] = 1e10
        return df, dg


class TopKFABAttack(FABAttack_PT):
    """FAB whose linearisation only looks at the ``candidates`` classes with the highest
    current logits (besides the attacked one) instead of all K.

    ``attack_single_run`` only indexes the columns returned here (it picks the column with
    the closest linearised boundary), so returning m columns instead of K is enough: the
    trajectory is FAB's whenever FAB's choice is among the top-m runner-ups, at m backward
    passes per step instead of K. Each column is the gradient of ``f_j - f_y`` directly.

    ``library_columns``: each column is computed as the library computes it instead,
    ``grad f_j - grad f_y`` from one-hot backward passes (m + 1 per step): a column then
    equals the library's bit for bit (checked on CPU; batched, the vmapped backward may pick
    other kernels on CUDA), and so does the whole trajectory whenever FAB's choice is among
    the m. Computed directly, ``grad (f_j - f_y)`` differs from it by rounding,
    which is enough for the two runs to end up to 1 % apart (``fab``'s ``candidates``:
    README "Margin estimators").
    """

    def __init__(self, *args, candidates: int = 3, batched: bool = False, library_columns: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.candidates = int(candidates)
        self.batched = bool(batched)  # m gradients in one batched VJP instead of a loop
        self.library_columns = bool(library_columns)

    def get_diff_logits_grads_batch(self, imgs, la):
        im = imgs.clone().requires_grad_()
        with torch.enable_grad():
            y = self.predict(im)
        u = torch.arange(imgs.shape[0], device=y.device)
        m = max(1, min(self.candidates, y.shape[-1] - 1))
        others = y.detach().clone()
        others[u, la] = -float("inf")
        cand = others.topk(m, dim=1).indices  # (B, m)
        if self.library_columns:
            return self._library_columns(im, y, la, cand)
        if self.batched:
            return self._batched_columns(im, y, la, cand)
        df = torch.empty(imgs.shape[0], m, device=imgs.device)
        dg = torch.empty(imgs.shape[0], m, *imgs.shape[1:], device=imgs.device)
        for k in range(m):
            with torch.enable_grad():
                diff = y[u, cand[:, k]] - y[u, la]
                (g,) = torch.autograd.grad(diff.sum(), im, retain_graph=k < m - 1)
            df[:, k] = diff.detach()
            dg[:, k] = g
        return df, dg

    def _library_columns(self, im, y, la, cand):
        """Columns as FABAttack_PT.get_diff_logits_grads_batch makes them: one backward per
        class with a one-hot cotangent (here per row: e_{cand_k}, and e_y once), then
        ``g_j - g_y`` and ``f_j - f_y``; batched, the m + 1 backward passes are one call."""
        b, m = cand.shape
        u = torch.arange(b, device=y.device)
        classes = torch.cat([la.view(b, 1), cand], dim=1)  # (B, m + 1): y first
        cot = torch.zeros(m + 1, *y.shape, device=y.device, dtype=y.dtype)
        cot.scatter_(2, classes.t().unsqueeze(2), 1.0)
        with torch.enable_grad():
            if self.batched:
                g = batched_input_grads(self.predict, y, im, cot)  # (m + 1, B, ...)
            else:
                g = torch.stack([torch.autograd.grad(y, im, grad_outputs=cot[k], retain_graph=k < m)[0]
                                 for k in range(m + 1)])
        g = g.transpose(0, 1).detach()
        yd = y.detach()
        df = yd.gather(1, cand) - yd[u, la].unsqueeze(1)
        dg = g[:, 1:] - g[:, :1]
        return df, dg

    def _batched_columns(self, im, y, la, cand):
        """Column k: gradient of f_{cand_k} - f_y, all m columns from one batched VJP (the
        cotangent e_{cand_k} - e_y is what autograd feeds back for that difference)."""
        b, m = cand.shape
        u = torch.arange(b, device=y.device)
        cot = torch.zeros(m, *y.shape, device=y.device, dtype=y.dtype)
        cot[:, u, la] = -1.0
        cot.scatter_(2, cand.t().unsqueeze(2), 1.0)
        with torch.enable_grad():
            g = batched_input_grads(self.predict, y, im, cot)  # (m, B, ...)
        yd = y.detach()
        df = yd.gather(1, cand) - yd[u, la].unsqueeze(1)
        return df, g.transpose(0, 1).detach()


def make_fab(model, norm: str, spec: AttackSpec, device, targeted: bool = False, cls=FABAttack_PT,
             **extra) -> FABAttack_PT:
    opts = spec.library_options()
    opts.setdefault("eps", UNBOUNDED)
    opts.update(extra)
    return cls(
        model,
        norm=norm,
        n_restarts=spec.restarts,
        n_iter=spec.steps,
        seed=spec.seed,
        targeted=targeted,
        device=device,
        verbose=False,
        **opts,
    )


def _take_option(spec: AttackSpec, key: str, default: Any) -> tuple[AttackSpec, Any]:
    """(``spec`` without ``options[key]``, its value or ``default``): marginbench's own
    options are taken out before make_fab hands the rest to the library."""
    opts = dict(spec.options)
    value = opts.pop(key, default)
    return replace(spec, options=opts), value


def _pop_jacobian(spec: AttackSpec) -> tuple[AttackSpec, bool]:
    """options.jacobian: ``loop`` (pyautoattack's K backward calls, default) or ``batched``
    (one batched VJP); not a library option, so it is taken out before make_fab."""
    spec, mode = _take_option(spec, "jacobian", JACOBIAN_MODES[0])
    check_options(spec.name, {"jacobian": mode})  # done at build time already for an Estimator
    return spec, mode == "batched"


def make_untargeted_fab(model, norm: str, spec: AttackSpec, device, n_classes: int) -> FABAttack_PT:
    """``fab``'s attack object. ``options.candidates`` (not a library option) caps the
    runner-up classes linearised per step, so that a step's cost does not grow with the
    number of classes K: with K - 1 > candidates, FAB looks at the ``candidates`` classes
    of highest logit (TopKFABAttack with the library's column arithmetic: the trajectory is
    full FAB's bit for bit wherever FAB's choice is among them); with K - 1 <= candidates it
    is the library's own full Jacobian, so the margins are ``fab``'s bit for bit."""
    spec, batched = _pop_jacobian(spec)
    spec, candidates = _take_option(spec, "candidates", None)
    if candidates is not None and int(candidates) < n_classes - 1:
        return make_fab(model, norm, spec, device, cls=TopKFABAttack, candidates=int(candidates), batched=batched,
                        library_columns=True)
    return make_fab(model, norm, spec, device, cls=BatchedFABAttack if batched else FABAttack_PT)


def fab_untargeted(model: CountingModel, x: Tensor, y: Tensor, norm: str, spec: AttackSpec,
                   fab: FABAttack_PT | None = None, accept_eps: float | None = None) -> Tensor:
    adv = x.clone()
    with isolated_rng(x.device), torch.no_grad():
        logits = model(x)  # FAB's own first forward (perturb's), here to learn K first
        if fab is None:
            fab = make_untargeted_fab(model, norm, spec, x.device, n_classes=int(logits.shape[1]))
        accept_eps = fab.eps if accept_eps is None else accept_eps
        acc = logits.max(1)[1] == y
        torch.random.manual_seed(fab.seed)
        torch.cuda.random.manual_seed(fab.seed)
        for counter in range(fab.n_restarts):
            ind_to_fool = acc.nonzero().squeeze()
            if len(ind_to_fool.shape) == 0:
                ind_to_fool = ind_to_fool.unsqueeze(0)
            if ind_to_fool.numel() == 0:
                continue
            x_to_fool, y_to_fool = x[ind_to_fool].clone(), y[ind_to_fool].clone()
            with model.subset(ind_to_fool):
                adv_curr = fab.attack_single_run(
                    x_to_fool, y_to_fool, use_rand_start=(counter > 0), is_targeted=False
                )
                acc_curr = fab._predict_fn(adv_curr).max(1)[1] == y_to_fool
            res = lp_norm(x_to_fool - adv_curr, norm).to(x.device).float()
            acc_curr = torch.max(acc_curr, res > accept_eps)
            ind_curr = (acc_curr == 0).nonzero().squeeze()
            acc[ind_to_fool[ind_curr]] = 0
            adv[ind_to_fool[ind_curr]] = adv_curr[ind_curr].clone()
    return adv


def fab_targeted(model: CountingModel, x: Tensor, y: Tensor, norm: str, spec: AttackSpec) -> Tensor:
    """Targeted FAB towards each of the top-``n_target_classes`` runner-up classes.

    Unlike AutoAttack's ``fab-t`` (which stops at the first target class that succeeds,
    enough for robust accuracy), every target is attacked on every sample and the
    per-sample minimum is kept: a minimal-norm estimate needs all of them. Targeted FAB
    needs one gradient per step (of f_target - f_pred), not the full Jacobian.
    """
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    spec, n_targets = _take_option(spec, "n_target_classes", n_classes - 1)
    n_targets = max(1, min(int(n_targets), n_classes - 1))
    fab = make_fab(model, norm, spec, x.device, targeted=True, n_target_classes=n_targets)
    if fab.eps == UNBOUNDED:
        # random restarts start at radius eps/2: an infinite radius would start in a corner
        fab.eps = RANDOM_START_EPS[norm]
    best = x.clone()
    best_norm = torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
    with isolated_rng(x.device), torch.no_grad():
        torch.random.manual_seed(fab.seed)
        torch.cuda.random.manual_seed(fab.seed)
        for target_class in range(2, n_targets + 2):
            fab.target_class = target_class
            for counter in range(fab.n_restarts):
                adv_curr = fab.attack_single_run(x.clone(), y.clone(), use_rand_start=(counter > 0), is_targeted=True)
                best, best_norm, _ = keep_smallest_flip(model, x, y, adv_curr, best, best_norm, norm)
    return best


def fab_topk(model: CountingModel, x: Tensor, y: Tensor, norm: str, spec: AttackSpec) -> Tensor:
    """Untargeted FAB over the top-``candidates`` runner-up classes (options.candidates, 3)."""
    spec, batched = _pop_jacobian(spec)
    spec, candidates = _take_option(spec, "candidates", 3)
    fab = make_fab(model, norm, spec, x.device, cls=TopKFABAttack, candidates=int(candidates), batched=batched)
    if spec.restarts > 1 and fab.eps == UNBOUNDED:
        fab.eps = RANDOM_START_EPS[norm]  # radius of the random restarts
    return fab_untargeted(model, x, y, norm, spec, fab=fab, accept_eps=UNBOUNDED)
