"""Round 13 probe: fm_madry's max-pool and convolution layers, forward, NCHW against
channels_last, one thread, input requiring grad as in an attack (ms per call, mean of 50).

    OMP_NUM_THREADS=1 .venv/bin/python results/bench/round13/layer_speed.py
"""
import time

import torch
import torch.nn.functional as F

# (name, input shape without the batch, op) for the four layers of fm_madry's features
LAYERS = [
    ("conv 1->16 @28", (1, 28, 28), lambda x, w: F.conv2d(x, w, padding=1), (16, 1, 3, 3)),
    ("maxpool 16 @28", (16, 28, 28), lambda x, w: F.max_pool2d(x, 2), None),
    ("conv 16->32 @14", (16, 14, 14), lambda x, w: F.conv2d(x, w, padding=1), (32, 16, 3, 3)),
    ("maxpool 32 @14", (32, 14, 14), lambda x, w: F.max_pool2d(x, 2), None),
]


def ms_per_call(fn, repeats: int = 50) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'layer':16s} {'rows':>5s} {'NCHW ms':>9s} {'CL ms':>9s} {'speed-up':>9s}")
    for rows in (8, 64, 256):
        for name, shape, op, w_shape in LAYERS:
            x = torch.randn(rows, *shape, requires_grad=True)
            x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            w = torch.randn(*w_shape) if w_shape else None
            w_cl = w.contiguous(memory_format=torch.channels_last) if w_shape else None
            plain = ms_per_call(lambda x=x, w=w, op=op: op(x, w))
            cl = ms_per_call(lambda x=x_cl, w=w_cl, op=op: op(x, w))
            print(f"{name:16s} {rows:5d} {plain:9.3f} {cl:9.3f} {plain / cl:8.2f}x")


if __name__ == "__main__":
    main()
