"""One MLflow run from a History and a config, through MlflowClient with explicit run ids.

No fluent API: jobs may run in worker processes where a global active run would be
wrong. Writes are batched within MLflow's per-call limits.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse, urlsplit, urlunsplit

import sqlalchemy
from mlflow.entities import Experiment, Metric, Param, Run, RunInfo, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fnnlab import internals, provenance, storeguard
from fnnlab.config import masked_uri, sqlite_path
from fnnlab.errortext import first_line, reason
from fnnlab.names import FAILED, FINISHED, KILLED, ROLE_SWEEP, Tag

log = logging.getLogger(__name__)

# MLflow's limits for one log_batch call.
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
# ... and for all three together.
MAX_ENTRIES = 1000
MAX_TAG_VALUE = 5000

# MLflow retries a failed HTTP request for minutes by default. A sweep against a server that
# went away should fail its jobs within seconds, with the error, not hang (user settings win).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class _Drop(logging.Filter):
    """Drops a logger's records that start with `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.text)


# Store errors are raised and reported once (one line, see fnnlab.storeguard), not logged on
# the way: MLflow logs each database error with its traceback (a page per failed job of a
# sweep on a broken store), and the HTTP client each retry of a request to a gone server.
logging.getLogger("mlflow.store.db.utils").addFilter(_Drop("SQLAlchemy database error"))
logging.getLogger("urllib3.connectionpool").addFilter(_Drop("Retrying"))

# How long a write waits out SQLite lock contention (parallel workers) before it fails.
LOCK_RETRY_SECONDS = 120.0


