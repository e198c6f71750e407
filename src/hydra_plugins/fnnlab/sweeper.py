"""hydra/sweeper=fnnlab (the default): Hydra's basic sweep grammar, plus resume.

What a sweep means in fnnlab (its checks, its parent run, progress, its end) comes from
fnnlab.sweep.SweepCallback and so works with any sweeper. What only a sweeper can do stays
here: it skips the jobs whose configuration already has a FINISHED run in the experiment
(unless hydra.sweeper.rerun=true), and launches the rest in batches.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module
outside sys.modules, where dataclasses cannot resolve string annotations.
"""

import logging
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class FnnlabSweeperConf:
    _target_: str = "hydra_plugins.fnnlab.sweeper.FnnlabSweeper"
    # Jobs per launch: the launcher's returns (each job's configs) are held for a batch, so
    # memory does not grow with the sweep.
    max_batch_size: int | None = 256
    # Run every job, even those whose identical config already has a FINISHED run.
    rerun: bool = False
    # A job is skipped when a FINISHED run has its config and (code) was made by the same
    # code (fnnlab.provenance.code_hash), or (config) whatever code made it.
    resume_match: str = "code"
    # End the sweep with its answer (fnnlab.sweep.Sweep.answer): the comparison over
    # seeds, on the terminal and on the parent run.
    summarize: bool = True


ConfigStore.instance().store(
    group="hydra/sweeper", name="fnnlab", node=FnnlabSweeperConf, provider="fnnlab"
)


class FnnlabSweeper(Sweeper):
    def __init__(
        self,
        max_batch_size: int | None = 256,
        rerun: bool = False,
        summarize: bool = True,
        resume_match: str = "code",
    ) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(
                f"hydra.sweeper.max_batch_size={max_batch_size}: must be at least 1 (jobs per "
                "launch), or null to launch every job at once"
            )
        if resume_match not in ("code", "config"):
            raise ValueError(
                f"hydra.sweeper.resume_match={resume_match}: must be one of code, config"
            )
        self.max_batch_size = max_batch_size
        self.rerun = rerun
        self.resume_match = resume_match
        self.summarize = summarize  # read by fnnlab.sweep from the config
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from fnnlab import internals

        self.config = config
        # Jobs are composed once per set of config choices (fnnlab.internals), here and in
        # the launcher, which gets the same loader.
        self.hydra_context = HydraContext(
            config_loader=internals.config_loader(hydra_context.config_loader),
            callbacks=hydra_context.callbacks,
        )
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from fnnlab import sweep
        from fnnlab.tracking import open_store

        assert self.config is not None and self.hydra_context is not None
        todo = sweep.jobs_to_run(
            self.hydra_context.config_loader,
            self.config,
            list(arguments),
            self.rerun,
            self.resume_match,
        )
        size = self.max_batch_size or max(len(todo), 1)  # null: every job in one launch
        returns: list = []
        while todo:
            held = []
            # Each job under its own number: skipped jobs leave gaps, and a job numbered
            # again would write into another job's folder.
            numbered = numbered_launch(self.launcher)
            for batch in sweep.launches(todo, size, numbered is not None):
                if numbered is not None:
                    results = numbered(batch)
                else:
                    jobs = [job for _, job in batch]
                    results = self.launcher.launch(jobs, initial_job_idx=batch[0][0])
                held += sweep.held_jobs(batch, results)
                # Keep what a caller of a sweep uses, not each job's configs.
                for r in results:
                    r.cfg = r.hydra_cfg = None
                returns.append(results)
            if not held:
                break
            # Jobs another invocation was training: wait for it, and run those it did not
            # finish.
            store = open_store(self.config.tracking.uri, self.config.tracking.experiment)
            todo = sweep.wait_for_holders(store, held, self.remote_after())
            sweep.leave_out_of_progress(str(self.config.hydra.sweep.dir), len(held) - len(todo))
        return returns

    def remote_after(self) -> float:
        """hydra.callbacks.sweep.remote_dead_after_s (fnnlab.claims.holder_alive)."""
        from omegaconf import OmegaConf

        return float(
            OmegaConf.select(self.config, "hydra.callbacks.sweep.remote_dead_after_s") or 86400
        )


def numbered_launch(launcher: Any) -> Any:
    """The launcher's launch_numbered (the fnnlab launcher's), or None: also when a subclass
    overrides launch() and not launch_numbered, which would pass its launch() by."""
    method = getattr(launcher, "launch_numbered", None)
    if method is None:
        return None
    # None found: one from __getattr__ or the instance, which may not go with its launch().
    owner = next((c for c in type(launcher).__mro__ if "launch_numbered" in vars(c)), None)
    return method if owner is not None and type(launcher).launch is owner.launch else None
