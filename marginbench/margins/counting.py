"""Per-sample cost accounting: a model wrapper that counts forward and backward passes.

Convention (documented in docs/interfaces.md terms: ``n_forward`` / ``n_backward``):

- **forward**: every row (image) that goes through the model counts as one forward pass
  for the sample that row belongs to, with or without gradients.
- **backward**: every time a gradient flows back through a row of the model's output
  counts as one backward pass for that sample. A hook on the output tensor fires once per
  ``backward()`` / ``autograd.grad`` call that reaches it, so FAB's untargeted Jacobian
  (one ``backward`` per class, ``retain_graph=True``) costs K backward passes per sample
  and per step, while a single-gradient attack (FMN, APGD, DDN) costs 1.

Attacks often work on a subset of the batch (FAB restarts only the failed samples, the
APGD eps search only the unresolved ones). The adapters announce such a subset with
:meth:`CountingModel.subset`; rows are then attributed to those samples. When the number
of rows of a call is not the size of the active subset (a library that sub-selects
internally), the call is spread evenly over the active samples (integer division, the
remainder going to the first samples), so the totals stay exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class CountingModel(nn.Module):
    """Wrap ``model``; forward is unchanged, calls are counted per sample of a batch of ``n``."""

    def __init__(self, model: nn.Module, n: int, on_pass=None):
        super().__init__()
        self.model = model
        self.n = n
        # optional on_pass(forward_rows, backward_rows) after each pass: progress reporting only
        self.on_pass = on_pass
        # backward passes one gradient call makes: m for a batched VJP (is_grads_batched), whose
        # output hook fires once for all m cotangents (set by fab.batched_input_grads)
        self.vjp_batch = 1
        self.forward_counts = torch.zeros(n, dtype=torch.int64)
        self.backward_counts = torch.zeros(n, dtype=torch.int64)
        self._active = torch.arange(n)

    @contextlib.contextmanager
    def subset(self, index: Tensor) -> Iterator[None]:
        """Rows of the following calls belong to ``active[index]`` (nestable)."""
        previous = self._active
        index = index.detach().to("cpu").long().reshape(-1)
        self._active = previous[index]
        try:
            yield
        finally:
            self._active = previous

    def _attribute(self, counts: Tensor, active: Tensor, rows: int) -> None:
        n_active = active.numel()
        if n_active == 0 or rows == 0:
            return
        if rows == n_active:
            counts.index_add_(0, active, torch.ones(n_active, dtype=torch.int64))
            return
        # rows that cannot be mapped to samples one by one: spread them evenly
        share, rest = divmod(rows, n_active)
        add = torch.full((n_active,), share, dtype=torch.int64)
        add[:rest] += 1
        counts.index_add_(0, active, add)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        rows = int(x.shape[0])
        active = self._active
        self._attribute(self.forward_counts, active, rows)
        on_pass = self.on_pass
        if on_pass is not None:
            on_pass(rows, 0)
        if out.requires_grad:
            counts = self.backward_counts

            def _hook(grad: Tensor) -> None:
                self._attribute(counts, active, rows * self.vjp_batch)
                if on_pass is not None:
                    on_pass(0, rows * self.vjp_batch)

            out.register_hook(_hook)
        return out

    def charge(self, forward, backward) -> None:
        """Add passes spent outside this wrapper (a nested estimator run on the bare model)
        to the active samples, one entry per active sample."""
        self.forward_counts.index_add_(0, self._active, torch.as_tensor(forward, dtype=torch.int64))
        self.backward_counts.index_add_(0, self._active, torch.as_tensor(backward, dtype=torch.int64))

    def reset(self) -> None:
        self.forward_counts.zero_()
        self.backward_counts.zero_()


def charged_to(model: nn.Module, index: Tensor):
    """``model.subset(index)`` when ``model`` counts passes, else a no-op: helpers that also
    run on a bare model (tests, scripts) announce their rows the same way."""
    if isinstance(model, CountingModel):
        return model.subset(index)
    return contextlib.nullcontext()


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Attacks need gradients w.r.t. the input only: skip the weight gradients.

    Input gradients are unchanged (same kernels); this only saves the parameter-gradient
    half of each backward pass and leaves ``.grad`` of the weights untouched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
