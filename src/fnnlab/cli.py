"""Thin @hydra.main entry points: fnnlab-train, fnnlab-ui and fnnlab-aggregate.

Each console script wraps its Hydra app so that a bad config value or override
ends with one line naming the key and the value, and exit status 2.
"""

from __future__ import annotations

import logging
import math
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn, TextIO

import hydra
import omegaconf
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from fnnlab.config import (
    AggregateAppConfig,
    ConfigValueError,
    ReplayAppConfig,
    UiAppConfig,
    as_typed,
    check_known_keys,
    check_output_subdir,
    check_port,
    check_uri,
    check_values,
    discard_run_folder,
    folder_problem,
    override_value,
    password_to_env,
    project_root,
)
from fnnlab.errortext import first_line, reason

OMEGACONF_DIR = Path(omegaconf.__file__).parent

CONF_DIR = str(project_root() / "conf")
log = logging.getLogger("fnnlab")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_app(cfg: DictConfig) -> dict:
    drop_output_when_unread()  # a job in any launcher's worker writes to the sweep's stdout
    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        check_values(cfg)
        # Where this job runs: hydra.job.chdir may come from a swept config group, which the
        # sweep's own check did not see.
        moved = (
            Path(hydra_cfg.runtime.output_dir).resolve() != Path(hydra_cfg.runtime.cwd).resolve()
        )
        check_uri(cfg.tracking.uri, bool(hydra_cfg.job.chdir) and moved)
        # The store before fnnlab.job (torch: seconds to import): one that cannot be used
        # is refused at once.
        from fnnlab.tracking import artifact_location, open_store_once

        check_output_subdir(hydra_cfg.output_subdir, hydra_cfg.runtime.output_dir)
        # Where a new experiment's artifacts go, before the store is made; then where this
        # one's go.
        check_run_folder(artifact_location(cfg.tracking.uri), hydra_cfg, in_sweep)
        store = open_store_once(cfg.tracking.uri, cfg.tracking.experiment)
        check_run_folder(store.artifact_location, hydra_cfg, in_sweep)
    except ConfigValueError as exc:
        if in_sweep:
            raise  # fails this job (the sweep checked every job it could before starting)
        # Exit here rather than raise: Hydra would print a job-failure banner first.
        refuse("fnnlab-train", f"error: {_as_typed(exc)}", 2)
    # torch, sklearn, mlflow: seconds to import, only once the config is known to be good
    from fnnlab import heap, job, links, progress
    from fnnlab.names import Tag

    parent_run_id, sweep_tags, claim = None, {}, None
    if in_sweep:
        from fnnlab.sweep import find_parent, invocation

        parent = find_parent(store, str(hydra_cfg.sweep.dir))
        if parent is not None:
            parent_run_id = parent.info.run_id
            sweep_tags = {
                Tag.SWEEP_ID: parent.data.tags[Tag.SWEEP_ID],
                Tag.JOB_NUM: str(hydra_cfg.job.num),
                Tag.INVOCATION: invocation(str(hydra_cfg.sweep.dir)),
            }
            # With the fnnlab sweeper, claim the configuration, so that concurrent
            # invocations do not both run it (fnnlab.claims); not with rerun=true.
            if "resume_match" in hydra_cfg.sweeper and not hydra_cfg.sweeper.rerun:
                claim = hydra_cfg.sweeper.resume_match
    # Sweeps print a line per job instead (fnnlab.progress); a single run gets an epoch bar,
    # shown only if it outlasts a couple of seconds.
    bar = None if in_sweep else progress.EpochBar(cfg.train.epochs)
    try:
        output_dir = Path(hydra_cfg.runtime.output_dir)
        subdir = hydra_cfg.output_subdir  # Hydra's files (null: it writes none)
        result = job.run(
            cfg,
            output_dir,
            store=store,
            parent_run_id=parent_run_id,
            sweep_tags=sweep_tags,
            on_epoch=bar,
            claim=claim,
            hydra_dir=output_dir / subdir if subdir is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    heap.freeze_heap()  # once: what the first job set up (caches, figures) lives on
    base = links.base_url(cfg.tracking.uri, cfg.ui.host, cfg.ui.port)
    if isinstance(result, job.Claimed):
        print(progress.claimed_line(result, base), flush=True)
        return {"run_id": result.run_id, "held": result.how != "done", "reused": True}
    print(progress.run_line(result, base), flush=True)
    return {"run_id": result.run_id, "diverged": result.history.diverged_at is not None}


def check_run_folder(location: str | None, hydra_cfg: DictConfig, in_sweep: bool) -> None:
    """Refuse a job's output folder whose artifacts/ holds the experiment's artifact
    `location` (hydra.run.dir=. beside mlflow.db). A sweep checks a folder shared by all its
    jobs before it starts; this is what is left: one job's folder (hydra.sweep.subdir)."""
    from fnnlab.tracking import among_store_artifacts

    if why := among_store_artifacts(location, hydra_cfg.runtime.output_dir):
        if in_sweep:
            raise ConfigValueError("hydra.sweep.subdir", hydra_cfg.sweep.subdir, why)
        raise ConfigValueError("hydra.run.dir", hydra_cfg.run.dir, why)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="ui")
