"""``marginbench calibrate`` and ``marginbench detect`` (argv parsing and file I/O only).

calibrate: a finished run directory (summary.json + samples.csv) and the model's checkpoint ->
detector.json. detect: detector.json + the same checkpoint + images (.npz, array ``images``:
uint8 NHWC or float NCHW in [0,1]) -> a CSV of logit margin and brittle flag per image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from marginbench.errors import MarginbenchError


def _checkpoint(arg: str) -> Path:
    # a path, or the name of a demo-zoo / locally trained model
    path = Path(arg)
    if path.is_file():
        return path
    from marginbench.models.local import find_local_checkpoint

    found = find_local_checkpoint(arg)
    if found is None:
        raise MarginbenchError(f"no checkpoint file or local model named {arg!r}; pass a .pt path")
    return found


def _load_model(arg: str):
    from marginbench.models.local import load_local_checkpoint

    return load_local_checkpoint(_checkpoint(arg), "cpu")[0]


def command_calibrate(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="marginbench calibrate")
    p.add_argument("run_dir", type=Path, help="a run directory (summary.json, samples.csv)")
    p.add_argument("--model", required=True, help="checkpoint path or local/zoo model name")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--n-calibration", type=int, default=None, help="random subset of the samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("detector.json"))
    a = p.parse_args(args)
    from marginbench.brittle import calibrate_from_samples, weights_sha256

    try:
        summary = json.loads((a.run_dir / "summary.json").read_text())
        samples = pd.read_csv(a.run_dir / "samples.csv")
    except OSError as exc:
        raise MarginbenchError(f"{a.run_dir} is not a finished run directory ({exc.strerror})") from None
    spec = calibrate_from_samples(
        samples, float(summary["eps"]), str(summary.get("norm", "Linf")), weights_sha256(_load_model(a.model)),
        target_recall=a.target_recall, delta=a.delta, n_calibration=a.n_calibration, seed=a.seed,
    )
    spec.save(a.out)
    print(f"{a.out}: flag when logit margin <= {spec.threshold:.4g}; recall >= {spec.target_recall} "
          f"with probability >= {1 - spec.delta:g} ({spec.n_calibration_nonrobust} non-robust of "
          f"{spec.n_calibration} calibration samples)")
    return 0


def command_detect(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="marginbench detect")
    p.add_argument("--detector", type=Path, required=True)
    p.add_argument("--model", required=True, help="checkpoint path or local/zoo model name")
    p.add_argument("--images", type=Path, required=True, help=".npz with an images array")
    p.add_argument("--out", type=Path, default=Path("brittle.csv"))
    a = p.parse_args(args)
    import torch

    from marginbench.brittle import BrittleDetector, DetectorSpec

    det = BrittleDetector(_load_model(a.model), DetectorSpec.load(a.detector)).eval()
    with np.load(a.images, allow_pickle=False) as npz:
        images = npz["images"]
    x = torch.from_numpy(images)
    x = x.permute(0, 3, 1, 2).float() / 255 if images.dtype == np.uint8 else x.float()
    with torch.no_grad():
        logits, brittle, score = det(x)
    out = pd.DataFrame({"pred": logits.argmax(1).numpy(), "logit_margin": score.numpy(),
                        "brittle": brittle.numpy()})
    out.to_csv(a.out, index_label="row")
    print(f"{a.out}: {int(out.brittle.sum())} of {len(out)} inputs flagged brittle")
    return 0
