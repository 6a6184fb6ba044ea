"""Input-margin estimators: the smallest Lp perturbation that changes the predicted class.

``build_estimator(cfg, norm)`` turns an :class:`~marginbench.config.AttackConfig` into a
callable ``(model, x, y_pred) -> MarginBatch``. Single estimators (``ESTIMATORS``):

- ``fab``          pyautoattack FAB, untargeted, unbounded eps: what the paper's authors ran
- ``fab_targeted`` pyautoattack FAB towards each runner-up class, per-sample minimum
- ``fmn``          adv-lib Fast Minimum-Norm (restarts > 1: warm restarts from the best point)
- ``apgd_bisect``  adv-lib APGD with a per-sample eps search
- ``ddn``, ``alma`` adv-lib minimum-L2 attacks (L2 only)
- ``square``       pyautoattack Square (gradient-free) with a per-sample eps search

``escalate: [family, ...]`` (presets) re-attacks the samples left unbroken (escalate.py).

``name: ensemble`` with ``members`` runs members and keeps the per-sample minimum. Every
result is verified (verify.py); failures are margin +inf with success False.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

from marginbench.config import attack_preset, group_options
from marginbench.errors import MarginbenchError
from marginbench.margins import advlib, escalate, exact, fab, square
from marginbench.margins.base import (
    AttackSpec,
    Estimator,
    MarginBatch,
    MarginEstimator,
    OptionRule,
    check_options,
)
from marginbench.margins.ensemble import Ensemble
from marginbench.margins.verify import NORMS, lp_norm, verify

ESTIMATORS = {
    "fab": fab.fab_untargeted,
    "fab_targeted": fab.fab_targeted,
    "fab_topk": fab.fab_topk,
    "fmn": advlib.fmn,
    "apgd_bisect": advlib.apgd_bisect,
    "ddn": advlib.ddn,
    "alma": advlib.alma,
    "square": square.square_bisect,
    "exact": exact.exact_margin,  # MILP, small piecewise-linear nets only (exact.py)
}

# Build-time checks of the options only one attack reads (base.OPTION_RULES holds the shared
# ones): settings.validate builds the estimator, so these fail before any model is loaded.
ATTACK_CHECKS: dict[str, Callable[[AttackSpec], None]] = {
    "exact": exact.check_exact_options,
    "apgd_bisect": advlib.check_apgd_options,
    "square": square.check_square_options,
}



@dataclass(frozen=True)
class LibraryCall:
    """The library callable an attack hands ``spec.library_options()`` to: the keywords
    marginbench passes there itself (not settable through options), the options the attack
    function takes out before the call (checked by OPTION_RULES / ATTACK_CHECKS), and how it
    renames the others (adv-lib's Greek parameter names)."""

    target: Callable[..., Any]
    set_here: frozenset[str]
    own: frozenset[str] = frozenset()
    rename: Callable[[str], str] = str
    # the range a library option's meaning allows (keyed by the name the user writes): the
    # library takes any number and a value outside it gave silently wrong margins, e.g.
    # FAB's eta=-1 or Square's p_init=5 left every sample unbroken (+inf), or crashed
    # mid-run (APGD's eot_iter=0)
    rules: Mapping[str, OptionRule] = field(default_factory=dict)
    # options whose None is not harmless: FAB's eps=None is pyautoattack's 0.3 (L-inf), a
    # bound that turns every larger margin into a failure
    no_none: frozenset[str] = frozenset()


_UNIT_OPEN = OptionRule("float", 0, 1, open_low=True)  # (0, 1)
_UNIT_HALF_OPEN = OptionRule("float", 0, 1, open_low=True, closed_high=True)  # (0, 1]
_UNIT_CLOSED = OptionRule("float", 0, 1, closed_high=True)  # [0, 1]
_POSITIVE = OptionRule("float", 0, open_low=True)
# FAB (Croce & Hein 2020): x <- (1 - a)(x + eta d) + a(x0 + eta d0), a <= alpha_max; eta >= 1
# overshoots the linearised boundary; a successful step is pulled back by beta towards x0;
# eps: the radius of the random starts of restarts 2, 3, ...
_FAB_RULES = {"alpha_max": OptionRule("float", 0, 1, closed_high=True), "eta": OptionRule("float", 1),
              "beta": _UNIT_HALF_OPEN, "eps": OptionRule("float", 0, open_low=True, allow_inf=True)}
_LIBRARY_RULES: dict[str, dict[str, OptionRule]] = {
    "fab": _FAB_RULES,
    # FMN (Pintor et al. 2021): step size alpha, eps <- eps (1 -/+ gamma)
    # (the cosine schedules may anneal to 0: alpha_final, gamma_final)
    "fmn": {"alpha_init": _POSITIVE, "alpha_final": OptionRule("float", 0), "gamma_init": _UNIT_OPEN,
            "gamma_final": OptionRule("float", 0, 1), "binary_search_steps": OptionRule("int", 0)},
    # APGD (Croce & Hein 2020): rho, the share of improving steps that keeps the step size
    "apgd_bisect": {"rho": _UNIT_OPEN, "eot_iter": OptionRule("int", 1)},
    # DDN (Rony et al. 2019): eps <- eps (1 -/+ gamma); levels quantise the image (>= 2)
    "ddn": {"gamma": _UNIT_OPEN, "init_norm": _POSITIVE, "levels": OptionRule("int", 2)},
    # ALMA (Rony et al. 2021): every check_steps steps, where the logit constraint did not
    # improve to tau x its last value, the penalty rho grows by gamma; mu, the RMSProp
    # average and the momentum are moving averages (weights alpha, alpha_rms, momentum);
    # the step size decays to lr_init x lr_reduction; alpha < 1: it is also the momentum when
    # that is unset, and a momentum of 1 never forgets. Outside these ranges (round 10:
    # alpha=-1, init_lr_distance=-1, logit_tolerance=-5) every sample stayed unbroken
    "alma": {"lr_init": _POSITIVE, "mu_init": _POSITIVE, "rho_init": _POSITIVE,
             "check_steps": OptionRule("int", 1), "levels": OptionRule("int", 2),
             "tau": _UNIT_HALF_OPEN, "gamma": OptionRule("float", 1), "alpha": OptionRule("float", 0, 1),
             "alpha_rms": _UNIT_CLOSED, "momentum": OptionRule("float", 0, 1), "lr_reduction": _UNIT_HALF_OPEN,
             "init_lr_distance": _POSITIVE, "logit_tolerance": OptionRule("float", 0)},
    # Square (Andriushchenko et al. 2020): p_init, the share of the image a square covers
    "square": {"p_init": _UNIT_HALF_OPEN},
}


# loss_fn: FABAttack_PT stores it and never reads it (an option set there was ignored)
_FAB_SETS = frozenset({"self", "predict", "norm", "n_restarts", "n_iter", "seed", "targeted", "device", "verbose",
                       "loss_fn"})
# callback (adv-lib's Visdom logger) is a Python object no config value can be: "callback=foo"
# crashed DDN and ALMA at their first step, after the model was loaded
_ADV_LIB_SETS = frozenset({"model", "inputs", "labels", "targeted", "callback"})  # margins are untargeted


def _fab_call(own: set[str], unread: frozenset[str] = frozenset()) -> LibraryCall:
    """FABAttack_PT's call, shared by the three FAB attacks; ``own``: what each takes out
    first; ``unread``: what the attack leaves at the library's default because it does not
    use it (the untargeted FAB never reads n_target_classes)."""
    return LibraryCall(FABAttack_PT.__init__, _FAB_SETS | unread, frozenset(own), rules=_FAB_RULES,
                       no_none=frozenset({"eps"}))


LIBRARY_CALLS: dict[str, LibraryCall] = {
    "fab": _fab_call({"jacobian", "candidates"}, frozenset({"n_target_classes"})),
    "fab_topk": _fab_call({"jacobian", "candidates"}, frozenset({"n_target_classes"})),
    "fab_targeted": _fab_call({"n_target_classes"}),
    "fmn": LibraryCall(advlib._fmn, _ADV_LIB_SETS | {"norm", "steps", "starting_points"}, rename=advlib.greek_name,
                       rules=_LIBRARY_RULES["fmn"]),
    "apgd_bisect": LibraryCall(advlib._apgd, _ADV_LIB_SETS | {"eps", "norm", "n_iter", "n_restarts", "loss_function"},
                               frozenset({"search_steps", "eps_init", "loss"}), rules=_LIBRARY_RULES["apgd_bisect"]),
    "ddn": LibraryCall(advlib._ddn, _ADV_LIB_SETS | {"steps"}, rename=advlib.greek_name, rules=_LIBRARY_RULES["ddn"]),
    # penalty is a Python function; distance: marginbench measures L2, so ALMA minimises L2
    # (another distance gave looser L2 margins, an unknown one a KeyError mid-run)
    "alma": LibraryCall(advlib._alma, _ADV_LIB_SETS | {"num_steps", "penalty", "distance"}, rename=advlib.greek_name,
                        rules=_LIBRARY_RULES["alma"]),
    "square": LibraryCall(SquareAttack.__init__, frozenset({"self", "predict", "norm", "n_queries", "eps", "n_restarts",
                                                            "seed", "device", "targeted"}),
                          frozenset({"search_steps", "eps_init"}), rules=_LIBRARY_RULES["square"]),
}


def check_library_options(name: str, spec: AttackSpec) -> None:
    """One line for an option the attack's library call does not take (a typo crashed the
    run with a TypeError after the model was loaded), a value outside the range its meaning
    allows (``LibraryCall.rules``), or else of another kind than the library's default (a
    number, a bool, a string)."""
    call = LIBRARY_CALLS.get(name)
    if call is None:
        return
    params = inspect.signature(call.target).parameters
    ascii_names = {v: k for k, v in advlib._GREEK.items()} if call.rename is advlib.greek_name else {}
    settable = sorted(ascii_names.get(k, k) for k, p in params.items()
                      if k not in call.set_here and p.default is not inspect.Parameter.empty)
    seen: dict[str, str] = {}  # library parameter -> the option name that set it
    for key, value in spec.library_options().items():
        if key in call.own:
            continue
        twin = seen.setdefault(call.rename(key), key)
        if twin != key:  # gamma_init and γ_init both set: one of them was dropped silently
            raise MarginbenchError(f"attack {spec.name}: attack.options sets both {twin!r} and {key!r}, "
                                   "the same parameter; keep one")
        param = params.get(call.rename(key))
        if param is None or param.name in call.set_here:
            raise MarginbenchError(
                f"attack {spec.name}: unknown attack option {key!r} ({call.target.__qualname__} takes "
                f"{', '.join(settable)}{', ' if settable else ''}and marginbench's own: README \"Margin estimators\")"
            )
        written = ascii_names.get(param.name, param.name)  # gamma_init and γ_init: one rule
        if value is None and written in call.no_none:
            raise MarginbenchError(f"attack {spec.name}: attack.options.{key} must be {call.rules[written].need()}; "
                                   "got null (the library's own default would bound the attack)")
        if value is None:  # the library's own default (marginbench passes ddn's levels=None itself)
            continue
        if written in call.rules:  # the range; the kind check below still applies (eot_iter=2.0)
            check_options(spec.name, {key: value}, {key: call.rules[written]})
        default = param.default
        kind = bool if isinstance(default, bool) else int if isinstance(default, int) else \
            (int, float) if isinstance(default, float) else str if isinstance(default, str) else None
        wrong = kind is not None and (
            not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)))
        if wrong:
            what = {bool: "true or false", str: "a string", int: "an integer"}.get(kind, "a number")
            raise MarginbenchError(f"attack {spec.name}: attack.options.{key} must be {what}; got {value!r}")


