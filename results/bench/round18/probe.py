"""What round 18's probes share: the model, its first ``n`` images and the model's
predictions on them, and one timed run of an estimator preset (one torch thread, batches of
100, L-inf, as in docs/scale.md's bench runs)."""
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]
import bench_margins as bm  # noqa: E402

from marginbench.margins import build_estimator  # noqa: E402


def model_images_predictions(model_name: str, data: str, n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(1)
    model = bm.load_model(model_name, torch.device("cpu"))
    x, _ = bm.load_data(data, n)
    with torch.no_grad():
        y_pred = model(x).argmax(1)
    return model, x, y_pred


def run_preset(spec: str, model: torch.nn.Module, x: torch.Tensor, y_pred: torch.Tensor) -> tuple[float, np.ndarray]:
    """Wall seconds and per-sample margins of one estimator preset (``fab``, ``fmn_polish_multistart_9``, ...)."""
    _, cfg = bm.load_attack(spec)
    start = time.time()
    margin = bm.run_estimator(build_estimator(cfg, "Linf"), model, x, y_pred, 100).margin
    return time.time() - start, margin
