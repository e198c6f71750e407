"""Shared fixtures: a fresh SQLite store per test and a way to run the console scripts."""

from __future__ import annotations

import contextlib
import gc
import io
import math
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent

# Property-based tests: the same examples every run unless HYPOTHESIS_PROFILE=explore,
# which draws new and more of them.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def log_uniform_int(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers from low to high, as many small ones (widths 1-8) as large ones."""
    return st.floats(math.log(low), math.log(high)).map(
        lambda x: max(low, min(high, round(math.exp(x))))
    )


# Learning rates from 1e-5 to 1e3, log-uniform, with three significant digits.
LEARNING_RATES = st.floats(-5, 3).map(lambda e: float(f"{10**e:.3g}"))
# The PostgreSQL + MLflow server fixture (tracking_server) for tests marked `server`.
pytest_plugins = ["server_fixtures"]


# What every complete run keeps as artifacts.
RUN_ARTIFACTS = {
    "config.yaml",
    "loss.png",
    "grad_norm.png",
    "weights.pt",
    "hydra/config.yaml",
    "hydra/hydra.yaml",
    "hydra/overrides.yaml",
}


def run_artifacts(run) -> set[str]:
    """RUN_ARTIFACTS, and the diff against the commit for a run its tags say was made from a
    checkout with uncommitted changes (a test run itself may change tracked files)."""
    dirty = run.data.tags.get("env.git_dirty") == "true"
    return RUN_ARTIFACTS | ({"git_diff.patch"} if dirty else set())


@pytest.fixture(autouse=True)
def _restore_hydra_state(hydra_restore_singletons):
    """Hydra's global state (its version base, config store, plugins) as it was before
    each test: a test composing with version_base 1.3 must not change the next one's."""
    yield


def compose_train(overrides: list[str]):
    """fnnlab-train's config as Hydra composes it, without running anything."""
    from hydra import compose, initialize_config_dir

    from fnnlab.config import project_root

    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


# Another Hydra app (not fnnlab's) whose config has fnnlab's training sections but not its
# tracking one. Its job prints its seed and learning rate; with seed == fail it raises an
# exception the sweep's process cannot unpickle (its __init__ takes two arguments).
OTHER_APP_CONFIG = {
    "model": {"width": 8},
    "optim": {"lr": 0.1},
    "data": {},
    "train": {},
    "seed": 0,
    "fail": -1,
}
OTHER_APP = f"""
import hydra
from hydra.core.config_store import ConfigStore

class TwoArgsError(Exception):
    def __init__(self, code, why):
        super().__init__(f"{{code}}: {{why}}")

ConfigStore.instance().store(name="cfg", node={OTHER_APP_CONFIG!r})

@hydra.main(version_base="1.3", config_path=None, config_name="cfg")
def main(cfg):
    if cfg.seed == cfg.fail:
        raise TwoArgsError(7, "the job's own error")
    print("job", cfg.seed, cfg.optim.lr, flush=True)

main()
"""


def run_other_app(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    """OTHER_APP as a multirun with the fnnlab launcher, in `folder`."""
    app = folder / "other_app.py"
    app.write_text(OTHER_APP)
    command = [sys.executable, str(app), "-m", "hydra/launcher=fnnlab", *overrides]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)


@dataclass
class TmpStore:
    """An embedded MLflow store in a temporary folder, and overrides that point at it."""

    root: Path
    uri: str
    experiment: str = "test"

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    def overrides(self) -> list[str]:
        return [
            f"tracking.uri={self.uri}",
            f"tracking.experiment={self.experiment}",
            f"hydra.run.dir={self.root}/outputs/${{now:%H-%M-%S-%f}}",
            f"hydra.sweep.dir={self.root}/multirun/${{now:%H-%M-%S-%f}}",
        ]

    def runs(self, filter_string: str = "") -> list:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            return []
        return self.client.search_runs([exp.experiment_id], filter_string, max_results=50000)

    def db_bytes(self) -> bytes | None:
        """The database and its write-ahead log (the store runs in WAL mode)."""
        db = self.root / "mlruns" / "mlflow.db"
        if not db.exists():
            return None
        wal = db.with_name(db.name + "-wal")
        return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


