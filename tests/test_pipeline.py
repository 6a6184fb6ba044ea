"""End-to-end runs of the pipeline on a tiny model: outputs, caching, resume, errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import marginbench
from marginbench.config import attack_preset
from marginbench.margins import DEFAULT_ATTACK
from marginbench.stages.metrics import WALL_TIME_COLUMNS

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SAMPLE_COLUMNS = {
    "index", "label", "pred", "correct", "input_margin", "attack_success", "found_by", "logit_margin",
    "feature_margin", "feature_distance", "adv_logit_margin", "n_forward", "n_backward", "attack_seconds",
    "nonrobust", "robust_correct", "prob_margin", "max_softmax", "neg_entropy", "escalated",
    "margin_lower_bound", "margin_status", "margin_agreement",
    "first_order_margin", "neg_grad_norm", "score_seconds",
}
SUMMARY_KEYS = {
    "model", "dataset", "norm", "eps", "n_samples", "clean_accuracy", "robust_accuracy_attack", "kendall_tau",
    "auroc", "aupr", "fpr_at_95", "n_attack_failures", "robust_accuracy_interval", "scores",
}


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def npz_data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(48, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=48).astype(np.int64)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=images, labels=labels)
    return path


def tiny_overrides(npz: Path, cache: Path, *extra: str) -> list[str]:
    # debug=tiny (CPU, no plots or progress bars, 1 restart, a one-step polish), then what
    # these tests need: every one of the 48 samples, in batches of 8, FAB with 20 steps
    return [
        "model=custom",
        "model.factory=tiny_models:tiny_cnn",
        "dataset=npz",
        f"dataset.path={npz}",
        "debug=tiny",
        "attack=fab",
        "attack.steps=20",
        "eps=0.05",
        "n_samples=null",
        f"paths.cache_dir={cache}",
        "batch_size=8",
        *extra,
    ]


def test_run_writes_per_sample_results_and_summary(npz_data, tmp_path):
    result = marginbench.run(*tiny_overrides(npz_data, tmp_path / "cache"), run_dir=tmp_path / "run")
    samples = pd.read_csv(tmp_path / "run" / "samples.csv")
    assert SAMPLE_COLUMNS <= set(samples.columns)
    assert len(samples) == 48 and samples["index"].tolist() == list(range(48))
    assert SUMMARY_KEYS <= set(result.summary)
    found = samples[samples["attack_success"]]
    assert len(found) > 40, "FAB should break a random tiny CNN on almost every sample"
    assert (found["input_margin"] > 0).all() and np.isfinite(found["input_margin"]).all()
    # non-robust at eps is exactly "attack found a perturbation of norm <= eps"
    np.testing.assert_array_equal(samples["nonrobust"], samples["attack_success"] & (samples["input_margin"] <= 0.05))
    assert result.summary["n_samples"] == 48


def test_second_run_and_eps_change_reuse_the_margins(npz_data, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = marginbench.run(*tiny_overrides(npz_data, cache))
    caplog.set_level(logging.INFO, logger="marginbench")
    again = marginbench.run(*tiny_overrides(npz_data, cache))
    assert "margin stage skipped" in caplog.text and "metrics: cached" in caplog.text
    assert again.summary == first.summary
    caplog.clear()
    other_eps = marginbench.run(*tiny_overrides(npz_data, cache, "eps=0.02"))
    assert "margin stage skipped" in caplog.text and "outputs: cached" in caplog.text
    assert other_eps.keys["margins"] == first.keys["margins"]
    assert other_eps.keys["runs"] != first.keys["runs"]
    np.testing.assert_array_equal(other_eps.samples["input_margin"], first.samples["input_margin"])
    # batch size and device never enter a key
    bigger_batches = marginbench.run(*tiny_overrides(npz_data, cache, "batch_size=16"))
    assert bigger_batches.keys == first.keys


def test_attack_change_invalidates_margins(npz_data, tmp_path):
    cache = tmp_path / "cache"
    a = marginbench.run(*tiny_overrides(npz_data, cache))
    b = marginbench.run(*tiny_overrides(npz_data, cache, "attack.steps=21"))
    assert a.keys["margins"] != b.keys["margins"]


def _cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "marginbench.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_killed_run_resumes_to_identical_results(npz_data, tmp_path):
    """SIGKILL a real process during the margin stage; the resumed run equals a clean one."""
    overrides = tiny_overrides(npz_data, tmp_path / "cache_killed", "attack.steps=60", "batch_size=4")
    parts = tmp_path / "cache_killed" / "margins"
    process = subprocess.Popen(
        [sys.executable, "-m", "marginbench.cli", "run", *overrides, f"hydra.run.dir={tmp_path / 'killed'}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if len(list(parts.glob("*.parts/part-*.npz"))) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; make it slower"
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before_kill = len(list(parts.glob("*.parts/part-*.npz")))
    assert 2 <= finished_before_kill < 12, finished_before_kill
    assert not list(parts.glob("*/meta.json")), "a killed run must not leave a complete artifact"

    resumed = _cli("run", *overrides, f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout + resumed.stderr
    clean = _cli("run", *tiny_overrides(npz_data, tmp_path / "cache_clean", "attack.steps=60", "batch_size=4"),
                 f"hydra.run.dir={tmp_path / 'clean'}", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    resumed_csv = (tmp_path / "resumed" / "samples.csv").read_text()
    clean_csv = (tmp_path / "clean" / "samples.csv").read_text()
    # the cost columns measure wall time, which differs between any two runs
    drop = list(WALL_TIME_COLUMNS)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "resumed" / "samples.csv").drop(columns=drop),
        pd.read_csv(tmp_path / "clean" / "samples.csv").drop(columns=drop),
        check_exact=True,
    )
    assert resumed_csv.count("\n") == clean_csv.count("\n") == 49


@pytest.mark.parametrize(
    ("override", "expected"),
    [("modle=XU80", "did you mean 'model'"), ("eps=abc", "eps='abc' is not a number"), ("attack=nope", "attack=nope is not an option"),
     ("model=NOT_A_MODEL", "NOT_A_MODEL"), ("n_samples=abc", "n_samples=abc")],
)
def test_config_errors_are_one_line_and_write_nothing(tmp_path, override, expected):
    cache = tmp_path / "cache"
    result = _cli("run", override, f"paths.cache_dir={cache}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("marginbench: error:"), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not cache.exists()
    assert not (tmp_path / "outputs").exists()


def test_summary_metrics_recompute_from_samples_csv_with_plain_scipy_sklearn(npz_data, tmp_path):
    """A user recomputing the headline numbers from samples.csv gets summary.json's values."""
    from scipy.stats import kendalltau
    from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

    first = marginbench.run(*tiny_overrides(npz_data, tmp_path / "cache"))
    eps = float(np.median(first.samples["input_margin"]))  # both classes present at this eps
    marginbench.run(*tiny_overrides(npz_data, tmp_path / "cache", f"eps={eps}"), run_dir=tmp_path / "run")
    samples = pd.read_csv(tmp_path / "run" / "samples.csv")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    d_in, d_out = samples["input_margin"].to_numpy(), samples["logit_margin"].to_numpy()
    positive = (samples["attack_success"] & (samples["input_margin"] <= summary["eps"])).to_numpy()
    assert 0 < positive.sum() < len(positive), "the test needs both classes"
    assert summary["kendall_tau"] == pytest.approx(kendalltau(d_out, d_in).statistic, abs=1e-12)
    assert summary["auroc"] == pytest.approx(roc_auc_score(positive, -d_out), abs=1e-12)
    precision, recall, _ = precision_recall_curve(positive, -d_out)
    assert summary["aupr"] == pytest.approx(auc(recall, precision), abs=1e-12)
    fpr, tpr, thresholds = roc_curve(positive, -d_out, drop_intermediate=False)
    # the authors' FPR@95: at the lowest TPR >= 0.95, the largest FPR reached with that TPR
    reached = tpr >= 0.95
    fpr95 = fpr[reached & (tpr == tpr[reached].min())].max()
    assert summary["fpr_at_95"] == pytest.approx(fpr95, abs=1e-12)
    assert summary["clean_accuracy"] == pytest.approx(samples["correct"].mean())
    assert summary["robust_accuracy_attack"] == pytest.approx(samples["robust_correct"].mean())


def test_unbreakable_model_gives_flagged_failures_counted_in_the_summary(npz_data, tmp_path):
    """A model that ignores its input cannot be attacked: every sample is a recorded
    failure (input_margin inf, attack_success false, found_by empty), never a margin of 0,
    and the summary counts them."""
    swap = {"model.factory=tiny_models:tiny_cnn": "model.factory=tiny_models:constant",
            "attack=fab": f"attack={DEFAULT_ATTACK}"}
    overrides = [swap.get(o, o) for o in tiny_overrides(npz_data, tmp_path / "cache", "n_samples=8")]
    result = marginbench.run(*overrides, run_dir=tmp_path / "run")
    samples = pd.read_csv(tmp_path / "run" / "samples.csv", keep_default_na=False)
    assert len(samples) == 8
    assert (samples["input_margin"].astype(float) == np.inf).all()
    assert (samples["attack_success"].astype(str) == "False").all()
    assert (samples["found_by"] == "").all()
    # the default escalates every failure through each family of its preset, and says so
    families = ",".join(attack_preset(DEFAULT_ATTACK)["escalate"])
    assert families and (samples["escalated"] == families).all()
    assert result.summary["n_attack_failures"] == 8
    assert not samples["nonrobust"].astype(str).eq("True").any()
