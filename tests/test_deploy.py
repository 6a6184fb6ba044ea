"""marginbench calibrate / detect end to end on a tiny model; BrittleDetector in a fresh process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import marginbench
from marginbench import deploy, detect
from marginbench.cli import main

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DETECTOR = ["detector.target_recall=0.8", "detector.delta=0.2", "detector.n_calibration=24", "detector.n_test=24"]
KEYS = {"score", "threshold", "eps", "norm", "target_recall", "delta", "n_calibration", "calibration_indices",
        "weights_sha256", "marginbench_version", "model", "dataset", "test"}


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def npz_data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, size=(48, 28, 28, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, size=48).astype(np.int64))
    return path


def tiny(npz: Path, cache: Path, *extra: str) -> list[str]:
    return ["model=custom", "model.factory=tiny_models:tiny_cnn", "dataset=npz", f"dataset.path={npz}",
            "attack=fab", "attack.steps=20", "eps=0.25", "n_samples=null", f"paths.cache_dir={cache}",
            "batch_size=8", "device=cpu", "progress=false", "plots=false", *extra]


# A fresh interpreter: load the detector next to a model built from scratch, print its flags.
FRESH = """
import json, sys, numpy as np, torch, marginbench, tiny_models
model = tiny_models.tiny_cnn()
if sys.argv[3] == "other":
    with torch.no_grad():
        model[-1].bias.add_(1e-3)
det = marginbench.BrittleDetector.load(sys.argv[1], model)
x = torch.from_numpy(np.load(sys.argv[2])["images"]).permute(0, 3, 1, 2).float() / 255
with torch.no_grad():
    logits, brittle, score = det(x)
print(json.dumps({"brittle": brittle.tolist(), "score": score.tolist(), "pred": logits.argmax(1).tolist()}))
"""


def _fresh(detector: Path, npz: Path, which: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FRESH, str(detector), str(npz), which],
                          capture_output=True, text=True, timeout=120)


def test_calibrate_detect_and_fresh_process_round_trip(npz_data, tmp_path, capsys, caplog):
    cache, run = tmp_path / "cache", tmp_path / "cal"
    assert main(["calibrate", *tiny(npz_data, cache), *DETECTOR, f"hydra.run.dir={run}"]) == 0
    assert "held-out: 24 samples" in capsys.readouterr().out
    spec = json.loads((run / "detector.json").read_text())
    assert KEYS <= set(spec) and spec["n_calibration"] == 24 and spec["test"]["n"] == 24
    assert not set(spec["calibration_indices"]) & set(spec["test"]["indices"])
    # λ is the rule's order statistic of the calibration rows' non-robust logit margins
    samples = pd.read_csv(run / "samples.csv").set_index("index")
    cal = samples.loc[spec["calibration_indices"]]
    scores = np.sort(cal.loc[cal["nonrobust"], "logit_margin"].to_numpy())
    assert spec["threshold"] == pytest.approx(scores[detect.calibration_rank(scores.size, 0.8, 0.2) - 1])
    test = samples.loc[spec["test"]["indices"]]
    assert spec["test"]["recall"] == pytest.approx((test.loc[test["nonrobust"], "logit_margin"] <= spec["threshold"]).mean())
    # a later `run` on the same images reuses the very margins calibrate computed
    with caplog.at_level(logging.INFO, logger="marginbench"):
        result = marginbench.run(*tiny(npz_data, cache))
    assert result.keys["margins"] == spec["extra"]["margins_key"] and "margin stage skipped" in caplog.text

    fresh = _fresh(run / "detector.json", npz_data, "same")
    assert fresh.returncode == 0, fresh.stderr
    flags = json.loads(fresh.stdout)
    # the model defaults to the one in detector.json; no attack, one row per image
    assert main(["detect", f"detector={run / 'detector.json'}", f"dataset.path={npz_data}", "dataset=npz",
                 "n_samples=null", f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'det'}"]) == 0
    csv = pd.read_csv(tmp_path / "det" / "flags.csv")
    assert list(csv.columns) == ["index", "pred", "logit_margin", "brittle"]
    assert csv["brittle"].tolist() == flags["brittle"] and csv["pred"].tolist() == flags["pred"]
    np.testing.assert_allclose(csv["logit_margin"], flags["score"], rtol=1e-6)
    assert csv.loc[spec["test"]["indices"], "brittle"].tolist() == (test["logit_margin"] <= spec["threshold"]).tolist()

    other = _fresh(run / "detector.json", npz_data, "other")
    assert other.returncode != 0 and "MarginbenchError" in other.stderr and "recalibrate" in other.stderr


def test_detect_refuses_another_model_in_one_line(npz_data, tmp_path, capsys):
    cache, run = tmp_path / "cache", tmp_path / "cal"
    assert main(["calibrate", *tiny(npz_data, cache), *DETECTOR, f"hydra.run.dir={run}"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["detect", f"detector={run / 'detector.json'}", *tiny(npz_data, cache, "model.factory=tiny_models:constant"),
              f"hydra.run.dir={tmp_path / 'det'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "recalibrate" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "det").exists()


@pytest.mark.parametrize("bad, message", [
    ("detector.n_calib=3", "did you mean 'detector.n_calibration'"),
    ("detector.delta=abc", "not a valid float"),
    ("detector.n_calibration=5", "non-robust samples"),
    ("detector.n_test=40", "> the 48 evaluated samples"),
    ("detector.score=entropy", "not supported"),
    ("detector.target_recall=1.5", "must both be in (0, 1)"),
])
def test_config_errors_are_one_line_and_write_nothing(npz_data, tmp_path, capsys, bad, message):
    overrides = [o for o in tiny(npz_data, tmp_path / "cache") if o != "n_samples=null"] + ["n_samples=48"]
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", *overrides, *DETECTOR, bad, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_split_rows_is_seeded_and_disjoint():
    cal, test = deploy.split_rows(100, 30, 50, seed=3)
    assert cal.size == 30 and test.size == 50 and not set(cal) & set(test)
    again = deploy.split_rows(100, 30, 50, seed=3)
    assert np.array_equal(cal, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(cal, deploy.split_rows(100, 30, 50, seed=4)[0])
    assert deploy.split_rows(100, 30, None, seed=3)[1].size == 70
