"""Greedy local search over vertices of the L-inf ball (one coordinate's sign flipped per
step, the best of all d flips), started at the preset's point, on the 12 oracle samples
fmn_polish_multistart_9 misses (hamming.py's miss_points.npz). Does it reach the exact
pockets, whatever its cost?"""
import sys
import numpy as np, pandas as pd, torch
from marginbench.oracle import load_oracle
torch.set_grad_enabled(False)
o = load_oracle("results/oracle/cnn_pgd"); m = o.model
z = np.load('results/bench/round11/miss_points.npz'); idx = z['idx']
d = pd.read_csv('results/bench/round11/oracle_polish_steps_Linf_samples.csv'); d = d[d.oracle == 'cnn_pgd'].reset_index(drop=True)
ex = d.margin.to_numpy()[idx]; ys = d.pred.to_numpy()[idx]
sweeps = int(sys.argv[1]) if len(sys.argv) > 1 else 30

def gap(zz, y):
    lg = m(zz); own = lg[:, y].clone(); lg[:, y] = -float('inf'); return lg.amax(1) - own

total_fwd = 0
for k, i in enumerate(idx):
    x = o.images[i:i+1]; y = int(ys[k])
    xa = torch.tensor(z['x_adv'][k:k+1]); delta = (xa - x).flatten()
    t = float(delta.abs().max()); s = torch.where(delta >= 0, 1.0, -1.0)
    dim = s.numel(); rho = 0.02; fwd = 0
    point = lambda sv, tt: (x + tt * sv.view_as(x)).clamp(0, 1)
    # the vertex of the preset's own signs: bisect t on it first (never above the preset's t)
    for _ in range(30):
        if rho < 1e-3:
            break
        tt = t * (1 - rho); cur = s.clone(); g = float(gap(point(cur, tt), y)); fwd += 1
        for _ in range(sweeps):
            if g > 0:
                break
            flips = cur.repeat(dim, 1); flips[torch.arange(dim), torch.arange(dim)] *= -1
            gc = gap((x.flatten() + tt * flips).clamp(0, 1).view(dim, *x.shape[1:]), y); fwd += dim
            j = int(gc.argmax())
            if float(gc[j]) <= g:
                break
            cur = flips[j].clone(); g = float(gc[j])
        if g > 0:
            lo, hi = 0.0, tt
            for _ in range(15):
                mid = (lo + hi) / 2; fwd += 1
                if float(gap(point(cur, mid), y)) > 0: hi = mid
                else: lo = mid
            t, s, rho = hi, cur, min(rho * 1.5, 0.2)
        else:
            rho /= 2
    total_fwd += fwd
    print(f"row {i}: preset +{z['margin'][k] / ex[k] - 1:.2%}  vertex search +{t / ex[k] - 1:.2%}  ({fwd} forward rows)")
print("mean forward rows per sample", total_fwd / len(idx))
