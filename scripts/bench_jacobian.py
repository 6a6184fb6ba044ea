"""FAB's full Jacobian: pyautoattack's K backward calls vs one batched VJP, side by side.

Runs ``attack=fab`` (options.jacobian=loop, the library's code) and
``options.jacobian=batched`` on the same model, inputs and seed in one process, alternating
``--repeats`` times, and prints the wall / CPU time of each and how far their margins are
apart (bit-identical or the max absolute / relative difference).

    python scripts/bench_jacobian.py --model fm_madry --data fashion_mnist --n 100
    python scripts/bench_jacobian.py --model aa_resnet18 --n 10 --steps 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_margins import load_attack, load_data, load_model, run_estimator

from marginbench.margins import build_estimator


def timed(estimator, model, x, y_pred, batch_size):
    start, cpu = time.perf_counter(), time.process_time()
    res = run_estimator(estimator, model, x, y_pred, batch_size)
    return res, time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="fm_madry")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, torch.device("cpu"))
    x, _ = load_data(args.data, args.n)
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
