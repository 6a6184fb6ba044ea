"""The run folders the demo checks read (``make demo`` writes ``results/demo/runs/<model>/``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from one_line_errors import OneLineParser  # same folder

DEMO_RUNS = Path(__file__).resolve().parents[1] / "results" / "demo" / "runs"
SAME_MARGINS_AS_ANOTHER = frozenset({"fm_mart_pseudo"})  # same model and margins as fm_mart


def run_folders(parser: argparse.ArgumentParser, runs_dir: Path, skip: frozenset[str] = frozenset()) -> list[Path]:
    """Sub-folders of ``runs_dir`` holding a samples.csv, in name order. None is a usage
    error (one line, exit 2) rather than an empty table or a traceback."""
    runs = [r for r in sorted(runs_dir.iterdir()) if (r / "samples.csv").exists() and r.name not in skip] \
        if runs_dir.is_dir() else []
    if not runs:
        parser.error(f"no runs with samples.csv under {runs_dir}; run `make demo` or give a runs folder")
    return runs


def demo_runs_and_count(script: str, description: str, count: str, count_help: str,
                        argv: list[str] | None) -> tuple[list[Path], int]:
    """``[runs_dir [count]]`` of the demo check ``script``: its runs (one per model) and repetitions."""
    parser = OneLineParser(script, description=description)
    parser.add_argument("runs_dir", nargs="?", type=Path, default=DEMO_RUNS, help="run folders with samples.csv and summary.json")
    parser.add_argument(count, nargs="?", type=int, default=200, help=count_help)
    args = parser.parse_args(argv)
    if getattr(args, count) < 1:
        parser.error(f"{count} must be at least 1")
    return run_folders(parser, args.runs_dir, SAME_MARGINS_AS_ANOTHER), getattr(args, count)
