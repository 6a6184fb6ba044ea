"""Progress bars with an ETA for long work (tqdm), silent when ``progress=false``.

A margin batch can take many minutes (FAB on a ResNet-18, 100 samples: ~26 min on two CPU
cores), so :class:`PassProgress` also moves the bar *within* a batch: every forward /
backward pass the estimator makes is reported to it (``CountingModel(on_pass=...)``), and
the bar advances by the share of the passes the batch is expected to cost. That expectation
is learned from the finished batches of the run, and for the first batch estimated from the
estimator's budget (:func:`budget_passes`). Only counters are touched, never a tensor, so
margins are unchanged.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# "12.4/100" would be noise: fractional progress is shown rounded to whole samples
BAR_FORMAT = "{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
# within a batch the bar moves linearly with the passes up to this share, then creeps towards
# (never reaches) the batch's end: the expected cost is only an estimate
LINEAR_UP_TO = 0.9


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool, unit: str = "sample") -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, smoothing=0.1,
               bar_format=BAR_FORMAT)
    try:
        yield bar
    finally:
        bar.close()


def budget_passes(spec: Any, n_classes: int) -> float:
    """Rough forward + backward passes per sample an estimator's budget allows (an upper-ish
    guess: FAB restarts only touch unbroken samples and polishing stops early, so they are
    counted once / at half their budget). Only used to move the first batch's bar."""
    name, steps = spec.name, spec.steps
    opts = spec.options
    if name in ("fab", "fab_topk"):
        # fab: the full Jacobian (K gradients) unless options.candidates caps it below K - 1
        if name == "fab_topk":
            grads = min(int(opts.get("candidates", 3)), n_classes - 1)
        else:
            cap = opts.get("candidates")
            grads = n_classes if cap is None or int(cap) >= n_classes - 1 else int(cap) + 1  # + grad f_y
        passes = steps * (grads + 2)
    elif name == "fab_targeted":
        passes = steps * 3 * int(opts.get("n_target_classes", n_classes - 1))
    elif name == "apgd_bisect":
        passes = steps * 2 * int(opts.get("search_steps", 10))
    else:  # one gradient per step: fmn, ddn, alma
        passes = steps * 2
    # polish (~half of its 2 passes per step), projection (3 steps x 2 classes x 3 passes per
    # round, stopping early: counted once) and bisection, also paid by every multi-start candidate
    finish = (spec.polish_rounds * spec.polish_steps + (18 if spec.polish_project > 0 else 0)
              + (spec.refine_steps if spec.refine else 0))
    passes += finish
    starts = spec.multistart
    if starts is not None:  # one round, each candidate: targeted FAB (~3 passes a step) + finish
        passes += min(starts.targets, n_classes - 1) * (3 * starts.steps + finish)
        if starts.order == "linear":  # one gradient per ranked class, once
            from marginbench.margins.multistart import (
                linear_pool,  # here: this module stays torch-free
            )

            passes += min(linear_pool(starts.targets), n_classes - 1) + 1
    return float(passes + 2)


def in_batch_share(fraction: float) -> float:
    """Expected-cost fraction done -> share of the batch shown: linear, then asymptotic to 1."""
    if fraction <= LINEAR_UP_TO:
        return fraction
    rest = 1.0 - LINEAR_UP_TO
    return LINEAR_UP_TO + rest * (1.0 - math.exp(-(fraction - LINEAR_UP_TO) / rest))


class PassProgress:
    """Advance ``bar`` within a batch from the passes reported by the estimator's counters,
    throttled to one refresh per ``interval`` seconds; log which member is running."""

    def __init__(self, bar: Any, label: str, expected_per_sample: float, log: logging.Logger | None = None,
                 interval: float = 1.0, heartbeat_s: float = 5.0):
        self.bar, self.label, self.log, self.interval = bar, label, log, interval
        self.heartbeat_s = heartbeat_s
        self._stop: threading.Event | None = None
        self.expected = max(float(expected_per_sample), 1.0)
        self.size = 0
        self.base = float(bar.n)
        self.passes = 0
        self.member = ""
        self.last = 0.0  # last progress update from a pass (throttles __call__)
        self.last_draw = 0.0  # last redraw, a pass's or the heartbeat's (schedules the heartbeat)

    def start_batch(self, first: int, size: int) -> None:
        self.size, self.passes, self.member = size, 0, ""
        self.base = float(self.bar.n)
        self.first = first
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        """One pass can itself take tens of seconds (a ResNet-18 backward of 100 rows on a
        busy CPU core): a daemon thread redraws the bar (elapsed time, ETA) whenever nothing
        has redrawn it for ``heartbeat_s`` seconds, so the bar never looks stuck. It checks
        every ``heartbeat_s / 10`` seconds: the longest gap between redraws is ~1.1 heartbeats
        (the first version checked once a heartbeat and left gaps of up to 2)."""
        if self.heartbeat_s <= 0 or getattr(self.bar, "disable", False):
            return
        self._stop = threading.Event()

        def beat(stop: threading.Event = self._stop) -> None:
            while not stop.wait(self.heartbeat_s / 10):
                self.beat_once(time.monotonic())

        threading.Thread(target=beat, name="marginbench-progress", daemon=True).start()

    def beat_once(self, now: float) -> bool:
        """Redraw when the last redraw (a pass's or a heartbeat's) is ``heartbeat_s`` old.
        It leaves ``last`` alone: a pass right after a heartbeat still moves the bar."""
        if now - self.last_draw < self.heartbeat_s:
            return False
        self.last_draw = now
        self.bar.refresh()
        return True

    def __call__(self, member: str, forward_rows: int, backward_rows: int) -> None:
        self.passes += forward_rows + backward_rows
        if member != self.member:
            self.member = member
            if self.log is not None:
                self.log.info("%s: samples %d-%d: running %s", self.label, self.first, self.first + self.size - 1,
                              member)
            self.bar.set_postfix_str(member, refresh=False)
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = self.last_draw = now
        share = in_batch_share(self.passes / (self.expected * max(self.size, 1)))
        # always redraw: tqdm's miniters can swallow a small fractional step, and a bar whose
        # elapsed time still ticks shows the run is alive even when the estimate ran out; but
        # only once (update returns True when it drew: a second draw doubles every line of a
        # log file, where no carriage return overwrites it)
        if not self.bar.update(self.base + share * self.size - self.bar.n):
            self.bar.refresh()

    def finish_batch(self) -> None:
        """Snap the bar to the batch's end and learn the cost per sample for the next one."""
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        if self.size:
            self.expected = max(self.passes / self.size, 1.0)
        self.bar.update(self.base + self.size - self.bar.n)
        self.size = 0


ESCALATION_PREFIX = "escalation: "  # how the bar and the log name a failure-escalation family


def attach(estimator: Any, hook: Any) -> None:
    """Give ``estimator`` (or each member of an ensemble) the per-pass hook, and each family
    of a failure escalation (margins/escalate.py) one that names it as such: the families
    run only on the base's failures, but a Square search on them can take minutes, and
    without a hook of their own the bar went on naming the base and the log said nothing."""
    for member in getattr(estimator, "members", [estimator]):
        member.on_pass = hook
    for family in getattr(estimator, "families", []):
        family.on_pass = lambda name, forward_rows, backward_rows: hook(
            ESCALATION_PREFIX + name, forward_rows, backward_rows)


def estimator_budget(estimator: Any, n_classes: int) -> float:
    return sum(budget_passes(m.spec, n_classes) for m in getattr(estimator, "members", [estimator]))
