"""Typed config schemas, registered in Hydra's ConfigStore.

Every YAML file under ``configs/`` is validated against these dataclasses, so a typo in a
key (``modle=...``) or a wrong type (``n_samples=abc``) fails at compose time, before any
work starts. Values that have a free-form syntax (``eps=8/255``) are plain strings here and
parsed by :func:`parse_eps`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from marginbench.errors import MarginbenchError
from marginbench.models.registry import NUM_CLASSES

# The Hydra config tree (configs/ at the repository root; MARGINBENCH_CONFIG_DIR overrides).
CONFIG_DIR = Path(os.environ.get("MARGINBENCH_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs"))
# The primary config of `marginbench train` (in the ConfigStore; recipes: CONFIG_DIR/train/).
TRAIN_CONFIG_NAME = "marginbench_train"
LOSSES = ("standard", "pgd", "trades", "mart", "alp", "clp")
TRAIN_DATASETS = ("fashion_mnist", "cifar10", "cifar100")  # what train.load_split can read


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
    # attack families (configs/attack presets) tried in order on the samples left
    # unbroken (margins/escalate.py); [] = none, and then not part of the margin key
    escalate: list[str] = field(default_factory=list)


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


@dataclass
class TrainConfig:
    """One training run (``marginbench train``). Every field is a primitive so the config
    travels in the checkpoint.

    Fields:
        name: file name of the checkpoint (``<model_dir>/local/<name>.pt``); then usable as
            ``marginbench run model=<name>``.
        dataset: fashion_mnist | cifar10 | cifar100.
        arch: network from ``marginbench.models.small.ARCHITECTURES``
            (small_cnn, small_cnn_wide, resnet18).
        loss: standard | pgd | trades | mart | alp | clp.
        epochs: passes over the training set (``n_train`` samples).
        batch_size: SGD minibatch size.
        lr, momentum, weight_decay, nesterov: SGD settings.
        schedule: cosine (per-iteration cosine decay to 0) | constant | multistep
            (×0.1 at 50% and 75% of training).
        warmup_epochs: linear learning-rate warm-up from 0 (may be fractional).
        eps: L-inf radius used in training, a string like "8/255" or "0.1".
        attack_steps: PGD iterations during training.
        attack_step_size: PGD step; "2/255" style string, or null for 2.5·eps/attack_steps.
        beta: TRADES / MART trade-off β.
        pair_weight: λ of the logit-pairing term (alp, clp).
        n_train: use only the first ``n_train`` images of a fixed shuffle (``seed``) of the
            training split; null = all of it.
        augment: random crop (pad 4) + horizontal flip (CIFAR recipes); no-op for
            Fashion-MNIST is *not* applied automatically: set it false there.
        seed: seeds weights, data order, subset and attack random starts.
        eval_n: number of test images (the first ones) for the PGD evaluation.
        eval_steps: PGD iterations for the evaluation (step 2.5·eps/eval_steps, one random
            start); clean accuracy is measured on the whole test split.
        eval_batch_size: batch size of the evaluation.
        num_threads: torch.set_num_threads on CPU (null: leave torch's default).
        progress: show a tqdm progress bar with ETA.
    """

    name: str = "my_model"
    dataset: str = "fashion_mnist"
    arch: str = "small_cnn"
    loss: str = "pgd"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    eps: str = "0.1"
    attack_steps: int = 5
    attack_step_size: Optional[str] = None
    beta: float = 6.0
    pair_weight: float = 1.0
    n_train: Optional[int] = None
    augment: bool = False
    seed: int = 0
    eval_n: int = 1000
    eval_steps: int = 20
    eval_batch_size: int = 500
    num_threads: Optional[int] = None
    progress: bool = True

    def validate(self) -> TrainConfig:
        if self.loss not in LOSSES:
            raise MarginbenchError(f"train.loss={self.loss!r} is unknown; choose one of {', '.join(LOSSES)}")
        if self.dataset not in TRAIN_DATASETS:
            raise MarginbenchError(
                f"train.dataset={self.dataset!r} cannot be trained on; choose one of {', '.join(TRAIN_DATASETS)}"
            )
        if self.schedule not in ("cosine", "constant", "multistep"):
            raise MarginbenchError(
                f"train.schedule={self.schedule!r} is unknown; choose cosine, constant or multistep"
            )
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise MarginbenchError(f"train name={self.name!r} must be a plain file name like my_model")
        for key in ("epochs", "batch_size", "attack_steps", "eval_steps", "eval_batch_size"):
            if int(getattr(self, key)) < 1:
                raise MarginbenchError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        # NaN passed "lr <= 0" and trained a model to nothing, a momentum of -1 crashed
        # torch's SGD after the data loaded, eval_n 0 reported a 0/0 accuracy as 0 (round 10)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MarginbenchError(f"train.lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise MarginbenchError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:  # torch's SGD refused it after the data loaded
            raise MarginbenchError("train.nesterov=true needs train.momentum > 0")
        for key in ("weight_decay", "warmup_epochs", "beta", "pair_weight"):
            if not (getattr(self, key) >= 0 and math.isfinite(getattr(self, key))):
                raise MarginbenchError(f"train.{key} must be a finite number >= 0, got {getattr(self, key)}")
        if self.eval_n < 1:
            raise MarginbenchError(f"train.eval_n must be >= 1, got {self.eval_n}")
        if self.n_train is not None and self.n_train < 1:
            raise MarginbenchError(f"train.n_train must be >= 1 or null, got {self.n_train}")
        _ = (self.eps_value, self.step_size_value)  # parse now: a MarginbenchError on nonsense
        return self

    @property
    def eps_value(self) -> float:
        return parse_eps(self.eps)

    @property
    def step_size_value(self) -> float:
        if self.attack_step_size in (None, "", "auto"):
            return 2.5 * self.eps_value / self.attack_steps
        return parse_eps(self.attack_step_size)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]


@dataclass
class TrainRecipeConfig(TrainConfig):
    """The root ``marginbench train`` composes: TrainConfig's defaults, then the chosen
    ``configs/train/<recipe>.yaml`` at the top level (its keys are TrainConfig fields), then
    the command line's ``KEY=VALUE``. ``_self_`` first, so the recipe overrides the defaults."""

    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"train@_global_": None}])


