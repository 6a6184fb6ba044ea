"""Fault injection: nothing a user (or a disk, or a cluster) does to a run crashes it, wastes
it, or gives a silent wrong number.

- kill -9 at seeded random moments, rerun after each kill: the final samples.csv equals an
  uninterrupted run's in every column but the wall-time columns (``WALL_TIME_COLUMNS``);
- SIGTERM: exit 143, one line saying what was kept and how to resume, and the resume is exact;
- every file of every stage truncated, bit-flipped or deleted: detected, recomputed, identical;
- two and three concurrent identical runs on one cache: all finish, identical results;
- bad inputs of every kind: exit 2, exactly one ``marginbench: error:`` line on stderr, no
  traceback, nothing new in the cache directory.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import marginbench
from marginbench import cli
from marginbench.cache import ArtifactStore
from marginbench.stages.metrics import WALL_TIME_COLUMNS

TESTS = Path(__file__).resolve().parent
WALL_TIME = list(WALL_TIME_COLUMNS)  # the columns two runs of the same config may differ in


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, size=(8, 28, 28, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, size=8).astype(np.int64))
    return path


def config(npz: Path, cache: Path, *extra: str, factory: str = "tiny_cnn") -> list[str]:
    return ["model=custom", f"model.factory=tiny_models:{factory}", "dataset=npz", f"dataset.path={npz}",
            "attack=fab", "attack.steps=10", "eps=0.1", "n_samples=8", "batch_size=2", "device=cpu",
            "progress=false", "plots=false", f"paths.cache_dir={cache}", *extra]


def same_samples(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns=WALL_TIME), b.drop(columns=WALL_TIME), check_exact=True)


def files_under(path: Path) -> set[str]:
    if path.is_file():
        return {f"<file {path.stat().st_size}>"}
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.is_dir() else set()


# ---------------------------------------------------------------------------------------------
# corrupted artifacts and parts
# ---------------------------------------------------------------------------------------------

STAGE_FILES = [("margins", "arrays.npz"), ("margins", "meta.json"), ("outputs", "arrays.npz"),
               ("outputs", "meta.json"), ("runs", "summary.json"), ("runs", "samples.csv"),
               ("runs", "head_weight.npy"), ("runs", "meta.json"), ("margins.parts", "part")]
# truncation in the default suite; the other two kinds of damage with the slow tests
DAMAGE = ["truncate", pytest.param("bitflip", marks=pytest.mark.slow), pytest.param("delete", marks=pytest.mark.slow)]


def damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "bitflip":
        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 0x01  # a one-bit change keeps a text file looking valid
        path.write_bytes(bytes(flipped))
    else:
        path.unlink()


@pytest.fixture(scope="module")
def pristine(npz, tmp_path_factory):
    """A complete cache, a cache holding only the first margin batch as a part, and the
    reference per-sample table."""
    root = tmp_path_factory.mktemp("pristine")
    reference = marginbench.run(*config(npz, root / "full"))
    marginbench.run(*config(npz, root / "parts", "shard.count=4", "shard.index=0"))
    assert list((root / "parts" / "margins").glob("*.parts/part-*.npz"))
    return root, reference


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize(("stage", "name"), STAGE_FILES)
def test_damaged_cache_file_is_recomputed_to_identical_results(npz, pristine, tmp_path, stage, name, how, caplog):
    root, reference = pristine
    cache = tmp_path / "cache"
    shutil.copytree(root / ("parts" if stage == "margins.parts" else "full"), cache)
    if stage == "margins.parts":
        (target,) = (cache / "margins").glob("*.parts/part-*.npz")
    else:
        (target,) = (cache / stage).glob(f"*/{name}")
    damage(target, how)
    result = marginbench.run(*config(npz, cache))
    same_samples(result.samples, reference.samples)
    assert result.summary["kendall_tau"] == reference.summary["kendall_tau"]
    if stage == "margins.parts" and how != "delete":
        assert "is damaged" in caplog.text
    for key_stage in ("margins", "outputs", "runs"):  # every artifact is whole again
        assert ArtifactStore(cache).get(key_stage, result.keys[key_stage]) is not None


def test_tables_leave_out_a_run_record_whose_files_do_not_match_its_meta(pristine, tmp_path):
    """`marginbench tables` read a samples.csv cut to half its lines as it was (figures from
    half the samples, exit 0, no word; round 10): a record is checked against the sizes and
    hashes of its meta.json, like every cache read."""
    from marginbench.report import load_runs

    root, _ = pristine
    cache = tmp_path / "cache"
    shutil.copytree(root / "full", cache)
    assert len(load_runs(cache)) == 1
    (samples,) = (cache / "runs").glob("*/samples.csv")
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[: len(lines) // 2]))
    with pytest.warns(UserWarning, match=r"skipping corrupt run record .* rerun its `marginbench run"):
        assert load_runs(cache) == []


# ---------------------------------------------------------------------------------------------
# kill -9, SIGTERM, concurrent runs (real processes)
# ---------------------------------------------------------------------------------------------


def start(npz: Path, cache: Path, run_dir: Path, factory: str = "slow_cnn") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "marginbench.cli", "run", *config(npz, cache, factory=factory),
         f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.fixture(scope="module")
def slow_reference(npz, tmp_path_factory) -> tuple[pd.DataFrame, float]:
    """The uninterrupted run of the slow config (in-process: same code, no start-up cost)."""
    started = time.perf_counter()
    result = marginbench.run(*config(npz, tmp_path_factory.mktemp("slow_ref") / "cache", factory="slow_cnn"))
    return result.samples, time.perf_counter() - started


def kill_and_resume(npz: Path, tmp_path: Path, reference: pd.DataFrame, moments: int, seed: int) -> int:
    """SIGKILL runs of one config at ``moments`` seeded random times, each kill resumed by the
    next run; returns how many kills hit a live process. A run that finished before its kill
    time (a miss) leaves everything cached, so every later run would finish at once too: the
    cache is then cleared and the next run starts from scratch (at most 3 x moments runs).
    The final, uninterrupted rerun must equal the reference."""
    rng = random.Random(seed)
    cache, hits = tmp_path / "cache", 0
    for attempt in range(3 * moments):
        if hits == moments:
            break
        process = start(npz, cache, tmp_path / f"killed{attempt}")
        time.sleep(rng.uniform(1.0, 7.0))  # from start-up (imports) to the end of the attack
        live = process.poll() is None
        if live:
            hits += 1
            process.kill()
        process.communicate()
        assert not list((cache / "margins").glob(".tmp-*/meta.json")) if (cache / "margins").is_dir() else True
        if not live:
            shutil.rmtree(cache, ignore_errors=True)
    final = start(npz, cache, tmp_path / "final")
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr
    same_samples(pd.read_csv(tmp_path / "final" / "samples.csv"), reference)
    return hits


def test_kill_9_at_two_random_moments_resumes_to_identical_results(npz, tmp_path, slow_reference):
    hits = kill_and_resume(npz, tmp_path, slow_reference[0], moments=2, seed=1)
    assert hits >= 1


@pytest.mark.slow
def test_kill_9_at_ten_random_moments_resumes_to_identical_results(npz, tmp_path, slow_reference):
    hits = kill_and_resume(npz, tmp_path, slow_reference[0], moments=10, seed=2)
    assert hits >= 5


def test_sigterm_says_what_was_kept_and_resumes_exactly(npz, tmp_path, slow_reference):
    cache = tmp_path / "cache"
    process = start(npz, cache, tmp_path / "stopped")
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not list(cache.glob("margins/*.parts/part-*.npz")):
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before SIGTERM; make it slower"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "resume with: marginbench run" in lines[0], stderr
    assert "Traceback" not in stderr
    kept = list(cache.glob("margins/*.parts/part-*.npz"))
    assert kept, "finished batches must survive SIGTERM"
    resumed = start(npz, cache, tmp_path / "resumed")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "resuming" in stdout + stderr
    same_samples(pd.read_csv(tmp_path / "resumed" / "samples.csv"), slow_reference[0])


@pytest.mark.slow
@pytest.mark.parametrize(("copies", "factory"), [(2, "tiny_cnn"), (3, "slow_cnn")])
def test_concurrent_identical_runs_share_one_cache(npz, tmp_path, pristine, slow_reference, copies, factory):
    cache = tmp_path / "cache"
    processes = [start(npz, cache, tmp_path / f"run{i}", factory) for i in range(copies)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    reference = slow_reference[0] if factory == "slow_cnn" else pristine[1].samples
    for i in range(copies):
        same_samples(pd.read_csv(tmp_path / f"run{i}" / "samples.csv"), reference)


# ---------------------------------------------------------------------------------------------
# bad inputs: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------


def _html(tmp: Path) -> str:
    (tmp / "weights.pt").write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    return f"model.weights={tmp / 'weights.pt'}"


def _npz_without_labels(tmp: Path) -> str:
    np.savez(tmp / "nolabels.npz", images=np.zeros((4, 28, 28, 1), np.uint8))
    return f"dataset.path={tmp / 'nolabels.npz'}"


def _garbage_npz(tmp: Path) -> str:
    (tmp / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return f"dataset.path={tmp / 'garbage.npz'}"


def _a_file(key: str):
    def make(tmp: Path) -> str:
        (tmp / "in_the_way").write_text("a file where a directory should be")
        return f"{key}={tmp / 'in_the_way'}"
    return make


# (case id, overrides made from the test's tmp dir, text the error line must contain)
BAD_INPUTS = [
    ("unknown key", lambda t: "modle=XU80", "did you mean 'model'"),
    ("unknown nested key", lambda t: "attack.stepz=3", "unknown config key"),
    ("option the preset does not set", lambda t: "attack.options.multistart_stack_rows=0", "++attack.options.multistart_stack_rows=VALUE"),
    ("option added with ++, bad value", lambda t: "attack=fab_polish_multistart ++attack.options.multistart_stack_rows=-1",
     "multistart_stack_rows must be an integer >= 0; got -1"),
    # options marginbench reads itself: type and range checked before any model is loaded,
    # also for a stage the preset does not run (these crashed mid-run or were ignored)
    ("option not a number", lambda t: "attack=fab_polish attack.options.polish_rho=abc",
     "attack.options.polish_rho must be a number in (0, 1); got 'abc'"),
    ("option out of range", lambda t: "attack=fab_polish attack.options.polish_rho=2", "polish_rho must be a number in (0, 1)"),
    ("option not an integer", lambda t: "attack=fab_polish attack.options.polish_rounds=3.5",
     "polish_rounds must be an integer >= 0; got 3.5"),
    ("bad jacobian mode", lambda t: "++attack.options.jacobian=fast", "jacobian must be one of loop, batched; got 'fast'"),
    ("option of a stage not run", lambda t: "attack=fab_polish ++attack.options.multistart_targets=-2",
     "multistart_targets must be an integer >= 1; got -2"),
    ("exact time limit not a number", lambda t: "attack=exact attack.options.time_limit=abc",
     "time_limit must be a number > 0; got 'abc'"),
    ("unknown apgd loss", lambda t: "attack=apgd_bisect ++attack.options.loss=hinge", "loss must be one of dlr, ce; got 'hinge'"),
    # library options: the name must be one the library call takes, the value of its default's kind
    ("library option typo", lambda t: "++attack.options.alpah_max=0.1", "unknown attack option 'alpah_max' (FABAttack_PT.__init__ takes"),
    ("library option not a number", lambda t: "++attack.options.alpha_max=abc", "attack.options.alpha_max must be a number in [0, 1]; got 'abc'"),
    # library values outside the range their meaning allows: silently every sample unbroken, or a crash
    ("FAB option out of its range", lambda t: "++attack.options.eta=-1", "attack.options.eta must be a number >= 1; got -1"),
    ("adv-lib option out of its range", lambda t: "attack=fmn ++attack.options.alpha_init=-1",
     "attack.options.alpha_init must be a number > 0; got -1"),
    ("Square option out of its range", lambda t: "attack=square ++attack.options.p_init=5",
     "attack.options.p_init must be a number in (0, 1]; got 5"),
    ("APGD option that crashed mid-run", lambda t: "attack=apgd_bisect ++attack.options.eot_iter=0",
     "attack.options.eot_iter must be an integer >= 1; got 0"),
    # round 10: adv-lib parameters no config value can mean (crashed at the first step) and
    # ALMA values outside their meaning (every sample unbroken), a FAB option it never reads
    ("adv-lib callback from a config", lambda t: "attack=ddn model.norm=L2 ++attack.options.callback=foo",
     "unknown attack option 'callback' (ddn takes"),
    ("ALMA distance marginbench does not measure", lambda t: "attack=alma model.norm=L2 ++attack.options.distance=l1",
     "unknown attack option 'distance' (alma takes"),
    ("ALMA momentum not a number", lambda t: "attack=alma model.norm=L2 ++attack.options.momentum=abc",
     "attack.options.momentum must be a number in [0, 1); got 'abc'"),
    ("ALMA option out of its range", lambda t: "attack=alma model.norm=L2 ++attack.options.alpha=-1",
     "attack.options.alpha must be a number in [0, 1); got -1"),
    ("FAB option the library never reads", lambda t: "++attack.options.loss_fn=xyz", "unknown attack option 'loss_fn'"),
    ("integer too large for a float", lambda t: "++attack.options.seed=1" + "0" * 400,
     "attack.options.seed must be an integer in [0, 9223372036854775808); got 1000"),
    ("library option set by marginbench", lambda t: "++attack.options.n_iter=5", "unknown attack option 'n_iter'"),
    ("adv-lib option typo", lambda t: "attack=fmn ++attack.options.gama_init=0.1", "unknown attack option 'gama_init' (fmn takes"),
    ("wrong type n_samples", lambda t: "n_samples=abc", "n_samples=abc"),
    ("wrong type batch_size", lambda t: "batch_size=1.5", "batch_size"),
    ("eps not a number", lambda t: "eps=abc", "eps='abc' is not a number"),
    ("eps negative", lambda t: "eps=-1", "must be a positive"),
    ("n_samples zero", lambda t: "n_samples=0", "must be positive"),
    ("batch_size zero", lambda t: "batch_size=0", "must be positive"),
    ("shard index out of range", lambda t: "shard.count=2 shard.index=5", "shard.index=5"),
    ("unknown model", lambda t: "model=NOT_A_MODEL", "NOT_A_MODEL"),
    ("missing weights", lambda t: f"model.weights={t / 'nope.pt'}", "does not exist"),
    ("html weights", _html, "weights.pt"),
    ("missing npz", lambda t: f"dataset.path={t / 'missing.npz'}", "missing.npz"),
    ("npz without labels", _npz_without_labels, "nolabels.npz"),
    ("garbage npz", _garbage_npz, "garbage.npz"),
    ("index out of range", lambda t: "n_samples=null indices=[0,999]", "out of range"),
    ("negative index", lambda t: "n_samples=null indices=[-1]", "out of range"),
    ("duplicate indices", lambda t: "n_samples=null indices=[1,1]", "duplicates"),
    ("unknown attack", lambda t: "attack=nope", "attack=nope is not an option"),
    ("unknown norm", lambda t: "model.norm=L3", "L3"),
    ("unknown device", lambda t: "device=tpu", "tpu"),
    ("absent cuda device", lambda t: "device=cuda:7", "cuda"),
    ("5 outputs, num_classes 10", lambda t: "model.factory=tiny_models:five_outputs", "model.num_classes=10"),
    ("NaN outputs", lambda t: "model.factory=tiny_models:nan_outputs", "non-finite"),
    ("softmax last layer", lambda t: "model.factory=tiny_models:softmax_last", "softmax"),
    ("nondeterministic", lambda t: "model.factory=tiny_models:random_outputs", "different outputs"),
    ("zero input gradient", lambda t: "model.factory=tiny_models:detached", "zero gradient"),
    ("no linear head", lambda t: "model.factory=tiny_models:no_linear", "nn.Linear"),
    ("cache_dir is a file", _a_file("paths.cache_dir"), "is a file"),
    ("model_dir is a file", _a_file("paths.model_dir"), "is a file"),
    ("data_dir is a file", _a_file("paths.data_dir"), "is a file"),
    ("run dir is a file", _a_file("hydra.run.dir"), "is a file"),
    ("cache_dir under a file", lambda t: (_a_file("x")(t), f"paths.cache_dir={t / 'in_the_way' / 'cache'}")[1], "is a file"),
]


def run_cli(args: list[str], capfd) -> tuple[int, str, str]:
    try:
        code = cli.main(args)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, expected: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("marginbench: error:"), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(npz, tmp_path, capfd, make, expected):
    cache = tmp_path / "cache"
    override = make(tmp_path)
    args = ["run", *config(npz, cache), f"hydra.run.dir={tmp_path / 'run'}", *override.split(" ")]
    if "paths.cache_dir" in override:
        cache = Path(override.split("=", 1)[1])
    before = files_under(cache)
    assert_one_line_error(*run_cli(args, capfd), expected)
    assert files_under(cache) == before


@pytest.mark.parametrize("problem", ["read-only", "full"])
def test_unusable_cache_dir_is_one_line(npz, tmp_path, capfd, monkeypatch, problem):
    """Root ignores permission bits, so a read-only or full disk is simulated at the calls
    the check makes (os.access, shutil.disk_usage)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if problem == "read-only":
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == cache else real(p, m, **k))
        expected = "no permission to write"
    else:
        real_usage = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1 << 20))
        expected = "no space left"
    args = ["run", *config(npz, cache), f"hydra.run.dir={tmp_path / 'run'}"]
    assert_one_line_error(*run_cli(args, capfd), expected)
    assert files_under(cache) == set()


