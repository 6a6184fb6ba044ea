"""The model zoo: paper short codes -> where the weights come from, plus published numbers.

Sources of an entry:

- ``robustbench``: a RobustBench model zoo entry. Published clean / robust accuracy (percent)
  come from RobustBench's ``model_info/<dataset>/<threat>/<id>.json`` files and are kept as
  data in ``robustbench_models.csv`` (a copy of ``results/reference/robustbench_models.csv``);
  a number RobustBench does not publish is left empty (``None``), never guessed.
- ``builtin``: ``aa_resnet18``, the standard CIFAR-10 ResNet-18 shipped in the pyautoattack
  wheel (``pyautoattack/examples/model_test.pt``).
- ``zoo``: the Fashion-MNIST demo models (``fm_*``), weights under ``sources.ZOO_DIR``,
  built by ``make zoo``.
- ``local``: the five ResNet-18 models the paper's authors trained themselves (MD0, TR0, MR0,
  AL0, CL0) and any ``<model_dir>/local/<name>.pt`` written by ``marginbench train``.

Short codes follow the authors' rule (protocol §5, :func:`paper_code`). Two groups do not:
ImageNet models, whose rule codes would collide (``Salman2020Do_R18`` and ``_R50`` both give
``SA1``, and ``1`` is already CIFAR-100's suffix), get the rule's two letters, the ResNet depth
when needed, and ``I`` (``SA18I``, ``SA50I``, ``ENI``, ``STI``); and names that are not RobustBench
ids keep their own names.

This module is pure data and imports neither torch nor RobustBench at module level (checked by
tests/test_models.py): where weights live and RobustBench's own zoo come from ``sources``, the
leaf module that ``loading`` imports too.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from marginbench.errors import MarginbenchError
from marginbench.models.sources import checkpoint_path as checkpoint_path  # re-exported
from marginbench.models.sources import local_files, robustbench_model_dicts

SOURCES = ("robustbench", "builtin", "zoo", "local")
# Classes per dataset: the package's one table (training, local checkpoints, RobustBench rows).
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "fashion_mnist": 10,
               "fashion_mnist_pairs": 100, "fashion_mnist_pairs_left": 10}
CSV_NAME = "robustbench_models.csv"


@dataclass(frozen=True)
class ModelEntry:
    code: str  # paper short code (XU80) or built-in name (aa_resnet18, fm_trades)
    source: str  # "robustbench" | "builtin" | "zoo" | "local" (| "custom", made by load_model)
    dataset: str  # cifar10 | cifar100 | imagenet | fashion_mnist
    threat_model: str  # Linf | L2
    robustbench_id: str | None  # e.g. Xu2023Exploring_WRN-28-10
    architecture: str
    clean_acc: float | None  # published (RobustBench), percent
    robust_acc: float | None  # published (RobustBench AutoAttack), percent
    num_classes: int


def paper_code(robustbench_id: str, dataset: str, threat_model: str = "Linf") -> str:
    """The authors' short code of a RobustBench model (protocol §5, rules applied in order)."""
    name = robustbench_id
    if "2021" in name:
        if "PA" in name:
            tag = ""
        elif "Re" in name and "28_10_cutmix" in name:
            tag = "8"
        else:
            tag = "1"
        code = name[:2] + tag
    elif "2022" in name:
        code = name[0] + name[-3] if "XCiT" in name else name[:2] + "2"
    elif "2023" in name:
        code = name[:2] + name[-4]
    else:
        code = name[:2]
    code += "0" if dataset == "cifar10" else "1"
    if threat_model == "L2":
        code += "2"
    return code.upper()


def _float_or_none(text: str) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


@functools.lru_cache(maxsize=1)
def _robustbench_rows() -> tuple[dict[str, str], ...]:
    text = resources.files("marginbench.models").joinpath(CSV_NAME).read_text(encoding="utf-8")
    return tuple(csv.DictReader(io.StringIO(text)))


