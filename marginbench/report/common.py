"""What the tables, the paper figures and the per-run plots share.

Names and labels, the paper's reference numbers beside ours, the robust accuracy a model is
plotted at, and the figure plumbing (new figure, save, the per-model figure loop).

matplotlib is imported only when a figure is made (``new_figure``): report.tables
imports this module and draws nothing. No pyplot anywhere, so building a report never
changes the user's matplotlib backend.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from marginbench import metrics
from marginbench.report.runs import RunRecord, _num, published_accuracy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "imagenet": "ImageNet",
    "fashion_mnist": "Fashion-MNIST",
}
# Tables write plain "L2"; figures use Unicode subscripts rather than mathtext, whose parsing
# dominated the drawing time. Both are kept as they are: the outputs must not change.
NORM_MD = {"Linf": "L∞", "L2": "L2"}
NORM_LABEL = {"Linf": "L∞", "L2": "L₂"}
PNG_DPI = 150


# --------------------------------------------------------------------------- names and labels


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def norm_label(norm: str) -> str:
    """The norm as figures write it (L∞, L₂)."""
    return NORM_LABEL.get(norm, norm)


def eps_label(eps: float) -> str:
    return metrics.eps_key(eps)


def group_title(dataset: str, norm: str) -> str:
    return f"{dataset_name(dataset)}, {norm_label(norm)}"


def tau_text(t: float) -> str:
    return f"{t:.2f}" if math.isfinite(t) else "n/a"


def safe_name(s: str) -> str:
    """A model code or dataset name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")


# --------------------------------------------------------------------------- paper numbers


def paper_cells(ref: dict[str, Any] | None, **cells: str) -> dict[str, Any]:
    """The paper's numbers for the cells beside ours: ``cell=column`` takes the reference
    row's ``column`` as a float (nan where missing), and ``ref_source`` its source tag.

    ``ref`` is a reference row (report.runs.ref_row) or None when the model has none: then
    every cell is nan and the source is empty, so the tables show "–" and a blank src.
    """
    out = {cell: _num(ref.get(column)) if ref else float("nan") for cell, column in cells.items()}
    out["ref_source"] = str(ref.get("source")) if ref else ""
    return out


def robust_acc_to_plot(rec: RunRecord, refs: dict[str, pd.DataFrame]) -> tuple[float, bool]:
    """(robust accuracy %, is_published) of a model on a robust-accuracy axis: the published
    RobustBench value when there is one, else ours (correct and input margin > ε). Demo-zoo
    and user models have no published value; the figures draw those points hollow."""
    _, published, _ = published_accuracy(rec, refs)
    if math.isfinite(published):
        return published, True
    return rec.get("robust_accuracy_attack") * 100, False


# --------------------------------------------------------------------------- figure plumbing


def new_figure(w: float = 7.0, h: float = 4.5, nrows: int = 1, ncols: int = 1, **kw
               ) -> tuple[Figure, np.ndarray]:
    """A Figure on its own Agg canvas and a 2-D array of its axes (``squeeze=False``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Figure, out_dir: Path, stem: str, pdf: bool = True) -> list[Path]:
    """``<stem>.png`` (and ``<stem>.pdf``) under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # run the constrained layout once, then freeze it: savefig would redo it per format
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
        fig.set_layout_engine("none")
    paths = [out_dir / f"{stem}.png"]
    fig.savefig(paths[0], dpi=PNG_DPI)
    if pdf:
        paths.append(out_dir / f"{stem}.pdf")
        fig.savefig(paths[1])
    return paths


def samples_column(df: pd.DataFrame | None, col: str) -> np.ndarray | None:
    """A per-sample column as float64; None when absent or all-missing (nothing to draw)."""
    if df is None or col not in df.columns:
        return None
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    return None if np.isnan(v).all() else v


# --------------------------------------------------------------------------- per-model figures


def up_to_date(out_dir: Path, stem: str, rec: RunRecord, code: Sequence[Path]
               ) -> list[Path] | None:
    """The PNG+PDF of a per-model figure when both are newer than the run record and the
    ``code`` files that draw it (incremental rebuilds: per-model figures dominate the
    drawing time); None when it must be redrawn."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    if not all(p.is_file() for p in paths):
        return None
    sources = list(code) + [rec.path / f for f in ("summary.json", "samples.csv", "meta.json",
                                                    "head_weight.npy")]
    newest = max(p.stat().st_mtime for p in sources if p.exists())
    return paths if min(p.stat().st_mtime for p in paths) >= newest else None


def per_model_figures(records: Sequence[RunRecord], out_dir: Path, prefix: str,
                      draw: Callable[[RunRecord], Figure | None], *, force: bool
                      ) -> list[Path]:
    """One figure per run record, ``<prefix>_<code>_<dataset>_<norm>.png/.pdf``.

    ``draw(rec)`` returns the figure, or None when the record lacks what it needs (no file
    then). Unless ``force``, a figure newer than its record and than the code that draws it
    (draw's module and this one) is kept as it is and draw is not called.
    """
    code = [Path(sys.modules[draw.__module__].__file__), Path(__file__)]
    paths: list[Path] = []
    for rec in records:
        stem = f"{prefix}_{safe_name(rec.code)}_{safe_name(rec.dataset)}_{rec.norm}"
        kept = None if force else up_to_date(out_dir, stem, rec, code)
        if kept:
            paths += kept
            continue
        fig = draw(rec)
        if fig is not None:
            paths += save_figure(fig, out_dir, stem)
    return paths