@dataclass
class DetectorConfig:
    """``detector.*`` keys of ``marginbench calibrate`` (composed beside MarginbenchConfig, not
    inside it: they mean nothing to ``marginbench run`` and must not reach its cache keys)."""

    target_recall: float = 0.95  # flag >= this share of non-robust inputs ...
    delta: float = 0.05  # ... with probability >= 1 - delta over the calibration draw
    n_calibration: int = 500  # seeded random calibration samples among the evaluated ones
    n_test: Optional[int] = 500  # held-out samples (disjoint) for the reported recall/FPR; null: all the rest
    score: str = "logit_margin"  # the only score a BrittleDetector computes without an attack
    seed: int = 0  # seeds the calibration/test split


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="marginbench_schema", node=MarginbenchConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="attack", name="attack_schema", node=AttackConfig)
    cs.store(group="pseudo", name="pseudo_schema", node=PseudoConfig)
    cs.store(group="paths", name="paths_schema", node=PathsConfig)
    cs.store(name=TRAIN_CONFIG_NAME, node=TrainRecipeConfig)
    cs.store(group="detector", name="detector_schema", node=DetectorConfig)


def hydra_compose(config_name: str, overrides: Sequence[str], return_hydra_config: bool = False) -> Any:
    """Compose ``config_name`` from CONFIG_DIR (read now, so a changed CONFIG_DIR counts)
    over the registered schemas: what ``marginbench run`` and ``marginbench train`` build."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files of ``CONFIG_DIR/<group>/``, sorted."""
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def attack_preset(name: str) -> dict[str, Any]:
    """``configs/attack/<name>.yaml`` over AttackConfig's defaults, as Hydra composes it.

    The one reader of the attack presets (runs, ensemble members, summaries, the benchmark),
    so a preset's numbers live in its YAML file and nowhere else.
    """
    path = CONFIG_DIR / "attack" / f"{name}.yaml"
    if not path.is_file():
        raise MarginbenchError(
            f"attack preset {name!r} does not exist; choose one of: {', '.join(group_options('attack'))}"
        )
    from omegaconf import OmegaConf

    # read by OmegaConf as Hydra reads it (PyYAML would read 1e-3 as the string '1e-3')
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    values.pop("defaults", None)  # a Hydra defaults list is composition, not a field
    return {**asdict(AttackConfig()), **values}


def attack_label(attack: Any) -> str:
    """The configs/attack preset this attack config equals (e.g. fab_polish), else its
    estimator name with "(modified)": summaries say which estimator really ran."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(attack, resolve=True) if OmegaConf.is_config(attack) else dict(attack)
    for name in group_options("attack"):
        preset = attack_preset(name)
        if all(preset.get(k) == values.get(k) for k in ("name", "members", "steps", "restarts", "refine")) and (
            (preset.get("options") or {}) == (values.get("options") or {})
        ) and (preset.get("escalate") or []) == (values.get("escalate") or []):
            return name
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
