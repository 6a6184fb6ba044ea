"""Figures 3-11 of the paper (PNG + PDF), from run records only.

matplotlib's object-oriented API on ``matplotlib.figure.Figure`` (Agg canvas, report.common):
no pyplot, so importing this module never changes the user's backend. The per-run figures
the pipeline draws after each run are in report.run_plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from marginbench import metrics
from marginbench.report.common import (
    eps_label,
    group_title,
    new_figure,
    norm_label,
    per_model_figures,
    robust_acc_to_plot,
    safe_name,
    samples_column,
    save_figure,
    tau_text,
)
from marginbench.report.runs import RunRecord, _num

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
# Figure 6 is about the weakly margin-consistent models [P].
PSEUDO_FIRST = ("DI0", "XU80")


# --------------------------------------------------------------------------- basics


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def binned_medians(x: np.ndarray, y: np.ndarray, bins: int = 20, lo: float = 5, hi: float = 95
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The authors' binned curve (nbutils.lq2 + plx).

    x trimmed to its (lo, hi) percentiles (strict), y min-max normalised over the kept points,
    ``bins`` equal-width bins of x; per non-empty bin: median x, median y and the standard
    error of y (std, ddof=1, / sqrt(n)). Non-finite pairs are dropped first.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3:
        return None
    q1, q2 = np.percentile(x, [lo, hi])
    keep = (x > q1) & (x < q2)
    x, y = x[keep], y[keep]
    if x.size < 2:
        return None
    span = y.max() - y.min()
    y = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    edges = np.linspace(x.min(), x.max(), bins + 1)
    idx = np.clip(np.digitize(x, edges), 1, bins)
    xm, ym, se = [], [], []
    for b in range(1, bins + 1):
        m = idx == b
        if not m.any():
            continue
        xm.append(np.median(x[m]))
        ym.append(np.median(y[m]))
        se.append(y[m].std(ddof=1) / np.sqrt(m.sum()) if m.sum() > 1 else 0.0)
    return np.array(xm), np.array(ym), np.array(se)


def _legend(ax, n: int, title: str | None = None) -> None:
    if n == 0:
        return
    if n > 8:
        ax.legend(title=title, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncols=1 if n <= 20 else 2, frameon=False)
    else:
        ax.legend(title=title, fontsize=8, loc="best")


def _groups(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    g: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        g.setdefault((r.dataset, r.norm), []).append(r)
    return g


# --------------------------------------------------------------------------- Figure 3


def fig3(records: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Logit margin vs input margin, one binned line per model, legend CODE(τ)."""
    paths = []
    for (ds, norm), recs in _groups(records).items():
        recs = sorted([r for r in recs if r.has_samples], key=lambda r: -_num(r.tau))
        if not recs:
            continue
        fig, ax = new_figure(8.5 if len(recs) > 8 else 7, 4.8)
        ax = ax[0, 0]
        n = 0
        for rec, c in zip(recs, _colors(len(recs)), strict=False):
            s = rec.samples()
            b = binned_medians(samples_column(s, "input_margin"), samples_column(s, "logit_margin"))
            if b is None:
                continue
            ax.errorbar(*b[:2], yerr=b[2], fmt="o-", ms=3.5, capsize=2.5, lw=1.2, color=c,
                        label=f"{rec.code}({tau_text(rec.tau)})")
            n += 1
        ax.set_xlabel(f"input margin ({norm_label(norm)}, 5–95th percentile)")
        ax.set_ylabel("logit margin (min–max normalised, bin median)")
        ax.set_title(f"Logit margin vs input margin — {group_title(ds, norm)}")
        ax.grid(alpha=0.3)
        _legend(ax, n, "model (Kendall τ)")
        paths += save_figure(fig, out_dir, f"fig3_logit_vs_input_margin_{safe_name(ds)}_{norm}")
    return paths


# --------------------------------------------------------------------------- Figure 4


