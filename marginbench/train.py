"""Adversarial training of local models: standard, PGD-AT, TRADES, MART, ALP, CLP.

Reads top to bottom: config -> data -> attacks used during training -> losses -> the loop ->
evaluation -> the entry points (``train_model``, ``train_from_config``, ``run_training``).

The paper's five self-trained ResNet-18s (MD0 TR0 MR0 AL0 CL0) used SGD lr 0.1, momentum
0.9, weight decay 5e-4, cosine schedule over 100 epochs, batch 128, L-inf PGD with ε = 8/255,
10 steps of 2/255, β = 4 for TRADES and MART (``configs/train/cifar10_resnet18_*.yaml``).
The ``fmnist_cnn_*`` recipes are the same losses shrunk to a CPU budget (the demo zoo).

Losses (x: clean batch, x': adversarial batch, f: logits, CE: cross-entropy):

- standard: CE(f(x), y)
- pgd:      CE(f(x'), y), x' from L-inf PGD on CE (Madry et al. 2018)
- trades:   CE(f(x), y) + β·KL(softmax f(x) ‖ softmax f(x')), x' from PGD on that KL
            started at x + 0.001·N(0, 1) (Zhang et al. 2019)
- mart:     BCE(f(x'), y) + β·KL(softmax f(x) ‖ softmax f(x'))·(1 − p_y(x)) (Wang et al. 2020)
- alp:      CE(f(x'), y) + λ·mean ‖f(x') − f(x)‖₂ (adversarial logit pairing, Kannan et al.
            2018, in the form of the advbench library: unsquared L2 norm, robust CE only)
- clp:      CE(f(x), y)  + λ·mean ‖f(x') − f(x)‖₂ (clean loss + logit pairing, advbench form)

Attacks during training run with the model in eval mode (BatchNorm statistics are not
updated by adversarial iterates, as in the TRADES/MART reference code) and return the last
PGD iterate (not the "best" one): this is training, not evaluation.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import platform
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginbench import config
from marginbench.config import TRAIN_CONFIG_NAME, TrainConfig, group_options, hydra_compose
from marginbench.device import resolve_device
from marginbench.errors import MarginbenchError
from marginbench.models.local import save_local_checkpoint
from marginbench.models.small import build_architecture
from marginbench.progress import progress_bar

# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


def config_from_mapping(values: Any) -> TrainConfig:
    """TrainConfig from a dict / DictConfig; unknown keys fail (typos never pass silently)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(values, DictConfig):
            values = OmegaConf.to_container(values, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    values = dict(values)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise MarginbenchError(
            f"unknown training option(s) {unknown}; valid keys: {', '.join(sorted(known))}"
        )
    if "eps" in values:
        values["eps"] = str(values["eps"])
    if values.get("attack_step_size") is not None:
        values["attack_step_size"] = str(values["attack_step_size"])
    return TrainConfig(**values).validate()


def _compose_error(error: BaseException) -> MarginbenchError:
    """Hydra's multi-line composition error as one line that says what to change (an
    unknown key or a wrong value, on the command line or inside a recipe file)."""
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 6:
        chain.append(cause)
    text = " ".join(str(e) for e in chain)
    recipe = re.search(r"In '(train/[^']+)'", text)
    where = f" in {config.CONFIG_DIR / recipe.group(1)}.yaml" if recipe else ""  # read now: may change
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = re.search(r"Could not override '([^']+)'|Key '([^']+)' not in", text)
    if unknown:
        key = unknown.group(1) or unknown.group(2)
        guess = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        return MarginbenchError(
            f"unknown training option {key!r}{where}{hint}; valid keys: {', '.join(sorted(known))}"
        )
    bad_value = re.search(
        r"Value '([^']*)' of type '\w+' could not be converted to (\w+).*?full_key: (\S+)", text, re.S
    )
    if bad_value:
        value, kind, key = bad_value.groups()
        return MarginbenchError(f"{key}={value}{where} is not a valid {kind.lower()}; fix the value of {key}")
    first = next((str(e).strip().splitlines()[0] for e in chain if str(e).strip()), type(error).__name__)
    return MarginbenchError(f"invalid training configuration: {first}")


def load_recipe(name: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """``configs/train/<name>.yaml`` (None: TrainConfig's defaults) with ``key=value``
    overrides, composed by Hydra over the TrainConfig schema from ``config.CONFIG_DIR``, as
    ``marginbench run`` composes its config: a typo or a wrong type fails here, in one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise MarginbenchError(f"override {bad[0]!r} must look like key=value")
    selection = []
    if name is not None:
        recipes = group_options("train")
        if name not in recipes:
            raise MarginbenchError(f"no training recipe {name!r}; choose one of {', '.join(recipes)}")
        # the recipe's keys sit at the top level, where the command line's name=... and
        # epochs=... address them; `train@_global_` is how Hydra's defaults list says so
        selection = [f"train@_global_={name}"]
    # a field named like a config group of `marginbench run` (dataset=...) is taken by Hydra
    # as a group selection and failed as "unknown training option 'dataset'", whatever its
    # value (round 10): those are set on the composed config, through the same schema
    fields = {f.name for f in dataclasses.fields(TrainConfig)}

    def late(item: str) -> str | None:  # the field such an override sets (also +dataset=, ++dataset=)
        key = item.partition("=")[0].lstrip("+")
        return key if key in fields and (config.CONFIG_DIR / key).is_dir() else None

    split = [(late(item), item) for item in overrides]
    try:
        cfg = hydra_compose(TRAIN_CONFIG_NAME, [*selection, *(item for key, item in split if key is None)])
        parser = OverridesParser.create()
        for key, item in split:
            if key is not None:  # Hydra's own value grammar: quotes stripped, null is None, as for any field
                cfg[key] = parser.parse_override(item.lstrip("+")).value()
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise _compose_error(error) from None
    return config_from_mapping(cfg)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

def load_split(dataset: str, split: str, data_dir: Path | None, download: bool = True) -> tuple[Tensor, Tensor]:
    """Whole split as (uint8 NCHW images, int64 labels), in the dataset's own order.

    File lookup and downloads are marginbench.data's (Fashion-MNIST IDX files in
    ``data_dir`` or Debian's dataset-fashion-mnist package; torchvision's CIFAR folders).
    """
    from marginbench import data as D

    data_dir = Path(data_dir) if data_dir is not None else Path("data")
    train = split == "train"
    if dataset == "fashion_mnist":
        images, labels = D._fashion_arrays(data_dir, train=train, download=download)
    elif dataset in ("cifar10", "cifar100"):
        images, labels = D._cifar_arrays(dataset, data_dir, train=train, download=download)
    else:
        raise MarginbenchError(f"no training loader for dataset {dataset!r}; use fashion_mnist, cifar10 or cifar100")
    # NHWC uint8 -> NCHW uint8 (kept as bytes: 4x less memory than float, converted per batch)
    images_t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return images_t, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def _to_float(images_u8: Tensor, device: torch.device) -> Tensor:
    return images_u8.to(device, non_blocking=True).float().div_(255.0)


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop with 4-pixel zero padding + random horizontal flip (CIFAR standard)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator).tolist()
    dy = torch.randint(0, 9, (n,), generator=generator).tolist()
    flip = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


# --------------------------------------------------------------------------------------
# Attacks used during training (and for the PGD evaluation)
# --------------------------------------------------------------------------------------


def pgd_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    *,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Untargeted L-inf PGD on the cross-entropy; returns the last iterate, in the ε-ball ∩ [0,1]."""
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
        delta = (2 * noise - 1) * eps
    else:
        delta = torch.zeros_like(x)
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()


def trades_attack(
    model: nn.Module,
    x: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """TRADES inner maximisation: PGD on KL(f(x) ‖ f(x')) from x + 0.001·N(0,1)."""
    x = x.detach()
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
    x_adv = (x + 0.001 * noise).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()


# --------------------------------------------------------------------------------------
# Losses: pure functions of logits, unit-tested on fixed tensors
# --------------------------------------------------------------------------------------


def standard_loss(logits_clean: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits_clean, y)


def pgd_at_loss(logits_adv: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits_adv, y)


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + beta * kl


def mart_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """MART (Wang et al. 2020), the reference implementation's arithmetic."""
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    # the most likely wrong class under attack
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits_clean, dim=1)
    true_probs = nat_probs.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    loss_robust = (kl * (1.0000001 - true_probs)).mean()
    return loss_adv + beta * loss_robust


def logit_pairing(logits_clean: Tensor, logits_adv: Tensor) -> Tensor:
    return torch.linalg.vector_norm(logits_adv - logits_clean, ord=2, dim=1).mean()


def alp_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, weight: float) -> Tensor:
    return F.cross_entropy(logits_adv, y) + weight * logit_pairing(logits_clean, logits_adv)


