"""Does the calibrated threshold keep its recall promise on the demo runs?

For every demo run (samples.csv: input_margin, logit_margin) and n_calibration in {200, 500}:
200 random calibration/test splits; λ from :func:`marginbench.detect.calibrate_threshold`
(target recall 0.95, δ 0.05) on the calibration part; realised recall and FPR on the test part.
Beside it the paper's uncalibrated threshold: the empirical 95%-TPR threshold of the same
calibration part. Prints a table. ``share_ok``: population rule (its guarantee is on the population recall; the
realised test recall scatters around it, ``exact`` is the beta-binomial probability that it
is >= target); ``ok_batch``: the batch rule told the test part's number of non-robust inputs.
Exits 1 if a batch-rule share is below 1 - δ - 2 standard errors of an n_splits-split proportion.

    python scripts/check_detector_calibration.py [runs_dir [n_splits (200)]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from run_folders import demo_runs_and_count  # same folder

from marginbench import detect, metrics

TARGET, DELTA = 0.95, 0.05


def _eps(run: Path) -> float:
    import json

    return float(json.loads((run / "summary.json").read_text())["eps"])


def one_split(d_in, d_out, eps, cal, test):
    c = detect.calibrate_threshold(d_in[cal], d_out[cal], eps, target_recall=TARGET, delta=DELTA)
    y_cal = metrics.nonrobust_labels(d_in[cal], eps)
    lam95 = metrics._lambda_at_tpr(y_cal, d_out[cal], TARGET)
    rec, fpr = detect.recall_and_fpr(d_in[test], d_out[test], eps, c.threshold)
    rec0, fpr0 = detect.recall_and_fpr(d_in[test], d_out[test], eps, lam95)
    m = int(metrics.nonrobust_labels(d_in[test], eps).sum())
    exact = detect.realised_recall_coverage(c.n_nonrobust, c.rank, m, TARGET)
    # batch rule: told the number m of non-robust test inputs (a count, not which ones)
    cb = detect.calibrate_threshold(d_in[cal], d_out[cal], eps, target_recall=TARGET, delta=DELTA, n_test=m)
    recb, fprb = detect.recall_and_fpr(d_in[test], d_out[test], eps, cb.threshold)
    return rec, fpr, rec0, fpr0, exact, recb, fprb


def check_run(run: Path, n_cal: int, n_splits: int) -> dict:
    s = pd.read_csv(run / "samples.csv")
    d_in, d_out = s["input_margin"].to_numpy(float), s["logit_margin"].to_numpy(float)
    eps, n = _eps(run), len(s)
    rng = np.random.default_rng(0)
    rows, refused = [], 0
    for _ in range(n_splits):
        perm = rng.permutation(n)
        try:
            rows.append(one_split(d_in, d_out, eps, perm[:n_cal], perm[n_cal:]))
        except detect.MarginbenchError:
            refused += 1
    r = np.array(rows) if rows else np.full((1, 7), np.nan)
    return {
        "model": run.name, "n_cal": n_cal, "refused": refused,
        "share_ok": float((r[:, 0] >= TARGET).mean()), "exact": float(r[:, 4].mean()),
        "fpr_cal": float(np.median(r[:, 1])),
        "ok_batch": float((r[:, 5] >= TARGET).mean()), "fpr_batch": float(np.median(r[:, 6])),
        "share_ok_tpr95": float((r[:, 2] >= TARGET).mean()),
        "fpr_tpr95": float(np.median(r[:, 3])), "fpr_full_paper": metrics.detection_metrics(d_in, d_out, eps)["fpr_at_95"],
    }


def main(argv: list[str] | None = None) -> int:
    runs, n_splits = demo_runs_and_count("check_detector_calibration", __doc__.splitlines()[0], "n_splits", "random calibration/test splits per run", argv)
    table = pd.DataFrame([check_run(r, k, n_splits) for r in runs for k in (200, 500)])
    pd.set_option("display.width", 200)
    print(f"target recall {TARGET}, delta {DELTA}, {n_splits} splits; FPR = median over splits")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    floor = 1 - DELTA - 2 * np.sqrt(DELTA * (1 - DELTA) / n_splits)
    # a refused calibration (too few non-robust samples) is the rule working, not failing
    ran = table[table["refused"] < n_splits]
    bad = ran[ran["ok_batch"] < floor]
    if len(bad):
        print(f"BELOW {floor:.3f}:", ", ".join(f"{m}/{k}" for m, k in zip(bad.model, bad.n_cal, strict=True)))
    return int(len(bad) > 0)


if __name__ == "__main__":
    raise SystemExit(main())