def _locked(exc: Exception) -> bool:
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def retry_locked(write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a store write, retrying while SQLite reports the database locked.

    Parallel workers share one SQLite file; MLflow waits on a lock for a while but a
    busy writer can still make a write fail with "database is locked". A failed write
    was rolled back and MLflow's writes tolerate a repeat, so it is retried, not dropped.
    """
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            return write(*args, **kwargs)
        except MlflowException as exc:
            if not _locked(exc) or time.monotonic() > deadline:
                raise
            log.warning("store locked, retrying in %.2f s: %s", delay, reason(exc))
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def release_interrupted(exc: BaseException) -> None:
    """After an interrupt, before this process writes its runs' ends: one that came inside a
    database call leaves that call's SQLite connection open, in its transaction and with
    the write lock, for as long as a cursor of it lives (SQLAlchemy drops the connection,
    SQLite closes it only once its statements are gone), and the interrupt's traceback
    holds one. Those writes would wait on this process itself, then fail. The traceback
    keeps its lines, not its frames' variables."""
    traceback.clear_frames(exc.__traceback__)


@dataclass(frozen=True)
class Store:
    client: MlflowClient
    experiment_id: str
    uri: str
    # The client's own store when it is MLflow's SQL store (SQLite file or database URI):
    # batches go to it in bulk (fnnlab.internals.log_batches). None for a tracking server.
    sql: Any = None
    # Where the experiment keeps its artifacts, as open_store found or made it (None: not
    # looked up, or a new experiment's on a tracking server, which is not on this machine): a
    # job checks its output folder against it without a call per job.
    artifact_location: str | None = None


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside an embedded store's database, under
    the project's mlruns/artifacts for another database URI (MLflow's default would be the
    working directory), and wherever a tracking server decides for a server."""
    from fnnlab.config import project_root

    if uri.startswith(("http://", "https://")):
        return None
    db = sqlite_path(uri)
    folder = project_root() / "mlruns" if db is None else db.resolve().parent
    return (folder / "artifacts").as_uri()


def local_folder(location: str | None) -> Path | None:
    """The folder of an artifact location on this machine (a file: URI or a path), else None
    (a tracking server's, another scheme)."""
    from urllib.request import url2pathname

    if location is None:
        return None
    parts = urlparse(location)
    if parts.scheme not in ("", "file") or parts.netloc not in ("", "localhost"):
        return None
    return Path(url2pathname(parts.path))


def among_store_artifacts(location: str | None, output_dir: str | Path) -> str | None:
    """Why a job's output folder cannot hold its files, or None: its <output folder>/artifacts,
    where the job writes them, holds the experiment's artifact `location` (the output folder
    is the one of mlflow.db), so they would lie among the store's, each run's over the last
    one's. (When a run uploaded that whole folder, MLflow copied it into itself until the
    path was too long.) Or the output folder lies in that location itself."""
    root = local_folder(location)
    staged = Path(output_dir) / "artifacts"
    if root is None:
        return None
    if root.resolve().is_relative_to(staged.resolve()):
        return (
            f"the run's files would go to {staged}, among the store's artifacts ({root}); "
            "give another folder"
        )
    return inside_store_artifacts(location, output_dir)


def inside_store_artifacts(location: str | None, folder: str | Path) -> str | None:
    """Why files cannot be written into `folder`, or None: it lies in the experiment's
    artifact `location`, where MLflow keeps its runs' files (a file there would be among a
    run's artifacts, or over one, without MLflow knowing)."""
    root = local_folder(location)
    if root is None or not Path(folder).resolve().is_relative_to(root.resolve()):
        return None
    return (
        f"inside the store's artifacts ({root}), where MLflow keeps its runs' files; give "
        "another folder"
    )


def check_reachable(uri: str, timeout: float = 5) -> None:
    """Raise a one-line StoreUnusable (a ConfigValueError) at once when a tracking server does
    not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    # urllib would take a user@ part for the host name; the health check needs no login.
    parts = urlsplit(uri)
    url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered; auth or routing problems surface with the first real call
    except (OSError, ValueError) as exc:
        cause = getattr(exc, "reason", None) or exc
        why = f"no MLflow tracking server answers ({cause}); start one with `make server`"
        raise storeguard.StoreUnusable("tracking.uri", uri, why) from None


def holds_a_store(uri: str, db: Path | None) -> bool:
    """Whether MLflow's tables are there already (the first client of a database makes
    them): the database, an SQLite file that exists included, has MLflow's experiments
    table. A tracking server made its store when it started."""
    if uri.startswith(("http://", "https://")):
        return True
    if db is not None and not db.exists():
        return False  # asked before SQLAlchemy would make the file
    try:
        engine = sqlalchemy.create_engine(uri)
        try:
            return sqlalchemy.inspect(engine).has_table("experiments")
        finally:
            engine.dispose()
    except Exception:  # a missing driver, a file that is no database: MLflow's client says
        return True


def open_store(uri: str, experiment: str) -> Store:
    """Client and experiment id, creating the database folder and experiment if needed.

    A store that cannot be used is a one-line StoreUnusable (a ConfigValueError) at once."""
    from fnnlab.config import ConfigValueError, check_uri

    check_uri(uri)
    check_reachable(uri)
    db = sqlite_path(uri)
    # A name MLflow would refuse, refused before a new store is made for it. (An existing
    # store may hold such a name, made by another MLflow: looked up, it is used.)
    why = internals.experiment_name_problem(experiment)
    if why is not None and not holds_a_store(uri, db):
        raise ConfigValueError("tracking.experiment", experiment, why)
    with storeguard.first_use(uri, db):
        # The client opens MLflow's store, which creates or upgrades the schema: in the lock.
        client = _client(uri)
        sql = internals.sql_store(client)
        if db is not None:
            internals.durable_sqlite(sql)
    exp = client.get_experiment_by_name(experiment)
    location = artifact_location(uri)
    if exp is None:
        try:
            exp_id = client.create_experiment(experiment, artifact_location=location)
        except MlflowException as exc:
            # Another worker created it first, or MLflow refuses the name (too long, say).
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise ConfigValueError("tracking.experiment", experiment, first_line(exc)) from exc
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    if exp is not None:
        check_active(exp)
        location = exp.artifact_location
    return Store(client=client, experiment_id=exp_id, uri=uri, sql=sql, artifact_location=location)


def check_active(exp: Experiment) -> None:
    """Refuse a deleted experiment: MLflow refuses every run in it, each with a traceback."""
    from fnnlab.config import ConfigValueError

    if exp.lifecycle_stage != "active":
        why = f"{deleted_in_store(exp)} or choose another name"
        raise ConfigValueError("tracking.experiment", exp.name, why)


def deleted_in_store(exp: Experiment) -> str:
    """What an error line says of a deleted experiment: that it is, and how to restore it."""
    eid = exp.experiment_id
    return (
        f"is deleted in this store (experiment {eid}): restore it (`mlflow experiments "
        f"restore -x {eid}` with MLFLOW_TRACKING_URI set to the store)"
    )


def connect(uri: str, experiment: str | None) -> tuple[MlflowClient, str | None]:
    """A client and the experiment id (None without an experiment name); one-line errors
    for an unreachable or unknown store.

    Nothing is created: the commands that need an existing store (fnnlab-aggregate,
    fnnlab-replay, fnnlab-ui with a sweep named) check it with this first (an sqlite URI is
    checked for its file first, since opening a missing one would create an empty database).
    """
    from fnnlab.config import ConfigValueError, check_uri

    check_uri(uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigValueError("tracking.uri", uri, f"no database file at {db}")
    if db is not None and db.stat().st_size == 0:  # MLflow would make it a store
        raise ConfigValueError("tracking.uri", uri, f"{db} is an empty file, not a store")
    check_reachable(uri)
    try:
        # A corrupt or unreadable file is refused at once; a schema being created waits.
        with storeguard.first_use(uri, db, write=False):
            client = MlflowClient(tracking_uri=uri)
        exp = None if experiment is None else client.get_experiment_by_name(experiment)
    except ConfigValueError:
        raise
    except Exception as exc:  # a missing driver, a refused database login, a bad URI ...
        raise ConfigValueError("tracking.uri", uri, first_line(exc)) from None
    if experiment is None:
        return client, None
    if exp is None:
        raise ConfigValueError("tracking.experiment", experiment, f"no such experiment at {uri}")
    check_active(exp)
    return client, exp.experiment_id


@lru_cache(maxsize=4)
def open_store_once(uri: str, experiment: str) -> Store:
    """A store opened once per process: a sweep's jobs share it (3 ms a job otherwise)."""
    return open_store(uri, experiment)


