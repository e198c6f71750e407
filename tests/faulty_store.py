"""Hydra callbacks that break the store under a running sweep, or kill a worker, at a set
point, for the fault tests: after the k-th job that ends in a process (a worker counts its
own), not at a time.

A command gets one with, e.g.,
  +hydra.callbacks.fault._target_=faulty_store.ReadOnlyAfter
  +hydra.callbacks.fault.db=/path/mlflow.db +hydra.callbacks.fault.jobs=2
and this folder on PYTHONPATH.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

HERE = Path(__file__).resolve().parent


def command_env() -> dict[str, str]:
    """The environment for a command that is to load these callbacks."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{path}" if path else str(HERE)}


def mark(path: str) -> None:
    """Write the time the store broke, for a test to measure the sweep's end from."""
    if path and not Path(path).exists():
        Path(path).write_text(repr(time.time()))


# Jobs that ended in this process. Module-level: some launchers unpickle callbacks per job.
_ended = 0


def _count() -> int:
    global _ended
    _ended += 1
    return _ended


def store_files(db: Path) -> list[Path]:
    """The files SQLite writes to: the database and its write-ahead log. Not its shared
    memory file: SQLite writes that through a memory map, where an immutable file is a
    SIGBUS, not an error."""
    return [db, db.with_name(db.name + "-wal")]


def set_read_only(paths: list[Path], read_only: bool) -> None:
    """Make files read-only even for connections already open on them, and for root:
    the immutable attribute (root alone may set it; chmod stops neither)."""
    assert os.geteuid() == 0, "chattr +i needs root"
    flag = "+i" if read_only else "-i"
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        subprocess.run(["chattr", flag, *existing], check=True)


class ReadOnlyAfter(Callback):
    """Turn the SQLite store read-only once `jobs` jobs have ended in this process; the
    time it did that goes to the file `mark`, if given."""

    def __init__(self, db: str, jobs: int, mark: str = "") -> None:
        self.db = Path(db)
        self.jobs = jobs
        self.mark = mark

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if _count() == self.jobs:
            set_read_only(store_files(self.db), True)
            mark(self.mark)


class StopServerAfter(Callback):
    """Stop the tests' tracking server (PostgreSQL and MLflow) once `jobs` jobs have ended
    in this process; the time it was down goes to the file `mark`, if given."""

    def __init__(self, dir: str, pg_port: int, port: int, jobs: int, mark: str = "") -> None:
        self.server = (dir, pg_port, port)
        self.jobs = jobs
        self.mark = mark

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if _count() == self.jobs:
            from server_fixtures import TrackingServer

            folder, pg_port, port = self.server
            TrackingServer(dir=Path(folder), pg_port=pg_port, port=port).stop()
            mark(self.mark)


class KillWorkerAfter(Callback):
    """SIGKILL the worker process in which `jobs` jobs have ended (as the kernel's OOM
    killer would), in the first worker to get there: the one that creates the file `once`."""

    def __init__(self, jobs: int, once: str) -> None:
        self.jobs = jobs
        self.once = once

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if _count() == self.jobs:
            try:
                os.close(os.open(self.once, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)


class FailFiguresOf(Callback):
    """Make the jobs whose run name starts with `prefix` fail after their run exists, in
    drawing its figures, in whichever process they run."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from fnnlab import plots

        real, prefix = plots.draw_run, self.prefix
        if getattr(real, "injected", False):
            return

        def failing(curves: Any, art: Any, name: str, published: Any) -> Any:
            if name.startswith(prefix):
                raise RuntimeError(f"injected fault in {name}")
            return real(curves, art, name, published)

        failing.injected = True  # type: ignore[attr-defined]
        plots.draw_run = failing
