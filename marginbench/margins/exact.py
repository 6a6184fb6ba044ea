"""``attack=exact``: the exact minimum L-inf input margin of a small piecewise-linear network.

For a sample x with predicted class y the margin is the value of

    min t   s.t.  |x' - x| <= t (every pixel),  x' in [0,1],  f_j(x') >= f_y(x') for some j != y,

a mixed-integer linear program once every ReLU gets the usual big-M encoding (one binary per
ReLU whose sign is not fixed on the search box). HiGHS solves it (highspy; ``options.solver:
scipy`` uses ``scipy.optimize.milp``, 2-2.5x slower here because its primal heuristics and
threads cannot be switched off). The search box is the L-inf ball of radius r, the margin
the fast estimator (fab_polish) found and verified, intersected with [0,1]: the true
margin is at most r, so nothing is lost, and a small box means small big-M constants.

Pre-activation bounds on that box come from a backward linear relaxation (CROWN: each
unstable ReLU bounded by its chord above and by 0 or the identity below) intersected with
interval arithmetic. CROWN is exact through chains of affine layers (AvgPool2d then Conv2d).

Classes (``options.formulation``): ``per_class`` (default) solves one MILP per runner-up
class j, the attack's class first, then by how easily j wins, each with the best t so far as
an upper bound on t (a class that cannot beat it is proved infeasible); a class whose linear
bound shows it cannot win in the box is never solved. ``disjunction`` solves one MILP with a
binary per class. Measured on the first 12 oracle samples (one thread): per_class 22 s and
37 s in all on mlp_std and cnn_pgd, disjunction 164 s and 48 s; scipy's milp 52 s and 93 s.

The MILP point is re-evaluated by the network in float32 and, where rounding leaves it on
the wrong side of the boundary, stepped out along its own perturbation (by at most 1 %);
the attack's point is kept where it is better, so the margin never exceeds the attack's.
The MILP's dual bound, less 1e-7 for float32 rounding, is the ``lower_bound``: certified up
to HiGHS's feasibility tolerances (1e-6 on rows and integrality, in float64 arithmetic).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor, nn

from marginbench.errors import MarginbenchError
from marginbench.margins.base import AttackSpec, Certified, MarginBatch
from marginbench.margins.counting import CountingModel
from marginbench.margins.verify import verify

SUPPORTED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.AvgPool2d)
SUPPORTED_NAMES = "Linear, Conv2d, ReLU, Flatten, AvgPool2d"
# configs/attack/fab_polish.yaml (the fast preset): its verified margin is the MILP's
# box radius and its point the fallback. tests/test_exact.py checks the two agree.
UPPER_ATTACK = {
    "name": "fab", "steps": 20, "restarts": 3, "refine": True,
    "options": {"polish_rounds": 24, "polish_steps": 5, "polish_rho": 0.05,
                "polish_min_rho": 0.0, "refine_steps": 10},
}
FORMULATIONS = ("per_class", "disjunction")
# The box is a hair larger than the attack's radius: the attack's point flips the float32
# network, and the real-arithmetic network the MILP models may need ~1e-6 more.
BOX_SLACK = 1e-4
BOUND_SLACK = 1e-9
# The MILP's bound is about the network in exact arithmetic; the float32 network that
# verifies attacks rounds its input grid and logits, and was measured flipping up to 3e-8
# closer (fab_polish on the oracle nets). The reported lower bound is backed off by this.
FLOAT32_SLACK = 1e-7
# Scalings of the MILP perturbation tried until the float32 network confirms the flip.
STEP_OUT = (1.0, 1 + 1e-7, 1 + 1e-6, 1 + 1e-5, 1 + 1e-4, 1 + 1e-3, 1 + 1e-2)
# HiGHS stops at the first of these gaps between its solution and its dual bound; both stay
# well under marginbench's "exact" tolerance (base.EXACT_TOL = 1e-6 absolute) for margins
# below 1, leaving room for the step out at verification. (scipy's milp cannot set the
# absolute gap: HiGHS's default, 1e-6, applies there.)
MIP_REL_GAP = 1e-6
MIP_ABS_GAP = 1e-7
MILP_DISP = False
# Primal heuristics off: every MILP here either has the attack's point as a known solution
# or is meant to be proved infeasible below it; HiGHS's sub-MIP heuristics (RINS, RENS,
# feasibility jump) spent ~70 % of the time on such problems (measured: 3.7 s -> 1.0 s).
HIGHS_OPTIONS = (
    ("mip_heuristic_effort", 0.0), ("mip_heuristic_run_rins", False), ("mip_heuristic_run_rens", False),
    ("mip_heuristic_run_feasibility_jump", False), ("mip_heuristic_run_root_reduced_cost", False),
)


@dataclass
class Affine:
    weight: np.ndarray  # (m, n) float64
    bias: np.ndarray  # (m,) float64


RELU = "relu"


@dataclass
class SampleResult:
    """One sample's MILP outcome: the best point (None if none), its t, the dual bound."""

    point: np.ndarray | None
    value: float
    lower_bound: float
    timed_out: bool
    seconds: float = 0.0
    n_milp: int = 0
    n_unstable: int = 0
    pruned: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------------------
