"""Round 18 probe: the polish (refine.shrink's PGD search, 66 % of the truest preset's time
on fm_madry, round 13) with its passes in CPU bfloat16 autocast and every success checked
in float32 before it is taken.  Runs `fab` and each estimator with the float32 polish
(as shipped) and with the bfloat16 one, in one process, and prints wall seconds, the
ratio to `fab` and how often each is as tight as `fab` (within 1e-4 relative).

    OMP_NUM_THREADS=1 .venv/bin/python results/bench/round18/bf16_polish.py fm_madry fashion_mnist 100 EST...

A bfloat16 step is only a proposal: a row counts as flipped when a float32 forward pass
says so, and only rows whose bfloat16 runner-up gap is above -GATE (relative to the
largest logit) pay for that check. Margins stay verified upper bounds.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]
import bench_margins as bm  # noqa: E402

import marginbench.margins.refine as refine  # noqa: E402
from marginbench.margins import build_estimator  # noqa: E402
from marginbench.margins.counting import charged_to  # noqa: E402

GATE = 0.02  # bfloat16 logits here are within 0.5 % of float32 (bf16_speed.txt)
FLOAT32_PGD_IN_BALL = refine._pgd_in_ball


def bf16_pgd_in_ball(model, xs, ys, start, radius, norm, steps):
    """refine._pgd_in_ball with bfloat16 passes; same step rule, float32-verified successes."""
    view = (-1,) + (1,) * (xs.ndim - 1)
    out = start.clone()
    found = torch.zeros(xs.shape[0], dtype=torch.bool, device=xs.device)
    z = (xs + refine._project(start - xs, radius, norm)).clamp_(0.0, 1.0)
    live = torch.arange(xs.shape[0], device=xs.device)
    for s in range(steps + 1):
        need_grad = s < steps
        with charged_to(model, live), torch.enable_grad():
            z.requires_grad_(need_grad)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(z).float()
            gap = refine._runner_up_gap(logits, ys[live])
            grad = torch.autograd.grad(gap.sum(), z)[0] if need_grad else None
        z = z.detach()
        scale = logits.detach().abs().amax(1)
        maybe = (gap.detach() > -GATE * scale).nonzero().squeeze(1)
        flipped = torch.zeros_like(gap, dtype=torch.bool)
        if maybe.numel():
            with charged_to(model, live[maybe]), torch.no_grad():
                flipped[maybe] = refine._runner_up_gap(model(z[maybe]), ys[live[maybe]]) > 0
        out[live[flipped]] = z[flipped]
        found[live[flipped]] = True
        keep = ~flipped
        if grad is None or not bool(keep.any()):
            break
        live, z, grad = live[keep], z[keep], grad[keep]
        r = radius[live]
        alpha = (r * 0.25 * 0.5 ** s).view(view)
        if norm == "Linf":
            z = z + alpha * grad.sign()
        else:
            z = z + alpha * grad / grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(view)
        z = (xs[live] + refine._project(z - xs[live], r, norm)).clamp_(0.0, 1.0)
    return out, found


def timed(spec, model, x, y_pred, polish):
    refine._pgd_in_ball = polish
    _, cfg = bm.load_attack(spec)
    start = time.time()
    margin = bm.run_estimator(build_estimator(cfg, "Linf"), model, x, y_pred, 100).margin
    return time.time() - start, margin


def main() -> None:
    torch.set_num_threads(1)
    model_name, data, n, specs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    model = bm.load_model(model_name, torch.device("cpu"))
    x, _ = bm.load_data(data, n)
    with torch.no_grad():
        y_pred = model(x).argmax(1)
    fab_s, fab_m = timed("fab", model, x, y_pred, FLOAT32_PGD_IN_BALL)
    print(f"{'fab':28s} {'-':5s} wall {fab_s:7.2f}", flush=True)
    for spec in specs:
        for tag, polish in (("fp32", FLOAT32_PGD_IN_BALL), ("bf16", bf16_pgd_in_ball)):
            wall, m = timed(spec, model, x, y_pred, polish)
            ok = np.isfinite(m) & np.isfinite(fab_m)
            tight = np.mean(m[ok] <= fab_m[ok] * (1 + 1e-4))
            print(f"{spec:28s} {tag:5s} wall {wall:7.2f} ({wall / fab_s:.2f}x fab) "
                  f"as tight as fab {tight:.1%}  unbroken {int((~np.isfinite(m)).sum())}", flush=True)


if __name__ == "__main__":
    main()
