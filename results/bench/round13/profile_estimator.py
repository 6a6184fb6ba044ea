"""Round 13 probe: where an estimator's time goes on fm_madry (cProfile, one thread).

    OMP_NUM_THREADS=1 .venv/bin/python results/bench/round13/profile_estimator.py EST N
"""
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]
import bench_margins as bm  # noqa: E402

from marginbench.margins import build_estimator  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    spec, n = sys.argv[1], int(sys.argv[2])
    model = bm.load_model("fm_madry", torch.device("cpu"))
    x, _ = bm.load_data("fashion_mnist", n)
    with torch.no_grad():
        y_pred = model(x).argmax(1)
    _, cfg = bm.load_attack(spec)
    estimator = build_estimator(cfg, "Linf")
    profile = cProfile.Profile()
    start = time.time()
    profile.enable()
    bm.run_estimator(estimator, model, x, y_pred, 100)
    profile.disable()
    print(spec, "wall", time.time() - start)
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
