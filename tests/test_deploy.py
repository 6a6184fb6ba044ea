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


# A detector.json edited by hand or by another tool: each of these crashed `detect` after the
# model was loaded (a string threshold, weights hash or model) or was used silently: a NaN
# threshold flagged nothing, +inf everything, a delta of 0 claimed a guarantee (round 10)
BAD_DETECTOR_FIELDS = [
    ("threshold", "abc"), ("threshold", None), ("threshold", float("nan")), ("threshold", float("inf")),
    ("weights_sha256", 5), ("model", "tiny"), ("target_recall", 1.5), ("delta", 0), ("delta", -0.1),
    ("score", "entropy"), ("norm", "L7"), ("eps", "x"), ("n_calibration", "x"), ("test", [1]),
]


def test_a_detector_file_with_a_bad_field_is_refused_in_one_line_before_the_model(npz_data, tmp_path, capsys):
    cache, run = tmp_path / "cache", tmp_path / "cal"
    assert main(["calibrate", *tiny(npz_data, cache), *DETECTOR, f"hydra.run.dir={run}"]) == 0
    good = json.loads((run / "detector.json").read_text())
    assert marginbench.BrittleDetector.load(run / "detector.json", __import__("tiny_models").tiny_cnn())
    for key, value in BAD_DETECTOR_FIELDS:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**good, key: value}))  # NaN / Infinity: Python's json writes and reads them
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["detect", f"detector={bad}", *tiny(npz_data, cache), f"hydra.run.dir={tmp_path / 'det'}"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, (key, value, err)
        assert f"detector file {bad}: {key} must be" in err and "Traceback" not in err, (key, value, err)
        assert not (tmp_path / "det").exists()
    # JSON integers beyond int64 are numbers too (np.isfinite raised on them: a traceback)
    from marginbench.brittle import DetectorSpec

    assert DetectorSpec(**{**good, "threshold": 2**64}).problem() is None
    assert "target_recall must be" in DetectorSpec(**{**good, "target_recall": 2**64}).problem()


def test_detect_refuses_another_eps_and_a_file_as_its_run_dir(npz_data, tmp_path, capsys):
    cache, run = tmp_path / "cache", tmp_path / "cal"
    assert main(["calibrate", *tiny(npz_data, cache), *DETECTOR, f"hydra.run.dir={run}"]) == 0
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    for extra, message in ((["eps=0.5"], "detect flags at the detector's own eps (0.25)"),
                           (["eps=auto"], "eps=auto: detect flags at the detector's own eps (0.25)"),
                           ([f"hydra.run.dir={in_the_way}"], "is a file, not a directory"),
                           ([f"hydra.run.dir={in_the_way / 'det'}"], "is a file, not a directory")):
        capsys.readouterr()
        args = [a for a in tiny(npz_data, cache) if not (extra[0].startswith("eps") and a.startswith("eps="))]
        with pytest.raises(SystemExit) as exc:
            main(["detect", f"detector={run / 'detector.json'}", *args,
                  *(extra if extra[0].startswith("hydra") else [f"hydra.run.dir={tmp_path / 'det'}", *extra])])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert main(["detect", f"detector={run / 'detector.json'}", *tiny(npz_data, cache), "eps=1/4",
                 f"hydra.run.dir={tmp_path / 'det'}"]) == 0  # the same eps, written another way


def test_calibrate_refuses_a_file_as_its_run_dir_before_any_attack(npz_data, tmp_path, capsys):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", *tiny(npz_data, tmp_path / "cache"), *DETECTOR, f"hydra.run.dir={in_the_way}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "is a file, not a directory" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("samples*"))


@pytest.mark.parametrize("bad, message", [
    ("detector.seed=-1", "detector.seed=-1 must be an integer >= 0"),  # numpy refused it after the attacks
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


def test_a_split_larger_than_the_whole_test_set_is_refused_before_any_attack(npz_data, tmp_path, capsys):
    # n_samples=null: the number of samples is known only once the data is loaded; the
    # split used to be checked after every attack had run
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", *tiny(npz_data, tmp_path / "cache"), *DETECTOR[:-1], "detector.n_test=40",
              f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "= 64 > the 48 evaluated samples" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "detector.json").exists()


def test_too_small_an_eps_says_so_and_keeps_the_margins_for_the_next_eps(npz_data, tmp_path, capsys):
    # no sample is non-robust at eps=1e-9: known only once the margins exist, so the error
    # comes after them, and points at eps; the margins stay cached for the next try
    args = [a for a in tiny(npz_data, tmp_path / "cache") if not a.startswith("eps=")]
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", *args, "eps=1e-9", *DETECTOR, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "0 non-robust calibration samples are too few" in err[-1], err
    assert "at a larger eps (cached margins are reused)" in err[-1] and not any("Traceback" in e for e in err)
    assert not (tmp_path / "run" / "detector.json").exists()
    assert len(list((tmp_path / "cache" / "margins").glob("*/arrays.npz"))) == 1


def test_split_rows_is_seeded_and_disjoint():
    cal, test = deploy.split_rows(100, 30, 50, seed=3)
    assert cal.size == 30 and test.size == 50 and not set(cal) & set(test)
    again = deploy.split_rows(100, 30, 50, seed=3)
    assert np.array_equal(cal, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(cal, deploy.split_rows(100, 30, 50, seed=4)[0])
    assert deploy.split_rows(100, 30, None, seed=3)[1].size == 70
