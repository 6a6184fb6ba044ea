"""report: run records -> tables (CSV/Markdown/LaTeX) and figures (PNG/PDF)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marginbench import metrics
from marginbench.report import build_all, figures, load_runs
from marginbench.report.common import (
    new_figure,
    paper_cells,
    per_model_figures,
    robust_acc_to_plot,
)
from marginbench.report.run_plots import plot_run
from marginbench.report.runs import RunRecord, load_reference, ref_row
from marginbench.versions import MARGINS_VERSION, STAGE_VERSIONS

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "results" / "reference"
EPS = 8 / 255


def fake_samples(n: int, k: int, noise: float, seed: int, pseudo: bool = False) -> pd.DataFrame:
    """Synthetic per-sample table with the documented columns; `noise` lowers τ."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, k, n)
    correct = rng.random(n) < 0.85
    pred = np.where(correct, label, (label + 1) % k)
    d_in = rng.gamma(2.0, 0.022, n)
    d_out = 40 * d_in * np.exp(noise * rng.normal(size=n))
    fail = rng.random(n) < 0.01
    d_in[fail] = np.inf
    df = pd.DataFrame({
        "index": np.arange(n), "label": label, "pred": pred, "correct": correct,
        "input_margin": d_in, "attack_success": ~fail,
        "found_by": np.where(fail, "", "fab"), "logit_margin": d_out,
        "feature_margin": d_out / 3 * np.exp(0.1 * rng.normal(size=n)),
        "feature_distance": 5 * d_in * np.exp(0.3 * rng.normal(size=n)),
        "n_forward": 120, "n_backward": 100, "attack_seconds": 0.02,
        "nonrobust": d_in <= EPS, "robust_correct": correct & (d_in > EPS),
        "adv_logit_margin": np.abs(rng.normal(0, 0.01, n)),
    })
    df.loc[fail, "feature_distance"] = np.nan
    df.loc[fail, "adv_logit_margin"] = np.nan
    if pseudo:
        df["pseudo_margin"] = d_in * np.exp(0.2 * rng.normal(size=n))
        df.loc[fail, "pseudo_margin"] = 1.0
    return df


def write_fake_run(root: Path, name: str, code: str, dataset: str, noise: float, seed: int,
                   *, n: int = 600, k: int = 10, pseudo: bool = False, complete: bool = True,
                   finished_at: float | None = None, rb_id: str | None = None,
                   versions: dict | None = None) -> Path:
    d = root / "runs" / name
    d.mkdir(parents=True)
    samples = fake_samples(n, k, noise, seed, pseudo)
    samples.to_csv(d / "samples.csv", index=False)
    summary = {
        "model": code, "model_code": code, "robustbench_id": rb_id, "dataset": dataset,
        "norm": "Linf", "eps": EPS, "attack": "fab",
        **metrics.summarize(samples, EPS, list(metrics.PAPER_EPS_LINF), n_repeats=3),
        "robust_accuracy_published": 0.45, "clean_accuracy_published": 0.85,
        "versions": dict(STAGE_VERSIONS) if versions is None else versions,
    }
    if pseudo:
        summary["pseudo"]["variant"] = "code"
    (d / "summary.json").write_text(json.dumps(summary, allow_nan=False))
    np.save(d / "head_weight.npy", np.random.default_rng(seed).normal(size=(k, 16)))
    if complete:
        (d / "meta.json").write_text(json.dumps({"finished_at": finished_at or time.time()}))
    return d


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    write_fake_run(root, "a", "DI0", "cifar10", 0.9, 1, pseudo=True, rb_id="Ding2020MMA")
    write_fake_run(root, "b", "AD10", "cifar10", 0.15, 2, rb_id="Addepalli2021Towards_RN18")
    write_fake_run(root, "c", "RI1", "cifar100", 0.4, 3, k=24, n=800)
    # an older duplicate of AD10 (superseded) and an incomplete run (no meta.json): ignored
    write_fake_run(root, "old", "AD10", "cifar10", 2.0, 4, finished_at=1.0)
    write_fake_run(root, "partial", "XU80", "cifar10", 0.3, 5, complete=False)
    return root


def test_load_runs_latest_complete_only(cache):
    runs = load_runs(cache)
    assert sorted(r.path.name for r in runs) == ["a", "b", "c"]
    assert load_runs(cache / "nowhere") == []


