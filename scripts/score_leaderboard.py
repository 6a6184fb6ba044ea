"""Cheap-score leaderboard of the demo runs, from their samples.csv and the cached logits.

The committed demo samples.csv predate the softmax score columns, so this script takes each
run's logits from the outputs artifact its summary.json names (``keys.outputs``), checks they
reproduce the logit_margin column, adds prob_margin / max_softmax / neg_entropy and ranks all
scores (logit, feature, pseudo when trained) with marginbench.cheap_scores.leaderboard.

    PYTHONPATH=. python scripts/score_leaderboard.py [runs_dir] [cache_dir] [out_dir]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from marginbench import cheap_scores
from marginbench.report.scores import leaderboard_frame, to_markdown, write_leaderboard

RUNS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/main/results/demo/runs")
CACHE = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/work/base/.cache/marginbench")
OUT = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("results/demo/scores")


def run_board(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    samples = pd.read_csv(run / "samples.csv")
    logits = np.load(CACHE / "outputs" / summary["keys"]["outputs"] / "arrays.npz")["logits"]
    cheap_scores.check_logits_match(logits, samples)
    for name, values in cheap_scores.softmax_scores(logits).items():
        samples[name] = values
    return cheap_scores.leaderboard(samples, float(summary["eps"]))


def main() -> int:
    runs = [p for p in sorted(RUNS.iterdir()) if (p / "samples.csv").exists()]
    boards = {r.name: run_board(r) for r in runs}
    paths = write_leaderboard(boards, OUT)
    print(to_markdown(leaderboard_frame(boards)))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
