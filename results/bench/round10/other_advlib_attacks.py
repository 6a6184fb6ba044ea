# Round 10: adv-lib PDPGD and Trust Region (unpolished) against the exact oracle margins, next to FMN.
# Run from the repository root: PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python -W ignore results/bench/round10/other_advlib_attacks.py
import sys, time, math, numpy as np, torch
from adv_lib.attacks import pdpgd, fmn, tr
from marginbench.oracle import load_oracle
torch.set_num_threads(1)
def margins(model, x, y, adv):
    with torch.no_grad():
        ok = model(adv).argmax(1) != y
    n = (adv - x).flatten(1).abs().amax(1)
    return torch.where(ok, n, torch.full_like(n, math.inf)).numpy()
for net in ("mlp_std", "cnn_pgd"):
    o = load_oracle(f"results/oracle/{net}")
    m = o.model.eval()
    for p in m.parameters(): p.requires_grad_(False)
    x = o.images; y = torch.as_tensor(o.table["pred"].to_numpy().copy()); ex = o.table["margin"].to_numpy()
    for name, fn in [("fmn100", lambda: fmn(m, x, y, norm=float("inf"), steps=100)),
                     ("pdpgd100", lambda: pdpgd(m, x, y, norm=float("inf"), num_steps=100)),
                     ("pdpgd500", lambda: pdpgd(m, x, y, norm=float("inf"), num_steps=500)),
                     ("tr100", lambda: tr(m, x, y, iter=100, p=float("inf"), c=9)),
                     ("tr100a", lambda: tr(m, x, y, iter=100, p=float("inf"), c=9, adaptive=True))]:
        torch.manual_seed(0); t = time.perf_counter()
        adv = fn(); dt = time.perf_counter() - t
        r = margins(m, x, y, adv)
        ok = np.isfinite(r)
        print(f"{net} {name}: within1% {np.mean(ok & (r <= ex*1.01)):.3f} mean over {np.mean(r[ok]/ex[ok]-1):.4f} fail {(~ok).sum()} below {np.sum(r < ex - 1e-6)} {dt:.1f}s", flush=True)
