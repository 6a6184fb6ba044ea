"""Model zoo: registry (codes, ids, published numbers), loading (weights_only, offline
errors, HTML pages), custom factories, and the feature/head split."""

from __future__ import annotations

import ast
import csv
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from marginbench.config import DatasetConfig, ModelConfig
from marginbench.errors import MarginbenchError
from marginbench.models import (
    checkpoint_path,
    custom_entry,
    list_models,
    load_model,
    loading,
    paper_code,
    resolve_model,
    sources,
    split_model,
)

REPO = Path(__file__).resolve().parents[1]

# Protocol §5: every CIFAR L-inf code the paper uses, with its RobustBench id.
PAPER_CIFAR10 = {
    "DI0": "Ding2020MMA",
    "XU80": "Xu2023Exploring_WRN-28-10",
    "DS0": "Debenedetti2022Light_XCiT-S12",
    "DM0": "Debenedetti2022Light_XCiT-M12",
    "SE10": "Sehwag2021Proxy_R18",
    "PA20": "Pang2022Robustness_WRN28_10",
    "HE0": "Hendrycks2019Using",
    "EN0": "Engstrom2019Robustness",
    "AD20": "Addepalli2022Efficient_RN18",
    "CU80": "Cui2023Decoupled_WRN-28-10",
    "RE80": "Rebuffi2021Fixing_28_10_cutmix_ddpm",
    "ZH0": "Zhang2019Theoretically",
    "WA80": "Wang2023Better_WRN-28-10",
    "AD10": "Addepalli2021Towards_RN18",
}
PAPER_CIFAR100 = {
    "AD1": "Addepalli2021Towards_PARN18",
    "AD21": "Addepalli2022Efficient_RN18",
    "CU81": "Cui2023Decoupled_WRN-28-10",
    "CU41": "Cui2023Decoupled_WRN-34-10",
    "DS1": "Debenedetti2022Light_XCiT-S12",
    "HE1": "Hendrycks2019Using",
    "PA21": "Pang2022Robustness_WRN28_10",
    "RA11": "Rade2021Helper_R18_ddpm",
    "RE81": "Rebuffi2021Fixing_28_10_cutmix_ddpm",
    "RE11": "Rebuffi2021Fixing_R18_ddpm",
    "RI1": "Rice2020Overfitting",
    "WA81": "Wang2023Better_WRN-28-10",
    "WU1": "Wu2020Adversarial",
}
PAPER_LOCAL = ("MD0", "TR0", "MR0", "AL0", "CL0")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code,rb_id", sorted(PAPER_CIFAR10.items()))
def test_cifar10_paper_codes(code, rb_id):
    entry = resolve_model(code)
    assert (entry.code, entry.robustbench_id, entry.dataset, entry.threat_model) == (
        code,
        rb_id,
        "cifar10",
        "Linf",
    )
    assert entry.source == "robustbench" and entry.num_classes == 10


@pytest.mark.parametrize("code,rb_id", sorted(PAPER_CIFAR100.items()))
def test_cifar100_paper_codes(code, rb_id):
    entry = resolve_model(code)
    assert (entry.code, entry.robustbench_id, entry.dataset, entry.threat_model) == (
        code,
        rb_id,
        "cifar100",
        "Linf",
    )
    assert entry.num_classes == 100


def test_paper_local_models_and_builtins():
    for code in PAPER_LOCAL:
        e = resolve_model(code)
        assert (e.source, e.dataset, e.threat_model, e.architecture) == (
            "local",
            "cifar10",
            "Linf",
            "ResNet-18",
        )
    assert resolve_model("aa_resnet18").source == "builtin"
    for m in ("standard", "madry", "trades", "mart", "alp", "clp"):
        e = resolve_model(f"fm_{m}")
        assert (e.source, e.dataset, e.num_classes) == ("zoo", "fashion_mnist", 10)


def test_standard_l2_and_imagenet_entries():
    assert resolve_model("ST0").robustbench_id == "Standard"
    assert resolve_model("ST02").threat_model == "L2"
    assert resolve_model("STI").robustbench_id == "Standard_R50"
    l2 = [e for e in list_models() if e.threat_model == "L2"]
    assert len(l2) >= 10 and all(e.dataset == "cifar10" for e in l2)
    imagenet = [e for e in list_models() if e.dataset == "imagenet"]
    assert len(imagenet) >= 3 and all(e.num_classes == 1000 for e in imagenet)