@pytest.mark.slow
@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_in_a_real_process(npz, tmp_path, make, expected):
    cache = tmp_path / "cache"
    override = make(tmp_path)
    if "paths.cache_dir" in override:
        cache = Path(override.split("=", 1)[1])
    before = files_under(cache)
    result = subprocess.run(
        [sys.executable, "-m", "marginbench.cli", "run", *config(npz, tmp_path / "cache"),
         f"hydra.run.dir={tmp_path / 'run'}", *override.split(" ")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert_one_line_error(result.returncode, result.stdout, result.stderr, expected)
    assert files_under(cache) == before


@pytest.mark.parametrize(("eps", "expected"), [("1e9", "every sample is non-robust"), ("1e-9", "no sample is non-robust")])
def test_eps_leaving_one_class_warns_that_detection_is_undefined(npz, pristine, tmp_path, caplog, eps, expected):
    root, _ = pristine
    cache = tmp_path / "cache"
    shutil.copytree(root / "full", cache)
    marginbench.run(*config(npz, cache, f"eps={eps}"))
    assert expected in caplog.text and "detection metrics" in caplog.text


def test_disk_full_mid_run_is_one_line(npz, tmp_path, capfd, monkeypatch):
    """The disk filling up after the start-up check: the first failing write is one line."""
    import errno

    from marginbench import cache as cache_module

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cache_module, "atomic_write_bytes", full)
    args = ["run", *config(npz, tmp_path / "cache"), f"hydra.run.dir={tmp_path / 'run'}"]
    assert_one_line_error(*run_cli(args, capfd), "No space left on device")
    assert not list((tmp_path / "cache").rglob("*.npz"))


# `marginbench models` / `tables`: a dataset or threat nothing matches printed an empty
# table with exit 0, a file as --out a FileExistsError traceback, an unknown flag two lines
# of argparse's own (round 10)
@pytest.mark.parametrize(("args", "expected"), [
    (["models", "--dataset", "nosuch"], "--dataset nosuch: no registry model is on it; one of: cifar10"),
    (["models", "--threat", "L3"], "--threat L3: one of Linf, L2"),
    (["models", "--foo"], "marginbench models: unrecognized arguments: --foo"),
    (["tables", "--cache-dir", "{cache}", "--out", "{file}"], "is a file, not a directory"),
    (["tables", "--cache-dir", "{cache}", "--out", "{file}/tables"], "is a file, not a directory"),
    (["tables", "--cache-dir", "{file}"], "is a file, not a directory"),
    (["tables", "--cache-dir", "{file}/cache"], "is a file, not a directory"),
    (["tables", "--cache-dir", "{cache}", "--dataset", "nosuch"], "--dataset nosuch: no cached run is on it"),
    (["tables", "--cache-dir", "{cache}", "--reference", "{cache}/nope"], "is not a directory"),
    (["tables", "--cachedir", "x"], "marginbench tables: unrecognized arguments: --cachedir x"),
])
def test_models_and_tables_usage_errors_are_one_line(tmp_path, capfd, args, expected):
    cache, in_the_way = tmp_path / "cache", tmp_path / "a_file"
    (cache / "runs").mkdir(parents=True)
    in_the_way.write_text("")
    args = [a.format(cache=cache, file=in_the_way) for a in args]
    before = files_under(tmp_path)
    assert_one_line_error(*run_cli(args, capfd), expected)
    assert files_under(tmp_path) == before


def test_tables_dataset_check_says_when_records_were_left_out(pristine, tmp_path, capfd):
    root, _ = pristine
    cache = tmp_path / "cache"
    shutil.copytree(root / "full", cache)
    assert cli.main(["tables", "--cache-dir", str(cache), "--out", str(tmp_path / "out"), "--dataset", "NPZ"]) == 0
    (summary,) = (cache / "runs").glob("*/summary.json")
    summary.write_text(summary.read_text().replace('"kendall_tau"', '"kendall_tau_x"'))  # no longer its hash
    capfd.readouterr()
    assert_one_line_error(*run_cli(["tables", "--cache-dir", str(cache), "--dataset", "npz"], capfd),
                          "no cached run is on it (cached runs are on: none); 1 note(s) on records left out")


def test_models_filters_case_insensitively(capfd):
    assert cli.main(["models", "--dataset", "CIFAR10", "--threat", "linf", "--csv"]) == 0
    rows = capfd.readouterr().out.strip().splitlines()[1:]
    assert rows and all(",cifar10,Linf," in row for row in rows)
