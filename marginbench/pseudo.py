"""Pseudo-margin learner (paper Table 2): a small MLP that predicts the input margin.

Two variants (PseudoConfig.variant):

* ``"code"`` -- the authors' code as actually run (notebook/modeling.py ``CNET``):
  input = the K logits, target = sqrt(d_in), ``Linear(K,h) -> Linear(h,h) -> ReLU ->
  Linear(h,h) -> ReLU -> Linear(h,1) -> sigmoid`` (4 Linear layers, ReLU after the 2nd and
  3rd only: there is no activation after the first one), Adam, MSE, full batch, 80/20 split
  with ``train_test_split(random_state=split_seed)``. Inputs are used raw, as in the code.
* ``"text"`` -- the paper's description: input = penultimate features (standardised with the
  training split's mean/std), 5 dense layers of width h (ReLU after each hidden one),
  sigmoid output, MSE. The paper calls the target "learning-to-rank" without defining it; we
  use the same sqrt(d_in) target as the code (monotone, so rank-equivalent to d_in).

Samples whose attack failed (d_in = +inf, or nan) are excluded from training. The sigmoid
output lives in (0, 1): targets already below 0.9 (the authors' CIFAR L∞ case, sqrt(d_in) <
0.5) are used unscaled; otherwise they are divided by ``max / 0.9`` and the scale is recorded.
``predict`` returns values in input-margin units ((sigmoid * scale) ** 2).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from marginbench.config import PseudoConfig
from marginbench.errors import MarginbenchError

_SIGMOID_CEILING = 0.9
MIN_TRAIN_SAMPLES = 10


def build_network(variant: str, in_features: int, hidden: int) -> nn.Sequential:
    """The MLP of each variant (see module docstring)."""
    if variant == "code":
        layers: list[nn.Module] = [
            nn.Linear(in_features, hidden),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        ]
    elif variant == "text":
        layers = [nn.Linear(in_features, hidden), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, 1))
    else:
        raise MarginbenchError(
            f"pseudo.variant={variant!r} is unknown; use pseudo.variant=code or pseudo.variant=text"
        )
    layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


@dataclass
class PseudoMarginModel:
    """A trained pseudo-margin network plus everything needed to apply it again."""

    variant: str
    in_features: int
    hidden: int
    target_scale: float
    input_mean: np.ndarray | None
    input_std: np.ndarray | None
    network: nn.Module
    history: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def _prepare(self, inputs: np.ndarray) -> torch.Tensor:
        x = np.asarray(inputs, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise MarginbenchError(
                f"pseudo-margin model expects inputs of shape (N, {self.in_features}), got "
                f"{x.shape}; use the same kind of inputs (logits or features) it was trained on"
            )
        if self.input_mean is not None:
            x = (x - self.input_mean) / self.input_std
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    @torch.no_grad()
    def predict_raw(self, inputs: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """The sigmoid output in (0, 1) (the scaled sqrt-margin the network was trained on)."""
        x = self._prepare(inputs)
        device = next(self.network.parameters()).device
        self.network.eval()
        outs = [
            self.network(x[i : i + batch_size].to(device)).squeeze(1).cpu()
            for i in range(0, len(x), batch_size)
        ]
        if not outs:
            return np.zeros(0, dtype=np.float64)
        return torch.cat(outs).double().numpy()

    def predict(self, inputs: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Pseudo-margins in input-margin units (float64, >= 0)."""
        return (self.predict_raw(inputs, batch_size) * self.target_scale) ** 2

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`from_state` needs (torch tensors + plain values; torch.save-able)."""
        return {
            "variant": self.variant,
            "in_features": self.in_features,
            "hidden": self.hidden,
            "target_scale": self.target_scale,
            "input_mean": None if self.input_mean is None else self.input_mean.tolist(),
            "input_std": None if self.input_std is None else self.input_std.tolist(),
            "network": {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()},
            "history": copy.deepcopy(self.history),
            "config": dict(self.config),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str | None = None):
        net = build_network(state["variant"], int(state["in_features"]), int(state["hidden"]))
        net.load_state_dict(state["network"])
        net.to(torch.device(device) if device is not None else torch.device("cpu")).eval()
        mean = state.get("input_mean")
        std = state.get("input_std")
        return cls(
            variant=state["variant"],
            in_features=int(state["in_features"]),
            hidden=int(state["hidden"]),
            target_scale=float(state["target_scale"]),
            input_mean=None if mean is None else np.asarray(mean, dtype=np.float32),
            input_std=None if std is None else np.asarray(std, dtype=np.float32),
            network=net,
            history=state.get("history", {}),
            config=state.get("config", {}),
        )


def _config_dict(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, PseudoConfig):
        return asdict(cfg)
    try:  # an OmegaConf DictConfig
        from omegaconf import OmegaConf

        return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - plain objects with attributes
        return {k: getattr(cfg, k) for k in PseudoConfig.__dataclass_fields__ if hasattr(cfg, k)}


def _finite_training_pairs(inputs: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(inputs, margins, n excluded): rows whose margin is +inf (a failed attack) or whose
    inputs are not finite say nothing about the margin and are left out."""
    x = np.asarray(inputs, dtype=np.float32)
    d = np.asarray(margins, dtype=np.float64).ravel()
    if x.ndim != 2 or len(x) != len(d):
        raise MarginbenchError(
            f"pseudo-margin inputs {x.shape} and margins {d.shape} do not match; pass one row "
            "of logits/features per margin"
        )
    keep = np.isfinite(d) & (d >= 0) & np.isfinite(x).all(axis=1)
    if int(keep.sum()) < MIN_TRAIN_SAMPLES:
        raise MarginbenchError(
            f"only {int(keep.sum())} training samples have a finite input margin; raise pseudo.n_train "
            "or use a stronger attack"
        )
    return x[keep], d[keep], int((~keep).sum())


