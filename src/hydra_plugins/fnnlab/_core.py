"""What the fnnlab launcher does: Hydra's basic launcher with less overhead per job, and
worker processes on the machine's cores.

- Hydra's run_job copies each job's whole config for the task, and writes its .hydra files
  with PyYAML's pure-Python emitter (about 20 ms of a job, measured). run_job below does the
  same for a config composed for this job alone: it copies only the task's part and writes
  the same YAML through libyaml; its JobReturn carries the job's task config and Hydra
  config, as Hydra's does (tests/test_launcher.py checks it against Hydra's run_job, and
  tests/test_hydra_launcher_suites.py runs Hydra's launcher test suites).
- Jobs of one shape (all but seed and learning rate alike) are trained together, as one
  population (fnnlab.population), and then each is run as its own Hydra job that tracks its
  member's History as its own run: the numbers are bit for bit those of training alone.
- In workers: Hydra's joblib launcher ships the Hydra context, the master config and
  Hydra's global state with every job and restores them (rescanning every plugin) before
  each; measured, that cost a worker more CPU than the job itself. Here a worker unpacks
  them once per sweep and then gets only the overrides of each batch of jobs.

The module name starts with "_" so that Hydra's plugin scan, which joblib workers repeat for
every job, does not execute it again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import version
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    env_override,
    filter_overrides,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fnnlab import population
from fnnlab.heap import freeze_heap
from fnnlab.internals import to_yaml, without_hydra
from fnnlab.population import MEMBER_KEYS

log = logging.getLogger(__name__)

CHDIR_WARNING = (
    "Future Hydra versions will no longer change working directory at job runtime by "
    "default.\nSee https://hydra.cc/docs/1.2/upgrades/1.1_to_1.2/changes_to_job_working_dir/ "
    "for more information."
)

# A worker process costs its start-up (imports, opening the store: seconds) before its first
# job; with n_jobs=null, a launch uses workers only when each has at least this many jobs.
JOBS_PER_WORKER = 24


def workers(n_jobs: int | None, jobs: int) -> int:
    """How many processes run a launch's jobs (1: this one)."""
    if n_jobs is not None:
        return max(1, min(n_jobs, jobs))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, jobs // JOBS_PER_WORKER))


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Hydra's launch(): the jobs numbered on from initial_job_idx."""
    jobs = list(enumerate((list(o) for o in job_overrides), start=initial_job_idx))
    return launch_numbered(launcher, jobs)


def launch_numbered(launcher: Any, jobs: list[tuple[int, list[str]]]) -> list:
    """The jobs, each under its own number (the fnnlab sweeper's resumed sweep skips some),
    trained together where they share a shape; their JobReturns in the order given."""
    setup_globals()
    config, context, task = launcher.config, launcher.hydra_context, launcher.task_function
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    n = workers(launcher.n_jobs, len(jobs))
    where = "locally" if n == 1 else f"in {n} worker processes"
    log.info(f"Launching {len(jobs)} jobs {where}")
    for idx, overrides in jobs:
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
    # What this process holds now lives until it exits; frozen, the garbage collector skips
    # it, at exit too (a sweep whose jobs ran in workers spent 1.3 s collecting at exit).
    freeze_heap()
    size = batch_size(launcher.max_members, len(jobs), n)
    if n > 1:
        done = _launch_in_workers(n, context, config, task, batches(jobs, size))
    else:
        done = [
            ret for batch in batches(jobs, size) for ret in run_batch(context, task, config, batch)
        ]
    # Hydra's contract: the returns in the order of job_overrides.
    order = {idx: i for i, (idx, _) in enumerate(jobs)}
    return [ret for _, ret in sorted(done, key=lambda pair: order[pair[0]])]