def _builtin_entries() -> list[ModelEntry]:
    entries = [
        ModelEntry("aa_resnet18", "builtin", "cifar10", "Linf", None, "ResNet-18", None, None, 10),
    ]
    # Fashion-MNIST demo zoo (trained by `make zoo`); one per training method.
    for method in ("standard", "madry", "trades", "mart", "alp", "clp"):
        entries.append(
            ModelEntry(
                f"fm_{method}", "zoo", "fashion_mnist", "Linf", None, "small_cnn", None, None, 10
            )
        )
    # Fashion-MNIST pairs (scripts/train_pairs.py): one PairCNN at K=100 and at K=10
    entries.append(ModelEntry("fm_pairs100", "zoo", "fashion_mnist_pairs", "Linf", None, "pair_cnn", None, None, 100))
    entries.append(ModelEntry("fm_pairs10", "zoo", "fashion_mnist_pairs_left", "Linf", None, "pair_cnn", None, None, 10))
    # The paper's own ResNet-18 models (PGD-AT, TRADES, MART, ALP, CLP), trained locally.
    for code in ("MD0", "TR0", "MR0", "AL0", "CL0"):
        entries.append(
            ModelEntry(code, "local", "cifar10", "Linf", None, "ResNet-18", None, None, 10)
        )
    return entries


@functools.lru_cache(maxsize=1)
def _static_entries() -> tuple[ModelEntry, ...]:
    entries = []
    for row in _robustbench_rows():
        entries.append(
            ModelEntry(
                code=row["code"],
                source="robustbench",
                dataset=row["dataset"],
                threat_model=row["threat_model"],
                robustbench_id=row["robustbench_id"],
                architecture=row["architecture"],
                clean_acc=_float_or_none(row["clean_acc"]),
                robust_acc=_float_or_none(row["robust_acc"]),
                num_classes=NUM_CLASSES[row["dataset"]],
            )
        )
    entries.extend(_builtin_entries())
    codes = [e.code.lower() for e in entries]
    duplicates = sorted({c for c in codes if codes.count(c) > 1})
    if duplicates:  # a data error in the CSV, not a user error
        raise RuntimeError(f"duplicate model codes in the registry: {duplicates}")
    return tuple(entries)


def published_source_url(entry: ModelEntry) -> str | None:
    """Where the published numbers of a RobustBench entry come from (its model_info JSON)."""
    for row in _robustbench_rows():
        if row["code"] == entry.code:
            return row["source_url"]
    return None


def list_models() -> list[ModelEntry]:
    """Every registry entry (RobustBench, built-in, demo zoo, paper's local models)."""
    return list(_static_entries())


def _local_entry(name: str, path: Path) -> ModelEntry:
    """An entry for a user-trained checkpoint, described by the metadata it carries."""
    from marginbench.models.local import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    dataset = str(meta.get("dataset") or "cifar10")
    return ModelEntry(
        code=name,
        source="local",
        dataset=dataset,
        threat_model=str(meta.get("threat_model") or "Linf"),
        robustbench_id=None,
        architecture=str(meta.get("arch") or "unknown"),
        clean_acc=None,
        robust_acc=None,
        num_classes=int(meta.get("num_classes") or NUM_CLASSES.get(dataset, 10)),
    )


_DATASET_ORDER = {"cifar10": 0, "cifar100": 1, "imagenet": 2, "fashion_mnist": 3}


def _by_robustbench_id(
    name: str, dataset: str | None, threat_model: str | None
) -> ModelEntry | None:
    key = name.lower()
    hits = [e for e in _static_entries() if e.robustbench_id and e.robustbench_id.lower() == key]
    if dataset:
        hits = [e for e in hits if e.dataset == dataset]
    if threat_model:
        hits = [e for e in hits if e.threat_model.lower() == threat_model.lower()]
    if not hits:
        return None
    # An id alone means what RobustBench's own load_model means by it: CIFAR-10, Linf first.
    hits.sort(key=lambda e: (e.threat_model != "Linf", _DATASET_ORDER.get(e.dataset, 9)))
    return hits[0]


def _robustbench_zoo_entry(
    rb_id: str, dataset: str | None, threat_model: str | None
) -> ModelEntry | None:
    """Any other model of RobustBench's zoo (no published numbers on record here)."""
    try:
        dicts = robustbench_model_dicts()
    except MarginbenchError:
        return None
    candidates = []
    for ds_enum, by_threat in dicts.items():
        ds = ds_enum.value
        if dataset and ds != dataset:
            continue
        for tm_enum, models in by_threat.items():
            tm = tm_enum.value
            if tm not in ("Linf", "L2") or (threat_model and tm.lower() != threat_model.lower()):
                continue
            for mid in models:
                if mid.lower() == rb_id.lower():
                    candidates.append((tm != "Linf", _DATASET_ORDER.get(ds, 9), ds, tm, mid))
    if not candidates:
        return None
    _, _, ds, tm, mid = sorted(candidates)[0]
    return ModelEntry(
        mid, "robustbench", ds, tm, mid, "unknown", None, None, NUM_CLASSES.get(ds, 10)
    )


