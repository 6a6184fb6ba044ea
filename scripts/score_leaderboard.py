"""Cheap-score leaderboard of finished runs: every score column of their samples.csv
(logit, probability, softmax, entropy, feature, first-order and gradient-norm scores, the
pseudo-margin when trained) ranked by marginbench.cheap_scores.leaderboard at the run's eps,
with each score's cost. No model and no cache needed.

    python scripts/score_leaderboard.py [runs_dir (results/demo/runs)] [out_dir (results/demo/scores)]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from marginbench import cheap_scores
from marginbench.report.scores import leaderboard_frame, to_markdown, write_leaderboard

REPO = Path(__file__).resolve().parents[1]


def run_board(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return cheap_scores.leaderboard(pd.read_csv(run / "samples.csv"), float(summary["eps"]))


def main() -> int:
    runs_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results" / "demo" / "runs"
    out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "results" / "demo" / "scores"
    runs = [p for p in sorted(runs_dir.iterdir()) if (p / "samples.csv").exists()]
    boards = {r.name: run_board(r) for r in runs}
    paths = write_leaderboard(boards, out_dir)
    print(to_markdown(leaderboard_frame(boards)))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
