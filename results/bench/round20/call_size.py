"""Round 20 probe: could packing the model calls differently (a polish that refills finished
rows, "continuous batching") bring the truest preset's wall time down to `fab`'s? The
preset's polish makes many small calls (round 18: 1,102 of its 1,638 polish calls carry
fewer than 64 rows), `fab` makes few calls of a whole batch. This bounds that idea without
building it.

1. The model's cost per call against its number of rows, in a warm loop on one batch:
   forward without gradient, forward recording the graph, and the backward after it (best
   of REPEATS, one thread). It shows how the cost per row falls with the call's size.
2. Every model call of each estimator on the first N images, by rows (module hooks: each
   forward call, each backward through the model), and the time spent inside the model in
   that run (forward hooks and timed gradient calls): the run's own prices per row.
3. The truest preset's model time at the base estimator's in-run cost per row, i.e. as if
   every one of its calls were as full as `fab`'s 100-row batches, with its time outside the
   model unchanged: a bound on what any repacking of its calls could give.

    OMP_NUM_THREADS=1 .venv/bin/python results/bench/round20/call_size.py fm_madry fashion_mnist 100 fab fmn_polish_multistart_9
"""
import collections
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "round18"))
import probe  # noqa: E402  (round 18's: model, images, predictions, one timed preset run)

SIZES = (1, 2, 4, 8, 16, 32, 64, 100, 128, 192, 256)
REPEATS = 11


def best_ms(call, repeats: int = REPEATS) -> float:
    call()  # warm-up: first-call allocations are not the cost of a call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def cost_per_call(model: torch.nn.Module, x: torch.Tensor) -> dict[int, tuple[float, float, float]]:
    """rows -> (forward ms without gradient, forward ms recording the graph, backward ms).
    The graph-recording forward is timed on its own so that the backward column is
    (forward + backward) minus the forward that recorded its graph, not the no-grad one."""
    table = {}
    for rows in SIZES:
        batch = x[torch.arange(rows) % x.shape[0]].clone()

        def forward(batch: torch.Tensor = batch) -> None:
            with torch.no_grad():
                model(batch)

        def forward_graph(batch: torch.Tensor = batch) -> None:
            model(batch.clone().requires_grad_(True))

        def forward_backward(batch: torch.Tensor = batch) -> None:
            model(batch.clone().requires_grad_(True)).sum().backward()

        graph = best_ms(forward_graph)
        table[rows] = (best_ms(forward), graph, max(best_ms(forward_backward) - graph, 0.0))
    return table


