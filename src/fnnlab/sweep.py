"""A sweep in MLflow: one parent run per sweep command, its jobs as children, for any
sweeper and any launcher.

SweepCallback is a Hydra callback (conf/train.yaml, hydra.callbacks.sweep); a Sweep is one
invocation's life in the process that runs the sweep:

- on_multirun_start: check the whole sweep before anything is written (the master config
  and the store, and every job's config when the sweep is in Hydra's basic grammar, which
  the basic and fnnlab sweepers take), reap runs left RUNNING by a dead earlier invocation,
  then open the parent run, reopened when the same sweep ran before;
- each job, wherever it runs, finds its parent by the sweep's output folder (find_parent)
  and tags itself as the parent's child;
- on_job_end: a progress line for each job that ended in this process;
- on_multirun_end: the parent ends FINISHED, or FAILED when a configuration has no
  finished run (the command then exits 1), with counts read from the store, so jobs that
  ran in other processes or machines count;
- an error before that ends the parent FAILED when a job of this invocation failed (Hydra's
  basic sweeper raises a failed job's error: fnnlab.cli.run_cli calls close_open) or a
  file in the sweep's folder could not be made (SweepFolderFailed), KILLED otherwise;
- anything else (Ctrl-C, SIGTERM) ends the parent KILLED on the way out.

The sweep id is a hash of the command's overrides, so running the same sweep again finds
the same parent run, and the fnnlab sweeper can skip the jobs that already finished.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import math
import os
import re
import signal
import tempfile
import threading
import time
from collections import Counter
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf, open_dict

from fnnlab import claims, internals, links, progress, storeguard
from fnnlab.config import (
    TRAINING_KEYS,
    ConfigValueError,
    as_in_its_job,
    check_output_subdir,
    check_values,
    fingerprint,
    folder_problem,
    override_value,
    sweep_subdir,
)
from fnnlab.errortext import first_line
from fnnlab.names import FAILED, FINISHED, KILLED, ROLE_JOB, ROLE_SWEEP, RUNNING, UNFINISHED, Tag
from fnnlab.tracking import (
    Store,
    among_store_artifacts,
    artifact_location,
    end_run,
    filter_literal,
    inside_store_artifacts,
    log_values,
    one_run_per_config,
    open_store,
    process_tags,
    search_all,
    slim,
    sweep_runs,
    used_by_tag,
)

log = logging.getLogger(__name__)


class SweepRefused(BaseException):
    """A sweep that must not start: a bad job config, an unreachable store. Its cause says
    why. A BaseException, as KeyboardInterrupt is: Hydra reports an Exception raised in a
    callback as a warning and carries on with the sweep."""


class SweepFailed(BaseException):
    """Some configurations of the sweep have no finished run: the parent run is FAILED and
    the command exits 1 (a BaseException for the same reason as SweepRefused)."""


class SweepFolderFailed(RuntimeError):
    """A file or folder in the sweep's folder could not be made or written outside any job's
    task (a job's folder, or its .hydra files, which the launcher makes, with a file named
    like it in the way): the sweep stopped. Its parent ends FAILED with this line as its
    error."""


def sweep_folder_failed(exc: BaseException) -> SweepFolderFailed | None:
    """For an OSError about a path inside the folder of this process's open sweep, the error
    that names the path, why, and the folder's keys (hydra.sweep.dir and subdir, as given);
    None for any other error, and for one a job's task raised (Hydra's basic sweeper raises
    a failed job's error: it is that job's run's, and stays so). hydra.sweep.dir itself is
    checked before the sweep starts (CheckOutputFolder), but a job's folder depends on its
    number and values, and the sweep's folder may exist."""
    # Ray's launcher raises a RayTaskError(FileExistsError) without the file's name; the
    # error itself is its `cause`.
    errors = [e for e in (exc, getattr(exc, "cause", None)) if isinstance(e, OSError)]
    exc = next((e for e in errors if e.filename is not None), None)
    if exc is None or not isinstance(exc.filename, str | bytes | os.PathLike):
        return None
    path = Path(os.fsdecode(exc.filename)).absolute()
    sweep = next((s for s in _open if path.is_relative_to(Path(s.dir).absolute())), None)
    if sweep is None:
        return None
    # A run ends with its task's error in its tag as "<type>: <message>" (fnnlab.job).
    if any(error == f"{type(exc).__name__}: {exc}" for _, error in sweep.run_errors()):
        return None
    why = folder_problem(path) or exc.strerror or str(exc)
    return SweepFolderFailed(
        f"hydra.sweep.dir={sweep.dir}, hydra.sweep.subdir={sweep.subdir}: cannot make or "
        f"write {path}: {why}; the sweep stopped"
    )


# --- identity and the jobs of a sweep -----------------------------------------------------


