"""Hydra's side of ``marginbench run``: the launch and the end-of-sweep report.

A job that fails inside a multirun is recorded in its ``status.json`` (marginbench.cli's
``hydra_task``) and the sweep goes on; :class:`SweepReport` (a Hydra callback named in
configs/config.yaml) reads those files when the sweep ends, prints which jobs failed, and
keeps their count for the exit code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from marginbench.config import CONFIG_DIR


class SweepReport(Callback):
    """After a multirun, print which jobs failed (read from their status.json files)."""

    failed_jobs: int = 0  # of the last multirun in this process: the CLI's exit code reads it

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        SweepReport.failed_jobs = 0

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = []
        for path in sorted(sweep_dir.rglob("status.json")):
            try:
                statuses.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        failed = [s for s in statuses if s.get("status") != "done"]
        SweepReport.failed_jobs = len(failed)
        print(f"\nsweep finished: {len(statuses)} jobs, {len(statuses) - len(failed)} done, {len(failed)} failed ({sweep_dir})")
        for job in failed:
            print(f"  FAILED {' '.join(job.get('overrides', []))}: {job.get('error')}")
        if failed:
            print("  rerun the same command: finished jobs are reused from the cache, only failed ones run again")


@contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """hydra.main reads its overrides from sys.argv and offers no other way in."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def run_hydra(task: Callable[[Any], Any], overrides: list[str], multirun: bool) -> int:
    """Launch ``task`` for each job through Hydra; 1 when a job of a sweep failed, else 0."""
    import hydra

    from marginbench.config import register_configs

    register_configs()
    SweepReport.failed_jobs = 0
    main = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(task)
    with _argv([sys.argv[0], *(["--multirun"] if multirun else []), *overrides]):
        main()
    return 1 if SweepReport.failed_jobs else 0
