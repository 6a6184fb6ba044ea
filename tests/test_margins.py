"""Input-margin estimators: closed-form oracles, FAB parity, verification, costs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from pyautoattack.fab_pt import FABAttack_PT
from torch import nn

from marginbench.config import AttackConfig, attack_label, attack_preset, group_options
from marginbench.errors import MarginbenchError
from marginbench.margins import DEFAULT_ATTACK, ESTIMATORS, MarginBatch, build_estimator, verify
from marginbench.margins.base import (
    BACKOFF_FACTORS,
    OPTION_RULES,
    AttackSpec,
    Estimator,
    check_options,
)
from marginbench.margins.counting import CountingModel

ROOT = Path(__file__).resolve().parents[1]


def attack_config(name: str, **overrides) -> AttackConfig:
    return AttackConfig(**{**attack_preset(name), **overrides})


# ----------------------------------------------------------------------------- fixtures

D_SHAPE = (3, 4, 4)
K = 10


@pytest.fixture(scope="module")
def linear():
    """nn.Linear on flattened inputs, inputs well inside the box, closed-form margins."""
    torch.manual_seed(0)
    d = int(np.prod(D_SHAPE))
    lin = nn.Linear(d, K)
    with torch.no_grad():  # f(x) = W (x - 0.5): predictions spread over the classes
        lin.weight.normal_()
        lin.bias.copy_(-0.5 * lin.weight.sum(1))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.4 + 0.2 * torch.rand(12, *D_SHAPE)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, lin, x, y


def exact_margin(lin: nn.Linear, model: nn.Module, x, y, norm: str) -> np.ndarray:
    """min_j (f_y - f_j) / ||w_y - w_j||_q, q the dual norm (1 for Linf, 2 for L2)."""
    W, q = lin.weight.detach().double(), (1 if norm == "Linf" else 2)
    with torch.no_grad():
        f = model(x).double()
    out = []
    for i in range(len(x)):
        yi = int(y[i])
        out.append(min(
            float((f[i, yi] - f[i, j]) / torch.linalg.vector_norm(W[yi] - W[j], ord=q))
            for j in range(K) if j != yi
        ))
    return np.array(out)


class ConstantModel(nn.Module):
    """Same logits whatever the input (a zero-gradient function of x)."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(1.0, 0.0, K))

    def forward(self, x):
        return self.logits.expand(x.shape[0], K) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def small_cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, K)
    ).eval()


# ----------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("name", [DEFAULT_ATTACK, "fab"])
def test_linear_closed_form(linear, norm, name):
    model, lin, x, y = linear
    exact = exact_margin(lin, model, x, y, norm)
    assert exact.max() < 0.2  # the closest boundary point lies inside the box
    res = build_estimator(attack_config(name), norm)(model, x, y)
    assert res.success.all()
    ratio = res.margin / exact
    assert (ratio >= 1 - 1e-4).all(), ratio  # an upper bound: never below the exact margin
    assert (ratio <= 1.01).all(), ratio  # within 1% on every sample


def test_fab_is_the_library_call(linear):
    """attack=fab returns exactly what FABAttack_PT(eps=inf).perturb(x, y_pred) returns."""
    model = small_cnn()
    x = torch.rand(6, *D_SHAPE)
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = attack_config("fab", steps=15)
    res = build_estimator(cfg, "Linf")(model, x, y)
    direct = FABAttack_PT(model, norm="Linf", n_restarts=cfg.restarts, n_iter=15, eps=float("inf"),
                          seed=0, device=x.device).perturb(x, y)
    ref = (direct - x).abs().flatten(1).amax(1).double().numpy()
    assert res.success.all()
    np.testing.assert_array_equal(res.x_adv.numpy(), direct.numpy())
    np.testing.assert_allclose(res.margin, ref, rtol=1e-6)


def test_fab_restarts_match_library_on_failures():
    """With a model FAB cannot break, perturb() keeps x; marginbench records failures."""
    model = ConstantModel()
    x = torch.rand(3, *D_SHAPE)
    y = model(x).argmax(1)
    cfg = attack_config("fab", steps=3, restarts=2)
    res = build_estimator(cfg, "Linf")(model, x, y)
    direct = FABAttack_PT(model, norm="Linf", n_restarts=2, n_iter=3, eps=float("inf"), seed=0).perturb(x, y)
    assert torch.equal(direct, x)  # the authors' code would store margin 0 here
    assert not res.success.any() and np.isinf(res.margin).all()