def sweep_id(overrides: list[str], experiment: str) -> str:
    text = "\n".join([experiment, *sorted(overrides)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def expand(arguments: list[str], loader: Any = None) -> list[list[str]] | None:
    """The jobs of a sweep in Hydra's basic grammar (a=1,2 b='range(3)'), in the order the
    basic sweeper runs them; None when an override is not in that grammar (interval(...),
    tag(...): another sweeper's), since only that sweeper knows its jobs."""
    lists = []
    # The loader lets glob(...) list a config group's options.
    for override in OverridesParser.create(config_loader=loader).parse_overrides(arguments):
        key = override.get_key_element()
        if not override.is_sweep_override():
            lists.append([f"{key}={override.get_value_element_as_str()}"])
        elif override.is_discrete_sweep():
            values = list(override.sweep_string_iterator())
            if not values:
                typed = (override.input_line or "").partition("=")[2]
                raise ConfigValueError(key, typed, "sweeps no values: the sweep has no jobs")
            if len(set(values)) < len(values):
                # Two jobs of one configuration: the second would only find the first's run.
                twice = next(v for i, v in enumerate(values) if v in values[:i])
                typed = (override.input_line or "").partition("=")[2] or twice
                raise ConfigValueError(key, typed, f"gives {twice} twice: one run for two jobs")
            lists.append([f"{key}={value}" for value in values])
        else:
            return None
    return [list(job) for job in itertools.product(*lists)]


# The sweepers (hydra/sweeper=...) whose jobs expand() lists: the basic grammar is all they
# take.
BASIC_GRAMMAR_SWEEPERS = ("fnnlab", "basic")


def _sweeper(config: DictConfig) -> str | None:
    return OmegaConf.select(config, "hydra.runtime.choices").get("hydra/sweeper")


def sweep_arguments(config: DictConfig) -> list[str]:
    """The sweep's overrides: the command line's, after the basic sweeper's own
    hydra.sweeper.params (`seed: range(5)` in a config file), as that sweeper joins them."""
    arguments = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    params = config.hydra.sweeper.get("params") if _sweeper(config) == "basic" else None
    return [f"{key}={value}" for key, value in (params or {}).items()] + arguments


def not_basic_grammar(arguments: list[str], loader: Any = None) -> ConfigValueError:
    """The error for the first override of `arguments` that is not in Hydra's basic sweep
    grammar (interval(...), tag(...)), which a basic-grammar sweeper cannot run."""
    for override in OverridesParser.create(config_loader=loader).parse_overrides(arguments):
        if override.is_sweep_override() and not override.is_discrete_sweep():
            key = override.get_key_element()
            return ConfigValueError(
                key,
                (override.input_line or "").partition("=")[2],
                "not in Hydra's basic sweep grammar (a=1,2 b='range(3)'), all this sweeper "
                "takes; choose another sweeper (hydra/sweeper=...) for it",
            )
    raise ValueError(f"every override of {arguments} is in the basic grammar")


def check_jobs(loader: Any, master: DictConfig, jobs: list[list[str]]) -> list[str]:
    """Every job's config checked (composition errors and bad values raise), and its
    fingerprint. The tracking store cannot vary within a sweep: one parent run holds it."""
    prints: dict[str, int] = {}  # fingerprint -> its first job
    for n, overrides in enumerate(jobs):
        cfg = internals.load_task_config(loader, master, list(overrides))
        check_values(cfg)
        for key in ("tracking.uri", "tracking.experiment"):
            if OmegaConf.select(cfg, key) != OmegaConf.select(master, key):
                raise ConfigValueError(
                    key, OmegaConf.select(cfg, key), "cannot vary within one sweep"
                )
        fp = fingerprint(cfg)
        if fp in prints:
            # regime.swing=0.01,0.9, say, or lr=0.1,1e-1: one run for both jobs, and an answer
            # with half the sweep missing.
            first = jobs[prints[fp]]
            mine = next((o for o in overrides if o not in first), " ".join(overrides))
            theirs = next((o for o in first if o not in overrides), "an earlier job")
            key, _, value = mine.partition("=")
            keys = f"{', '.join(TRAINING_KEYS[:-1])} and {TRAINING_KEYS[-1]}"
            raise ConfigValueError(
                key,
                value,
                f"trains the same run as {theirs} (both have the same {keys}, all that makes "
                "a run): one of the two jobs would have no run of its own",
            )
        prints[fp] = n
    return list(prints)


def job_only_value(
    exc: BaseException, arguments: list[str], config: DictConfig
) -> ConfigValueError | None:
    """For an error of a value that resolves only inside a running job (Hydra's
    ${hydra:job.num}: "HydraConfig was not set" outside one), the error that says so, naming
    the first such value of the command line as typed, or else of the config; None for any
    other error."""
    if not needs_running_job(exc):
        return None
    named = next(
        (
            a.lstrip("+")
            for a in arguments
            if "${hydra:" in a.partition("=")[2] and not a.lstrip("+~").startswith("hydra.")
        ),
        None,
    )
    if named is None:
        task = OmegaConf.to_container(internals.without_hydra(config), resolve=False)
        named = _first_hydra_value(task)
    if named is None:
        return None
    key, _, value = named.partition("=")
    why = (
        "resolves only inside a running job (${hydra:...}), and a sweep checks every job's "
        "config before any starts: give the values themselves (key=0,1,2)"
    )
    return ConfigValueError(key, value, why)


# Hydra's number of a job in hydra.sweep.subdir (not one escaped, \${...}, which is text).
_JOB_NUMBER = re.compile(r"(?<!\\)\$\{hydra[.:]job\.(?:num|id)\}")


def job_folders(
    loader: Any, config: DictConfig, jobs: list[list[str]] | None
) -> tuple[str, list[Path] | None, Path | None]:
    """hydra.sweep.subdir as given; the output folder of each job, as its launcher resolves
    it (None when the sweeper's jobs are not known); and the one folder of every job when
    the value has no interpolation (such as `.`), else None."""
    subdir, shared = sweep_subdir(config)
    plain = _JOB_NUMBER.sub("", subdir)
    if plain != subdir and "${" not in plain:
        # Only the job's number (the default, ${hydra.job.num}): put in as text, as the
        # launchers number the jobs (an id taken as the number), not composed for each job.
        if jobs is None:
            return subdir, None, None
        base = Path(str(config.hydra.sweep.dir)).absolute()
        numbered = (_JOB_NUMBER.sub(str(n), subdir) for n in range(len(jobs)))
        return subdir, [Path(os.path.normpath(base / text)) for text in numbered], None
    if shared is not None:
        folder = Path(os.path.normpath(shared.absolute()))
        return subdir, None if jobs is None else [folder] * len(jobs), folder
    if jobs is None:
        return subdir, None, None
    folders = []
    for n, overrides in enumerate(jobs):
        job = loader.load_sweep_config(config, list(overrides))
        with open_dict(job.hydra.job):  # as the launchers set them
            job.hydra.job.num, job.hydra.job.id = n, str(n)
        with as_in_its_job(job):
            folder = Path(str(job.hydra.sweep.dir)).absolute() / str(job.hydra.sweep.subdir)
        folders.append(Path(os.path.normpath(folder)))
    return subdir, folders, None


def check_job_folders(
    subdir: str, folders: list[Path] | None, shared: Path | None, location: str | None
) -> None:
    """Refuse a sweep whose jobs share an output folder: each writes its files over the one's
    before it, and under a parallel launcher a run uploaded another job's weights.pt. Refuse
    one too whose artifacts/ would hold the store's (a job's folder is the one of
    mlflow.db). `shared`: the one folder of every job, also when the sweeper's jobs are not
    known (more than one, as a rule)."""
    for folder in dict.fromkeys([*(folders or []), *([shared] if shared else [])]):
        if why := among_store_artifacts(location, folder):
            raise ConfigValueError("hydra.sweep.subdir", subdir, why)
    if shared is not None and (folders is None or len(folders) > 1):
        raise ConfigValueError(
            "hydra.sweep.subdir",
            subdir,
            f"every job would write its files into {shared}, over those of the job before: give "
            "one that differs per job (Hydra's default is ${hydra.job.num})",
        )
    first: dict[Path, int] = {}
    for n, folder in enumerate(folders or []):
        if folder in first:
            raise ConfigValueError(
                "hydra.sweep.subdir",
                subdir,
                f"jobs {first[folder]} and {n} would both write their files into {folder}: give "
                "one that differs per job (Hydra's default is ${hydra.job.num})",
            )
        first[folder] = n


def check_sweep_dir(sweep_dir: str, location: str | None) -> None:
    """Refuse a sweep folder inside the store's artifact `location`: its jobs' folders and
    its answer would lie among the runs' files (those of a job's folder are checked by
    check_job_folders)."""
    if why := inside_store_artifacts(location, sweep_dir):
        raise ConfigValueError("hydra.sweep.dir", sweep_dir, why)


def needs_running_job(exc: BaseException) -> bool:
    """The error of a value that resolves only inside a running job (${hydra:job.num}
    outside any job; ${hydra:runtime.output_dir}, which the job sets, before it)."""
    causes = (exc, exc.__cause__, exc.__context__)
    signs = ("HydraConfig was not set", "${hydra:runtime.", "hydra.runtime.")
    return any(sign in str(e) for e in causes if e is not None for sign in signs)


def _first_hydra_value(node: Any, key: str = "") -> str | None:
    """'key=value' of the first value under node that holds a ${hydra:...} interpolation."""
    if isinstance(node, dict):
        items = [(f"{key}.{k}" if key else str(k), v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(node)]
    else:
        return f"{key}={node}" if isinstance(node, str) and "${hydra:" in node else None
    return next((found for k, v in items if (found := _first_hydra_value(v, k))), None)


# A job and its number in the sweep (its folder, ${hydra.job.num}, the tag job_num).
Numbered = tuple[int, list[str]]


def jobs_to_run(
    loader: Any, master: DictConfig, arguments: list[str], rerun: bool, match: str = "code"
) -> list[Numbered]:
    """The fnnlab sweeper's jobs, with their numbers in the whole sweep (a job keeps its own
    when others are skipped): every job of the sweep but those that already have a FINISHED
    run in the experiment with the same config and, with match="code", made by the same code
    (provenance.code_hash); all of them with rerun. (The sweeper's constructor refuses any
    other `match`.)"""
    from hydra.errors import HydraException

    from fnnlab import provenance

    jobs = expand(arguments, loader)
    if jobs is None:
        raise HydraException(
            f"{' '.join(arguments)}: the fnnlab sweeper takes Hydra's basic sweep grammar "
            "(a=1,2 b='range(3)'); choose another sweeper (hydra/sweeper=...) for others"
        )
    numbered = list(enumerate(jobs))
    if rerun or not jobs:
        return numbered
    store = open_store(master.tracking.uri, master.tracking.experiment)
    done = finished_runs(store)
    if not done:
        return numbered
    code = provenance.code_hash()
    prints = [fingerprint(internals.load_task_config(loader, master, j)) for j in jobs]
    parent = find_parent(store, str(master.hydra.sweep.dir))
    todo: list[Numbered] = []
    reused, changed = [], 0
    for job, fp in zip(numbered, prints, strict=True):
        runs = [r for c, r in done.get(fp, []) if match == "config" or c == code]
        if runs:
            reused.append(min(runs, key=partial(_reuse_order, parent)))
            continue
        changed += fp in done
        todo.append(job)
    skipped = len(jobs) - len(todo)
    if skipped or changed:
        same = " with the same code" if match == "code" else ""
        again = (
            f"; running {changed} again because the code changed since "
            "(hydra.sweeper.resume_match=config skips them)"
            if changed
            else ""
        )
        log.info(
            "Sweep: skipping %d of %d jobs that already have a FINISHED run%s%s "
            "(hydra.sweeper.rerun=true runs every job)",
            skipped,
            len(jobs),
            same,
            again,
        )
    leave_out_of_progress(str(master.hydra.sweep.dir), skipped)
    if parent is not None:
        for run in reused:
            claims.use_run(store, run, parent.info.run_id, parent.data.tags[Tag.SWEEP_ID])
        log_values(
            store,
            parent.info.run_id,
            summary={"sweep/skipped": skipped, "sweep/code_changed": changed},
        )
    return todo


def _reuse_order(parent: Run | None, run: Run) -> tuple[bool, bool]:
    """Which FINISHED run of a configuration a sweep run again keeps (the least; of equals,
    the latest): its own, then one that is no replay's copy (replay.log=true makes one, of
    the same configuration, later)."""
    tags = run.data.tags
    own = parent is not None and parent.info.run_id in (
        tags.get(Tag.PARENT),
        tags.get(used_by_tag(parent.data.tags.get(Tag.SWEEP_ID, ""))),
    )
    return not own, Tag.REPLAY_OF in tags


def leave_out_of_progress(sweep_dir: str, jobs: int) -> None:
    """The progress lines of this process's sweep in `sweep_dir` (opened before its sweeper
    chooses the jobs) count `jobs` fewer: skipped, or held by an invocation that finished
    them."""
    folder = Path(sweep_dir).absolute()
    for sweep in _open:
        if Path(sweep.dir).absolute() == folder:
            sweep.progress.skip(jobs)


def finished_runs(store: Store) -> dict[str, list[tuple[str, Run]]]:
    """Per config fingerprint, the experiment's FINISHED jobs, latest first, with the code
    hash (tag env.code) each was made with: those need not run again."""
    query = f"tags.{Tag.ROLE} = '{ROLE_JOB}' and attributes.status = '{FINISHED}'"
    out: dict[str, list[tuple[str, Run]]] = {}
    for r in search_all(store, query, ["attributes.start_time DESC"]):
        out.setdefault(r.data.tags.get(Tag.FINGERPRINT), []).append((r.data.tags.get(Tag.CODE), r))
    return out


# --- the parent run ---------------------------------------------------------------------------


def invocation(sweep_dir: str) -> str:
    """One invocation of a sweep, named by its output folder (tag fnnlab.invocation on its
    job runs)."""
    return hashlib.sha256(sweep_dir.encode()).hexdigest()[:12]


def _invocation_tag(sweep_dir: str) -> str:
    """The parent's tag naming one invocation's output folder: its jobs look it up by that
    folder, whichever process or machine they run on."""
    return f"{Tag.SWEEP_DIR}.{invocation(sweep_dir)}"


def open_parent(
    store: Store, sid: str, overrides: list[str], jobs: int | None, sweep_dir: str
) -> str:
    """The sweep's parent run, reopened if this sweep ran before or runs now in another
    invocation, else created (one, however many invocations start at once)."""
    what = " ".join(overrides) or "(no overrides)"
    count = f"{jobs} jobs" if jobs is not None else "jobs chosen by the sweeper"
    description = (
        f"Sweep of {count} over: {what}\n\n"
        "Each child run is one job. Rerunning the same command resumes this sweep."
    )
    tags = {
        Tag.ROLE: ROLE_SWEEP,
        Tag.SWEEP_ID: sid,
        Tag.SWEEP_DIR: sweep_dir,
        Tag.SWEEP_OPENED: str(int(time.time() * 1000)),
        _invocation_tag(sweep_dir): sweep_dir,
        Tag.SWEEP_OVERRIDES: " ".join(overrides),
        Tag.NOTE: description,
        **process_tags(),
        **claims.lease_tags(),
    }
    swept = " ".join(o for o in overrides if "," in o or "range(" in o)
    name = f"sweep-{sid[:6]} {swept}".strip()[:250]
    query = f"tags.{Tag.ROLE} = '{ROLE_SWEEP}' and tags.{Tag.SWEEP_ID} = '{sid}'"
    run_id, created = claims.unique_run(
        store,
        query,
        lambda: store.client.create_run(store.experiment_id, run_name=name, tags=tags).info.run_id,
    )
    # A folder is one sweep's at a time: the jobs of this one find their parent by it
    # (find_parent), and found a sweep run there before instead (helper-65).
    for other in search_all(store, _holding(sweep_dir)):
        if other.info.run_id != run_id:
            _untag(store, other.info.run_id, _invocation_tag(sweep_dir))
    find_parent.cache_clear()  # a sweep before this one in this process found its own
    if not created:
        store.client.update_run(run_id, status=RUNNING)
        log_values(store, run_id, tags=tags)
        # An earlier invocation's error no longer says how the sweep stands.
        if Tag.ERROR in store.client.get_run(run_id).data.tags:
            _untag(store, run_id, Tag.ERROR)
    return run_id


def _untag(store: Store, run_id: str, key: str) -> None:
    """Delete a parent's tag, unless it is gone: another invocation of the sweep deleted it
    too, or deleted that parent, its candidate (claims.unique_run), since it was looked at
    (helper-67)."""
    try:
        store.client.delete_tag(run_id, key)
    except MlflowException as exc:
        gone = store.client.get_run(run_id).info.lifecycle_stage != "active"
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and not gone:
            raise


@lru_cache(maxsize=8)
def find_parent(store: Store, sweep_dir: str) -> Run | None:
    """The parent run of the sweep invocation writing to sweep_dir (once per process)."""
    found = search_all(store, _holding(sweep_dir))
    return found[0] if found else None


def _holding(sweep_dir: str) -> str:
    """The search for the sweep parent whose jobs write into sweep_dir (open_parent keeps
    one)."""
    tag = _invocation_tag(sweep_dir)
    return f"tags.{Tag.ROLE} = '{ROLE_SWEEP}' and tags.`{tag}` = {filter_literal(sweep_dir)}"


def sweep_counts(store: Store, parent_run_id: str, expected: set[str] | None = None) -> Counter:
    """What the sweep's configurations came to, one run each (a FINISHED one if any, else
    the latest attempt): finished (reused: made by another sweep), diverged, failed,
    running. Configurations of `expected` (fingerprints) with no run at all count as failed
    (and missing)."""
    counts: Counter = Counter()
    parent = store.client.get_run(parent_run_id)
    keep = partial(slim, tags=(Tag.FINGERPRINT, Tag.PARENT, Tag.DIVERGED), data=False)
    runs = one_run_per_config(sweep_runs(store, parent, keep=keep))
    if expected is not None:
        counts["missing"] = len(expected - {r.data.tags.get(Tag.FINGERPRINT) for r in runs})
        counts["failed"] += counts["missing"]
    for run in runs:
        status = run.info.status
        if status == FINISHED:
            counts["finished"] += 1
            counts["reused"] += run.data.tags.get(Tag.PARENT) != parent_run_id
            counts["diverged"] += run.data.tags.get(Tag.DIVERGED) == "true"
        elif status in UNFINISHED:
            counts["failed"] += 1
        else:
            counts["running"] += 1
    return counts


# --- runs whose process is gone -------------------------------------------------------------


def reap_dead_runs(
    store: Store, sid: str, remote_after: float, of: str | None = None
) -> tuple[int, int]:
    """End KILLED the RUNNING jobs of this sweep whose process is gone (SIGKILL, lost host,
    launcher workers torn down with an interrupted sweep).

    On this host a run is dead when its recorded pid is no longer its process; on another,
    when its lease ran out (fnnlab.claims.holder_alive). Returns (runs marked KILLED, runs
    left RUNNING; with `of`, only those of that invocation, see invocation()).
    """
    query = (
        f"tags.{Tag.SWEEP_ID} = '{sid}' and tags.{Tag.ROLE} = '{ROLE_JOB}' "
        f"and attributes.status = '{RUNNING}'"
    )
    reaped = left = 0
    for run in search_all(store, query):
        alive, why = claims.holder_alive(run, remote_after)
        if alive:
            if of is None or run.data.tags.get(Tag.INVOCATION) == of:
                left += 1
            continue
        claims.mark_dead(store, run, why)
        reaped += 1
    return reaped, left


# --- runs other invocations hold -------------------------------------------------------------

# How often a sweep looks at the runs other invocations train: from this, slowing to the max.
WAIT_POLL_S, WAIT_POLL_MAX_S = 0.5, 5.0


def launches(jobs: list[Numbered], size: int, any_numbers: bool) -> list[list[Numbered]]:
    """The numbered jobs in launches of at most `size`. A launcher that takes each job's
    number (the fnnlab launcher's launch_numbered) takes them as they come; Hydra's launch()
    numbers a launch's jobs on from its first, so for another launcher a launch holds
    consecutive numbers only (a resumed sweep's jobs between skipped ones launch apart)."""
    out: list[list[Numbered]] = []
    for job in jobs:
        if out and len(out[-1]) < size and (any_numbers or out[-1][-1][0] + 1 == job[0]):
            out[-1].append(job)
        else:
            out.append([job])
    return out


def held_jobs(jobs: list[Numbered], results: list[JobReturn]) -> list[tuple[Numbered, str]]:
    """The jobs whose configuration another invocation was training when they ran, with the
    holder's run id (train_app returns held=True for them)."""
    held = []
    for job, result in zip(jobs, results, strict=True):
        value = result.return_value if internals.job_error(result) is None else None
        if isinstance(value, dict) and value.get("held"):
            held.append((job, value["run_id"]))
    return held


def wait_for_holders(
    store: Store, held: list[tuple[Numbered, str]], remote_after: float
) -> list[Numbered]:
    """Wait until every holder's run has ended (a dead holder's is marked KILLED); return the
    jobs whose holder did not finish, for this invocation to run after all."""
    said, again, poll = False, [], WAIT_POLL_S
    pending = list(held)
    while pending:
        waiting = []
        for job, run_id in pending:
            run = store.client.get_run(run_id)
            if run.info.lifecycle_stage == "deleted":  # it stepped back too: claim again
                again.append(job)
            elif run.info.status == RUNNING:
                alive, why = claims.holder_alive(run, remote_after)
                if alive:
                    waiting.append((job, run_id))
                else:
                    claims.mark_dead(store, run, why)
                    again.append(job)
            elif run.info.status != FINISHED:
                again.append(job)
        pending = waiting
        if pending:
            if not said:
                log.info("Sweep: waiting for %d runs other invocations are training", len(pending))
                said = True
            time.sleep(poll)
            poll = min(poll * 1.5, WAIT_POLL_MAX_S)
    return again


def wait_for_others(store: Store, parent_run_id: str, sweep_dir: str, remote_after: float) -> None:
    """Wait until no run of the sweep is RUNNING in another live invocation (same sweep on
    another machine, an overlapping sweep holding a configuration of this one). This
    invocation's own jobs have all returned: a run of theirs still RUNNING (its end could
    not be written) is marked KILLED."""
    mine, others = invocation(sweep_dir), []
    running = f"attributes.status = '{RUNNING}'"
    for run in sweep_runs(store, store.client.get_run(parent_run_id), running):
        if run.info.status != RUNNING:
            continue
        if run.data.tags.get(Tag.INVOCATION) == mine:
            claims.mark_dead(store, run, "its job returned without ending it")
        else:
            others.append(((-1, []), run.info.run_id))  # waited for, never launched
    wait_for_holders(store, others, remote_after)


# --- one invocation ---------------------------------------------------------------------------


def unknown_plugin_setting(hydra: DictConfig, plugin: str) -> ConfigValueError | None:
    """The error for a key of hydra.<plugin> (launcher or sweeper) that its class does not
    take (`+hydra.launcher.bogus=1`), named as a key; None if there is none, or if the class
    takes any keyword."""
    import inspect

    from hydra.utils import get_class

    node = hydra[plugin]
    choice = hydra.runtime.choices.get(f"hydra/{plugin}")
    params = inspect.signature(get_class(node.get("_target_")).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        # Hydra's joblib and submitit launchers pass every key on, to joblib.Parallel and
        # submitit's executors, which take more than the plugins' schemas list.
        return None
    known = [name for name in params if name != "self"]
    unknown = next((key for key in node if key != "_target_" and key not in known), None)
    if unknown is None:
        return None
    return ConfigValueError(
        f"hydra.{plugin}.{unknown}",
        node[unknown],
        f"not a setting of hydra/{plugin}={choice} (it has {', '.join(known)})",
    )


def check_hydra_plugins(hydra: DictConfig) -> None:
    """Settings that Hydra's own sweeper and launchers take without a word and fail on only
    once the sweep has begun, its parent run made (fnnlab's plugins refuse them when they
    are made)."""
    size = hydra.sweeper.get("max_batch_size")
    if size is not None and size < 1:
        raise ConfigValueError(
            "hydra.sweeper.max_batch_size",
            size,
            "must be at least 1 (jobs per launch), or null to launch every job at once",
        )
    target = str(hydra.launcher.get("_target_", ""))
    if is_hydra_joblib(hydra.launcher):
        check_joblib(hydra.launcher)
    elif target == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher":
        check_submitit_local(hydra.launcher)
    elif is_ray_launcher(hydra.launcher):
        check_ray(hydra.launcher.ray)


def is_hydra_joblib(launcher: DictConfig) -> bool:
    return str(launcher.get("_target_", "")).startswith("hydra_plugins.hydra_joblib")


def is_ray_launcher(launcher: DictConfig) -> bool:
    return launcher.get("_target_") == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"


def start_ray(ray_settings: DictConfig) -> bool:
    """Start Ray as Hydra's Ray launcher would (it uses a Ray already running), and put back
    the SIGTERM handler ray.init replaces. Ray's own handler exits with status 15, and from
    within ray.get, which passes on only an interrupt, that exit was lost: the jobs in
    flight ran on and the command ended with status 1. fnnlab's handler raises an
    interrupt, which ray.get passes on: the sweep ends as after Ctrl-C. What Ray logs
    while it starts is shown once it has started: settings it refuses end in one line.
    Whether it started Ray (not when Ray was running already)."""
    import ray

    if ray.is_initialized():
        return False
    init = OmegaConf.to_container(ray_settings.get("init") or {}, resolve=True)
    typed = {key: value for key, value in init.items() if value is not None}
    if ray_starts_its_own(init):
        # The launcher's own default (hydra_ray_launcher's _core.launch); Ray refuses it
        # when it joins a cluster, so only for an instance of its own.
        init.setdefault("object_store_memory", 78643200)
    log.info("Starting Ray for Hydra's Ray launcher: ray.init(**%s)", init)
    sigterm = signal.getsignal(signal.SIGTERM)
    held = _HeldRecords()
    handlers = list(logging.getLogger("ray").handlers)
    for handler in handlers:
        handler.addFilter(held)
    try:
        try:
            ray.init(**init)
        finally:
            for handler in handlers:
                handler.removeFilter(held)
            if threading.current_thread() is threading.main_thread() and sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
    except SystemExit as exc:  # Ray's SIGTERM handler, while Ray started
        if exc.code != signal.SIGTERM:
            raise
        raise KeyboardInterrupt from None
    except Exception as exc:  # an unknown argument, a value Ray refuses, an unknown address
        ray.shutdown()  # what it started before it failed
        raise ConfigValueError(
            "hydra.launcher.ray.init", typed, f"Ray did not start with it: {first_line(exc)}"
        ) from exc
    held.show(handlers)
    return True


class _HeldRecords(logging.Filter):
    """A filter that holds back every record its handlers get, to show them later. While
    ray.init runs, Ray logs its own errors for a setting it refuses: held back, a refused
    setting ends in fnnlab's one line alone, and they are shown once Ray has started."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[int, logging.LogRecord] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        self.records[id(record)] = record
        return False

    def show(self, handlers: list[logging.Handler]) -> None:
        for record in self.records.values():
            for handler in handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)


def ray_starts_its_own(init: Any) -> bool:
    """Whether ray.init with these settings starts an instance of its own, rather than join
    a cluster: one named by ray.init.address or RAY_ADDRESS, or one ray.init() may find by
    itself (ray_cluster_may_run)."""
    address = init.get("address")
    if os.environ.get("RAY_ADDRESS") or address not in (None, "local"):
        return False
    return address == "local" or not ray_cluster_may_run(init)


def check_submitit_local(launcher: DictConfig) -> None:
    """submitit's local jobs: with no task none runs, and with a timeout under a minute (it
    counts whole seconds) each is killed at once; the launch then fails with a traceback."""
    for key, why in (
        ("tasks_per_node", "must be at least 1 (tasks of each job)"),
        ("timeout_min", "must be at least 1 (minutes before submitit kills a job)"),
    ):
        value = launcher.get(key)
        if value is not None and value < 1:
            raise ConfigValueError(f"hydra.launcher.{key}", value, why)
    # Its jobs' folders: one that cannot be made failed the launch with a traceback.
    folder = str(launcher.get("submitit_folder") or "")
    if folder:
        made = folder.split("%", 1)[0]  # %j and the like: the job's own part
        # As submitit reads it: ~ is the home folder.
        made_dir = Path(made).expanduser()
        made_dir = made_dir if made.endswith("/") or made == folder else made_dir.parent
        if why := folder_problem(made_dir):
            raise ConfigValueError("hydra.launcher.submitit_folder", folder, why)


def check_ray(ray: DictConfig) -> None:
    """A job asking the Ray instance the launch starts for more CPUs than it has never
    starts: Ray waits for them without a word, and the sweep with it. An existing cluster's
    resources are known only once connected, and not checked: one named by
    ray.init.address or RAY_ADDRESS, or one ray.init() may find by itself."""
    init, remote = ray.get("init") or {}, ray.get("remote") or {}
    if not ray_starts_its_own(init):
        return
    # Ray counts at most the machine's CPUs (fewer in a container); a task asks for 1.
    have, asked = init.get("num_cpus"), remote.get("num_cpus")
    cpus = (os.cpu_count() or 1) if have is None else have
    need = 1 if asked is None else asked
    numbers = all(isinstance(v, (int, float)) for v in (cpus, need))
    if numbers and need > cpus:  # (other values are Ray's to refuse)
        key, value = ("remote.num_cpus", asked) if asked is not None else ("init.num_cpus", have)
        has = "hydra.launcher.ray.init.num_cpus" if have is not None else "this machine's"
        raise ConfigValueError(
            f"hydra.launcher.ray.{key}",
            value,
            f"each job asks Ray for {need:g} CPUs and the Ray instance this sweep starts has "
            f"{cpus:g} ({has}), so no job would ever start",
        )


def ray_cluster_may_run(init: Any) -> bool:
    """Whether ray.init() without an address may join a running cluster instead of
    starting its own: `ray start` left the file Ray reads its address from
    (ray_current_cluster in Ray's temporary folder; every folder Ray may take is looked in,
    so such a cluster is not missed, and a stale file only skips the check)."""
    temp = (os.environ.get("RAY_TMPDIR"), os.environ.get("TMPDIR"), "/tmp", tempfile.gettempdir())
    folders = [Path(t) / "ray" for t in temp if t]
    if init.get("_temp_dir"):  # Ray's own folder, given outright
        folders.append(Path(init.get("_temp_dir")))
    return any((folder / "ray_current_cluster").exists() for folder in folders)


def check_joblib(launcher: DictConfig) -> None:
    """joblib's own checks of Hydra's joblib launcher's settings, run on no jobs (no worker
    starts): batch_size=0 or pre_dispatch=bogus otherwise fail at launch. Names the setting
    that fails with the others at joblib's defaults (n_jobs kept), else n_jobs."""
    import warnings

    from joblib import Parallel

    if launcher.get("n_jobs") == 0:
        raise ConfigValueError(
            "hydra.launcher.n_jobs",
            0,
            "must not be 0 with Hydra's joblib launcher (joblib's n_jobs: worker processes, "
            "or -1 for one per core)",
        )
    settings = internals.joblib_settings(launcher)
    if settings is None:
        return
    settings["verbose"] = 0  # no progress line for the empty launch

    def fails(**kwargs: Any) -> Exception | None:
        try:
            with warnings.catch_warnings():  # "timeout is not used" with one job, say
                warnings.simplefilter("ignore")
                Parallel(**kwargs)([])
        except Exception as exc:
            return exc
        return None

    error = fails(**settings)
    if error is None:
        check_joblib_dispatch(launcher, settings)
        return
    named = "n_jobs"
    for key, value in settings.items():
        alone = {"n_jobs": settings.get("n_jobs"), "backend": "loky", key: value}
        if key not in ("n_jobs", "backend") and (why := fails(**alone)) is not None:
            named, error = key, why
            break
    raise ConfigValueError(
        f"hydra.launcher.{named}", launcher[named], f"joblib refuses it: {first_line(error)}"
    )


def check_joblib_dispatch(launcher: DictConfig, settings: dict[str, Any]) -> None:
    """What joblib accepts on no jobs but fails once jobs run: a pre_dispatch that comes to
    0 or less (joblib then dispatches nothing and returns no results), and a timeout of 0 or
    less with more than one worker (every job times out). pre_dispatch is put to joblib on
    one no-op job with threads, so that no process starts."""
    from joblib import Parallel, delayed, effective_n_jobs

    n_jobs = settings.get("n_jobs")
    pre_dispatch = settings.get("pre_dispatch", "2 * n_jobs")
    dispatched = Parallel(n_jobs=n_jobs, pre_dispatch=pre_dispatch, backend="threading")(
        [delayed(int)()]
    )
    if not dispatched:
        raise ConfigValueError(
            "hydra.launcher.pre_dispatch",
            launcher.pre_dispatch,
            f"comes to no job at all with n_jobs={n_jobs}, so joblib would run none; "
            "give a positive number of jobs or an expression such as 2*n_jobs",
        )
    timeout = settings.get("timeout")
    if (
        isinstance(timeout, int | float)
        and not isinstance(timeout, bool)
        and timeout <= 0
        and effective_n_jobs(n_jobs) != 1
    ):
        raise ConfigValueError(
            "hydra.launcher.timeout",
            launcher.timeout,
            "must be more than 0, or null for none: joblib would stop every job at once "
            "with a TimeoutError",
        )


class Sweep:
    """One sweep invocation, from its check to its parent run's end, in the process that
    runs the sweep."""

    def __init__(
        self, config: DictConfig, remote_dead_after_s: float, summarize: bool = True
    ) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.utils import instantiate

        arguments = sweep_arguments(config)
        loader = internals.config_loader(GlobalHydra.instance().config_loader())
        try:
            task = internals.without_hydra(config)
            # Every value resolved: one that resolves only inside a running job fails here,
            # and so before any run exists (job_only_value names it).
            OmegaConf.to_container(task, resolve=True)
            experiment = config.tracking.experiment
            # The launcher and sweeper settings: their constructors refuse bad ones (say
            # hydra.launcher.n_jobs=0), but Hydra makes them only after this callback.
            for plugin in ("launcher", "sweeper"):
                if unknown := unknown_plugin_setting(config.hydra, plugin):
                    raise unknown
                instantiate(config.hydra[plugin])
            check_hydra_plugins(config.hydra)
            jobs = expand(arguments, loader)
            if jobs is None and _sweeper(config) in BASIC_GRAMMAR_SWEEPERS:
                raise not_basic_grammar(arguments, loader)
            check_values(task)
            # Every configuration the sweep must end with a run of (None: the sweeper's).
            self.prints = None if jobs is None else set(check_jobs(loader, config, jobs))
            try:  # jobs find their parent by this folder, through a filter
                filter_literal(str(config.hydra.sweep.dir))
            except ValueError as exc:
                raise ConfigValueError(
                    "hydra.sweep.dir", config.hydra.sweep.dir, str(exc)
                ) from None
            subdir = OmegaConf.to_container(config.hydra, resolve=False)["output_subdir"]
            check_output_subdir(subdir)
            # The sweep's and its jobs' folders, checked before the store is made, and once
            # it is.
            folders = job_folders(loader, config, jobs)
            location = artifact_location(config.tracking.uri)
            check_sweep_dir(config.hydra.sweep.dir, location)
            check_job_folders(*folders, location)
            # hydra.sweeper.summarize (the fnnlab sweeper's), or the callback's own for others.
            summarize = summarize and bool(config.hydra.sweeper.get("summarize", True))
            answer_dir = Path(str(config.hydra.sweep.dir)) / "aggregate"
            if summarize and (why := folder_problem(answer_dir)):
                # Else the runs all train, and the sweep ends without its answer.
                raise ConfigValueError(
                    "hydra.sweep.dir", config.hydra.sweep.dir, f"cannot make {answer_dir}: {why}"
                )
            # Ray's settings refused before any write.
            self.ray = is_ray_launcher(config.hydra.launcher) and start_ray(
                config.hydra.launcher.ray
            )
            self.store = open_store(config.tracking.uri, experiment)
            # Again only for an experiment made with another location than a new one gets.
            if self.store.artifact_location != location:
                check_sweep_dir(config.hydra.sweep.dir, self.store.artifact_location)
                check_job_folders(*folders, self.store.artifact_location)
        except Exception as exc:
            cause = job_only_value(exc, arguments, config) or exc
            raise SweepRefused(str(cause)) from cause
        self.id = sweep_id(arguments, experiment)
        self.dir = str(config.hydra.sweep.dir)
        self.subdir = folders[0]
        self.launcher = config.hydra.launcher
        self.experiment = experiment
        self.summarize = summarize
        self.base = links.base_url(config.tracking.uri, config.ui.host, config.ui.port)
        self.jobs = len(jobs) if jobs is not None else None
        self.remote_after = remote_dead_after_s
        reaped, alive = reap_dead_runs(self.store, self.id, remote_dead_after_s)
        if reaped or alive:
            log.info(
                "Sweep %s: marked %d RUNNING runs of dead processes KILLED; %d still RUNNING",
                self.id,
                reaped,
                alive,
            )
        self.parent = open_parent(self.store, self.id, arguments, self.jobs, self.dir)
        self.progress = progress.SweepProgress(self.jobs)
        self.first_error: str | None = None
        if self.summarize:
            prefetch_answer()
        self.pid = os.getpid()
        self.started_ms = int(time.time() * 1000)
        storeguard.FAULTS.reset()
        atexit.register(self.abandon)
        _open.append(self)
        log.info("Sweep %s: parent run %s", self.id, self.parent)

    def job_ended(self, job_return: JobReturn) -> None:
        if os.getpid() != self.pid:  # a forked worker inherits this object; it does not count
            return
        error = internals.job_error(job_return)
        if error is not None and self.first_error is None:
            self.first_error = first_line(error)
        value = job_return.return_value if error is None else None
        if isinstance(value, dict) and value.get("held"):
            # Not ended: counted when run here after all, or left out once its holder has
            # finished it (the sweeper); it was counted twice, and as finished (helper-66).
            return
        diverged = isinstance(value, dict) and bool(value.get("diverged"))
        self.progress.job_ended(error is None, diverged)

    def end(self) -> None:
        """Close the parent FINISHED or FAILED from what the store holds; raise SweepFailed
        when a configuration has no finished run, or the store failed at the end. Until the
        parent is closed, an interrupt (during the answer, say) leaves it to abandon, at exit."""
        try:
            wait_for_others(self.store, self.parent, self.dir, self.remote_after)
            counts = sweep_counts(self.store, self.parent, self.prints)
            failed = counts["failed"] + counts["running"]
            if failed:
                self.first_error = self.first_error or self._first_run_error()
            answer = self.answer(counts) if self.summarize else None
            self._close(
                counts, FAILED if failed else FINISHED, self.first_error if failed else None
            )
            self.mark_closed()
            state = f"parent run {self.parent} is {'FAILED' if failed else 'FINISHED'}"
            print(self.progress.summary(counts, self.id, self.parent), flush=True)
            if answer:
                print(answer, flush=True)
        except Exception as exc:  # the store went away: the next invocation reaps and resumes
            self.mark_closed()
            failed = max(self.progress.failed, 1)
            state = f"parent run {self.parent} could not be closed: {first_line(exc)}"
            self.first_error = self.first_error or first_line(exc)
        if failed:  # the first error was looked for above (run tags), or is the store's
            first = self.first_error or "see the runs error tags"
            raise SweepFailed(
                f"{failed} jobs failed or did not finish ({state}); rerun the same command "
                f"to retry them. First error: {first}"
            )

    def _first_run_error(self) -> str | None:
        """The error of this invocation's first FAILED run, from its tag: a job that ran in
        a worker process ended there, and its error was not seen here."""
        errors = self.run_errors()
        return min(errors)[1].splitlines()[0][:300] if errors else None

    def run_errors(self) -> list[tuple[int, str]]:
        """(start time, error tag) of this invocation's FAILED runs; none when the store
        fails (the messages that use them say where to look instead)."""
        try:
            parent = self.store.client.get_run(self.parent)
            keep = partial(slim, tags=(Tag.ERROR,), data=False)
            failed = sweep_runs(self.store, parent, f"attributes.status = '{FAILED}'", keep)
        except Exception:
            return []
        return [
            (r.info.start_time, r.data.tags[Tag.ERROR])
            for r in failed
            if r.info.start_time >= self.started_ms and r.data.tags.get(Tag.ERROR)
        ]

    def answer(self, counts: Counter) -> str | None:
        """What fnnlab-aggregate says about this sweep (all its runs, also those of earlier
        invocations), its files under <sweep dir>/aggregate and on the parent run. A summary
        that cannot be made is one logged line, not a failed sweep."""
        if _prefetch is not None:
            _prefetch.join()
        from fnnlab import aggregate, report  # pandas, scipy, matplotlib: only here

        try:
            sel = aggregate.select(self.store.uri, self.experiment, parent_run_id=self.parent)
            # The parent ends after the answer: the counts are this end's, not a stored one's.
            sel.unfinished, sel.jobs = aggregate.unfinished_jobs({**counts, "jobs": self.jobs or 0})
            sel.running = False
            if not sel.unfinished:
                sel.not_finished = []
            agg = aggregate.aggregate(sel)
            _, text = report.publish(agg, Path(self.dir) / "aggregate", self.base)
        except Exception as exc:
            log.warning("Sweep %s: no summary: %s", self.id, first_line(exc))
            return None
        return text

    def abandon(self, after_error: bool = False, error: str | None = None) -> None:
        """The sweep did not reach its end (an interrupt, an error): runs of workers torn
        down with it end KILLED, and so does the parent, or FAILED after an error when a
        job of this invocation failed or `error` says why the sweep stopped. Not after the
        sweep stopped because the store failed: the next invocation does it, once the store
        works."""
        if os.getpid() != self.pid or storeguard.FAULTS.stopped:
            return
        if self.ray:
            # Ray's workers go before their runs are reaped: left to Ray's own shutdown at
            # exit (after this), they trained on and started jobs whose runs stayed RUNNING.
            import ray

            ray.shutdown()
        try:
            mine = invocation(self.dir)
            left = reap_dead_runs(self.store, self.id, float("inf"), mine)[1]
            # Ray's workers exit after its shutdown returns (later under load): the runs they
            # hold are reaped once they have, or they stayed RUNNING. This invocation's only:
            # another invocation of the sweep trains on.
            deadline = time.monotonic() + RAY_EXIT_S
            while self.ray and left and time.monotonic() < deadline:
                time.sleep(0.2)
                left = reap_dead_runs(self.store, self.id, float("inf"), mine)[1]
            failed = after_error and (error or self.first_error or self._first_run_error())
            counts = sweep_counts(self.store, self.parent, self.prints)
            self._close(counts, FAILED if failed else KILLED, failed or None)
        except Exception as exc:  # the store went away: the next invocation reaps
            log.error("could not end parent run %s: %s", self.parent, first_line(exc))

    def mark_closed(self) -> None:
        """The parent is closed (or left to the next invocation): nothing to do at exit."""
        atexit.unregister(self.abandon)
        if self in _open:
            _open.remove(self)

    def _close(self, counts: Counter, status: str, error: str | None = None) -> None:
        """End the parent with its counts and, FAILED, the first error of its jobs in its
        tag `error`, as a job's run holds its own: the MLflow UI shows why."""
        # Every count, zeros too: a metric keeps its last value, and an earlier invocation's
        # running=2 would stay on the parent as this one's.
        every = ("finished", "failed", "running", "diverged", "reused")
        metrics = {f"sweep/{k}": counts[k] for k in (*every, *counts)}
        if self.jobs is not None:
            metrics["sweep/jobs"] = self.jobs
        tags = {Tag.ERROR: error} if error else None
        log_values(self.store, self.parent, summary=metrics, tags=tags)
        end_run(self.store, self.parent, status)


# How long an interrupted Ray sweep waits for the runs of Ray's exiting workers.
RAY_EXIT_S = 10.0

# This process's sweeps whose parent is still open: abandon closes it at exit, or
# close_open before that.
_open: list[Sweep] = []


def close_open(after_error: bool, error: str | None = None) -> None:
    """Close the parents of this process's open sweeps now, as abandon does at exit. After
    an error, not an interrupt, that ends the command before the sweep's end (Hydra's basic
    sweeper raises the first failed job's error when its batch ends): FAILED as a sweep
    with a failed job ends, or with `error` (why the sweep stopped, SweepFolderFailed's) as
    its error; KILLED otherwise (a dead worker, say). A Ctrl-C during these writes leaves
    the sweep to abandon, at exit."""
    for sweep in list(_open):
        sweep.abandon(after_error=after_error, error=error)
        sweep.mark_closed()


def launch_timed_out(exc: BaseException) -> str | None:
    """Hydra's joblib launcher raised joblib's TimeoutError: a job of this process's open
    sweep ran past hydra.launcher.timeout, and joblib ended every worker. The line that says
    so; the sweep counts it as a failed job, so its parent ends FAILED, as a sweep whose job
    submitit timed out does. None for any other error."""
    import multiprocessing

    if not isinstance(exc, multiprocessing.TimeoutError):
        return None
    for sweep in _open:
        timeout = sweep.launcher.get("timeout")
        if is_hydra_joblib(sweep.launcher) and timeout is not None:
            # The launcher's schema makes it a float: 1 was typed, not 1.0.
            timeout = int(timeout) if float(timeout).is_integer() else timeout
            line = (
                f"hydra.launcher.timeout={timeout}: a job ran longer, and joblib stopped the "
                "sweep (its runs in flight end KILLED). Rerun with a longer timeout, or null "
                "for none: the jobs that finished are skipped"
            )
            sweep.first_error = sweep.first_error or line
            return line
    return None


_prefetch: threading.Thread | None = None


def prefetch_answer() -> None:
    """Import the answer's modules (pandas, SciPy) in a thread, once per process, while the
    jobs run: the sweep's process mostly waits for its workers then (README: Speed). A fork
    waits for the thread, so that no child starts with an import lock held."""
    global _prefetch
    if _prefetch is None:
        _prefetch = threading.Thread(target=_import_answer, name="fnnlab-prefetch", daemon=True)
        os.register_at_fork(before=_prefetch.join)
        _prefetch.start()


def _import_answer() -> None:
    try:
        from fnnlab import aggregate, report  # noqa: F401
    except Exception:  # noqa: S110 - the answer imports them again and reports the error
        pass


def _read_as_typed(value: Any) -> Any:
    """A string as the command line's value would be read (config.override_value);
    anything else, or a string that cannot be read alone, as it is."""
    try:
        return override_value(value) if isinstance(value, str) else value
    except ValueError:
        return value


class SweepCallback(Callback):
    """hydra.callbacks.sweep in conf/train.yaml: what a sweep means in fnnlab, for any
    sweeper and launcher (see the module docstring), and a single run's value checks before
    its output folder exists."""

    def __init__(
        self,
        remote_dead_after_s: float = 86400.0,
        summarize: bool = True,
        store_failures: int = 3,
        **unknown: Any,
    ) -> None:
        # Hydra makes callbacks without a schema: a setting of the wrong type would be taken
        # as it is ("abc" as true, as a number of seconds).
        def refuse(key: str, value: Any, why: str) -> None:
            raise ConfigValueError(f"hydra.callbacks.sweep.{key}", value, why)

        given = {
            "summarize": summarize,
            "store_failures": store_failures,
            "remote_dead_after_s": remote_dead_after_s,
        }
        # A string, from ${oc.env:...} say, read as Hydra reads an override's value ("false",
        # "60").
        summarize, store_failures, remote_dead_after_s = map(_read_as_typed, given.values())
        for key, value in unknown.items():
            refuse(
                key,
                value,
                "not a setting of the sweep callback (it has "
                "remote_dead_after_s, summarize, store_failures)",
            )
        if not isinstance(summarize, bool):
            refuse("summarize", given["summarize"], "must be true or false")
        if isinstance(store_failures, bool) or not isinstance(store_failures, int):
            refuse("store_failures", given["store_failures"], "must be a whole number, at least 1")
        if store_failures < 1:
            refuse("store_failures", given["store_failures"], "must be at least 1")
        number = isinstance(remote_dead_after_s, int | float) and not isinstance(
            remote_dead_after_s, bool
        )
        if not (number and math.isfinite(remote_dead_after_s) and remote_dead_after_s > 0):
            why = "must be a number of seconds > 0"
            refuse("remote_dead_after_s", given["remote_dead_after_s"], why)
        # A RUNNING job recorded on another host without a lease (fnnlab.claims) counts as
        # dead (KILLED, rerun) after this.
        self.remote_dead_after_s = remote_dead_after_s
        # End with the sweep's answer (also hydra.sweeper.summarize with the fnnlab sweeper).
        self.summarize = summarize
        # Stop the sweep when the store failed this many jobs in a row (in one process).
        self.store_failures = store_failures
        self.sweep: Sweep | None = None

    def __getstate__(self) -> dict:
        # Launchers ship callbacks to their workers: the sweep stays with its process.
        return {
            "remote_dead_after_s": self.remote_dead_after_s,
            "summarize": self.summarize,
            "store_failures": self.store_failures,
            "sweep": None,
        }

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A single run's values, checked as train_app checks them but before Hydra makes
        the run's output folder: a run refused for one leaves none behind. Not its store:
        the variables of hydra.job.env_set (a password, say) are set only for the job, and a
        value such as ${now:...} resolves to another time in a copy of the config. Values of
        ${hydra:job.name} and the like resolve as in the job; one of what only the running
        job sets (${hydra:runtime.output_dir}) leaves the check to train_app."""
        try:
            with as_in_its_job(config):
                check_values(internals.without_hydra(config))
        except Exception as exc:
            if not needs_running_job(exc):
                raise SweepRefused(str(exc)) from exc

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.sweep = Sweep(config, self.remote_dead_after_s, self.summarize)
        except Exception as exc:
            # Past its checks (the store failed while the parent was opened, say): Hydra
            # would warn and run the jobs with no parent.
            raise SweepRefused(str(exc)) from exc

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep is not None and os.getpid() == self.sweep.pid:
            self.sweep.progress.job_started()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.sweep is not None:
            self.sweep.job_ended(job_return)
        if config.hydra.mode == RunMode.MULTIRUN:
            # In the sweep's process or a worker: raises StoreFailed to stop the sweep.
            error = internals.job_error(job_return)
            storeguard.FAULTS.job_ended(error, self.store_failures, str(config.tracking.uri))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep, self.sweep = self.sweep, None
        if sweep is not None:
            sweep.end()
