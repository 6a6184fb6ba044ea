"""The figures the pipeline draws into each run directory after a run (PNG only).

They show one run on its own; the paper's cross-model figures are report.figures, whose
binned-median curve and ROC/PR axes these reuse so that both draw the same curves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from marginbench import metrics
from marginbench.report.common import (
    eps_label,
    new_figure,
    norm_label,
    samples_column,
    save_figure,
    tau_text,
)
from marginbench.report.figures import binned_medians, roc_pr_axes
from marginbench.report.runs import _num

__all__ = ["plot_run"]


def plot_run(samples: pd.DataFrame, summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Per-run figures written into the run directory (PNG only).

    ``margins.png``: logit margin vs input margin (points, binned medians, ε and λ95 lines,
    τ in the title); ``roc_pr.png``: ROC and PR curves at the run's ε.
    """
    out_dir = Path(out_dir)
    code = str(summary.get("model_code") or summary.get("model") or "model")
    norm = str(summary.get("norm") or "Linf")
    eps = _num(summary.get("eps"))
    d_in = samples_column(samples, "input_margin")
    d_out = samples_column(samples, "logit_margin")
    if d_in is None or d_out is None:
        return []
    paths = save_figure(_margins_figure(samples, d_in, d_out, code, norm, eps), out_dir,
                        "margins", pdf=False)
    if math.isfinite(eps):
        fig, axes = new_figure(11, 4.6, 1, 2)
        roc_pr_axes(axes[0, 0], axes[0, 1], d_in, d_out, [eps], skip_rule=False)
        fig.suptitle(f"{code}: detecting non-robust samples (input margin ≤ ε)")
        paths += save_figure(fig, out_dir, "roc_pr", pdf=False)
    return paths


def _margins_figure(samples: pd.DataFrame, d_in: np.ndarray, d_out: np.ndarray, code: str,
                    norm: str, eps: float) -> Figure:
    """Logit vs input margin of every sample with a finite input margin, the binned medians,
    and the ε and λ95 lines."""
    tau = metrics.kendall_tau(d_in, d_out)
    fig, ax = new_figure(6.5, 4.8)
    ax = ax[0, 0]
    fin = np.isfinite(d_in)
    correct = (metrics._as_bool(samples["correct"]) if "correct" in samples.columns
               else np.ones(len(d_in), bool))
    for m, lab, c in ((correct & fin, "correct", "C0"), (~correct & fin, "misclassified", "C3")):
        if m.any():
            ax.scatter(d_in[m], d_out[m], s=6, alpha=0.35, color=c, label=lab, lw=0)
    b = binned_medians(d_in, d_out)
    if b is not None:  # the binned curve is min-max normalised: rescale it to the data
        lo, hi = np.nanmin(d_out[fin]), np.nanmax(d_out[fin])
        q = (d_in > np.percentile(d_in[fin], 5)) & (d_in < np.percentile(d_in[fin], 95)) & fin
        if q.any():
            lo, hi = d_out[q].min(), d_out[q].max()
        ax.errorbar(b[0], lo + b[1] * (hi - lo), yerr=b[2] * (hi - lo), fmt="o-", color="k",
                    ms=3, capsize=2, lw=1.2, label="bin median")
    if math.isfinite(eps):
        ax.axvline(eps, color="C2", ls="--", lw=1, label=f"ε = {eps_label(eps)}")
        det = metrics.detection_metrics(d_in, d_out, eps)
        if math.isfinite(det["threshold_at_95"]):
            ax.axhline(det["threshold_at_95"], color="C1", ls=":", lw=1,
                       label=f"λ at 95% TPR = {det['threshold_at_95']:.3g}")
    n_fail = int((~fin).sum())
    ax.set_xlabel(f"input margin ({norm_label(norm)})")
    ax.set_ylabel("logit margin (top-1 − top-2 logit)")
    ax.set_title(f"{code}: Kendall τ = {tau_text(tau)}"
                 + (f" ({n_fail} failed attacks not shown)" if n_fail else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", markerscale=2)
    return fig