def batch_size(max_members: int, jobs: int, n: int) -> int:
    """Jobs per batch: at most max_members; with n workers, small enough that there are
    about two batches per worker, so that workers, which take whole batches, end together."""
    if n == 1:
        return max_members
    return max(1, min(max_members, -(-jobs // (2 * n))))


def batches(jobs: list[tuple[int, list[str]]], size: int) -> list[list[tuple[int, list[str]]]]:
    """The jobs in batches that may train together: the same overrides but for the seed and
    the learning rate (a batch's configs are then grouped by their composed shape). Jobs of
    the same other overrides are split into as few batches of at most `size` as can be, of
    sizes differing by one at most, in order of first appearance."""
    by_rest: dict[tuple[str, ...], list[tuple[int, list[str]]]] = {}
    for job in jobs:
        rest = tuple(o for o in job[1] if o.lstrip("+~").split("=", 1)[0] not in MEMBER_KEYS)
        by_rest.setdefault(rest, []).append(job)
    out = []
    for same in by_rest.values():
        count = -(-len(same) // size)
        base, extra = divmod(len(same), count)
        start = 0
        for i in range(count):
            end = start + base + (i < extra)
            out.append(same[start:end])
            start = end
    return out


def run_batch(
    hydra_context: HydraContext,
    task_function: TaskFunction,
    master: DictConfig,
    batch: list[tuple[int, list[str]]],
) -> list[tuple[int, JobReturn]]:
    """A batch's jobs, those of one shape trained together (fnnlab.population), each then
    run as its own Hydra job: (job index, its JobReturn) in the order they ran."""
    configs = [compose(hydra_context, master, idx, overrides) for idx, overrides in batch]
    done = []
    for group in population.groups(configs):
        if len(group) > 1:
            log.info(f"Training jobs {', '.join(f'#{batch[i][0]}' for i in group)} together")
        with population.trained_together([configs[i] for i in group]):
            for i in group:
                done.append((batch[i][0], run_job(hydra_context, task_function, configs[i])))
                configure_log(master.hydra.hydra_logging, master.hydra.verbose)
    return done


def _launch_in_workers(
    n: int,
    context: HydraContext,
    config: DictConfig,
    task: TaskFunction,
    batches: list[list[tuple[int, list[str]]]],
) -> list[tuple[int, JobReturn]]:
    from joblib import Parallel, delayed
    from joblib.externals import cloudpickle
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    # cloudpickle: the task function is the function under @hydra.main, which plain pickle
    # cannot find by name.
    shared = cloudpickle.dumps((context, config, task, Singleton.get_state()))
    key = hashlib.sha256(shared).hexdigest()
    # The same joblib settings as Hydra's joblib launcher: the two share warm workers.
    parallel = Parallel(n_jobs=n, backend="loky", max_nbytes=None, mmap_mode="r")
    try:
        done = parallel(
            delayed(_run_in_worker)(key, shared, batch, os.getpid()) for batch in batches
        )
    except TerminatedWorkerError as exc:  # not its other BrokenProcessPool errors
        raise WorkerDied(exc) from exc
    return [pair for batch_done in done for pair in batch_done]


class WorkerDied(RuntimeError):
    """A worker process ended in the middle of its jobs (killed, out of memory, crashed),
    and joblib stopped the others: one line that says so, not loky's traceback. Runs left
    RUNNING are marked KILLED by the sweep's clean-up, or by the next invocation."""

    def __init__(self, cause: BaseException) -> None:
        from fnnlab.storeguard import first_line

        # loky names them as a set: "{SIGKILL(-9)}".
        codes = re.search(r"exit codes of the workers are \{(.*?)\}", str(cause))
        plural = "s" if codes and "," in codes[1] else ""
        how = f"exit code{plural} {codes[1]}" if codes else first_line(cause)
        super().__init__(
            f"a worker process ended in the middle of its jobs ({how}); the sweep stopped. "
            "Rerun the same command to run the jobs that did not finish"
        )


# In a worker: the sweep it last ran a job of, as (key, hydra_context, config, task_function).
_sweep: tuple | None = None


def _run_in_worker(
    key: str, shared: bytes, batch: list[tuple[int, list[str]]], sweep_pid: int
) -> list[tuple[int, JobReturn]]:
    """A batch of jobs in a worker process; the sweep's shared state is unpacked once per
    worker."""
    global _sweep
    if _sweep is None or _sweep[0] != key:
        from fnnlab.cli import drop_output_when_unread
        from fnnlab.sweep import find_parent

        find_parent.cache_clear()  # another sweep's parent, found by the same folder

        die_with(sweep_pid)
        # A worker writes to the sweep's stdout too; before Hydra's logging takes it.
        drop_output_when_unread()
        hydra_context, config, task_function, singleton_state = pickle.loads(shared)
        setup_globals()
        Singleton.set_state(singleton_state)
        _sweep = (key, hydra_context, config, task_function)
    _, hydra_context, config, task_function = _sweep
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return run_batch(hydra_context, task_function, config, batch)


def die_with(sweep_pid: int) -> None:
    """End this worker when the sweep's process dies, even by SIGKILL, rather than go on
    training and writing runs nobody waits for. On Linux the kernel sends SIGTERM when the
    parent goes (prctl PR_SET_PDEATHSIG); a run in flight stays RUNNING, and the next
    invocation of the sweep marks it KILLED. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != sweep_pid:  # the sweep died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def compose(
    hydra_context: HydraContext, master: DictConfig, idx: int, overrides: Sequence[str]
) -> DictConfig:
    """The config of job number idx of the sweep, composed from its overrides."""
    sweep_config = hydra_context.config_loader.load_sweep_config(master, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = idx
        sweep_config.hydra.job.num = idx
    return sweep_config


def run_job(
    hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
) -> JobReturn:
    """hydra.core.utils.run_job for a sweep job whose config is this job's alone.

    The same output folder, HydraConfig, working directory, logging, .hydra files,
    environment, callbacks and JobReturn, but the config is used in place instead of
    copied, and YAML goes through libyaml.
    """
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    orig_hydra_cfg = HydraConfig.instance().cfg
    # Set first so the output folder can use ${hydra:...}. Hydra then sets it again with
    # that folder, a second copy of the hydra node (set_config copies it); writing the
    # folder into both the config and the copy ends the same.
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
        ret.cfg = task_cfg
        ret.hydra_cfg = hydra_cfg
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        chdir = hydra_cfg.hydra.job.chdir
        if chdir is None:
            # Unset: no chdir from version_base 1.2 on; before, a chdir and a warning.
            chdir = not version.base_at_least("1.2")
            if chdir:
                warnings.warn(CHDIR_WARNING, UserWarning, stacklevel=2)
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
        for handler in logging.getLogger().handlers:
            handler.flush()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if chdir:
            os.chdir(old_cwd)
