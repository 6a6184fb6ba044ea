"""Adversarial training: losses on fixed tensors, the training-time attacks, tiny runs, checkpoints."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marginbench import cli
from marginbench import train as T
from marginbench.config import LOSSES, group_options
from marginbench.errors import MarginbenchError
from marginbench.models.local import (
    FORMAT,
    load_local_checkpoint,
    read_checkpoint_meta,
    save_local_checkpoint,
)
from marginbench.models.small import SmallCNN, build_architecture

torch.set_num_threads(1)


def _have_fashion_mnist() -> bool:
    try:
        T.load_split("fashion_mnist", "test", None, download=False)
        return True
    except MarginbenchError:
        return False


needs_fmnist = pytest.mark.skipif(
    not _have_fashion_mnist(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits_clean = torch.randn(8, 10, generator=g)
    logits_adv = torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    return logits_clean, logits_adv, y


# ---------------------------------------------------------------- losses


def test_trades_beta0_is_clean_ce(batch):
    lc, la, y = batch
    assert torch.allclose(T.trades_loss(lc, la, y, beta=0.0), F.cross_entropy(lc, y))
    # the KL term is >= 0 and vanishes when the adversarial logits equal the clean ones
    assert T.trades_loss(lc, la, y, beta=4.0) > F.cross_entropy(lc, y)
    assert torch.allclose(T.trades_loss(lc, lc.clone(), y, beta=4.0), F.cross_entropy(lc, y), atol=1e-6)


def test_alp_weight0_is_pgd_at_and_clp_weight0_is_standard(batch):
    lc, la, y = batch
    assert torch.allclose(T.alp_loss(lc, la, y, weight=0.0), T.pgd_at_loss(la, y))
    assert torch.allclose(T.clp_loss(lc, la, y, weight=0.0), T.standard_loss(lc, y))
    assert torch.allclose(T.pgd_at_loss(la, y), F.cross_entropy(la, y))


def test_logit_pairing_is_mean_l2_distance():
    lc = torch.zeros(2, 3)
    la = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    assert T.logit_pairing(lc, la).item() == pytest.approx((5.0 + 1.0) / 2)
    w = 0.5
    y = torch.tensor([0, 2])
    assert T.alp_loss(lc, la, y, w).item() == pytest.approx(F.cross_entropy(la, y).item() + w * 3.0)


def test_mart_reference_arithmetic(batch):
    lc, la, y = batch
    p_adv = F.softmax(la, 1)
    # the most likely wrong class under attack
    masked = p_adv.clone()
    masked[torch.arange(len(y)), y] = -1
    wrong = masked.argmax(1)
    bce = F.cross_entropy(la, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), wrong)
    assert torch.allclose(T.mart_loss(lc, la, y, beta=0.0), bce, atol=1e-6)
    p_nat = F.softmax(lc, 1)
    kl = (p_nat * (torch.log(p_nat) - torch.log(p_adv + 1e-12))).sum(1)
    weighted = (kl * (1.0000001 - p_nat[torch.arange(len(y)), y])).mean()
    assert torch.allclose(T.mart_loss(lc, la, y, beta=4.0), bce + 4.0 * weighted, atol=1e-5)


# ---------------------------------------------------------------- attacks


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(num_classes=10, width=4, hidden=16).eval()


def test_pgd_stays_in_eps_ball_and_box_and_raises_loss():
    model = _tiny_model()
    x = torch.rand(6, 1, 28, 28)
    x[0] = 0.0  # pixels on the box boundary must stay inside [0, 1]
    x[1] = 1.0
    y = model(x).argmax(1)
    eps = 0.1
    x_adv = T.pgd_linf(model, x, y, eps, steps=5, step_size=0.05, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    x_tr = T.trades_attack(model, x, eps, steps=5, step_size=0.05, generator=torch.Generator().manual_seed(0))
    assert (x_tr - x).abs().max() <= eps + 1e-6
    assert x_tr.min() >= 0 and x_tr.max() <= 1


def test_training_attack_restores_train_mode_and_grad_flags():
    model = _tiny_model().train()
    cfg = T.TrainConfig(loss="pgd", eps="0.1", attack_steps=2, progress=False)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    T._attack_for(model, cfg, x, y, torch.Generator().manual_seed(0))
    assert model.training
    assert all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- config


def test_every_recipe_loads_and_validates():
    names = group_options("train")
    for loss in LOSSES:
        assert f"fmnist_cnn_{loss}" in names and f"cifar10_resnet18_{loss}" in names
    for name in names:
        cfg = T.load_recipe(name)
        assert cfg.loss in LOSSES
    c10 = T.load_recipe("cifar10_resnet18_trades")
    assert (c10.lr, c10.momentum, c10.weight_decay, c10.epochs, c10.batch_size) == (0.1, 0.9, 5e-4, 100, 128)
    assert c10.eps_value == pytest.approx(8 / 255) and c10.step_size_value == pytest.approx(2 / 255)
    assert c10.attack_steps == 10 and c10.beta == 4.0 and c10.schedule == "cosine"
    fm = T.load_recipe("fmnist_cnn_pgd", ["epochs=1", "name=x"])
    assert fm.epochs == 1 and fm.name == "x" and fm.step_size_value == pytest.approx(2.5 * 0.1 / 5)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["epochz=1"], "unknown training option 'epochz' (did you mean 'epochs'?); valid keys: arch, "),
        (["epochs=abc"], "epochs=abc is not a valid integer; fix the value of epochs"),
        (["loss=madry2"], "train.loss='madry2' is unknown"),
        (["epochs"], "override 'epochs' must look like key=value"),
    ],
)
def test_recipe_typos_fail_at_compose_time_in_one_line(overrides, message):
    with pytest.raises(MarginbenchError) as err:
        T.load_recipe("fmnist_cnn_pgd", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_field_named_like_a_run_config_group_can_be_overridden():
    """dataset= names both a TrainConfig field and `marginbench run`'s config group: Hydra
    took it as a group and every value failed as "unknown training option 'dataset'"."""
    assert T.load_recipe("fmnist_cnn_pgd", ["dataset=cifar10"]).dataset == "cifar10"
    assert T.load_recipe("cifar10_resnet18_standard", ["dataset=cifar100", "epochs=2"]).dataset == "cifar100"
    with pytest.raises(MarginbenchError, match=r"train.dataset='svhn' cannot be trained on; choose one of"):
        T.load_recipe("fmnist_cnn_pgd", ["dataset=svhn"])
    for item in ("+dataset=cifar10", "++dataset=cifar10", "dataset='cifar10'"):  # Hydra's grammar, as for any field
        assert T.load_recipe("fmnist_cnn_pgd", [item]).dataset == "cifar10", item


def test_nesterov_without_momentum_is_refused_at_compose_time():
    with pytest.raises(MarginbenchError, match=r"train.nesterov=true needs train.momentum > 0"):
        T.load_recipe("fmnist_cnn_pgd", ["momentum=0", "nesterov=true"])


# values the schema's types allow that made no sense: NaN lr trained a model to nothing
# (exit 0), momentum -1 crashed torch's SGD after the data loaded, eval_n 0 reported 0/0 as 0
@pytest.mark.parametrize(("override", "message"), [
    ("lr=nan", "train.lr must be a positive finite number, got nan"),
    ("lr=inf", "train.lr must be a positive finite number, got inf"),
    ("momentum=-1", "train.momentum must be in [0, 1), got -1.0"),
    ("momentum=1", "train.momentum must be in [0, 1), got 1.0"),
    ("weight_decay=-1", "train.weight_decay must be a finite number >= 0"),
    ("warmup_epochs=-1", "train.warmup_epochs must be a finite number >= 0"),
    ("beta=-1", "train.beta must be a finite number >= 0"),
    ("pair_weight=nan", "train.pair_weight must be a finite number >= 0"),
    ("eval_n=0", "train.eval_n must be >= 1, got 0"),
])
def test_training_values_outside_their_meaning_are_refused_at_compose_time(override, message):
    with pytest.raises(MarginbenchError) as err:
        T.load_recipe("fmnist_cnn_pgd", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_file_as_model_dir_is_refused_before_training(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(MarginbenchError, match=r"a_file is a file, not a directory"):
        T.run_training(["recipe=fmnist_cnn_pgd", "name=x"], model_dir=tmp_path / "a_file", data_dir=tmp_path / "nodata")


@pytest.mark.parametrize("name, owner", [("fm_madry", "fm_madry (zoo"), ("FM_Madry", "fm_madry (zoo"),
                                         ("XU80", "XU80 (robustbench"), ("ding2020mma", "DI0 (robustbench")])
def test_a_name_the_registry_resolves_first_is_refused_before_training(tmp_path, name, owner):
    # `run model=<name>` resolves the registry before <model_dir>/local: the checkpoint
    # would be written and never loaded
    for train in (lambda: T.run_training(["recipe=fmnist_cnn_pgd", f"name={name}"], model_dir=tmp_path,
                                         data_dir=tmp_path / "nodata"),
                  lambda: T.train_from_config({"name": name, "train": asdict(T.load_recipe("fmnist_cnn_pgd"))},
                                              model_dir=tmp_path, data_dir=tmp_path / "nodata", device="cpu")):
        with pytest.raises(MarginbenchError) as err:
            train()
        assert f"train name={name} is taken" in str(err.value) and owner in str(err.value), err.value
        assert "\n" not in str(err.value) and not (tmp_path / "local").exists()


def test_the_paper_models_trained_here_keep_their_codes():
    # MD0, TR0, ...: registry entries whose weights are <model_dir>/local/<code>.pt (README)
    for code in ("MD0", "tr0"):
        T.check_name_is_free(code)
    T.check_name_is_free("my_model")


def test_recipes_are_composed_from_config_dir(tmp_path, monkeypatch):
    """The recipe comes from marginbench.config.CONFIG_DIR (MARGINBENCH_CONFIG_DIR), typed by
    TrainConfig in Hydra's ConfigStore: a key the schema lacks fails even inside a recipe."""
    import marginbench.config as config

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mini.yaml").write_text("name: mini\nloss: trades\nepochs: 2\neps: 8/255\n")
    (tmp_path / "train" / "typo.yaml").write_text("name: typo\nepochz: 2\n")
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)
    cfg = T.load_recipe("mini", ["epochs=1"])
    assert asdict(cfg) == {**asdict(T.TrainConfig()), "name": "mini", "loss": "trades", "epochs": 1, "eps": "8/255"}
    assert T.load_recipe(None, ["name=d"]) == T.TrainConfig(name="d")  # no recipe: the defaults
    with pytest.raises(MarginbenchError, match=r"unknown training option 'epochz' in .*typo\.yaml") as err:
        T.load_recipe("typo")
    assert "\n" not in str(err.value)
    with pytest.raises(MarginbenchError, match=r"no training recipe 'fmnist_cnn_pgd'; choose one of mini, typo$"):
        T.load_recipe("fmnist_cnn_pgd")