# The network as affine maps and ReLUs
# ----------------------------------------------------------------------------------------


def _flat_layers(model: nn.Module) -> list[nn.Module]:
    while isinstance(model, CountingModel):
        model = model.model
    if not isinstance(model, nn.Sequential):
        raise MarginbenchError(
            f"attack=exact cannot handle a {type(model).__name__}: exact margins need a "
            f"piecewise-linear nn.Sequential of {SUPPORTED_NAMES}"
        )
    layers: list[nn.Module] = []
    for child in model:
        layers.extend(_flat_layers(child) if isinstance(child, nn.Sequential) else [child])
    return layers


def _as_affine(layer: nn.Module, shape: tuple[int, ...]) -> tuple[Affine, tuple[int, ...]]:
    """The layer's matrix on flattened inputs of ``shape``, read off in float64 by applying
    it to the basis vectors (exact for any affine layer: conv padding, pooling, strides)."""
    if isinstance(layer, nn.Linear):
        w = layer.weight.detach().double().cpu().numpy()
        b = layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(w.shape[0])
        return Affine(w, b), (w.shape[0],)
    layer64 = copy.deepcopy(layer).to("cpu").double()
    n = int(np.prod(shape))
    with torch.no_grad():
        zero = layer64(torch.zeros((1, *shape), dtype=torch.float64))
        cols = layer64(torch.eye(n, dtype=torch.float64).reshape(n, *shape)) - zero
    out_shape = tuple(zero.shape[1:])
    return Affine(cols.reshape(n, -1).T.numpy().copy(), zero.reshape(-1).numpy().copy()), out_shape


def parse_network(model: nn.Module, input_shape: tuple[int, ...]) -> list[Affine | str]:
    """nn.Sequential -> list of Affine / RELU on flattened vectors; MarginbenchError otherwise."""
    ops: list[Affine | str] = []
    shape = tuple(input_shape)
    for i, layer in enumerate(_flat_layers(model)):
        if not isinstance(layer, SUPPORTED):
            raise MarginbenchError(
                f"attack=exact cannot handle layer {i} ({type(layer).__name__}): exact margins need "
                f"a piecewise-linear nn.Sequential of {SUPPORTED_NAMES}"
            )
        if isinstance(layer, nn.ReLU):
            ops.append(RELU)
        elif isinstance(layer, nn.Flatten):
            shape = (int(np.prod(shape)),)  # a no-op on flattened vectors
        else:
            op, shape = _as_affine(layer, shape)
            ops.append(op)
    if not ops or not isinstance(ops[-1], Affine):
        raise MarginbenchError("attack=exact needs a network whose last layer is affine (the logits)")
    return ops


def forward(ops: list[Affine | str], h: np.ndarray) -> np.ndarray:
    """float64 logits of flattened inputs (B, d) or (d,)."""
    for op in ops:
        h = np.maximum(h, 0.0) if op is RELU else h @ op.weight.T + op.bias
    return h


def check_network(ops: list[Affine | str], model: nn.Module, x: Tensor) -> None:
    """The parsed layers must reproduce the model: a Sequential subclass with its own
    forward would otherwise get the margin of another network."""
    with torch.no_grad():
        logits = model(x).double().cpu().numpy()
    mine = forward(ops, x.detach().double().cpu().reshape(x.shape[0], -1).numpy())
    if not np.allclose(mine, logits, rtol=1e-4, atol=1e-4):
        raise MarginbenchError(
            "attack=exact: the model's output is not the composition of its layers (a custom "
            f"forward?); exact margins need a plain nn.Sequential of {SUPPORTED_NAMES}"
        )


