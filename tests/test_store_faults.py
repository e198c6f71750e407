"""Stores used by several processes at once, or failing: one healthy store, or one line.

Real stores throughout: concurrent first uses of a fresh SQLite file and PostgreSQL
database; stores that cannot be used (corrupt, unreadable, read-only), refused before
anything runs; a store that turns read-only under a running sweep, broken by a callback
after a set job (tests/faulty_store.py), not at a time.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy
from conftest import BIN, TmpStore, run_command, run_in_process, run_script
from faulty_store import command_env, set_read_only, store_files
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from fnnlab import cli, storeguard
from fnnlab.tracking import local_folder, open_store

TESTS = Path(__file__).resolve().parent
ROOT = os.geteuid() == 0
# Small jobs: what is under test is the store.
QUICK = ["train.epochs=5", "tracking.plots=false", "hydra.sweeper.summarize=false"]


def job_runs(store: TmpStore, status: str | None = None) -> list:
    query = "tags.role = 'job'" + (f" and attributes.status = '{status}'" if status else "")
    return store.runs(query)


def assert_healthy(db: Path) -> None:
    """The file passes SQLite's check and holds no half-done migration."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    assert not [t for t in tables if t.startswith("_alembic_tmp")]


# --- first uses at once ----------------------------------------------------------------------


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [str(BIN / "fnnlab-train"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def first_uses_at_once(overrides: list[str]) -> int:
    """Two single runs and two sweeps of two jobs, started together on one store; every
    command must succeed. Returns the job runs they made."""
    commands = [
        ["seed=0"],
        ["-m", "seed=10,11"],
        ["seed=1"],
        ["-m", "seed=20,21"],
    ]
    procs = [start([*c, *QUICK, *overrides]) for c in commands]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    return 6


@pytest.mark.slow
def test_concurrent_first_uses_of_a_fresh_sqlite_store_leave_one_healthy_store(tmp_path):
    # Before the schema lock, 4 of 4 tries crashed one process in MLflow's migration.
    for attempt in range(2):
        root = tmp_path / f"try{attempt}"
        store = TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")
        made = first_uses_at_once(store.overrides())
        assert len(job_runs(store, "FINISHED")) == len(job_runs(store)) == made
        assert len(store.runs("tags.role = 'sweep' and attributes.status = 'FINISHED'")) == 2
        assert_healthy(root / "mlruns" / "mlflow.db")
    # And the store goes on working.
    out = run_command(cli.train, "-m", "seed=30,31", *QUICK, *store.overrides())
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(job_runs(store, "FINISHED")) == len(job_runs(store)) == made + 2


@pytest.mark.slow
@pytest.mark.server
def test_concurrent_first_uses_of_a_fresh_postgresql_database(tracking_server, tmp_path):
    for attempt in range(2):
        uri = tracking_server.database_uri(f"fnnlab_first_use_{os.getpid()}_{attempt}")
        overrides = [
            f"tracking.uri={uri}",
            "tracking.experiment=first-use",
            f"hydra.run.dir={tmp_path}/outputs/${{now:%H-%M-%S-%f}}",
            f"hydra.sweep.dir={tmp_path}/multirun/${{now:%H-%M-%S-%f}}",
        ]
        try:
            made = first_uses_at_once(overrides)
            store = open_store(uri, "first-use")
            runs = store.client.search_runs([store.experiment_id], "tags.role = 'job'")
            assert len(runs) == made and {r.info.status for r in runs} == {"FINISHED"}
        finally:
            # A database URI's new experiment keeps its files in the project's mlruns/ (as
            # `make run`'s would): the runs' folders are this test's to remove.
            client = MlflowClient(tracking_uri=uri)
            if (exp := client.get_experiment_by_name("first-use")) is not None:
                folder = local_folder(exp.artifact_location)
                for run in client.search_runs([exp.experiment_id]):
                    shutil.rmtree(folder / run.info.run_id, ignore_errors=True)


@pytest.mark.server
def test_a_refused_experiment_name_makes_no_tables_in_a_new_postgresql_database(
    tracking_server, tmp_path, monkeypatch, capsys
):
    """The name was checked before a new SQLite file only: a new PostgreSQL database got
    MLflow's whole schema before the name was refused."""
    uri = tracking_server.database_uri(f"fnnlab_refused_name_{os.getpid()}")
    name = "x" * 600
    args = ["train.epochs=2", f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}/o"]
    assert run_in_process(monkeypatch, cli.train, *args, f"tracking.experiment={name}") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fnnlab-train: error: tracking.experiment={name}: ")
    assert "maximum length" in line
    engine = sqlalchemy.create_engine(uri)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
        # Once the database holds a store, the name is looked up there, and still refused.
        open_store(uri, "first")
        assert run_in_process(monkeypatch, cli.train, *args, f"tracking.experiment={name}") == 2
        assert "maximum length" in capsys.readouterr().err
        names = [e.name for e in MlflowClient(uri).search_experiments()]
        assert sorted(names) == ["Default", "first"]
    finally:
        engine.dispose()


# --- stores that cannot be used --------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A store folder holding one run, its database closed cleanly (no log beside it)."""
    root = tmp_path_factory.mktemp("template")
    store = TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")
    out = run_script("fnnlab-train", *QUICK, *store.overrides())
    assert out.returncode == 0, out.stderr
    db = root / "mlruns" / "mlflow.db"
    with sqlite3.connect(db) as conn:  # the last connection to close removes the log
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert not db.with_name("mlflow.db-wal").exists()
    return root / "mlruns"


# Root reads and writes any file: as root the command runs without that power (capabilities
# DAC_OVERRIDE and DAC_READ_SEARCH), so that file modes stop it as they stop anyone else.
AS_ANYONE = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if ROOT and shutil.which("setpriv")
    else []
)
FAULTS = {
    "corrupt": None,
    "unreadable": ("mlflow.db", 0o000),
    "read-only file": ("mlflow.db", 0o444),
    "read-only folder": (".", 0o555),
    "read-only folder, no database": (".", 0o555),
}


@pytest.mark.slow
@pytest.mark.skipif(ROOT and not AS_ANYONE, reason="as root without setpriv: modes stop nothing")
@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
@pytest.mark.parametrize("fault", FAULTS)
def test_unusable_store_is_one_line_exit_2_and_left_as_it_was(template, tmp_path, fault, sweep):
    store = TmpStore(root=tmp_path, uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    mlruns = store.root / "mlruns"
    shutil.copytree(template, mlruns)
    db = mlruns / "mlflow.db"
    if fault == "corrupt":
        db.write_bytes(os.urandom(64 * 1024))
    elif fault.endswith("no database"):
        db.unlink()
    before = db.read_bytes() if db.exists() else None
    if FAULTS[fault]:
        name, mode = FAULTS[fault]
        (mlruns / name).chmod(mode)
    args = ["-m", "seed=0,1"] if sweep else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [*AS_ANYONE, str(BIN / "fnnlab-train"), *args, *QUICK, *store.overrides()],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    finally:
        mlruns.chmod(0o755)
        if db.exists():
            db.chmod(0o644)
    took = time.perf_counter() - started
    print(f"{fault} ({'sweep' if sweep else 'run'}): exit {proc.returncode} in {took:.1f} s")
    print(proc.stderr.strip())
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"fnnlab-train: error: tracking.uri={store.uri}: "), lines[0]
    assert not proc.stdout.strip(), proc.stdout[-3000:]
    # The database as it was (SQLite may leave an empty log beside a read-only file).
    assert (db.read_bytes() if db.exists() else None) == before
    wal = mlruns / "mlflow.db-wal"
    assert not wal.exists() or not wal.read_bytes()


@pytest.mark.slow
def test_database_that_does_not_answer_is_one_line_exit_2(store):
    # A PostgreSQL URI where nothing listens: MLflow would retry its engine for about 100 s.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"postgresql+psycopg2://fnnlab@127.0.0.1:{port}/nothing"
    started = time.perf_counter()
    proc = run_script("fnnlab-train", *QUICK, *store.overrides(), f"tracking.uri={uri}")
    took = time.perf_counter() - started
    print(f"no database server: exit {proc.returncode} in {took:.1f} s: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fnnlab-train: error: tracking.uri={uri}: ")
    assert "cannot connect" in lines[0]
    # A driver SQLAlchemy cannot load (plain postgresql:// wants psycopg): one line too.
    bare = uri.replace("+psycopg2", "+nosuchdriver")
    proc = run_script("fnnlab-train", *QUICK, *store.overrides(), f"tracking.uri={bare}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]


# --- what tells a store fault from another error -------------------------------------------


def test_store_faults_are_told_from_other_errors(tmp_path):
    # Real errors: MLflow's store on an SQLite file turned read-only, a server not there.
    if ROOT:
        db = tmp_path / "mlflow.db"
        store = open_store(f"sqlite:///{db}", "t")
        store.client.create_run(store.experiment_id)  # the log exists, a connection is open
        set_read_only(store_files(db), True)
        try:
            with pytest.raises(MlflowException) as read_only:
                store.client.create_run(store.experiment_id)
        finally:
            set_read_only(store_files(db), False)
        assert storeguard.is_store_fault(read_only.value)
    with pytest.raises(MlflowException) as gone:
        MlflowClient("http://127.0.0.1:9").search_experiments()
    assert storeguard.is_store_fault(gone.value)
    # Not faults: a training error, a value the store refused, a constraint (a bug).
    assert not storeguard.is_store_fault(RuntimeError("loss is nan"))
    assert not storeguard.is_store_fault(MlflowException("bad", INVALID_PARAMETER_VALUE))
    with pytest.raises(MlflowException) as duplicate:
        try:
            raise sqlalchemy.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE"))
        except sqlalchemy.exc.IntegrityError as exc:
            raise MlflowException("duplicate") from exc
    assert not storeguard.is_store_fault(duplicate.value)


# --- a store that fails under a sweep --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not ROOT,
    reason="needs root: only the immutable attribute (chattr +i) makes a file read-only for "
    "a connection already open on it; chmod does not",
)
@pytest.mark.parametrize(
    "launcher", [[], ["hydra.launcher.n_jobs=2"]], ids=["in-process", "workers"]
)
def test_store_turning_read_only_mid_sweep_stops_it_then_the_rerun_completes(launcher, store):
    db = store.root / "mlruns" / "mlflow.db"
    open_store(store.uri, store.experiment)  # the schema exists: the sweep's stderr is its own
    sweep = ["-m", "seed=range(10)", *QUICK, *launcher, *store.overrides()]
    broken = store.root / "broken-at"
    breaker = [
        "+hydra.callbacks.fault._target_=faulty_store.ReadOnlyAfter",
        f"+hydra.callbacks.fault.db={db}",
        "+hydra.callbacks.fault.jobs=2",  # in each process that runs jobs
        f"+hydra.callbacks.fault.mark={broken}",
    ]
    try:
        out = run_script("fnnlab-train", *sweep, *breaker, env=command_env(), timeout=300)
        ended = time.time()
    finally:
        set_read_only(store_files(db), False)
    took = ended - float(broken.read_text())
    print(f"read-only mid-sweep ({' '.join(launcher) or 'in process'}): ended {took:.1f} s after")
    print(out.stderr.strip())
    assert out.returncode == 1, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(f"fnnlab-train: error: tracking.uri={store.uri}: the store failed")
    assert "Traceback" not in out.stdout
    finished = {r.info.run_id for r in job_runs(store, "FINISHED")}
    assert 1 <= len(finished) <= 4  # two per process, then nothing more was written
    left = [r.info.run_id for r in job_runs(store, "RUNNING")]
    (parent,) = store.runs("tags.role = 'sweep'")
    assert parent.info.status == "RUNNING"  # left for the next invocation, as after a kill

    out = run_script("fnnlab-train", *sweep)
    assert out.returncode == 0, out.stderr[-3000:]
    if left:
        assert f"marked {len(left)} RUNNING runs of dead processes KILLED" in out.stdout
    for run_id in left:
        assert store.client.get_run(run_id).info.status == "KILLED"
    done = job_runs(store, "FINISHED")
    assert len({r.data.tags["fingerprint"] for r in done}) == len(done) == 10
    assert finished <= {r.info.run_id for r in done}  # kept, not run again
    assert not store.runs("attributes.status = 'RUNNING'")
    (parent,) = store.runs("tags.role = 'sweep'")
    assert parent.info.status == "FINISHED"
