import sys
sys.path.insert(0, 'scripts')
import numpy as np, pandas as pd, torch
from marginbench.oracle import load_oracle
from marginbench.margins.exact import parse_network, solve_sample
from marginbench.margins import build_estimator
from bench_margins import load_attack
o = load_oracle("results/oracle/cnn_pgd")
d = pd.read_csv('results/bench/round11/oracle_polish_steps_Linf_samples.csv'); d = d[d.oracle == 'cnn_pgd'].reset_index(drop=True)
col='margin[fmn_polish_multistart_9]'
r = d[col].to_numpy(); ex = d.margin.to_numpy()
idx = np.nonzero(r > ex*1.01)[0]
ops = parse_network(o.model, tuple(o.images.shape[1:]))
name, cfg = load_attack('fmn_polish_multistart_9')
est = build_estimator(cfg, 'Linf') if True else None
x = o.images[idx]; y = torch.as_tensor(d.pred.to_numpy()[idx])
res = est(o.model, x, y)
np.savez('results/bench/round11/miss_points.npz', idx=idx, x_adv=res.x_adv.numpy(), margin=res.margin)
for k, i in enumerate(idx):
    xi = x[k].view(-1).double().numpy()
    sol = solve_sample(ops, xi, int(y[k]), float(r[i]), 60.0)
    ds = sol.point - xi; t = np.abs(ds).max()
    de = res.x_adv[k].view(-1).double().numpy() - xi; te = np.abs(de).max()
    se = np.sign(np.where(np.abs(de) > 0.5*te, de, 0)); ss = np.sign(np.where(np.abs(ds) > 0.5*t, ds, 0))
    both = (se != 0) & (ss != 0)
    print(f"row {i}: est {res.margin[k]:.4f} exact {t:.4f}; coords at vertex est {np.mean(np.abs(de)>0.99*te):.2f}; sign differs on {(se[both]!=ss[both]).sum()} of {both.sum()} shared; est class {o.model(res.x_adv[k:k+1]).argmax().item()} exact class {o.model(torch.tensor(sol.point,dtype=torch.float32).view(1,*x.shape[1:])).argmax().item()}")