def test_train_command_typo_exits_2_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "train=fmnist_cnn_pgd", "name=x", "lrr=0.1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("marginbench: error: unknown training option 'lrr' (did you mean 'lr'?)")
    assert "\n" not in err


@pytest.mark.parametrize(
    "values",
    [{"loss": "madry2"}, {"lossy": "pgd"}, {"eps": "abc"}, {"epochs": 0}, {"name": "../x"}, {"dataset": "svhn"}],
)
def test_bad_config_is_a_one_line_error(values):
    with pytest.raises(MarginbenchError) as err:
        T.config_from_mapping(values)
    assert "\n" not in str(err.value)


def test_cosine_schedule_with_warmup():
    cfg = T.TrainConfig(lr=0.1, warmup_epochs=1, epochs=3, progress=False)
    lrs = [T._lr_at(cfg, it, total=30, per_epoch=10) for it in range(30)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] < 0.002


# ---------------------------------------------------------------- models and checkpoints


def test_architectures_end_with_the_logit_layer():
    cnn = build_architecture("small_cnn", 10).eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(cnn.head(cnn.features(x)), cnn(x))
    assert sum(p.numel() for p in cnn.parameters()) * 4 < 1_000_000  # < 1 MB of weights
    r18 = build_architecture("resnet18", 100).eval()
    assert isinstance(r18.linear, nn.Linear) and r18(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(MarginbenchError):
        build_architecture("resnet1000", 10)


def test_checkpoint_round_trip_and_atomicity(tmp_path):
    model = _tiny_model()
    cfg = T.TrainConfig(name="m", progress=False)
    path = save_local_checkpoint(tmp_path / "m.pt", model, arch="small_cnn", num_classes=10, dataset="fashion_mnist",
                                 train_config=asdict(cfg), data={"n_train": 3}, metrics={"clean_acc": 0.5})
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["train_config"] == asdict(cfg)
    with pytest.raises(MarginbenchError):  # architecture mismatch (width 4 saved as small_cnn)
        load_local_checkpoint(path, "cpu")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MarginbenchError):
        load_local_checkpoint(tmp_path / "bad.pt", "cpu")
    with pytest.raises(MarginbenchError):
        load_local_checkpoint(tmp_path / "missing.pt", "cpu")


