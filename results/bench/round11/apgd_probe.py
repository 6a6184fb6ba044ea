import sys, numpy as np, pandas as pd, torch
from marginbench.oracle import load_oracle
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
torch.manual_seed(0)
net = sys.argv[1]; col = sys.argv[2]; frac = float(sys.argv[3])
o = load_oracle(f"results/oracle/{net}")
d = pd.read_csv('results/bench/round11/oracle_polish_steps_Linf_samples.csv'); d = d[d.oracle == net].reset_index(drop=True)
r = d[col].to_numpy(); ex = d.margin.to_numpy()
sel = np.isfinite(r) & (d.status == 'exact').to_numpy()
x = o.images; y = torch.as_tensor(d.pred.to_numpy())
miss = sel & (r > ex * 1.01)
print("misses", miss.sum(), "of", sel.sum())
for name, mk in [("apgd-ce", lambda e: APGDAttack(o.model, norm='Linf', eps=e, n_iter=100, n_restarts=1, loss='ce', seed=0, device='cpu')),
                 ("apgd-dlr", lambda e: APGDAttack(o.model, norm='Linf', eps=e, n_iter=100, n_restarts=1, loss='dlr', seed=0, device='cpu')),
                 ("apgd-t", lambda e: APGDAttack_targeted(o.model, norm='Linf', eps=e, n_iter=100, n_restarts=1, n_target_classes=9, seed=0, device='cpu'))]:
    ok = []
    for i in np.nonzero(sel)[0]:
        eps = float(r[i] * frac)
        a = mk(eps)
        if name == "apgd-t":
            a.n_target_classes = 9
        xa = a.perturb(x[i:i+1].clone(), y[i:i+1].clone())
        with torch.no_grad():
            flip = bool(o.model(xa).argmax(1).item() != y[i].item())
        ok.append(flip)
    ok = np.array(ok); m = miss[sel]
    print(name, f"eps={frac}*r: success on misses {ok[m].sum()}/{m.sum()}, on others {ok[~m].sum()}/{(~m).sum()} (possible only where r*{frac} > exact: {(r*frac > ex)[sel][~m].sum()})")
