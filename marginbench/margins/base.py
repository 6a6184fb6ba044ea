"""Common machinery of the input-margin estimators.

An *attack function* proposes candidates: ``fn(model, x, y_pred, norm, spec) -> x_adv``
(``model`` is a :class:`CountingModel`, tensors on the model's device; a sample the
attack could not break is returned as ``x``). :class:`Estimator` wraps it with timing,
cost accounting, the optional line-search refinement and the verification of every
candidate, and returns a :class:`MarginBatch`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from marginbench.errors import MarginbenchError
from marginbench.margins.counting import CountingModel, frozen_parameters
from marginbench.margins.multistart import TARGET_ORDERS, MultiStart, Polish, multistart
from marginbench.margins.refine import line_search, project, shrink
from marginbench.margins.verify import NORMS, verify

# options consumed by marginbench itself, never passed on to a library call
OWN_OPTIONS = ("seed", "refine_steps", "polish_rounds", "polish_steps", "polish_rho", "polish_min_rho", "polish_project",
               "multistart_rounds", "multistart_targets", "multistart_steps", "multistart_agree",
               "multistart_order", "multistart_stack_rows")
# options.jacobian of the FAB attacks (fab.py): pyautoattack's K backward calls or one batched VJP
JACOBIAN_MODES = ("loop", "batched")


@dataclass(frozen=True)
class OptionRule:
    """What one option may be: an integer or a number in [low, high) (``open_low``: low
    itself excluded; ``closed_high``: high itself allowed), or one of ``choices``."""

    kind: str  # "int", "float" or "choice"
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] = ()
    closed_high: bool = False
    allow_inf: bool = False  # +inf allowed too (FAB's eps: unbounded, marginbench's own default)

    def need(self) -> str:
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        what = "an integer" if self.kind == "int" else "a number"
        if self.low is not None and self.high is not None:
            return (f"{what} in {'(' if self.open_low else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{']' if self.closed_high else ')'}")
        if self.low is not None:
            return f"{what} {'>' if self.open_low else '>='} {_number(self.low)}{' or inf' if self.allow_inf else ''}"
        return what

    def accepts(self, value: Any) -> bool:
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            return False
        integral = isinstance(value, (int, np.integer))  # never float(): 10**400 overflows it
        if not integral and not math.isfinite(value):
            return bool(self.allow_inf and value == math.inf)
        if self.kind == "int" and not (integral or float(value).is_integer()):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return bool(self.high is None or (value <= self.high if self.closed_high else value < self.high))


# Every option marginbench reads itself (OWN_OPTIONS, and those an attack function takes out
# before its library call), checked when the estimator is built, so that settings.validate
# rejects a bad value before any model is loaded, even for a stage the preset does not run
# (a typo there would otherwise be ignored silently, or crash the run half way).
OPTION_RULES: dict[str, OptionRule] = {
    "seed": OptionRule("int", 0, 2**63),  # torch.manual_seed's range (non-negative)
    "refine_steps": OptionRule("int", 0),
    "polish_rounds": OptionRule("int", 0),
    "polish_steps": OptionRule("int", 1),
    "polish_rho": OptionRule("float", 0, 1, open_low=True),  # the ball asked for: r * (1 - rho)
    "polish_min_rho": OptionRule("float", 0, 1),
    "polish_project": OptionRule("int", 0),
    "multistart_rounds": OptionRule("int", 0),
    "multistart_targets": OptionRule("int", 1),
    "multistart_steps": OptionRule("int", 1),
    "multistart_agree": OptionRule("int", 0),
    "multistart_order": OptionRule("choice", choices=TARGET_ORDERS),
    "multistart_stack_rows": OptionRule("int", 0),
    "jacobian": OptionRule("choice", choices=JACOBIAN_MODES),  # fab.py
    "candidates": OptionRule("int", 1),  # fab, fab_topk: runner-up classes linearised per step
    "n_target_classes": OptionRule("int", 1),  # fab_targeted
    "search_steps": OptionRule("int", 1),  # apgd_bisect, square: runs of the eps search
    "eps_init": OptionRule("float", 0, open_low=True),  # apgd_bisect, square: first eps tried
    "time_limit": OptionRule("float", 0, open_low=True),  # exact: MILP seconds per sample
}


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def check_options(name: str, options: dict[str, Any], rules: dict[str, OptionRule] | None = None) -> None:
    """One-line MarginbenchError for the first option in ``rules`` (OPTION_RULES by default:
    an attack passes its own table for the options only it reads) whose value is not allowed."""
    rules = OPTION_RULES if rules is None else rules
    for key, value in options.items():
        rule = rules.get(key)
        if rule is not None and not rule.accepts(value):
            raise MarginbenchError(f"attack {name}: attack.options.{key} must be {rule.need()}; got {value!r}")
# Perturbation scalings tried when a point fails verification only by rounding (see _run).
BACKOFF_FACTORS = (1.001, 1.01)
# Per-sample ``status`` of a margin: "exact" (certified lower bound within EXACT_TOL of the
# margin), "bracket" (a certified lower bound, gap larger: e.g. a solver time limit),
# "attack" (an attack's upper bound only, lower_bound 0: every estimator but exact).
STATUSES = ("exact", "bracket", "attack")
# Absolute gap (L-inf margins are <= 1) at which a margin counts as exact: ~1/4000 of a
# gray level, and the resolution of a point checked in float32 (the input grid is ~6e-8
# near 1; the logits round at ~1e-6 relative, so the boundary itself is only that sharp).
EXACT_TOL = 1e-6


def gap_closed(margin: np.ndarray, lower_bound: np.ndarray) -> np.ndarray:
    """Bool: the certified lower bound is within EXACT_TOL of the margin (inf and inf: no
    adversarial example exists, proved)."""
    margin, lower_bound = np.asarray(margin, float), np.asarray(lower_bound, float)
    with np.errstate(invalid="ignore"):
        return (margin - lower_bound <= EXACT_TOL) | (np.isinf(margin) & (lower_bound == margin))


def settle_status(margin: np.ndarray, lower_bound: np.ndarray, certified: np.ndarray) -> np.ndarray:
    """Status from the final (verified) margin: "attack" where nothing was certified,
    else "exact" or "bracket" by the gap."""
    closed = gap_closed(margin, lower_bound)
    return np.where(~np.asarray(certified, bool), "attack", np.where(closed, "exact", "bracket")).astype(str)


@dataclass
class Certified:
    """What an attack function that also proves something returns instead of a bare
    ``x_adv``: the candidates plus, per sample, a certified lower bound on the margin and
    whether it certified anything at all (False: an attack's point only)."""

    x_adv: Tensor
    lower_bound: np.ndarray  # float64 (B,)
    certified: np.ndarray  # bool (B,)
    details: Any = None  # per-sample solver records for callers that want them; not kept


@dataclass
class MarginBatch:
    margin: np.ndarray  # float64 (B,) norm of the verified perturbation; +inf where the attack failed
    success: np.ndarray  # bool (B,)
    found_by: np.ndarray  # str (B,) estimator/member that found the minimum ("" on failure)
    x_adv: torch.Tensor  # (B,C,H,W) float32 CPU; equals x where failed
    n_forward: np.ndarray  # int64 (B,)
    n_backward: np.ndarray  # int64 (B,)
    seconds: np.ndarray  # float64 (B,) batch wall time / B, summed over members
    # str (B,) escalation families tried on a sample, comma-separated ("" = never escalated;
    # escalate.py). None at construction means "" for every sample.
    escalated: np.ndarray | None = None
    # certified lower bound on the margin (float64 (B,); 0 for an attack, which proves nothing)
    # and its status, one of STATUSES (str (B,); "attack" for every estimator but exact)
    lower_bound: np.ndarray | None = None
    status: np.ndarray | None = None
    # int64 (B,) independent members whose verified margin is within AGREE_RTOL of the
    # reported one (ensemble.py); a single estimator is one member: 1 where it succeeded,
    # 0 on failure. None at construction means that default.
    agreement: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = int(np.shape(self.margin)[0])
        if self.agreement is None:
            self.agreement = np.asarray(self.success, dtype=bool).astype(np.int64)
        if self.escalated is None:
            self.escalated = np.full(n, "", dtype=str)
        if self.lower_bound is None:
            self.lower_bound = np.zeros(n, dtype=np.float64)
        if self.status is None:
            self.status = np.full(n, "attack").astype(str)

    def __len__(self) -> int:
        return int(self.margin.shape[0])

    @staticmethod
    def concat(batches: Sequence[MarginBatch]) -> MarginBatch:
        """Join the batches of one run, in order."""
        if not batches:
            raise ValueError("no batches to concatenate")
        return MarginBatch(
            margin=np.concatenate([b.margin for b in batches]),
            success=np.concatenate([b.success for b in batches]),
            found_by=np.concatenate([b.found_by.astype(object) for b in batches]).astype(str),
            x_adv=torch.cat([b.x_adv for b in batches]),
            n_forward=np.concatenate([b.n_forward for b in batches]),
            n_backward=np.concatenate([b.n_backward for b in batches]),
            seconds=np.concatenate([b.seconds for b in batches]),
            escalated=np.concatenate([b.escalated.astype(object) for b in batches]).astype(str),
            lower_bound=np.concatenate([b.lower_bound for b in batches]),
            status=np.concatenate([b.status.astype(object) for b in batches]).astype(str),
            agreement=np.concatenate([b.agreement for b in batches]),
        )


class MarginEstimator(Protocol):
    name: str

    def __call__(self, model: nn.Module, x: Tensor, y_pred: Tensor) -> MarginBatch: ...


@dataclass(frozen=True)
class AttackSpec:
    """Resolved budget of one estimator (from AttackConfig or an ensemble member override)."""

    name: str
    steps: int = 100
    restarts: int = 1
    refine: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.options.get("seed", 0))

    @property
    def refine_steps(self) -> int:
        return int(self.options.get("refine_steps", 10))

    @property
    def polish_rounds(self) -> int:
        return int(self.options.get("polish_rounds", 0))

    @property
    def polish_steps(self) -> int:
        return int(self.options.get("polish_steps", 5))

    @property
    def polish_rho(self) -> float:
        return float(self.options.get("polish_rho", 0.05))

    @property
    def polish_min_rho(self) -> float:
        return float(self.options.get("polish_min_rho", 0.0))

    @property
    def polish_project(self) -> int:
        """Rounds of refine.project after the polish (0: none)."""
        return int(self.options.get("polish_project", 0))

    @property
    def polish(self) -> Polish:
        """This estimator's polish and bisection budget (for the multi-start candidates)."""
        return Polish(rounds=self.polish_rounds, steps=self.polish_steps, rho=self.polish_rho,
                      min_rho=self.polish_min_rho, refine_steps=self.refine_steps,
                      project_rounds=self.polish_project)

    @property
    def multistart(self) -> MultiStart | None:
        """The multi-start stage (multistart.py), or None (options.multistart_rounds 0)."""
        o, default = self.options, MultiStart()
        rounds = int(o.get("multistart_rounds", 0))
        if rounds <= 0:
            return None
        starts = MultiStart(targets=int(o.get("multistart_targets", default.targets)), rounds=rounds,
                            steps=int(o.get("multistart_steps", default.steps)),
                            agree=int(o.get("multistart_agree", default.agree)), seed=self.seed,
                            order=str(o.get("multistart_order", default.order)),
                            stack_rows=int(o.get("multistart_stack_rows", default.stack_rows)))
        return starts  # its values were checked by check_options (Estimator.__init__)

    def library_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k not in OWN_OPTIONS}


