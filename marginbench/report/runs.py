"""Read finished run records from the cache (no model, no torch).

A run record is a directory ``<cache_dir>/runs/<name>/`` holding ``summary.json``,
``samples.csv`` (docs/interfaces.md columns) and, when the model has a linear head,
``head_weight.npy``. It is complete once ``meta.json`` exists (written last by the pipeline);
incomplete directories are ignored. When several complete records share
(model, dataset, norm, attack, eps) only the latest is kept: the newest by a timestamp in
meta.json (``finished_at``/``created``/``timestamp``/...) if one parses, else (and on ties) by
meta.json's modification time.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marginbench.cache import ArtifactStore
from marginbench.versions import MARGINS_VERSION

_TIME_KEYS = ("finished_at", "created", "created_at", "timestamp", "time", "end_time")


def _num(value: Any) -> float:
    """summary value -> float (None/missing -> nan)."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


@dataclass
class RunRecord:
    path: Path
    summary: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    _samples: pd.DataFrame | None = field(default=None, repr=False)
    _head: np.ndarray | None = field(default=None, repr=False)

    # -- identity ---------------------------------------------------------------------------
    @property
    def code(self) -> str:
        s = self.summary
        return str(s.get("model_code") or s.get("model") or self.path.name)

    @property
    def model(self) -> str:
        return str(self.summary.get("model") or self.code)

    @property
    def robustbench_id(self) -> str | None:
        return self.summary.get("robustbench_id")

    @property
    def dataset(self) -> str:
        return str(self.summary.get("dataset") or "unknown")

    @property
    def norm(self) -> str:
        return str(self.summary.get("norm") or "Linf")

    @property
    def attack(self) -> str:
        a = self.summary.get("attack")
        if isinstance(a, dict):
            return str(a.get("name") or json.dumps(a, sort_keys=True))
        return str(a or "unknown")

    @property
    def eps(self) -> float:
        return _num(self.summary.get("eps"))

    @property
    def key(self) -> tuple[str, str, str, str, float]:
        """One table row per (model, dataset, norm, margins, eps): records of the same cached
        margins written by different versions of the metrics stage collapse to the latest."""
        eps = self.eps
        margins = (self.summary.get("keys") or {}).get("margins") or self.attack
        return (self.code, self.dataset, self.norm, margins, round(eps, 9) if math.isfinite(eps) else eps)

    @property
    def tau(self) -> float:
        return _num(self.summary.get("kendall_tau"))

    def get(self, key: str) -> float:
        return _num(self.summary.get(key))

    # -- payloads ---------------------------------------------------------------------------
    @property
    def samples_path(self) -> Path:
        return self.path / "samples.csv"

    @property
    def has_samples(self) -> bool:
        return self.samples_path.is_file()

    def samples(self) -> pd.DataFrame | None:
        """The per-sample table (cached after the first read); None when absent."""
        if self._samples is None and self.has_samples:
            df = pd.read_csv(self.samples_path)
            for col in df.columns:  # "inf" strings from older writers
                if df[col].dtype == object and col not in ("found_by",):
                    conv = pd.to_numeric(df[col], errors="coerce")
                    if conv.notna().sum() == df[col].notna().sum() and conv.notna().any():
                        df[col] = conv
            self._samples = df
        return self._samples

    def head_weight(self) -> np.ndarray | None:
        p = self.path / "head_weight.npy"
        if self._head is None and p.is_file():
            self._head = np.load(p)
        return self._head

    def timestamp(self) -> tuple[float, float]:
        """(time recorded in meta.json or nan->mtime, meta.json mtime): newest is latest."""
        try:
            mtime = (self.path / "meta.json").stat().st_mtime
        except OSError:
            mtime = 0.0
        for k in _TIME_KEYS:
            v = self.meta.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                return float(v), mtime
            if isinstance(v, str):
                try:
                    return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp(), mtime
                except ValueError:
                    pass
        return mtime, mtime


def read_run(path: Path) -> RunRecord | None:
    """One run directory -> RunRecord, or None when it is incomplete or unreadable."""
    path = Path(path)
    meta_p, summ_p = path / "meta.json", path / "summary.json"
    if not (meta_p.is_file() and summ_p.is_file()):
        return None
    try:
        summary = json.loads(summ_p.read_text())
        meta = json.loads(meta_p.read_text())
    except (OSError, ValueError) as exc:
        warnings.warn(f"skipping unreadable run record {path}: {exc}", stacklevel=2)
        return None
    if not isinstance(summary, dict):
        return None
    if isinstance(meta, dict) and "files" in meta and not ArtifactStore.intact(path):
        # a samples.csv cut short was read as it was: figures from half the samples, no
        # word (round 10); `marginbench run` recomputes such a record, `tables` leaves it out
        warnings.warn(f"skipping corrupt run record {path} (a file does not match the size or sha256 in its "
                      "meta.json); rerun its `marginbench run ...` to rebuild it", stacklevel=2)
        return None
    return RunRecord(path=path, summary=summary, meta=meta if isinstance(meta, dict) else {})


def margins_version(rec: RunRecord) -> int:
    """Version of the margin stage that computed a record's margins (records from before
    versions were stored are version 1)."""
    return int((rec.summary.get("versions") or {}).get("margins", 1))


