"""fnnlab.sql_batch.log_batch leaves MLflow's SQL store exactly as MLflow's own log_batch
does: the same rows in every table, the same errors, on the same sequences of batches;
on SQLite and on PostgreSQL (the test server's, opened directly as a database URI)."""

from __future__ import annotations

import math

import pytest
import sqlalchemy
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from fnnlab import sql_batch
from fnnlab.tracking import open_store

NOW = 1_700_000_000_000
SERIES = [
    Metric(key, v * k, NOW, step)
    for k, key in enumerate(("loss", "acc"), 1)
    for step, v in enumerate([0.9, 0.5, float("nan"), 0.25])
]
# Out of step order, a repeat within the batch, infinities, the same step twice.
ODD = [
    Metric("loss", 0.1, NOW + 5, 7),
    Metric("loss", 0.1, NOW + 5, 7),
    Metric("loss", 0.3, NOW + 9, 3),
    Metric("grad", math.inf, NOW, 0),
    Metric("grad", -math.inf, NOW, 1),
    Metric("grad", 2.0, NOW, 1),
    Metric("summary", 7.0, NOW, 0),
]
PARAMS = [Param("model.hidden_dim", "8"), Param("optim.lr", "0.1")]
TAGS = [RunTag("diverged", "false"), RunTag("mlflow.runName", "renamed")]

# Batches logged one after another on one run: values older and newer than the stored
# latest ones, a param logged again with the same value, a tag overwritten.
SEQUENCES = {
    "one batch": [(SERIES, PARAMS, TAGS)],
    "odd values": [(ODD, [], [])],
    "later batches": [
        (SERIES, PARAMS, []),
        (ODD, PARAMS[:1], [RunTag("diverged", "true")]),
        ([Metric("loss", 5.0, NOW - 1, 100)], [Param("seed", "3")], TAGS),
        ([Metric("acc", 0.0, NOW + 1, 0)], [], []),
    ],
    # The second batch repeats a stored row: MLflow's path takes over and skips it.
    "stored row again": [(SERIES, [], []), (SERIES[:2] + [Metric("loss", 4.0, NOW, 9)], [], [])],
    "params only": [([], PARAMS, []), ([], PARAMS, [])],
    "a tag twice": [(ODD, [], [RunTag("a", "1"), RunTag("a", "2")]), ([], [], [RunTag("a", "3")])],
}

TABLES = {
    "metrics": "key, value, timestamp, step, is_nan",
    "latest_metrics": "key, value, timestamp, step, is_nan",
    "params": "key, value",
    "tags": "key, value",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def uri_for(request, tmp_path, monkeypatch):
    """The store URI for a way of logging ("mlflow" or "fnnlab"): a SQLite file each, or
    one PostgreSQL database for both (their runs are apart)."""
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a database URI
    if request.param == "sqlite":
        return lambda how: f"sqlite:///{tmp_path}/{how}/mlflow.db"
    uri = request.getfixturevalue("tracking_server").database_uri("fnnlab_sql_batch")
    return lambda how: uri


def table_rows(uri: str, run_id: str) -> dict[str, list[tuple]]:
    with sqlalchemy.create_engine(uri).connect() as conn:
        rows = {
            table: sorted(
                tuple(row)
                for row in conn.execute(
                    sqlalchemy.text(f"SELECT {cols} FROM {table} WHERE run_uuid = :run"),
                    {"run": run_id},
                )
            )
            for table, cols in TABLES.items()
        }
        rows["runs"] = [
            tuple(row)
            for row in conn.execute(
                sqlalchemy.text(
                    "SELECT name, status, lifecycle_stage FROM runs WHERE run_uuid = :run"
                ),
                {"run": run_id},
            )
        ]
    return rows


def logged(uri: str, how: str, batches) -> dict[str, list[tuple]]:
    store = open_store(uri, "t")
    assert store.sql is not None
    run_id = store.client.create_run(store.experiment_id, run_name="r").info.run_id
    for metrics, params, tags in batches:
        if how == "mlflow":
            store.sql.log_batch(run_id, metrics, params, tags)
        else:
            sql_batch.log_batch(store.sql, run_id, metrics, params, tags)
    return table_rows(uri, run_id)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_same_rows_as_mlflows_log_batch(uri_for, sequence):
    mlflow_rows = logged(uri_for("mlflow"), "mlflow", SEQUENCES[sequence])
    ours = logged(uri_for("fnnlab"), "fnnlab", SEQUENCES[sequence])
    assert ours == mlflow_rows
    assert ours["metrics"] or ours["params"]  # the comparison compared something
    renamed = any(t.key == "mlflow.runName" for _, _, tags in SEQUENCES[sequence] for t in tags)
    assert ours["runs"] == [("renamed" if renamed else "r", "RUNNING", "active")]


def errors(uri: str, how: str, setup, batch) -> tuple[str, dict]:
    store = open_store(uri, "t")
    run_id = store.client.create_run(store.experiment_id, run_name="r").info.run_id
    setup(store, run_id)
    write = (
        store.sql.log_batch if how == "mlflow" else (lambda *a: sql_batch.log_batch(store.sql, *a))
    )
    with pytest.raises(MlflowException) as info:
        write(run_id, *batch)
    message = str(info.value).replace(run_id, "<run>")
    return (info.value.error_code, message), table_rows(uri, run_id)


@pytest.mark.parametrize(
    "case",
    ["param changed", "run deleted", "bad metric", "too many metrics"],
)
def test_same_errors_as_mlflows_log_batch_and_nothing_written(uri_for, case):
    def log_params(store, run_id):
        store.sql.log_batch(run_id, [], PARAMS, [])

    def delete(store, run_id):
        store.client.delete_run(run_id)

    setup, batch = {
        "param changed": (log_params, (SERIES, [Param("optim.lr", "0.2")], TAGS)),
        "run deleted": (delete, (SERIES, PARAMS, [])),
        "bad metric": (lambda *_: None, (SERIES + [Metric("", 1.0, NOW, 0)], PARAMS, [])),
        "too many metrics": (
            lambda *_: None,
            ([Metric("m", float(i), NOW, i) for i in range(1001)], [], []),
        ),
    }[case]
    theirs = errors(uri_for("mlflow"), "mlflow", setup, batch)
    ours = errors(uri_for("fnnlab"), "fnnlab", setup, batch)
    assert ours == theirs
    assert not ours[1]["metrics"]  # no metric row of the rejected batch was written
