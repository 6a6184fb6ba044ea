"""Cheap-score leaderboard of finished runs: every score column of their samples.csv
(logit, probability, softmax, entropy, feature, first-order and gradient-norm scores, the
pseudo-margin when trained) ranked by marginbench.cheap_scores.leaderboard at the run's eps,
with each score's cost. No model and no cache needed.

    python scripts/score_leaderboard.py [runs_dir (results/demo/runs)] [out_dir (results/demo/scores)]
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from one_line_errors import OneLineParser  # same folder
from run_folders import run_folders  # same folder

from marginbench import cheap_scores
from marginbench.report.scores import leaderboard_frame, to_markdown, write_leaderboard

REPO = Path(__file__).resolve().parents[1]


def run_board(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return cheap_scores.leaderboard(pd.read_csv(run / "samples.csv"), float(summary["eps"]))


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser("score_leaderboard", description=__doc__.splitlines()[0])
    p.add_argument("runs_dir", nargs="?", type=Path, default=REPO / "results" / "demo" / "runs")
    p.add_argument("out_dir", nargs="?", type=Path, default=REPO / "results" / "demo" / "scores")
    args = p.parse_args(argv)
    runs_dir, out_dir = args.runs_dir, args.out_dir
    runs = run_folders(p, runs_dir)
    boards = {r.name: run_board(r) for r in runs}
    paths = write_leaderboard(boards, out_dir)
    print(to_markdown(leaderboard_frame(boards)))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
