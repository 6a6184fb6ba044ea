"""Where a model's weights come from: the leaf module of ``marginbench.models``.

RobustBench's import shim and model dicts, the weights file of each registry source
(RobustBench's cache layout, the pyautoattack wheel, the demo zoo, ``<model_dir>/local``)
and the URL a missing RobustBench file is fetched from. ``registry`` (names -> entries) and
``loading`` (entries -> modules) both import this module and it imports neither of them, so
the package has no import cycle. Nothing here imports torch or RobustBench at module level:
the registry must stay cheap for ``marginbench models`` and the report.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from marginbench.errors import MarginbenchError

GDRIVE_URL = "https://drive.google.com/uc?id={}"
# The demo zoo's weights ship inside the package (built by `make zoo`).
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"

# Entries are registry.ModelEntry objects; typed as Any because importing the registry here
# would make the cycle this module exists to break.
Entry = Any


# --------------------------------------------------------------------------------------------
# RobustBench
# --------------------------------------------------------------------------------------------


def import_robustbench() -> None:
    """Import RobustBench quietly (it needs ``autoattack``, which pyautoattack provides)."""
    try:
        import pyautoattack

        sys.modules.setdefault("autoattack", pyautoattack)
    except ImportError:  # robustbench may find a real `autoattack` package
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation, timm registry overwrites
        try:
            importlib.import_module("robustbench.model_zoo")
            importlib.import_module("robustbench.utils")
        except Exception as exc:
            raise MarginbenchError(
                f"cannot import robustbench ({type(exc).__name__}: {exc}); reinstall it with `pip install robustbench`"
            ) from None


def robustbench_model_dicts() -> dict:
    """RobustBench's whole zoo: {dataset enum: {threat enum: {id: spec}}}."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts

    return model_dicts


def robustbench_spec(entry: Entry) -> dict:
    """The installed RobustBench's spec of an entry (``model`` factory, ``gdrive_id``)."""
    import_robustbench()  # robustbench needs the `autoattack` alias before any of its imports
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    dicts = robustbench_model_dicts()
    try:
        return dicts[BenchmarkDataset(entry.dataset)][ThreatModel(entry.threat_model)][
            entry.robustbench_id
        ]
    except (KeyError, ValueError):
        raise MarginbenchError(
            f"RobustBench (installed version) has no model {entry.robustbench_id!r} for "
            f"{entry.dataset}/{entry.threat_model}; upgrade it with `pip install -U robustbench`"
        ) from None


def timm_name(entry: Entry) -> str:
    """The name under which timm registers a RobustBench model (the newer ones live there)."""
    return f"{entry.robustbench_id.lower().replace('-', '_')}_{entry.dataset}_{entry.threat_model.lower()}"


def is_timm_model(entry: Entry) -> bool:
    import timm

    return bool(timm.is_model(timm_name(entry)))


def weights_url(entry: Entry) -> str | None:
    """Download URL of a RobustBench entry's (first) weights file; None for other sources."""
    if entry.source != "robustbench":
        return None
    if is_timm_model(entry):
        import timm

        cfg = timm.models.get_pretrained_cfg(timm_name(entry))
        return getattr(cfg, "url", None) or None
    if entry.dataset == "imagenet" and entry.robustbench_id.startswith("Standard"):
        from torchvision.models import ResNet50_Weights

        return ResNet50_Weights.IMAGENET1K_V1.url
    gid = robustbench_spec(entry)["gdrive_id"]
    if isinstance(gid, list):
        gid = gid[0] if gid else None
    return GDRIVE_URL.format(gid) if gid else None


# --------------------------------------------------------------------------------------------
# Weights files
# --------------------------------------------------------------------------------------------


def builtin_weights_path(code: str) -> Path:
    """aa_resnet18's weights: the example model inside the pyautoattack wheel."""
    if code != "aa_resnet18":
        raise MarginbenchError(
            f"unknown built-in model {code!r}; the built-in model is aa_resnet18"
        )
    try:
        root = resources.files("pyautoattack")
    except ModuleNotFoundError:
        raise MarginbenchError(
            "aa_resnet18 needs the pyautoattack package; install it with `pip install pyautoattack`"
        ) from None
    return Path(str(root.joinpath("examples", "model_test.pt")))


def local_files(model_dir: Path | None) -> dict[str, Path]:
    """name -> checkpoint of every model ``marginbench train`` wrote into ``<model_dir>/local``."""
    if model_dir is None:
        return {}
    folder = Path(model_dir) / "local"
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.pt")) if p.is_file()}


def checkpoint_path(entry: Entry, model_dir: Path | str) -> Path | None:
    """Where the entry's weights file lives (None for custom models without weights).

    RobustBench: ``<model_dir>/<dataset>/<threat>/<id>.pt`` (RobustBench's own cache layout;
    an ensemble's members are ``<id>.pt_m0.pt``, ``<id>.pt_m1.pt`` ... next to it).
    """
    model_dir = Path(model_dir)
    if entry.source == "robustbench":
        return model_dir / entry.dataset / entry.threat_model / f"{entry.robustbench_id}.pt"
    if entry.source == "builtin":
        return builtin_weights_path(entry.code)
    if entry.source == "zoo":
        return ZOO_DIR / f"{entry.code}.pt"
    if entry.source == "local":
        for stem, path in local_files(model_dir).items():
            if stem.lower() == entry.code.lower():
                return path
        return model_dir / "local" / f"{entry.code}.pt"
    return None
