#!/usr/bin/env python
"""Train the oracle networks and compute their exact L-inf margins (attack=exact).

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/make_oracle.py            # both nets, 120 samples each
    python scripts/make_oracle.py --nets mlp_std --n 20 --out /tmp/oracle  # a quick look

Writes ``<out>/<net>/weights.pt``, ``samples.npz``, ``margins.csv`` (see marginbench/oracle.py)
and ``<out>/README.md`` (how it was made, accuracies, statuses, timings). Deterministic: every
random draw is seeded and torch runs on one thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from one_line_errors import OneLineParser  # same folder

from marginbench.margins import build_estimator
from marginbench.margins.base import AttackSpec, Estimator, MarginBatch
from marginbench.margins.exact import exact_margin
from marginbench.oracle import ARCHITECTURES, ORACLE_DIR, downsample
from marginbench.train import load_split, pgd_linf, seed_everything

ROOT = Path(__file__).resolve().parents[1]
EPS = 0.1  # Fashion-MNIST's usual L-inf radius: adversarial training and robust accuracy
# net -> training: PGD-AT radius (0 = standard training), epochs
RECIPES = {"mlp_std": {"eps": 0.0, "epochs": 4}, "cnn_pgd": {"eps": EPS, "epochs": 4}}
PGD_STEPS, EVAL_STEPS = 7, 20


def fashion(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split("fashion_mnist", split, None)
    return downsample(images.float().div_(255.0)), labels


def train(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    """Adam (lr 1e-3, batch 128); PGD-AT: 7-step PGD from a random start, step 2.5 eps / 7."""
    recipe = RECIPES[name]
    seed_everything(0)
    model = ARCHITECTURES[name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    eps = recipe["eps"]
    for _ in range(recipe["epochs"]):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 128):
            idx = order[start: start + 128]
            xb, yb = x[idx], y[idx]
            if eps > 0:
                model.eval()
                xb = pgd_linf(model, xb, yb, eps, PGD_STEPS, 2.5 * eps / PGD_STEPS, generator=gen)
                model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracies(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Clean accuracy on the whole test split, PGD-20 accuracy at EPS on its first 1000."""
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    x_adv = pgd_linf(model, x[:1000], y[:1000], EPS, EVAL_STEPS, 2.5 * EPS / EVAL_STEPS,
                     generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y[:1000]).float().mean().item()
    return {"clean_acc": clean, "pgd20_acc_first1000": robust}


def exact_estimator(time_limit: float, records: list) -> Estimator:
    """configs/attack/exact.yaml, with the solver's per-sample records kept in ``records``."""
    cfg = yaml.safe_load((ROOT / "configs" / "attack" / "exact.yaml").read_text())
    options = {**cfg["options"], "time_limit": time_limit}
    spec = AttackSpec("exact", cfg["steps"], cfg["restarts"], cfg["refine"], options)

    def fn(*args):
        cert = exact_margin(*args)
        records.append(cert.details)
        return cert

    build_estimator(cfg, "Linf")  # the registered preset builds (checks the yaml)
    return Estimator(spec, "Linf", fn)


def exact_table(model, x, y, indices, time_limit: float, batch: int) -> pd.DataFrame:
    records: list = []
    estimator = exact_estimator(time_limit, records)
    with torch.no_grad():
        pred = model(x).argmax(1)
    result = MarginBatch.concat([estimator(model, x[i: i + batch], pred[i: i + batch])
                                 for i in range(0, len(x), batch)])
    solver = [r for rec in records for r in rec["solver"]]
    return pd.DataFrame({
        "index": indices, "label": y.numpy(), "pred": pred.numpy(), "correct": (pred == y).numpy(),
        "margin": result.margin, "lower_bound": result.lower_bound, "status": result.status,
        "attack_margin": np.concatenate([rec["attack_margin"] for rec in records]),
        "milp_seconds": [r.seconds for r in solver], "n_unstable": [r.n_unstable for r in solver],
        "n_milp": [r.n_milp for r in solver], "n_pruned_classes": [len(r.pruned) for r in solver],
    })


