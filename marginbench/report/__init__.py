"""Tables and figures rebuilt from finished run records only (no model, no accelerator).

    from marginbench.report import build_all
    build_all(Path(".cache/marginbench"), Path("results/report"), Path("results/reference"))

Nothing here imports torch; the model registry is imported lazily (for published accuracies
and the list of the paper's models still to run) and is optional.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from marginbench.report.runs import RunRecord, load_reference, load_runs

__all__ = ["RunRecord", "build_all", "load_runs"]


def build_all(cache_dir: Path, out_dir: Path, reference_dir: Path | None = None, *,
              force: bool = False, select: Callable[[RunRecord], bool] | None = None,
              records: Sequence[RunRecord] | None = None) -> list[Path]:
    """Write Tables 1-4 (+ the 500-sample robust accuracy table) as CSV/Markdown/LaTeX and
    Figures 3-11 as PNG/PDF under ``out_dir/tables`` and ``out_dir/figures``, plus an index
    ``out_dir/REPORT.md``; return the written paths (REPORT.md last).

    Per-model figures already newer than their run record are kept unless ``force``.
    ``select`` keeps only the run records it returns True for (e.g. the demo zoo's);
    ``records``: the cache's records when the caller has read them already (load_runs)."""
    from marginbench.report import figures, tables  # matplotlib only when building

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [r for r in (load_runs(Path(cache_dir)) if records is None else records)
               if select is None or select(r)]
    refs = load_reference(Path(reference_dir) if reference_dir is not None else None)
    paths = tables.build_tables(records, refs, out_dir / "tables")
    paths += figures.build_figures(records, out_dir / "figures", refs, tables.robust_acc_subset,
                                   force=force)
    paths.append(_write_index(out_dir, records, paths))
    return paths


def _write_index(out_dir: Path, records: Sequence[RunRecord], paths: list[Path]) -> Path:
    lines = ["# marginbench report", "", f"{len(records)} finished run(s):", ""]
    for r in records:
        lines.append(f"- {r.code} {r.dataset} {r.norm} eps={r.eps:.6g} attack={r.attack} "
                     f"n={r.summary.get('n_samples')} ({r.path.name})")
    lines += ["", "## Tables", ""]
    lines += [f"- [{p.name}]({p.relative_to(out_dir)})" for p in paths if p.suffix == ".md"]
    lines += ["", "## Figures", ""]
    lines += [f"- [{p.stem}]({p.relative_to(out_dir)})" for p in paths if p.suffix == ".png"]
    p = out_dir / "REPORT.md"
    p.write_text("\n".join(lines) + "\n")
    return p