def clp_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, weight: float) -> Tensor:
    return F.cross_entropy(logits_clean, y) + weight * logit_pairing(logits_clean, logits_adv)


def _attack_for(model: nn.Module, cfg: TrainConfig, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
    was_training = model.training
    model.eval()
    # parameters need no gradient during the attack: skip their backward work
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        if cfg.loss == "trades":
            return trades_attack(model, x, cfg.eps_value, cfg.attack_steps, cfg.step_size_value, generator=gen)
        return pgd_linf(model, x, y, cfg.eps_value, cfg.attack_steps, cfg.step_size_value, generator=gen)
    finally:
        for p, flag in zip(model.parameters(), flags, strict=False):
            p.requires_grad_(flag)
        model.train(was_training)


def batch_loss(model: nn.Module, cfg: TrainConfig, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(loss, logits used for the running training accuracy) for one minibatch."""
    if cfg.loss == "standard":
        logits = model(x)
        return standard_loss(logits, y), logits
    x_adv = _attack_for(model, cfg, x, y, gen)
    if cfg.loss == "pgd":
        logits_adv = model(x_adv)
        return pgd_at_loss(logits_adv, y), logits_adv
    # two forward passes in train mode, as the reference TRADES/MART code does: with
    # BatchNorm each pass normalises with its own batch statistics
    logits_clean = model(x)
    logits_adv = model(x_adv)
    if cfg.loss == "trades":
        return trades_loss(logits_clean, logits_adv, y, cfg.beta), logits_adv
    if cfg.loss == "mart":
        return mart_loss(logits_clean, logits_adv, y, cfg.beta), logits_adv
    if cfg.loss == "alp":
        return alp_loss(logits_clean, logits_adv, y, cfg.pair_weight), logits_adv
    return clp_loss(logits_clean, logits_adv, y, cfg.pair_weight), logits_adv


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


@torch.no_grad()
def clean_accuracy(model: nn.Module, images_u8: Tensor, labels: Tensor, device, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = _to_float(images_u8[i : i + batch_size], device)
        correct += (model(x).argmax(1).cpu() == labels[i : i + batch_size]).sum().item()
    return correct / max(len(labels), 1)


def pgd_accuracy(
    model: nn.Module,
    images_u8: Tensor,
    labels: Tensor,
    eps: float,
    steps: int,
    device,
    batch_size: int = 500,
    seed: int = 0,
) -> float:
    """Accuracy under L-inf PGD (CE, step 2.5·eps/steps, one random start): an upper bound
    on robust accuracy, good enough to tell a robust model from a standard one."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = _to_float(images_u8[i : i + batch_size], device)
        y = labels[i : i + batch_size].to(device)
        x_adv = pgd_linf(model, x, y, eps, steps, 2.5 * eps / steps, generator=gen)
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == y).sum().item()
    return correct / max(len(labels), 1)


# --------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------


def _lr_at(cfg: TrainConfig, it: int, total: int, per_epoch: int) -> float:
    warm = int(cfg.warmup_epochs * per_epoch)
    if it < warm:
        return cfg.lr * (it + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        frac = it / total
        return cfg.lr * (0.1 ** (int(frac >= 0.5) + int(frac >= 0.75)))
    progress = (it - warm) / max(total - warm, 1)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def fit(
    cfg: TrainConfig,
    images_u8: Tensor,
    labels: Tensor,
    device: torch.device,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh ``cfg.arch`` on (images, labels); returns (model in eval mode, history)."""
    seed_everything(cfg.seed)
    model = build_architecture(cfg.arch, cfg.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    per_epoch = math.ceil(len(labels) / cfg.batch_size)
    history: dict[str, list] = {"epoch_loss": [], "epoch_train_acc": [], "epoch_seconds": []}
    desc = f"train {cfg.name} [{cfg.loss}]"
    with progress_bar(per_epoch * cfg.epochs, desc, enabled=cfg.progress, unit="batch") as bar:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            loss, acc = _train_epoch(model, optimizer, cfg, images_u8, labels, device, gen, epoch, bar)
            history["epoch_loss"].append(loss)
            history["epoch_train_acc"].append(acc)
            history["epoch_seconds"].append(time.perf_counter() - t0)
            if log is not None:
                msg = (f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f} "
                       f"train acc ({'adversarial' if cfg.loss != 'standard' else 'clean'}) {acc:.4f} "
                       f"{history['epoch_seconds'][-1]:.1f}s")
                if cfg.progress:
                    bar.write(msg)  # keeps the progress bar on its own line
                else:
                    log(msg)
    model.eval()
    return model, history


def _train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, images_u8: Tensor, labels: Tensor,
    device: torch.device, gen: torch.Generator, epoch: int, bar: Any,
) -> tuple[float, float]:
    """One pass over the shuffled training set; (mean loss, train accuracy) of the epoch."""
    model.train()
    n = len(labels)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = per_epoch * cfg.epochs
    order = torch.randperm(n, generator=gen)
    loss_sum, correct, seen = 0.0, 0, 0
    for b in range(per_epoch):
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        x = _to_float(images_u8[idx], device)
        if cfg.augment:
            x = _augment(x.cpu(), gen).to(device)
        y = labels[idx].to(device)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, epoch * per_epoch + b, total, per_epoch)
        loss, logits = batch_loss(model, cfg, x, y, gen)
        if not torch.isfinite(loss):
            raise MarginbenchError(
                f"training loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}; lower train.lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.update(1)
        if b % 10 == 0 or b == per_epoch - 1:
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss_sum / seen:.3f}",
                            acc=f"{correct / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
    return loss_sum / seen, correct / seen


def _subset(cfg: TrainConfig, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if cfg.n_train is None or cfg.n_train >= len(labels):
        return images, labels
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.n_train]
    return images[perm], labels[perm]


def train_model(
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    *,
    out_path: Path,
    data_dir: Path | None = None,
    evaluate: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train, evaluate (clean on the whole test split, PGD on the first ``eval_n``) and save.

    Returns the checkpoint path (``out_path``), written atomically.
    """
    cfg = cfg.validate()
    device = torch.device(device)
    if cfg.num_threads and device.type == "cpu":
        torch.set_num_threads(int(cfg.num_threads))
    train_x, train_y = _subset(cfg, *load_split(cfg.dataset, "train", data_dir))
    t0 = time.perf_counter()
    model, history = fit(cfg, train_x, train_y, device, log=log)
    train_seconds = time.perf_counter() - t0

    metrics: dict[str, Any] = {"train_seconds": round(train_seconds, 2), **history}
    if evaluate:
        t1 = time.perf_counter()
        test_x, test_y = load_split(cfg.dataset, "test", data_dir)
        n_eval = min(cfg.eval_n, len(test_y))
        metrics.update(
            clean_acc=clean_accuracy(model, test_x, test_y, device),
            n_test=len(test_y),
            clean_acc_eval_subset=clean_accuracy(model, test_x[:n_eval], test_y[:n_eval], device),
            pgd_acc=pgd_accuracy(model, test_x[:n_eval], test_y[:n_eval], cfg.eps_value, cfg.eval_steps,
                                 device, batch_size=cfg.eval_batch_size, seed=cfg.seed),
            pgd_eps=cfg.eps_value,
            pgd_steps=cfg.eval_steps,
            pgd_step_size=2.5 * cfg.eps_value / cfg.eval_steps,
            n_eval=n_eval,
            eval_seconds=round(time.perf_counter() - t1, 2),
        )
        if log is not None:
            log(f"{cfg.name}: clean acc {metrics['clean_acc']:.4f} (test {len(test_y)}), "
                f"PGD-{cfg.eval_steps} acc at eps={cfg.eps_value:g} {metrics['pgd_acc']:.4f} (first {n_eval})")
    metrics.update(device=str(device), torch=torch.__version__, host_cpu=platform.processor() or platform.machine(),
                   num_threads=torch.get_num_threads())
    data = {"dataset": cfg.dataset, "split": "train", "n_train": int(len(train_y)), "seed": cfg.seed,
            "augment": cfg.augment}
    return save_local_checkpoint(
        out_path, model, arch=cfg.arch, num_classes=cfg.num_classes, dataset=cfg.dataset,
        threat_model="Linf", train_config=asdict(cfg), data=data, metrics=_plain(metrics),
    )


def _plain(value: Any) -> Any:
    """JSON-able primitives only (checkpoints load with weights_only=True)."""
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------------------
# Entry points for the CLI and scripts
# --------------------------------------------------------------------------------------


def check_name_is_free(name: str) -> None:
    """A model the registry already knows by this name would shadow the checkpoint:
    ``marginbench run model=<name>`` resolves the registry first and would never load it.
    The paper's own models (MD0, TR0, ...: source "local") are the exception: their entry
    loads ``<model_dir>/local/<code>.pt``, the very file this writes (README: train them)."""
    from marginbench.models.registry import registry_entry

    entry = registry_entry(name)
    if entry is not None and entry.source != "local":
        raise MarginbenchError(
            f"train name={name} is taken: `marginbench run model={name}` loads the registry's {entry.code} "
            f"({entry.source}, {entry.architecture}), never the checkpoint trained here; choose another name")


def train_from_config(cfg: Any, model_dir: Path, data_dir: Path | None, device: Any = "auto") -> Path:
    """CLI entry: train from a ``train`` config node and save to ``<model_dir>/local/<name>.pt``.

    ``cfg`` is either the train node itself (a dict / DictConfig with TrainConfig keys) or a
    root config holding it under ``train``; a root-level ``name`` overrides ``train.name``.
    The saved model is then usable as ``marginbench run model=<name>``.
    """
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, TrainConfig):
        train_cfg = cfg.validate()
    else:
        cfg = dict(cfg)
        node = dict(cfg["train"]) if "train" in cfg and isinstance(cfg["train"], dict) else cfg
        if node is not cfg and cfg.get("name"):
            node["name"] = cfg["name"]
        train_cfg = config_from_mapping(node)
    check_name_is_free(train_cfg.name)
    out = Path(model_dir) / "local" / f"{train_cfg.name}.pt"
    return train_model(train_cfg, resolve_device(device), out_path=out, data_dir=data_dir)


def run_training(overrides: list[str], model_dir: Path | str = "models_cache",
                 data_dir: Path | str | None = "data", device: Any = "auto") -> Path:
    """Python entry: ``run_training(["recipe=fmnist_cnn_trades", "name=my_model", "epochs=1"])``.

    ``recipe=`` (or ``train=``) picks ``configs/train/<recipe>.yaml``; other items override
    fields (composed by :func:`load_recipe`; no recipe: TrainConfig's defaults).
    """
    recipe = None
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key in ("recipe", "train"):
            recipe = value
        else:
            rest.append(item)
    cfg = load_recipe(recipe, rest)
    check_name_is_free(cfg.name)
    out = Path(model_dir) / "local" / f"{cfg.name}.pt"
    from marginbench.settings import check_dir

    check_dir("paths.model_dir", out.parent, write=True)  # else a NotADirectoryError after the whole training
    return train_model(cfg, resolve_device(device), out_path=out, data_dir=Path(data_dir) if data_dir else None)


if __name__ == "__main__":  # python -m marginbench.train recipe=fmnist_cnn_pgd name=x
    import sys

    print(run_training(sys.argv[1:], model_dir=os.environ.get("MARGINBENCH_MODEL_DIR", "models_cache"),
                       data_dir=os.environ.get("MARGINBENCH_DATA_DIR", "data")))