def custom_entry(model_cfg: Any, dataset: str | None) -> ModelEntry:
    """The entry of a user's own model (``model=custom``): what a run records about it.

    ``model_cfg`` is the ``model`` config node (ModelConfig or DictConfig); ``dataset`` is the
    run's ``dataset`` option. The model's own ``model.dataset`` wins; else the run's dataset
    describes it, and with none chosen (``auto``, or None when there is no run) the model
    can only be evaluated on a user's file, ``npz``.
    """
    if not model_cfg.factory:
        raise MarginbenchError(
            "model=custom needs model.factory=MODULE:FUNCTION (a function returning an nn.Module)"
        )
    run_dataset = dataset if dataset and dataset != "auto" else "npz"
    return ModelEntry(
        code=f"custom:{model_cfg.factory}",
        source="custom",
        dataset=model_cfg.dataset or run_dataset,
        threat_model=model_cfg.norm,
        robustbench_id=None,
        architecture="custom",
        clean_acc=None,
        robust_acc=None,
        num_classes=int(model_cfg.num_classes),
    )


def _all_names(model_dir: Path | None) -> list[str]:
    names = []
    for e in _static_entries():
        names.append(e.code)
        if e.robustbench_id:
            names.append(e.robustbench_id)
    names.extend(local_files(model_dir))
    return sorted(set(names))


def registry_entry(name: str, *, dataset: str | None = None, threat_model: str | None = None) -> ModelEntry | None:
    """The registry entry ``name`` resolves to before any ``<model_dir>/local`` checkpoint
    (paper code, built-in, demo-zoo name or registered RobustBench id), or None: a local
    checkpoint of this name would be shadowed by it (``marginbench train`` refuses such names)."""
    key = name.strip().lower()
    for entry in _static_entries():
        if entry.code.lower() == key and (not dataset or entry.dataset == dataset):
            return entry
    return _by_robustbench_id(name.strip(), dataset, threat_model)


def resolve_model(
    name: str,
    model_dir: Path | str | None = None,
    *,
    dataset: str | None = None,
    threat_model: str | None = None,
) -> ModelEntry:
    """Find a model by paper code (XU80), RobustBench id or built-in name, case-insensitively.

    Also accepted: ``<dataset>/<threat>/<RobustBench id>`` (``cifar10/L2/Ding2020MMA``), any
    checkpoint ``<model_dir>/local/<name>.pt`` (a "local" entry), and any other id of
    RobustBench's zoo. A bare RobustBench id that exists for several datasets / threat models
    means CIFAR-10 Linf first, as in RobustBench's ``load_model``; ``dataset`` /
    ``threat_model`` narrow it down.
    """
    text = str(name).strip()
    if not text:
        raise MarginbenchError(
            "model name is empty; give a paper code (XU80), a RobustBench id or a built-in name"
        )
    parts = text.split("/")
    if len(parts) == 3:
        dataset, threat_model, text = parts[0].lower(), parts[1], parts[2]
    key = text.lower()

    entry = registry_entry(text, dataset=dataset, threat_model=threat_model)
    if entry is not None:
        return entry
    for stem, path in local_files(Path(model_dir) if model_dir is not None else None).items():
        if stem.lower() == key:
            return _local_entry(stem, path)
    # Only now pay for importing RobustBench (seconds): any other id of its zoo.
    if any(ch.isdigit() for ch in text) and len(text) > 6:
        entry = _robustbench_zoo_entry(text, dataset, threat_model)
        if entry is not None:
            return entry

    names = _all_names(Path(model_dir) if model_dir is not None else None)
    lower = {n.lower(): n for n in names}
    close = [lower[m] for m in difflib.get_close_matches(key, list(lower), n=5, cutoff=0.5)]
    hint = (
        f"closest matches: {', '.join(close)}" if close else "run `marginbench models` to list them"
    )
    raise MarginbenchError(f"unknown model {name!r}; {hint}")