def load_runs(cache_dir: Path) -> list[RunRecord]:
    """Complete run records under ``<cache_dir>/runs/*/``, latest per (model, dataset, norm,
    margins, eps), sorted by (dataset, norm, code). Records whose margins an older
    estimator version computed are left out with a warning: a table never mixes them."""
    root = Path(cache_dir) / "runs"
    if not root.is_dir():
        return []
    latest: dict[tuple, RunRecord] = {}
    stale: list[RunRecord] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        rec = read_run(d)
        if rec is None:
            continue
        if margins_version(rec) < MARGINS_VERSION:
            stale.append(rec)
            continue
        old = latest.get(rec.key)
        if old is None or rec.timestamp() >= old.timestamp():
            latest[rec.key] = rec
    if stale:
        models = ", ".join(sorted({r.code for r in stale}))
        warnings.warn(
            f"left out {len(stale)} cached run(s) whose margins an older marginbench computed "
            f"(margins v{min(map(margins_version, stale))} < v{MARGINS_VERSION}; models: {models}); "
            "rerun them with `marginbench run ...` to include them",
            stacklevel=2,
        )
    return sorted(latest.values(), key=lambda r: (r.dataset, r.norm, r.code, r.attack, r.eps))


# --------------------------------------------------------------------------- reference data


def load_reference(reference_dir: Path | None) -> dict[str, pd.DataFrame]:
    """Every ``*.csv`` under reference_dir, by file stem (empty dict when there is none)."""
    out: dict[str, pd.DataFrame] = {}
    if reference_dir is None or not Path(reference_dir).is_dir():
        return out
    for p in sorted(Path(reference_dir).glob("*.csv")):
        try:
            out[p.stem] = pd.read_csv(p)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            warnings.warn(f"skipping unreadable reference file {p}: {exc}", stacklevel=2)
    return out


def ref_row(refs: dict[str, pd.DataFrame], table: str, code: str, **match: str) -> dict | None:
    """First row of reference ``table`` whose code (and any extra columns) match, or None."""
    df = refs.get(table)
    if df is None or "code" not in df.columns:
        return None
    m = df["code"].astype(str).str.upper() == code.upper()
    for k, v in match.items():
        if k in df.columns:
            m &= df[k].astype(str) == str(v)
    hit = df[m]
    return None if hit.empty else hit.iloc[0].to_dict()


_REGISTRY: dict[str, Any] | None = None


def registry_entries() -> dict[str, Any]:
    """Registry ModelEntry objects by upper-case code; {} when the registry is unavailable.

    Imported lazily: the report works without the models package (and without torch).
    """
    global _REGISTRY
    if _REGISTRY is None:
        try:
            from marginbench.models.registry import list_models  # noqa: PLC0415

            _REGISTRY = {str(e.code).upper(): e for e in list_models()}
        except Exception as exc:  # noqa: BLE001 - any failure: degrade to reference data
            warnings.warn(f"model registry unavailable ({exc}); using reference data only",
                          stacklevel=2)
            _REGISTRY = {}
    return _REGISTRY


def _percent(v: Any) -> float:
    """summary.json fraction -> percent (the registry and reference CSVs are in percent)."""
    return _num(v) * 100


def published_accuracy(rec_or_code: RunRecord | str, refs: dict[str, pd.DataFrame]
                       ) -> tuple[float, float, str]:
    """(clean %, robust %, source) published for a model, each value from the first of these
    that has it: summary.json, reference/robustbench_models.csv, the registry (torch-free),
    reference/published_accuracy_reference.csv (whose rows name their own source). nan where
    unknown."""
    code = rec_or_code.code if isinstance(rec_or_code, RunRecord) else rec_or_code

    def from_summary() -> tuple[float, float, str] | None:
        if not isinstance(rec_or_code, RunRecord):
            return None
        s = rec_or_code.summary
        return _percent(s.get("clean_accuracy_published")), _percent(s.get("robust_accuracy_published")), "[RB]"

    def from_row(table: str, tag: str | None) -> tuple[float, float, str] | None:
        r = ref_row(refs, table, code)
        if r is None:
            return None
        return _num(r.get("clean_acc")), _num(r.get("robust_acc")), str(r.get("source", "")) if tag is None else tag

    def from_registry() -> tuple[float, float, str] | None:
        e = registry_entries().get(code.upper())
        return None if e is None else (_num(getattr(e, "clean_acc", None)), _num(getattr(e, "robust_acc", None)), "[RB]")

    lookups = (from_summary, lambda: from_row("robustbench_models", "[RB]"), from_registry,
               lambda: from_row("published_accuracy_reference", None))
    clean = robust = float("nan")
    source = ""
    for lookup in lookups:
        if not (math.isnan(clean) or math.isnan(robust)):
            break
        found = lookup()
        if found is None:
            continue
        c, r, tag = found
        clean = c if math.isnan(clean) else clean
        robust = r if math.isnan(robust) else robust
        # the reference file's rows name their source whatever they hold; the others only
        # count as a source where they gave a number
        if lookup is lookups[-1] or not (math.isnan(c) and math.isnan(r)):
            source = source or tag
    return clean, robust, source