# ----------------------------------------------------------------------------- verification


def test_verify_rejects_non_flipping_and_out_of_box(linear):
    model, _, x, y = linear
    fake = x + 1e-3  # far too small to flip anything
    margin, success, x_out = verify(model, x, fake, y, "Linf")
    assert not success.any() and np.isinf(margin).all() and torch.equal(x_out, x)
    # a flipping point outside [0,1] is rejected too
    w = 50.0 * torch.randn_like(x)
    with torch.no_grad():
        flips = model(x + w).argmax(1) != y
    assert flips.any()
    margin, success, _ = verify(model, x, x + w, y, "Linf")
    assert not success.any()
    # an in-box flipping point is accepted, margin recomputed in float64
    x2 = torch.zeros_like(x)
    with torch.no_grad():
        ok = model(x2).argmax(1) != y
    margin, success, _ = verify(model, x, x2, y, "Linf")
    assert (success == ok.numpy()).all()
    np.testing.assert_allclose(margin[success], x.double().flatten(1).amax(1).numpy()[success])


@pytest.mark.parametrize("name", [DEFAULT_ATTACK, "fab", "fmn"])
def test_constant_model_all_failures(name):
    model = ConstantModel()
    x = torch.rand(4, *D_SHAPE)
    y = model(x).argmax(1)
    cfg = attack_config(name, steps=5)
    if cfg.name == "ensemble":
        cfg.options = {m: {"steps": 5} for m in cfg.members}
    res = build_estimator(cfg, "Linf")(model, x, y)
    assert not res.success.any()
    assert np.isinf(res.margin).all()  # never 0
    assert (res.found_by == "").all()
    assert torch.equal(res.x_adv, x)


# ----------------------------------------------------------------------------- ensembles


def test_ensemble_takes_per_sample_minimum(linear):
    model, _, x, y = linear
    members = {"fmn": {"steps": 10}, "fab_topk": {"steps": 10}}
    ens = build_estimator(AttackConfig(name="ensemble", members=list(members), options=members), "Linf")
    res = ens(model, x, y)
    singles = {m: build_estimator(AttackConfig(name=m, **o), "Linf")(model, x, y) for m, o in members.items()}
    stacked = np.stack([singles[m].margin for m in members])
    np.testing.assert_array_equal(res.margin, stacked.min(0))
    winner = np.array(list(members))[stacked.argmin(0)]
    assert (res.found_by == winner).all()
    # costs add up (plus the ensemble's own prediction check)
    np.testing.assert_array_equal(res.n_backward, sum(s.n_backward for s in singles.values()))
    assert (res.n_forward == sum(s.n_forward for s in singles.values()) - 1).all()
    # both members matter on this problem (otherwise the test proves little)
    assert len(set(res.found_by)) >= 1


# ----------------------------------------------------------------------------- costs


def test_counting_model_counts_rows_calls_and_subsets():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    cm = CountingModel(model, 5)
    x = torch.rand(5, 4, requires_grad=True)
    with torch.no_grad():
        cm(x)
    out = cm(x)
    torch.autograd.grad(out.sum(), x, retain_graph=True)
    out.backward(torch.ones_like(out))
    assert cm.forward_counts.tolist() == [2] * 5
    assert cm.backward_counts.tolist() == [2] * 5
    with cm.subset(torch.tensor([1, 3])):
        cm(x[[1, 3]])
        with cm.subset(torch.tensor([1])):  # nested: sample 3
            cm(x[[3]])
        cm(x[:1])  # 1 row for 2 active samples: spread, first one gets it
    assert cm.forward_counts.tolist() == [2, 4, 2, 4, 2]