def ui_app(cfg: DictConfig) -> None:
    from fnnlab import links, ui
    from fnnlab.tracking import connect, open_store

    serve = not links.is_server(cfg.tracking.uri)  # a tracking server is its own UI
    try:
        check_known_keys(cfg, UiAppConfig)
        if cfg.ui.host not in ("127.0.0.1", "localhost"):
            raise ConfigValueError("ui.host", cfg.ui.host, "the UI binds to 127.0.0.1 only")
        check_port(cfg.ui.port, any_free=True)
        port = cfg.ui.port or ui.free_port(cfg.ui.host)
        if serve and not ui.port_free(cfg.ui.host, port):
            # Its URLs would open whatever listens there, perhaps another store.
            raise ConfigValueError(
                "ui.port",
                port,
                f"something already listens on {cfg.ui.host}:{port}; "
                "stop it, or choose another port (ui.port=0: any free one)",
            )
        if cfg.ui.sweep not in (None, "latest"):
            # A sweep named in a store or experiment that does not exist: refused without
            # making either (open_store would).
            connect(cfg.tracking.uri, cfg.tracking.experiment)
        store = open_store(cfg.tracking.uri, cfg.tracking.experiment)
        # Select the sweep before starting anything: a bad ui.sweep is a one-line error.
        which = _as_given("ui.sweep", cfg.ui.sweep)
        sweep = ui.find_sweep(store, which) if which is not None else None
    except ConfigValueError as exc:
        # Exit here rather than raise: Hydra would print a job-failure banner first.
        refuse("fnnlab-ui", f"error: {_as_typed(exc)}", 2)
    base = links.base_url(cfg.tracking.uri, cfg.ui.host, port)

    def show() -> None:
        """The URLs to open: the experiment, and the sweep's pages when there is a sweep."""
        url = links.experiment_url(base, store.experiment_id)
        print(f"experiment {cfg.tracking.experiment}: {url}")
        if sweep is not None:
            views = links.sweep_views(
                base, store.experiment_id, sweep.parent.info.run_id, sweep.refs()
            )
            print(f"sweep {sweep.sweep_id} ({len(sweep.children)} runs):")
            width = max(len(label) for label, _ in views) + 1
            for label, view in views:
                print(f"  {label + ':':<{width}} {view}")
            if sweep.diverged():
                print(f"  diverged, left out of the curve links: {', '.join(sweep.diverged())}")
            print(f"  {links.group_hint(r.data.params for r in sweep.children)}")
        elif cfg.ui.sweep is not None:
            print("no sweep in this experiment yet (fnnlab-train -m ... makes one)")
        sys.stdout.flush()
        if cfg.ui.open:
            import webbrowser

            webbrowser.open(url)

    if not serve:
        show()
        return
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        cfg.tracking.uri,
        "--host",
        cfg.ui.host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--uvicorn-opts",
        "--no-access-log",
    ]
    # Background jobs (LLM judges) are of no use here and would add a process.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # The server's own output (start-up notices, warnings) goes to a file, so the terminal
    # keeps the URLs; shown if the server fails.
    server_log = Path(HydraConfig.get().runtime.output_dir) / "mlflow-server.log"
    server_log.parent.mkdir(parents=True, exist_ok=True)
    with server_log.open("w") as sink:
        server = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_up(f"{base}/health", server)
        except RuntimeError as exc:
            tail = server_log.read_text().strip().splitlines()[-5:]
            fail("fnnlab-ui", f"error: {exc}; last lines of {server_log}:\n" + "\n".join(tail), 1)
        show()
        print(f"Ctrl-C stops the UI (server log: {server_log}).", flush=True)
        server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="aggregate")