AttackFn = Callable[[CountingModel, Tensor, Tensor, str, AttackSpec], Tensor]


@contextlib.contextmanager
def isolated_rng(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Run a library attack on its own RNG stream (re-seeded when ``seed`` is given): its
    global re-seeding and draws do not leak into the caller's streams."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_device(model: nn.Module, x: Tensor) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return x.device


def check_inputs(model: nn.Module, x: Tensor, y_pred: Tensor, norm: str) -> None:
    """Cheap pre-flight checks; user-fixable problems raise MarginbenchError."""
    if norm not in NORMS:
        raise MarginbenchError(f"norm={norm!r} is not supported; use one of {', '.join(NORMS)}")
    if x.ndim < 2 or y_pred.shape != (x.shape[0],):
        raise MarginbenchError(
            f"x must be (B, ...) and y_pred (B,), got {tuple(x.shape)} and {tuple(y_pred.shape)}"
        )
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise MarginbenchError(
            "inputs must lie in [0,1] (put the normalisation inside the model); "
            f"got values in [{x.min().item():.3g}, {x.max().item():.3g}]"
        )
    dev = model_device(model, x)
    if x.device != dev or y_pred.device != dev:
        raise MarginbenchError(
            f"x ({x.device}) and y_pred ({y_pred.device}) must be on the model's device ({dev})"
        )


def check_predictions(model: nn.Module, x: Tensor, y_pred: Tensor) -> None:
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    bad = int((pred != y_pred).sum())
    if bad:
        raise MarginbenchError(
            f"y_pred differs from the model's own prediction on {bad} of {len(x)} samples; "
            "pass y_pred = model(x).argmax(1) (margins are distances to a change of the predicted class)"
        )


class Estimator:
    """One attack + (optional) refinement + verification, with cost accounting."""

    # optional on_pass(name, forward_rows, backward_rows) per model pass (progress bars)
    on_pass: Callable[[str, int, int], None] | None = None

    def __init__(self, spec: AttackSpec, norm: str, fn: AttackFn, label: str | None = None):
        self.spec = spec
        self.norm = norm
        self.fn = fn
        self.name = label or spec.name
        # checked and parsed here: build_estimator runs in settings.validate, so a bad
        # option fails before any model is loaded or attacked
        check_options(self.name, spec.options)
        self.starts = spec.multistart

    def __repr__(self) -> str:
        s = self.spec
        return f"Estimator({self.name}, norm={self.norm}, steps={s.steps}, restarts={s.restarts}, refine={s.refine}, options={s.options})"

    def _run(self, counting: CountingModel, x: Tensor, y_pred: Tensor):
        spec, norm = self.spec, self.norm
        proposed = self.fn(counting, x, y_pred, norm, spec)
        cert = proposed if isinstance(proposed, Certified) else None
        candidates = [(cert.x_adv if cert is not None else proposed).detach()]
        if spec.polish_rounds > 0:
            candidates.append(shrink(
                counting, x, candidates[-1], y_pred, norm, rounds=spec.polish_rounds,
                steps=spec.polish_steps, rho=spec.polish_rho, min_rho=spec.polish_min_rho,
            ))
        if spec.polish_project > 0:
            candidates.append(project(counting, x, candidates[-1], y_pred, norm, rounds=spec.polish_project))
        if spec.refine:
            candidates.append(line_search(counting, x, candidates[-1], y_pred, steps=spec.refine_steps))
        agreement = None
        if self.starts is not None:
            point, agreement = multistart(counting, x, candidates[-1], y_pred, norm, self.starts, spec.polish)
            candidates.append(point)
        last = candidates[-1]
        margin, success, x_adv = verify(counting, x, last, y_pred, norm)
        # A refined point can sit so close to the boundary that the verification forward
        # (another batch composition, other rounding: ~1e-6 in the logits) disagrees. Step
        # back out along its own perturbation first (costs <= 1% of the margin), and only
        # then fall back to the earlier, looser stages.
        fallbacks: list[Callable[[Tensor], Tensor]] = [
            lambda i, f=factor: (x[i] + f * (last[i] - x[i])).clamp(0.0, 1.0) for factor in BACKOFF_FACTORS
        ] + [lambda i, c=stage: c[i] for stage in candidates[-2::-1]]
        for fallback in fallbacks:
            failed = np.flatnonzero(~success)
            if failed.size == 0:
                break
            idx = torch.as_tensor(failed, device=x.device)
            with counting.subset(idx):
                m2, s2, x2 = verify(counting, x[idx], fallback(idx), y_pred[idx], norm)
            margin[failed], success[failed] = m2, s2
            x_adv[idx] = x2
        return margin, success, x_adv, cert, agreement

    def __call__(self, model: nn.Module, x: Tensor, y_pred: Tensor, _checked: bool = False) -> MarginBatch:
        check_inputs(model, x, y_pred, self.norm)
        n = x.shape[0]
        # adv-lib's FMN returns ~40x too large L-inf margins for channels-last inputs
        # (measured on the pyautoattack ResNet-18); attacks get the standard layout.
        x = x.detach().contiguous()
        y_pred = y_pred.detach().long()
        hook = self.on_pass
        counting = CountingModel(model, n, on_pass=None if hook is None else lambda f, b: hook(self.name, f, b))
        with frozen_parameters(model):
            _sync(x.device)
            start = time.perf_counter()
            if n:
                if not _checked:
                    check_predictions(counting, x, y_pred)
                margin, success, x_adv, cert, agreement = self._run(counting, x, y_pred)
            else:
                margin, success, x_adv, cert, agreement = np.zeros(0), np.zeros(0, bool), x, None, None
            _sync(x.device)
            elapsed = time.perf_counter() - start
        return MarginBatch(
            margin=margin.astype(np.float64),
            success=success.astype(bool),
            found_by=np.where(success, self.name, "").astype(str),
            x_adv=x_adv.detach().float().cpu(),
            n_forward=counting.forward_counts.numpy().copy(),
            n_backward=counting.backward_counts.numpy().copy(),
            seconds=np.full(n, elapsed / max(n, 1), dtype=np.float64),
            # a search that failed verification agrees with nothing
            agreement=None if agreement is None else np.where(success, agreement, 0),
            **_certificate(cert, margin),
        )


def _certificate(cert: Certified | None, margin: np.ndarray) -> dict[str, np.ndarray]:
    """MarginBatch's lower_bound/status from a certifying attack (defaults otherwise). The
    lower bound never exceeds the verified margin, and the status is settled on that margin
    (a point stepped back out at verification may have opened the gap)."""
    if cert is None:
        return {}
    lower = np.minimum(np.asarray(cert.lower_bound, np.float64), margin)
    return {"lower_bound": lower, "status": settle_status(margin, lower, cert.certified)}