# ----------------------------------------------------------------------------------------
# Bounds on a box: interval arithmetic and a backward linear relaxation (CROWN)
# ----------------------------------------------------------------------------------------


def _relaxation(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ReLU: (slope below, slope above, intercept above) of linear bounds valid on
    [lower, upper]. Unstable: the chord above; below, identity or 0, whichever is closer
    on the wider side (CROWN's adaptive choice)."""
    active, dead = lower >= 0, upper <= 0
    unstable = ~(active | dead)
    width = np.where(unstable, upper - lower, 1.0)
    slope_up = np.where(active, 1.0, np.where(unstable, upper / width, 0.0))
    icpt_up = np.where(unstable, -slope_up * lower, 0.0)
    slope_lo = np.where(active, 1.0, np.where(unstable, (upper >= -lower).astype(float), 0.0))
    return slope_lo, slope_up, icpt_up


def linear_lower_bound(ops: list[Affine | str], relu_bounds: dict[int, tuple[np.ndarray, np.ndarray]],
                       k: int, coeffs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Lower bound, per row of ``coeffs``, of ``coeffs @ h_k`` over the input box [lo, hi],
    where h_k is the output of ``ops[:k]`` and ``relu_bounds[i]`` bounds the input of the
    ReLU ``ops[i]``. Positive coefficients take each ReLU's lower relaxation, negative
    ones its upper relaxation; at the input the box is exact."""
    a = coeffs.astype(np.float64, copy=True)
    const = np.zeros(a.shape[0])
    for i in reversed(range(k)):
        op = ops[i]
        if op is RELU:
            slope_lo, slope_up, icpt_up = _relaxation(*relu_bounds[i])
            neg = np.minimum(a, 0.0)
            const += neg @ icpt_up
            a = np.maximum(a, 0.0) * slope_lo + neg * slope_up
        else:
            const += a @ op.bias
            a = a @ op.weight
    return np.maximum(a, 0.0) @ lo + np.minimum(a, 0.0) @ hi + const


def relu_bounds(ops: list[Affine | str], lo: np.ndarray, hi: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Bounds of every ReLU's input on the box: CROWN intersected with interval arithmetic."""
    bounds: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    low, up = lo.copy(), hi.copy()  # interval bounds of the current h
    for i, op in enumerate(ops):
        if op is RELU:
            n = low.shape[0]
            eye = np.eye(n)
            both = linear_lower_bound(ops, bounds, i, np.vstack([eye, -eye]), lo, hi)
            # widened by 1e-9: float64 rounding must not cut off a true pre-activation
            low, up = np.maximum(low, both[:n]) - BOUND_SLACK, np.minimum(up, -both[n:]) + BOUND_SLACK
            up = np.maximum(up, low)
            bounds[i] = (low, up)
            low, up = np.maximum(low, 0.0), np.maximum(up, 0.0)
        else:
            mid, rad = (low + up) / 2, (up - low) / 2
            centre = op.weight @ mid + op.bias
            spread = np.abs(op.weight) @ rad
            low, up = centre - spread, centre + spread
    return bounds


def class_gap_lower(ops: list[Affine | str], bounds: dict[int, tuple[np.ndarray, np.ndarray]],
                    y: int, lo: np.ndarray, hi: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """(K,) lower bounds of sign * (f_y - f_j) on the box (inf at j = y). With sign 1, a
    bound > 0 means class j cannot win anywhere in the box."""
    k = ops[-1].bias.shape[0]
    others = [j for j in range(k) if j != y]
    coeffs = np.zeros((k - 1, k))
    coeffs[np.arange(k - 1), y] = sign
    coeffs[np.arange(k - 1), others] = -sign
    out = np.full(k, np.inf)
    out[others] = linear_lower_bound(ops, bounds, len(ops), coeffs, lo, hi)
    return out


# ----------------------------------------------------------------------------------------
# The MILP
# ----------------------------------------------------------------------------------------


class _Milp:
    """Columns (with bounds, integrality) and rows (sparse blocks) of one MILP."""

    def __init__(self) -> None:
        self.col_lb: list[np.ndarray] = []
        self.col_ub: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.blocks: list[tuple[int, int, sparse.coo_array]] = []
        self.row_lb: list[np.ndarray] = []
        self.row_ub: list[np.ndarray] = []
        self.n_cols = self.n_rows = 0

    def variables(self, lb, ub, n: int | None = None, integer: bool = False) -> int:
        n = int(np.size(lb)) if n is None else n
        self.col_lb.append(np.broadcast_to(np.asarray(lb, float), (n,)))
        self.col_ub.append(np.broadcast_to(np.asarray(ub, float), (n,)))
        self.integer.append(np.full(n, int(integer)))
        self.n_cols += n
        return self.n_cols - n

    def rows(self, terms: list[tuple[int, object]], lb, ub) -> None:
        """Rows ``sum_k M_k @ v[col_k : col_k + M_k.shape[1]]`` in [lb, ub]."""
        m = terms[0][1].shape[0]
        for col, mat in terms:
            self.blocks.append((self.n_rows, col, sparse.coo_array(mat)))
        self.row_lb.append(np.broadcast_to(np.asarray(lb, float), (m,)))
        self.row_ub.append(np.broadcast_to(np.asarray(ub, float), (m,)))
        self.n_rows += m

    def matrix(self) -> tuple[sparse.csr_array, np.ndarray, np.ndarray]:
        rows = np.concatenate([b.row + r for r, _, b in self.blocks])
        cols = np.concatenate([b.col + c for _, c, b in self.blocks])
        vals = np.concatenate([b.data for _, _, b in self.blocks])
        a = sparse.csr_array((vals, (rows, cols)), shape=(self.n_rows, self.n_cols))
        return a, np.concatenate(self.row_lb), np.concatenate(self.row_ub)

    def solve(self, extra: list[tuple[np.ndarray, float]], ub_override: dict[int, float],
              time_limit: float, solver: str) -> Solved:
        """Minimise the objective column with ``extra`` rows (dense (1, n) row, lower bound)
        added; ``ub_override``: tighter upper bounds for some columns."""
        ub = np.concatenate(self.col_ub).copy()
        for col, value in ub_override.items():
            ub[col] = value
        a, lb_rows, ub_rows = self.matrix()
        if extra:
            a = sparse.vstack([a, *[sparse.csr_array(row) for row, _ in extra]]).tocsr()
            lb_rows = np.concatenate([lb_rows, [low for _, low in extra]])
            ub_rows = np.concatenate([ub_rows, np.full(len(extra), np.inf)])
        cost = np.eye(1, self.n_cols, self.objective).ravel()
        args = (cost, np.concatenate(self.integer), np.concatenate(self.col_lb), ub, a, lb_rows, ub_rows)
        run = _solve_highspy if solver == "highspy" else _solve_scipy
        return run(*args, max(time_limit, 1e-3))


@dataclass
class Solved:
    status: str  # optimal | infeasible | limit | error
    x: np.ndarray | None
    fun: float
    dual_bound: float  # -inf when the solver has none
    nodes: int
    message: str = ""


def _solve_scipy(cost, integer, col_lb, col_ub, a, row_lb, row_ub, time_limit) -> Solved:
    res = milp(cost, integrality=integer, bounds=Bounds(col_lb, col_ub),
               constraints=[LinearConstraint(a, row_lb, row_ub)],
               options={"time_limit": time_limit, "mip_rel_gap": MIP_REL_GAP, "disp": MILP_DISP})
    status = {0: "optimal", 1: "limit", 2: "infeasible"}.get(res.status, "error")
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(bound) if bound is not None and np.isfinite(bound) else -np.inf
    fun = float(res.fun) if res.x is not None else np.inf
    if status == "optimal" and not integer.any():
        bound = fun  # an LP (no unstable ReLU): its optimum is exact, there is no MIP bound
    return Solved(status, res.x, fun, bound, int(getattr(res, "mip_node_count", 0) or 0), str(res.message))


def _solve_highspy(cost, integer, col_lb, col_ub, a, row_lb, row_ub, time_limit) -> Solved:
    import highspy

    a = sparse.csc_array(a)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = a.shape[1], a.shape[0]
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, col_lb, col_ub
    lp.row_lower_, lp.row_upper_ = row_lb, row_ub
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
    kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
    lp.integrality_ = [kinds[int(k)] for k in integer]
    h = highspy.Highs()
    for key, value in (("output_flag", MILP_DISP), ("threads", 1), ("time_limit", float(time_limit)),
                       ("mip_rel_gap", MIP_REL_GAP), ("mip_abs_gap", MIP_ABS_GAP), ("random_seed", 0),
                       *HIGHS_OPTIONS):
        h.setOptionValue(key, value)
    h.passModel(lp)
    h.run()
    model_status, info = h.getModelStatus(), h.getInfo()
    name = h.modelStatusToString(model_status)
    status = {"Optimal": "optimal", "Infeasible": "infeasible", "Time limit reached": "limit"}.get(name, "error")
    has_x = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value) if has_x else None
    bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else -np.inf
    fun = float(info.objective_function_value) if has_x else np.inf
    if status == "optimal" and not integer.any():
        bound = fun  # an LP (no unstable ReLU): its optimum is exact, there is no MIP bound
    return Solved(status, x, fun, bound, int(info.mip_node_count), name)


def _select(idx: np.ndarray, n: int) -> sparse.csr_array:
    return sparse.csr_array((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, n))


def _encode_relu(p: _Milp, z: int, low: np.ndarray, up: np.ndarray) -> tuple[int, int]:
    """a = relu(z): fixed where the sign is known, big-M with one binary s where not:
    a >= z, a <= u s, a <= z - l (1 - s) (with a >= 0 from its bounds)."""
    n = low.shape[0]
    a = p.variables(np.maximum(low, 0.0), np.maximum(up, 0.0))
    active = np.flatnonzero(low >= 0)
    if active.size:
        sel = _select(active, n)
        p.rows([(a, sel), (z, -sel)], 0.0, 0.0)
    unstable = np.flatnonzero((low < 0) & (up > 0))
    if unstable.size:
        k = unstable.size
        sel = _select(unstable, n)
        s = p.variables(0.0, 1.0, n=k, integer=True)
        p.rows([(a, sel), (z, -sel)], 0.0, np.inf)
        p.rows([(a, sel), (s, sparse.diags_array(-up[unstable]))], -np.inf, 0.0)
        p.rows([(a, sel), (z, -sel), (s, sparse.diags_array(-low[unstable]))], -np.inf, -low[unstable])
    return a, int(unstable.size)


def encode(ops: list[Affine | str], bounds: dict[int, tuple[np.ndarray, np.ndarray]], x: np.ndarray,
           lo: np.ndarray, hi: np.ndarray, radius: float) -> tuple[_Milp, int, int]:
    """The MILP of "min t" over the box, without the class condition.
    Returns (milp, column of t, first column of the logits)."""
    p = _Milp()
    p.n_input = d = x.shape[0]
    xc = p.variables(lo, hi)
    p.objective = tc = p.variables(0.0, radius, n=1)
    eye, ones = sparse.eye_array(d), np.ones((d, 1))
    p.rows([(xc, eye), (tc, -ones)], -np.inf, x)  # x' - x <= t
    p.rows([(xc, eye), (tc, ones)], x, np.inf)  # x - x' <= t
    h, p.n_unstable = xc, 0
    for i, op in enumerate(ops):
        if op is RELU:
            h, k = _encode_relu(p, h, *bounds[i])
            p.n_unstable += k
            continue
        m = op.bias.shape[0]
        # pre-activation bounds help the solver's presolve; other affine outputs are free
        z_lo, z_hi = bounds.get(i + 1, (-np.inf, np.inf))
        z = p.variables(z_lo, z_hi, n=m)
        p.rows([(z, sparse.eye_array(m)), (h, -op.weight)], op.bias, op.bias)
        h = z
    return p, tc, h


def _class_row(p: _Milp, logits: int, y: int, j: int) -> np.ndarray:
    row = np.zeros((1, p.n_cols))
    row[0, logits + j], row[0, logits + y] = 1.0, -1.0
    return row


def _per_class(p: _Milp, tc: int, logits: int, y: int, classes: list[int], radius: float,
               deadline: float, solver: str, out: SampleResult) -> None:
    """One MILP per class j, each asked for t <= the best so far (a cut-off: a class that
    cannot beat it is proved infeasible, usually at the root)."""
    best, lower = radius, np.inf  # lower: min over classes of a bound on their own margin
    for j in classes:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:  # no time left for class j: nothing is known about it
            out.timed_out, lower = True, 0.0
            continue
        res = p.solve([(_class_row(p, logits, y, j), 0.0)], {tc: best}, remaining, solver)
        out.n_milp += 1
        if res.status == "infeasible":  # class j needs more than t = best
            lower = min(lower, best)
            continue
        if res.status == "error":
            raise MarginbenchError(f"attack=exact: HiGHS failed on class {j} ({res.message}); please report it")
        out.timed_out |= res.status == "limit"
        lower = min(lower, max(res.dual_bound, 0.0))
        if res.x is not None and res.fun < best:
            best, out.point = res.fun, res.x[:p.n_input].copy()
    out.value, out.lower_bound = best, min(lower, best)


def _disjunction(p: _Milp, tc: int, logits: int, y: int, classes: list[int], low_win: np.ndarray,
                 radius: float, deadline: float, solver: str, out: SampleResult) -> None:
    """One MILP: a binary b_j per class, sum b_j = 1, f_j - f_y >= L_j (1 - b_j) with L_j =
    ``low_win[j]`` a lower bound of f_j - f_y on the box (so b_j = 0 leaves the row inactive)."""
    b = p.variables(0.0, 1.0, n=len(classes), integer=True)
    rows = np.zeros((len(classes), p.n_cols))
    for r, j in enumerate(classes):
        rows[r, logits + j], rows[r, logits + y], rows[r, b + r] = 1.0, -1.0, low_win[j]
    p.rows([(0, rows)], low_win[classes], np.inf)
    p.rows([(b, np.ones((1, len(classes))))], 1.0, 1.0)
    res = p.solve([], {}, deadline - time.perf_counter(), solver)
    out.n_milp = 1
    if res.status == "error":
        raise MarginbenchError(f"attack=exact: HiGHS failed ({res.message}); please report it")
    out.timed_out = res.status == "limit"
    if res.x is not None:
        out.point, out.value = res.x[:p.n_input].copy(), res.fun
    bound = radius if res.status == "infeasible" else max(res.dual_bound, 0.0)
    out.lower_bound = min(bound, out.value)


def solve_sample(ops: list[Affine | str], x: np.ndarray, y: int, radius: float, time_limit: float,
                 formulation: str = "per_class", first: int | None = None, solver: str = "highspy"
                 ) -> SampleResult:
    """Exact margin of one flattened sample inside the L-inf ball of ``radius`` (which must
    hold an adversarial example for the result to be the margin; otherwise the answer is
    "none within radius": value = lower_bound = radius, point None)."""
    start = time.perf_counter()
    lo, hi = np.clip(x - radius, 0.0, 1.0), np.clip(x + radius, 0.0, 1.0)
    bounds = relu_bounds(ops, lo, hi)
    gap_lo = class_gap_lower(ops, bounds, y, lo, hi)  # of f_y - f_j
    # classes by how easily they win (most negative bound first); the attack's class first
    classes = [int(j) for j in np.argsort(gap_lo, kind="stable") if gap_lo[j] <= 0]
    if first in classes:
        classes.remove(first)
        classes.insert(0, first)
    p, tc, logits = encode(ops, bounds, x, lo, hi, radius)
    out = SampleResult(None, radius, radius, False, n_unstable=p.n_unstable,
                       pruned=[j for j in range(gap_lo.shape[0]) if j != y and j not in classes])
    if classes and formulation == "disjunction":
        low_win = class_gap_lower(ops, bounds, y, lo, hi, sign=-1.0)  # of f_j - f_y
        _disjunction(p, tc, logits, y, classes, low_win, radius, start + time_limit, solver, out)
    elif classes:
        _per_class(p, tc, logits, y, classes, radius, start + time_limit, solver, out)
    if radius >= 1.0 and out.point is None and out.lower_bound >= radius:
        out.value = out.lower_bound = np.inf  # the ball covers [0,1]: no adversarial exists
    out.seconds = time.perf_counter() - start
    return out


# ----------------------------------------------------------------------------------------
# The estimator: attack first (upper bound, box radius), then one MILP per sample
# ----------------------------------------------------------------------------------------


SOLVERS = ("highspy", "scipy")
OPTIONS = ("time_limit", "formulation", "solver", "seed")


def check_exact_options(spec: AttackSpec) -> None:
    """Build-time check (margins.ATTACK_CHECKS): unknown options, formulation, solver, and
    that highspy imports, before any model is loaded."""
    _options(spec)


def _options(spec: AttackSpec) -> tuple[float, str, str]:
    opts = dict(spec.options)
    unknown = set(opts) - set(OPTIONS)
    if unknown:
        raise MarginbenchError(f"attack=exact: unknown options {sorted(unknown)}; allowed: {', '.join(OPTIONS)}")
    formulation, solver = str(opts.get("formulation", "per_class")), str(opts.get("solver", "highspy"))
    if formulation not in FORMULATIONS:
        raise MarginbenchError(f"attack.options.formulation={formulation!r}; choose one of {', '.join(FORMULATIONS)}")
    if solver not in SOLVERS:
        raise MarginbenchError(f"attack.options.solver={solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver == "highspy":
        try:
            import highspy  # noqa: F401
        except ImportError:
            raise MarginbenchError(
                "attack=exact needs highspy (pip install highspy), or attack.options.solver=scipy (slower)"
            ) from None
    return float(opts.get("time_limit", 60.0)), formulation, solver


def upper_bounds(counting: CountingModel, x: Tensor, y_pred: Tensor, seed: int) -> MarginBatch:
    """fab_polish's verified margins, charged to ``counting``'s samples."""
    from marginbench.margins import build_estimator  # the registry imports this module

    cfg = copy.deepcopy(UPPER_ATTACK)
    cfg["options"]["seed"] = seed
    result = build_estimator(cfg, "Linf")(counting.model, x, y_pred, _checked=True)
    counting.charge(result.n_forward, result.n_backward)
    return result


def _verified(counting: CountingModel, x: Tensor, y_pred: Tensor, points: list[np.ndarray | None]
              ) -> tuple[np.ndarray, Tensor]:
    """Per sample, the MILP point or the first step out along its perturbation that the
    float32 network confirms (the whole batch at once: the same rows the final check sees).
    Returns (margin, +inf where none; points)."""
    has = torch.tensor([p is not None for p in points], device=x.device)
    delta = torch.zeros_like(x)
    for i, p in enumerate(points):
        if p is not None:
            delta[i] = torch.as_tensor(p, dtype=torch.float64).reshape(x.shape[1:]).to(x) - x[i]
    margin = np.full(x.shape[0], np.inf)
    best = x.clone()
    pending = has.clone()
    for factor in STEP_OUT:
        if not bool(pending.any()):
            break
        cand = torch.where(pending.view(-1, *[1] * (x.ndim - 1)), (x + factor * delta).clamp(0.0, 1.0), x)
        m, ok, pts = verify(counting, x, cand, y_pred, "Linf")
        newly = pending & torch.as_tensor(ok, device=x.device)
        best[newly] = pts[newly]
        margin[newly.cpu().numpy()] = m[newly.cpu().numpy()]
        pending &= ~newly
    return margin, best


def exact_margin(counting: CountingModel, x: Tensor, y_pred: Tensor, norm: str, spec: AttackSpec) -> Certified:
    """AttackFn of ``attack=exact`` (see the module docstring)."""
    if norm != "Linf":
        raise MarginbenchError(f"attack=exact computes L-inf margins only (got norm={norm}); use another attack for L2")
    time_limit, formulation, solver = _options(spec)
    ops = parse_network(counting, tuple(x.shape[1:]))
    check_network(ops, counting.model, x)
    upper = upper_bounds(counting, x, y_pred, spec.seed)
    xs = x.detach().double().cpu().reshape(x.shape[0], -1).numpy()
    with torch.no_grad():
        attack_class = counting(upper.x_adv.to(x)).argmax(1).cpu().numpy()
    results = []
    for i in range(x.shape[0]):
        radius = min(1.0, upper.margin[i] * (1 + BOX_SLACK)) if upper.success[i] else 1.0
        first = int(attack_class[i]) if upper.success[i] else None
        results.append(solve_sample(ops, xs[i], int(y_pred[i]), radius, time_limit, formulation, first, solver)
                       if time_limit > 0 else None)
    milp_margin, milp_points = _verified(counting, x, y_pred, [r.point if r else None for r in results])
    use_milp = milp_margin < upper.margin
    x_adv = torch.where(torch.as_tensor(use_milp, device=x.device).view(-1, *[1] * (x.ndim - 1)),
                        milp_points, upper.x_adv.to(x))
    lower = np.array([max(r.lower_bound - FLOAT32_SLACK, 0.0) if r else 0.0 for r in results])
    details = {"solver": results, "attack_margin": upper.margin, "milp_margin": milp_margin}
    return Certified(x_adv, lower, np.array([r is not None for r in results]), details=details)
