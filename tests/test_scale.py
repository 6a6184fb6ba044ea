"""Issue 15 "Margins at scale": progress within a batch, batched Jacobians, top-k FAB,
Fashion-MNIST pairs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from pyautoattack.fab_pt import FABAttack_PT
from torch import nn

from marginbench.data import fashion_pairs
from marginbench.margins import build_estimator
from marginbench.margins.counting import CountingModel
from marginbench.margins.fab import BatchedFABAttack, TopKFABAttack
from marginbench.progress import PassProgress, in_batch_share

K = 6


def tiny_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, K)
    ).eval()


@pytest.fixture(scope="module")
def batch():
    model = tiny_cnn()
    x = torch.rand(7, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_batched_jacobian_equals_loop(batch):
    model, x, y = batch
    counted = CountingModel(model, len(x))
    df1, dg1 = FABAttack_PT(counted, norm="Linf", device="cpu").get_diff_logits_grads_batch(x, y)
    loop_counts = counted.backward_counts.clone()
    counted.reset()
    df2, dg2 = BatchedFABAttack(counted, norm="Linf", device="cpu").get_diff_logits_grads_batch(x, y)
    torch.testing.assert_close(df2, df1, rtol=0, atol=0)
    torch.testing.assert_close(dg2, dg1, rtol=1e-6, atol=1e-7)
    # one batched VJP is still K backward passes per sample in the cost accounting
    assert torch.equal(counted.backward_counts, loop_counts) and int(loop_counts[0]) == K


def test_topk_batched_columns_equal_loop(batch):
    model, x, y = batch
    loop = TopKFABAttack(model, norm="Linf", device="cpu", candidates=3)
    fast = TopKFABAttack(model, norm="Linf", device="cpu", candidates=3, batched=True)
    (df1, dg1), (df2, dg2) = loop.get_diff_logits_grads_batch(x, y), fast.get_diff_logits_grads_batch(x, y)
    assert dg2.shape == (len(x), 3, *x.shape[1:])
    torch.testing.assert_close(df2, df1)
    torch.testing.assert_close(dg2, dg1, rtol=1e-6, atol=1e-7)


def attack(name: str, **options):
    return {"name": name, "steps": 15, "restarts": 1, "refine": False, "options": options}


def test_fab_batched_margins_equal_library(batch):
    model, x, y = batch
    loop = build_estimator(attack("fab"), "Linf")(model, x, y)
    fast = build_estimator(attack("fab", jacobian="batched"), "Linf")(model, x, y)
    np.testing.assert_allclose(fast.margin, loop.margin, rtol=1e-5)
    np.testing.assert_array_equal(fast.n_backward, loop.n_backward)


def test_topk_with_all_runner_ups_is_full_fab(batch):
    """m = K-1 candidates linearise every class FAB does: same margins (up to rounding:
    the columns are grad(f_j - f_y) instead of grad f_j - grad f_y)."""
    model, x, y = batch
    full = build_estimator(attack("fab"), "Linf")(model, x, y)
    topk = build_estimator(attack("fab_topk", candidates=K - 1), "Linf")(model, x, y)
    assert full.success.all() and topk.success.all()
    np.testing.assert_allclose(topk.margin, full.margin, rtol=1e-4)
    assert (topk.n_backward < full.n_backward).all()  # K-1 instead of K gradients per step


@pytest.mark.parametrize("jacobian", ["loop", "batched"])
def test_fab_candidates_caps_the_classes_linearised_per_step(batch, jacobian):
    """fab's options.candidates: at K - 1 or more it is the library's full Jacobian, bit for
    bit and pass for pass; below, each step linearises that many runner-up classes with the
    library's own column arithmetic, m + 1 backward passes a step."""
    model, x, y = batch
    full = build_estimator(attack("fab", jacobian=jacobian), "Linf")(model, x, y)
    for cap in (K - 1, K + 20):
        every = build_estimator(attack("fab", jacobian=jacobian, candidates=cap), "Linf")(model, x, y)
        np.testing.assert_array_equal(every.margin, full.margin)
        assert torch.equal(every.x_adv, full.x_adv)
        np.testing.assert_array_equal(every.n_backward, full.n_backward)
        np.testing.assert_array_equal(every.n_forward, full.n_forward)
    capped = build_estimator(attack("fab", jacobian=jacobian, candidates=2), "Linf")(model, x, y)
    topk = build_estimator(attack("fab_topk", jacobian=jacobian, candidates=2), "Linf")(model, x, y)
    assert capped.success.all()
    assert (capped.n_backward < full.n_backward).all()  # 3 gradients a step instead of K = 6
    assert (capped.n_backward > topk.n_backward).all()  # fab_topk: 2, grad (f_j - f_y) directly


@pytest.mark.parametrize("batched", [False, True])
def test_library_columns_are_the_library_jacobian_columns_bit_for_bit(batch, batched):
    """TopKFABAttack(library_columns=True): each of its m columns equals the library's
    column for that class exactly (so FAB's step is the same whenever its choice is among
    them); the direct grad (f_j - f_y) columns only agree to rounding."""
    model, x, y = batch
    df, dg = FABAttack_PT(model, norm="Linf", device="cpu").get_diff_logits_grads_batch(x, y)
    with torch.no_grad():
        others = model(x)
    u = torch.arange(len(x))
    others[u, y] = -float("inf")
    cand = others.topk(3, dim=1).indices
    exact = TopKFABAttack(model, norm="Linf", device="cpu", candidates=3, library_columns=True, batched=batched)
    tdf, tdg = exact.get_diff_logits_grads_batch(x, y)
    assert torch.equal(tdf, df.gather(1, cand))
    assert torch.equal(tdg, dg[u.unsqueeze(1), cand])
    direct = TopKFABAttack(model, norm="Linf", device="cpu", candidates=3)
    _, ddg = direct.get_diff_logits_grads_batch(x, y)
    torch.testing.assert_close(ddg, tdg, rtol=1e-5, atol=1e-6)


