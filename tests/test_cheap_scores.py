"""Cheap scores: closed-form values and the leaderboard's conventions."""

import numpy as np
import pandas as pd
import pytest

from marginbench import cheap_scores


def test_softmax_scores_known_answers():
    # logits [log 3, 0, 0] -> p = [0.6, 0.2, 0.2]; uniform row -> margin 0, entropy log 3
    z = np.array([[np.log(3.0), 0.0, 0.0], [1.0, 1.0, 1.0], [1000.0, 0.0, 0.0]])
    s = cheap_scores.softmax_scores(z)
    assert s["prob_margin"] == pytest.approx([0.4, 0.0, 1.0])
    assert s["max_softmax"] == pytest.approx([0.6, 1 / 3, 1.0])
    ent = -(0.6 * np.log(0.6) + 2 * 0.2 * np.log(0.2))
    assert s["neg_entropy"] == pytest.approx([-ent, -np.log(3), 0.0])  # huge logits stay finite


def test_leaderboard_orders_a_perfect_and_a_reversed_score():
    rng = np.random.default_rng(0)
    d_in = rng.random(200)
    samples = pd.DataFrame({"input_margin": d_in, "logit_margin": 3 * d_in, "max_softmax": -d_in})
    board = cheap_scores.leaderboard(samples, 0.3)
    assert list(board) == ["logit_margin", "max_softmax"]
    assert board["logit_margin"]["auroc"] == 1 and board["logit_margin"]["kendall_tau"] == 1
    assert board["max_softmax"]["auroc"] == 0 and board["max_softmax"]["cost"]["extra_backward"] == 0


def test_write_leaderboard(tmp_path):
    from marginbench.report.scores import write_leaderboard

    board = {"logit_margin": {"kendall_tau": 0.5, "auroc": 0.9, "aupr": 0.8, "fpr_at_95": 0.3,
                              "cost": {"extra_forward": 0, "extra_backward": 0}}}
    paths = write_leaderboard({"runA": board}, tmp_path)
    assert all(p.exists() for p in paths)
    assert "| runA | logit_margin | 0.50 | 90.00 | 80.00 | 30.00 | 0 |" in (tmp_path / "scores.md").read_text()


@pytest.mark.parametrize("norm, q", [("Linf", 1), ("L2", 2)])
def test_first_order_margin_of_a_linear_model_is_its_exact_boundary_distance(norm, q):
    """For f(x) = Wx + b the linearisation is exact: the first-order margin over all runner-up
    classes is min_j (f_y - f_j) / ||w_y - w_j||_q (q the dual norm), the closed form."""
    import torch

    from marginbench.stages.scores import ScoreParams, gradient_scores

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).double()
    x = torch.rand(6, 3, 2, 2, dtype=torch.float64)
    out = gradient_scores(net, x, ScoreParams(norm, candidates=3))  # 3 = every other class
    w, b = net[1].weight.detach().numpy(), net[1].bias.detach().numpy()
    logits = x.flatten(1).numpy() @ w.T + b
    pred = logits.argmax(1)
    expected, grad_norm = [], []
    for i, y in enumerate(pred):
        others = [j for j in range(4) if j != y]
        dist = [(logits[i, y] - logits[i, j]) / np.linalg.norm(w[y] - w[j], ord=q) for j in others]
        expected.append(min(dist))
        runner_up = max(others, key=lambda j: logits[i, j])
        grad_norm.append(-np.linalg.norm(w[y] - w[runner_up], ord=q))
    np.testing.assert_allclose(out["first_order_margin"], expected, rtol=1e-9)
    np.testing.assert_allclose(out["neg_grad_norm"], grad_norm, rtol=1e-9)
    assert (out["n_backward"] == 3).all() and (out["seconds"] >= 0).all()
