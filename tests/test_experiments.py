"""Every experiment preset composes, every model it sweeps resolves in the registry, and
every preset runs end to end in debug=tiny (its first model; the slow test: every model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

import marginbench
from marginbench import overrides, pipeline, settings
from marginbench.config import DatasetConfig
from marginbench.data import load_eval_set
from marginbench.errors import MarginbenchError
from marginbench.models.registry import resolve_model

EXPERIMENTS = sorted(p.stem for p in (overrides.CONFIG_DIR / "experiment").glob("*.yaml"))


def test_the_paper_tables_have_presets():
    assert {"table1_cifar10", "table1_cifar100", "table2", "table5_l2", "demo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_its_sweep_resolves(name):
    cfg = overrides.compose([f"experiment={name}"], return_hydra_config=True)
    assert cfg.experiment == name
    swept = str(cfg.hydra.sweeper.params["model.name"]).split(",")
    dataset = cfg.dataset.name
    for model in swept:
        entry = resolve_model(model.strip(), model_dir=Path("models_cache"))
        assert dataset in ("auto", entry.dataset), (model, entry.dataset, dataset)
        job = overrides.compose([f"experiment={name}", f"model.name={model.strip()}"])
        _, run_settings = pipeline.validate(job)
        assert run_settings.norm == entry.threat_model


def test_table1_cifar10_is_the_paper_protocol():
    cfg = overrides.compose(["experiment=table1_cifar10"])
    assert cfg.n_samples is None and cfg.attack.name == "fab" and cfg.attack.steps == 100
    assert settings.settings_for(cfg, resolve_model("AD10")).eps == pytest.approx(8 / 255)
    assert OmegaConf.select(cfg, "pseudo.enabled") is False


# --------------------------------------------------------------------------------------------
# Every preset end to end in debug=tiny (lightning-hydra-template's habit): the real config,
# the real pipeline.run, offline data and checkpoints, seconds on CPU
# --------------------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
DEBUG_TINY_SAMPLES = 4  # configs/debug/tiny.yaml n_samples


def swept_models(name: str) -> list[str]:
    cfg = overrides.compose([f"experiment={name}"], return_hydra_config=True)
    return [m.strip() for m in str(cfg.hydra.sweeper.params["model.name"]).split(",")]


def _offline_npz(folder: Path, dataset: str, shared_cifar10: Path) -> Path:
    """The test data of ``dataset`` as an npz: the real first 100 CIFAR-10 test images, or
    random CIFAR-shaped images with labels < 100 for CIFAR-100. The same images stand in for
    the held-out training split (train_images) that the pseudo-margin (table2) draws from."""
    path = folder / f"{dataset}.npz"
    if not path.is_file():
        if dataset == "cifar10":
            with np.load(shared_cifar10) as real:
                images, labels = real["images"], real["labels"]
        else:
            rng = np.random.default_rng(100)
            images = rng.integers(0, 256, size=(100, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 100, size=100).astype(np.int64)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=images, labels=labels, train_images=images, train_labels=labels)
    return path


def run_preset_tiny(name: str, model: str, work: Path, model_dir: Path, shared_cifar10: Path,
                    *extra: str, cache_dir: Path | None = None) -> pipeline.RunResult:
    """``marginbench run experiment=NAME debug=tiny model.name=MODEL [EXTRA...]`` through the
    real pipeline.run into ``work/run``, offline: a RobustBench model gets a random-weight
    checkpoint of its real architecture in ``model_dir``; CIFAR comes from an npz, Fashion-MNIST
    from its local copy."""
    from robustbench_fixtures import write_random_checkpoint

    entry = resolve_model(model, model_dir=model_dir)
    if entry.source == "robustbench":
        write_random_checkpoint(entry, model_dir)
    overrides = [f"experiment={name}", "debug=tiny", f"model.name={model}",
                 f"paths.cache_dir={cache_dir or work / 'cache'}", f"paths.model_dir={model_dir}", "dataset.download=false"]
    if entry.dataset in ("cifar10", "cifar100"):
        npz = _offline_npz(model_dir.parent / "data", entry.dataset, shared_cifar10)
        overrides += ["dataset=npz", f"dataset.path={npz}"]
    elif entry.dataset == "fashion_mnist":
        try:  # where marginbench looks: paths.data_dir, then Debian's dataset-fashion-mnist
            load_eval_set(DatasetConfig(name="fashion_mnist", download=False), marginbench.compose().paths.data_dir, 1, None)
        except MarginbenchError as error:
            pytest.skip(f"{error} (make test installs it)")
    cfg = marginbench.compose(*overrides, *extra)
    assert cfg.experiment == name and cfg.debug == "tiny"
    return pipeline.run(cfg, work / "run")


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> Path:
    """One model_dir and one cache for the module: table2 reuses table1_cifar10's DI0
    checkpoint and test-set margins (as a sweep would), and runs its pseudo-margin stage."""
    return tmp_path_factory.mktemp("offline")


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def check_tiny_run(result: pipeline.RunResult, run_dir: Path, model: str, n: int = DEBUG_TINY_SAMPLES) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    samples = pd.read_csv(run_dir / "samples.csv")
    assert len(samples) == summary["n_samples"] == n
    assert samples["index"].tolist() == list(range(n))
    assert summary["model"] == model and summary == result.summary
    # tau is nan (null in summary.json) only where metrics.kendall_tau says so: one side
    # constant, e.g. every attack failed (all input margins +inf: 3 FAB steps break neither
    # sample of the random-weight HE0/HE1 in the slow test)
    tau = summary["kendall_tau"]
    if tau is None or not np.isfinite(tau):
        assert samples["input_margin"].nunique() == 1 or samples["logit_margin"].nunique() == 1, samples


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_end_to_end_in_debug_tiny(name, tmp_path, offline, cifar10_first100_npz):
    """The preset's first model (all are small: WRN-28-4, PreActResNet-18, the demo CNN)."""
    model = swept_models(name)[0]
    result = run_preset_tiny(name, model, tmp_path, offline / "models", cifar10_first100_npz, cache_dir=offline / "cache")
    check_tiny_run(result, tmp_path / "run", model)
    if OmegaConf.select(overrides.compose([f"experiment={name}"]), "pseudo.enabled"):
        assert result.summary["pseudo"]["n_train"] == 12  # debug/tiny.yaml pseudo.n_train
        assert "pseudo_margin" in result.samples.columns