def test_runs_from_an_older_margin_stage_are_left_out_with_a_warning(tmp_path):
    write_fake_run(tmp_path, "new", "AD10", "cifar10", 0.15, 2)
    write_fake_run(tmp_path, "before_versions", "DI0", "cifar10", 0.15, 3, versions={})
    write_fake_run(tmp_path, "older", "AD10", "cifar10", 0.15, 4,
                   versions={**STAGE_VERSIONS, "margins": MARGINS_VERSION - 1})
    with pytest.warns(UserWarning, match=r"left out 2 cached run\(s\).*models: AD10, DI0"):
        runs = load_runs(tmp_path)
    assert [r.path.name for r in runs] == ["new"]


def test_build_all_writes_every_table_and_figure(cache, tmp_path):
    out = tmp_path / "report"
    paths = build_all(cache, out, REFERENCE_DIR)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    names = {p.name for p in paths}
    for t in ("table1", "table2", "table3", "table4", "table5_robust_acc_500"):
        for ext in ("csv", "md", "tex"):
            assert f"{t}.{ext}" in names
    for stem in ("fig3_logit_vs_input_margin_cifar10_Linf", "fig3_logit_vs_input_margin_cifar100_Linf",
                 "fig4_tau_vs_robust_accuracy", "fig5_feature_distance_cifar10_Linf",
                 "fig6_pseudo_margin", "fig7_roc_pr_DI0_cifar10_Linf",
                 "fig8_equidistance_cifar10_Linf", "fig9_equidistance_cifar100_Linf",
                 "fig10_robust_accuracy_500", "fig11_per_class_RI1_cifar100_Linf"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names, stem

    t1 = pd.read_csv(out / "tables" / "table1.csv")
    c10 = t1[t1["section"].str.startswith("CIFAR-10 ")]
    assert list(c10["code"]) == ["DI0", "AD10"]  # sorted by τ (DI0 is the noisy one)
    assert c10["tau"].is_monotonic_increasing
    assert list(t1["section"].str.split(" ").str[0]) == ["CIFAR-10", "CIFAR-10", "CIFAR-100"]
    # run values x100, paper reference numbers beside them
    ad10 = t1[t1["code"] == "AD10"].iloc[0]
    summ = json.loads((cache / "runs" / "b" / "summary.json").read_text())
    assert ad10["auroc"] == pytest.approx(100 * summ["auroc"], abs=1e-3)
    assert ad10["ref_auroc"] == pytest.approx(97.86) and ad10["ref_source"] == "[NB]"
    md = (out / "tables" / "table1.md").read_text()
    assert "marginbench run model=XU80 dataset=cifar10 n_samples=null attack=fab" in md
    assert "model=AD10 dataset=cifar10" not in md  # computed rows are not listed as missing
    assert "\\toprule" in (out / "tables" / "table1.tex").read_text()

    t2 = pd.read_csv(out / "tables" / "table2.csv")
    assert list(t2["score"]) == ["logit margin", "pseudo-margin (code)"]
    assert t2["ref_tau"].tolist() == [0.28, 0.58]
    t3 = pd.read_csv(out / "tables" / "table3.csv")
    assert set(t3["code"]) == {"DI0", "AD10", "RI1"} and t3["head_cv"].gt(0).all()
    t4 = pd.read_csv(out / "tables" / "table4.csv")
    assert (t4["adv_p99"] < t4["lambda95"]).all()
    t5 = pd.read_csv(out / "tables" / "table5_robust_acc_500.csv")
    assert t5["alg1"].between(0, 100).all()
    assert (out / "REPORT.md").is_file()
    assert "marginbench train train=cifar10_resnet18_pgd name=MD0" in md
    # a rebuild keeps the per-model figures that are newer than their run record
    fig7 = out / "figures" / "fig7_roc_pr_DI0_cifar10_Linf.png"
    before = fig7.stat().st_mtime_ns
    again = figures.fig7(load_runs(cache), out / "figures", force=False)
    assert fig7 in again and len(again) == 6 and fig7.stat().st_mtime_ns == before


def test_plot_run_writes_into_run_dir(cache, tmp_path):
    d = cache / "runs" / "b"
    s = pd.read_csv(d / "samples.csv")
    summary = json.loads((d / "summary.json").read_text())
    paths = plot_run(s, summary, tmp_path)
    assert {p.name for p in paths} == {"margins.png", "roc_pr.png"}
    assert all(os.path.getsize(p) > 10_000 for p in paths)


def test_report_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, marginbench.report, marginbench.report.tables, "
            "marginbench.report.figures, marginbench.report.run_plots, marginbench.metrics; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("published, attack_based, says, does_not_say", [
    (True, False, "published RobustBench AutoAttack", "ours"),
    (False, True, "ours: input margin > eps", "RobustBench"),
    (True, True, "hollow: ours", None),
])
def test_fig4_axis_names_the_robust_accuracy_plotted(published, attack_based, says, does_not_say):
    # Zoo and user models have no published AutoAttack accuracy: their points use ours,
    # and the axis must not claim RobustBench then.
    label = figures._fig4_xlabel(published, attack_based)
    assert says in label
    if does_not_say:
        assert does_not_say not in label


