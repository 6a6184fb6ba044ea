"""Tables 1-4 (+ the 500-sample robust accuracy table) as CSV, Markdown and LaTeX.

Built from finished run records only (report.runs); the paper's reference numbers
(results/reference/*.csv, source-tagged [P]/[R]/[NB]/[RB]) sit beside the reproduced ones.
All rates are shown x100 with 2 decimals, τ with 2 decimals; the CSV keeps 4 decimals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marginbench import metrics
from marginbench.report.common import NORM_MD, dataset_name, paper_cells
from marginbench.report.render import Column, Table, write_table
from marginbench.report.runs import (
    RunRecord,
    _num,
    _percent,
    published_accuracy,
    ref_row,
)

# --------------------------------------------------------------------------- helpers


def section_of(rec: RunRecord) -> str:
    ds = dataset_name(rec.dataset)
    eps = rec.eps
    eps_s = metrics.eps_key(eps) if math.isfinite(eps) else "?"
    return f"{ds} ({NORM_MD.get(rec.norm, rec.norm)}, ε = {eps_s})"


def _section_order(rec: RunRecord) -> tuple:
    order = {("cifar10", "Linf"): 0, ("cifar100", "Linf"): 1}
    return (order.get((rec.dataset, rec.norm), 2), rec.dataset, rec.norm, rec.eps)


def _score_from_samples(rec: RunRecord, column: str) -> dict[str, Any] | None:
    s = rec.samples()
    if s is None or column not in s.columns or "input_margin" not in s.columns:
        return None
    d_in = pd.to_numeric(s["input_margin"], errors="coerce").to_numpy(float)
    sc = pd.to_numeric(s[column], errors="coerce").to_numpy(float)
    if np.isnan(sc).all():
        return None
    return metrics.score_metrics(d_in, sc, rec.eps)


def _mean_abs(pairs: Sequence[tuple[float, float]]) -> float:
    d = [abs(a - b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    return float(np.mean(d)) if d else float("nan")


LOCAL_RECIPES = {"MD0": "cifar10_resnet18_pgd", "TR0": "cifar10_resnet18_trades",
                 "MR0": "cifar10_resnet18_mart", "AL0": "cifar10_resnet18_alp",
                 "CL0": "cifar10_resnet18_clp"}


def run_command(code: str, dataset: str) -> str:
    return f"marginbench run model={code} dataset={dataset} n_samples=null attack=fab"


# --------------------------------------------------------------------------- Table 1


TABLE1_COLUMNS = [
    Column("code", "Model", "Model", None),
    Column("robustbench_id", "RobustBench id", "RobustBench id", None),
    Column("attack", "Attack", "Attack", None),
    Column("n_samples", "n", "$n$", ".0f"),
    Column("acc", "Acc", "Acc", ".2f"),
    Column("acc_published", "Acc [RB]", "Acc [RB]", ".2f"),
    Column("rob_acc_attack", "Rob.Acc (attack)", "Rob.Acc (attack)", ".2f"),
    Column("rob_acc_published", "Rob.Acc [RB]", "Rob.Acc [RB]", ".2f"),
    Column("tau", "τ", r"$\tau$", ".2f"),
    Column("auroc", "AUROC", "AUROC", ".2f"),
    Column("aupr", "AUPR", "AUPR", ".2f"),
    Column("fpr95", "FPR@95", "FPR@95", ".2f"),
    Column("ref_tau", "τ (paper)", r"$\tau$ (paper)", ".2f"),
    Column("ref_auroc", "AUROC (paper)", "AUROC (paper)", ".2f"),
    Column("ref_aupr", "AUPR (paper)", "AUPR (paper)", ".2f"),
    Column("ref_fpr95", "FPR@95 (paper)", "FPR@95 (paper)", ".2f"),
    Column("ref_source", "src", "src", None),
    Column("n_attack_failures", "failed", "failed", ".0f"),
]


def table1(records: Sequence[RunRecord], refs: dict[str, pd.DataFrame]) -> Table:
    rows = []
    for rec in sorted(records, key=_section_order):
        clean_pub, rob_pub, _ = published_accuracy(rec, refs)
        ref = ref_row(refs, "table1_reference", rec.code) if rec.norm == "Linf" and abs(
            rec.eps - 8 / 255) < 1e-6 else None
        rows.append({
            "section": section_of(rec),
            "code": rec.code,
            "robustbench_id": rec.robustbench_id or "",
            "attack": rec.attack,
            "n_samples": rec.get("n_samples"),
            "acc": _percent(rec.summary.get("clean_accuracy")),
            "acc_published": clean_pub,
            "rob_acc_attack": _percent(rec.summary.get("robust_accuracy_attack")),
            "rob_acc_published": rob_pub,
            "tau": rec.tau,
            "auroc": _percent(rec.summary.get("auroc")),
            "aupr": _percent(rec.summary.get("aupr")),
            "fpr95": _percent(rec.summary.get("fpr_at_95")),
            **paper_cells(ref, ref_tau="tau", ref_auroc="auroc", ref_aupr="aupr",
                          ref_fpr95="fpr95"),
            "n_attack_failures": rec.get("n_attack_failures"),
            "_order": _section_order(rec),
        })
    # within each section: sorted by τ (ascending: the weakly consistent models first, nan last)
    rows.sort(key=lambda r: (r["_order"], math.isnan(r["tau"]), r["tau"] if not math.isnan(
        r["tau"]) else 0.0))
    for r in rows:
        r.pop("_order")
    return Table("table1", "Table 1: margin consistency and detection of non-robust samples",
                 TABLE1_COLUMNS, rows, notes=_table1_notes(rows, records, refs))


def _table1_notes(rows: list[dict[str, Any]], records: Sequence[RunRecord],
                  refs: dict[str, pd.DataFrame]) -> list[str]:
    notes = [
        "Acc, Rob.Acc, AUROC, AUPR, FPR@95 in %; positives = non-robust samples (input margin "
        "<= ε), score = −(logit margin); AUPR is the paper's trapezoid area under the PR curve. "
        "Rob.Acc (attack) = correct and input margin > ε (a failed attack counts as robust; "
        "see the `failed` column). [RB] RobustBench, [NB] authors' notebook.",
        "",
    ]
    # mean |attack-based − published| per section, as in the paper (1.3 CIFAR-10, 0.48 CIFAR-100 [P])
    by_sec: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        by_sec.setdefault(r["section"], []).append((r["rob_acc_attack"], r["rob_acc_published"]))
    paper_mad = {"CIFAR-10": "1.3", "CIFAR-100": "0.48"}
    for sec, pairs in by_sec.items():
        mad = _mean_abs(pairs)
        if math.isfinite(mad):
            ds = sec.split(" (")[0]
            ref = f" (paper: {paper_mad[ds]} [P])" if ds in paper_mad and "L∞" in sec else ""
            notes.append(f"- {sec}: mean |Rob.Acc attack − published| = {mad:.2f} points{ref}")
    if records:
        best = max((r["tau"] for r in rows if math.isfinite(r["tau"])), default=float("nan"))
        if math.isfinite(best):
            notes.append(f"- highest τ here: {best:.2f} (paper: up to 0.86 [P])")
    notes += ["", *missing_models_notes(records, refs)]
    return notes


def missing_models_notes(records: Sequence[RunRecord], refs: dict[str, pd.DataFrame]) -> list[str]:
    """Markdown lines listing the paper's Table 1 models without a finished run."""
    pm = refs.get("paper_models")
    if pm is None or pm.empty:
        return []
    done = {(r.code.upper(), r.dataset) for r in records}
    done_ids = {(str(r.robustbench_id), r.dataset) for r in records if r.robustbench_id}
    lines = []
    for _, row in pm.iterrows():
        code, ds = str(row["code"]), str(row["dataset"])
        rid = row.get("robustbench_id")
        rid = "" if not isinstance(rid, str) else rid
        if (code.upper(), ds) in done or (rid, ds) in done_ids:
            continue
        cmd = f"`{run_command(code, ds)}`"
        recipe = LOCAL_RECIPES.get(code.upper())
        if recipe:  # the authors' own ResNet-18s are not in RobustBench: train first
            cmd = f"`marginbench train train={recipe} name={code}`, then {cmd}"
        label = f"{code} ({rid})" if rid else code
        lines.append(f"| {label} | {dataset_name(ds)} | {cmd} |")
    if not lines:
        return ["All of the paper's Table 1 models have a finished run."]
    return [
        f"### Not computed yet ({len(lines)} of the paper's Table 1 models)",
        "",
        "| Model | Dataset | Command that fills the row |",
        "|---|---|---|",
        *lines,
        "",
    ]