def aggregate_app(cfg: DictConfig) -> None:
    from mlflow.exceptions import MlflowException

    from fnnlab import aggregate, links, report
    from fnnlab.tracking import inside_store_artifacts

    a = cfg.aggregate
    out = Path(a.out_dir) if a.out_dir else Path(HydraConfig.get().runtime.output_dir)
    out = out if out.is_absolute() else project_root() / out
    try:
        check_known_keys(cfg, AggregateAppConfig)
        check_port(cfg.ui.port)
        if a.out_dir and (why := folder_problem(out)):  # Hydra made and checked its own
            raise ConfigValueError("aggregate.out_dir", a.out_dir, why)
        sweep = _as_given("aggregate.sweep", a.sweep)
        parent_run_id = _as_given("aggregate.parent_run_id", a.parent_run_id)
        sel = aggregate.select(
            cfg.tracking.uri, cfg.tracking.experiment, sweep, parent_run_id, a.filter
        )
        location = sel.client.get_experiment(sel.experiment_id).artifact_location
        if why := inside_store_artifacts(location, out):
            given = ("aggregate.out_dir", a.out_dir) if a.out_dir else ("hydra.run.dir", out)
            raise ConfigValueError(*given, why)
        agg = aggregate.aggregate(sel, outcome=a.outcome, alpha=a.alpha, min_effect=a.min_effect)
    except ConfigValueError as exc:
        # Exit here rather than raise: Hydra would print a job-failure banner first.
        refuse("fnnlab-aggregate", f"error: {_as_typed(exc)}", 2)
    except MlflowException as exc:
        refuse("fnnlab-aggregate", f"error: {reason(exc)}", 1)
    base = links.base_url(cfg.tracking.uri, cfg.ui.host, cfg.ui.port)
    logged = a.log_to_parent and sel.parent_run_id is not None
    files, answer = report.publish(agg, out, base, with_plots=a.plots, log=a.log_to_parent)
    where = (
        f"sweep {sel.sweep_id} (parent run {sel.parent_run_id}"
        + ("" if logged else "; aggregate.log_to_parent=false: not logged on it")
        + ")"
        if sel.parent_run_id is not None
        else "selection"
    )
    only = f" matching {sel.filter} (aggregate.filter)" if sel.filter else ""
    print(f"{cfg.tracking.experiment}: {where}, {len(agg.runs)} runs{only}", flush=True)
    print(answer)
    print(f"wrote {len(files)} files to {out}" + (", logged on the parent run" if logged else ""))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="replay")
