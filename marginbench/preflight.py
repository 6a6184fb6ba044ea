"""Pre-flight checks on a freshly loaded model, before any attack (as AutoAttack does).

An attack on a model that returns NaN, probabilities, the wrong number of classes, or
different outputs on every call runs to the end and caches numbers that mean nothing. One
small batch through the model catches each of these in well under a second, so the run
stops with one line saying what to fix, before anything is written to the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marginbench.errors import MarginbenchError

# Two forward passes of the same batch in eval mode must agree to this: float32 noise of
# nondeterministic GPU kernels passes, dropout or noise injection (differences ~1) does not.
DETERMINISM_RTOL, DETERMINISM_ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class PreflightSpec:
    """What the run expects of the model: its name for messages, an example batch of the
    evaluated images, the entry's number of classes and the largest label in the data."""

    name: str
    example: torch.Tensor
    num_classes: int | None
    max_label: int | None = None


def run_preflight(model: torch.nn.Module, spec: PreflightSpec, device: torch.device) -> None:
    """Raise MarginbenchError (one line with the fix) on the first check that fails."""
    x = spec.example[:4].to(device)
    with torch.no_grad():
        out = model(x)
        again = model(x)
    check_output(out, spec)
    if not torch.allclose(out, again, rtol=DETERMINISM_RTOL, atol=DETERMINISM_ATOL):
        diff = (out - again).abs().max().item()
        raise MarginbenchError(
            f"{spec.name} gives different outputs for the same input in eval mode (up to {diff:.3g} apart); "
            "margins would not be reproducible: remove dropout/randomness at eval time or seed it in the factory"
        )
    check_gradients(model, x, spec)


def check_output(out: object, spec: PreflightSpec) -> None:
    """Finite (batch, classes) logits whose count matches the config and the labels."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise MarginbenchError(
            f"{spec.name} returns {type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}; "
            "it must return one (batch, classes) tensor of logits"
        )
    if not torch.isfinite(out).all():
        raise MarginbenchError(
            f"{spec.name} returns non-finite outputs (NaN or inf) on the first images; "
            "fix the model (weights, normalisation) before attacking it"
        )
    classes = out.shape[1]
    if spec.num_classes and classes != spec.num_classes:
        raise MarginbenchError(
            f"{spec.name} has {classes} outputs but model.num_classes={spec.num_classes}; "
            f"set model.num_classes={classes} or fix the model's last layer"
        )
    if spec.max_label is not None and spec.max_label >= classes:
        raise MarginbenchError(
            f"the data has labels up to {spec.max_label} but {spec.name} has {classes} outputs; wrong dataset or model?"
        )
    rows_sum_to_one = torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-4)
    if classes > 1 and bool((out >= 0).all() and (out <= 1).all()) and rows_sum_to_one:
        raise MarginbenchError(
            f"{spec.name} returns probabilities (rows in [0,1] summing to 1): its last layer is a softmax; "
            "remove the softmax so the model returns logits (margins are measured on logits)"
        )


def check_gradients(model: torch.nn.Module, x: torch.Tensor, spec: PreflightSpec) -> None:
    """Gradient-based attacks need finite, non-zero input gradients of the top logit."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        top = out.gather(1, out.argmax(1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(top, x, allow_unused=True)
    if grad is None or not bool((grad != 0).any()):
        raise MarginbenchError(
            f"{spec.name}'s outputs have zero gradient with respect to the input (detached or non-differentiable "
            "input path); gradient attacks cannot run: make the forward pass differentiable in the input"
        )
    if not torch.isfinite(grad).all():
        raise MarginbenchError(
            f"{spec.name} has non-finite input gradients (NaN or inf) on the first images; fix the model before attacking it"
        )
