"""Command line: ``marginbench run|tables|models|train``.

The only module that knows about argv and Hydra's entry point. ``run`` is a thin shell
around :func:`marginbench.pipeline.run`; the config is composed (and every value of a sweep
checked) before Hydra starts, so a typo fails in one line and nothing is written anywhere.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from marginbench.config import CONFIG_DIR
from marginbench.errors import MarginbenchError

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
  marginbench run --help                 every config key and group
  marginbench --version

examples:
  marginbench run                                   # one demo-zoo model on Fashion-MNIST, CPU
  marginbench run model=XU80 dataset=cifar10 n_samples=null attack=fab
  marginbench run -m eps=2/255,4/255,8/255          # eps sweep, margins computed once
  marginbench run -m model=AD10,DI0,XU80 hydra/launcher=slurm
"""


# --------------------------------------------------------------------------------------------
# Overrides: model shorthand, validation, one-line errors
# --------------------------------------------------------------------------------------------


def model_group_options() -> set[str]:
    return {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")}


def expand_model_shorthand(overrides: Sequence[str]) -> list[str]:
    """``model=XU80`` (or a RobustBench id, or a sweep of them) -> ``model=zoo model.name=XU80``.

    The model config group has two options (zoo, custom); any other value is a model name.
    """
    result: list[str] = []
    options = model_group_options()
    for override in overrides:
        match = re.fullmatch(r"model=(.+)", override)
        if match and match.group(1) not in options:
            result += ["model=zoo", f"model.name={match.group(1)}"]
        else:
            result.append(override)
    return result


def sweep_variants(overrides: Sequence[str]) -> list[list[str]]:
    """Single-run override lists covering every value of every sweep (for validation)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    base: list[str] = []
    sweeps: list[tuple[int, list[str]]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            sweeps.append((len(base), [f"{key}={value}" for value in values]))
            base.append(sweeps[-1][1][0])
        else:
            base.append(override.input_line or f"{key}={override.get_value_element_as_str()}")
    variants = [list(base)]
    for position, values in sweeps:
        for value in values[1:]:
            variant = list(base)
            variant[position] = value
            variants.append(variant)
    return variants


def compose(overrides: Sequence[str], return_hydra_config: bool = False) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from marginbench.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def explain_compose_error(error: BaseException) -> str:
    """Hydra/OmegaConf's multi-line composition errors, as one actionable line."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 6:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain)
    unknown = re.search(r"Key '([^']+)' (?:is not in struct|not in)", text) and re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        from omegaconf import OmegaConf

        from marginbench.config import MarginbenchConfig

        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.structured(MarginbenchConfig)
        known = list(OmegaConf.select(node, parent).keys()) if parent and OmegaConf.select(node, parent) is not None else list(node.keys())
        guess = difflib.get_close_matches(leaf, known, n=1)
        hint = f" (did you mean '{f'{parent}.' if parent else ''}{guess[0]}'?)" if guess else ""
        return f"unknown config key '{key}'{hint}; run `marginbench run --help` for the keys"
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        available = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")) if (CONFIG_DIR / group).is_dir() else []
        return f"{group}={option} is not an option; choose one of: {', '.join(available) or '(none)'}"
    converted = re.search(r"Value '([^']*)' of type '(\w+)' could not be converted to (\w+).*?full_key: (\S+)", text, re.S)
    if converted:
        value, _, target, key = converted.groups()
        return f"{key}={value} is not a valid {target.lower()}; fix the value of {key}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"invalid configuration: {first}"


def validate_overrides(overrides: Sequence[str]) -> None:
    """Compose every sweep variant and run the cheap checks; raise MarginbenchError."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from marginbench import pipeline

    try:
        variants = sweep_variants(overrides)
    except HydraException as error:
        raise MarginbenchError(f"cannot parse the overrides: {str(error).splitlines()[0]}") from None
    for variant in variants:
        config_overrides = [o for o in variant if not o.lstrip("+~").startswith("hydra")]
        try:
            cfg = compose(config_overrides)
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            raise MarginbenchError(explain_compose_error(error)) from None
        pipeline.validate(cfg)


# --------------------------------------------------------------------------------------------
# The Hydra task and the multirun report
# --------------------------------------------------------------------------------------------

_SWEEP_FAILURES: list[dict[str, Any]] = []


def hydra_task(cfg: Any) -> dict[str, Any]:
    """One job. In a multirun, a failing job is recorded (status.json) and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from marginbench import pipeline

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    overrides = list(hydra_cfg.overrides.task)
    status: dict[str, Any] = {
        "overrides": overrides,
        "run_dir": str(run_dir),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    try:
        result = pipeline.run(cfg, run_dir)
        print(pipeline.human_summary(result), flush=True)
        status.update(status="done", shard_only=result.shard_only, keys=result.keys)
    except MarginbenchError as error:
        if not multirun:
            _fail(str(error))
        log.error("job failed: %s", error)
        status.update(status="failed", error=str(error))
    except Exception as error:  # noqa: BLE001 - a sweep must outlive any one job
        if not multirun:
            raise
        log.error("job failed: %s\n%s", error, traceback.format_exc())
        status.update(status="failed", error=f"{type(error).__name__}: {error}")
    (run_dir / "status.json").write_text(json.dumps(status, indent=2, default=str))
    return status


def _hydra_callback_base() -> type:
    from hydra.experimental.callback import Callback

    return Callback


class SweepReport(_hydra_callback_base()):  # type: ignore[misc]
    """Hydra callback: after a multirun, print which jobs failed (read from status.json)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = []
        for path in sorted(sweep_dir.rglob("status.json")):
            try:
                statuses.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        failed = [s for s in statuses if s.get("status") != "done"]
        _SWEEP_FAILURES.extend(failed)
        print(f"\nsweep finished: {len(statuses)} jobs, {len(statuses) - len(failed)} done, {len(failed)} failed ({sweep_dir})")
        for job in failed:
            print(f"  FAILED {' '.join(job.get('overrides', []))}: {job.get('error')}")
        if failed:
            print("  rerun the same command: finished jobs are reused from the cache, only failed ones run again")


def run_hydra(overrides: list[str], multirun: bool) -> int:
    import hydra

    from marginbench.config import register_configs

    register_configs()
    argv = [sys.argv[0], *(["--multirun"] if multirun else []), *overrides]
    saved = sys.argv
    sys.argv = argv
    try:
        main = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(hydra_task)
        main()
    finally:
        sys.argv = saved
    # the callback lives in the module imported as "marginbench.cli", which is not this one
    # when run as `python -m marginbench.cli`
    from importlib import import_module

    return 1 if import_module("marginbench.cli")._SWEEP_FAILURES else 0


def _fail(message: str) -> None:
    print(f"marginbench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------------------------
# Sub-commands
# --------------------------------------------------------------------------------------------


def command_run(args: list[str]) -> int:
    multirun = False
    hydra_flags = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "--package", "-p"}
    if any(a in hydra_flags for a in args):
        return run_hydra(expand_model_shorthand(args), multirun=False)
    overrides = []
    for arg in args:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg.startswith("-"):
            _fail(f"unknown option {arg}; options are -m/--multirun and Hydra's --cfg job/--help")
        else:
            overrides.append(arg)
    overrides = expand_model_shorthand(overrides)
    validate_overrides(overrides)
    return run_hydra(overrides, multirun)


def command_models(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="marginbench models", description="List the model registry.")
    parser.add_argument("--dataset", help="only this dataset (cifar10, cifar100, imagenet, fashion_mnist)")
    parser.add_argument("--threat", help="only this threat model (Linf, L2)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of an aligned table")
    options = parser.parse_args(args)
    from marginbench.models.registry import list_models

    rows = [
        m
        for m in list_models()
        if (not options.dataset or m.dataset == options.dataset) and (not options.threat or m.threat_model.lower() == options.threat.lower())
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
    parser = argparse.ArgumentParser(prog="marginbench tables", description="Rebuild tables and figures from cached runs (no model, no GPU).")
    parser.add_argument("--cache-dir", default=os.environ.get("MARGINBENCH_CACHE", ".cache/marginbench"))
    parser.add_argument("--out", default="results", help="output directory (tables/ and figures/ inside)")
    parser.add_argument("--reference", default=None, help="directory of the paper's reference numbers (default: results/reference)")
    parser.add_argument("--force", action="store_true", help="redraw every per-model figure, even those newer than their run")
    parser.add_argument("--dataset", default=None, help="only runs on this dataset")
    options = parser.parse_args(args)
    from marginbench.report import build_all

    reference = Path(options.reference) if options.reference else Path(__file__).resolve().parent.parent / "results" / "reference"
    cache_dir = Path(options.cache_dir)
    if not cache_dir.is_dir():
        _fail(f"cache directory {cache_dir} does not exist; run `marginbench run ...` first or pass --cache-dir")
    select = (lambda record: record.dataset == options.dataset) if options.dataset else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        written = build_all(cache_dir, Path(options.out), reference, force=options.force, select=select)
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
            _fail(f"expected KEY=VALUE, got {arg!r}; e.g. marginbench train train=fmnist_cnn_pgd name=my_model")
        if key in settings:
            settings[key] = value
        else:
            rest.append(arg)
    if not any(a.startswith(("train=", "recipe=")) for a in rest):
        _fail("say which recipe: train=RECIPE (see `marginbench train --help`)")
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
    commands = {"run": command_run, "models": command_models, "tables": command_tables, "train": command_train}
    if args[0] not in commands:
        guess = difflib.get_close_matches(args[0], list(commands), n=1)
        _fail(f"unknown command {args[0]!r}{f' (did you mean {guess[0]!r}?)' if guess else ''}; see `marginbench --help`")
    _quiet_library_warnings()
    try:
        return commands[args[0]](args[1:])
    except MarginbenchError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        print("marginbench: interrupted; finished batches are cached, rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def _quiet_library_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    warnings.filterwarnings("ignore", category=FutureWarning, module="robustbench")
    warnings.filterwarnings("ignore", message=".*torch.jit.interface.* is deprecated", category=FutureWarning)


if __name__ == "__main__":
    sys.exit(main())