def replay_app(cfg: DictConfig) -> None:
    from mlflow.exceptions import MlflowException
    from tqdm import tqdm

    from fnnlab import replay
    from fnnlab.tracking import find_sweep_parent, inside_store_artifacts

    r = cfg.replay
    # One line per run: MLflow's per-download progress bars would bury them.
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        check_known_keys(cfg, ReplayAppConfig)
        if (r.run is None) == (r.sweep is None):
            raise ConfigValueError(
                "replay.run", r.run, "give one of replay.run=<run id> or replay.sweep=<id|latest>"
            )
        if r.sample is not None and r.sample < 1:
            raise ConfigValueError("replay.sample", r.sample, "must be at least 1, or null")
        if r.sample is not None and r.run is not None:  # else ignored without a word
            raise ConfigValueError(
                "replay.sample", r.sample, "chooses among a sweep's runs: give replay.sweep"
            )
        if r.seed != 0 and r.sample is None:  # else ignored without a word
            raise ConfigValueError(
                "replay.seed", r.seed, "chooses the runs replay.sample takes: give replay.sample"
            )
        run_id = _as_given("replay.run", r.run)
        store, run = replay.existing_store(cfg.tracking.uri, cfg.tracking.experiment, run_id)
        if run is not None:
            runs, others = [run], []
        else:
            sweep = _as_given("replay.sweep", r.sweep)
            parent = find_sweep_parent(store, sweep, "replay.sweep")
            if parent is None:
                raise ConfigValueError("replay.sweep", sweep, "no sweep in this experiment")
            runs, others = replay.sweep_runs(store, parent, r.sample, r.seed)
        # Its folder holds the runs replay.log=true makes, before they are uploaded.
        out = Path(HydraConfig.get().runtime.output_dir)
        if why := inside_store_artifacts(store.artifact_location, out):
            raise ConfigValueError("hydra.run.dir", out, why)
    except ConfigValueError as exc:
        refuse("fnnlab-replay", f"error: {_as_typed(exc)}", 2)
    except MlflowException as exc:
        refuse("fnnlab-replay", f"error: tracking store: {reason(exc)}", 2)
    counts = {"identical": 0, "differs": 0, "not replayable": 0, "not logged": 0}
    bar = tqdm(runs, unit="run", disable=r.run is not None or not runs, file=sys.stderr)
    for run in bar:
        try:
            result = replay.replay_run(store, run)
        except replay.NotReplayable as exc:
            counts["not replayable"] += 1
            replay.record_unchecked(store, run, "not replayable", str(exc))
            bar.write(f"{run.info.run_name} ({run.info.run_id}): not replayable: {exc}")
            continue
        replay.record(store, result)
        counts[result.status] += 1
        line = result.line()
        if r.log:
            try:
                new_run = replay.log_replay(store, result, result.cfg, out / run.info.run_id)
                line += f" (logged as run {new_run})"
            except replay.NotLogged as exc:
                counts["not logged"] += 1
                line += f" (not logged: {exc})"
        bar.write(line)
    for run in others:
        counts["not replayable"] += 1
        replay.record_unchecked(store, run, "not replayable", f"it is {run.info.status}")
        print(f"{run.info.run_name} ({run.info.run_id}): not replayable: it is {run.info.status}")
    if r.sweep is not None:
        print(
            f"replayed {len(runs)} runs: {counts['identical']} identical, "
            f"{counts['differs']} differ; {counts['not replayable']} not replayable"
        )
        head = f"the sweep's counts (parent run {parent.info.run_id}): "
        try:
            sweep_counts = replay.count_diffs(store, parent)
        except replay.NotCheckable as exc:  # the store went away, or holds no number
            counts["not replayable"] += 1
            replay.record_counts(store, parent, [f"not checkable: {exc}"])
            print(f"{head}not checkable: {exc}")
        else:
            if sweep_counts is None:
                replay.record_counts(store, parent, None)
            else:
                replay.record_counts(store, parent, sweep_counts or ["identical"])
                counts["differs" if sweep_counts else "identical"] += 1
                said = f"differ: {'; '.join(sweep_counts)}" if sweep_counts else "identical"
                print(f"{head}{said}")
        try:
            check = replay.check_answer(store, parent)
        except replay.NotCheckable as exc:
            counts["not replayable"] += 1
            replay.record_unchecked(store, parent, "not checkable", str(exc))
            print(f"{replay.answer_head(parent)}not checkable: {exc}")
        else:
            if check is None:
                print(f"{replay.answer_head(parent)}none stored")
            else:
                replay.record_answer(store, check)
                counts[check.status] += 1
                print(check.line())
    if counts["not replayable"] or counts["not logged"]:  # not everything could be done
        sys.exit(2)
    if counts["differs"]:
        sys.exit(1)


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"mlflow server did not answer at {url} within {timeout:.0f} s")