def _client(uri: str) -> MlflowClient:
    """MlflowClient(uri); a store MLflow cannot open is a one-line StoreUnusable (a schema
    from another MLflow version, a database URI it cannot use, a driver not installed)."""
    try:
        return MlflowClient(tracking_uri=uri)
    except (MlflowException, sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        why = first_line(exc)
        raise storeguard.StoreUnusable("tracking.uri", masked_uri(uri), why) from exc


def process_tags() -> dict[str, str]:
    """Where a run executes, so a later invocation can tell a dead run from a live one."""
    tags = {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid())}
    commit = provenance.git_commit()
    if commit:
        tags[Tag.GIT_COMMIT] = commit
    return tags


def filter_literal(value: str) -> str:
    """A string value quoted for an MLflow filter, which has no escape character: in single
    quotes, or in double quotes when it holds a single quote (MLflow takes both). A value with
    both quotes, or a backslash (the filter parser's escape), cannot be written: ValueError."""
    if "\\" in value or ("'" in value and '"' in value):
        raise ValueError("has a backslash or both kinds of quote, which no MLflow filter can match")
    return f'"{value}"' if "'" in value else f"'{value}'"


@dataclass(frozen=True, slots=True)
class RunFields:
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True, slots=True)
class SlimRun:
    """A run in the shape of MLflow's Run (.info; .data.params, .metrics and .tags) with
    only the tags that are read: a job run has 30 tags, most of them env.*."""

    info: RunInfo
    data: RunFields


AnyRun = TypeVar("AnyRun", Run, SlimRun)


def slim(run: Run, tags: Sequence[str], data: bool = True) -> SlimRun:
    """The run with only these of its tags, and without params and metrics unless data."""
    d = run.data
    return SlimRun(
        run.info,
        RunFields(
            # Keys interned: each run's would otherwise be strings of their own.
            params={sys.intern(k): v for k, v in d.params.items()} if data else {},
            metrics={sys.intern(k): v for k, v in d.metrics.items()} if data else {},
            tags={k: d.tags[k] for k in tags if k in d.tags},
        ),
    )


# Runs per search page: MLflow's SQL store holds a page's rows and objects at once. A page
# of 1,000 job runs took about 100 MB, 250 about a quarter, for a tenth more time a run.
SEARCH_PAGE = 250


def search_all(
    store: Store,
    filter_string: str,
    order_by: list[str] | None = None,
    keep: Callable[[Run], SlimRun] | None = None,
) -> list[Run] | list[SlimRun]:
    """Every active run of the store's experiment that matches, over all pages; with `keep`,
    what it makes of each run, page by page (a page of whole runs at a time held)."""
    runs, token = [], None
    while True:
        page = store.client.search_runs(
            [store.experiment_id],
            filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=SEARCH_PAGE,
            order_by=order_by,
            page_token=token,
        )
        runs.extend(page if keep is None else map(keep, page))
        token = page.token
        if not token:
            return runs


