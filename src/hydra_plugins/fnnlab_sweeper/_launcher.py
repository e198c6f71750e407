"""The fnnlab launcher (hydra/launcher=fnnlab, the default): Hydra's basic launcher,
with less overhead per job, and hydra.launcher.n_jobs worker processes on request.

- Hydra's run_job copies each job's whole config for the task and again for the
  return value, and writes its .hydra files with PyYAML's pure-Python emitter (with
  its two HydraConfig copies, about 20 ms of a 130 ms job, measured). run_job below
  does the same for a config composed for this job alone: it copies only the task's
  part, returns no configs, and writes the same YAML with PyYAML's C emitter
  (tests/test_launcher.py checks it against Hydra's).
- Hydra's basic launcher returns, for every job, its task and Hydra configs; a sweep
  of thousands of jobs held thousands of them (memory grew with the sweep). The
  fnnlab sweeper needs only each job's status and return value, so none are kept;
  the config files stay in the job's .hydra folder and in its MLflow run.
- With plot_helper=true (the default) a helper process draws each run's PNGs on the
  second core (see fnnlab.plot_helper). Each run's end (waiting for its PNGs, uploading
  its artifacts, ending it FINISHED) comes in the next job (fnnlab.job.deferred_ends),
  so the helper draws while the next job trains; a run that fails at its end marks
  its job failed.
- With n_jobs > 1 the jobs run in that many joblib (loky) worker processes. Hydra's
  joblib launcher ships the Hydra context, the master config and Hydra's global state
  with every job and restores them (rescanning every plugin) before each; measured,
  that cost a worker more CPU than the job itself. Here a worker unpacks them once per
  sweep and then gets just each job's overrides; the job runs as with n_jobs=1.

This module's name starts with "_" so Hydra's plugin scan, which joblib workers
repeat for every job, does not execute it again; fnnlab_launcher.py exposes the class.
"""

import hashlib
import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    configure_log,
    env_override,
    filter_overrides,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fnnlab.config import to_yaml
from hydra_plugins.fnnlab_sweeper._compose import without_hydra

log = logging.getLogger(__name__)


@dataclass
class FnnlabLauncherConf:
    _target_: str = "hydra_plugins.fnnlab_sweeper._launcher.FnnlabLauncher"
    # Jobs at once: 1 runs them one after another in this process, more in that many workers.
    n_jobs: int = 1
    # Draw each run's plots in a helper process, on another core (see fnnlab.plot_helper).
    plot_helper: bool = True


ConfigStore.instance().store(
    group="hydra/launcher", name="fnnlab", node=FnnlabLauncherConf, provider="fnnlab"
)


class FnnlabLauncher(BasicLauncher):
    def __init__(self, n_jobs: int = 1, plot_helper: bool = True) -> None:
        super().__init__()
        if n_jobs < 1:
            raise ValueError(
                f"hydra.launcher.n_jobs={n_jobs}: must be at least 1 (the number of jobs run "
                "at once: 1 runs them one after another in this process, more in that many "
                "worker processes)"
            )
        self.n_jobs = n_jobs
        self.plot_helper = plot_helper

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if self._uses_plot_helper(config):
            from fnnlab import plot_helper

            # Started now, the helper imports while the sweeper checks every job.
            plot_helper.start()

    def _uses_plot_helper(self, config: DictConfig) -> bool:
        """Whether this sweep's runs get their plots drawn by the helper process."""
        plots = OmegaConf.select(config, "tracking.plots", default=False)
        return self.n_jobs == 1 and self.plot_helper and bool(plots)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from fnnlab import plot_helper
        from fnnlab.job import deferred_ends

        setup_globals()
        assert self.hydra_context is not None and self.config is not None
        assert self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if self.n_jobs > 1 and len(job_overrides) > 1:
            return self._launch_in_workers(job_overrides, initial_job_idx)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        if self._uses_plot_helper(self.config):
            plot_helper.start()
        runs: list[JobReturn] = []
        try:
            # A run's end waits for its plots from the helper: it comes in the next job.
            with deferred_ends() as failed_at_end:
                for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                    log.info(f"\t#{idx} : {shown(overrides)}")
                    runs.append(
                        run_one(self.hydra_context, self.task_function, self.config, idx, overrides)
                    )
                    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        finally:
            plot_helper.stop()
        mark_failed(runs, failed_at_end)
        return runs

    def _launch_in_workers(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from joblib import Parallel, delayed
        from joblib.externals import cloudpickle

        log.info(f"Launching {len(job_overrides)} jobs in {self.n_jobs} worker processes")
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {shown(overrides)}")
        # cloudpickle: the task function is the function under @hydra.main, which plain
        # pickle cannot find by name.
        shared = cloudpickle.dumps(
            (self.hydra_context, self.config, self.task_function, Singleton.get_state())
        )
        key = hashlib.sha256(shared).hexdigest()
        # The same joblib settings as Hydra's joblib launcher: the two share warm workers.
        parallel = Parallel(n_jobs=self.n_jobs, backend="loky", max_nbytes=None, mmap_mode="r")
        return parallel(
            delayed(_run_in_worker)(key, shared, idx, list(overrides))
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx)
        )


