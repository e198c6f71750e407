"""hydra/launcher=fnnlab (the default): Hydra's launcher contract, with less overhead per job
and worker processes on the machine's cores (the work is in _core.py).

No `from __future__ import annotations` here: Hydra's plugin scan executes this module
outside sys.modules, where dataclasses cannot resolve string annotations.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class FnnlabLauncherConf:
    _target_: str = "hydra_plugins.fnnlab.launcher.FnnlabLauncher"
    # Jobs at once: 1 runs them one after another in this process, more in that many worker
    # processes; null chooses from the machine's cores and the number of jobs (_core.workers).
    n_jobs: int | None = None
    # Jobs of one shape (all but seed and learning rate alike) trained together, at most this
    # many at once (fnnlab.population); 1 trains every job alone, in its own job.
    max_members: int = 64


ConfigStore.instance().store(
    group="hydra/launcher", name="fnnlab", node=FnnlabLauncherConf, provider="fnnlab"
)


class FnnlabLauncher(Launcher):
    def __init__(self, n_jobs: int | None = None, max_members: int = 64) -> None:
        if n_jobs is not None and n_jobs < 1:
            raise ValueError(
                f"hydra.launcher.n_jobs={n_jobs}: must be at least 1 (the number of jobs run "
                "at once: 1 runs them one after another in this process, more in that many "
                "worker processes), or null to choose from the cores"
            )
        if max_members < 1:
            raise ValueError(
                f"hydra.launcher.max_members={max_members}: must be at least 1 (jobs of one "
                "shape trained together at most; 1 trains each job alone)"
            )
        self.n_jobs = n_jobs
        self.max_members = max_members
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from fnnlab import internals

        self.config = config
        self.task_function = task_function
        # Jobs are composed once per set of config choices (fnnlab.internals).
        self.hydra_context = HydraContext(
            config_loader=internals.config_loader(hydra_context.config_loader),
            callbacks=hydra_context.callbacks,
        )

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.fnnlab import _core

        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        return _core.launch(self, job_overrides, initial_job_idx)

    def launch_numbered(self, jobs: list[tuple[int, list[str]]]) -> Sequence[JobReturn]:
        """launch() for jobs whose numbers are not consecutive (a resumed sweep's: each
        keeps its own), in one launch: they train together and share the workers."""
        from hydra_plugins.fnnlab import _core

        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        return _core.launch_numbered(self, jobs)

    def __repr__(self) -> Any:
        return f"FnnlabLauncher(n_jobs={self.n_jobs}, max_members={self.max_members})"
