"""Train the Fashion-MNIST demo zoo (what `make zoo` runs).

Six small CNNs, one per training loss, written to marginbench/zoo/<name>.pt, and
marginbench/zoo/zoo.json recording each model's training config, test accuracy (clean on the
10k test images, PGD-20 at eps = 0.1 on the first 1000), wall times and the total.

    python scripts/train_zoo.py                 # all six, fm_madry first
    python scripts/train_zoo.py fm_trades       # only some (zoo.json entries of others kept)
    python scripts/train_zoo.py --threads 2 --device cpu
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from one_line_errors import OneLineParser  # same folder

from marginbench.models.local import read_checkpoint_meta
from marginbench.models.sources import ZOO_DIR
from marginbench.train import load_recipe, train_model

# fm_madry first: it is the model the benchmarks need soonest
ZOO = {
    "fm_madry": "fmnist_cnn_pgd",
    "fm_standard": "fmnist_cnn_standard",
    "fm_trades": "fmnist_cnn_trades",
    "fm_mart": "fmnist_cnn_mart",
    "fm_alp": "fmnist_cnn_alp",
    "fm_clp": "fmnist_cnn_clp",
}
ZOO_JSON = ZOO_DIR / "zoo.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, value: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".zoo.", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(value, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser("train_zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"models to train (default: all of {', '.join(ZOO)})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--data-dir", default=os.environ.get("MARGINBENCH_DATA_DIR", "data"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field for every model, e.g. --set epochs=2 (recorded in zoo.json)")
    args = parser.parse_args(argv)

    names = args.names or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        parser.error(f"unknown zoo model(s) {unknown}; choose from {', '.join(ZOO)}")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    ZOO_DIR.mkdir(parents=True, exist_ok=True)

    record = json.loads(ZOO_JSON.read_text()) if ZOO_JSON.is_file() else {}
    record.setdefault("format", "marginbench-zoo-v1")
    record.update(
        dataset="fashion_mnist",
        threat_model="Linf",
        eps=0.1,
        command="make zoo  (python scripts/train_zoo.py)",
        timing_note="wall times are for 2 CPU threads; the CPUs may be shared with other jobs, see "
        "load_avg_1min (before, after) of each model",
        evaluation="clean accuracy on the 10,000 test images; PGD accuracy: L-inf PGD, CE loss, "
        "20 steps of 2.5*eps/20, one random start, eps = 0.1, first 1,000 test images",
    )
    models = record.setdefault("models", {})

    run_start = time.perf_counter()
    for name in names:
        overrides = [f"name={name}", *args.overrides] + (["progress=false"] if args.no_progress else [])
        cfg = load_recipe(ZOO[name], overrides)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        path = train_model(cfg, args.device, out_path=ZOO_DIR / f"{name}.pt", data_dir=Path(args.data_dir))
        wall = time.perf_counter() - t0
        meta = read_checkpoint_meta(path)
        m = meta["metrics"]
        models[name] = {
            "recipe": f"configs/train/{ZOO[name]}.yaml",
            "file": f"{name}.pt",
            "sha256": _sha256(path),
            "size_bytes": path.stat().st_size,
            "loss": cfg.loss,
            "clean_acc": m["clean_acc"],
            "pgd_acc": m["pgd_acc"],
            "clean_acc_first_1000": m["clean_acc_eval_subset"],
            "train_seconds": m["train_seconds"],
            "eval_seconds": m["eval_seconds"],
            "wall_seconds": round(wall, 2),
            # 1-minute load average before / after: the CPUs are shared, so wall times are
            # only comparable between runs on an equally quiet machine
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "train_config": meta["train_config"],
            "data": meta["data"],
            "metrics": m,
        }
        # keep the canonical order in the file whatever order models were (re)trained in
        record["models"] = {k: models[k] for k in ZOO if k in models}
        record["total_seconds"] = round(sum(v["wall_seconds"] for v in record["models"].values()), 2)
        record["machine"] = {
            "device": args.device,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        _write_json(ZOO_JSON, record)
        print(f"[zoo] {name}: clean {m['clean_acc']:.4f}  PGD {m['pgd_acc']:.4f}  "
              f"wall {wall:.0f}s -> {path}", flush=True)
    print(f"[zoo] this run {time.perf_counter() - run_start:.0f}s; "
          f"zoo total {record['total_seconds']:.0f}s -> {ZOO_JSON}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