def fig4(records: Sequence[RunRecord], out_dir: Path, refs: dict[str, pd.DataFrame]
         ) -> list[Path]:
    """Kendall τ vs published robust accuracy, one point per model."""
    if not records:
        return []
    fig, ax = new_figure(7, 4.8)
    ax = ax[0, 0]
    markers = ["o", "s", "^", "D", "v", "P"]
    groups = _groups(records)
    any_published = any_attack_based = False
    for i, ((ds, norm), recs) in enumerate(groups.items()):
        pub_x, pub_y, att_x, att_y, labels = [], [], [], [], []
        for rec in recs:
            x, published = robust_acc_to_plot(rec, refs)
            (pub_x if published else att_x).append(x)
            (pub_y if published else att_y).append(rec.tau)
            labels.append((x, rec.tau, rec.code))
        any_published |= bool(pub_x)
        any_attack_based |= bool(att_x)
        c = _colors(len(groups))[i]
        mk = markers[i % len(markers)]
        if pub_x:
            ax.scatter(pub_x, pub_y, color=c, marker=mk, s=40, label=group_title(ds, norm))
        if att_x:
            ax.scatter(att_x, att_y, facecolors="none", edgecolors=c, marker=mk, s=40,
                       label=f"{group_title(ds, norm)} (attack-based Rob.Acc, no published value)")
        for x, y, code in labels:
            if math.isfinite(x) and math.isfinite(y):
                ax.annotate(code, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel(_fig4_xlabel(any_published, any_attack_based))
    ax.set_ylabel("Kendall τ (input margin, logit margin)")
    ax.set_title("Margin consistency vs robust accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, out_dir, "fig4_tau_vs_robust_accuracy")


def _fig4_xlabel(any_published: bool, any_attack_based: bool) -> str:
    """Name the robust accuracy actually plotted: published AutoAttack, ours, or both."""
    published = "published RobustBench AutoAttack"
    ours = "ours: input margin > eps"
    if any_published and any_attack_based:
        return f"robust accuracy (%; filled: {published}, hollow: {ours})"
    if any_attack_based:
        return f"robust accuracy (%, {ours})"
    return f"robust accuracy (%, {published})"


# --------------------------------------------------------------------------- Figure 5


def fig5(records: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Feature distance vs input margin, and logit margin vs feature distance."""
    paths = []
    for (ds, norm), recs in _groups(records).items():
        recs = [r for r in recs if r.has_samples and samples_column(r.samples(), "feature_distance")
                is not None]
        if not recs:
            continue
        fig, axes = new_figure(12, 4.8, 1, 2)
        cols = _colors(len(recs))
        n = 0
        for rec, c in zip(sorted(recs, key=lambda r: -_num(r.tau)), cols, strict=False):
            s = rec.samples()
            d_in, fd, d_out = (samples_column(s, k) for k in ("input_margin", "feature_distance",
                                                     "logit_margin"))
            b1 = binned_medians(d_in, fd)
            b2 = binned_medians(fd, d_out)
            if b1 is not None:
                axes[0, 0].errorbar(*b1[:2], yerr=b1[2], fmt="o-", ms=3, capsize=2, color=c,
                                    label=f"{rec.code}({tau_text(metrics.kendall_tau(d_in, fd))})")
                n += 1
            if b2 is not None:
                axes[0, 1].errorbar(*b2[:2], yerr=b2[2], fmt="o-", ms=3, capsize=2, color=c,
                                    label=f"{rec.code}({tau_text(metrics.kendall_tau(fd, d_out))})")
        axes[0, 0].set_xlabel(f"input margin ({norm_label(norm)})")
        axes[0, 0].set_ylabel("feature distance ‖h(x) − h(x_adv)‖ (min–max normalised)")
        axes[0, 0].set_title("(a) feature distance vs input margin")
        axes[0, 1].set_xlabel("feature distance ‖h(x) − h(x_adv)‖")
        axes[0, 1].set_ylabel("logit margin (normalised)")
        axes[0, 1].set_title("(b) logit margin vs feature distance")
        for ax in axes[0]:
            ax.grid(alpha=0.3)
            _legend(ax, n, "model (Kendall τ)")
        fig.suptitle(group_title(ds, norm))
        paths += save_figure(fig, out_dir, f"fig5_feature_distance_{safe_name(ds)}_{norm}")
    return paths


# --------------------------------------------------------------------------- Figure 6


def fig6(records: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Logit margin and learned pseudo-margin vs input margin (DI0, XU80 first)."""
    recs = [r for r in records if r.has_samples and samples_column(r.samples(), "pseudo_margin")
            is not None]
    if not recs:
        return []
    recs.sort(key=lambda r: (r.code not in PSEUDO_FIRST, PSEUDO_FIRST.index(r.code)
                             if r.code in PSEUDO_FIRST else 0, r.code))
    recs = recs[:4]
    fig, axes = new_figure(5.5 * len(recs), 4.5, 1, len(recs))
    for ax, rec in zip(axes[0], recs, strict=False):
        s = rec.samples()
        d_in = samples_column(s, "input_margin")
        for col, name, c in (("logit_margin", "logit margin", "C0"),
                             ("pseudo_margin", "pseudo-margin", "C3")):
            v = samples_column(s, col)
            b = binned_medians(d_in, v)
            if b is not None:
                ax.errorbar(*b[:2], yerr=b[2], fmt="o-", ms=3.5, capsize=2.5, color=c,
                            label=f"{name} (τ={tau_text(metrics.kendall_tau(d_in, v))})")
        ax.set_xlabel(f"input margin ({norm_label(rec.norm)})")
        ax.set_ylabel("margin (min–max normalised, bin median)")
        ax.set_title(f"{rec.code} — {group_title(rec.dataset, rec.norm)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return save_figure(fig, out_dir, "fig6_pseudo_margin")


# --------------------------------------------------------------------------- Figure 7


def _eps_values(rec: RunRecord) -> list[float]:
    """The run's ε sweep (summary per_eps; else the paper's L∞ list), plus its main ε."""
    vals: list[float] = []
    pe = rec.summary.get("per_eps")
    if isinstance(pe, dict):
        vals = [_num(v.get("eps")) if isinstance(v, dict) else float("nan") for v in pe.values()]
    vals = [v for v in vals if math.isfinite(v)]
    if not vals and rec.norm == "Linf":
        vals = list(metrics.PAPER_EPS_LINF)
    if math.isfinite(rec.eps) and not any(abs(v - rec.eps) < 1e-9 for v in vals):
        vals.append(rec.eps)
    return sorted(vals)


def _thin(x: np.ndarray, y: np.ndarray, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= n:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, n).astype(int))
    return x[idx], y[idx]


def roc_pr_axes(ax_roc, ax_pr, d_in: np.ndarray, d_out: np.ndarray, eps_list: Sequence[float],
                skip_rule: bool = True) -> None:
    cols = _colors(len(eps_list))
    for eps, c in zip(eps_list, cols, strict=False):
        det = metrics.detection_metrics(
            d_in, d_out, eps,
            min_share=metrics.SKIP_MIN_SHARE if skip_rule else 0.0,
            max_share=metrics.SKIP_MAX_SHARE if skip_rule else 1.0)
        curves = metrics.detection_curves(d_in, d_out, eps) if not det["skipped"] else None
        lab = f"ε={eps_label(eps)}"
        if curves is None:
            ax_roc.plot([], [], color=c, label=f"{lab}: skipped (non-robust share "
                        f"{100 * det['nonrobust_share']:.2f}%)")
            continue
        ax_roc.plot(*_thin(curves["fpr"], curves["tpr"]), color=c,
                    label=f"{lab}: AUROC {100 * det['auroc']:.2f}")
        ax_pr.plot(*_thin(curves["recall"], curves["precision"]), color=c,
                   label=f"{lab}: AUPR {100 * det['aupr']:.2f}")
    ax_roc.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax_roc.set_xlabel("false positive rate (robust samples flagged)")
    ax_roc.set_ylabel("true positive rate (non-robust samples flagged)")
    ax_roc.set_title("ROC, score = −logit margin")
    ax_pr.set_xlabel("recall (non-robust samples flagged)")
    ax_pr.set_ylabel("precision")
    ax_pr.set_title("precision–recall")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right" if ax is ax_roc else "lower left")


def fig7(records: Sequence[RunRecord], out_dir: Path, force: bool = True) -> list[Path]:
    """ROC and PR curves for every ε of the sweep, one figure per model."""
    return per_model_figures(records, out_dir, "fig7_roc_pr", _roc_pr_figure, force=force)


def _roc_pr_figure(rec: RunRecord) -> Figure | None:
    s = rec.samples()
    if s is None:
        return None
    fig, axes = new_figure(11, 4.6, 1, 2)
    roc_pr_axes(axes[0, 0], axes[0, 1], samples_column(s, "input_margin"),
                samples_column(s, "logit_margin"), _eps_values(rec))
    fig.suptitle(f"{rec.code} — {group_title(rec.dataset, rec.norm)}: detecting non-robust "
                 f"samples (input margin ≤ ε)")
    return fig


# --------------------------------------------------------------------------- Figures 8-9


def fig8_9(records: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Boxplots of ||w_i − w_j||_q over class pairs per model (equidistance of the head).

    Fig. 8 for CIFAR-10, Fig. 9 for CIFAR-100 (other datasets: fig8_<dataset>); q = 1 for L∞,
    2 for L2. Left: raw distances; right: divided by the model's mean (relative spread).
    """
    paths = []
    for (ds, norm), recs in _groups(records).items():
        data = []
        for rec in sorted(recs, key=lambda r: r.code):
            w = rec.head_weight()
            if w is not None:
                data.append((rec.code, metrics.head_pair_distance_values(w, norm)))
        if not data:
            continue
        q = {"Linf": "₁", "L2": "₂"}.get(norm, "_q")
        fig, axes = new_figure(max(7.0, 0.55 * len(data) * 2 + 2), 4.6, 1, 2)
        labels = [c for c, _ in data]
        vals = [v for _, v in data]
        rel = [v / v.mean() if v.mean() > 0 else v for v in vals]
        for ax, d, ylab, t in (
            (axes[0, 0], vals, f"‖w_i − w_j‖{q}", "(a) pairwise head distances"),
            (axes[0, 1], rel, f"‖w_i − w_j‖{q} / mean over pairs",
             "(b) relative to the model's mean"),
        ):
            ax.boxplot(d, tick_labels=labels, showfliers=True,
                       flierprops={"markersize": 2, "alpha": 0.5})
            ax.set_ylabel(ylab)
            ax.set_xlabel("model")
            ax.set_title(t)
            ax.tick_params(axis="x", rotation=45 if len(labels) > 6 else 0, labelsize=8)
            ax.grid(alpha=0.3, axis="y")
        axes[0, 1].axhline(1.0, color="grey", ls=":", lw=1)
        fig.suptitle(f"Equidistance of the linear head over class pairs — {group_title(ds, norm)}")
        num = "9" if ds == "cifar100" else "8"
        paths += save_figure(fig, out_dir, f"fig{num}_equidistance_{safe_name(ds)}_{norm}")
    return paths


# --------------------------------------------------------------------------- Figure 10


def fig10(records: Sequence[RunRecord], out_dir: Path, refs: dict[str, pd.DataFrame],
          subset_fn: Callable[[RunRecord], dict | None]) -> list[Path]:
    """Robust accuracy estimated from 500 samples vs published, one point per model."""
    pts, repeats = _subset_points(records, refs, subset_fn)
    if not pts:
        return []
    fig, ax = new_figure(6.5, 5.5)
    ax = ax[0, 0]
    for name, m, yi, si, c in (("Algorithm 1 (α chosen on the subset)", "o", 3, 4, "C0"),
                               ("fixed 95%-TPR threshold", "s", 5, 6, "C1")):
        for filled in (True, False):
            sel = [p for p in pts if p[2] == filled]
            if not sel:
                continue
            ax.errorbar([p[1] for p in sel], [p[yi] for p in sel], yerr=[p[si] for p in sel],
                        fmt=m, color=c, ms=6, capsize=3,
                        mfc=c if filled else "none",
                        label=name + ("" if filled else " (x = attack-based, no published)"))
    ref = refs.get("robust_acc_500_reference")
    if ref is not None and not ref.empty:
        ax.scatter(ref["robust_acc_published"], ref["robust_acc_500"], marker="x", color="grey",
                   label="paper, 500 samples [R]")
        for _, r in ref.iterrows():
            ax.annotate(str(r["code"]), (r["robust_acc_published"], r["robust_acc_500"]),
                        textcoords="offset points", xytext=(-8, 6), fontsize=6.5, color="grey")
    for p in pts:
        if math.isfinite(p[1]) and math.isfinite(p[3]):
            ax.annotate(p[0], (p[1], p[3]), textcoords="offset points", xytext=(5, -10),
                        fontsize=7)
    allv = [v for p in pts for v in (p[1], p[3], p[5]) if math.isfinite(v)]
    if ref is not None and not ref.empty:
        allv += list(ref["robust_acc_published"]) + list(ref["robust_acc_500"])
    if allv:
        lo, hi = min(allv) - 3, max(allv) + 3
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1, label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xlabel("published robust accuracy (%, RobustBench AutoAttack)")
    ax.set_ylabel("robust accuracy estimated from 500 attacked samples (%)")
    rep = f"{repeats.pop()} repeats" if len(repeats) == 1 else "repeats"
    ax.set_title(f"Robust accuracy from 500 attacked samples ({rep}, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
    return save_figure(fig, out_dir, "fig10_robust_accuracy_500")


def _subset_points(records: Sequence[RunRecord], refs: dict[str, pd.DataFrame],
                   subset_fn: Callable[[RunRecord], dict | None]) -> tuple[list[tuple], set[int]]:
    """Figure 10's points, (code, x, x is published, Alg. 1 %, its std, 95%-TPR %, its std),
    and the set of repeat counts (the title names it when all runs agree)."""
    pts = []
    repeats: set[int] = set()
    for rec in records:
        r = subset_fn(rec)
        if r is None:
            continue
        x, x_is_pub = robust_acc_to_plot(rec, refs)
        a1 = r.get("algorithm1", {})
        t95 = r.get("tpr95", {})
        repeats.add(int(_num(a1.get("n_repeats"))) if math.isfinite(_num(a1.get("n_repeats")))
                    else 0)
        pts.append((rec.code, x, x_is_pub, 100 * _num(a1.get("estimate")),
                    100 * _num(a1.get("std")), 100 * _num(t95.get("estimate")),
                    100 * _num(t95.get("std"))))
    return pts, repeats


# --------------------------------------------------------------------------- Figure 11


def fast_boxes(ax, groups: Sequence[np.ndarray], color: str = "k") -> None:
    """Tukey boxplots (box = quartiles, line = median, whiskers = furthest points within
    1.5 IQR; no fliers) drawn as three collections: ~20x faster than ``Axes.boxplot`` with
    100 classes, which makes one artist per line."""
    pos, q1s, meds, q3s, los, his = [], [], [], [], [], []
    for i, g in enumerate(groups, start=1):
        g = np.asarray(g, np.float64)
        g = g[np.isfinite(g)]
        if g.size == 0:
            continue
        q1, med, q3 = np.percentile(g, [25, 50, 75])
        iqr = q3 - q1
        pos.append(i)
        q1s.append(q1)
        meds.append(med)
        q3s.append(q3)
        los.append(g[g >= q1 - 1.5 * iqr].min())
        his.append(g[g <= q3 + 1.5 * iqr].max())
    if not pos:
        return
    p, q1a, q3a = np.array(pos), np.array(q1s), np.array(q3s)
    ax.bar(p, q3a - q1a, bottom=q1a, width=0.6, fill=False, edgecolor=color, lw=0.8)
    ax.vlines(p, los, q1a, color=color, lw=0.8)
    ax.vlines(p, q3a, his, color=color, lw=0.8)
    ax.hlines(meds, p - 0.3, p + 0.3, color="C1", lw=1.2)
    ax.hlines(np.r_[los, his], np.r_[p, p] - 0.15, np.r_[p, p] + 0.15, color=color, lw=0.8)


def per_class_axes(axes: Sequence, s: pd.DataFrame, norm: str, dataset: str,
                   class_column: str = "label") -> None:
    d_in = samples_column(s, "input_margin")
    d_out = samples_column(s, "logit_margin")
    cls = s[class_column].to_numpy()
    classes = np.unique(cls)
    pct = metrics.per_class_tau(d_in, d_out, cls)
    names = ([CIFAR10_CLASSES[int(k)] for k in classes]
             if dataset == "cifar10" and len(classes) <= 10 and classes.max() < 10
             else [str(k) for k in classes])
    many = len(classes) > 20
    fin = [d_in[(cls == k) & np.isfinite(d_in)] for k in classes]
    out = [d_out[cls == k] for k in classes]
    fast_boxes(axes[0], fin)
    axes[0].set_ylabel(f"input margin ({norm_label(norm)})")
    fast_boxes(axes[1], out)
    axes[1].set_ylabel("logit margin")
    taus = [pct[int(k)]["tau"] for k in classes]
    axes[2].bar(np.arange(1, len(classes) + 1), taus, color="C2")
    axes[2].set_ylabel("Kendall τ in class")
    low = np.nanmin(taus) if np.isfinite(taus).any() else 0.0
    axes[2].set_ylim(min(0.0, low - 0.05), 1.0)
    axes[2].axhline(0.0, color="k", lw=0.6)
    step = max(1, len(classes) // 20)
    ticks = np.arange(1, len(classes) + 1)[::step]
    for ax in axes:
        ax.set_xticks(ticks)
        ax.set_xlim(0.4, len(classes) + 0.6)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[:2]:
        ax.set_xticklabels([])
    if many:
        axes[2].set_xticklabels(names[::step], fontsize=7)
    else:
        axes[2].set_xticklabels([f"{n}\n({tau_text(t)})" for n, t in zip(names, taus,
                                                                       strict=False)], fontsize=7)
    axes[2].set_xlabel("class (true label), per-class τ in brackets" if not many
                       else "class (true label)")


def fig11(records: Sequence[RunRecord], out_dir: Path, force: bool = True) -> list[Path]:
    """Per-class boxplots of input and logit margins with the per-class τ, one figure per model.

    Boxes: quartiles and median; whiskers: furthest points within 1.5 IQR (outliers not drawn);
    failed attacks (input margin +inf) are left out of the input-margin boxes."""
    return per_model_figures(records, out_dir, "fig11_per_class", _per_class_figure, force=force)


def _per_class_figure(rec: RunRecord) -> Figure | None:
    s = rec.samples()
    if s is None or "label" not in s.columns:
        return None
    ncls = s["label"].nunique()
    fig, axes = new_figure(min(16.0, max(7.0, 0.15 * ncls + 3)), 8, 3, 1)
    per_class_axes([a[0] for a in axes], s, rec.norm, rec.dataset)
    fig.suptitle(f"{rec.code} — {group_title(rec.dataset, rec.norm)}: margins per class "
                 f"(overall τ = {tau_text(rec.tau)})")
    return fig


# --------------------------------------------------------------------------- all


def build_figures(records: Sequence[RunRecord], out_dir: Path, refs: dict[str, pd.DataFrame],
                  subset_fn: Callable[[RunRecord], dict | None], force: bool = False
                  ) -> list[Path]:
    """All of Figures 3-11. Per-model figures (7, 11) are redrawn only when their run record
    (or the code that draws them) is newer, unless ``force``; the cross-model figures are
    always redrawn."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    paths += fig3(records, out_dir)
    paths += fig4(records, out_dir, refs)
    paths += fig5(records, out_dir)
    paths += fig6(records, out_dir)
    paths += fig7(records, out_dir, force)
    paths += fig8_9(records, out_dir)
    paths += fig10(records, out_dir, refs, subset_fn)
    paths += fig11(records, out_dir, force)
    return paths


__all__ = ["binned_medians", "build_figures", "roc_pr_axes"]