MEMBER_KEYS = ("steps", "restarts", "refine", "options")

# configs/attack/<DEFAULT_ATTACK>.yaml is the estimator measured best (tightness vs cost)
DEFAULT_ATTACK = "fab_polish_multistart"


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (without importing omegaconf when not needed)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def _get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping):
        return _plain(cfg.get(key, default))
    return _plain(getattr(cfg, key, default))


def _single(name: str, spec: AttackSpec, norm: str, label: str | None = None) -> Estimator:
    if name not in ESTIMATORS:
        raise MarginbenchError(
            f"unknown attack {name!r}; choose one of {', '.join(sorted(ESTIMATORS))} or ensemble"
        )
    if spec.steps < 1 or spec.restarts < 1:
        raise MarginbenchError(f"attack {name}: steps and restarts must be >= 1 (got {spec.steps}, {spec.restarts})")
    estimator = Estimator(spec, norm, ESTIMATORS[name], label=label)
    if name in ATTACK_CHECKS:
        ATTACK_CHECKS[name](spec)
    check_library_options(name, spec)
    return estimator


def member_defaults(base_name: str) -> AttackSpec:
    """An ensemble member's budget where the ensemble's ``options`` do not override it: the
    preset file named after it (``fmn`` -> configs/attack/fmn.yaml), else AttackSpec's
    defaults. Read from the YAML, so a preset's numbers live in one place."""
    if base_name not in group_options("attack"):
        return AttackSpec(base_name)
    preset = attack_preset(base_name)
    return AttackSpec(
        base_name,
        steps=int(preset["steps"]),
        restarts=int(preset["restarts"]),
        refine=bool(preset["refine"]),
        options=dict(preset["options"] or {}),
    )