class InRunClock:
    """Seconds spent inside the model's forward calls (module hooks) and inside every gradient
    call (torch.autograd.grad, adv-lib FMN's imported copy of it, Tensor.backward) during one
    run: the model's own time in the run, with the run's real inputs and interleaving, against
    which the per-call table's price of the same calls can be checked."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.forward_s, self.backward_s, self._started = model, 0.0, 0.0, 0.0

    def _timed(self, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.backward_s += time.perf_counter() - start
        return wrapper

    def __enter__(self) -> "InRunClock":
        import adv_lib.attacks.fast_minimum_norm as fmn
        self._saved = (torch.autograd.grad, fmn.grad, torch.Tensor.backward)
        torch.autograd.grad, fmn.grad = self._timed(torch.autograd.grad), self._timed(fmn.grad)
        torch.Tensor.backward = self._timed(torch.Tensor.backward)

        def start(_m, _inp) -> None:
            self._started = time.perf_counter()

        def stop(_m, _inp, _out) -> None:
            self.forward_s += time.perf_counter() - self._started
        self._hooks = [self.model.register_forward_pre_hook(start), self.model.register_forward_hook(stop)]
        return self

    def __exit__(self, *_exc) -> None:
        import adv_lib.attacks.fast_minimum_norm as fmn
        torch.autograd.grad, fmn.grad, torch.Tensor.backward = self._saved
        for hook in self._hooks:
            hook.remove()


def calls_of(spec: str, model: torch.nn.Module, x: torch.Tensor, y_pred: torch.Tensor):
    forward_rows: list[int] = []  # negative: the forward recorded a graph (a backward may follow)
    backward_rows: list[int] = []
    hooks = [
        model.register_forward_pre_hook(
            lambda _m, inp: forward_rows.append(-inp[0].shape[0] if torch.is_grad_enabled() else inp[0].shape[0])),
        model.register_full_backward_pre_hook(lambda _m, grad_out: backward_rows.append(grad_out[0].shape[0])),
    ]
    try:
        with InRunClock(model) as clock:
            wall, _ = probe.run_preset(spec, model, x, y_pred)
    finally:
        for hook in hooks:
            hook.remove()
    return wall, clock, np.array(forward_rows, dtype=float), np.array(backward_rows, dtype=float)


def main() -> None:
    model_name, data, n, specs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    model, x, y_pred = probe.model_images_predictions(model_name, data, n)
    table = cost_per_call(model, x)
    print(f"{model_name}, one thread, torch {torch.__version__}; best of {REPEATS}")
    print(f"{'rows':>5s} {'fwd ms':>8s} {'graph fwd ms':>13s} {'bwd ms':>8s} {'fwd us/row':>11s} "
          f"{'graph us/row':>13s} {'bwd us/row':>11s}")
    for rows, costs in table.items():
        print(f"{rows:5d} {costs[0]:8.3f} {costs[1]:13.3f} {costs[2]:8.3f} {1e3 * costs[0] / rows:11.1f} "
              f"{1e3 * costs[1] / rows:13.1f} {1e3 * costs[2] / rows:11.1f}")

    print(f"\nestimators on {n} {model_name} images: wall s without hooks, then one run with hooks on")
    header = ("estimator", "wall s", "wall s hooked", "fwd calls (graph)", "fwd rows (graph)", "bwd calls",
              "bwd rows", "rows/call", "in the model: fwd s + grad s (share of hooked wall)", "us per fwd row",
              "us per bwd row")
    print(" | ".join(header))
    results = {}
    for spec in specs:
        wall, _ = probe.run_preset(spec, model, x, y_pred)
        hooked_wall, clock, fwd, bwd = calls_of(spec, model, x, y_pred)
        fwd_rows, bwd_rows = np.abs(fwd).sum(), bwd.sum()
        results[spec] = (wall, hooked_wall, clock, fwd_rows, bwd_rows)
        sizes = collections.Counter(np.minimum(np.abs(fwd) // 64, 3).astype(int).tolist())
        in_model = clock.forward_s + clock.backward_s
        print(" | ".join([
            spec, f"{wall:.1f}", f"{hooked_wall:.1f}", f"{fwd.size} ({int((fwd < 0).sum())})",
            f"{int(fwd_rows)} ({int(-fwd[fwd < 0].sum())})", f"{bwd.size}", f"{int(bwd_rows)}",
            f"{(fwd_rows + bwd_rows) / (fwd.size + bwd.size):.1f}",
            f"{clock.forward_s:.1f} + {clock.backward_s:.1f} ({in_model / hooked_wall:.0%})",
            f"{1e6 * clock.forward_s / fwd_rows:.0f}", f"{1e6 * clock.backward_s / bwd_rows:.0f}",
        ]) + "   fwd calls by rows 0-63/64-127/128-191/192+: " + "/".join(str(sizes.get(b, 0)) for b in range(4)))
    if len(specs) == 2:
        (base_wall, base_hooked, base, base_fwd_rows, base_bwd_rows) = results[specs[0]]
        (wall, hooked, clock, fwd_rows, bwd_rows) = results[specs[1]]
        # Packing the calls as full as the base's (100-row batches, every call full) at best
        # gives the base's in-run cost per row; the time outside the model stays as it is.
        at_base_prices = fwd_rows * base.forward_s / base_fwd_rows + bwd_rows * base.backward_s / base_bwd_rows
        in_model = clock.forward_s + clock.backward_s
        print(f"\n{specs[1]} / {specs[0]}: wall {wall / base_wall:.2f}x without hooks, {hooked / base_hooked:.2f}x hooked. "
              f"Its model time at {specs[0]}'s in-run cost per row: {at_base_prices:.1f} s instead of {in_model:.1f} s "
              f"({at_base_prices / in_model - 1:+.0%}); with that and the rest as is it would take "
              f"{(hooked - in_model + at_base_prices) / base_hooked:.2f}x {specs[0]}'s hooked wall")


if __name__ == "__main__":
    main()