def test_fab_cost_accounting(linear):
    """FAB untargeted, S steps, one restart that succeeds: forward = 2S + 5 per sample
    (check, perturb's accuracy, run's own prediction, S x (gradients + label check),
    final check, verification); backward = S * K (the Jacobian, one pass per class)."""
    model, _, x, y = linear
    steps = 7
    res = build_estimator(AttackConfig(name="fab", steps=steps, restarts=1), "Linf")(model, x, y)
    assert res.success.all()
    assert (res.n_forward == 2 * steps + 5).all()
    assert (res.n_backward == steps * K).all()
    assert (res.seconds > 0).all()
    fmn = build_estimator(AttackConfig(name="fmn", steps=steps), "Linf")(model, x, y)
    # + one forward per back-off try for a point that failed verification by rounding
    assert (fmn.n_forward >= steps + 2).all() and (fmn.n_forward <= steps + 2 + len(BACKOFF_FACTORS)).all()
    assert (fmn.n_backward == steps).all()


def test_point_exactly_on_the_boundary_is_backed_off_not_dropped():
    """An attack that returns the exact boundary point (a tie: argmax keeps the predicted
    class) must not become a failure: the estimator steps out along the same perturbation
    by the smallest back-off factor that flips the prediction."""
    model = nn.Linear(2, 2)  # logits (u - 0.3, 0.3 - u) for x = (u, v): boundary at u = 0.3
    model.weight.data = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    model.bias.data = torch.tensor([-0.3, 0.3])
    x = torch.tensor([[0.5, 0.5], [0.6, 0.5]])
    y = model(x).argmax(1)
    assert y.tolist() == [0, 0]

    def on_boundary(m, xb, yb, norm, spec):
        out = xb.clone()
        out[:, 0] = 0.3  # the exact tie: logits equal, argmax picks class 0 = y
        return out

    est = Estimator(AttackSpec(name="boundary"), "Linf", on_boundary)
    res = est(model, x, y)
    exact = (x[:, 0] - 0.3).numpy()
    assert res.success.all()
    np.testing.assert_allclose(res.margin, exact * BACKOFF_FACTORS[0], rtol=1e-5)
    assert (res.n_forward == 3).all()  # prediction check, verification, one back-off


def test_margin_batch_concat(linear):
    model, _, x, y = linear
    est = build_estimator(AttackConfig(name="fmn", steps=5), "L2")
    joined = MarginBatch.concat([est(model, x[:5], y[:5]), est(model, x[5:], y[5:])])
    assert len(joined) == len(x) and joined.x_adv.shape == x.shape
    assert joined.margin.dtype == np.float64 and joined.n_forward.dtype == np.int64


# ----------------------------------------------------------------------------- configs and errors


@pytest.mark.parametrize("name", group_options("attack"))
def test_attack_configs_build(name, linear):
    cfg = attack_config(name)
    norm = "L2" if cfg.name in ("ddn", "alma") else "Linf"
    est = build_estimator(cfg, norm)
    assert callable(est)
    assert cfg.name in ESTIMATORS or cfg.name == "ensemble"


def test_attack_presets_come_from_yaml_only(tmp_path, monkeypatch):
    """Ensemble members take their default budget from the preset of their name, read from
    CONFIG_DIR at call time: edit the YAML and the member follows; no preset, no budget."""
    import marginbench.config as config

    for name in group_options("attack"):  # every preset names itself in a summary
        assert attack_label(attack_preset(name)) == name
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "fmn.yaml").write_text("name: fmn\nsteps: 7\noptions: {gamma_init: 0.1}\n")
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)
    assert attack_preset("fmn") == {**asdict(AttackConfig()), "name": "fmn", "steps": 7, "options": {"gamma_init": 0.1}}
    ens = build_estimator(AttackConfig(name="ensemble", members=["fmn", "fab_topk"]), "Linf")
    fmn, topk = (member.spec for member in ens.members)
    assert (fmn.steps, fmn.restarts, fmn.options) == (7, 1, {"gamma_init": 0.1})
    assert topk == AttackSpec("fab_topk")  # no fab_topk.yaml in this config tree
    with pytest.raises(MarginbenchError, match=r"attack preset 'fab' does not exist; choose one of: fmn$"):
        attack_preset("fab")