@pytest.mark.parametrize(
    "rb_id,dataset,threat,expected",
    [
        ("Debenedetti2022Light_XCiT-S12", "cifar10", "Linf", "DS0"),
        ("Addepalli2021Towards_PARN18", "cifar100", "Linf", "AD1"),
        ("Rebuffi2021Fixing_28_10_cutmix_ddpm", "cifar10", "Linf", "RE80"),
        ("Rebuffi2021Fixing_28_10_cutmix_ddpm", "cifar10", "L2", "RE802"),  # as in the rebuttal
        ("Xu2023Exploring_WRN-28-10", "cifar10", "Linf", "XU80"),
        ("Cui2023Decoupled_WRN-34-10", "cifar100", "Linf", "CU41"),
        ("Ding2020MMA", "cifar10", "Linf", "DI0"),
    ],
)
def test_paper_code_rule(rb_id, dataset, threat, expected):
    assert paper_code(rb_id, dataset, threat) == expected


def test_every_cifar_code_follows_the_rule_and_codes_are_unique():
    entries = list_models()
    assert len({e.code.lower() for e in entries}) == len(entries)
    for e in entries:
        if e.source == "robustbench" and e.dataset != "imagenet":
            assert e.code == paper_code(e.robustbench_id, e.dataset, e.threat_model), e


@pytest.mark.parametrize(
    "code,clean,robust",
    [  # RobustBench numbers quoted in the protocol ([RB] and [R] pairs)
        ("DI0", 84.36, 41.44),
        ("XU80", 93.69, 63.89),
        ("AD10", 80.24, 51.06),
        ("WA80", 92.44, 67.31),
        ("CU80", None, 67.73),
        ("RI1", None, 18.95),
        ("CU81", None, 39.18),
    ],
)
def test_published_numbers(code, clean, robust):
    e = resolve_model(code)
    if clean is not None:
        assert e.clean_acc == pytest.approx(clean)
    assert e.robust_acc == pytest.approx(robust)


def test_unknown_published_number_is_empty_not_guessed():
    e = resolve_model("HE1")
    assert e.clean_acc is None and e.robust_acc is None


def test_reference_csv_matches_packaged_copy():
    ref = (REPO / "results" / "reference" / "robustbench_models.csv").read_text()
    packaged = (REPO / "marginbench" / "models" / "robustbench_models.csv").read_text()
    assert ref == packaged
    rows = list(csv.DictReader(ref.splitlines()))
    assert list(rows[0]) == [
        "code",
        "robustbench_id",
        "dataset",
        "threat_model",
        "architecture",
        "clean_acc",
        "robust_acc",
        "source_url",
    ]
    assert all(
        r["source_url"].startswith("https://github.com/RobustBench/robustbench/") for r in rows
    )


def test_lookup_case_insensitive_and_by_robustbench_id():
    xu = resolve_model("XU80")
    assert resolve_model("xu80") == xu
    assert resolve_model("Xu2023Exploring_WRN-28-10") == xu
    assert resolve_model("xu2023exploring_wrn-28-10") == xu
    # an id with several entries means CIFAR-10 Linf, like RobustBench's load_model ...
    assert resolve_model("Ding2020MMA").code == "DI0"
    # ... and a qualified name or a hint picks another one
    assert resolve_model("cifar10/L2/Ding2020MMA").code == "DI02"
    assert resolve_model("Rebuffi2021Fixing_28_10_cutmix_ddpm", dataset="cifar100").code == "RE81"
    assert resolve_model("AA_ResNet18").code == "aa_resnet18"


def test_unknown_model_lists_close_matches():
    with pytest.raises(MarginbenchError) as info:
        resolve_model("XU08")
    msg = str(info.value)
    assert "XU08" in msg and "XU80" in msg and "\n" not in msg
    with pytest.raises(MarginbenchError, match="Xu2023Exploring_WRN-28-10"):
        resolve_model("Xu2023Exploring_WRN28-10")


def test_local_checkpoint_in_model_dir_becomes_an_entry(tmp_path):
    from marginbench.models.local import save_local_checkpoint
    from marginbench.models.small import build_architecture

    net = build_architecture("small_cnn", 10)
    save_local_checkpoint(
        tmp_path / "local" / "MyNet.pt",
        net,
        arch="small_cnn",
        num_classes=10,
        dataset="fashion_mnist",
    )
    entry = resolve_model("mynet", model_dir=tmp_path)
    assert (entry.code, entry.source, entry.dataset, entry.num_classes) == (
        "MyNet",
        "local",
        "fashion_mnist",
        10,
    )
    assert checkpoint_path(entry, tmp_path) == tmp_path / "local" / "MyNet.pt"
    model, _ = load_model(ModelConfig(name="MyNet"), tmp_path, "cpu")
    x = torch.rand(3, 1, 28, 28)
    net.eval()
    assert torch.equal(model(x), net(x))
    with pytest.raises(MarginbenchError):
        resolve_model("mynet")  # without the model_dir it is unknown


