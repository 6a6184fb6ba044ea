"""`make bench`'s scripts refuse bad input the way `marginbench` does: one line on stderr,
exit 2, nothing written, and before any estimator runs (a typo in the last estimator, or an
--out that is a directory, used to surface after an hour of attacks, as a traceback)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT / "results" / "oracle"


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench_margins
    import bench_oracle

    return bench_margins, bench_oracle


BASE = ["--model", "fm_madry", "--data", "fashion_mnist", "--n", "4"]
OUT = ["--out", "{tmp}/run/bench.csv"]
# bench_margins arguments ({tmp}: the test's folder) -> a phrase its one-line error must contain
BAD_MARGINS_INPUTS = {
    "typo in the last estimator": ([*BASE, "--estimators", "fab", "nosuch", *OUT], "preset 'nosuch' does not exist"),
    "value of the wrong type": ([*BASE, "--estimators", "fab", "fab:steps=abc", *OUT], "could not be converted"),
    "option out of range": ([*BASE, "--estimators", "fab", "fab_polish:options.polish_rounds=-1", *OUT], "polish_rounds"),
    "override without =": ([*BASE, "--estimators", "fab:steps", *OUT], "is not key=value"),
    "unknown key": ([*BASE, "--estimators", "fab:stepz=3", *OUT], "stepz"),
    "fraction where a count goes": ([*BASE, "--estimators", "fab:steps=2.5", *OUT], "2.5"),
    "--out is a directory": ([*BASE, "--estimators", "fab", "--out", "{tmp}/dir"], "is a directory"),
    "--out under a file": ([*BASE, "--estimators", "fab", "--out", "{tmp}/a_file/b.csv"], "is a file"),
    "missing data file": ([*BASE[:2], "--data", "{tmp}/none.npz", "--estimators", "fab", *OUT], "no such file"),
    "unreadable data file": ([*BASE[:2], "--data", "{tmp}/not_an.npz", "--estimators", "fab", *OUT], "cannot read"),
    "unknown model": (["--model", "nosuchmodel", *BASE[2:], "--estimators", "fab", *OUT], "unknown model"),
    "no samples": ([*BASE[:4], "--n", "0", "--estimators", "fab", *OUT], "--n 0"),
    "empty batches": ([*BASE, "--batch-size", "0", "--estimators", "fab", *OUT], "--batch-size 0"),
    "negative threads": ([*BASE, "--threads", "-1", "--estimators", "fab", *OUT], "--threads -1"),
}


@pytest.mark.parametrize("case", list(BAD_MARGINS_INPUTS))
def test_bench_margins_refuses_bad_input_before_any_attack(scripts, tmp_path, capsys, case):
    bench_margins, _ = scripts
    (tmp_path / "dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "not_an.npz").write_text("x")
    args, phrase = BAD_MARGINS_INPUTS[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(tmp_path.rglob("*"))
    status = bench_margins.run_main(lambda: bench_margins.main(argv), "bench_margins")
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_margins: error: ") and phrase in lines[0], captured.err
    assert "[bench]" not in captured.out  # refused before the model ran, let alone an estimator
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("args,phrase", [
    (["--estimators", "fab", "nosuch"], "preset 'nosuch' does not exist"),
    (["--oracle", str(ORACLE / "mlp_std"), "/nonexistent/net", "--estimators", "fab"], "not an oracle folder"),
    (["--estimators", "fab", "--batch-size", "0"], "--batch-size 0"),
    (["--estimators", "fab", "--out", "{tmp}"], "is a directory"),
])
def test_bench_oracle_refuses_bad_input_before_any_attack(scripts, tmp_path, capsys, args, phrase):
    _, bench_oracle = scripts
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "run" / "oracle.csv")]
    status = bench_oracle.run_main(lambda: bench_oracle.main(argv), "bench_oracle")
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_oracle: error: ") and phrase in lines[0], captured.err
    assert "[oracle]" not in captured.out
    assert list(tmp_path.iterdir()) == []


def test_bench_oracle_scores_an_estimator_against_the_exact_margins(scripts, tmp_path):
    """The good path still writes the table and the per-sample margins, and never below exact."""
    _, bench_oracle = scripts
    out = tmp_path / "oracle.csv"
    assert bench_oracle.main(["--oracle", str(ORACLE / "mlp_std"), "--estimators", "fab:steps=5",
                              "--out", str(out)]) == 0
    table = pd.read_csv(out)
    row = table.set_index("estimator").loc["fab:steps=5"]
    assert row["n_exact"] == 120 and row["share_below_exact"] == 0 and row["n_below_lower_bound_all"] == 0
    assert 0 < row["share_within_1pct"] <= 1 and row["mean_overshoot"] >= 0
    samples = pd.read_csv(tmp_path / "oracle_samples.csv")
    assert len(samples) == 120 and (samples["margin[fab:steps=5]"] >= samples["lower_bound"] - 1e-6).all()


SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py") if p.name not in ("run_folders.py", "one_line_errors.py"))


@pytest.mark.parametrize("script,argv,phrase", [
    ("bench_margins", ["--n", "abc"], "argument --n: invalid int value: 'abc'"),
    ("bench_margins", ["--norm", "L3"], "argument --norm: invalid choice: 'L3'"),
    ("bench_oracle", ["--batch-size", "many"], "argument --batch-size: invalid int value: 'many'"),
    ("bench_oracle", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("check_intervals", [str(ROOT), "lots"], "argument n_resamples: invalid int value: 'lots'"),
    ("check_detector_calibration", ["{tmp}"], "no runs with samples.csv under"),
    ("score_leaderboard", ["{tmp}", "{tmp}/out", "extra"], "unrecognized arguments: extra"),
])
def test_usage_errors_are_one_line(scripts, monkeypatch, tmp_path, capsys, script, argv, phrase):
    """argparse's own errors (a word where a number goes, an unknown flag) leave like the
    scripts' other errors: one line naming the script and pointing at --help, exit 2."""
    import importlib

    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as stopped:
        module.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and phrase in lines[0], lines
    assert lines[0].endswith(f"see `python scripts/{script}.py --help`")


