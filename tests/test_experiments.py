"""Every experiment preset composes, and every model it sweeps resolves in the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from marginbench import overrides, pipeline, settings
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
        _, settings = pipeline.validate(job)
        assert settings.norm == entry.threat_model


def test_table1_cifar10_is_the_paper_protocol():
    cfg = overrides.compose(["experiment=table1_cifar10"])
    assert cfg.n_samples is None and cfg.attack.name == "fab" and cfg.attack.steps == 100
    assert settings.settings_for(cfg, resolve_model("AD10")).eps == pytest.approx(8 / 255)
    assert OmegaConf.select(cfg, "pseudo.enabled") is False
