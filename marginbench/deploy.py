"""``marginbench calibrate`` and ``marginbench detect`` as functions (no argv, no Hydra).

calibrate: the usual run config (model, dataset, n_samples/indices, attack, eps) plus a
:class:`~marginbench.config.DetectorConfig`. Input margins come from :func:`pipeline.run`, so
they are the very cached margins a ``marginbench run`` on the same images computes or reuses.
A seeded draw splits the evaluated samples into a calibration set (λ from
:mod:`marginbench.detect`) and a disjoint held-out set on which recall and FPR are reported.

detect: detector.json + images -> logit margin and brittle flag per image, no attack at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from marginbench import detect
from marginbench.brittle import (
    BrittleDetector,
    DetectorSpec,
    calibrate_from_samples,
    weights_sha256,
)
from marginbench.config import DetectorConfig, attack_label
from marginbench.errors import MarginbenchError
from marginbench.settings import RunSettings, dataset_config, validate

log = logging.getLogger("marginbench")

SCORES = ("logit_margin",)  # what BrittleDetector can compute from one forward pass


@dataclass
class CalibrateResult:
    spec: DetectorSpec
    path: Path
    run: Any  # the pipeline's RunResult (summary, samples)


def n_evaluated(cfg: DictConfig) -> int | None:
    """How many samples the run evaluates, when the config alone says it (None: whole test set)."""
    if cfg.indices is not None:
        return len(cfg.indices)
    return None if cfg.n_samples is None else int(cfg.n_samples)


def check_detector_config(det: DictConfig | DetectorConfig, cfg: DictConfig) -> None:
    """Every detector check that needs no data and no model; one-line MarginbenchError."""
    if det.score not in SCORES:
        raise MarginbenchError(f"detector.score={det.score} is not supported; use one of: {', '.join(SCORES)}")
    need = detect.min_calibration_positives(det.target_recall, det.delta)  # also checks both are in (0, 1)
    if det.n_calibration < need:
        # the rule needs >= `need` non-robust calibration samples, so at least that many samples
        raise MarginbenchError(
            f"detector.n_calibration={det.n_calibration} cannot hold the {need} non-robust samples that recall "
            f"{det.target_recall} with confidence {1 - det.delta:g} needs; raise it (e.g. 500)")
    if det.seed < 0:  # numpy's default_rng refused -1, after every attack had run
        raise MarginbenchError(f"detector.seed={det.seed} must be an integer >= 0")
    if det.n_test is not None and det.n_test < 1:
        raise MarginbenchError(f"detector.n_test={det.n_test} must be >= 1 (or null: every non-calibration sample)")
    n = n_evaluated(cfg)
    if n is not None:
        check_split_size(n, int(det.n_calibration), det.n_test)


def check_split_size(n: int, n_calibration: int, n_test: int | None) -> None:
    """n evaluated samples must hold the calibration rows and at least one test row."""
    wanted = n_calibration + (n_test or 1)
    if wanted > n:
        raise MarginbenchError(
            f"detector.n_calibration + detector.n_test = {wanted} > the {n} evaluated samples; "
            "raise n_samples or lower them")


def split_rows(n: int, n_calibration: int, n_test: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint seeded random calibration and test rows (each sorted) of n evaluated samples."""
    check_split_size(n, n_calibration, n_test)
    perm = np.random.default_rng(seed).permutation(n)
    stop = n if n_test is None else n_calibration + n_test
    return np.sort(perm[:n_calibration]), np.sort(perm[n_calibration:stop])


def load_model(cfg: DictConfig, settings: RunSettings) -> torch.nn.Module:
    """The configured model in eval mode, loaded exactly as the pipeline loads it."""
    from marginbench.models.handle import LazyModel

    return LazyModel(cfg.model, settings.model_dir, settings.device).get()


def model_of(detector_json: str | Path, model_dir: str | Path = "models_cache") -> torch.nn.Module:
    """The model named in detector.json (zoo name or custom factory), on the CPU."""
    from marginbench.models import load_model as load

    spec = DetectorSpec.load(Path(detector_json))
    if not spec.model:
        raise MarginbenchError(f"{detector_json} names no model; load the model yourself")
    return load(OmegaConf.create(spec.model), Path(model_dir), "cpu")[0].eval()