# --------------------------------------------------------------------------- Table 2


TABLE2_COLUMNS = [
    Column("code", "Model", "Model", None),
    Column("score", "Score", "Score", None),
    Column("tau", "τ", r"$\tau$", ".2f"),
    Column("auroc", "AUROC", "AUROC", ".2f"),
    Column("aupr", "AUPR", "AUPR", ".2f"),
    Column("fpr95", "FPR@95", "FPR@95", ".2f"),
    Column("ref_tau", "τ (paper)", r"$\tau$ (paper)", ".2f"),
    Column("ref_auroc", "AUROC (paper)", "AUROC (paper)", ".2f"),
    Column("ref_aupr", "AUPR (paper)", "AUPR (paper)", ".2f"),
    Column("ref_fpr95", "FPR@95 (paper)", "FPR@95 (paper)", ".2f"),
    Column("ref_source", "src", "src", None),
]


def _pseudo_metrics(rec: RunRecord) -> dict[str, Any] | None:
    p = rec.summary.get("pseudo")
    if isinstance(p, dict) and p.get("kendall_tau") is not None:
        return p
    return _score_from_samples(rec, "pseudo_margin")


def table2(records: Sequence[RunRecord], refs: dict[str, pd.DataFrame]) -> Table:
    rows = []
    for rec in sorted(records, key=_section_order):
        pm = _pseudo_metrics(rec)
        if pm is None:
            continue
        variant = rec.summary.get("pseudo", {}).get("variant") if isinstance(
            rec.summary.get("pseudo"), dict) else None
        logit = {"kendall_tau": rec.tau, "auroc": rec.get("auroc"), "aupr": rec.get("aupr"),
                 "fpr_at_95": rec.get("fpr_at_95")}
        for score, m in (("logit_margin", logit), ("pseudo_margin", pm)):
            ref = ref_row(refs, "table2_reference", rec.code, score=score)
            label = "logit margin" if score == "logit_margin" else (
                f"pseudo-margin ({variant})" if variant else "pseudo-margin")
            rows.append({
                "section": section_of(rec), "code": rec.code, "score": label,
                "tau": _num(m.get("kendall_tau")), "auroc": _percent(m.get("auroc")),
                "aupr": _percent(m.get("aupr")), "fpr95": _percent(m.get("fpr_at_95")),
                **paper_cells(ref, ref_tau="tau", ref_auroc="auroc", ref_aupr="aupr",
                              ref_fpr95="fpr95"),
            })
    notes = [
        "Pseudo-margin: an MLP trained on held-out training images to predict the input margin "
        "(variant `code` = the authors' code: logits -> sqrt(margin); `text` = the paper's "
        "description: features). Metrics as in Table 1.",
    ]
    if not rows:
        notes += ["", "Fill it with e.g. "
                  "`marginbench run model=DI0 dataset=cifar10 n_samples=null attack=fab "
                  "pseudo.enabled=true` (and XU80)."]
    return Table("table2", "Table 2: learned pseudo-margin vs logit margin", TABLE2_COLUMNS,
                 rows, notes=notes)