def test_ensemble_member_budgets_are_the_presets():
    ens = build_estimator(AttackConfig(name="ensemble", members=["fab", "apgd_bisect", "fab_topk@x"]), "Linf")
    for member in ens.members:
        preset = attack_preset(member.spec.name)
        assert (member.spec.steps, member.spec.restarts, member.spec.refine, member.spec.options) == (
            preset["steps"], preset["restarts"], preset["refine"], preset["options"]
        )
    assert [m.spec.steps for m in ens.members] == [100, 20, 100] and ens.members[0].spec.restarts == 5


def test_errors(linear):
    model, _, x, y = linear
    with pytest.raises(MarginbenchError):
        build_estimator(AttackConfig(name="nope"), "Linf")
    with pytest.raises(MarginbenchError):
        build_estimator(AttackConfig(name="fmn"), "L1")
    with pytest.raises(MarginbenchError):
        build_estimator(AttackConfig(name="ensemble"), "Linf")
    with pytest.raises(MarginbenchError):
        build_estimator(AttackConfig(name="ddn"), "Linf")(model, x, y)
    with pytest.raises(MarginbenchError):  # y_pred must be the model's own prediction
        build_estimator(AttackConfig(name="fmn", steps=2), "Linf")(model, x, (y + 1) % K)
    with pytest.raises(MarginbenchError):  # inputs outside [0,1]
        build_estimator(AttackConfig(name="fmn", steps=2), "Linf")(model, x * 3, y)


@pytest.mark.parametrize("name", ["ddn", "alma", "apgd_bisect", "fab_targeted"])
def test_other_estimators_linear_l2(linear, name):
    """Library estimators find verified upper bounds on the exact margin."""
    model, lin, x, y = linear
    exact = exact_margin(lin, model, x, y, "L2")
    steps = {"ddn": 100, "alma": 100, "apgd_bisect": 10, "fab_targeted": 20}[name]
    # DDN changes its norm by 5% a step: start it near the scale of these margins
    options = {"init_norm": 0.02} if name == "ddn" else {}
    res = build_estimator(attack_config(name, steps=steps, options=options), "L2")(model, x[:4], y[:4])
    assert res.success.all()
    assert (res.margin >= exact[:4] * (1 - 1e-4)).all()
    if name != "alma":  # ALMA needs ~1000 steps to converge; here only validity is checked
        assert (res.margin <= exact[:4] * 2.0).all()


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_default_breaks_aa_resnet18_within_8_255(cifar10_first100_npz, monkeypatch):
    """The standard ResNet-18 shipped with pyautoattack: PGD at 8/255 breaks all images."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench_margins

    model = bench_margins.load_model("aa_resnet18", torch.device("cpu"))  # through the registry
    x, _ = bench_margins.load_data(str(cifar10_first100_npz), 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = build_estimator(attack_config(DEFAULT_ATTACK), "Linf")(model, x, y)
    assert res.success.all() and (res.margin <= 8 / 255).all()


@pytest.mark.parametrize("name", ["fmn", DEFAULT_ATTACK])
def test_channels_last_inputs_give_the_same_margins(name):
    """adv-lib's FMN on a channels-last batch returned margins ~30x too large (0.16 instead
    of 0.005 here); the estimator hands every attack the standard layout."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, K)).eval()
    x = torch.rand(12, 3, 8, 8) * 0.6 + 0.2
    y = model(x).argmax(1)
    est = build_estimator(AttackConfig(name=name, steps=50) if name == "fmn" else attack_config(name), "Linf")
    standard = est(model, x, y)
    channels_last = est(model, x.contiguous(memory_format=torch.channels_last), y)
    assert standard.success.all()
    np.testing.assert_array_equal(channels_last.margin, standard.margin)


def test_every_shipped_preset_passes_the_option_rules():
    for name in group_options("attack"):
        options = dict(attack_preset(name)["options"] or {})
        check_options(name, options)  # raises on a value the rules refuse


