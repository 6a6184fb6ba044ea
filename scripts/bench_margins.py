#!/usr/bin/env python
"""Side-by-side benchmark of input-margin estimators (tightness and cost), one process.

    python scripts/bench_margins.py --model aa_resnet18 --data ../shared/data/cifar10_test_first100.npz \
        --n 100 --norm Linf --estimators fab fab_polish fmn   # -> results/bench/aa_resnet18_Linf.csv

Estimators are names of configs/attack/<name>.yaml, optionally with overrides:
``fmn:steps=200,refine=true,options.alpha_init=2``. Printed per estimator: median margin,
median ratio to the best margin any estimator found on that sample, share within 1% of
it, share at least as tight as fab (margin <= fab * (1 + 1e-4)), median ratio to fab,
failures, forward/backward passes per sample, seconds per sample, time ratio to fab, and
the same two for this process's CPU time (steadier than wall time on a shared machine).
Writes the summary to --out and the per-sample margins to <out>_samples.csv.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from one_line_errors import OneLineParser, run_main  # same folder

from marginbench.cache import atomic_write_text
from marginbench.config import AttackConfig, ModelConfig, attack_preset
from marginbench.data import read_idx, to_float_nchw
from marginbench.errors import MarginbenchError
from marginbench.margins import DEFAULT_ATTACK, MarginBatch, build_estimator
from marginbench.settings import check_out_file

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TIGHT_RTOL = 1e-4  # "as tight as fab": margin <= fab * (1 + TIGHT_RTOL)


def parse_value(text: str):
    return yaml.safe_load(text)


def load_attack(spec: str) -> tuple[str, AttackConfig]:
    """``name:key=value,options.key=value`` -> (spec, config); a bad spec is a MarginbenchError."""
    name, _, overrides = spec.partition(":")
    try:
        raw = attack_preset(name)
    except MarginbenchError as exc:
        raise MarginbenchError(f"unknown estimator: {exc}") from None
    raw["options"] = dict(raw["options"] or {})
    for item in filter(None, overrides.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MarginbenchError(f"estimator {spec!r}: {item!r} is not key=value; "
                                   "write e.g. fab:steps=50,options.polish_rounds=2")
        if key.startswith("options."):
            raw["options"][key[len("options."):]] = parse_value(value)
        else:
            raw[key] = parse_value(value)
    try:  # the types `marginbench run` enforces (steps=2.5 would otherwise become 2)
        OmegaConf.merge(OmegaConf.structured(AttackConfig), raw)
    except OmegaConfBaseException as exc:
        reason = str(exc).splitlines()[0]
        raise MarginbenchError(f"estimator {spec!r}: {reason}; see configs/attack/{name}.yaml for its keys and types") from None
    return spec, AttackConfig(**raw)


def checked_attacks(specs: list[str], norm: str) -> list[tuple[str, AttackConfig]]:
    """Every estimator parsed and built once before any of them runs: a typo in the last
    one would otherwise stop the benchmark after the others' (long) runs. Building checks
    each option's type and range, as `marginbench run` does before loading a model."""
    attacks = []
    for spec in specs:
        label, cfg = load_attack(spec)
        try:
            build_estimator(cfg, norm)
        except (TypeError, ValueError) as exc:  # a value of the right type the estimator still cannot use
            name = spec.partition(":")[0]
            raise MarginbenchError(f"estimator {spec!r}: {exc}; give each key a value of the type "
                                   f"configs/attack/{name}.yaml has") from None
        attacks.append((label, cfg))
    return attacks


def check_counts(**counts: int) -> None:
    """Sample and batch counts a run can use (0 samples or a 0-row batch would fail late)."""
    for key, value in counts.items():
        if value < 1:
            raise MarginbenchError(f"--{key.replace('_', '-')} {value}: must be at least 1")


def load_model(name: str, device: torch.device) -> torch.nn.Module:
    path = Path(name)
    if path.suffix == ".pt" and path.exists():
        try:
            from marginbench.models.local import load_local_checkpoint

            model = load_local_checkpoint(path, device)
            return (model[0] if isinstance(model, tuple) else model).eval()
        except Exception as exc:  # noqa: BLE001 - fall back to plain formats
            print(f"[bench] load_local_checkpoint failed ({exc!r}); trying TorchScript")
        # TorchScript carries its own code; pickled nn.Modules are refused (weights only).
        return torch.jit.load(str(path), map_location=device).eval()
    from marginbench.models import load_model as registry_load

    model_dir = Path(os.environ.get("MARGINBENCH_MODEL_DIR", "models_cache"))
    try:
        model, _entry = registry_load(ModelConfig(kind="zoo", name=name), model_dir, device)
    except MarginbenchError as exc:
        raise MarginbenchError(f"cannot load model {name!r}: {exc}") from None
    return model.eval()