# --------------------------------------------------------------------------- Table 3


TABLE3_COLUMNS = [
    Column("code", "Model", "Model", None),
    Column("tau_logit", "τ logit margin", r"$\tau$ logit", ".2f"),
    Column("tau_feature", "τ feature margin", r"$\tau$ feature", ".2f"),
    Column("ref_tau_logit", "τ logit (paper)", r"$\tau$ logit (paper)", ".2f"),
    Column("ref_tau_feature", "τ feature (paper)", r"$\tau$ feature (paper)", ".2f"),
    Column("ref_source", "src", "src", None),
    Column("head_cv", "CV of ‖w_i−w_j‖_q", r"CV $\|w_i-w_j\|_q$", ".3f"),
]


def table3(records: Sequence[RunRecord], refs: dict[str, pd.DataFrame]) -> Table:
    rows = []
    for rec in sorted(records, key=_section_order):
        tf = rec.get("kendall_tau_feature")
        if math.isnan(tf):
            m = _score_from_samples(rec, "feature_margin")
            tf = _num(m["kendall_tau"]) if m else float("nan")
        w = rec.head_weight()
        cv = metrics.equidistance_stats(w, rec.norm)["cv"] if w is not None else float("nan")
        if math.isnan(tf) and math.isnan(cv):
            continue
        ref = ref_row(refs, "feature_tau_reference", rec.code)
        rows.append({
            "section": section_of(rec), "code": rec.code, "tau_logit": rec.tau,
            "tau_feature": tf,
            **paper_cells(ref, ref_tau_logit="tau_logit", ref_tau_feature="tau_feature"),
            "head_cv": cv,
        })
    notes = ["Exact feature margin: min over j ≠ ŷ of (f_ŷ − f_j)/‖w_ŷ − w_j‖_q (q = 1 for L∞, "
             "2 for L2). CV = coefficient of variation of ‖w_i − w_j‖_q over class pairs "
             "(0 = equidistant head, where both margins rank samples identically)."]
    return Table("table3", "Table 3: logit margin vs exact feature-space margin", TABLE3_COLUMNS,
                 rows, notes=notes)