def _synthetic(n: int, seed: int = 0):
    """Ten classes of 28x28 images that differ by which horizontal band is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 40, (n, 1, 28, 28), generator=g, dtype=torch.int64)
    for k in range(10):
        rows = slice(2 + 2 * k, 4 + 2 * k)
        x[y == k, :, rows, :] += 215
    return x.clamp(0, 255).to(torch.uint8), y


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_on_synthetic_data(loss):
    x, y = _synthetic(256)
    cfg = T.TrainConfig(name="t", loss=loss, epochs=2, batch_size=32, lr=0.05, eps="0.05", attack_steps=2,
                        warmup_epochs=0.0, progress=False)
    model, hist = T.fit(cfg, x, y, torch.device("cpu"))
    assert hist["epoch_loss"][1] < hist["epoch_loss"][0]
    xt, yt = _synthetic(200, seed=1)
    assert T.clean_accuracy(model, xt, yt, "cpu") > 0.3  # chance is 0.1


@needs_fmnist
@pytest.mark.parametrize("loss", ["standard", "pgd"])
def test_tiny_fashion_mnist_run_round_trips(tmp_path, loss):
    cfg = T.load_recipe(f"fmnist_cnn_{loss}", [
        "name=tiny", "n_train=512", "epochs=3", "batch_size=32", "lr=0.1", "warmup_epochs=0",
        "eval_n=64", "eval_steps=3", "progress=false",
    ])
    path = T.train_model(cfg, "cpu", out_path=tmp_path / "tiny.pt", log=None)
    model, meta = load_local_checkpoint(path, "cpu")
    m = meta["metrics"]
    assert m["epoch_loss"][-1] < m["epoch_loss"][0]
    assert m["clean_acc"] > 0.3 and m["n_test"] == 10000  # chance is 0.1
    assert 0.0 <= m["pgd_acc"] <= m["clean_acc_eval_subset"] + 1e-9
    assert meta["train_config"] == asdict(cfg) and meta["data"]["n_train"] == 512
    # the reloaded model gives exactly the logits of the trained one
    xt, _ = T.load_split("fashion_mnist", "test", None)
    x = xt[:16].float() / 255
    again = torch.load(path, weights_only=True)
    fresh = build_architecture(again["arch"], again["num_classes"])
    fresh.load_state_dict(again["state_dict"])
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert read_checkpoint_meta(path)["metrics"] == m


@needs_fmnist
def test_train_from_config_writes_model_dir_local(tmp_path):
    root = {
        "name": "cli_model",
        "train": {**asdict(T.load_recipe("fmnist_cnn_trades")), "n_train": 64, "epochs": 1, "batch_size": 32,
                  "attack_steps": 1, "eval_n": 16, "eval_steps": 1},
    }
    root["train"]["progress"] = False
    path = T.train_from_config(root, model_dir=tmp_path, data_dir=tmp_path / "data", device="cpu")
    assert path == tmp_path / "local" / "cli_model.pt" and path.is_file()
    assert read_checkpoint_meta(path)["train_config"]["loss"] == "trades"