@pytest.mark.slow
def test_every_script_imports_answers_help_and_refuses_a_typo_in_one_line():
    """A script that no longer imports (train_pairs.py did, after an API move) fails here,
    and so does one whose unknown flag prints argparse's usage block; run in parallel,
    each in its own interpreter, as a user starts them."""
    import subprocess
    import sys

    def start(name: str, flag: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(ROOT / "scripts" / name), flag], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    helps = {name: start(name, "--help") for name in SCRIPTS}
    typos = {name: start(name, "--no-such-flag") for name in SCRIPTS}
    failed = {}
    for name, proc in helps.items():
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0 or "usage:" not in out:
            failed[name] = (out + err)[-400:]
    for name, proc in typos.items():  # one line, exit 2, from each script's own interpreter
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 2 or err.strip().splitlines() != [
                f"{name[:-3]}: error: unrecognized arguments: --no-such-flag; see `python scripts/{name} --help`"]:
            failed[f"{name} --no-such-flag"] = (out + err)[-400:]
    assert not failed, failed


@pytest.mark.slow
def test_train_pairs_writes_loadable_checkpoints(scripts, tmp_path):
    """The pair-model trainer runs end to end (tiny budget) and writes checkpoints
    marginbench loads with weights_only, with the class counts of its datasets."""
    import torch
    import train_pairs

    from marginbench.models.local import load_local_checkpoint

    assert train_pairs.main(["--n-train", "64", "--epochs", "1", "--steps", "1", "--out", str(tmp_path)]) == 0
    for code, classes in (("fm_pairs100", 100), ("fm_pairs10", 10)):
        loaded = load_local_checkpoint(tmp_path / f"{code}.pt", torch.device("cpu"))
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        assert model(torch.rand(2, 1, 28, 56)).shape == (2, classes)


def test_bench_oracle_refuses_a_stale_oracle_before_any_attack(scripts, tmp_path, capsys):
    """An oracle whose network no longer predicts what its margins were computed for is
    refused when loaded, not after the other networks' estimators ran."""
    import shutil

    _, bench_oracle = scripts
    stale = tmp_path / "cnn_pgd"
    shutil.copytree(ORACLE / "cnn_pgd", stale)
    margins = pd.read_csv(stale / "margins.csv")
    margins.loc[0, "pred"] = (margins.loc[0, "pred"] + 1) % 10
    margins.to_csv(stale / "margins.csv", index=False)
    out = tmp_path / "run" / "oracle.csv"
    status = bench_oracle.run_main(lambda: bench_oracle.main(
        ["--oracle", str(ORACLE / "mlp_std"), str(stale), "--estimators", "fab", "--out", str(out)]), "bench_oracle")
    captured = capsys.readouterr()
    assert status == 2 and "predictions differ from margins.csv" in captured.err
    assert "[oracle]" not in captured.out and not out.parent.exists()