# --------------------------------------------------------------------------- Table 4


TABLE4_COLUMNS = [
    Column("code", "Model", "Model", None),
    Column("adv_p99", "adv. logit margin (99th pct)", "adv. logit margin (p99)", ".4f"),
    Column("lambda95", "λ at 95% TPR", r"$\lambda$ at 95\% TPR", ".4f"),
    Column("adv_flagged", "adv. flagged (%)", r"adv. flagged (\%)", ".2f"),
    Column("n_adv", "n adv.", "$n$ adv.", ".0f"),
]


def table4(records: Sequence[RunRecord], refs: dict[str, pd.DataFrame]) -> Table:
    rows = []
    for rec in sorted(records, key=_section_order):
        m = rec.summary.get("adversarial_margin")
        if not isinstance(m, dict):
            s = rec.samples()
            if s is None or "adv_logit_margin" not in s.columns:
                continue
            m = metrics.adversarial_margin_check(
                pd.to_numeric(s["adv_logit_margin"], errors="coerce").to_numpy(float),
                pd.to_numeric(s["input_margin"], errors="coerce").to_numpy(float),
                pd.to_numeric(s["logit_margin"], errors="coerce").to_numpy(float), rec.eps)
        rows.append({
            "section": section_of(rec), "code": rec.code,
            "adv_p99": _num(m.get("adv_logit_margin_p99")),
            "lambda95": _num(m.get("logit_margin_threshold_95")),
            "adv_flagged": _percent(m.get("adv_flagged_share")),
            "n_adv": _num(m.get("n_adv")),
        })
    notes = ["99th percentile of the logit margin at the adversarial examples (successful "
             "attacks) vs the logit-margin threshold λ that reaches 95% TPR on the test set: "
             "adversarial examples sit far below λ, so they are themselves flagged as brittle."]
    return Table("table4", "Table 4: logit margin of adversarial examples vs the 95%-TPR "
                 "threshold", TABLE4_COLUMNS, rows, notes=notes)


# --------------------------------------------------------------------------- robust acc (App. F.1)


