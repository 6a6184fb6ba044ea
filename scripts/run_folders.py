"""The run folders the demo checks read (``make demo`` writes ``results/demo/runs/<model>/``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_folders(parser: argparse.ArgumentParser, runs_dir: Path, skip: frozenset[str] = frozenset()) -> list[Path]:
    """Sub-folders of ``runs_dir`` holding a samples.csv, in name order. None is a usage
    error (one line, exit 2) rather than an empty table or a traceback."""
    runs = [r for r in sorted(runs_dir.iterdir()) if (r / "samples.csv").exists() and r.name not in skip] \
        if runs_dir.is_dir() else []
    if not runs:
        parser.error(f"no runs with samples.csv under {runs_dir}; run `make demo` or give a runs folder")
    return runs
