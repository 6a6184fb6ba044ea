"""Sweeps: eps sweeps reuse margins, sharded margins equal unsharded ones, failing jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marginbench.stages.margins import shard_positions
from marginbench.stages.metrics import WALL_TIME_COLUMNS

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def npz_data(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, size=(40, 28, 28, 1), dtype=np.uint8), labels=rng.integers(0, 10, 40))
    return path


def base(npz: Path, cache: Path) -> list[str]:
    # debug=tiny, then all 40 samples in 5 batches of 8 (the shard tests need whole batches)
    return [
        "model=custom", "model.factory=tiny_models:tiny_cnn", "dataset=npz", f"dataset.path={npz}",
        "debug=tiny", "attack=fab", "attack.steps=20", "eps=0.05", "n_samples=null", f"paths.cache_dir={cache}",
        "batch_size=8",
    ]


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marginbench.cli", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def job_logs(sweep_dir: Path) -> list[str]:
    return [p.read_text() for p in sorted(sweep_dir.rglob("*.log"))]


def test_shards_are_whole_batches_covering_every_sample():
    shards = shard_positions(43, 4, 8)
    assert np.array_equal(np.concatenate(shards), np.arange(43))
    assert all(s[0] % 8 == 0 for s in shards if s.size)
    assert [s.size for s in shards] == [16, 16, 8, 3]  # 6 batches -> 2,2,1,1


def test_eps_sweep_after_a_cached_run_never_runs_the_margin_stage(npz_data, tmp_path, env):
    cache = tmp_path / "cache"
    first = cli(base(npz_data, cache) + [f"hydra.run.dir={tmp_path / 'first'}"], tmp_path, env)
    assert first.returncode == 0, first.stderr
    sweep = cli(["-m", *base(npz_data, cache), "eps=2/255,4/255,8/255,12/255,16/255,32/255",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, env)
    assert sweep.returncode == 0, sweep.stderr
    logs = job_logs(tmp_path / "sweep")
    assert len(logs) == 6
    for log in logs:
        assert "margin stage skipped" in log and "computing" not in log
    eps_values = sorted(json.loads(p.read_text())["eps"] for p in (tmp_path / "sweep").rglob("summary.json"))
    np.testing.assert_allclose(eps_values, np.array([2, 4, 8, 12, 16, 32]) / 255)


def test_four_shards_through_submitit_equal_the_unsharded_run(npz_data, tmp_path, env):
    whole = cli(base(npz_data, tmp_path / "cache_whole") + [f"hydra.run.dir={tmp_path / 'whole'}"], tmp_path, env)
    assert whole.returncode == 0, whole.stderr
    sharded_cache = tmp_path / "cache_sharded"
    missing = cli(base(npz_data, sharded_cache) + ["shard.count=4", f"hydra.run.dir={tmp_path / 'early'}"], tmp_path, env)
    assert missing.returncode == 2 and "margin shards [0, 1, 2, 3] of shard.count=4 are not finished" in missing.stderr
    shards = cli(["-m", *base(npz_data, sharded_cache), "shard.count=4", "shard.index=0,1,2,3",
                  "hydra/launcher=submitit_local_cpu", f"hydra.sweep.dir={tmp_path / 'shards'}"], tmp_path, env)
    assert shards.returncode == 0, shards.stdout + shards.stderr
    assert len(list((tmp_path / "shards" / ".submitit").glob("*"))) >= 4, "jobs must go through submitit"
    assembled = cli(base(npz_data, sharded_cache) + ["shard.count=4", f"hydra.run.dir={tmp_path / 'assembled'}"], tmp_path, env)
    assert assembled.returncode == 0, assembled.stderr
    drop = list(WALL_TIME_COLUMNS)  # wall time, never identical
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "assembled" / "samples.csv").drop(columns=drop),
        pd.read_csv(tmp_path / "whole" / "samples.csv").drop(columns=drop),
        check_exact=True,
    )


def test_a_failing_job_does_not_stop_the_sweep_and_a_rerun_redoes_only_it(npz_data, tmp_path, env):
    cache = tmp_path / "cache"
    args = ["-m", *base(npz_data, cache), "model.factory=tiny_models:tiny_cnn,tiny_models:broken,tiny_models:tiny_cnn",
            "hydra.sweep.dir=" + str(tmp_path / "sweep1")]
    first = cli(args, tmp_path, env)
    assert first.returncode == 1
    assert "3 jobs, 2 done, 1 failed" in first.stdout
    assert "FAILED" in first.stdout and "tiny_models:broken" in first.stdout
    statuses = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep1").rglob("status.json"))]
    assert [s["status"] for s in statuses] == ["done", "failed", "done"]
    rerun = cli(args[:-1] + ["hydra.sweep.dir=" + str(tmp_path / "sweep2")], tmp_path, env)
    assert rerun.returncode == 1
    logs = {p.parent.name: p.read_text() for p in (tmp_path / "sweep2").rglob("*.log")}
    assert "metrics: cached" in logs["0"] and "metrics: cached" in logs["2"]
    assert "computing" not in logs["0"] + logs["2"]
    assert "job failed" in logs["1"]


def test_gpu_pool_launcher_gives_each_worker_its_own_device(npz_data, tmp_path, env):
    result = cli(["-m", *base(npz_data, tmp_path / "cache"), "seed=0,1", "hydra/launcher=local_gpus",
                  "hydra.launcher.gpus=[0,1]", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    devices = sorted(json.loads(p.read_text())["cuda_visible_devices"] for p in (tmp_path / "sweep").rglob("status.json"))
    assert devices == ["0", "1"]
