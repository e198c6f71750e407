"""Stores used by several processes at once: one healthy store.

Real stores: concurrent first uses of a fresh SQLite file and PostgreSQL database.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, TmpStore, run_script

from fnnlab.tracking import open_store

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
    for attempt in range(3):
        root = tmp_path / f"try{attempt}"
        store = TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")
        made = first_uses_at_once(store.overrides())
        assert len(job_runs(store, "FINISHED")) == len(job_runs(store)) == made
        assert len(store.runs("tags.role = 'sweep' and attributes.status = 'FINISHED'")) == 2
        assert_healthy(root / "mlruns" / "mlflow.db")
    # And the store goes on working.
    out = run_script("fnnlab-train", "-m", "seed=30,31", *QUICK, *store.overrides())
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
        made = first_uses_at_once(overrides)
        store = open_store(uri, "first-use")
        runs = store.client.search_runs([store.experiment_id], "tags.role = 'job'")
        assert len(runs) == made and {r.info.status for r in runs} == {"FINISHED"}