def test_metrics(samples: pd.DataFrame, rows: np.ndarray, eps: float, threshold: float) -> dict[str, Any]:
    """Realised recall and FPR of the threshold on the held-out attacked samples."""
    sub = samples.iloc[rows]
    d_in, d_out = sub["input_margin"].to_numpy(np.float64), sub["logit_margin"].to_numpy(np.float64)
    recall, fpr = detect.recall_and_fpr(d_in, d_out, eps, threshold)
    n_pos = int(sub["nonrobust"].sum()) if "nonrobust" in sub else int((d_in <= eps).sum())
    return {"n": int(rows.size), "n_nonrobust": n_pos, "recall": recall, "fpr": fpr,
            "indices": [int(i) for i in sub["index"]]}


def calibrate(cfg: DictConfig, det: DictConfig, run_dir: Path) -> CalibrateResult:
    """Margins through the pipeline, λ on the calibration rows, detector.json in ``run_dir``."""
    from marginbench import pipeline

    check_detector_config(det, cfg)
    _, settings = validate(cfg)  # before any work: pipeline.run validates again, cheaply
    # n_samples null (the whole test set): the split is checked once the data is loaded,
    # before any attack, not after them
    run = pipeline.run(cfg, run_dir, check_n_samples=lambda n: check_split_size(
        n, int(det.n_calibration), det.n_test))
    if run.shard_only:
        raise MarginbenchError("calibrate needs every margin; drop shard.index (assemble the shards)")
    samples = run.samples
    cal_rows, test_rows = split_rows(len(samples), int(det.n_calibration), det.n_test, int(det.seed))
    spec = calibrate_from_samples(
        samples.iloc[cal_rows], settings.eps, settings.norm, weights_sha256(load_model(cfg, settings)),
        target_recall=float(det.target_recall), delta=float(det.delta), seed=int(det.seed),
        model=OmegaConf.to_container(cfg.model, resolve=True), dataset=settings.dataset,
    )
    test = test_metrics(samples, test_rows, settings.eps, spec.threshold)
    extra = {**spec.extra, "n_evaluated": len(samples), "attack": attack_label(cfg.attack),
             "eps_text": settings.eps_text, "margins_key": run.keys.get("margins")}
    spec = DetectorSpec(**{**spec.__dict__, "test": test, "extra": extra})
    path = spec.save(Path(run_dir) / "detector.json")
    return CalibrateResult(spec, path, run)


def flags_table(det: BrittleDetector, images: torch.Tensor, indices: Any, batch_size: int,
                device: torch.device) -> pd.DataFrame:
    """index, pred, logit_margin, brittle per image: one forward pass each, no attack."""
    chunks = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits, brittle, score = det(images[start:start + batch_size].to(device))
            chunks.append((logits.argmax(1).cpu().numpy(), score.float().cpu().numpy(), brittle.cpu().numpy()))
    pred, score, brittle = (np.concatenate(c) for c in zip(*chunks, strict=True))
    return pd.DataFrame({"index": np.asarray(indices), "pred": pred, "logit_margin": score.astype(np.float64),
                         "brittle": brittle})


def run_detect(cfg: DictConfig, spec: DetectorSpec, run_dir: Path) -> tuple[Path, pd.DataFrame]:
    """flags.csv for the configured images (labels, if any, are not used)."""
    from marginbench import data

    entry, settings = validate(cfg)
    model = load_model(cfg, settings)
    detector = BrittleDetector(model, spec).eval()  # refuses other weights before data loading
    eval_set = data.load_eval_set(dataset_config(cfg, settings), settings.data_dir, cfg.n_samples,
                                  list(cfg.indices) if cfg.indices is not None else None)
    data.check_compatible(eval_set, entry)
    flags = flags_table(detector, eval_set.images, eval_set.indices, int(cfg.batch_size), settings.device)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path = Path(run_dir) / "flags.csv"
    flags.to_csv(path, index=False)
    return path, flags