TABLE5_COLUMNS = [
    Column("code", "Model", "Model", None),
    Column("rob_acc_attack", "Rob.Acc (attack, all)", "Rob.Acc (attack)", ".2f"),
    Column("alg1", "Alg. 1 (500)", "Alg.~1 (500)", ".2f"),
    Column("alg1_std", "± std", r"$\pm$ std", ".2f"),
    Column("tpr95", "95%-TPR (500)", r"95\%-TPR (500)", ".2f"),
    Column("published", "Rob.Acc [RB]", "Rob.Acc [RB]", ".2f"),
    Column("err_attack", "|Alg.1 − attack|", r"$|$Alg.1 $-$ attack$|$", ".2f"),
    Column("err_published", "|Alg.1 − [RB]|", r"$|$Alg.1 $-$ [RB]$|$", ".2f"),
    Column("ref_500", "500-sample (paper)", "500-sample (paper)", ".2f"),
    Column("ref_published", "[RB] (paper)", "[RB] (paper)", ".2f"),
    Column("ref_source", "src", "src", None),
]


def robust_acc_subset(rec: RunRecord) -> dict[str, dict[str, Any]] | None:
    """Algorithm 1 and 95%-TPR results of a run (summary.json, else recomputed from samples)."""
    r = rec.summary.get("robust_acc_from_subset")
    if isinstance(r, dict) and isinstance(r.get("algorithm1"), dict):
        return r
    s = rec.samples()
    if s is None or not {"input_margin", "logit_margin", "correct"} <= set(s.columns):
        return None
    d_in = pd.to_numeric(s["input_margin"], errors="coerce").to_numpy(float)
    d_out = pd.to_numeric(s["logit_margin"], errors="coerce").to_numpy(float)
    correct = metrics._as_bool(s["correct"])
    return {
        "algorithm1": metrics.robust_accuracy_from_subset(d_in, d_out, correct, rec.eps),
        "tpr95": metrics.robust_accuracy_from_subset(d_in, d_out, correct, rec.eps, alpha=0.95),
    }


def table5(records: Sequence[RunRecord], refs: dict[str, pd.DataFrame]) -> Table:
    rows = []
    for rec in sorted(records, key=_section_order):
        r = robust_acc_subset(rec)
        if r is None:
            continue
        a1, t95 = r.get("algorithm1", {}), r.get("tpr95", {})
        _, pub, _ = published_accuracy(rec, refs)
        ref = ref_row(refs, "robust_acc_500_reference", rec.code)
        alg1 = _percent(a1.get("estimate"))
        attack = _percent(rec.summary.get("robust_accuracy_attack"))
        rows.append({
            "section": section_of(rec), "code": rec.code, "rob_acc_attack": attack,
            "alg1": alg1, "alg1_std": _percent(a1.get("std")), "tpr95": _percent(t95.get("estimate")),
            "published": pub, "err_attack": abs(alg1 - attack), "err_published": abs(alg1 - pub),
            **paper_cells(ref, ref_500="robust_acc_500", ref_published="robust_acc_published"),
        })
    notes = ["Robust accuracy (%) estimated from the input margins of 500 random test points "
             "only (Algorithm 1: TPR level α chosen on the subset, threshold λ applied to all "
             "points; repeated (10 times by default), mean ± std), and the fixed 95%-TPR variant [R]."]
    return Table("table5_robust_acc_500", "Robust accuracy from 500 attacked samples (App. F.1)",
                 TABLE5_COLUMNS, rows, notes=notes)


TABLE_BUILDERS: list[Callable[[Sequence[RunRecord], dict[str, pd.DataFrame]], Table]] = [
    table1, table2, table3, table4, table5,
]


def build_tables(records: Sequence[RunRecord], refs: dict[str, pd.DataFrame], out_dir: Path
                 ) -> list[Path]:
    paths: list[Path] = []
    for build in TABLE_BUILDERS:
        paths += write_table(build(records, refs), out_dir)
    return paths