def _train_val_split(n: int, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(n)
    if 0 < val_fraction < 1:
        tr_idx, va_idx = train_test_split(idx, test_size=val_fraction, random_state=split_seed)
        return tr_idx, va_idx
    return idx, idx[:0]


def _fit(
    net: nn.Module, x: np.ndarray, target: np.ndarray, tr_idx: np.ndarray, va_idx: np.ndarray,
    lr: float, epochs: int, dev: torch.device,
) -> dict[str, Any]:
    """Full-batch Adam on MSE; the history of train and validation losses."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    xt = torch.from_numpy(x).to(dev)
    yt = torch.from_numpy(target.astype(np.float32)).to(dev).unsqueeze(1)
    tr = torch.from_numpy(tr_idx).to(dev)
    va = torch.from_numpy(va_idx).to(dev)
    train_loss: list[float] = []
    val_loss: list[float] = []
    for _ in range(epochs):
        net.train()
        opt.zero_grad()
        loss = loss_fn(net(xt[tr]), yt[tr])
        loss.backward()
        opt.step()
        train_loss.append(float(loss.detach()))
        if len(va_idx):
            net.eval()
            with torch.no_grad():
                val_loss.append(float(loss_fn(net(xt[va]), yt[va])))
    net.eval()
    with torch.no_grad():
        final_train = float(loss_fn(net(xt[tr]), yt[tr]))
    return {
        "train_mse": train_loss,
        "val_mse": val_loss,
        "final_train_mse": final_train,
        "initial_train_mse": train_loss[0] if train_loss else float("nan"),
        "n_train": int(len(tr_idx)),
        "n_val": int(len(va_idx)),
    }


def train_pseudo_margin(
    inputs: np.ndarray,
    margins: np.ndarray,
    cfg: PseudoConfig,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> PseudoMarginModel:
    """Fit the pseudo-margin network of ``cfg.variant`` on (inputs, input margins).

    ``inputs`` are the logits ("code") or penultimate features ("text") of the held-out
    training images, ``margins`` their input margins (+inf where the attack failed; those are
    excluded). Full-batch Adam for ``cfg.epochs`` epochs on MSE; ``history`` records the train
    and validation MSE (in scaled-target units) per epoch. Deterministic given ``seed``
    (the split uses ``cfg.split_seed``, as the authors' ``random_state=0``).
    """
    c = _config_dict(cfg)
    variant = str(c.get("variant", "code"))
    x, d, n_excluded = _finite_training_pairs(inputs, margins)
    target = np.sqrt(d)
    t_max = float(target.max())
    scale = 1.0 if t_max <= _SIGMOID_CEILING else t_max / _SIGMOID_CEILING
    target = target / scale
    tr_idx, va_idx = _train_val_split(len(d), float(c.get("val_fraction", 0.2)), int(c.get("split_seed", 0)))
    mean = std = None
    if variant == "text":  # features are standardised on the training part only
        mean = x[tr_idx].mean(axis=0)
        std = x[tr_idx].std(axis=0)
        std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
        x = (x - mean) / std
    dev = torch.device(device) if device is not None else torch.device("cpu")
    hidden = int(c.get("hidden", 512))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        net = build_network(variant, x.shape[1], hidden).to(dev)
    history = _fit(net, x, target, tr_idx, va_idx, float(c.get("lr", 1e-4)), int(c.get("epochs", 500)), dev)
    history.update(n_excluded_failed=n_excluded, seed=int(seed))
    return PseudoMarginModel(
        variant=variant,
        in_features=int(x.shape[1]),
        hidden=hidden,
        target_scale=float(scale),
        input_mean=mean,
        input_std=std,
        network=net,
        history=history,
        config=c,
    )
