"""Command line: ``marginbench run|tables|models|train``.

The only module that knows about argv and Hydra's entry point. ``run`` is a thin shell
around :func:`marginbench.pipeline.run`; the config is composed (and every value of a sweep
checked) before Hydra starts, so a typo fails in one line and nothing is written anywhere.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import logging
import os
import shlex
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marginbench.errors import MarginbenchError
from marginbench.overrides import expand_model_shorthand, validate_overrides
from marginbench.sweeps import run_hydra

if TYPE_CHECKING:
    from marginbench.pipeline import RunResult

log = logging.getLogger("marginbench")


USAGE = """\
marginbench: margin consistency of robust image classifiers (NeurIPS 2024 reproduction)

usage:
  marginbench run [-m] [KEY=VALUE ...]   estimate input margins, compute tau and detection
                                         metrics, write summary.json + samples.csv + figures
  marginbench tables [--cache-dir DIR] [--out DIR]
                                         rebuild Tables 1-4 and Figures 3-11 from cached runs
  marginbench models [--dataset D] [--threat Linf|L2] [--csv]
                                         list the model registry (paper codes, RobustBench ids)
  marginbench train train=RECIPE name=NAME [KEY=VALUE ...]
                                         adversarially train a local model (PGD-AT, TRADES, ...)
  marginbench calibrate model=M eps=E [detector.target_recall=0.95 detector.delta=0.05 ...]
                                         detector.json: logit-margin threshold with a recall guarantee
  marginbench detect detector=PATH [model=M dataset=D n_samples=N]
                                         flags.csv: brittle flag per image, no attack
  marginbench run --help                 every config key and group
  marginbench --version

examples:
  marginbench run                                   # one demo-zoo model on Fashion-MNIST, CPU
  marginbench run model=XU80 dataset=cifar10 n_samples=null attack=fab
  marginbench run -m eps=2/255,4/255,8/255          # eps sweep, margins computed once
  marginbench run -m model=AD10,DI0,XU80 hydra/launcher=slurm
"""


def fail(message: str) -> None:
    """The one way a user error leaves: one line on stderr, exit code 2, no traceback."""
    print(f"marginbench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors leave like every other user error: one line, exit 2
    (argparse's own prints its usage and a line of its own prefix)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(f"{self.prog}: {message}; see `{self.prog} --help`")


def _number(value: float | None) -> str:
    """None (a metric undefined on this run, e.g. tau with every attack failed) is n/a."""
    return "n/a" if value is None else f"{value:.3f}"


def human_summary(result: RunResult) -> str:
    """A run's headline numbers, as printed after each job."""
    s = result.summary
    if result.shard_only:
        return result.message

    def pct(name: str) -> str:
        value = s.get(name)
        return "n/a" if value is None else f"{100 * value:.2f}"

    lines = [
        f"{s['model']} on {s['dataset']} ({s['norm']}, eps={s.get('eps_text', s['eps'])}, n={s['n_samples']}, attack={s['attack']})",
        f"  clean acc {pct('clean_accuracy')}%   robust acc (attack) {pct('robust_accuracy_attack')}%"
        + (f"   published {pct('robust_accuracy_published')}%" if s.get("robust_accuracy_published") is not None else ""),
        f"  Kendall tau {_number(s.get('kendall_tau'))}   AUROC {pct('auroc')}   AUPR {pct('aupr')}   FPR@95 {pct('fpr_at_95')}",
        f"  attack failures {s.get('n_attack_failures', 0)}   non-robust share {pct('nonrobust_share')}%",
    ]
    if s.get("pseudo"):
        p = s["pseudo"]
        lines.append(
            f"  pseudo-margin: tau {_number(p.get('kendall_tau'))}   AUROC {100 * (p.get('auroc') or float('nan')):.2f}"
        )
    if result.run_dir is not None:
        lines.append(f"  results: {result.run_dir}/summary.json, samples.csv")
    return "\n".join(lines)


