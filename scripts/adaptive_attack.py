"""The calibrated detector under an adaptive attacker, per demo model.

For each model: ``marginbench calibrate`` (first 1000 test images, eps=0.1, n_calibration=500,
n_test=500, target recall 0.95, δ 0.05; cached margins are reused), then on the held-out
non-robust samples (d_in <= eps, disjoint from the calibration ones):

  nonadaptive  share whose margin-stage adversarial example (minimum-norm, Table 4) has a logit
               margin > λ, i.e. would pass the detector unflagged
  adaptive     share for which marginbench.adaptive finds a verified adversarial example
               within eps with logit margin > λ (the detector is evaded)
  flipped      share for which the adaptive attack at least changed the prediction
  recall       the detector's held-out recall without an adaptive attacker

    MARGINBENCH_CACHE=DIR PYTHONPATH=. python scripts/adaptive_attack.py [--models fm_madry,...]
        [--steps 100] [--restarts 4] [--out results/adaptive]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from one_line_errors import OneLineParser  # same folder

from marginbench import data, deploy
from marginbench.adaptive import adaptive_attack
from marginbench.detect_cli import compose_detector, compose_run
from marginbench.settings import dataset_config, validate

MODELS = ["fm_standard", "fm_madry", "fm_trades", "fm_mart", "fm_alp", "fm_clp"]


def one_model(name: str, args: argparse.Namespace) -> dict:
    cfg = compose_run([f"model={name}", "eps=0.1", f"n_samples={args.n_samples}", "plots=false", "progress=false"])
    det = compose_detector([f"detector.n_calibration={args.n_calibration}", f"detector.n_test={args.n_test}"])
    result = deploy.calibrate(cfg, det, Path(args.out) / name)
    spec, samples = result.spec, result.run.samples
    held = samples[samples["index"].isin(spec.test["indices"]) & samples["nonrobust"].astype(bool)]
    _, settings = validate(cfg)
    eval_set = data.load_eval_set(dataset_config(cfg, settings), settings.data_dir, cfg.n_samples, None)
    rows = np.flatnonzero(np.isin(np.asarray(eval_set.indices), held["index"].to_numpy()))
    model = deploy.load_model(cfg, settings)
    started = time.perf_counter()
    out = adaptive_attack(model, eval_set.images[rows].to(settings.device), spec.eps, spec.threshold,
                          norm=spec.norm, steps=args.steps, restarts=args.restarts)
    return {
        "model": name, "lambda": spec.threshold, "n_nonrobust_heldout": len(held),
        "recall_heldout": spec.test["recall"], "fpr_heldout": spec.test["fpr"],
        "nonadaptive_evade": float((held["adv_logit_margin"] > spec.threshold).mean()),
        "adaptive_evade": float(out.success.mean()), "adaptive_flipped": float(out.flipped.mean()),
        "adaptive_median_margin": float(np.median(out.adv_margin[out.flipped])) if out.flipped.any() else float("nan"),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    p = OneLineParser("adaptive_attack", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--n-calibration", type=int, default=500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--out", default="results/adaptive")
    args = p.parse_args()
    torch.set_num_threads(1)
    table = pd.DataFrame([one_model(m, args) for m in args.models.split(",")])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.out) / "adaptive_attack.csv", index=False)
    pct = ["recall_heldout", "fpr_heldout", "nonadaptive_evade", "adaptive_evade", "adaptive_flipped"]
    shown = table.assign(**{c: (100 * table[c]).round(2) for c in pct}).round(3)
    print("| " + " | ".join(shown.columns) + " |")
    print("|" + "---|" * len(shown.columns))
    for row in shown.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
