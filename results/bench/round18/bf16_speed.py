"""Round 18 probe: would the polish (forward-bound, see round 13) get cheaper if its PGD
passes ran in bfloat16 on CPU and only the final check ran in float32?  Times one
forward, and one forward + input-gradient backward, of a model on real images in
float32 and under CPU bfloat16 autocast, one thread (ms per call, mean of REPEATS), and
says how far the bfloat16 gradient's sign (what an L-inf PGD step uses) and the logit
margin are from float32's.

    OMP_NUM_THREADS=1 .venv/bin/python results/bench/round18/bf16_speed.py fm_madry fashion_mnist
"""
import sys
import time

import probe
import torch

REPEATS = 30


def ms_per_call(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up: autocast and oneDNN pick their kernels on the first call
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def forward(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(x).float()


def input_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Gradient of the top-other minus true logit gap, as a margin attack's PGD step takes it."""
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x).float()
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    (grad,) = torch.autograd.grad((other - true).sum(), x)
    return grad


def main() -> None:
    model_name, data = sys.argv[1], sys.argv[2]
    model, x_all, y_all = probe.model_images_predictions(model_name, data, 256)
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"{model_name} on {data}, one thread, torch {torch.__version__}")
    print(f"{'rows':>5s} {'fwd fp32':>9s} {'fwd bf16':>9s} {'speed-up':>8s} "
          f"{'f+b fp32':>9s} {'f+b bf16':>9s} {'speed-up':>8s} {'sign agree':>10s} {'gap err':>8s}")
    for rows in (8, 64, 256):
        x, y = x_all[:rows], y_all[:rows]
        f32 = ms_per_call(lambda x=x: forward(model, x, False))
        f16 = ms_per_call(lambda x=x: forward(model, x, True))
        b32 = ms_per_call(lambda x=x, y=y: input_gradient(model, x, y, False))
        b16 = ms_per_call(lambda x=x, y=y: input_gradient(model, x, y, True))
        g32, g16 = input_gradient(model, x, y, False), input_gradient(model, x, y, True)
        agree = (g32.sign() == g16.sign()).float().mean().item()
        l32, l16 = forward(model, x, False), forward(model, x, True)
        gap_err = (l16 - l32).abs().max().item() / l32.abs().max().item()
        print(f"{rows:5d} {f32:9.3f} {f16:9.3f} {f32 / f16:7.2f}x "
              f"{b32:9.3f} {b16:9.3f} {b32 / b16:7.2f}x {agree:10.4f} {gap_err:8.4f}")


if __name__ == "__main__":
    main()
