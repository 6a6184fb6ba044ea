"""Round 18 probe: how many rows each model call of the truest preset's polish carries
(bfloat16 only pays on large calls, bf16_speed.txt). Counts the model's forward calls on
the first N images, inside refine._pgd_in_ball ("polish") and elsewhere, by rows // 64.

    OMP_NUM_THREADS=1 .venv/bin/python results/bench/round18/polish_rows.py fm_madry fashion_mnist 100 fmn_polish_multistart_9
"""
import collections
import sys

import probe

import marginbench.margins.refine as refine


def main() -> None:
    model_name, data, n, spec = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model, x, y_pred = probe.model_images_predictions(model_name, data, n)
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
    wall, _ = probe.run_preset(spec, model, x, y_pred)
    print(f"{spec} on {n} {model_name} images: {wall:.1f} s")
    print(f"{'where':7s} {'rows':>9s} {'calls':>6s}")
    for (where, bucket), count in sorted(calls.items()):
        print(f"{where:7s} {bucket * 64:4d}-{bucket * 64 + 63:<4d} {count:6d}")


if __name__ == "__main__":
    main()