def hydra_task(cfg: Any) -> dict[str, Any]:
    """One job. In a multirun, a failing job is recorded (status.json) and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from marginbench import pipeline

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    status: dict[str, Any] = {
        "overrides": list(hydra_cfg.overrides.task),
        "run_dir": str(run_dir),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    try:
        result = _run_pipeline(pipeline, cfg, run_dir)
        print(human_summary(result), flush=True)
        status.update(status="done", shard_only=result.shard_only, keys=result.keys)
    except MarginbenchError as error:
        if not multirun:
            fail(str(error))
        log.error("job failed: %s", error)
        status.update(status="failed", error=str(error))
    except Exception as error:  # noqa: BLE001 - a sweep must outlive any one job
        if not multirun:
            raise
        log.error("job failed: %s\n%s", error, traceback.format_exc())
        status.update(status="failed", error=f"{type(error).__name__}: {error}")
    (run_dir / "status.json").write_text(json.dumps(status, indent=2, default=str))
    return status


# A full disk or a permission lost mid-run is the user's to fix, not a bug: one line.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}


def _run_pipeline(pipeline: Any, cfg: Any, run_dir: Path) -> RunResult:
    try:
        return pipeline.run(cfg, run_dir)
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        raise MarginbenchError(
            f"cannot write {error.filename}: {error.strerror}; free space or fix permissions, then rerun "
            "the same command (finished batches are kept)"
        ) from None


class Stopped(KeyboardInterrupt):
    """SIGTERM (SLURM's warning before a time-limit kill) or SIGINT, raised in the main thread
    so that every atomic write in flight cleans up its temporary file on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signum)


def _check_run_dirs(overrides: list[str], multirun: bool) -> None:
    """Hydra creates the run directory before any marginbench code runs, so an unusable one
    must be caught here or it surfaces as Hydra's traceback."""
    from marginbench.settings import check_dir

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [o.partition("=")[2] for o in overrides if o.startswith(f"{key}=")]
    check_dir(key, given[-1] if given else ("multirun" if multirun else "outputs"), write=True)


# --------------------------------------------------------------------------------------------
# Sub-commands
# --------------------------------------------------------------------------------------------


def command_run(args: list[str]) -> int:
    multirun = False
    hydra_flags = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "--package", "-p"}
    if any(a in hydra_flags for a in args):
        return run_hydra(hydra_task, expand_model_shorthand(args), multirun=False)
    overrides = []
    for arg in args:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg.startswith("-"):
            fail(f"unknown option {arg}; options are -m/--multirun and Hydra's --cfg job/--help")
        else:
            overrides.append(arg)
    overrides = expand_model_shorthand(overrides)
    validate_overrides(overrides)
    _check_run_dirs(overrides, multirun)
    return run_hydra(hydra_task, overrides, multirun)


def command_models(args: list[str]) -> int:
    parser = _Parser(prog="marginbench models", description="List the model registry.")
    parser.add_argument("--dataset", help="only this dataset (cifar10, cifar100, imagenet, fashion_mnist)")
    parser.add_argument("--threat", help="only this threat model (Linf, L2)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of an aligned table")
    options = parser.parse_args(args)
    from marginbench.models.registry import list_models

    models = list_models()
    # a dataset or threat no model has printed an empty table and "0 models." (round 10)
    datasets = sorted({m.dataset for m in models})
    if options.dataset and options.dataset.lower() not in datasets:
        fail(f"--dataset {options.dataset}: no registry model is on it; one of: {', '.join(datasets)}")
    if options.threat and options.threat.lower() not in ("linf", "l2"):
        fail(f"--threat {options.threat}: one of Linf, L2")
    rows = [
        m
        for m in models
        if (not options.dataset or m.dataset == options.dataset.lower())
        and (not options.threat or m.threat_model.lower() == options.threat.lower())
    ]
    header = ["code", "robustbench_id", "dataset", "threat", "architecture", "clean_acc", "robust_acc", "source"]
    table = [
        [m.code, m.robustbench_id or "-", m.dataset, m.threat_model, m.architecture,
         "-" if m.clean_acc is None else f"{m.clean_acc:.2f}", "-" if m.robust_acc is None else f"{m.robust_acc:.2f}", m.source]
        for m in rows
    ]
    if options.csv:
        print(",".join(header))
        for row in table:
            print(",".join(row))
        return 0
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"\n{len(table)} models. Accuracies: RobustBench published values (%). Use model=CODE or model=ROBUSTBENCH_ID.")
    return 0


