import numpy as np, pandas as pd, torch
from marginbench.oracle import load_oracle
from marginbench.margins.exact import parse_network, solve_sample
torch.manual_seed(0)
o = load_oracle("results/oracle/cnn_pgd")
d = pd.read_csv('results/bench/round11/oracle_polish_steps_Linf_samples.csv'); d = d[d.oracle == 'cnn_pgd'].reset_index(drop=True)
col='margin[fmn_polish_multistart_9]'
r = d[col].to_numpy(); ex = d.margin.to_numpy()
idx = np.nonzero(r > ex*1.01)[0]
ops = parse_network(o.model, tuple(o.images.shape[1:]))
m = o.model
for i in idx:
    x = o.images[i].numpy().reshape(-1).astype(np.float64); y = int(d.pred[i])
    res = solve_sample(ops, x, y, float(r[i]), 60.0)
    p = torch.tensor(res.point, dtype=torch.float32).view(1, *o.images.shape[1:])
    xi = o.images[i:i+1]
    delta = (p - xi).view(-1)
    t = delta.abs().max().item()
    with torch.no_grad():
        cls = m(p).argmax(1).item()
        # vertex-ness: coords at +-t (within 1e-6) or clamped to [0,1]
        at = ((delta.abs() > t*(1-1e-4)) ).float().mean().item()
        clamped = ((p.view(-1) <= 1e-7) | (p.view(-1) >= 1-1e-7)).float().mean().item()
        # pocket: random L-inf noise of size s*t around the exact point, projected to the 1.01 t ball
        fr = {}
        for s in (0.001, 0.01, 0.05):
            z = p + s*t*(2*torch.rand(2000, *p.shape[1:])-1)
            z = (xi + (z - xi).clamp(-1.01*t, 1.01*t)).clamp(0,1)
            fr[s] = (m(z).argmax(1) != y).float().mean().item()
        # sign vertex: x + 1.01 t sign(delta)
        v = (xi + 1.01*t*torch.sign(delta).view_as(xi)).clamp(0,1)
        vflip = m(v).argmax(1).item() != y
    print(f"row {i} exact {ex[i]:.4f} (milp {res.value:.4f}) est {r[i]:.4f} +{r[i]/ex[i]-1:.1%} class {cls} at+-t {at:.2f} clamped {clamped:.2f} sign-vertex flips {vflip} pocket {fr}")
