#!/usr/bin/env python
"""Margin estimators against the truth: exact L-inf margins of the oracle networks.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/bench_oracle.py \
        --oracle results/oracle/mlp_std results/oracle/cnn_pgd \
        --estimators fab fab_polish fmn apgd_bisect fab_targeted

Estimators are configs/attack names with optional overrides, as in bench_margins.py
(``fmn:steps=200``). Per oracle network and estimator, over the samples whose margin is
``exact`` (results/oracle/<net>/margins.csv): the share within 1 % of the exact margin, the
mean and worst overshoot (margin / exact - 1; failures left out of both and counted in
``failures``), and the share below the certified lower bound (impossible for a verified
margin; tolerance 1e-6, base.EXACT_TOL), plus the costs of bench_margins.py. An ``all`` row
pools the networks. Writes the table to --out and per-sample margins next to it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_margins import check_counts, checked_attacks, run_estimator  # noqa: E402  (same folder)
from one_line_errors import OneLineParser, run_main  # noqa: E402  (same folder)

from marginbench.cache import atomic_write_text  # noqa: E402
from marginbench.config import AttackConfig  # noqa: E402
from marginbench.errors import MarginbenchError  # noqa: E402
from marginbench.margins import build_estimator  # noqa: E402
from marginbench.margins.base import EXACT_TOL  # noqa: E402
from marginbench.oracle import Oracle, load_oracle  # noqa: E402
from marginbench.settings import check_out_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WITHIN = 0.01  # "within 1 %": margin <= exact * 1.01


def score(margin: np.ndarray, exact: np.ndarray, lower: np.ndarray) -> dict[str, float]:
    """Tightness of ``margin`` against the exact margins (rows where the truth is known)."""
    found = np.isfinite(margin)
    over = margin[found] / exact[found] - 1
    return {
        "n_exact": int(exact.size),
        "share_within_1pct": float(np.mean(found & (margin <= exact * (1 + WITHIN)))),
        "mean_overshoot": float(over.mean()) if over.size else np.nan,
        "worst_overshoot": float(over.max()) if over.size else np.nan,
        "share_below_exact": float(np.mean(margin < lower - EXACT_TOL)),
        "failures": int((~found).sum()),
    }


def checked_oracle(folder: Path) -> Oracle:
    """An oracle whose network still predicts what its margins.csv was computed for (so its
    ``pred`` column is the network's prediction, the class every estimator attacks)."""
    oracle = load_oracle(folder)
    with torch.no_grad():
        pred = oracle.model(oracle.images).argmax(1)
    if not np.array_equal(pred.numpy(), oracle.table["pred"].to_numpy()):
        raise MarginbenchError(f"{oracle.name}: the network's predictions differ from margins.csv; "
                               "regenerate the oracle (scripts/make_oracle.py)")
    return oracle


def bench_net(oracle: Oracle, attacks: list[tuple[str, AttackConfig]], batch: int) -> tuple[list[dict], pd.DataFrame]:
    table = oracle.table
    x = oracle.images
    pred = torch.tensor(table["pred"].to_numpy(), dtype=torch.int64)  # equal to the network's, checked_oracle saw to it
    known = table["status"].to_numpy() == "exact"
    exact, lower = table["margin"].to_numpy(float), table["lower_bound"].to_numpy(float)
    rows, per_sample = [], table[["index", "label", "pred", "margin", "lower_bound", "status"]].copy()
    for label, cfg in attacks:
        estimator = build_estimator(cfg, "Linf")
        start, cpu = time.perf_counter(), time.process_time()
        result = run_estimator(estimator, oracle.model, x, pred, batch)
        cpu = time.process_time() - cpu
        print(f"[oracle] {oracle.name} {label}: {time.perf_counter() - start:.1f}s wall, {cpu:.1f}s CPU", flush=True)
        per_sample[f"margin[{label}]"] = result.margin
        per_sample[f"agreement[{label}]"] = result.agreement
        below = result.margin < lower - EXACT_TOL  # on every sample, exact or not
        row = {"oracle": oracle.name, "estimator": label,
               **score(result.margin[known], exact[known], lower[known]),
               "n_below_lower_bound_all": int(below.sum()),
               "fwd_per_sample": float(result.n_forward.mean()), "bwd_per_sample": float(result.n_backward.mean()),
               "seconds_per_sample": float(result.seconds.mean()), "cpu_seconds_per_sample": cpu / len(x)}
        rows.append(row)
    return rows, per_sample.assign(oracle=oracle.name)


def pooled(rows: list[dict], samples: list[pd.DataFrame], specs: list[str]) -> list[dict]:
    """The ``all`` rows: every network's exact samples together."""
    frame = pd.concat(samples, ignore_index=True)
    known = frame["status"].to_numpy() == "exact"
    out = []
    for spec in specs:
        label = spec
        m = frame[f"margin[{label}]"].to_numpy(float)
        mine = [r for r in rows if r["estimator"] == label]
        weights = np.array([r["n_exact"] for r in mine], float)
        out.append({"oracle": "all", "estimator": label,
                    **score(m[known], frame["margin"].to_numpy(float)[known], frame["lower_bound"].to_numpy(float)[known]),
                    "n_below_lower_bound_all": sum(r["n_below_lower_bound_all"] for r in mine),
                    **{k: float(np.average([r[k] for r in mine], weights=weights))
                       for k in ("fwd_per_sample", "bwd_per_sample", "seconds_per_sample", "cpu_seconds_per_sample")}})
    return out


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser("bench_oracle", description=__doc__.split("\n")[0])
    p.add_argument("--oracle", nargs="+", type=Path,
                   default=[ROOT / "results" / "oracle" / n for n in ("mlp_std", "cnn_pgd")])
    p.add_argument("--estimators", nargs="+", default=["fab", "fab_polish", "fmn", "apgd_bisect", "fab_targeted", "fab_polish_multistart", "fab_topk_multistart", "fab_polish_multistart_all"])
    p.add_argument("--batch-size", type=int, default=120)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "oracle_Linf.csv")
    args = p.parse_args(argv)
    # every input checked before the first estimator runs, the output path included
    check_counts(batch_size=args.batch_size, threads=args.threads)
    attacks = checked_attacks(args.estimators, "Linf")
    check_out_file("--out", args.out)
    oracles = [checked_oracle(folder) for folder in args.oracle]
    torch.set_num_threads(args.threads)
    rows, samples = [], []
    for oracle in oracles:
        r, s = bench_net(oracle, attacks, args.batch_size)
        rows += r
        samples.append(s)
    if len(samples) > 1:
        rows += pooled(rows, samples, args.estimators)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, table.to_csv(index=False))
    samples_path = args.out.with_name(args.out.stem + "_samples.csv")
    atomic_write_text(samples_path, pd.concat(samples, ignore_index=True).to_csv(index=False))
    print(f"[oracle] wrote {args.out} and {samples_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, "bench_oracle"))