def command_tables(args: list[str]) -> int:
    parser = _Parser(prog="marginbench tables", description="Rebuild tables and figures from cached runs (no model, no GPU).")
    parser.add_argument("--cache-dir", default=os.environ.get("MARGINBENCH_CACHE", ".cache/marginbench"))
    parser.add_argument("--out", default="results", help="output directory (tables/ and figures/ inside)")
    parser.add_argument("--reference", default=None, help="directory of the paper's reference numbers (default: results/reference)")
    parser.add_argument("--force", action="store_true", help="redraw every per-model figure, even those newer than their run")
    parser.add_argument("--dataset", default=None, help="only runs on this dataset")
    options = parser.parse_args(args)
    from marginbench.report import build_all, load_runs

    reference = Path(options.reference) if options.reference else Path(__file__).resolve().parent.parent / "results" / "reference"
    cache_dir = Path(options.cache_dir)
    from marginbench.settings import check_dir

    check_dir("--cache-dir", cache_dir, write=False)  # a file in the way, or no permission to read it
    if not cache_dir.is_dir():
        fail(f"cache directory {cache_dir} does not exist; run `marginbench run ...` first or pass --cache-dir")
    check_dir("--out", options.out, write=True)  # a file in the way: FileExistsError after the work (round 10)
    if options.reference and not reference.is_dir():
        fail(f"--reference {reference} is not a directory; give the folder of the paper's reference CSVs")
    dataset = options.dataset.lower() if options.dataset else None
    select = (lambda record: record.dataset == dataset) if dataset else None
    with warnings.catch_warnings(record=True) as caught:  # stale or corrupt records left out
        warnings.simplefilter("always", UserWarning)
        records = load_runs(cache_dir)  # read once: the dataset check and build_all share them
        cached = sorted({r.dataset for r in records})
        if dataset and dataset not in cached:  # empty tables were written without a word (round 10)
            why = (f"; {len(caught)} note(s) on records left out: see `marginbench tables --cache-dir {cache_dir}`"
                   if caught else "")
            fail(f"--dataset {options.dataset}: no cached run is on it (cached runs are on: "
                 f"{', '.join(cached) or 'none'}){why}")
        written = build_all(cache_dir, Path(options.out), reference, force=options.force, select=select,
                            records=records)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"note: {warning.message}", file=sys.stderr)
    print(f"wrote {len(written)} files under {options.out}")
    for path in written:
        print(f"  {path}")
    return 0


def command_train(args: list[str]) -> int:
    """``marginbench train train=RECIPE name=NAME [FIELD=VALUE ...] [paths.model_dir=DIR]``.

    RECIPE is a file of configs/train/; FIELD is any marginbench.config.TrainConfig field.
    Hydra composes them over that schema (a typo fails in one line, before any work).
    The model lands in <model_dir>/local/NAME.pt and is then usable as ``model=NAME``.
    """
    from marginbench.config import group_options

    if not args or args[0] in ("-h", "--help"):
        recipes = group_options("train")
        print(command_train.__doc__)
        print("recipes: " + ", ".join(recipes))
        return 0
    settings = {"paths.model_dir": os.environ.get("MARGINBENCH_MODEL_DIR", "models_cache"),
                "paths.data_dir": os.environ.get("MARGINBENCH_DATA_DIR", "data"), "device": "auto"}
    rest = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            fail(f"expected KEY=VALUE, got {arg!r}; e.g. marginbench train train=fmnist_cnn_pgd name=my_model")
        if key in settings:
            settings[key] = value
        else:
            rest.append(arg)
    if not any(a.startswith(("train=", "recipe=")) for a in rest):
        fail("say which recipe: train=RECIPE (see `marginbench train --help`)")
    from marginbench.device import resolve_device
    from marginbench.train import run_training

    path = run_training(rest, settings["paths.model_dir"], settings["paths.data_dir"], resolve_device(settings["device"]))
    print(f"saved {path}; evaluate it with: marginbench run model={path.stem} paths.model_dir={settings['paths.model_dir']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if args[0] == "--version":
        from marginbench import __version__

        print(f"marginbench {__version__}")
        return 0
    from marginbench.detect_cli import command_calibrate, command_detect

    commands = {"run": command_run, "models": command_models, "tables": command_tables, "train": command_train,
                "calibrate": command_calibrate, "detect": command_detect}
    if args[0] not in commands:
        guess = difflib.get_close_matches(args[0], list(commands), n=1)
        fail(f"unknown command {args[0]!r}{f' (did you mean {guess[0]!r}?)' if guess else ''}; see `marginbench --help`")
    _quiet_library_warnings()
    previous = _install_stop_handlers()
    try:
        return commands[args[0]](args[1:])
    except MarginbenchError as error:
        fail(str(error))
    except KeyboardInterrupt as stop:
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        cache = [a.partition("=")[2] for a in args if a.startswith("paths.cache_dir=")]
        where = cache[-1] if cache else os.environ.get("MARGINBENCH_CACHE", ".cache/marginbench")
        print(f"marginbench: stopped by {signal.Signals(signum).name}; finished batches are kept in {where}; "
              f"resume with: marginbench {shlex.join(args)}", file=sys.stderr, flush=True)
        return 128 + int(signum)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _install_stop_handlers() -> dict[int, Any]:
    """SIGTERM and SIGINT -> Stopped; returns the handlers to restore (main thread only)."""
    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _raise_stopped)
    except ValueError:  # not the main thread (an embedding application): keep its handlers
        pass
    return previous


def _quiet_library_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    warnings.filterwarnings("ignore", category=FutureWarning, module="robustbench")
    warnings.filterwarnings("ignore", message=".*torch.jit.interface.* is deprecated", category=FutureWarning)


if __name__ == "__main__":
    sys.exit(main())