def test_checkpoint_paths(tmp_path):
    assert (
        checkpoint_path(resolve_model("XU80"), tmp_path)
        == tmp_path / "cifar10" / "Linf" / "Xu2023Exploring_WRN-28-10.pt"
    )
    assert (
        checkpoint_path(resolve_model("DI02"), tmp_path)
        == tmp_path / "cifar10" / "L2" / "Ding2020MMA.pt"
    )
    assert checkpoint_path(resolve_model("MD0"), tmp_path) == tmp_path / "local" / "MD0.pt"
    assert checkpoint_path(resolve_model("aa_resnet18"), tmp_path).name == "model_test.pt"


# --------------------------------------------------------------------------------------------
# Import structure: no cycles, a torch-free registry
# --------------------------------------------------------------------------------------------

PACKAGE = REPO / "marginbench"


def _package_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the marginbench package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _import_nodes(tree: ast.AST, module_level: bool):
    """Import statements; with module_level, only those that run when the module is imported
    (everything but function bodies: ``if``/``try`` blocks and class bodies run too)."""
    for child in ast.iter_child_nodes(tree):
        if module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _import_nodes(child, module_level)


def _imports(name: str, path: Path, modules: dict[str, Path], module_level: bool) -> set[str]:
    """The package modules ``name`` imports (``from a import b``: a.b if it is a module, else a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")), module_level):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative import: resolve against the importing package
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *filter(None, [node.module])])
        found.update(
            f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
        )
    return {m for m in found if m in modules and m != name}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_in_the_package():
    """Two checks. Module-level imports (what runs at import time) must form no cycle at all.
    Adding the lazy imports inside functions, there must be no cycle either, except through
    a module's own parent packages: Python imports a package before any of its submodules,
    so ``from marginbench import __version__`` inside cli.main adds no ordering (while
    marginbench.compose() imports cli lazily). A lazy cycle between siblings, such as the
    old registry -> loading -> registry, is a design knot and fails here."""
    modules = _package_modules()
    eager = {n: _imports(n, p, modules, module_level=True) for n, p in modules.items()}
    assert _find_cycle(eager) is None, f"module-level import cycle: {_find_cycle(eager)}"
    lazy = {
        n: {m for m in _imports(n, p, modules, module_level=False) if not n.startswith(m + ".")}
        for n, p in modules.items()
    }
    assert _find_cycle(lazy) is None, f"import cycle (lazy imports included): {_find_cycle(lazy)}"
    registry = lazy["marginbench.models.registry"]
    assert "marginbench.models.loading" not in registry
    assert not (lazy["marginbench.models.sources"] & {"marginbench.models.registry", "marginbench.models.loading"})


def test_registry_imports_neither_torch_nor_robustbench():
    """`marginbench models`, the report and config validation use the registry and must not
    pay for torch or RobustBench (seconds)."""
    code = (
        "import sys\n"
        "from marginbench.models import registry\n"
        "registry.list_models()\n"
        "for name in ('XU80', 'fm_madry', 'MD0'):\n"
        "    registry.checkpoint_path(registry.resolve_model(name), 'models_cache')\n"
        "from types import SimpleNamespace as NS\n"
        "registry.custom_entry(NS(factory='m:f', dataset=None, norm='Linf', num_classes=10), 'npz')\n"
        "print(sorted(m for m in ('torch', 'robustbench') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --------------------------------------------------------------------------------------------
# Built-in model: known answer on real CIFAR-10 images
# --------------------------------------------------------------------------------------------


def test_aa_resnet18_accuracy_on_first100(cifar10_first100_npz, tmp_path):
    from marginbench.data import check_compatible, load_eval_set

    model, entry = load_model(ModelConfig(name="aa_resnet18"), tmp_path, "cpu")
    assert not model.training
    data = load_eval_set(
        DatasetConfig(name="npz", path=str(cifar10_first100_npz)), tmp_path, None, None
    )
    check_compatible(data, entry, model)
    with torch.no_grad():
        pred = model(data.images).argmax(1)
    assert int((pred == data.labels).sum()) == 94
    split = split_model(model)
    assert split.head.weight.shape == (10, 512)
    with torch.no_grad():
        assert torch.allclose(
            split.head(split.features(data.images[:4])), model(data.images[:4]), atol=1e-4
        )


# --------------------------------------------------------------------------------------------
# RobustBench: architectures from its zoo, weights from model_dir, never the network
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rb_dicts():
    return sources.robustbench_model_dicts()


def _write_random_rb_checkpoint(rb_dicts, entry, model_dir: Path, wrap: str) -> nn.Module:
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    net = rb_dicts[BenchmarkDataset(entry.dataset)][ThreatModel(entry.threat_model)][
        entry.robustbench_id
    ]["model"]()
    path = checkpoint_path(entry, model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # as saved from DataParallel
    torch.save({"state_dict": state} if wrap == "state_dict" else state, path)
    return net.eval()


@pytest.mark.parametrize("code,wrap", [("DI0", "state_dict"), ("SE10", "raw")])
def test_robustbench_architecture_loads_offline_and_splits(
    rb_dicts, tmp_path, monkeypatch, code, wrap
):
    monkeypatch.setattr(loading, "network_available", lambda *a, **k: pytest.fail("network probed"))
    entry = resolve_model(code)
    reference = _write_random_rb_checkpoint(rb_dicts, entry, tmp_path, wrap)
    model, got = load_model(ModelConfig(name=code.lower()), tmp_path, "cpu", download=False)
    assert got == entry and not model.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(logits, reference(x), atol=1e-5)
        split = split_model(model)
        h = split.features(x)
        assert h.shape == (2, split.head.in_features)
        assert torch.allclose(split.head(h), logits, rtol=1e-4, atol=1e-4)


def test_missing_checkpoint_names_path_and_url_fast(tmp_path, monkeypatch):
    entry = resolve_model("WA80")
    expected = tmp_path / "cifar10" / "Linf" / "Wang2023Better_WRN-28-10.pt"
    for download, offline in ((False, "0"), (True, "1")):
        monkeypatch.setenv("MARGINBENCH_OFFLINE", offline)
        start = time.perf_counter()
        with pytest.raises(MarginbenchError) as info:
            load_model(ModelConfig(name="WA80"), tmp_path, "cpu", download=download)
        assert time.perf_counter() - start < 30  # includes importing robustbench on a busy CPU
        msg = str(info.value)
        assert str(expected) in msg and "https://drive.google.com/uc?id=" in msg and "\n" not in msg
    assert not expected.exists() and checkpoint_path(entry, tmp_path) == expected


def test_html_page_is_rejected_before_torch_load(tmp_path, monkeypatch):
    path = checkpoint_path(resolve_model("SE10"), tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    with pytest.raises(MarginbenchError) as info:
        load_model(ModelConfig(name="SE10"), tmp_path, "cpu", download=False)
    msg = str(info.value)
    assert "HTML" in msg and "delete" in msg and str(path) in msg


def test_checkpoint_magic_bytes(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1)}, good)
    loading.check_checkpoint_file(good)  # torch zip: accepted
    for content, word in (
        (b"", "empty"),
        (b"\n  <html>", "HTML"),
        (b"GIF89a....", "not a PyTorch"),
    ):
        bad = tmp_path / "bad.pt"
        bad.write_bytes(content)
        with pytest.raises(MarginbenchError, match=word):
            loading.check_checkpoint_file(bad)


# --------------------------------------------------------------------------------------------
# Custom models
# --------------------------------------------------------------------------------------------


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "mb_user_models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Payload:
                pass

            def net():
                torch.manual_seed(3)
                return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))

            def not_a_module():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mb_user_models", None)


def test_custom_entry_defaults():
    cfg = ModelConfig(kind="custom", factory="pkg.mod:net", num_classes=7)
    entry = custom_entry(cfg, "cifar100")
    assert (entry.code, entry.source, entry.architecture) == ("custom:pkg.mod:net", "custom", "custom")
    assert (entry.threat_model, entry.num_classes, entry.robustbench_id) == ("Linf", 7, None)
    assert entry.dataset == "cifar100"  # the run's dataset describes the model ...
    assert custom_entry(cfg, "auto").dataset == "npz" == custom_entry(cfg, None).dataset
    mine = ModelConfig(kind="custom", factory="pkg.mod:net", dataset="fashion_mnist", norm="L2")
    assert custom_entry(mine, "cifar10").dataset == "fashion_mnist"  # ... unless it names its own
    assert custom_entry(mine, "cifar10").threat_model == "L2"
    with pytest.raises(MarginbenchError, match="model.factory=MODULE:FUNCTION"):
        custom_entry(ModelConfig(kind="custom"), "npz")


@pytest.mark.parametrize("wrap", ["raw", "state_dict"])
def test_custom_factory_with_weights(factory_module, tmp_path, wrap):
    import mb_user_models

    trained = mb_user_models.net()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # differs from what the factory builds
    weights = tmp_path / "w.pt"
    torch.save(
        trained.state_dict() if wrap == "raw" else {"state_dict": trained.state_dict()}, weights
    )
    cfg = ModelConfig(
        kind="custom", factory="mb_user_models:net", weights=str(weights), num_classes=5, norm="L2"
    )
    model, entry = load_model(cfg, tmp_path, "cpu")
    x = torch.rand(4, 3, 2, 2)
    assert torch.equal(model(x), trained.eval()(x))
    assert (entry.source, entry.threat_model, entry.num_classes) == ("custom", "L2", 5)
    assert entry == custom_entry(cfg, None)  # one entry builder for the loader and the pipeline
    assert split_model(model, example_input=x).head.out_features == 5


@pytest.mark.parametrize(
    "factory,match",
    [
        ("mb_user_models.net", "module:function"),
        ("mb_user_models:", "module:function"),
        ("no_such_module_xyz:net", "cannot import"),
        ("mb_user_models:nope", "no attribute"),
        ("mb_user_models:not_a_module", "not a torch.nn.Module"),
    ],
)
def test_bad_factory_strings(factory_module, tmp_path, factory, match):
    with pytest.raises(MarginbenchError, match=match):
        load_model(ModelConfig(kind="custom", factory=factory), tmp_path, "cpu")


def test_pickled_objects_are_refused(factory_module, tmp_path):
    import mb_user_models

    path = tmp_path / "evil.pt"
    torch.save(
        {"state_dict": mb_user_models.net().state_dict(), "extra": mb_user_models.Payload()}, path
    )
    cfg = ModelConfig(kind="custom", factory="mb_user_models:net", weights=str(path))
    with pytest.raises(MarginbenchError, match="pickled Python objects"):
        load_model(cfg, tmp_path, "cpu")


def test_custom_weights_that_do_not_fit(factory_module, tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(MarginbenchError, match="does not fit"):
        load_model(
            ModelConfig(kind="custom", factory="mb_user_models:net", weights=str(path)),
            tmp_path,
            "cpu",
        )


def test_zoo_model_missing_says_make_zoo(tmp_path, monkeypatch):
    from marginbench.models import sources

    monkeypatch.setattr(sources, "ZOO_DIR", tmp_path / "empty_zoo")
    with pytest.raises(MarginbenchError, match="make zoo"):
        load_model(ModelConfig(name="fm_trades"), tmp_path, "cpu")


# --------------------------------------------------------------------------------------------
# Feature/head split
# --------------------------------------------------------------------------------------------


class _Ensemble(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        self.b = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    def forward(self, x):
        return (self.a(x) + self.b(x)) / 2


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
        self.fc = nn.Linear(2 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(self.body(x)) / 0.5  # temperature after the head


class _HeadNotLast(nn.Module):
    """Registers the head first and an unused-for-logits Linear after it."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 10)
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.aux = nn.Linear(16, 3)

    def forward(self, x):
        h = self.body(x)
        self.aux(h)  # an auxiliary output computed after the head's input exists
        return self.head(h)


def test_split_small_cnn_on_fashion_shape():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 26 * 26, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    model.train()
    split = split_model(model)
    assert split.head is model[5] and model.training  # mode restored
    x = torch.rand(5, 1, 28, 28)
    model.eval()
    assert split.features(x).shape == (5, 32)
    assert torch.allclose(split.head(split.features(x)), model(x), atol=1e-5)


def test_split_finds_the_head_by_execution_not_registration():
    model = _HeadNotLast()
    assert split_model(model).head is model.head


@pytest.mark.parametrize("cls", [_Ensemble, _Scaled])
def test_split_rejects_logits_that_are_not_one_linear(cls):
    with pytest.raises(MarginbenchError, match="not the output of a single nn.Linear"):
        split_model(cls())


def test_split_rejects_model_without_linear():
    model = nn.Sequential(nn.Conv2d(3, 10, 32), nn.Flatten())
    with pytest.raises(MarginbenchError, match="no nn.Linear"):
        split_model(model)
