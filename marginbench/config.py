"""Typed config schemas, registered in Hydra's ConfigStore.

Every YAML file under ``configs/`` is validated against these dataclasses, so a typo in a
key (``modle=...``) or a wrong type (``n_samples=abc``) fails at compose time, before any
work starts. Values that have a free-form syntax (``eps=8/255``) are plain strings here and
parsed by :func:`parse_eps`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from marginbench.errors import MarginbenchError

# The Hydra config tree (configs/ at the repository root; MARGINBENCH_CONFIG_DIR overrides).
CONFIG_DIR = Path(os.environ.get("MARGINBENCH_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs"))


@dataclass
class ModelConfig:
    # "zoo": a registry entry (paper code, RobustBench id, built-in or demo-zoo model) by name.
    # "custom": the user's own factory.
    kind: str = "zoo"
    name: str = "fm_standard"
    # custom models: "package.module:function" returning an nn.Module (logits, inputs in [0,1])
    factory: Optional[str] = None
    weights: Optional[str] = None
    norm: str = "Linf"  # threat model of a custom model: Linf | L2
    num_classes: int = 10
    dataset: Optional[str] = None  # the dataset a custom model expects (checked against data)


@dataclass
class DatasetConfig:
    # auto: the dataset the model was trained on (from the registry)
    name: str = "auto"  # auto | cifar10 | cifar100 | fashion_mnist | imagenet | npz
    path: Optional[str] = None  # npz file or ImageNet validation folder
    download: bool = True  # allow torchvision downloads into paths.data_dir


@dataclass
class AttackConfig:
    # A single estimator name (fab, fmn, apgd_bisect, ddn, alma, fab_targeted ...) or
    # "ensemble" with ``members``.
    name: str = "fab"
    members: list[str] = field(default_factory=list)
    steps: int = 100
    restarts: int = 1
    refine: bool = False
    # estimator-specific hyper-parameters, passed through to the library call
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PseudoConfig:
    enabled: bool = False
    variant: str = "code"  # code: 10 logits -> sqrt(margin) (authors' code); text: features
    n_train: int = 5000  # held-out training images whose margins are estimated
    epochs: int = 500
    lr: float = 1e-4
    hidden: int = 512
    val_fraction: float = 0.2
    split_seed: int = 0


@dataclass
class PathsConfig:
    cache_dir: str = "${oc.env:MARGINBENCH_CACHE,.cache/marginbench}"
    model_dir: str = "${oc.env:MARGINBENCH_MODEL_DIR,models_cache}"
    data_dir: str = "${oc.env:MARGINBENCH_DATA_DIR,data}"
    results_dir: str = "results"


@dataclass
class ShardConfig:
    count: int = 1
    index: Optional[int] = None  # None: assemble all shards (or compute all when count == 1)


@dataclass
class MarginbenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    experiment: Optional[str] = None  # name of the experiment preset, for the record
    debug: Optional[str] = None  # configs/debug preset (debug=tiny), for the record
    eps: str = "auto"  # "8/255", "0.0313", or auto (8/255 Linf, 0.5 L2, 0.1 Fashion-MNIST)
    eps_list: list[str] = field(default_factory=lambda: ["2/255", "4/255", "8/255", "12/255", "16/255", "32/255"])
    n_samples: Optional[int] = 1000  # first n test samples; null = the whole test set
    indices: Optional[list[int]] = None  # explicit test-set indices (overrides n_samples)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 250
    plots: bool = True
    progress: bool = True


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="marginbench_schema", node=MarginbenchConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="attack", name="attack_schema", node=AttackConfig)
    cs.store(group="pseudo", name="pseudo_schema", node=PseudoConfig)
    cs.store(group="paths", name="paths_schema", node=PathsConfig)


def attack_label(attack: Any) -> str:
    """The configs/attack preset this attack config equals (e.g. fab_polish), else its
    estimator name with "(modified)": summaries say which estimator really ran."""
    import yaml
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(attack, resolve=True) if OmegaConf.is_config(attack) else dict(attack)
    defaults = {k: v for k, v in asdict(AttackConfig()).items() if k != "name"}
    for path in sorted((CONFIG_DIR / "attack").glob("*.yaml")):
        preset = {**defaults, **(yaml.safe_load(path.read_text()) or {})}
        if all(preset.get(k) == values.get(k) for k in ("name", "members", "steps", "restarts", "refine")) and (
            (preset.get("options") or {}) == (values.get("options") or {})
        ):
            return path.stem
    return f"{values.get('name')} (modified)"


def parse_eps(value: str | float | int) -> float:
    """Parse ``8/255``, ``0.0313725`` or ``4`` into a float; reject anything else."""
    text = str(value).strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            eps = float(num) / float(den)
        else:
            eps = float(text)
    except (ValueError, ZeroDivisionError):
        raise MarginbenchError(
            f"eps={text!r} is not a number; write it like eps=8/255 or eps=0.0314"
        ) from None
    if not eps > 0 or eps == float("inf"):
        raise MarginbenchError(f"eps={text!r} must be a positive finite number, e.g. eps=8/255")
    return eps
