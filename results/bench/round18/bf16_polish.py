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

import numpy as np
import probe
import torch

import marginbench.margins.refine as refine
from marginbench.margins.counting import charged_to

GATE = 0.02  # bfloat16 logits here are within 0.5 % of float32 (bf16_speed.txt)
FLOAT32_PGD_IN_BALL = refine._pgd_in_ball


def bf16_pgd_in_ball(model, xs, ys, start, radius, norm, steps):
    """refine._pgd_in_ball with bfloat16 passes; same step rule, float32-verified successes."""
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
        z = refine._step_in_ball(z, grad, xs[live], radius[live], s, norm)
    return out, found


def timed(spec, model, x, y_pred, polish):
    refine._pgd_in_ball = polish
    return probe.run_preset(spec, model, x, y_pred)


def main() -> None:
    model_name, data, n, specs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    model, x, y_pred = probe.model_images_predictions(model_name, data, n)
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