def shown(overrides: Sequence[str]) -> str:
    """A job's overrides as Hydra logs them, without the sweeper's own sweep.* bookkeeping."""
    return " ".join(o for o in filter_overrides(overrides) if not o.startswith("sweep."))


def mark_failed(runs: list[JobReturn], failed_at_end: dict[str, BaseException]) -> None:
    """Mark failed the jobs whose run failed at its deferred end, after the job returned."""
    for ret in runs:
        value = ret._return_value if ret.status == JobStatus.COMPLETED else None
        run_id = value.get("run_id") if isinstance(value, dict) else None
        if run_id in failed_at_end:
            ret.status = JobStatus.FAILED
            ret.return_value = failed_at_end[run_id]


# In a worker: the sweep it last ran a job of, as (key, hydra_context, config, task_function).
_sweep: tuple | None = None


def _run_in_worker(key: str, shared: bytes, idx: int, overrides: list[str]) -> JobReturn:
    """One job in a worker process; the sweep's shared state is unpacked once per worker."""
    global _sweep
    if _sweep is None or _sweep[0] != key:
        hydra_context, config, task_function, singleton_state = pickle.loads(shared)
        setup_globals()
        Singleton.set_state(singleton_state)
        _sweep = (key, hydra_context, config, task_function)
    _, hydra_context, config, task_function = _sweep
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return run_one(hydra_context, task_function, config, idx, overrides)


def run_one(
    hydra_context: HydraContext,
    task_function: TaskFunction,
    master: DictConfig,
    idx: int,
    overrides: Sequence[str],
) -> JobReturn:
    """Job number idx of the sweep: its config composed from its overrides, then run."""
    sweep_config = hydra_context.config_loader.load_sweep_config(master, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = idx
        sweep_config.hydra.job.num = idx
    return run_job(hydra_context, task_function, sweep_config)


def run_job(
    hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
) -> JobReturn:
    """hydra.core.utils.run_job for a sweep job whose config is this job's alone.

    The same output folder, HydraConfig, working directory, logging, .hydra files,
    environment, callbacks and return, but the config is used in place instead of
    copied, and the returned JobReturn carries no configs (see the module docstring).
    """
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    orig_hydra_cfg = HydraConfig.instance().cfg
    # Set first so the output folder can use ${hydra:...}. Hydra then sets it again with
    # that folder, a second copy of the hydra node; writing the folder into both the
    # config and the copy ends the same.
    HydraConfig.instance().set_config(config)
    hydra_cfg = HydraConfig.instance().cfg
    assert hydra_cfg is not None
    output_dir = os.path.join(
        str(OmegaConf.select(config, "hydra.sweep.dir")),
        str(OmegaConf.select(config, "hydra.sweep.subdir")),
    )
    for runtime in (config.hydra.runtime, hydra_cfg.hydra.runtime):
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = os.path.abspath(output_dir)
    chdir = False
    try:
        ret = JobReturn()
        task_cfg = without_hydra(config)
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        # version_base 1.3: an unset hydra.job.chdir means no chdir.
        chdir = bool(hydra_cfg.hydra.job.chdir)
        if chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
            hydra_output.mkdir(parents=True, exist_ok=True)
            (hydra_output / "config.yaml").write_text(to_yaml(task_cfg))
            (hydra_output / "hydra.yaml").write_text(to_yaml(hydra_cfg))
            (hydra_output / "overrides.yaml").write_text(to_yaml(config.hydra.overrides.task))
        with env_override(hydra_cfg.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:
                ret.return_value = e
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if chdir:
            os.chdir(old_cwd)
