"""Round 18 probe: how many rows each model call of the truest preset's polish carries
(bfloat16 only pays on large calls, bf16_speed.txt). Counts the model's forward calls on
the first N images, inside refine._pgd_in_ball ("polish") and elsewhere, by rows // 64.

    OMP_NUM_THREADS=1 .venv/bin/python results/bench/round18/polish_rows.py fm_madry fashion_mnist 100 fmn_polish_multistart_9
"""
import collections
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]
import bench_margins as bm  # noqa: E402

import marginbench.margins.refine as refine  # noqa: E402
from marginbench.margins import build_estimator  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    model_name, data, n, spec = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model = bm.load_model(model_name, torch.device("cpu"))
    x, _ = bm.load_data(data, n)
    with torch.no_grad():
        y_pred = model(x).argmax(1)
    calls: collections.Counter = collections.Counter()
    in_polish = [False]
    float32_pgd_in_ball = refine._pgd_in_ball

    def marked_pgd_in_ball(*args, **kwargs):
        in_polish[0] = True
        try:
            return float32_pgd_in_ball(*args, **kwargs)
        finally:
            in_polish[0] = False

    refine._pgd_in_ball = marked_pgd_in_ball
    model.register_forward_pre_hook(
        lambda _m, inp: calls.update([("polish" if in_polish[0] else "other", inp[0].shape[0] // 64)]))
    _, cfg = bm.load_attack(spec)
    start = time.time()
    bm.run_estimator(build_estimator(cfg, "Linf"), model, x, y_pred, 100)
    print(f"{spec} on {n} {model_name} images: {time.time() - start:.1f} s")
    print(f"{'where':7s} {'rows':>9s} {'calls':>6s}")
    for (where, bucket), count in sorted(calls.items()):
        print(f"{where:7s} {bucket * 64:4d}-{bucket * 64 + 63:<4d} {count:6d}")


if __name__ == "__main__":
    main()
