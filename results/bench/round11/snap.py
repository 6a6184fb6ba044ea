import numpy as np, pandas as pd, torch
from marginbench.oracle import load_oracle
o = load_oracle("results/oracle/cnn_pgd"); m = o.model
z = np.load('results/bench/round11/miss_points.npz'); idx = z['idx']
d = pd.read_csv('results/bench/round11/oracle_polish_steps_Linf_samples.csv'); d = d[d.oracle == 'cnn_pgd'].reset_index(drop=True)
ex = d.margin.to_numpy()[idx]; y = torch.as_tensor(d.pred.to_numpy()[idx])
x = o.images[idx]; xa = torch.tensor(z['x_adv'])
def bisect(x, s, y, hi, steps=20):
    lo = torch.zeros(len(x)); best = hi.clone(); ok = torch.zeros(len(x), dtype=torch.bool)
    view = (-1,1,1,1)
    # check hi first
    for _ in range(steps):
        t = (lo+hi)/2
        p = (x + t.view(view)*s).clamp(0,1)
        with torch.no_grad(): adv = m(p).argmax(1) != y
        hi = torch.where(adv, t, hi); lo = torch.where(adv, lo, t); ok |= adv
    return hi, ok
delta = xa - x; te = delta.flatten(1).abs().amax(1)
landed = m(xa).argmax(1)
xg = xa.clone().requires_grad_(True)
lg = m(xg); gap = lg.gather(1, landed[:,None]).squeeze(1) - lg.gather(1, y[:,None]).squeeze(1)
g = torch.autograd.grad(gap.sum(), xg)[0]
for thr in (0.5, 0.9, 0.99):
    big = delta.abs() > thr*te.view(-1,1,1,1)
    s = torch.where(big, delta.sign(), g.sign())
    t, ok = bisect(x, s, y, te*1.0)
    print(f"thr {thr}: snapped/exact", np.round((t/torch.tensor(ex)).numpy()-1, 4), "est/exact", np.round(te.numpy()/ex-1,4))
s = g.sign(); t, ok = bisect(x, s, y, te*1.0)
print("pure grad sign:", np.round((t/torch.tensor(ex)).numpy()-1, 4))
