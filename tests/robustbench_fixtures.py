"""Offline stand-ins for RobustBench checkpoints: the model's real architecture with random
weights, written where marginbench looks for the published file
(``<model_dir>/<dataset>/<threat>/<id>.pt``), so loading it needs no download.

A plain module (not a fixture) so that tests and scripts can reuse it, e.g. to push every
paper model through the pipeline::

    from robustbench_fixtures import write_random_checkpoint
    write_random_checkpoint("DI0", tmp_path / "models")   # then paths.model_dir=tmp_path/models

The architecture comes from RobustBench itself (its ``model_dicts`` entry, or the timm model
RobustBench's ``load_model`` would pick), never from marginbench's loader, so a loader that
builds the wrong network for an id fails on these files as it would on the published ones.
The file layout imitates the published one: a plain state dict (ensembles: one file per
member, ``<id>.pt_m<i>.pt``; timm models: the inner network without the normalisation
wrapper). Numbers computed with these weights mean nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from marginbench.models.loading import import_robustbench, robustbench_model_dicts
from marginbench.models.registry import ModelEntry, checkpoint_path, resolve_model


def _timm_name(entry: ModelEntry) -> str:
    # RobustBench's own rule (robustbench.utils.load_model): a timm model of this name wins
    # over the model_dicts entry.
    return f"{entry.robustbench_id.lower().replace('-', '_')}_{entry.dataset}_{entry.threat_model.lower()}"


def _is_timm(entry: ModelEntry) -> bool:
    import timm

    return bool(timm.is_model(_timm_name(entry)))


def build_architecture(entry: ModelEntry | str, seed: int = 0) -> nn.Module:
    """The RobustBench architecture of ``entry`` (a registry entry or name), seeded random
    weights, eval mode."""
    entry = resolve_model(entry) if isinstance(entry, str) else entry
    if entry.source != "robustbench":
        raise ValueError(f"{entry.code} is not a RobustBench model (source {entry.source})")
    import_robustbench()
    import timm
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if _is_timm(entry):
            net = timm.create_model(_timm_name(entry), num_classes=entry.num_classes, pretrained=False)
        else:
            spec = robustbench_model_dicts()[BenchmarkDataset(entry.dataset)][ThreatModel(entry.threat_model)]
            net = spec[entry.robustbench_id]["model"]()
    return net.eval()


def write_random_checkpoint(entry: ModelEntry | str, model_dir: Path | str, seed: int = 0) -> list[Path]:
    """Write a random-weight checkpoint of ``entry``'s real architecture into ``model_dir``
    in RobustBench's layout; returns the files written. Files already there are kept (a
    session-wide model_dir is filled once)."""
    entry = resolve_model(entry) if isinstance(entry, str) else entry
    path = checkpoint_path(entry, model_dir)
    assert path is not None
    import_robustbench()  # before any robustbench import: it needs the `autoattack` alias
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    spec = robustbench_model_dicts()[BenchmarkDataset(entry.dataset)][ThreatModel(entry.threat_model)].get(
        entry.robustbench_id, {}
    )
    net = build_architecture(entry, seed)
    if isinstance(spec.get("gdrive_id"), list) and hasattr(net, "models"):  # ensemble
        states = {Path(f"{path}_m{i}.pt"): member.state_dict() for i, member in enumerate(net.models)}
    elif _is_timm(entry) and isinstance(net, nn.Sequential) and hasattr(net, "model"):
        # RobustBench's timm models are Sequential(normalize, model); the file is the inner net
        states = {path: net.model.state_dict()}
    else:
        states = {path: net.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    for file, state in states.items():
        if not file.is_file():
            tmp = file.with_name(f".{file.name}.tmp")
            torch.save(state, tmp)
            tmp.replace(file)
    return list(states)


__all__ = ["build_architecture", "write_random_checkpoint"]