@pytest.mark.parametrize(("key", "value", "ok"), [
    ("polish_rounds", 3, True), ("polish_rounds", 3.0, True), ("polish_rounds", 3.5, False),
    ("polish_rounds", True, False), ("polish_rounds", "3", False), ("polish_rounds", -1, False),
    ("polish_steps", 0, False), ("polish_rho", 0.05, True), ("polish_rho", 0, False), ("polish_rho", 1, False),
    ("polish_min_rho", 0, True), ("eps_init", float("inf"), False), ("eps_init", float("nan"), False),
    ("seed", 7, True), ("seed", -7, False), ("seed", 2**64, False), ("seed", np.int64(3), True),
    ("polish_rho", "0.5", False), ("polish_rho", "abc", False), ("time_limit", 0, False), ("polish_rho", np.float32(0.1), True),
    ("multistart_order", "linear", True), ("multistart_order", 1, False),
    ("polish_rounds", 10**400, True), ("seed", 10**400, False),  # float(10**400) overflows
])
def test_option_rules_accept_exactly_what_they_say(key, value, ok):
    assert OPTION_RULES[key].accepts(value) is ok
    if not ok:
        with pytest.raises(MarginbenchError, match=rf"attack a: attack.options.{key} must be "):
            check_options("a", {key: value})


def test_library_options_are_checked_against_the_library_call():
    """adv-lib's Greek parameters go by their ASCII names; a name the call does not take, or
    one marginbench sets itself, is a one-line error at build time."""
    build_estimator(AttackConfig(name="fmn", steps=5, options={"gamma_init": 0.1, "alpha_init": 2.0}), "Linf")
    build_estimator(AttackConfig(name="fab", steps=5, options={"alpha_max": 1, "eta": 1.1}), "Linf")
    with pytest.raises(MarginbenchError, match=r"unknown attack option 'gama_init' \(fmn takes alpha_final, alpha_init, "):
        build_estimator(AttackConfig(name="fmn", steps=5, options={"gama_init": 0.1}), "Linf")
    with pytest.raises(MarginbenchError, match="unknown attack option 'n_queries'"):
        build_estimator(AttackConfig(name="square", steps=5, options={"n_queries": 10}), "Linf")
    with pytest.raises(MarginbenchError, match="attack.options.use_rs must be true or false; got 1"):
        build_estimator(AttackConfig(name="apgd_bisect", steps=5, options={"use_rs": 1}), "Linf")
    with pytest.raises(MarginbenchError, match="attack.options.binary_search_steps must be an integer >= 0; got 2.5"):
        build_estimator(AttackConfig(name="fmn", steps=5, options={"binary_search_steps": 2.5}), "Linf")
    with pytest.raises(MarginbenchError, match="unknown attack option 'targeted'"):
        build_estimator(AttackConfig(name="fmn", steps=5, options={"targeted": True}), "Linf")
    build_estimator(AttackConfig(name="ddn", steps=5, options={"levels": None}), "L2")  # the library's default
    build_estimator(AttackConfig(name="alma", steps=5, options={"momentum": None, "alpha_rms": 0.5}), "L2")
    # what no config value can mean, or marginbench sets, or the library never reads: refused by name
    for name, key, value in (("ddn", "callback", "foo"), ("alma", "penalty", "P1"), ("alma", "distance", "l1"),
                             ("fab", "loss_fn", "ce"), ("fab", "n_target_classes", 3), ("fab_topk", "n_target_classes", 3)):
        with pytest.raises(MarginbenchError, match=f"attack {name}: unknown attack option '{key}'"):
            build_estimator(AttackConfig(name=name, steps=5, options={key: value}), "L2" if name in ("ddn", "alma") else "Linf")
    build_estimator(AttackConfig(name="fab_targeted", steps=5, options={"n_target_classes": 3}), "Linf")
    with pytest.raises(MarginbenchError, match="sets both 'gamma_init' and 'γ_init', the same parameter; keep one"):
        build_estimator(AttackConfig(name="fmn", steps=5, options={"gamma_init": 0.1, "γ_init": 0.2}), "Linf")


