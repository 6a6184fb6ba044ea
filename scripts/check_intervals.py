"""Coverage and width of the robust-accuracy intervals on the demo runs.

For every demo run and n_attacked in {100, 500}: 200 seeded random attacked subsets; truth =
the run's own robust accuracy over all its N = 1000 samples. This is a *finite-population*
check (the subsets are drawn without replacement from those 1000 samples, the truth is their
mean), which is what ``ppi_finite_population`` targets; ``ppi`` and the classical intervals
target a super-population and are conservative here, markedly so at n = N / 2.
Prints coverage and median width per method; exits 1 if a coverage is below nominal - 2 points.

    PYTHONPATH=. python scripts/check_intervals.py [runs_dir] [n_resamples]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from run_folders import demo_runs_and_count  # same folder

from marginbench import intervals, metrics

LEVEL = 0.95
METHODS = ("ppi_finite_population", "ppi", "clopper_pearson", "wald")


def check_run(run: Path, n: int, n_resamples: int) -> dict:
    s = pd.read_csv(run / "samples.csv")
    eps = float(json.loads((run / "summary.json").read_text())["eps"])
    d_in, d_out = s["input_margin"].to_numpy(float), s["logit_margin"].to_numpy(float)
    correct = s["correct"].astype(bool).to_numpy()
    truth = metrics.robust_accuracy_attack(correct, d_in, eps)
    hits = {m: [] for m in METHODS}
    widths = {m: [] for m in METHODS}
    for seed in range(n_resamples):
        out = intervals.robust_accuracy_intervals(d_in, d_out, correct, eps, n_attacked=n, seed=seed,
                                                  level=LEVEL, algorithm1=False)
        for m in out["methods"]:
            hits[m["method"]].append(m["low"] <= truth <= m["high"])
            widths[m["method"]].append(m["width"])
    alg1 = metrics.robust_accuracy_from_subset(d_in, d_out, correct, eps, n_subset=n, n_repeats=10)
    row = {"model": run.name, "n": n, "truth": truth, "alg1_abs_err": abs(alg1["estimate"] - truth)}
    for m in METHODS:
        row[f"cov_{m}"] = float(np.mean(hits[m]))
        row[f"w_{m}"] = float(np.median(widths[m]))
    return row


def main(argv: list[str] | None = None) -> int:
    runs, n_resamples = demo_runs_and_count("check_intervals", __doc__.splitlines()[0], "n_resamples", "seeded attacked subsets per run and size", argv)
    table = pd.DataFrame([check_run(r, n, n_resamples) for r in runs for n in (100, 500)])
    table = table.rename(columns=lambda c: c.replace("ppi_finite_population", "ppi_fp")
                         .replace("clopper_pearson", "cp"))
    pd.set_option("display.width", 220)
    print(f"level {LEVEL}, {n_resamples} resamples; cov = coverage, w = median width; attack cost saved = 1 - n/N")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    cov = table[[c for c in table.columns if c.startswith("cov_")]]
    bad = (cov < LEVEL - 0.02).any(axis=1)
    for _, r in table[bad].iterrows():
        print(f"UNDER-COVERS: {r.model} n={r.n}")
    return int(bad.any())


if __name__ == "__main__":
    raise SystemExit(main())