def load_data(spec: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if spec == "fashion_mnist":
        files = [FASHION_DIR / f"t10k-{part}-idx{dim}-ubyte.gz" for part, dim in (("images", 3), ("labels", 1))]
        if not all(f.is_file() for f in files):
            raise MarginbenchError(f"--data fashion_mnist: no test set in {FASHION_DIR}; "
                                   "run `make data` (installs Debian's dataset-fashion-mnist)")
        images, labels = read_idx(files[0])[:n, :, :, None], read_idx(files[1])[:n]
    else:
        images, labels = load_npz(spec, n)
    x = to_float_nchw(np.array(images, copy=True))  # the pipeline's layout: same margins as `marginbench run`
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def load_npz(path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images (uint8 NHW or NHWC) and labels of an .npz file."""
    if not Path(path).is_file():
        raise MarginbenchError(f"--data {path}: no such file; give an .npz with `images` (uint8 NHWC) "
                               "and `labels`, or fashion_mnist")
    try:
        with np.load(path) as data:
            images, labels = data["images"][:n], data["labels"][:n]
    except (KeyError, ValueError, OSError, TypeError) as exc:  # TypeError: an .npy, not an .npz
        raise MarginbenchError(f"--data {path}: cannot read images and labels ({exc}); "
                               "give an .npz with `images` (uint8 NHWC) and `labels`") from None
    return (images[..., None] if images.ndim == 3 else images), labels


def run_estimator(estimator, model, x, y_pred, batch_size: int) -> MarginBatch:
    parts = [estimator(model, x[i: i + batch_size], y_pred[i: i + batch_size])
             for i in range(0, len(x), batch_size)]
    return MarginBatch.concat(parts)


def write_samples(path: Path, labels, y_pred, results: dict[str, MarginBatch], cpu_seconds: dict[str, float]) -> None:
    per_sample = pd.DataFrame({"index": np.arange(len(labels)), "label": labels.cpu().numpy(), "pred": y_pred.cpu().numpy()})
    for name, r in results.items():
        per_sample[f"margin[{name}]"] = r.margin
        per_sample[f"found_by[{name}]"] = r.found_by
        per_sample[f"n_forward[{name}]"] = r.n_forward
        per_sample[f"n_backward[{name}]"] = r.n_backward
        per_sample[f"seconds[{name}]"] = r.seconds
        per_sample[f"cpu_seconds[{name}]"] = cpu_seconds[name] / len(labels)
    atomic_write_text(path, per_sample.to_csv(index=False))


def load_samples(path: Path, n: int) -> dict[str, tuple[MarginBatch, float]]:
    """Estimators already in a per-sample CSV of the same size (for --resume)."""
    if not path.exists():
        return {}
    df = pd.read_csv(path, keep_default_na=False)
    if len(df) != n:
        return {}
    found = {}
    for col in df.columns:
        if col.startswith("margin["):
            name = col[len("margin["):-1]
            margin = df[col].astype(float).to_numpy()
            found[name] = (MarginBatch(
                margin=margin, success=np.isfinite(margin),
                found_by=df[f"found_by[{name}]"].astype(str).to_numpy(),
                x_adv=torch.empty(0),
                n_forward=df[f"n_forward[{name}]"].to_numpy(np.int64),
                n_backward=df[f"n_backward[{name}]"].to_numpy(np.int64),
                seconds=df[f"seconds[{name}]"].to_numpy(np.float64),
            ), float(df[f"cpu_seconds[{name}]"].sum()))
    return found


def summarize(results: dict[str, MarginBatch], fab_key: str | None) -> pd.DataFrame:
    margins = np.stack([r.margin for r in results.values()])
    best = margins.min(axis=0)
    fab = results[fab_key].margin if fab_key else None
    fab_seconds = results[fab_key].seconds.sum() if fab_key else np.nan
    rows = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, r in results.items():
            m = r.margin
            has_best = np.isfinite(best)
            row = {
                "estimator": name,
                "median_margin": float(np.median(m)),
                "median_ratio_to_best": float(np.median(m[has_best] / best[has_best])) if has_best.any() else np.nan,
                "share_within_1pct_of_best": float(np.mean(m[has_best] <= best[has_best] * 1.01)) if has_best.any() else np.nan,
                "failures": int((~r.success).sum()),
                "fwd_per_sample": float(r.n_forward.mean()),
                "bwd_per_sample": float(r.n_backward.mean()),
                "seconds_per_sample": float(r.seconds.mean()),
            }
            if fab is not None:
                both = np.isfinite(m) & np.isfinite(fab)
                row["share_as_tight_as_fab"] = float(np.mean(np.where(np.isfinite(fab), m <= fab * (1 + TIGHT_RTOL), True)))
                row["median_ratio_to_fab"] = float(np.median(m[both] / fab[both])) if both.any() else np.nan
                row["time_ratio_to_fab"] = float(r.seconds.sum() / fab_seconds)
            rows.append(row)
    return pd.DataFrame(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser("bench_margins", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="aa_resnet18", help="aa_resnet18 | path to a .pt | registry name")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10_test_first100.npz"), help="npz (uint8 NHWC images, labels) or fashion_mnist")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--estimators", nargs="+", default=["fab", DEFAULT_ATTACK],
                   help="configs/attack names, optionally name:key=value,options.key=value")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--resume", action="store_true", help="reuse estimators already in <out>_samples.csv")
    p.add_argument("--out", default=None, help="summary CSV (default results/bench/<model>_<norm>.csv)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # every input checked before the model loads: a bad one would otherwise surface after
    # the first estimators' runs (tens of minutes each on the ResNet-18) or at the final write
    check_counts(n=args.n, batch_size=args.batch_size)
    if args.threads < 0:
        raise MarginbenchError(f"--threads {args.threads}: must be 0 (torch's default) or more")
    attacks = checked_attacks(args.estimators, args.norm)
    out = Path(args.out or ROOT / "results" / "bench" / f"{Path(args.model).stem}_{args.norm}.csv")
    check_out_file("--out", out)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, labels = load_data(args.data, args.n)
    model = load_model(args.model, device)
    x, labels = x.to(device), labels.to(device)
    with torch.no_grad():
        y_pred = torch.cat([model(x[i: i + args.batch_size]).argmax(1) for i in range(0, len(x), args.batch_size)])
    print(f"[bench] model={args.model} data={args.data} n={len(x)} norm={args.norm} device={device} "
          f"accuracy={(y_pred == labels).float().mean().item():.3f} threads={torch.get_num_threads()}")

    out.parent.mkdir(parents=True, exist_ok=True)
    samples_path = out.with_name(out.stem + "_samples.csv")
    done = load_samples(samples_path, len(x)) if args.resume else {}
    results: dict[str, MarginBatch] = {}
    cpu_seconds: dict[str, float] = {}
    for label, cfg in attacks:
        if label in done:
            results[label], cpu_seconds[label] = done[label]
            print(f"[bench] {label}: reused from {samples_path}", flush=True)
            continue
        estimator = build_estimator(cfg, args.norm)
        start, cpu_start = time.perf_counter(), time.process_time()
        results[label] = run_estimator(estimator, model, x, y_pred, args.batch_size)
        cpu_seconds[label] = time.process_time() - cpu_start
        print(f"[bench] {label}: {time.perf_counter() - start:.1f}s wall, {cpu_seconds[label]:.1f}s CPU  {estimator!r}", flush=True)
        # written after every estimator: a killed run keeps what it finished (--resume)
        write_samples(samples_path, labels, y_pred, results, cpu_seconds)
    write_summary(out, args, results, cpu_seconds, len(x))
    write_samples(samples_path, labels, y_pred, results, cpu_seconds)
    print(f"[bench] wrote {out} and {samples_path}")
    return 0


def write_summary(out: Path, args: argparse.Namespace, results: dict[str, MarginBatch],
                  cpu_seconds: dict[str, float], n: int) -> None:
    fab_key = next((k for k in results if k == "fab"), None)
    table = summarize(results, fab_key)
    # CPU time of this process: on a shared machine wall time swings with other users' load
    table["cpu_seconds_per_sample"] = [cpu_seconds[k] / n for k in results]
    if fab_key:
        table["cpu_time_ratio_to_fab"] = [cpu_seconds[k] / cpu_seconds[fab_key] for k in results]
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    table.insert(0, "model", args.model)
    table.insert(1, "norm", args.norm)
    table.insert(2, "n", n)
    atomic_write_text(out, table.to_csv(index=False))


if __name__ == "__main__":
    raise SystemExit(run_main(main, "bench_margins"))
