"""Margin estimators at Table-1 scale: WRN-28-10 (RobustBench's architecture, random
weights), CIFAR-shaped inputs, per estimator samples/s, peak memory and the projected time of
a 10,000-sample Table-1 row (`make bench-gpu`).

Peak memory: CUDA ``max_memory_allocated`` (reset per estimator) on a GPU; on CPU the
process's peak RSS (``ru_maxrss``, a high-water mark that never goes down, so later
estimators show at least the earlier peaks). Speed options are off by default; with any of
them on, the estimator is run again without them and the margins compared, so an option is
only worth turning on where the margins stay the same.

    python scripts/bench_gpu.py                      # 512 inputs, full budgets, CUDA if present
    python scripts/bench_gpu.py --n 8 --steps 2 --polish-rounds 2 --device cpu   # smoke test
"""

from __future__ import annotations

import importlib.util
import resource
import sys
import time
from pathlib import Path

import torch
from bench_margins import load_attack
from one_line_errors import OneLineParser  # same folder

from marginbench.margins import MarginBatch, build_estimator

ROW = 10_000  # samples of a Table-1 row


def _wrn_from_file(num_classes: int = 10) -> torch.nn.Module:
    spec = importlib.util.find_spec("robustbench")
    root = Path(spec.submodule_search_locations[0]) if spec else None
    path = root / "model_zoo" / "architectures" / "wide_resnet.py" if root else None
    if path is None or not path.exists():
        sys.exit("robustbench's wide_resnet.py not found; pip install robustbench")
    mod_spec = importlib.util.spec_from_file_location("_rb_wide_resnet", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.WideResNet(depth=28, widen_factor=10, num_classes=num_classes)


def estimator_spec(name: str, args) -> str:
    """configs/attack/<name> with the CLI's budget overrides (bench_margins syntax)."""
    over = [f"steps={args.steps}"] if args.steps else []
    if args.restarts:
        over.append(f"restarts={args.restarts}")
    if args.polish_rounds is not None and name != "fab":
        over.append(f"options.polish_rounds={args.polish_rounds}")
    return name + (":" + ",".join(over) if over else "")


def timed_run(estimator, model, x, y, batch_size: int, device: torch.device, cuda_events: bool):
    """Run all batches; seconds by perf_counter after a synchronise, or by CUDA events."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start_ev = end_ev = None
    if cuda_events and device.type == "cuda":
        start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start_ev.record()
    t0 = time.perf_counter()
    parts = [estimator(model, x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if start_ev is not None:
        end_ev.record()
        torch.cuda.synchronize(device)
        seconds = start_ev.elapsed_time(end_ev) / 1000
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return MarginBatch.concat(parts), seconds, peak


def prepare(args, device):
    torch.manual_seed(0)
    model = _wrn_from_file().to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    fast = torch.compile(model) if args.compile else model
    x = torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = torch.cat([model(x[i:i + args.batch_size]).argmax(1) for i in range(0, args.n, args.batch_size)])
    return model, fast, x, y


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser("bench_gpu", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--estimators", nargs="+", default=["fab", "fab_polish", "fab_polish_topk"])
    p.add_argument("--steps", type=int, default=0, help="override FAB steps (0: the preset's)")
    p.add_argument("--restarts", type=int, default=0, help="override restarts (0: the preset's)")
    p.add_argument("--polish-rounds", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--channels-last", action="store_true", help="model weights in channels-last")
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--cuda-events", action="store_true", help="time with CUDA events")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, fast, x, y = prepare(args, device)
    changed = args.channels_last or args.compile or args.cudnn_benchmark
    print(f"[bench-gpu] WRN-28-10 (random weights) n={args.n} batch={args.batch_size} device={device} "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else f'threads={torch.get_num_threads()}'}")
    print(f"{'estimator':<40} {'samples/s':>10} {'s/sample':>9} {'peak MiB':>9} {'bwd/sample':>10} "
          f"{'10k row':>10}  {'margins vs plain':>16}")
    for name in args.estimators:
        spec = estimator_spec(name, args)
        _, cfg = load_attack(spec)
        est = build_estimator(cfg, "Linf")
        res, sec, peak = timed_run(est, fast, x, y, args.batch_size, device, args.cuda_events)
        same = ""
        if changed:  # the options are only worth it where the verified margins do not move
            ref, *_ = timed_run(est, model, x, y, args.batch_size, device, False)
            same = f"{int((ref.margin == res.margin).sum())}/{len(x)} equal"
        rate = len(x) / sec
        print(f"{spec:<40} {rate:10.3f} {sec / len(x):9.3f} {peak / 2**20:9.0f} {res.n_backward.mean():10.1f} "
              f"{ROW / rate / 3600:9.2f}h  {same:>16}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