def one_run_per_config(runs: list[AnyRun]) -> list[AnyRun]:
    """One run per configuration (fingerprint), in start order: a resumed sweep may hold FAILED
    attempts and a FINISHED one. FINISHED wins, then the latest start."""
    best: dict[str, tuple[tuple[bool, int], AnyRun]] = {}
    for run in runs:
        key = run.data.tags.get(Tag.FINGERPRINT) or run.info.run_id
        rank = (run.info.status == FINISHED, run.info.start_time or 0)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, run)
    return sorted((r for _, r in best.values()), key=lambda r: r.info.start_time or 0)


def find_sweep_parent(store: Store, which: str, key: str) -> Run | None:
    """The parent run of the sweep `which` names: 'latest' (the one started or run again
    last), or a sweep id or a unique prefix of one (run names show 6 characters). None when
    there is no sweep for 'latest'; ConfigValueError naming `key` for an id that matches no
    sweep or several."""
    from fnnlab.config import ConfigValueError

    order = ["attributes.start_time DESC"]
    query = f"tags.{Tag.ROLE} = '{ROLE_SWEEP}'"
    if which == "latest":
        found = search_all(store, query, order)
        # A sweep run again keeps its parent, and with it its first start.
        return max(found, key=_opened, default=None)
    # Sweep ids are hex: anything else would be a LIKE pattern or break the filter.
    if not re.fullmatch(r"[0-9a-fA-F]{1,12}", which):
        why = "not a sweep id (up to 12 hex digits, or latest)"
        raise ConfigValueError(key, which, why + _sweep_of_run(store, which, key))
    # Stored in lowercase; an id copied in capitals is the same id.
    found = search_all(store, f"{query} and tags.{Tag.SWEEP_ID} LIKE '{which.lower()}%'", order)
    ids = {p.data.tags[Tag.SWEEP_ID] for p in found}
    if len(ids) != 1:
        matches = f"matches {len(ids)}: {', '.join(sorted(ids))}" if ids else "matches none"
        raise ConfigValueError(key, which, f"{matches} of this experiment's sweeps")
    return found[0]


def _opened(parent: Run) -> int:
    """When a sweep's parent run was last opened, in epoch ms (its start, for one made before
    the tag was, or whose tag is not a time up to now)."""
    opened = parent.data.tags.get(Tag.SWEEP_OPENED, "")
    # Not one in the future either (edited, or a clock ahead): it would stay the latest.
    at = int(opened) if re.fullmatch(r"[0-9]{1,15}", opened) else 0
    return max(parent.info.start_time or 0, at if at <= time.time() * 1000 else 0)


def _sweep_of_run(store: Store, which: str, key: str) -> str:
    """For the id of a run of this experiment given where a sweep id goes (the parent run's
    id, which the sweep's last lines print): what to give instead, after ": "; else ""."""
    if not re.fullmatch(r"[0-9a-fA-F]{32}", which):
        return ""
    try:
        run = store.client.get_run(which.lower())
    except MlflowException:
        return ""
    sid = run.data.tags.get(Tag.SWEEP_ID)
    info = run.info
    if not sid or info.experiment_id != store.experiment_id or info.lifecycle_stage != "active":
        return ""
    if run.data.tags.get(Tag.ROLE) == ROLE_SWEEP:
        return f": the id of the parent run of sweep {sid}; give {key}={sid}"
    alone = f"replay.run={which} to replay this run, or " if key == "replay.sweep" else ""
    return f": the id of a run of sweep {sid}; give {alone}{key}={sid} for the sweep"


def used_by_tag(sid: str) -> str:
    """The tag a run gets when a sweep other than its parent's counts it (fnnlab.claims)."""
    return f"{Tag.USED_BY}.{sid}"


def sweep_runs(
    store: Store, parent: Run, where: str = "", keep: Callable[[Run], SlimRun] | None = None
) -> list[Run] | list[SlimRun]:
    """Every job run of a sweep that also matches `where` (a filter): its parent's children
    and the runs of other sweeps it reused (tag fnnlab.sweep.<sweep id>); `keep` as for
    search_all."""
    sid = parent.data.tags.get(Tag.SWEEP_ID, "")
    also = f" and {where}" if where else ""
    own = search_all(store, f"tags.`{Tag.PARENT}` = '{parent.info.run_id}'{also}", keep=keep)
    ids = {r.info.run_id for r in own}
    reused = search_all(
        store, f"tags.`{used_by_tag(sid)}` = '{parent.info.run_id}'{also}", keep=keep
    )
    return own + [r for r in reused if r.info.run_id not in ids]


def start_run(store: Store, name: str, tags: dict[str, str], parent_run_id: str | None) -> str:
    all_tags = dict(tags)
    if parent_run_id:
        all_tags[Tag.PARENT] = parent_run_id
    run = retry_locked(store.client.create_run, store.experiment_id, run_name=name, tags=all_tags)
    return run.info.run_id