def test_progress_hook_fires_and_leaves_margins_alone(batch):
    model, x, y = batch
    plain = build_estimator(attack("fab", refine_steps=3), "Linf")(model, x, y)
    est = build_estimator(attack("fab", refine_steps=3), "Linf")
    calls = []
    est.on_pass = lambda name, f, b: calls.append((name, f, b))
    hooked = est(model, x, y)
    np.testing.assert_array_equal(hooked.margin, plain.margin)
    assert torch.equal(hooked.x_adv, plain.x_adv)
    assert {c[0] for c in calls} == {"fab"}
    # the hook sees exactly the passes the counters record
    assert sum(c[1] for c in calls) == hooked.n_forward.sum()
    assert sum(c[2] for c in calls) == hooked.n_backward.sum()


class FakeBar:
    def __init__(self):
        self.n, self.shown = 0.0, []

    def update(self, d):
        self.n += d

    def refresh(self):
        self.shown.append(self.n)

    def set_postfix_str(self, *a, **k):
        pass


def test_pass_progress_moves_within_a_batch_and_learns():
    bar = FakeBar()
    prog = PassProgress(bar, "margins", expected_per_sample=10, interval=0.0, heartbeat_s=0)
    prog.start_batch(0, 4)
    for _ in range(20):  # half the expected 40 passes
        prog("fab", 1, 0)
    assert bar.n == pytest.approx(2.0)
    for _ in range(100):  # far beyond the estimate: creeps, never completes the batch
        prog("fab", 1, 0)
    assert 3.6 < bar.n < 4.0
    prog.finish_batch()
    assert bar.n == 4.0 and prog.expected == 30.0  # 120 passes / 4 samples
    assert in_batch_share(0.5) == 0.5 and in_batch_share(2.0) < 1.0


def test_heartbeat_redraws_while_a_pass_is_running():
    bar = FakeBar()
    prog = PassProgress(bar, "margins", expected_per_sample=10, heartbeat_s=0.05)
    prog.start_batch(0, 4)
    time.sleep(0.3)  # no pass reported: only the heartbeat can redraw
    prog.finish_batch()
    assert len(bar.shown) >= 2


def test_heartbeat_redraws_once_a_heartbeat_after_any_redraw():
    """The heartbeat counts its own redraws: after a redraw at t, the next one is due at
    t + heartbeat_s, not later (so the longest gap is one heartbeat plus one check)."""
    bar = FakeBar()
    prog = PassProgress(bar, "margins", expected_per_sample=10, heartbeat_s=5.0)
    prog.last = prog.last_draw = 100.0  # a pass redrew the bar at t = 100
    assert [prog.beat_once(t) for t in (104.9, 105.0, 105.5, 109.9, 110.0)] == [False, True, False, False, True]
    assert len(bar.shown) == 2
    # a heartbeat does not throttle the passes: the next pass still moves the bar
    prog.interval, prog.last = 1.0, 0.0
    prog.start_batch(0, 4)
    prog.beat_once(time.monotonic() + 60)
    prog("fab", 20, 0)  # half the expected 40 passes
    assert bar.n == pytest.approx(2.0)


def test_a_pass_draws_the_bar_once_not_twice_into_a_log_file():
    """tqdm's update draws the bar when it moves far enough; the redraw after it must not
    draw the same line again (in a log file, without a terminal's carriage return, every
    line appeared twice)."""
    import io

    from tqdm import tqdm

    out = io.StringIO()
    with tqdm(total=4, file=out, mininterval=0, miniters=1, ascii=True, bar_format="{n:.2f}/{total}") as bar:
        prog = PassProgress(bar, "margins", expected_per_sample=10, interval=0.0, heartbeat_s=0)
        prog.start_batch(0, 4)
        for _ in range(3):  # a quarter of the batch's expected passes each: update draws
            prog("fab", 10, 0)
        for _ in range(2):  # a fortieth each: below miniters, update does not draw, refresh does
            prog("fab", 1, 0)
        drawn = [line for line in out.getvalue().split("\r") if line.strip()]
    assert drawn[:6] == ["0.00/4", "1.00/4", "2.00/4", "3.00/4", "3.10/4", "3.20/4"], drawn


def test_fashion_pairs_labels():
    images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2, 1)
    labels = np.arange(10) % 10
    pairs, pair_labels = fashion_pairs(images, labels, "test")
    assert pairs.shape == (10, 2, 4, 1)
    right = [int(np.flatnonzero((images == pairs[i, :, 2:]).all(axis=(1, 2, 3)))[0]) for i in range(10)]
    np.testing.assert_array_equal(pairs[:, :, :2], images)
    np.testing.assert_array_equal(pair_labels, 10 * labels + labels[right])
    _, left = fashion_pairs(images, labels, "test", left_only=True)
    np.testing.assert_array_equal(left, labels)
    again, _ = fashion_pairs(images, labels, "test")
    assert np.array_equal(again, pairs)  # deterministic pairing
