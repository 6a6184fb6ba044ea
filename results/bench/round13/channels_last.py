"""Round 13 probe: does running the model in channels_last memory format speed the
estimators up on CPU, and does it change the ratio to fab?  Each estimator runs twice in
one process, on the model as loaded and on a copy converted to channels_last (weights and
inputs); prints wall seconds and the per-sample margin ratio channels_last / plain.

    OMP_NUM_THREADS=1 .venv/bin/python results/bench/round13/channels_last.py MODEL DATA N EST...
"""
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]
import bench_margins as bm  # noqa: E402

from marginbench.margins import build_estimator  # noqa: E402


class ChannelsLast(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def main() -> None:
    torch.set_num_threads(1)
    model_name, data, n, specs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    model = bm.load_model(model_name, torch.device("cpu"))
    x, _ = bm.load_data(data, n)
    with torch.no_grad():
        y_pred = model(x).argmax(1)
    variants = {"plain": model, "cl": ChannelsLast(copy.deepcopy(model)).eval()}
    margins = {}
    for spec in specs:
        for tag, m in variants.items():
            _, cfg = bm.load_attack(spec)
            start = time.time()
            margins[spec, tag] = bm.run_estimator(build_estimator(cfg, "Linf"), m, x, y_pred, 100).margin
            print(f"{spec:28s} {tag:5s} wall {time.time() - start:7.2f}", flush=True)
    for spec in specs:
        plain, cl = margins[spec, "plain"], margins[spec, "cl"]
        ok = np.isfinite(plain) & np.isfinite(cl)
        ratio = cl[ok] / plain[ok]
        print(f"{spec} ratio cl/plain median {np.median(ratio):.6f} min {ratio.min():.4f} "
              f"max {ratio.max():.4f}  identical {(cl == plain).sum()}/{len(plain)}")


if __name__ == "__main__":
    main()