def test_library_option_ranges_hold_the_library_defaults():
    """Each range a library option is held to (LibraryCall.rules) takes the library's own
    default, and names a parameter the call has: a mistyped rule would check nothing."""
    import inspect

    from marginbench.margins import LIBRARY_CALLS, advlib

    checked = 0
    for name, call in LIBRARY_CALLS.items():
        params = inspect.signature(call.target).parameters
        for key, rule in call.rules.items():
            param = params[call.rename(key)]
            if param.default is not None:
                assert rule.accepts(param.default), (name, key, param.default)
                checked += 1
    assert checked >= 15
    assert advlib.greek_name("gamma_init") == "γ_init"
    # and the defaults marginbench fills in itself: FAB unbounded (eps = inf)
    from marginbench.margins.fab import UNBOUNDED

    assert LIBRARY_CALLS["fab"].rules["eps"].accepts(UNBOUNDED)
    build_estimator(AttackConfig(name="fab_targeted", steps=5, options={"eps": UNBOUNDED}), "Linf")
    build_estimator(AttackConfig(name="fmn", steps=5, options={"gamma_final": 0, "alpha_final": 0}), "Linf")


@pytest.mark.parametrize(("name", "options", "message"), [
    ("fab", {"eta": 0.99}, r"eta must be a number >= 1; got 0.99"),  # undershoots the boundary
    ("fab_topk", {"alpha_max": 1.5}, r"alpha_max must be a number in \[0, 1\]; got 1.5"),
    ("fab_targeted", {"beta": 0}, r"beta must be a number in \(0, 1\]; got 0"),
    ("fmn", {"γ_init": 1.0}, r"γ_init must be a number in \(0, 1\); got 1.0"),  # the Greek name too
    ("ddn", {"levels": 1}, r"levels must be an integer >= 2; got 1"),
    ("alma", {"check_steps": 0}, r"check_steps must be an integer >= 1; got 0"),
    # round 10: each of these left every sample of a run unbroken (+inf) or crashed
    ("alma", {"alpha": -1}, r"alpha must be a number in \[0, 1\); got -1"),
    ("alma", {"τ": 5}, r"τ must be a number in \(0, 1\]; got 5"),
    ("alma", {"gamma": 0.5}, r"gamma must be a number >= 1; got 0.5"),  # the penalty would shrink
    ("alma", {"momentum": 1}, r"momentum must be a number in \[0, 1\); got 1"),
    ("alma", {"init_lr_distance": 0}, r"init_lr_distance must be a number > 0; got 0"),
    ("alma", {"logit_tolerance": -5}, r"logit_tolerance must be a number >= 0; got -5"),
    ("alma", {"lr_reduction": 0}, r"lr_reduction must be a number in \(0, 1\]; got 0"),
    ("square", {"p_init": 0}, r"p_init must be a number in \(0, 1\]; got 0"),
    ("apgd_bisect", {"rho": 1}, r"rho must be a number in \(0, 1\); got 1"),
    ("apgd_bisect", {"eot_iter": 2.0}, r"eot_iter must be an integer; got 2.0"),  # range\(2.0\) crashed adv-lib
    ("fab", {"eps": None}, r"eps must be a number > 0 or inf; got null"),  # pyautoattack's 0.3 bound
])
def test_library_options_outside_their_range_are_refused(name, options, message):
    norm = "L2" if name in ("ddn", "alma") else "Linf"
    with pytest.raises(MarginbenchError, match=rf"attack {name}: attack.options.{message}"):
        build_estimator(AttackConfig(name=name, steps=5, options=options), norm)
    edge = {key: {"eta": 1, "alpha_max": 1, "beta": 1, "levels": 2, "check_steps": 1, "p_init": 1, "eot_iter": 2,
                  "eps": float("inf"), "alpha": 0, "τ": 1, "gamma": 1, "momentum": 0, "logit_tolerance": 0,
                  "lr_reduction": 1}.get(key, 0.5) for key in options}
    build_estimator(AttackConfig(name=name, steps=5, options=edge), norm)  # the closed ends are allowed


def test_a_preset_read_for_an_ensemble_member_has_the_numbers_hydra_reads(tmp_path, monkeypatch):
    """attack_preset reads YAML as Hydra does: 1e-3 is a number, not the string PyYAML makes of it."""
    import marginbench.config as config

    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "mine.yaml").write_text("name: fmn\nsteps: 5\noptions:\n  gamma_final: 1e-3\n  polish_min_rho: 2e-3\n")
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)
    options = config.attack_preset("mine")["options"]
    assert options == {"gamma_final": 0.001, "polish_min_rho": 0.002}
    build_estimator(config.attack_preset("mine"), "Linf")