# No value known (a config error's value may be None: `seed=null`).
_UNKNOWN = object()


def _key_value(exc: BaseException) -> str | None:
    """'key=value' of the override a config error is about, from the command line."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            # A refused deletion is about the '~key', whatever sets the key after it.
            deletion = "does not support deletion" in str(e)
            return _override(e.full_key, deletion, getattr(e, "value", _UNKNOWN))
    return None


def _override(key: str, deletion: bool = False, refused: object = _UNKNOWN) -> str:
    """'key=value' as the command line gave it (the last, as Hydra takes it; a deletion
    as '~key'), or the key alone. With `deletion`, the last '~key' only. With the value an
    error `refused`, the first that gives it: Hydra stops at the first value it cannot take,
    and a later one for the same key was never set (`seed=abc seed=1`)."""
    given = [arg for arg in sys.argv[1:] if arg.lstrip("+~").partition("=")[0] == key]
    if refused is not _UNKNOWN and not deletion:
        for arg in given:
            value = arg.lstrip("+~").partition("=")[2]
            if not arg.startswith("~") and _reads_as(value, refused):
                return f"{key}={value}"
    for arg in reversed(given):
        if arg.startswith("~") or not deletion:
            return arg if arg.startswith("~") else f"{key}={arg.lstrip('+').partition('=')[2]}"
    return key


def _as_given(key: str, value: object) -> str | None:
    """An id (a sweep's, a run's) as the command line gave it: Hydra reads the hex prefix
    12e456 as a float, and the config's str field holds "inf"; true became "True"."""
    typed = _override(key)
    if value is None or typed == key:  # null, or not on the command line
        return None if value is None else as_typed(value)
    text = typed.partition("=")[2]
    try:
        read = override_value(text)
    except ValueError:
        return as_typed(value)
    return as_typed(value) if isinstance(read, str) else text


def _reads_as(typed: str, value: object) -> bool:
    """Whether a value typed on the command line ('1e3') is `value` as Hydra reads it
    (1000.0; 'true' is True, 'null' None, "'abc'" 'abc'), of the same type: 1 is not True."""
    try:
        parsed = override_value(typed)
    except ValueError:  # not one Hydra reads alone (a glob(...) of a config group)
        return False
    return type(parsed) is type(value) and parsed == value


def _as_typed(exc: ConfigValueError) -> str:
    """'key=value: why', with a number too large for a float named as the command line gave
    it: YAML reads '<400 nines>.5' as inf."""
    if isinstance(exc.value, float) and math.isinf(exc.value):
        typed = _override(exc.key)
        if typed != exc.key and "inf" not in typed.lower():
            return f"{typed} (read as {exc.value}): {exc.why}"
    return str(exc)