@pytest.fixture(scope="session")
def schema_only_db(tmp_path_factory) -> Path:
    """An embedded store's database with MLflow's schema and nothing else, made once per
    test process by MLflow itself: its migrations take seconds for every new database. A
    store's first use is the subject of tests of its own (tests/test_store_faults.py)."""
    db = tmp_path_factory.mktemp("schema") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def copy_schema(schema_only_db: Path, db: Path) -> None:
    """A new database at `db` holding MLflow's schema (schema_only_db's) and nothing else."""
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(schema_only_db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # a consistent copy, whatever MLflow's connections left in the log


@pytest.fixture
def store(tmp_path: Path, schema_only_db: Path) -> TmpStore:
    """An embedded store of its own, its schema already made."""
    copy_schema(schema_only_db, tmp_path / "mlruns" / "mlflow.db")
    return TmpStore(root=tmp_path, uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")


# Where the console scripts that keep one output folder per invocation (aggregate, replay,
# the UI's logs) put it when a test names none: under pytest's temporary directory, not the
# checkout's outputs/, where a run of the suite left hundreds of folders.
RUN_DIRS: list[Path] = []


@pytest.fixture(autouse=True, scope="session")
def _run_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    RUN_DIRS.append(tmp_path_factory.mktemp("hydra-runs"))


def default_run_dir(name: str, args: tuple[str, ...] | list[str]) -> list[str]:
    """The hydra.run.dir override to add to a console script's arguments: none for
    fnnlab-train (its tests name their folders), or when the test gives its own."""
    if name == "fnnlab-train" or any(a.lstrip("+").startswith("hydra.run.dir=") for a in args):
        return []
    return [f"hydra.run.dir={RUN_DIRS[0]}/{name}/${{now:%H-%M-%S-%f}}"]


def run_script(
    name: str, *args: str, timeout: float = 600, env: dict | None = None, **kw
) -> subprocess.CompletedProcess:
    """Run a console script of this venv the way a user would; never raises on exit status."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    argv = [str(BIN / name), *args, *default_run_dir(name, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kw)


@contextlib.contextmanager
def as_a_command(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Around a command (fnnlab.cli.run_cli) called in this process, which goes on after it:
    puts back what the command set up for a process that ends with it. SIGTERM's handler
    and HYDRA_FULL_ERROR at once, MLFLOW_DISABLE_TELEMETRY and MLflow's progress bar
    setting at the test's end (its jobs may still read them), and the heap it froze for an
    exit that does not come. A sweep it left open (after an interrupt) is ended as its exit
    ends it. The root logger's handlers and level as they were: Hydra's logging set-up put
    its own there (one with the command's log file open), and later lines of the test
    reached neither pytest's capture nor the test's log (helper-51)."""
    import logging
    import signal

    from fnnlab import sweep

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    for name in ("MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        # Recorded as it is now, set or not (delenv alone records nothing for an unset one,
        # and the value the command set stayed for the rest of the session; helper-51).
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not os.environ[name]:
            monkeypatch.delenv(name)
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
        gc.unfreeze()
        sweep.close_open(after_error=False)
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def run_in_process(monkeypatch: pytest.MonkeyPatch, entry, *args: str) -> int:
    """Call a console-script entry point in this process (so a test can inject a fault
    into one job with monkeypatch); returns its exit status."""
    script = f"fnnlab-{entry.__name__}"
    monkeypatch.setattr(sys, "argv", [entry.__name__, *args, *default_run_dir(script, args)])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with as_a_command(monkeypatch):
        try:
            entry()
            return 0
        except SystemExit as exc:  # as Python ends a process on it
            if exc.code is None or isinstance(exc.code, int):
                return exc.code or 0
            print(exc.code, file=sys.stderr)
            return 1


def run_command(entry, *args: str, process: bool = False) -> subprocess.CompletedProcess:
    """A console script called in this process, as run_script calls it in its own: what it
    printed and its exit status. A small command's time is mostly its start-up (imports);
    tests whose subject is the process itself (signals, workers, its environment, all it
    prints on stderr: warnings and lines at exit do not reach this capture) or what holds
    from one process to the next (reuse, replay) run it in its own, with `process`."""
    if process:
        return run_script(f"fnnlab-{entry.__name__}", *args)
    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            status = run_in_process(monkeypatch, entry, *args)
        except Exception:  # as Python ends a process on one: its traceback, status 1
            traceback.print_exc()
            status = 1
    argv = [f"fnnlab-{entry.__name__}", *args]
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())
