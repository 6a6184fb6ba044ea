"""Minimum-norm attacks from adv-lib (FMN, DDN, ALMA) and APGD with a per-sample eps search.

Every adv-lib attack is a pure function ``attack(model, inputs, labels, **hyper) -> adv``
that returns the input where it failed; the labels passed are the *predicted* ones.
Options whose adv-lib name is Greek can be written in ASCII in the YAML files
(``gamma_init`` for ``γ_init``, ``alpha_init`` for ``α_init`` ...).
"""

from __future__ import annotations

import torch
from adv_lib.attacks import alma as _alma
from adv_lib.attacks import apgd as _apgd
from adv_lib.attacks import ddn as _ddn
from adv_lib.attacks import fmn as _fmn
from torch import Tensor

from marginbench.errors import MarginbenchError
from marginbench.margins.base import AttackSpec, OptionRule, check_options, isolated_rng
from marginbench.margins.counting import CountingModel
from marginbench.margins.verify import keep_smallest_flip

P = {"Linf": float("inf"), "L2": 2.0}

_GREEK = {
    "alpha": "α", "alpha_init": "α_init", "alpha_final": "α_final", "alpha_rms": "α_rms",
    "gamma": "γ", "gamma_init": "γ_init", "gamma_final": "γ_final",
    "mu_init": "μ_init", "rho_init": "ρ_init", "tau": "τ",
}


def greek_name(key: str) -> str:
    """adv-lib's parameter name for an option (``gamma_init`` -> ``γ_init``)."""
    return _GREEK.get(key, key)


def _greek(opts: dict) -> dict:
    return {greek_name(k): v for k, v in opts.items()}


def _only_l2(name: str, norm: str) -> None:
    if norm != "L2":
        raise MarginbenchError(f"attack={name} minimises the L2 norm only; use it with norm=L2 (for Linf use fmn, fab or apgd_bisect)")


def fmn(model: CountingModel, x: Tensor, y: Tensor, norm: str, spec: AttackSpec) -> Tensor:
    """FMN; ``restarts`` > 1 re-runs it warm-started from the best point so far
    (adv-lib's ``starting_points``: a boundary bisection, then a fresh step-size schedule)."""
    opts = _greek(spec.library_options())
    with isolated_rng(x.device, spec.seed):
        adv = _fmn(model, x, y, norm=P[norm], steps=spec.steps, **opts)
        if spec.restarts <= 1:
            return adv
        best_norm = torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
        best, best_norm, _ = keep_smallest_flip(model, x, y, adv, x.clone(), best_norm, norm)
        for _ in range(spec.restarts - 1):
            ok = torch.isfinite(best_norm).nonzero().squeeze(1)
            if ok.numel() == 0:
                break
            with model.subset(ok):
                cand = _fmn(model, x[ok], y[ok], norm=P[norm], steps=spec.steps,
                            starting_points=best[ok], **opts)
                sub_best, sub_norm, _ = keep_smallest_flip(model, x[ok], y[ok], cand, best[ok], best_norm[ok], norm)
            best[ok], best_norm[ok] = sub_best, sub_norm
        return best


# the options only apgd_bisect reads besides base.OPTION_RULES' (adv-lib's apgd loss_function)
APGD_RULES = {"loss": OptionRule("choice", choices=("dlr", "ce"))}


def check_apgd_options(spec: AttackSpec) -> None:
    """Build-time check of apgd_bisect's own option (margins.ATTACK_CHECKS)."""
    check_options(spec.name, spec.options, APGD_RULES)


def apgd_bisect(model: CountingModel, x: Tensor, y: Tensor, norm: str, spec: AttackSpec) -> Tensor:
    """APGD at a per-sample eps, searched per sample: doubling until a first success, then
    bisection between the largest failed eps and the smallest successful norm.

    options: search_steps (10 APGD runs), eps_init (8/255 Linf, 0.5 L2), loss (dlr | ce),
    rho (0.75). ``steps`` = APGD iterations per run, ``restarts`` = APGD restarts per run.
    """
    opts = dict(spec.library_options())
    search_steps = int(opts.pop("search_steps", 10))
    eps_init = float(opts.pop("eps_init", 8 / 255 if norm == "Linf" else 0.5))
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    loss = str(opts.pop("loss", "dlr" if n_classes >= 3 else "ce"))
    n = x.shape[0]
    lo = torch.zeros(n, dtype=torch.float64, device=x.device)
    hi = torch.full((n,), float("inf"), dtype=torch.float64, device=x.device)
    best, best_norm = x.clone(), hi.clone()
    with isolated_rng(x.device, spec.seed):
        for _ in range(search_steps):
            eps = torch.where(torch.isinf(hi), torch.where(lo > 0, 2 * lo, torch.full_like(lo, eps_init)), (lo + hi) / 2)
            cand = _apgd(model, x, y, eps=eps.float(), norm=P[norm], n_iter=spec.steps,
                         n_restarts=spec.restarts, loss_function=loss, **opts)
            best, best_norm, flipped = keep_smallest_flip(model, x, y, cand, best, best_norm, norm)
            hi = torch.where(flipped, torch.minimum(hi, best_norm), hi)
            lo = torch.where(flipped, lo, torch.maximum(lo, eps))
    return best


def ddn(model: CountingModel, x: Tensor, y: Tensor, norm: str, spec: AttackSpec) -> Tensor:
    _only_l2("ddn", norm)
    opts = _greek(spec.library_options())
    opts.setdefault("levels", None)  # no 8-bit quantisation: it would inflate the margin
    with isolated_rng(x.device, spec.seed):
        return _ddn(model, x, y, steps=spec.steps, **opts)


def alma(model: CountingModel, x: Tensor, y: Tensor, norm: str, spec: AttackSpec) -> Tensor:
    _only_l2("alma", norm)
    opts = _greek(spec.library_options())
    with isolated_rng(x.device, spec.seed):
        return _alma(model, x, y, num_steps=spec.steps, distance="l2", **opts)
