# Round 10: how many runner-up classes have a first-order boundary distance at x within c times the margin.
# Run from the repository root: PYTHONPATH=.:scripts OMP_NUM_THREADS=1 .venv/bin/python results/bench/round10/linear_distance_ratios.py
import sys, numpy as np, pandas as pd, torch
sys.path.insert(0, "scripts")
from bench_margins import load_model, load_data
from marginbench.oracle import load_oracle
from marginbench.margins.multistart import linear_distances
torch.set_num_threads(1)
def report(name, model, x, y, r):
    d = linear_distances(model, x, y, "Linf", pool=None).numpy()
    d.sort(1)
    ratio = d[:, :9] / r[:, None]
    print(name, "n", len(r))
    for c in (1.0, 1.5, 2, 3, 5):
        cnt = (ratio <= c).sum(1)
        print(f"  classes with linear dist <= {c}x margin: mean {cnt.mean():.2f}, zero-count share {np.mean(cnt==0):.2f}")
    print("  nearest-by-linear ratio quantiles", np.quantile(ratio[:,0], [0.05,.25,.5,.75,.95]).round(2))
for net in ("mlp_std", "cnn_pgd"):
    o = load_oracle(f"results/oracle/{net}")
    t = o.table
    y = torch.as_tensor(t["pred"].to_numpy())
    report(net, o.model, o.images, y, t["margin"].to_numpy())
for m, data, f, n in (("fm_madry", "fashion_mnist", "results/bench/round8/fm_madry_Linf_samples.csv", 200),
                      ("aa_resnet18", "../shared/data/cifar10_test_first100.npz", "results/bench/round8/aa_resnet18_Linf_samples.csv", 100)):
    s = pd.read_csv(f)
    model = load_model(m, torch.device("cpu"))
    x, _ = load_data(data, n)
    y = torch.as_tensor(s["pred"].to_numpy())
    report(m, model, x, y, s["margin[fab_polish_multistart]"].to_numpy())