def test_paper_cells_put_the_reference_row_beside_ours():
    ref = ref_row(load_reference(REFERENCE_DIR), "table1_reference", "ad10")
    cells = paper_cells(ref, ref_tau="tau", ref_fpr95="fpr95", ref_missing="no_such_column")
    assert cells["ref_tau"] == 0.82 and cells["ref_fpr95"] == 13.26
    assert math.isnan(cells["ref_missing"])  # a column the reference lacks: "–" in the table
    assert cells["ref_source"] == "[NB]" and list(cells) == [
        "ref_tau", "ref_fpr95", "ref_missing", "ref_source"]
    assert paper_cells({"tau": "0.5", "source": "[P]"}, ref_tau="tau") == {
        "ref_tau": 0.5, "ref_source": "[P]"}  # reference CSVs may hold numbers as text
    none = paper_cells(None, ref_tau="tau", ref_auroc="auroc")  # no reference row
    assert set(none) == {"ref_tau", "ref_auroc", "ref_source"} and none["ref_source"] == ""
    assert math.isnan(none["ref_tau"]) and math.isnan(none["ref_auroc"])


def test_robust_acc_to_plot_is_the_published_value_else_ours(tmp_path):
    published = RunRecord(tmp_path, {"model_code": "AD10", "clean_accuracy_published": 0.85,
                                     "robust_accuracy_published": 0.5106,
                                     "robust_accuracy_attack": 0.47})
    assert robust_acc_to_plot(published, {}) == (pytest.approx(51.06), True)
    zoo = RunRecord(tmp_path, {"model_code": "fm_madry", "robust_accuracy_attack": 0.703})
    assert robust_acc_to_plot(zoo, {}) == (pytest.approx(70.3), False)


def test_per_model_figures_name_skip_and_keep_up_to_date_figures(tmp_path):
    records = []
    for code in ("A/1", "B"):
        d = tmp_path / "runs" / code.replace("/", "_")
        d.mkdir(parents=True)
        (d / "summary.json").write_text("{}")
        records.append(RunRecord(d, {"model_code": code, "dataset": "cifar10", "norm": "L2"}))
    drawn = []

    def draw(rec):  # B has nothing to draw
        drawn.append(rec.code)
        return None if rec.code == "B" else new_figure(1, 1)[0]

    out = tmp_path / "figures"
    paths = per_model_figures(records, out, "figX", draw, force=False)
    assert [p.name for p in paths] == ["figX_A_1_cifar10_L2.png", "figX_A_1_cifar10_L2.pdf"]
    assert drawn == ["A/1", "B"] and all(p.is_file() for p in paths)
    drawn.clear()  # a rebuild keeps A's figure without drawing it...
    assert per_model_figures(records, out, "figX", draw, force=False) == paths
    assert drawn == ["B"]
    drawn.clear()  # ...unless forced...
    assert per_model_figures(records, out, "figX", draw, force=True) == paths
    assert drawn == ["A/1", "B"]
    drawn.clear()  # ...or its run record is newer than the figure
    later = paths[0].stat().st_mtime + 10
    os.utime(records[0].path / "summary.json", (later, later))
    assert per_model_figures(records, out, "figX", draw, force=False) == paths
    assert drawn == ["A/1", "B"]
