"""FAB's full Jacobian: pyautoattack's K backward calls vs one batched VJP, side by side.

Runs ``attack=fab`` (options.jacobian=loop, the library's code) and
``options.jacobian=batched`` on the same model, inputs and seed in one process, alternating
``--repeats`` times, and prints the wall / CPU time of each and how far their margins are
apart (bit-identical or the max absolute / relative difference).

    python scripts/bench_jacobian.py --model fm_madry --data fashion_mnist --n 100
    python scripts/bench_jacobian.py --model aa_resnet18 --n 10 --steps 10

``--calls`` times only the Jacobian itself: one ``get_diff_logits_grads_batch`` call of
pyautoattack's FABAttack_PT against BatchedFABAttack's, at each ``--rows`` batch size (the
best of ``--repeats`` alternating calls), and says whether the two are bit-identical.
``--model`` may also be an oracle folder (results/oracle/<net>, its own test images), and
``--data random:CxHxW`` draws uniform inputs of that shape:

    python scripts/bench_jacobian.py --calls --model results/oracle/mlp_std --rows 10 100 --repeats 5
    python scripts/bench_jacobian.py --calls --model fm_pairs100 --data random:1x28x56 --rows 10 100
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from bench_margins import load_attack, load_data, load_model, run_estimator
from one_line_errors import OneLineParser  # same folder

from marginbench.margins import build_estimator
from marginbench.margins.base import AttackSpec
from marginbench.margins.counting import frozen_parameters
from marginbench.margins.fab import BatchedFABAttack, FABAttack_PT, make_fab
from marginbench.oracle import load_oracle


def timed(estimator, model, x, y_pred, batch_size):
    start, cpu = time.perf_counter(), time.process_time()
    res = run_estimator(estimator, model, x, y_pred, batch_size)
    return res, time.perf_counter() - start, time.process_time() - cpu


def model_and_inputs(model_name: str, data: str, n: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model and up to ``n`` inputs: an oracle folder brings its own images."""
    if Path(model_name).is_dir():
        oracle = load_oracle(Path(model_name))
        return oracle.model.eval(), oracle.images[:n]
    model = load_model(model_name, torch.device("cpu"))
    if data.startswith("random:"):
        shape = tuple(int(d) for d in data.split(":", 1)[1].split("x"))
        return model, torch.rand((n, *shape), generator=torch.Generator().manual_seed(0))
    return model, load_data(data, n)[0]


def time_calls(model: torch.nn.Module, x: torch.Tensor, rows: list[int], repeats: int) -> None:
    """One full-Jacobian call, library loop against batched VJP, at each batch size."""
    spec = AttackSpec("fab", steps=1)
    attacks = {"loop": make_fab(model, "Linf", spec, x.device, cls=FABAttack_PT),
               "batched": make_fab(model, "Linf", spec, x.device, cls=BatchedFABAttack)}
    for b in rows:
        xb = x[:b]
        with torch.no_grad():
            la = model(xb).argmax(1)
        out = {mode: fab.get_diff_logits_grads_batch(xb, la) for mode, fab in attacks.items()}  # also warms up
        best = {mode: float("inf") for mode in attacks}
        for _ in range(repeats):
            for mode, fab in attacks.items():  # alternating: both see the same machine load
                start = time.perf_counter()
                fab.get_diff_logits_grads_batch(xb, la)
                best[mode] = min(best[mode], time.perf_counter() - start)
        same = all(torch.equal(u, v) for u, v in zip(out["loop"], out["batched"], strict=True))
        print(f"  rows {len(xb):4d}: loop {best['loop'] * 1e3:9.1f} ms  batched {best['batched'] * 1e3:9.1f} ms  "
              f"batched speed-up {best['loop'] / best['batched']:5.2f}x  bit-identical {same}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser("bench_jacobian", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="fm_madry")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--calls", action="store_true", help="time single Jacobian calls, not whole attacks")
    p.add_argument("--rows", type=int, nargs="+", default=[10, 100], help="batch sizes of --calls")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x = model_and_inputs(args.model, args.data, max([args.n, *args.rows]) if args.calls else args.n)
    if args.calls:
        print(f"model={args.model} K={model(x[:1]).shape[1]} threads={torch.get_num_threads()}")
        with frozen_parameters(model):  # as in a run: input gradients only (the loop's backward() would add weight grads)
            time_calls(model, x, args.rows, max(args.repeats, 1))
        return 0
    with torch.no_grad():
        y_pred = model(x).argmax(1)
    runs: dict[str, list] = {"loop": [], "batched": []}
    for _ in range(args.repeats):
        for mode in runs:  # alternating: both see the same machine load
            _, cfg = load_attack(f"fab:steps={args.steps},restarts={args.restarts},options.jacobian={mode}")
            runs[mode].append(timed(build_estimator(cfg, "Linf"), model, x, y_pred, args.batch_size))
    (a, *_), (b, *_) = runs["loop"][0], runs["batched"][0]
    print(f"model={args.model} n={len(x)} steps={args.steps} restarts={args.restarts} threads={torch.get_num_threads()}")
    for mode, rs in runs.items():
        wall, cpu = np.median([r[1] for r in rs]), np.median([r[2] for r in rs])
        res = rs[0][0]
        print(f"  {mode:8s} wall {wall:8.2f}s  cpu {cpu:8.2f}s  bwd/sample {res.n_backward.mean():7.1f}  "
              f"median margin {np.median(res.margin):.6g}")
    both = a.success & b.success
    diff = np.abs(a.margin[both] - b.margin[both])
    rel = diff / np.maximum(a.margin[both], 1e-12)
    print(f"  x_adv bit-identical: {torch.equal(a.x_adv, b.x_adv)}; margins identical on "
          f"{int((a.margin == b.margin).sum())}/{len(x)}; max |diff| {diff.max(initial=0):.3g} "
          f"(relative {rel.max(initial=0):.3g}); success equal: {bool((a.success == b.success).all())}")
    speedup = np.median([r[1] for r in runs["loop"]]) / np.median([r[1] for r in runs["batched"]])
    print(f"  batched speed-up (wall): {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