def upload_artifacts(store: Store, run_id: str, local_dir: Path, files: Sequence[Path]) -> None:
    """`files` (under local_dir) into the run's artifacts, at their paths below local_dir.
    Only these: the folder may hold other files (an earlier run's in the same output
    folder), and none of them is this run's. When they are all it holds (a new output
    folder), in one call: a call per file costs more (README, Speed)."""
    folders = {p for f in files for p in f.parents if p.is_relative_to(local_dir)}
    if set(local_dir.rglob("*")) == set(files) | (folders - {local_dir}):
        store.client.log_artifacts(run_id, str(local_dir))
        return
    for path in files:
        folder = path.parent.relative_to(local_dir).as_posix()
        store.client.log_artifact(run_id, str(path), None if folder == "." else folder)


def logged_steps(epochs: int, every: int = 1) -> range | list[int]:
    """The epochs whose per-epoch values are logged: every `every`-th, and always the last."""
    steps = range(0, epochs, every)
    if every > 1 and epochs and (epochs - 1) % every:
        return [*steps, epochs - 1]
    return steps


def _batches(
    metrics: Iterator[Metric], params: list[Param], tags: list[RunTag]
) -> Iterator[tuple[list[Metric], list[Param], list[RunTag]]]:
    """Calls within MLflow's limits: at most 100 params, 100 tags and 1000 metrics, and at
    most 1000 entries in all. Params and tags go first; metrics are taken from the
    iterator a call at a time, so a long run's values never all exist as objects at once."""
    while True:
        p, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
        t, tags = tags[:MAX_TAGS], tags[MAX_TAGS:]
        m = list(itertools.islice(metrics, min(MAX_METRICS, MAX_ENTRIES - len(p) - len(t))))
        if not (m or p or t):
            return
        yield m, p, t


def log_values(
    store: Store,
    run_id: str,
    *,
    params: dict[str, Any] | None = None,
    series: dict[str, Sequence[float]] | None = None,
    summary: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    every: int = 1,
) -> None:
    """Params, per-step series (step = index; every `every`-th step and the last) and
    summary metrics in as few calls as MLflow's limits allow, in one transaction into a
    SQL store."""
    now = int(time.time() * 1000)

    def metrics() -> Iterator[Metric]:
        # Last step first: MLflow keeps a latest-value row per key and rewrites it for every
        # value newer than the one it holds, so in step order every value rewrites it (about
        # a third of log_batch's time). The rows stored are the same; MLflow reads a history
        # back ordered by timestamp and step.
        for key, values in (series or {}).items():
            for step in reversed(logged_steps(len(values), every)):
                yield Metric(key, float(values[step]), now, step)
        for key, value in (summary or {}).items():
            yield Metric(key, float(value), now, 0)

    param_list = [Param(k, str(v)) for k, v in (params or {}).items()]
    tag_list = [RunTag(k, str(v)[:MAX_TAG_VALUE]) for k, v in (tags or {}).items()]

    def batches() -> Iterator[tuple[list[Metric], list[Param], list[RunTag]]]:
        return _batches(metrics(), param_list, tag_list)

    # One transaction for all of them into a SQL store; a retry writes them all again.
    retry_locked(internals.log_batches, store.client, store.sql, run_id, batches)


def end_run(store: Store, run_id: str, status: str) -> None:
    retry_locked(store.client.set_terminated, run_id, status=status)


def status_after(exc: BaseException) -> str:
    """KILLED after an interrupt (Ctrl-C, SIGTERM's exit), FAILED after any other error."""
    return KILLED if isinstance(exc, KeyboardInterrupt | SystemExit) else FAILED


def end_after_error(
    store: Store,
    run_id: str,
    exc: BaseException,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """End a run FAILED after `exc`, or KILLED after an interrupt, with `params` and `tags`.
    An interrupt goes on as it came: a store that cannot record its end is one logged line
    (the next invocation of a sweep marks the run KILLED), not an error in its place."""
    status = status_after(exc)
    interrupted = status == KILLED
    if interrupted:
        release_interrupted(exc)
    try:
        try:
            log_values(store, run_id, params=params, tags=tags)
        finally:
            end_run(store, run_id, status)
    except Exception as failed:
        if not interrupted:
            raise
        why = reason(failed)
        log.error("run %s: its interrupt could not be recorded in full: %s", run_id, why)