def build_estimator(cfg: Any, norm: str) -> MarginEstimator:
    """AttackConfig (dataclass, DictConfig or mapping) + norm (Linf | L2) -> estimator,
    wrapped in escalate.Escalation when ``escalate`` lists families."""
    base = _build_base(cfg, norm)
    finish = escalate.Finish(bool(_get(cfg, "refine", False)), dict(_get(cfg, "options", {}) or {}))
    return escalate.wrap(base, list(_get(cfg, "escalate", []) or []), norm, _single, finish)


def _build_base(cfg: Any, norm: str) -> MarginEstimator:
    if norm not in NORMS:
        raise MarginbenchError(f"norm={norm!r} is not supported; use one of {', '.join(NORMS)}")
    name = str(_get(cfg, "name", "fab"))
    steps = int(_get(cfg, "steps", 100))
    restarts = int(_get(cfg, "restarts", 1))
    refine = bool(_get(cfg, "refine", False))
    options = dict(_get(cfg, "options", {}) or {})
    members = list(_get(cfg, "members", []) or [])
    if name != "ensemble":
        if members:
            raise MarginbenchError(f"attack {name} takes no members; set name: ensemble to combine attacks")
        return _single(name, AttackSpec(name, steps, restarts, refine, options), norm)
    if not members:
        raise MarginbenchError("attack=ensemble needs a non-empty members list, e.g. members: [fmn, fab]")
    built = []
    for member in members:
        member = str(member)
        override = dict(options.get(member, {}) or {})
        unknown = set(override) - set(MEMBER_KEYS)
        if unknown:
            raise MarginbenchError(
                f"ensemble member {member}: unknown keys {sorted(unknown)}; allowed: {', '.join(MEMBER_KEYS)}"
            )
        base_name = member.split("@", 1)[0]  # "fmn@long": a second fmn member with its own budget
        preset = member_defaults(base_name)
        spec = AttackSpec(
            base_name,
            steps=int(override.get("steps", preset.steps)),
            restarts=int(override.get("restarts", preset.restarts)),
            refine=bool(override.get("refine", refine or preset.refine)),
            options=dict(override.get("options", preset.options) or {}),
        )
        built.append(_single(base_name, spec, norm, label=member))
    return Ensemble("ensemble", built, norm)


__all__ = [
    "DEFAULT_ATTACK", "ESTIMATORS", "AttackSpec", "Ensemble", "Estimator", "MarginBatch",
    "MarginEstimator", "build_estimator", "lp_norm", "verify",
]
