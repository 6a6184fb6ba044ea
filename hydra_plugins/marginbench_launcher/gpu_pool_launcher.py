"""``hydra/launcher=gpu_pool``: run a sweep's jobs in parallel on one machine, one per GPU.

Each worker process is pinned to one GPU through CUDA_VISIBLE_DEVICES before torch is
imported, and takes the next job when its previous one ends, so N GPUs run N jobs at a time
and no two jobs share a device (``jobs_per_gpu`` > 1 allows sharing on big cards). Jobs run
through Hydra's own ``run_job``, exactly as with the basic launcher, so each gets its own
output directory, log file and status.json.
"""

# no `from __future__ import annotations`: Hydra scans plugins without registering the module,
# and dataclasses then cannot resolve string annotations.
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict


@dataclass
class GpuPoolLauncherConf:
    _target_: str = "hydra_plugins.marginbench_launcher.gpu_pool_launcher.GpuPoolLauncher"
    # GPU ids to use; null = every GPU torch can see (CPU-only machine: cpu_workers processes)
    gpus: Optional[list[int]] = None
    jobs_per_gpu: int = 1
    cpu_workers: int = 1


ConfigStore.instance().store(group="hydra/launcher", name="gpu_pool", node=GpuPoolLauncherConf, provider="marginbench")

_SLOTS: Any = None


def _pin_worker(slots: Any) -> None:
    """Worker initializer: claim one GPU slot for the life of this process."""
    slot = slots.get()
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)


def _execute_job(payload: bytes) -> bytes:
    """Run one job in a worker. In and out travel as cloudpickle bytes: Hydra's singleton
    state holds closures (OmegaConf resolvers) that the standard pickle refuses."""
    idx, overrides, hydra_context, config, task_function, singleton_state = cloudpickle.loads(payload)
    return cloudpickle.dumps(_run_one(idx, overrides, hydra_context, config, task_function, singleton_state))


def _run_one(
    idx: int,
    overrides: Sequence[str],
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class GpuPoolLauncher(Launcher):
    def __init__(self, gpus: Optional[list[int]] = None, jobs_per_gpu: int = 1, cpu_workers: int = 1) -> None:
        self.gpus = None if gpus is None else [int(g) for g in gpus]
        self.jobs_per_gpu = int(jobs_per_gpu)
        self.cpu_workers = int(cpu_workers)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _slots(self) -> list[Optional[int]]:
        gpus = self.gpus
        if gpus is None:
            import torch

            gpus = list(range(torch.cuda.device_count()))
        if not gpus:
            return [None] * max(1, self.cpu_workers)
        return [gpu for gpu in gpus for _ in range(max(1, self.jobs_per_gpu))]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        slots = self._slots()
        print(f"gpu_pool launcher: {len(job_overrides)} jobs on {len(slots)} worker(s) "
              f"({', '.join('cpu' if s is None else f'GPU {s}' for s in slots)}), sweep dir {sweep_dir}")
        context = multiprocessing.get_context("spawn")  # fresh processes: CUDA not yet initialised
        manager = context.Manager()
        queue = manager.Queue()
        for slot in slots:
            queue.put(slot)
        singleton_state = Singleton.get_state()
        with ProcessPoolExecutor(max_workers=len(slots), mp_context=context, initializer=_pin_worker, initargs=(queue,)) as pool:
            futures = []
            for offset, overrides in enumerate(job_overrides):
                idx = initial_job_idx + offset
                print(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                payload = cloudpickle.dumps((idx, overrides, self.hydra_context, self.config, self.task_function, singleton_state))
                futures.append(pool.submit(_execute_job, payload))
            results = [cloudpickle.loads(future.result()) for future in futures]
        manager.shutdown()
        return results
