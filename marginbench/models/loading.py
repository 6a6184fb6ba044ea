"""Load a registry entry or a user's own model as an ``nn.Module`` in eval mode.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: loading a model never
executes pickled code. That is why RobustBench models are not loaded through
``robustbench.utils.load_model`` (which unpickles with torch's default and downloads on its
own): the architecture comes from RobustBench's ``model_dicts``, the state dict is read here
and adapted the way RobustBench adapts it (``state_dict`` key, ``module.`` / ``model.``
prefixes, ImageNet normalisation wrapper), using RobustBench's own helper functions.

Weights live where RobustBench keeps them, ``<model_dir>/<dataset>/<threat>/<id>.pt``. When a
file is missing it is downloaded only when allowed and the host answers within seconds;
otherwise a one-line error names the file to place and the URL to fetch it from.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from marginbench.config import ModelConfig
from marginbench.errors import MarginbenchError
from marginbench.models.registry import ModelEntry, custom_entry, resolve_model
from marginbench.models.sources import (
    GDRIVE_URL,
    builtin_weights_path,
    checkpoint_path,
    import_robustbench,
    is_timm_model,
    robustbench_model_dicts,
    robustbench_spec,
    timm_name,
    weights_url,
)
from marginbench.network import NETWORK_TIMEOUT_S, url_reachable

# Objects some published checkpoints carry next to their tensors (training args, numpy
# scalars such as a best accuracy). Allowed for weights_only loading: they hold data, no code.
_SAFE_GLOBALS: list[Any] = [argparse.Namespace]
try:  # numpy scalars / dtypes pickled by numpy >= 1.25 and 2.x
    import numpy as _np

    _SAFE_GLOBALS += [
        _np.dtype,
        type(_np.dtype("float64")),
        type(_np.dtype("int64")),
        type(_np.dtype("float32")),
    ]
    try:
        from numpy._core.multiarray import scalar as _np_scalar  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar as _np_scalar
    _SAFE_GLOBALS.append(_np_scalar)
except Exception:  # pragma: no cover - numpy is a hard dependency of torch here
    pass


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------


def check_checkpoint_file(path: Path, url: str | None = None) -> None:
    """Refuse a file that is not a PyTorch checkpoint before ``torch.load`` sees it.

    A failed Google Drive download often leaves an HTML page named ``<id>.pt``.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(64)
    again = f" and download it again from {url}" if url else " and download it again"
    if not head:
        raise MarginbenchError(
            f"checkpoint {path} is empty (an interrupted download?); delete it{again}"
        )
    if head[:4] == b"PK\x03\x04" or head[0] == 0x80:  # torch zip format / legacy pickle
        return
    if head.lstrip()[:1] == b"<":
        raise MarginbenchError(
            f"checkpoint {path} is an HTML page, not weights (a failed Google Drive download); delete it{again}"
        )
    raise MarginbenchError(
        f"{path} is not a PyTorch checkpoint (unknown file format); delete it{again}"
    )


