"""A sweep in MLflow: one parent run per sweep command, jobs as its children.

The sweep id is a hash of the command's overrides, so running the same sweep again
finds the same parent run and can skip the jobs that already finished (resume).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path

from fnnlab.tracking import Store, end_run, log_values, process_tags, search_all

log = logging.getLogger(__name__)


class SweepFailed(RuntimeError):
    """Some jobs failed: their runs are FAILED, and so is the parent run.

    Defined here, not in the sweeper plugin: Hydra's plugin scan imports that module
    outside sys.modules, so a class defined there cannot be caught by identity.
    """


def sweep_id(overrides: list[str], experiment: str) -> str:
    text = "\n".join([experiment, *sorted(overrides)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _search(store: Store, filter_string: str) -> list:
    return search_all(store.client, store.experiment_id, filter_string)


def open_parent(store: Store, sid: str, overrides: list[str], n_jobs: int, sweep_dir: str) -> str:
    """The sweep's parent run, reopened if this sweep ran before, else created."""
    description = (
        f"Sweep of {n_jobs} jobs over: {' '.join(overrides) or '(no overrides)'}\n\n"
        f"Each child run is one job. Rerunning the same command resumes this sweep."
    )
    tags = {
        "role": "sweep",
        "sweep_id": sid,
        "sweep_dir": sweep_dir,
        "sweep_overrides": " ".join(overrides),
        "mlflow.note.content": description,
        **process_tags(),
    }
    found = _search(store, f"tags.role = 'sweep' and tags.sweep_id = '{sid}'")
    if found:
        run_id = found[0].info.run_id
        store.client.update_run(run_id, status="RUNNING")
        log_values(store, run_id, tags=tags)
        return run_id
    name = f"sweep-{sid[:6]} " + " ".join(o for o in overrides if "," in o or "range(" in o)
    run = store.client.create_run(store.experiment_id, run_name=name.strip()[:250], tags=tags)
    return run.info.run_id


def finished_fingerprints(store: Store) -> set[str]:
    """Fingerprints of the experiment's jobs that finished: those need not run again."""
    runs = _search(store, "tags.role = 'job' and attributes.status = 'FINISHED'")
    return {r.data.tags.get("fingerprint") for r in runs}


def close_parent(store: Store, run_id: str, counts: Counter, status: str) -> None:
    """Record what the sweep did and end the parent run with the given status."""
    log_values(store, run_id, summary={f"sweep/{k}": v for k, v in counts.items()})
    end_run(store, run_id, status)


def _process_start(pid: int) -> float | None:
    """When process pid started (epoch seconds), from /proc; None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration):
        return None
    # Field 22, starttime in clock ticks after boot; the fields after ')' start at field 3.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def process_alive(pid: int, since: float) -> bool:
    """Is the process that started a run at `since` (epoch s) still running on this host?

    A pid can be reused: a process that started after the run did cannot be its owner.
    """
    if pid <= 0 or pid == os.getpid():
        return False
    if Path("/proc/self/stat").exists():
        started = _process_start(pid)
        return started is not None and started <= since + 2  # /proc start times are coarse
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def reap_dead_runs(store: Store, sid: str, remote_after: float) -> tuple[int, int]:
    """End KILLED the RUNNING jobs of this sweep whose process is gone (SIGKILL, lost host,
    launcher workers torn down with an interrupted sweep).

    On this host a run is dead when its recorded pid is no longer its process. A run recorded
    on another host cannot be checked from here: it counts as dead once it has been RUNNING
    for remote_after seconds. Returns (runs marked KILLED, runs left RUNNING).
    """
    running = "tags.role = 'job' and attributes.status = 'RUNNING'"
    runs = _search(store, f"tags.sweep_id = '{sid}' and {running}")
    host, now = socket.gethostname(), time.time()
    reaped = left = 0
    for run in runs:
        tags, started = run.data.tags, run.info.start_time / 1000
        if tags.get("fnnlab.host") == host:
            dead = not process_alive(int(tags.get("fnnlab.pid", "0")), started)
            why = f"process {tags.get('fnnlab.pid')} on {host} is gone"
        else:
            dead = now - started > remote_after
            why = f"RUNNING on {tags.get('fnnlab.host')} for more than {remote_after:.0f} s"
        if not dead:
            left += 1
            continue
        log.warning("run %s (%s): %s; marking it KILLED", run.info.run_name, run.info.run_id, why)
        error = f"found RUNNING after its process ended: {why}"
        log_values(store, run.info.run_id, tags={"error": error})
        end_run(store, run.info.run_id, "KILLED")
        reaped += 1
    return reaped, left
