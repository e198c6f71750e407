"""The fnnlab launcher (hydra/launcher=fnnlab, the default): Hydra's basic launcher,
running jobs one after another in this process, without keeping every job's config.

Hydra's basic launcher returns, for every job, a copy of its task config and of its
whole Hydra config; a sweep of thousands of jobs holds thousands of those until it
ends (memory grew with the sweep). The fnnlab sweeper needs only each job's status
and return value, so this launcher drops the configs once a job has run; the job's
config files stay on disk in its .hydra folder and in its MLflow run.
"""

# No "from __future__ import annotations": Hydra execs plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import open_dict

log = logging.getLogger(__name__)


@dataclass
class FnnlabLauncherConf:
    _target_: str = "hydra_plugins.fnnlab_sweeper.fnnlab_launcher.FnnlabLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="fnnlab", node=FnnlabLauncherConf, provider="fnnlab"
)


class FnnlabLauncher(BasicLauncher):
    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None and self.config is not None
        assert self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs: list[JobReturn] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            ret = run_job(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            # Status, return value, overrides and working dir stay; the configs go.
            ret.cfg = None
            ret.hydra_cfg = None
            runs.append(ret)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs
