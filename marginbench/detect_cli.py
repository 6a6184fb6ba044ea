"""``marginbench calibrate`` and ``marginbench detect``: argv -> configs -> marginbench.deploy.

Both take KEY=VALUE overrides composed by Hydra exactly like ``marginbench run`` (model=...,
dataset=..., n_samples=..., eps=..., attack=...), validated before any work. ``detector.*``
keys (calibrate) are typed by :class:`~marginbench.config.DetectorConfig` and composed apart
from the run config, so they never reach a cache key; ``detector=PATH`` (detect) names a
detector.json. ``hydra.run.dir=DIR`` chooses the output directory.
"""

from __future__ import annotations

import difflib
import math
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from marginbench.config import DetectorConfig
from marginbench.errors import MarginbenchError

CALIBRATE_HELP = """\
usage: marginbench calibrate [KEY=VALUE ...] [detector.KEY=VALUE ...] [hydra.run.dir=DIR]

Runs the margin pipeline on the evaluated samples (cached like `marginbench run`), draws a
seeded calibration set and a disjoint held-out set, and writes DIR/detector.json: flag an input
as brittle when its logit margin <= threshold; with probability >= 1-delta over the calibration
draw the flag catches >= target_recall of the non-robust inputs (input margin <= eps).
detector keys (defaults): target_recall=0.95 delta=0.05 n_calibration=500 n_test=500
score=logit_margin seed=0
example: marginbench calibrate model=fm_madry eps=0.1 n_samples=1000 detector.n_calibration=500"""

DETECT_HELP = """\
usage: marginbench detect detector=PATH [model=...] [dataset=...] [n_samples=N] [hydra.run.dir=DIR]

Writes DIR/flags.csv (index, pred, logit_margin, brittle) for the images, one forward pass
each, no attack; the model defaults to the one named in detector.json and must have exactly
its weights."""


def _split(args: list[str], prefix: str) -> tuple[list[str], list[str], str | None]:
    """(run overrides, overrides starting with ``prefix``, hydra.run.dir or None)."""
    if any(a in ("-m", "--multirun") for a in args):
        raise MarginbenchError("calibrate/detect take no sweeps (-m); run one command per model")
    run, own, run_dir = [], [], None
    for arg in args:
        if arg.startswith("-"):
            raise MarginbenchError(f"unknown option {arg}; give KEY=VALUE overrides (--help lists them)")
        if "=" not in arg:
            raise MarginbenchError(f"expected KEY=VALUE, got {arg!r}")
        if arg.startswith("hydra.run.dir="):
            run_dir = arg.split("=", 1)[1]
        elif arg.startswith(prefix):
            own.append(arg)
        else:
            run.append(arg)
    return run, own, run_dir


def compose_run(overrides: list[str]) -> DictConfig:
    """The run config ``marginbench run`` would build from these overrides (validated)."""
    from marginbench.overrides import compose, expand_model_shorthand, validate_overrides

    overrides = expand_model_shorthand(overrides)
    validate_overrides(overrides)
    return compose(overrides)


def compose_detector(overrides: list[str]) -> DictConfig:
    """DetectorConfig defaults + ``detector.KEY=VALUE`` overrides, type-checked, one-line errors."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    node = OmegaConf.structured(DetectorConfig)
    for item in overrides:
        key, value = item.split("=", 1)
        leaf = key.removeprefix("detector.")
        if leaf not in node:
            guess = difflib.get_close_matches(leaf, list(node.keys()), n=1)
            hint = f" (did you mean 'detector.{guess[0]}'?)" if guess else ""
            raise MarginbenchError(f"unknown config key '{key}'{hint}; see `marginbench calibrate --help`")
        try:
            node = OmegaConf.merge(node, OmegaConf.from_dotlist([f"{leaf}={value}"]))
        except (ValidationError, ConfigKeyError):
            raise MarginbenchError(f"{key}={value} is not a valid {type(getattr(node, leaf)).__name__}; fix it") from None
    return node


def _log_to_stderr() -> None:
    # outside Hydra nothing configures logging; the user must see "margins: cached (...)"
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")


def _run_dir(run_dir: str | None, cfg: DictConfig, command: str) -> Path:
    """The output directory; a file in the way (or under it) is refused now, before any
    model, data or attack (round 10: a traceback after the attacks)."""
    if run_dir:
        path = Path(run_dir)
    else:
        name = cfg.model.name if cfg.model.kind == "zoo" else "custom"
        path = Path("outputs") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{name}-{command}"
    from marginbench.settings import check_dir

    check_dir("hydra.run.dir", path, write=True)
    return path


def command_calibrate(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(CALIBRATE_HELP)
        return 0
    from marginbench import deploy

    run_overrides, det_overrides, run_dir = _split(args, "detector.")
    det = compose_detector(det_overrides)
    cfg = compose_run(run_overrides)
    deploy.check_detector_config(det, cfg)  # before the pipeline does any work
    out = _run_dir(run_dir, cfg, "calibrate")
    _log_to_stderr()
    result = deploy.calibrate(cfg, det, out)
    spec, test = result.spec, result.spec.test
    print(f"{result.path}: brittle when logit margin <= {spec.threshold:.4g} (eps={spec.eps:g}, {spec.norm}); "
          f"recall >= {spec.target_recall} with probability >= {1 - spec.delta:g} "
          f"({spec.n_calibration_nonrobust} non-robust of {spec.n_calibration} calibration samples)")
    print(f"  held-out: {test['n']} samples, {test['n_nonrobust']} non-robust: "
          f"recall {100 * test['recall']:.2f}%  FPR {100 * test['fpr']:.2f}%")
    return 0


def command_detect(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(DETECT_HELP)
        return 0
    from marginbench import deploy
    from marginbench.brittle import DetectorSpec

    run_overrides, det_args, run_dir = _split(args, "detector=")
    if len(det_args) != 1:
        raise MarginbenchError("say which detector, once: detector=PATH/detector.json")
    spec = DetectorSpec.load(Path(det_args[0].split("=", 1)[1]))
    for override in run_overrides:
        key, _, value = override.partition("=")
        # the threshold's guarantee holds at the eps it was calibrated for, and only there:
        # another eps was silently ignored (round 10)
        if key.lstrip("+") == "eps" and not _same_eps(value, spec.eps):
            raise MarginbenchError(f"eps={value}: detect flags at the detector's own eps ({spec.eps:g}); drop "
                                   "eps=..., or calibrate a detector at that eps")
    if not any(o.startswith("model") for o in run_overrides):
        if not spec.model:
            raise MarginbenchError("the detector file names no model; add model=NAME")
        run_overrides = _model_overrides(spec.model) + run_overrides
    cfg = compose_run(run_overrides)
    path, flags = deploy.run_detect(cfg, spec, _run_dir(run_dir, cfg, "detect"))
    print(f"{path}: {int(flags['brittle'].sum())} of {len(flags)} inputs flagged brittle "
          f"(logit margin <= {spec.threshold:.4g})")
    return 0


def _same_eps(text: str, eps: float) -> bool:
    """``text`` (eps=8/255, 0.031...) is ``eps``; anything else (auto, a typo) is not."""
    from marginbench.config import parse_eps

    try:
        return math.isclose(parse_eps(text), eps, rel_tol=1e-9)
    except MarginbenchError:
        return False


def _model_overrides(model: dict) -> list[str]:
    """The detector's model config as overrides (so it is composed and checked like model=...)."""
    items = [f"model={model.get('kind', 'zoo')}"]
    items += [f"model.{k}={v}" for k, v in model.items() if k != "kind" and v is not None]
    return items
