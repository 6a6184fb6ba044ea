"""Cheap-score leaderboard: one row per (run, score), as CSV, Markdown and a figure.

Self-contained on purpose (the other report modules are being reorganised): it takes
``{run name: summary["scores"]}`` mappings, as :func:`marginbench.cheap_scores.leaderboard`
returns them, and imports nothing else from marginbench.report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

METRICS = ("kendall_tau", "auroc", "aupr", "fpr_at_95")
HEADERS = {"kendall_tau": "τ", "auroc": "AUROC", "aupr": "AUPR", "fpr_at_95": "FPR@95"}


def leaderboard_frame(boards: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """Long table: run, score, τ, AUROC, AUPR, FPR@95 (fractions), extra passes."""
    rows = []
    for run, board in boards.items():
        for score, m in board.items():
            cost = m.get("cost", {})
            rows.append({"run": run, "score": score, **{k: m.get(k) for k in METRICS},
                         "extra_passes": (cost.get("extra_forward", 0) or 0) + (cost.get("extra_backward", 0) or 0)})
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame) -> str:
    """Markdown: rates x100 with 2 decimals, τ with 2 decimals (as the paper's tables)."""
    cols = ["run", "score", *METRICS, "extra_passes"]
    head = ["run", "score", *(HEADERS[m] for m in METRICS), "extra passes"]

    def cell(col: str, v: Any) -> str:
        if col in METRICS:
            if v is None or (isinstance(v, float) and np.isnan(v)):
                return "–"
            return f"{v:.2f}" if col == "kendall_tau" else f"{100 * v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(cell(c, r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def figure(frame: pd.DataFrame, metric: str = "auroc") -> Figure:
    """Grouped bars: one group per run, one bar per score."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    runs = list(dict.fromkeys(frame["run"]))
    scores = list(dict.fromkeys(frame["score"]))
    width = 0.8 / max(len(scores), 1)
    for i, score in enumerate(scores):
        sub = frame[frame["score"] == score].set_index("run")
        vals = [float(sub.at[r, metric]) if r in sub.index else np.nan for r in runs]
        ax.bar(np.arange(len(runs)) + i * width, vals, width, label=score)
    ax.set_xticks(np.arange(len(runs)) + 0.4 - width / 2, runs, rotation=20)
    ax.set_ylabel(HEADERS.get(metric, metric))
    if metric == "auroc":
        ax.set_ylim(0.5, 1)  # chance level at the bottom: the differences are in the top decile
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def write_leaderboard(boards: Mapping[str, Mapping[str, Mapping[str, Any]]], out_dir: Path) -> list[Path]:
    """scores.csv, scores.md, scores_auroc.png, scores_tau.png under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = leaderboard_frame(boards)
    paths = [out_dir / "scores.csv", out_dir / "scores.md"]
    frame.to_csv(paths[0], index=False, float_format="%.4f")
    paths[1].write_text(to_markdown(frame))
    for metric, stem in (("auroc", "scores_auroc"), ("kendall_tau", "scores_tau")):
        path = out_dir / f"{stem}.png"
        figure(frame, metric).savefig(path, dpi=120)
        paths.append(path)
    return paths
