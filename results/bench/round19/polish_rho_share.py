"""Round 19 probe: how much of the truest preset's work is spent in its candidates' polish
*failure rounds at a small shrink factor* (rho), the rounds a rule "stop a candidate that has
converged (rho < rho0) while it is still behind its sample's best" could skip. This is an
upper bound on any such rule's saving, since it counts the failure rounds of every candidate,
winners included.

Counts model rows (one row = one sample through the model once), forward and backward
(module hooks on the model), by where the call comes from (a multi-start candidate, inside
its polish refine._pgd_in_ball or not; the rest) and,
for rows whose round failed (they run every PGD step), by the round's rho,
rho = 1 - radius / ||start - x||_inf, which refine.shrink sets to r (1 - rho).

    OMP_NUM_THREADS=1 .venv/bin/python results/bench/round19/polish_rho_share.py fm_madry fashion_mnist 100 fmn_polish_multistart_9
"""
import collections
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "round18"))
import probe  # noqa: E402  (round 18's: model, images, predictions, one timed preset run)

import marginbench.margins.multistart as multistart  # noqa: E402
import marginbench.margins.refine as refine  # noqa: E402

RHO_EDGES = (0.0025, 0.005, 0.01, 0.02, 0.04, 1.0)  # bucket upper edges


def rho_upper_edge(rho: float) -> float:
    """The bucket a round's rho falls in, by its upper edge (rho < edge)."""
    return next((edge for edge in RHO_EDGES if rho < edge), float("inf"))


def main() -> None:
    model_name, data, n, spec = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model, x, y_pred = probe.model_images_predictions(model_name, data, n)
    forward_rows = collections.Counter()  # where -> model rows
    backward_rows = collections.Counter()  # where -> rows of backward passes through the model
    failed_rows = collections.Counter()   # (where, rho bucket) -> forward rows of failed rows
    failed_bwd = collections.Counter()    # (where, rho bucket) -> backward rows of failed rows
    where = ["other"]
    model.register_forward_pre_hook(lambda _m, inp: forward_rows.update({where[0]: inp[0].shape[0]}))
    model.register_full_backward_pre_hook(lambda _m, grad_out: backward_rows.update({where[0]: grad_out[0].shape[0]}))

    plain_candidate, plain_pgd_in_ball = multistart._candidate, refine._pgd_in_ball

    def marked_candidate(*args, **kwargs):
        where[0] = "candidate"
        try:
            return plain_candidate(*args, **kwargs)
        finally:
            where[0] = "other"

    def counted_pgd_in_ball(model_, xs, ys, start, radius, norm, steps):
        source = where[0]
        where[0] = f"{source} polish"
        try:
            points, found = plain_pgd_in_ball(model_, xs, ys, start, radius, norm, steps)
        finally:
            where[0] = source
        rho = (1 - radius.double() / (start - xs).flatten(1).abs().amax(1).double().clamp_min(1e-12)).cpu().numpy()
        for value in rho[~found.cpu().numpy()]:
            bucket = (f"{source} polish", rho_upper_edge(float(value)))
            failed_rows[bucket] += steps + 1
            failed_bwd[bucket] += steps
        return points, found

    multistart._candidate, refine._pgd_in_ball = marked_candidate, counted_pgd_in_ball
    wall, margin = probe.run_preset(spec, model, x, y_pred)
    total, total_bwd = sum(forward_rows.values()), sum(backward_rows.values())
    print(f"{spec} on {n} {model_name} images: {wall:.1f} s, {int(np.isfinite(margin).sum())} broken")
    print(f"model rows, all: forward {total}, backward {total_bwd}")
    for key, rows in sorted(forward_rows.items()):
        print(f"  {key:18s} {rows:8d}  {rows / total:6.1%}   backward {backward_rows[key]:8d}  {backward_rows[key] / total_bwd:6.1%}")
    print("failed polish rounds (every PGD step run), by rho: forward rows, backward rows, their shares of all forward / backward rows")
    for (source, edge), rows in sorted(failed_rows.items()):
        bwd = failed_bwd[(source, edge)]
        print(f"  {source:18s} rho < {edge:<7g} {rows:8d} {bwd:8d}  {rows / total:6.1%} {bwd / total_bwd:6.1%}")
    for below in (0.01, 0.04, float("inf")):
        keys = [key for key in failed_rows if key[0] == "candidate polish" and key[1] <= below]
        rows, bwd = sum(failed_rows[key] for key in keys), sum(failed_bwd[key] for key in keys)
        print(f"candidate failure rounds at rho < {below:g}: {rows / total:.1%} of all forward rows, {bwd / total_bwd:.1%} of all backward rows")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