def make(name: str, out: Path, n: int, time_limit: float, batch: int) -> dict:
    t0 = time.perf_counter()
    x_train, y_train = fashion("train")
    model = train(name, x_train, y_train)
    train_s = time.perf_counter() - t0
    x_test, y_test = fashion("test")
    acc = accuracies(model, x_test, y_test)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, folder / "weights.pt")
    x, y, indices = x_test[:n].contiguous(), y_test[:n], np.arange(n)
    np.savez_compressed(folder / "samples.npz", images=x.numpy(), labels=y.numpy(), indices=indices)
    t1 = time.perf_counter()
    table = exact_table(model, x, y, indices, time_limit, batch)
    exact_s = time.perf_counter() - t1
    table.to_csv(folder / "margins.csv", index=False, float_format="%.10g")
    robust = float((table["correct"] & (table["margin"] > EPS)).mean())
    info = {"net": name, **RECIPES[name], **acc, "exact_robust_acc": robust, "n": n,
            "statuses": table["status"].value_counts().to_dict(), "train_seconds": round(train_s, 1),
            "exact_seconds": round(exact_s, 1), "milp_seconds_mean": round(table["milp_seconds"].mean(), 2),
            "milp_seconds_median": round(table["milp_seconds"].median(), 2),
            "milp_seconds_max": round(table["milp_seconds"].max(), 2)}
    print(json.dumps(info), flush=True)
    return info


def write_readme(out: Path, infos: list[dict], total_s: float, args: argparse.Namespace) -> None:
    rows = "\n".join(
        f"| `{i['net']}` | {'PGD-AT, eps ' + str(i['eps']) if i['eps'] else 'standard'}, {i['epochs']} epochs "
        f"| {100 * i['clean_acc']:.1f} | {100 * i['pgd20_acc_first1000']:.1f} | {100 * i['exact_robust_acc']:.1f} "
        f"| {i['n']} | {', '.join(f'{k} {v}' for k, v in sorted(i['statuses'].items()))} "
        f"| {i['milp_seconds_mean']} / {i['milp_seconds_median']} / {i['milp_seconds_max']} "
        f"| {i['train_seconds']} + {i['exact_seconds']} |"
        for i in infos
    )
    text = f"""# Oracle networks: exact L-inf margins

Made by `scripts/make_oracle.py --n {args.n} --time-limit {args.time_limit}` in {total_s / 60:.1f} min
({platform.processor() or platform.machine()}, torch {torch.__version__}, one thread; the machine's two
cores were shared with other jobs, so the timings are upper bounds).

Each folder holds `weights.pt` (state dict of `marginbench.oracle.<net>()`, loads with
`weights_only=True`), `samples.npz` (the first {args.n} Fashion-MNIST test images, averaged
over 2x2 blocks to 14x14: `marginbench.oracle.downsample`, with labels and test-set
indices) and `margins.csv`: per sample the test-set `index`, `label`, `pred`, `correct`,
the exact L-inf input `margin` of `attack=exact` (verified: the point flips the float32
network), its certified `lower_bound` (HiGHS's dual bound less 1e-7 for float32 rounding), `status` (`exact`: gap <= 1e-6;
`bracket`: time limit), the default estimator's (fab_polish) `attack_margin` that bounded the
MILP's box, and the solver's `milp_seconds`, `n_unstable` (ReLUs with an undetermined sign
on the box, one binary each), `n_milp` (MILPs solved, one per runner-up class that its
linear bound could not rule out) and `n_pruned_classes`.

Training: Adam (lr 1e-3, batch 128), seed 0; PGD-AT with 7-step PGD at eps {EPS} from a
random start (step 2.5 eps / 7). Clean accuracy: whole test split (14x14); PGD-20: first
1000 test images at eps {EPS}; exact robust accuracy: correct and exact margin > {EPS} on
the {args.n} samples.

| net | training | clean acc | PGD-20 acc | exact robust acc | samples | status | MILP s per sample (mean / median / max) | train + exact s |
|---|---|---:|---:|---:|---:|---|---:|---:|
{rows}

Load with `marginbench.oracle.load_oracle("results/oracle/<net>")`; `scripts/bench_oracle.py`
runs every L-inf estimator against these margins; `tests/test_exact.py` re-checks them.
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser("make_oracle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--n", type=int, default=120, help="first n test images per net")
    parser.add_argument("--time-limit", type=float, default=60.0, help="MILP seconds per sample (exact.yaml: 60)")
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ORACLE_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    infos = [make(name, args.out, args.n, args.time_limit, args.batch) for name in args.nets]
    write_readme(args.out, infos, time.perf_counter() - start, args)


if __name__ == "__main__":
    main()