def _passed_on_by_omegaconf(exc: BaseException) -> str | None:
    """'key=value: why' for an error OmegaConf passed on as it was raised while it set a
    key's value, e.g. a 400-digit number for a float ("int too large to convert to float"):
    raised inside OmegaConf, its message names the key on a line "full_key: ...". None for
    any other error."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or not Path(frames[-1].filename).is_relative_to(OMEGACONF_DIR):
        return None
    first, *rest = str(exc).splitlines() or [""]
    keys = [line.split(":", 1)[1].strip() for line in rest if line.strip().startswith("full_key:")]
    return f"{_override(keys[0])}: {first}" if keys and keys[0] else None


def _one_line(exc: BaseException) -> str:
    """The first line of the innermost message that says what is wrong."""
    cause = exc
    # Hydra's "Error in call to target '...':" (a plugin's constructor refused its
    # arguments) and OmegaConf's wrapped errors carry the reason in the cause.
    if isinstance(exc.__cause__, OmegaConfBaseException) or (
        isinstance(exc, InstantiationException) and exc.__cause__ is not None
    ):
        cause = exc.__cause__
    why = reason(cause)
    where = _key_value(exc)
    return f"{where}: {why}" if where and where not in why else why


def fail(prog: str, message: str, status: int) -> NoReturn:
    """End the command with one line on stderr and the given exit status."""
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(status)


def refuse(prog: str, message: str, status: int) -> NoReturn:
    """fail() for a single run refused before it wrote anything: the output folder Hydra
    made for it goes too."""
    hydra_cfg = HydraConfig.get()
    discard_run_folder(hydra_cfg.runtime.output_dir, hydra_cfg.output_subdir)
    fail(prog, message, status)


def run_cli(prog: str, app: Callable[[], object]) -> None:
    """Run a Hydra app, turning config errors into one line and exit status 2."""
    # Before MLflow's import, which starts its usage telemetry: without network it then
    # removes an environment variable from a background thread, and a job's first request
    # to a tracking server, reading the environment for proxies at that moment, failed
    # (KeyError '_MLFLOW_TELEMETRY_SESSION_ID'). Off here and in every process a launcher
    # starts from here, unless the user chose.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from fnnlab import heap, storeguard, tracking
    from fnnlab.sweep import (
        SweepFailed,
        SweepFolderFailed,
        SweepRefused,
        close_open,
        sweep_folder_failed,
    )

    user_wants_trace = "HYDRA_FULL_ERROR" in os.environ
    # Let exceptions reach us instead of Hydra's multi-line report.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # SIGTERM ends runs like Ctrl-C does: the run in flight and the sweep end KILLED.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    drop_output_when_unread()  # before Hydra's logging takes sys.stdout
    try:
        try:
            # Before Hydra reads the command line: a password it never sees cannot reach its
            # files, the runs' params and tags or any printed line (the jobs inherit it).
            sys.argv[1:] = password_to_env(sys.argv[1:], os.environ)
            app()
        except SweepRefused as refused:
            # Why the sweep could not start (a bad job config, the store): reported as if
            # raised directly.
            raise refused.__cause__ or RuntimeError(str(refused))  # noqa: B904
        except Exception as exc:
            if isinstance(exc, BrokenPipeError) and stdout_reader_gone():
                # A write around DropWhenUnread (to sys.stdout's buffer, say) to a pipe
                # nobody reads: end as a pipe's writer does, quietly, and close a sweep left
                # open as an interrupt does. stdout goes to devnull, so that Python's flush
                # at exit cannot fail too.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                close_open(after_error=False)
                sys.exit(1)
            # The line before the sweep is closed: that writes to the store, which can be
            # slow to answer (a hung server). A Ctrl-C during it is handled below. (Telling
            # an error of the sweep's folder from a job's reads the store's failed runs.)
            exc = sweep_folder_failed(exc) or exc
            status = report(prog, exc, user_wants_trace)
            close_open(
                after_error=True, error=str(exc) if isinstance(exc, SweepFolderFailed) else None
            )
            if status is None:
                raise
            sys.exit(status)
    except SweepFailed as exc:  # its parent is closed
        fail(prog, str(exc), 1)
    except storeguard.StoreFailed as exc:
        # Before the sweep's clean-up at exit, which then leaves the store alone.
        storeguard.FAULTS.stopped = True
        fail(prog, f"error: {exc}", 1)
    except KeyboardInterrupt as exc:
        tracking.release_interrupted(exc)  # before the sweep's clean-up at exit writes
        fail(prog, "interrupted", 130)
    except Exception as exc:  # why a sweep was refused
        status = report(prog, exc, user_wants_trace)
        if status is None:
            raise
        sys.exit(status)
    finally:
        heap.freeze_for_exit()


class DropWhenUnread:
    """sys.stdout when it is a pipe: once the pipe's reader has gone (`| head`, a pager that
    quit), what is written is dropped, and the command goes on to its end. Before, the next
    line failed wherever it was printed (Hydra's callbacks, logging, a job's last line): a
    sweep whose runs all finished said its jobs had failed. A broken pipe that is not
    stdout's reader gone (a socket) is raised as ever. Not an io.TextIOBase: what it does
    not define is the stream's own (fileno, encoding, isatty, ...)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop_from_now_on()
            return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop_from_now_on()

    def _drop_from_now_on(self) -> None:
        if not stdout_reader_gone():
            raise  # noqa: PLE0704 - the BrokenPipeError being handled
        # /dev/null in the pipe's place for the whole process (its children, Python's
        # flush at exit), and what the failed write left in the buffer goes there.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)
        self._stream.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def drop_output_when_unread() -> None:
    """sys.stdout as DropWhenUnread, when it is a pipe (once per process)."""
    stream = sys.stdout
    if isinstance(stream, DropWhenUnread):
        return
    try:
        pipe = stat.S_ISFIFO(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # no file behind it (captured output)
        return
    if pipe:
        sys.stdout = DropWhenUnread(stream)


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll reports an error on a pipe's
    write end once its read end is closed); a broken pipe elsewhere (a socket) is an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _submitit_job_lost(exc: Exception) -> str | None:
    """Hydra's submitit launcher's error for a job without its result, as one line: its
    process ended (submitit's UncompletedJobError), or the job raised outside fnnlab's
    task, or ran past its time limit (FailedJobError, which carries the job's traceback);
    else None. Named without importing submitit, an optional launcher's."""
    kinds = {k.__name__ for k in type(exc).__mro__}
    if not type(exc).__module__.startswith("submitit") or "UncompletedJobError" not in kinds:
        return None
    again = "the sweep stopped. Rerun the same command to run the jobs that did not finish"
    text = str(exc)
    if "FailedJobError" in kinds:
        if "timed-out" in text:
            return f"a submitit job ran past hydra.launcher.timeout_min; {again}"
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        return f"a submitit job failed: {last}; the sweep stopped"
    job = re.match(r"Job (\S+) \(task: (\d+)\)", text)
    which = f" (job {job[1]}, task {job[2]})" if job else f" ({first_line(exc)})"
    return (
        f"a submitit job{which} ended without its result (killed, out of memory or crashed); "
        + again
    )


