# Round 10: the full Jacobian by one backward through the rows repeated K times, against pyautoattack's loop.
# Run from the repository root: PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python -W ignore results/bench/round10/jacobian_replicated_rows.py fm_madry fashion_mnist
import sys, time, torch
sys.path.insert(0, "scripts")
from bench_margins import load_model, load_data
from marginbench.margins.counting import frozen_parameters
from pyautoattack.fab_pt import FABAttack_PT
torch.set_num_threads(1)
name = sys.argv[1]; data = sys.argv[2]
model = load_model(name, torch.device("cpu")).eval()
x, _ = load_data(data, 128)
def replicated(model, imgs, la):
    n = imgs.shape[0]
    with torch.no_grad(): K = model(imgs[:1]).shape[1]
    im = imgs.repeat(K, *([1] * (imgs.ndim - 1))).requires_grad_()  # class-major: rows k*n+i
    with torch.enable_grad():
        y = model(im)
        cot = torch.zeros_like(y)
        cls = torch.arange(K).repeat_interleave(n)
        cot[torch.arange(K * n), cls] = 1.0
        g = torch.autograd.grad(y, im, cot)[0]
    g2 = g.view(K, n, *imgs.shape[1:])
    y = y.detach()[:n]
    y2 = y  # logits of the first copy
    df = y2 - y2[torch.arange(n), la].unsqueeze(1)
    dg = g2 - g2[la, torch.arange(n)].unsqueeze(0)
    df[torch.arange(n), la] = 1e10
    return df, dg.transpose(0, 1)
with frozen_parameters(model):
    fab = FABAttack_PT(model, norm="Linf", device="cpu")
    for rows in (4, 10, 32, 100):
        xi = x[:rows]
        with torch.no_grad(): la = model(xi).argmax(1)
        best = {}
        for k in range(3):
            for nm, fn in (("loop", lambda: fab.get_diff_logits_grads_batch(xi, la)), ("repl", lambda: replicated(model, xi, la))):
                t = time.perf_counter(); out = fn(); dt = time.perf_counter() - t
                best[nm] = min(best.get(nm, 1e9), dt); res = out
                if nm == "loop": ref = out
                else:
                    same = torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
                    diff = (ref[1] - out[1]).abs().max().item()
        print(f"{name} rows {rows}: loop {best['loop']*1e3:.1f} ms repl {best['repl']*1e3:.1f} ms speed-up {best['loop']/best['repl']:.2f}x identical {same} maxdiff {diff:.2e}", flush=True)
