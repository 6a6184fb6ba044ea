import sys, numpy as np, pandas as pd, torch
from marginbench.oracle import load_oracle
from pyautoattack.square import SquareAttack
net = sys.argv[1]; col = sys.argv[2]; frac = float(sys.argv[3]); q = int(sys.argv[4])
o = load_oracle(f"results/oracle/{net}")
d = pd.read_csv('results/bench/round11/oracle_polish_steps_Linf_samples.csv'); d = d[d.oracle == net].reset_index(drop=True)
r = d[col].to_numpy(); ex = d.margin.to_numpy()
miss = np.isfinite(r) & (r > ex * 1.01)
idx = np.nonzero(miss)[0]
x = o.images[idx]; y = torch.as_tensor(d.pred.to_numpy()[idx])
ok=[]
for k,i in enumerate(idx):
    a = SquareAttack(o.model, norm='Linf', eps=float(r[i]*frac), n_queries=q, p_init=0.8, n_restarts=1, seed=0, device='cpu')
    xa = a.perturb(x[k:k+1].clone(), y[k:k+1].clone())
    with torch.no_grad(): ok.append(bool(o.model(xa).argmax(1).item()!=y[k].item()))
print(f"square {q} queries at {frac}*r: {sum(ok)}/{len(ok)}", ok)
# and at the exact margin * 1.005 (the pocket exists there)
ok=[]
for k,i in enumerate(idx):
    a = SquareAttack(o.model, norm='Linf', eps=float(ex[i]*1.005), n_queries=q, p_init=0.8, n_restarts=1, seed=0, device='cpu')
    xa = a.perturb(x[k:k+1].clone(), y[k:k+1].clone())
    with torch.no_grad(): ok.append(bool(o.model(xa).argmax(1).item()!=y[k].item()))
print(f"square {q} queries at 1.005*exact: {sum(ok)}/{len(ok)}")