def report(prog: str, exc: Exception, user_wants_trace: bool) -> int | None:
    """Print the one line that ends a command on this error and return its exit status
    (2: a config or Hydra error); None for an error raised with its traceback."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError
    from mlflow.exceptions import MlflowException

    from fnnlab.claims import RunTaken
    from fnnlab.sweep import SweepFolderFailed, launch_timed_out
    from hydra_plugins.fnnlab._core import WorkerDied

    if isinstance(exc, ConfigValueError):
        message, status = f"error: {_as_typed(exc)}", 2
    elif isinstance(exc, (HydraException, OmegaConfBaseException)):
        if user_wants_trace:
            return None
        message, status = f"error: {_one_line(exc)}", 2
    elif (passed_on := _passed_on_by_omegaconf(exc)) is not None:
        if user_wants_trace:
            return None
        message, status = f"error: {passed_on}", 2
    elif isinstance(exc, WorkerDied | SweepFolderFailed | RunTaken):
        message, status = f"error: {exc}", 1
    elif isinstance(exc, TerminatedWorkerError):  # Hydra's joblib launcher's worker died
        message, status = f"error: {WorkerDied(exc)}", 1
    elif (lost := _submitit_job_lost(exc)) is not None:
        message, status = f"error: {lost}", 1
    elif (timed_out := launch_timed_out(exc)) is not None:
        message, status = f"error: {timed_out}", 1
    elif isinstance(exc, MlflowException):
        # E.g. the tracking server went away mid-run: one line, not a page of retries.
        message, status = f"error: tracking store: {reason(exc)}", 1
    else:
        return None
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return status


def train() -> None:
    run_cli("fnnlab-train", train_app)


def ui() -> None:
    run_cli("fnnlab-ui", ui_app)


def aggregate() -> None:
    run_cli("fnnlab-aggregate", aggregate_app)


def replay() -> None:
    run_cli("fnnlab-replay", replay_app)