def torch_load_weights(path: Path, url: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors."""
    path = Path(path)
    check_checkpoint_file(path, url)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise MarginbenchError(
                f"checkpoint {path} contains pickled Python objects besides tensors ({first}); "
                "marginbench loads weights only: if you trust the file, re-save its state_dict with torch.save"
            ) from None
        again = f" and download it again from {url}" if url else ""
        raise MarginbenchError(
            f"cannot read checkpoint {path} ({first}); delete it{again}"
        ) from None


def network_available(url: str, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """Can the host of ``url`` be reached within ``timeout`` seconds (DNS + TCP connect)?"""
    return url_reachable(url, timeout)


def _missing_error(path: Path, url: str | None, why: str) -> MarginbenchError:
    where = f"download {url} and save it as {path}" if url else f"place the weights file at {path}"
    return MarginbenchError(f"weights file {path} not found ({why}); {where}")


def _download(url: str, path: Path, gdrive_id: str | None) -> None:
    """Fetch ``url`` to ``path`` atomically (temporary name, checked, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        if gdrive_id:
            import gdown

            out = gdown.download(id=gdrive_id, output=str(tmp), quiet=False)
            if out is None or not tmp.is_file():
                raise MarginbenchError(
                    f"download of {url} failed; download it by hand and save it as {path}"
                )
        else:
            torch.hub.download_url_to_file(url, str(tmp), progress=True)
        check_checkpoint_file(tmp, url)
        os.replace(tmp, path)
    except MarginbenchError:
        raise
    except Exception as exc:
        raise MarginbenchError(
            f"download of {url} failed ({type(exc).__name__}); download it by hand and save it as {path}"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def ensure_weights(
    path: Path, url: str | None, gdrive_id: str | None = None, download: bool = True
) -> Path:
    """The weights file, downloaded first if missing and allowed; else a one-line error."""
    path = Path(path)
    if path.is_file():
        return path
    if url is None:
        raise _missing_error(path, None, "no download source is known")
    if not download:
        raise _missing_error(path, url, "downloads are disabled")
    if not network_available(url):
        raise _missing_error(path, url, "offline")
    _download(url, path, gdrive_id)
    return path


# --------------------------------------------------------------------------------------------
# RobustBench
# --------------------------------------------------------------------------------------------


def _state_dict_of(checkpoint: Any, name: str) -> dict:
    """RobustBench's unwrapping: a 'last' snapshot, 'state_dict' / 'model_state_dict' keys,
    then its 'module.' and 'model.' prefix removal."""
    from robustbench.utils import rm_substr_from_state_dict

    if isinstance(checkpoint, dict) and (
        "Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding"
    ):
        checkpoint = checkpoint.get("last", checkpoint)
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model_state_dict"):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(torch.is_tensor(v) for v in checkpoint.values()):
        keys = (
            sorted(map(str, checkpoint))[:6]
            if isinstance(checkpoint, dict)
            else type(checkpoint).__name__
        )
        raise MarginbenchError(
            f"the checkpoint of {name} is not a state dict of tensors (top level: {keys}); delete it and download it again"
        )
    state = rm_substr_from_state_dict(checkpoint, "module.")
    return rm_substr_from_state_dict(state, "model.")


def _load_state(model: nn.Module, name: str, state: dict, dataset: str, path: Path) -> nn.Module:
    from robustbench.model_zoo.enums import BenchmarkDataset
    from robustbench.utils import _safe_load_state_dict

    try:
        return _safe_load_state_dict(model, name, state, BenchmarkDataset(dataset))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise MarginbenchError(
            f"weights in {path} do not fit {name} ({first}); delete the file and download it again"
        ) from None


def _build(factory: Any, name: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return factory()
        except OSError as exc:  # an architecture that fetches pretrained weights by itself
            raise MarginbenchError(
                f"building {name} needs a download that failed ({exc}); try again online"
            ) from None


def _load_timm(entry: ModelEntry, path: Path, url: str | None) -> nn.Module:
    import timm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(
            timm_name(entry), num_classes=entry.num_classes, pretrained=False
        )
    checkpoint = torch_load_weights(path, url)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    # RobustBench's timm models are nn.Sequential(normalize, model); the published file holds
    # the inner network's weights (as timm loads them, through the network's filter function).
    inner = getattr(model, "model", None) if isinstance(model, nn.Sequential) else None
    target = model
    if inner is not None and not any(
        str(k).startswith(("normalize.", "model.")) for k in checkpoint
    ):
        target = inner
        try:
            module = importlib.import_module(type(inner).__module__)
            filter_fn = getattr(module, "checkpoint_filter_fn", None)
            if filter_fn is not None:
                checkpoint = filter_fn(dict(checkpoint), inner)
        except ImportError:  # pragma: no cover
            pass
    try:
        target.load_state_dict(checkpoint, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise MarginbenchError(
            f"weights in {path} do not fit {entry.robustbench_id} ({first}); delete the file and download it again"
        ) from None
    return model


def _load_robustbench_ensemble(
    entry: ModelEntry, spec: dict, path: Path, download: bool
) -> nn.Module:
    """A RobustBench ensemble: one weights file per member, ``<id>.pt_m<i>.pt``."""
    name = entry.robustbench_id
    if name.startswith(("Bai2023Improving", "Bai2024MixedNUTS")):
        raise MarginbenchError(
            f"{name} is a composite model marginbench cannot load; pick another model"
        )
    members = [
        (Path(f"{path}_m{i}.pt"), GDRIVE_URL.format(gid), gid)
        for i, gid in enumerate(spec["gdrive_id"])
    ]
    for member, url, gid in members:  # all files first: fail before building anything
        ensure_weights(member, url, gid, download)
    model = _build(spec["model"], name)
    if not hasattr(model, "models"):
        raise MarginbenchError(
            f"{name} is a composite model marginbench cannot load; pick another model"
        )
    for i, (member, url, _) in enumerate(members):
        state = _state_dict_of(torch_load_weights(member, url), name)
        model.models[i] = _load_state(model.models[i], name, state, entry.dataset, member)
    return model


def _load_robustbench(entry: ModelEntry, model_dir: Path, download: bool) -> nn.Module:
    import_robustbench()
    name = entry.robustbench_id
    path = checkpoint_path(entry, model_dir)
    if is_timm_model(entry):
        url = weights_url(entry)
        ensure_weights(path, url, None, download)
        return _load_timm(entry, path, url)

    spec = robustbench_spec(entry)
    gdrive = spec["gdrive_id"]
    if entry.dataset == "imagenet" and name.startswith("Standard"):
        # RobustBench builds it with torchvision's pretrained=True (a download at build time);
        # build it bare and load torchvision's published weights from the model_dir instead.
        from robustbench.model_zoo.architectures.utils_architectures import normalize_model
        from robustbench.model_zoo.imagenet import mu, sigma
        from torchvision import models as tv_models

        url = weights_url(entry)
        ensure_weights(path, url, None, download)
        model = normalize_model(tv_models.resnet50(weights=None), mu, sigma)
        state = _state_dict_of(torch_load_weights(path, url), name)
        from robustbench.utils import add_substr_to_state_dict

        return _load_state(
            model, name, add_substr_to_state_dict(state, "model."), entry.dataset, path
        )

    if not gdrive:
        raise MarginbenchError(
            f"RobustBench publishes no weights file for {name}; it cannot be loaded offline"
        )
    if isinstance(gdrive, list):  # ensembles: one file per member, <id>.pt_m<i>.pt
        return _load_robustbench_ensemble(entry, spec, path, download)

    url = GDRIVE_URL.format(gdrive)
    ensure_weights(path, url, gdrive, download)
    state = _state_dict_of(torch_load_weights(path, url), name)
    model = _build(spec["model"], name)
    if entry.dataset == "imagenet" and name not in _IMAGENET_NO_PREFIX:
        from robustbench.utils import add_substr_to_state_dict

        if name.startswith(
            (
                "Liu2023Comprehensive_Swin",
                "Mo2022When_Swin",
                "RodriguezMunoz2024Characterizing_Swin",
            )
        ):
            try:
                from timm.models.swin_transformer import checkpoint_filter_fn

                state = checkpoint_filter_fn(state, model.model)
            except Exception:  # as RobustBench: keep the state as it is
                pass
        state = add_substr_to_state_dict(state, "model.")
    return _load_state(model, name, state, entry.dataset, path)


# ImageNet models whose checkpoints already include the normalisation wrapper (RobustBench's list).
_IMAGENET_NO_PREFIX = frozenset(
    {
        "Singh2023Revisiting_ConvNeXt-T-ConvStem",
        "Singh2023Revisiting_ViT-B-ConvStem",
        "Singh2023Revisiting_ConvNeXt-S-ConvStem",
        "Singh2023Revisiting_ConvNeXt-B-ConvStem",
        "Singh2023Revisiting_ConvNeXt-L-ConvStem",
        "Peng2023Robust",
        "Chen2024Data_WRN_50_2",
        "Xu2024MIMIR_Swin-B",
        "Xu2024MIMIR_Swin-L",
    }
)


# --------------------------------------------------------------------------------------------
# Built-in, demo zoo, locally trained
# --------------------------------------------------------------------------------------------


def _load_builtin(entry: ModelEntry) -> nn.Module:
    path = builtin_weights_path(entry.code)
    if not path.is_file():
        raise MarginbenchError(
            f"{path} is missing from the pyautoattack install; reinstall it with `pip install --force-reinstall pyautoattack`"
        )
    from pyautoattack.examples.resnet import ResNet18

    model = ResNet18()
    state = torch_load_weights(path)
    model.load_state_dict(state, strict=True)
    return model


def _load_local_file(entry: ModelEntry, path: Path, device: torch.device) -> nn.Module:
    from marginbench.models.local import load_local_checkpoint

    model, meta = load_local_checkpoint(path, device)
    if meta.get("dataset") and meta["dataset"] != entry.dataset:
        raise MarginbenchError(
            f"checkpoint {path} was trained on {meta['dataset']}, but {entry.code} is a {entry.dataset} model; retrain it"
        )
    return model


def _load_zoo(entry: ModelEntry, device: torch.device) -> nn.Module:
    path = checkpoint_path(entry, Path("."))
    if path is None or not path.is_file():
        raise MarginbenchError(
            f"demo model {entry.code} is not built yet ({path} missing); run `make zoo` to train the demo zoo"
        )
    return _load_local_file(entry, path, device)


def _load_local(entry: ModelEntry, model_dir: Path, device: torch.device) -> nn.Module:
    path = checkpoint_path(entry, model_dir)
    if path is None or not path.is_file():
        raise MarginbenchError(
            f"locally trained model {entry.code} not found at {path}; train it with `marginbench train` "
            f"(it writes {Path(model_dir) / 'local'}/<name>.pt)"
        )
    return _load_local_file(entry, path, device)


# --------------------------------------------------------------------------------------------
# Custom models
# --------------------------------------------------------------------------------------------


def _import_factory(spec: str) -> Any:
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise MarginbenchError(
            f"model.factory={spec!r} must look like package.module:function (a function returning an nn.Module)"
        )
    module_name, func_name = (s.strip() for s in spec.split(":"))
    if not module_name or not func_name:
        raise MarginbenchError(f"model.factory={spec!r} must look like package.module:function")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # let users point at a module in the working directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MarginbenchError(
            f"model.factory={spec!r}: cannot import module {module_name!r} ({exc}); check the name and PYTHONPATH"
        ) from None
    obj = module
    for part in func_name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise MarginbenchError(
                f"model.factory={spec!r}: module {module_name!r} has no attribute {func_name!r}"
            )
    if not callable(obj):
        raise MarginbenchError(f"model.factory={spec!r}: {func_name!r} is not callable")
    return obj


def _custom_state_dict(cfg: ModelConfig) -> dict:
    """``model.weights``: a state dict of tensors, bare or under 'state_dict' / 'model_state_dict'."""
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise MarginbenchError(f"model.weights={cfg.weights!r}: file not found")
    state = torch_load_weights(path)
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise MarginbenchError(
            f"model.weights={cfg.weights!r} is not a state_dict (or {{'state_dict': ...}}) of tensors"
        )
    return state


def _load_custom(cfg: ModelConfig) -> tuple[nn.Module, ModelEntry]:
    # The entry first: it is the one registry.custom_entry the pipeline records, and it
    # refuses a missing factory before anything is imported. Without the run's dataset
    # option here, the entry says what the pipeline says for dataset=auto.
    entry = custom_entry(cfg, None)
    factory = _import_factory(cfg.factory)
    try:
        model = factory()
    except Exception as exc:
        raise MarginbenchError(
            f"model.factory={cfg.factory!r} raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise MarginbenchError(
            f"model.factory={cfg.factory!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    if cfg.weights:
        state = _custom_state_dict(cfg)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            state2 = OrderedDict(
                (k[len("module.") :] if k.startswith("module.") else k, v) for k, v in state.items()
            )
            try:
                model.load_state_dict(state2, strict=True)
            except RuntimeError:
                first = str(exc).strip().splitlines()[0][:200]
                raise MarginbenchError(
                    f"model.weights={cfg.weights!r} does not fit the model from {cfg.factory} ({first})"
                ) from None
    if cfg.norm not in ("Linf", "L2"):
        raise MarginbenchError(f"model.norm={cfg.norm!r} is unknown; use Linf or L2")
    return model, entry


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_model(
    cfg: ModelConfig,
    model_dir: Path | str,
    device: torch.device | str = "cpu",
    *,
    download: bool = True,
) -> tuple[nn.Module, ModelEntry]:
    """Build the configured model, load its weights (weights_only), move it to ``device``,
    and return ``(model in eval mode, its registry entry)``.

    ``download=False`` (or the environment variable MARGINBENCH_OFFLINE=1) never touches
    the network: a missing weights file is a one-line error naming the path and the URL.
    """
    device = torch.device(device)
    model_dir = Path(model_dir)
    if cfg.kind == "custom":
        model, entry = _load_custom(cfg)
    elif cfg.kind == "zoo":
        entry = resolve_model(cfg.name, model_dir=model_dir)
        if entry.source == "robustbench":
            model = _load_robustbench(entry, model_dir, download)
        elif entry.source == "builtin":
            model = _load_builtin(entry)
        elif entry.source == "zoo":
            model = _load_zoo(entry, device)
        elif entry.source == "local":
            model = _load_local(entry, model_dir, device)
        else:  # pragma: no cover - registry invariant
            raise MarginbenchError(f"model {entry.code} has unknown source {entry.source!r}")
    else:
        raise MarginbenchError(
            f"model.kind={cfg.kind!r} is unknown; use zoo (a model name) or custom"
        )
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, entry


# builtin_weights_path, robustbench_model_dicts and weights_url live in sources (the leaf
# module) and stay importable from here for existing callers.
__all__ = [
    "builtin_weights_path",
    "check_checkpoint_file",
    "ensure_weights",
    "load_model",
    "network_available",
    "robustbench_model_dicts",
    "torch_load_weights",
    "weights_url",
]
