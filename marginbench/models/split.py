"""Split a classifier into a feature extractor h(x) and its linear head (w, b).

The paper's feature-space margin needs the head's weight matrix, and feature distances need
h(x) = the input of the last ``nn.Linear``. Rather than knowing every architecture, the split
is found by running the model once: every ``nn.Linear`` is watched, and the head is the last
one executed whose output *is* the model's output. ``features`` then runs the model and
returns what that Linear received. The split is verified (head(features(x)) == model(x)), so
a model whose logits are not one Linear's output (ensembles averaging members, temperature
scaling after the head ...) is rejected with a clear error instead of giving wrong margins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from marginbench.errors import MarginbenchError

# Input shapes tried, in order, when no example input is given: CIFAR, Fashion-MNIST, ImageNet.
CANDIDATE_SHAPES = ((3, 32, 32), (1, 28, 28), (3, 224, 224))
RTOL, ATOL = 1e-4, 1e-4


class _StopForward(Exception):
    pass


class LinearInputExtractor(nn.Module):
    """x -> the input of ``head`` inside ``model``, flattened to (B, D).

    The forward hook lives only for the duration of one call, so the model itself is left
    untouched; the head's own computation is skipped by stopping the forward right there.
    """

    def __init__(self, model: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.model = model
        self.head_name = next(name for name, m in model.named_modules() if m is head)

    def _head(self) -> nn.Linear:
        return self.model.get_submodule(self.head_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, args: tuple) -> None:
            captured.append(args[0])
            raise _StopForward

        handle = self._head().register_forward_pre_hook(hook)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise MarginbenchError(
                "the feature layer was not reached in the forward pass; the model's control flow changed"
            )
        h = captured[0]
        return h.reshape(h.shape[0], -1)


@dataclass
class FeatureHeadSplit:
    features: nn.Module  # x -> h(x), (B, D)
    head: nn.Linear  # h -> logits; head.weight (K, D) used for feature margins


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _trace(
    model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]]:
    calls: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls.append((module, args[0], output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, calls


def _example(model: nn.Module, device: torch.device, example_input: torch.Tensor | None):
    if example_input is not None:
        x = example_input[:4].to(device)
        return x, model(x)
    gen = torch.Generator().manual_seed(0)
    errors = []
    for shape in CANDIDATE_SHAPES:
        x = torch.rand((2, *shape), generator=gen).to(device)
        try:
            return x, model(x)
        except Exception as exc:  # wrong input shape for this model: try the next one
            errors.append(f"{shape}: {type(exc).__name__}")
    raise MarginbenchError(
        f"cannot run the model on a random batch of any usual input shape ({'; '.join(errors)}); "
        "pass example_input to split_model"
    )


def split_model(model: nn.Module, example_input: torch.Tensor | None = None) -> FeatureHeadSplit:
    """Find the linear head producing the logits and a feature extractor feeding it, verified
    on ``example_input`` (or a random batch) by head(features(x)) == model(x)."""
    device = _model_device(model)
    was_training = model.training
    model.eval()  # never update BatchNorm statistics with the probe batch
    try:
        with torch.no_grad():
            x, _ = _example(model, device, example_input)
            out, calls = _trace(model, x)
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise MarginbenchError(
                    f"the model returns {type(out).__name__} of shape {getattr(out, 'shape', '?')}, not (batch, classes) logits"
                )
            if not calls:
                raise MarginbenchError(
                    "the model has no nn.Linear layer, so its logits have no linear head to split off"
                )
            head = None
            for module, _inp, output in reversed(calls):
                if output.shape == out.shape and torch.allclose(output, out, rtol=RTOL, atol=ATOL):
                    head = module
                    break
            if head is None:
                raise MarginbenchError(
                    "the model's logits are not the output of a single nn.Linear (an ensemble or a "
                    "post-processed head?); the feature/logit split needs logits = W h(x) + b"
                )
            features = LinearInputExtractor(model, head)
            h = features(x)
            if h.shape[1] != head.in_features:
                raise MarginbenchError(
                    f"the head {type(head).__name__}({head.in_features}->{head.out_features}) is applied to "
                    f"inputs of shape {tuple(h.shape)}; the feature/logit split needs one feature vector per image"
                )
            rebuilt = head(h)
            if not torch.allclose(rebuilt, out, rtol=RTOL, atol=ATOL):
                err = (rebuilt - out).abs().max().item()
                raise MarginbenchError(
                    f"head(features(x)) differs from model(x) by up to {err:.3g}; this model's logits are not "
                    "one Linear applied to a feature vector"
                )
    finally:
        model.train(was_training)
    return FeatureHeadSplit(features=features, head=head)