# Paper models that do not run through the pipeline: code -> reason, each marked xfail(strict)
# below. Empty: all 40 models of the three sweeps ran (2 CPU cores, 14.7 min in all). With
# random weights, FAB broke neither sample of HE0 and HE1 (tau null: a recorded outcome, not
# a failure). See the test's docstring for what random-weight checkpoints cannot check.
KNOWN_FAILURES: dict[str, str] = {}


def _paper_sweep() -> list:
    params = []
    for name in ("table1_cifar10", "table1_cifar100", "table5_l2"):
        preset = yaml.safe_load((overrides.CONFIG_DIR / "experiment" / f"{name}.yaml").read_text())
        for model in str(preset["hydra"]["sweeper"]["params"]["model.name"]).split(","):
            model = model.strip()
            marks = [pytest.mark.xfail(reason=KNOWN_FAILURES[model], strict=True)] if model in KNOWN_FAILURES else []
            params.append(pytest.param(name, model, id=f"{name}-{model}", marks=marks))
    return params


@pytest.mark.slow
@pytest.mark.parametrize(("name", "model"), _paper_sweep())
def test_every_paper_model_runs_in_debug_tiny(name, model, tmp_path, cifar10_first100_npz):
    """Every model of the Table 1 and Table 5 sweeps, through the helper above, on 2 samples
    (debug=tiny n_samples=2: 4 would double the ~70 s each CIFAR-100 WRN spends on FAB's
    100-class Jacobian on 2 CPU cores). The checkpoints are RobustBench's architectures with
    random weights, saved as their own state dicts: this checks that every id builds, loads
    offline, splits into features and head, and goes through every stage; it cannot check
    the key layout of the published files."""
    models = tmp_path / "models"
    try:
        result = run_preset_tiny(name, model, tmp_path, models, cifar10_first100_npz, "n_samples=2")
        check_tiny_run(result, tmp_path / "run", model, n=2)
    finally:  # up to 1 GB per checkpoint (GO02): do not keep 40 of them in the temp dir
        shutil.rmtree(models, ignore_errors=True)
