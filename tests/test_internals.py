"""fnnlab.internals, the one place that uses private parts of Hydra, OmegaConf and MLflow:
its bulk log_batches (every batch of a run in one transaction) leaves MLflow's SQL store
exactly as MLflow's own log_batch, called once per batch, does (the same rows in every
table, the same errors, on SQLite and on PostgreSQL); a sweep with its
fast paths switched off stores the same runs; and no other module reaches into a
dependency's private names."""

from __future__ import annotations

import ast
import math
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy
from conftest import TmpStore, copy_schema, run_script
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from fnnlab import internals, provenance
from fnnlab.names import Tag
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
    # Equal (step, timestamp, value) within a key, a NaN (stored as 0) among them: the
    # latest-value row is the first of them, as MLflow keeps it; keys that come back.
    "ties": [
        (
            [
                Metric("t", 0.0, NOW, 5),
                Metric("t", float("nan"), NOW, 5),
                Metric("u", float("nan"), NOW, 2),
                Metric("u", 0.0, NOW, 2),
                Metric("t", 0.0, NOW + 1, 4),
                Metric("u", 1.0, NOW, 2),
            ],
            [],
            [],
        ),
        ([Metric("u", float("nan"), NOW, 9), Metric("u", 0.0, NOW, 9)], [], []),
    ],
    # numpy's float32 0.1 equals both 0.1 and the next float, which differ: the latest value
    # is the one MLflow's comparisons in order keep (helper-74).
    "a float32 among floats": [
        (
            [
                Metric("a", 0.1, NOW, 1),
                Metric("b", 0.5, NOW, 1),
                Metric("a", np.float32(0.1), NOW, 1),
                Metric("a", math.nextafter(0.1, 1), NOW, 1),
            ],
            [],
            [],
        ),
        ([Metric("a", 0.3, NOW, 2)], [], []),
        (
            [Metric("a", np.float32(0.3), NOW, 2), Metric("a", math.nextafter(0.3, 1), NOW, 2)],
            [],
            [],
        ),
    ],
    # The second batch repeats a stored row: MLflow's path takes over and skips it.
    "stored row again": [(SERIES, [], []), (SERIES[:2] + [Metric("loss", 4.0, NOW, 9)], [], [])],
    "params only": [([], PARAMS, []), ([], PARAMS, [])],
    "a tag twice": [(ODD, [], [RunTag("a", "1"), RunTag("a", "2")]), ([], [], [RunTag("a", "3")])],
    # A tag set again after the batch that renames the run: the later value stays.
    "a tag after a rename": [(SERIES, PARAMS, TAGS), ([], [], [RunTag("diverged", "true")])],
    # Numbers that are not Python floats: stored as SQLAlchemy's Float column binds them.
    "other number types": [
        (
            [
                Metric("m", np.float32(0.5), NOW, 0),
                Metric("m", np.float64(0.25), NOW, 1),
                Metric("m", 3, NOW, 2),
                Metric("m", 2**64, NOW, 3),
                Metric("m", Decimal("0.1"), NOW, 4),
                Metric("m", Fraction(1, 3), NOW, np.int64(5)),
                Metric("m", np.float32("nan"), np.int64(NOW), 6),
            ],
            [],
            [],
        )
    ],
}

# {value_type}: SQLite's storage class of each value (a column of one type elsewhere).
TABLES = {
    "metrics": "key, value, {value_type}timestamp, step, is_nan",
    "latest_metrics": "key, value, {value_type}timestamp, step, is_nan",
    "params": "key, value",
    "tags": "key, value",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def uri_for(request, tmp_path, monkeypatch):
    """The store URI for a way of logging ("mlflow" or "fnnlab"): a SQLite file each, or
    one PostgreSQL database for both (their runs are apart)."""
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a database URI
    if request.param == "sqlite":
        schema = request.getfixturevalue("schema_only_db")
        for how in ("mlflow", "fnnlab"):
            copy_schema(schema, tmp_path / how / "mlflow.db")
        return lambda how: f"sqlite:///{tmp_path}/{how}/mlflow.db"
    uri = request.getfixturevalue("tracking_server").database_uri("fnnlab_sql_batch")
    return lambda how: uri


def table_rows(uri: str, run_id: str) -> dict[str, list[tuple]]:
    value_type = "typeof(value), " if uri.startswith("sqlite") else ""
    with sqlalchemy.create_engine(uri).connect() as conn:
        rows = {
            table: sorted(
                tuple(row)
                for row in conn.execute(
                    sqlalchemy.text(
                        f"SELECT {cols.format(value_type=value_type)} FROM {table} "
                        "WHERE run_uuid = :run"
                    ),
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
    if how == "mlflow":
        for metrics, params, tags in batches:
            store.sql.log_batch(run_id, metrics, params, tags)
    else:
        internals.log_batches(store.client, store.sql, run_id, lambda: batches)
    return table_rows(uri, run_id)


def psycopg2_adapts(metric: Metric) -> bool:
    values = (metric.value, metric.timestamp, metric.step)
    return all(type(v) in (float, int, Decimal) for v in values)


@pytest.mark.parametrize("ahead", [1, internals.AHEAD_BATCHES])
@pytest.mark.parametrize("sequence", SEQUENCES)
def test_same_rows_as_mlflows_log_batch(uri_for, sequence, ahead, monkeypatch):
    # With ahead=1, the batches after the first are checked within the transaction.
    monkeypatch.setattr(internals, "AHEAD_BATCHES", ahead)
    batches = SEQUENCES[sequence]
    if not uri_for("mlflow").startswith("sqlite"):
        # psycopg2 cannot adapt numpy scalars (a float64 goes in as its repr, np.float64(..))
        # or fractions: MLflow's own log_batch fails on them on PostgreSQL.
        batches = [([m for m in ms if psycopg2_adapts(m)], ps, ts) for ms, ps, ts in batches]
    mlflow_rows = logged(uri_for("mlflow"), "mlflow", batches)
    ours = logged(uri_for("fnnlab"), "fnnlab", batches)
    assert ours == mlflow_rows
    assert ours["metrics"] or ours["params"]  # the comparison compared something
    renamed = any(t.key == "mlflow.runName" for _, _, tags in batches for t in tags)
    assert ours["runs"] == [("renamed" if renamed else "r", "RUNNING", "active")]


# Mostly good metrics, so that a bad value often follows good ones of its key.
KEYS = st.one_of(
    st.sampled_from(["loss", "grad_norm/w1"]),
    st.sampled_from(["", "../up", "a b", "k" * 251, None, 5]),
)
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1),
    st.integers(-(2**70), 2**70),
    st.sampled_from([True, None, "0.5", np.float32(0.5), Decimal("0.1"), 1j]),
)
STAMPS = st.one_of(
    st.integers(0, 2**63),
    st.integers(-5, 5),
    st.sampled_from([0.5, -0.5, None, "1", np.int64(7), True, float("nan")]),
)
GOOD = ("loss", 0.5, NOW, 3)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(KEYS, VALUES, STAMPS, STAMPS), max_size=12),
    st.lists(st.tuples(KEYS, st.sampled_from(["1", "x" * 6001, 3])), max_size=3),
)
@example([GOOD, ("loss", None, NOW, 4)], [])
@example([GOOD, ("loss", True, NOW, 4)], [])
@example([GOOD, ("loss", 0.5, -1, 4)], [])
@example([GOOD, ("loss", 0.5, NOW, "4")], [])
@example([GOOD, ("loss", 0.5, "1", 4)], [])
def test_a_batch_is_checked_as_mlflow_checks_it(metrics, params):
    """Whatever a batch holds, fnnlab's check of it passes exactly when MLflow's does, and
    fails with MLflow's error (its message names the first bad value and where it is)."""
    from mlflow.utils.validation import _validate_batch_log_data

    batch = (
        [Metric(*m) for m in metrics],
        [Param(k, v) for k, v in params],
        [RunTag("diverged", "x" * 9000)],
    )

    def outcome(check):
        try:
            _, ps, ts = check(*batch)
        except Exception as exc:  # MLflow's own errors are not all MlflowException
            return type(exc), str(exc)
        return [(p.key, p.value) for p in ps], [(t.key, t.value) for t in ts]

    assert outcome(internals._validate_batch) == outcome(_validate_batch_log_data)


def test_batches_are_checked_before_the_store_is_locked(tmp_path):
    """SQLite lets one writer in at a time: a run's batches are validated and made into rows
    before its write transaction begins, so another process can write meanwhile."""
    db = tmp_path / "mlflow.db"
    store = open_store(f"sqlite:///{db}", "t")
    run_id, other = (store.client.create_run(store.experiment_id).info.run_id for _ in "ab")

    def batches():
        yield SERIES, PARAMS, []
        # Another connection's write, which fails at once if the database is locked.
        with sqlite3.connect(db, timeout=0) as conn:
            conn.execute("UPDATE runs SET name = 'written' WHERE run_uuid = ?", (other,))
        yield [Metric("loss", 5.0, NOW, 100)], [Param("seed", "3")], TAGS

    internals.log_batches(store.client, store.sql, run_id, batches)
    assert store.client.get_run(other).info.run_name == "written"
    run = store.client.get_run(run_id)
    assert run.info.run_name == "renamed" and run.data.params["seed"] == "3"
    assert len(store.client.get_metric_history(run_id, "loss")) == 5


def errors(uri: str, how: str, setup, batch) -> tuple[str, dict]:
    store = open_store(uri, "t")
    run_id = store.client.create_run(store.experiment_id, run_name="r").info.run_id
    setup(store, run_id)
    with pytest.raises(MlflowException) as info:
        if how == "mlflow":
            store.sql.log_batch(run_id, *batch)
        else:
            # After a good batch, which is not stored either: one transaction.
            good = (SERIES[:1], [], [RunTag("a", "1")])
            internals.log_batches(store.client, store.sql, run_id, lambda: [good, batch])
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
    assert not ours[1]["metrics"]  # no metric row of the call was written


def log_params(store, run_id):
    store.sql.log_batch(run_id, [], PARAMS, [])


def delete(store, run_id):
    store.client.delete_run(run_id)


INVALID = (SERIES + [Metric("", 1.0, NOW, 0)], [], [])
# Passes MLflow's validation (a complex is a number) and fails within its transaction.
UNSTORABLE = [Metric("m", 1j, NOW, 0)]
CHANGED = [Param("optim.lr", "0.2")]
ERRORS_OVER_BATCHES = {
    "run deleted, a later batch invalid": (delete, [(SERIES, PARAMS, []), INVALID]),
    "run deleted, the first batch invalid": (delete, [INVALID, (SERIES, PARAMS, [])]),
    "a param changed, a later batch invalid": (log_params, [(SERIES, CHANGED, []), INVALID]),
    "a param changed with values that cannot be stored": (
        log_params,
        [(SERIES, [], []), (UNSTORABLE, CHANGED, [])],
    ),
    "values that cannot be stored": (lambda *_: None, [(SERIES, [], []), (UNSTORABLE, [], [])]),
}


@pytest.mark.parametrize("ahead", [1, internals.AHEAD_BATCHES])
@pytest.mark.parametrize("case", ERRORS_OVER_BATCHES)
def test_errors_over_batches_are_mlflows_first(uri_for, case, ahead, monkeypatch):
    """The error is the first one MLflow's log_batch, called once per batch, raises; nothing
    of the call is stored. With ahead=1 the later batches are checked within the
    transaction."""
    monkeypatch.setattr(internals, "AHEAD_BATCHES", ahead)
    setup, batches = ERRORS_OVER_BATCHES[case]
    raised = {}
    for how in ("mlflow", "fnnlab"):
        uri = uri_for(how)
        store = open_store(uri, "t")
        run_id = store.client.create_run(store.experiment_id, run_name="r").info.run_id
        setup(store, run_id)
        with pytest.raises(MlflowException) as info:
            if how == "mlflow":
                for batch in batches:
                    store.sql.log_batch(run_id, *batch)
            else:
                internals.log_batches(store.client, store.sql, run_id, lambda: batches)
        raised[how] = (info.value.error_code, str(info.value).replace(run_id, "<run>"))
    assert raised["fnnlab"] == raised["mlflow"]
    rows = table_rows(uri, run_id)  # fnnlab's run: only what the setup stored
    assert not rows["metrics"]
    logged_before = sorted((p.key, p.value) for p in PARAMS) if setup is log_params else []
    assert rows["params"] == logged_before


# --- private names stay in fnnlab.internals ------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src"
# Parts of the standard library that are public despite the underscore (os._exit, and
# namedtuple's _replace on urlsplit's result) are not a dependency's internals.
STDLIB_PRIVATE = {"os._exit", "parts._replace"}


def private_uses(path: Path) -> list[str]:
    """Imports of private modules or names of other packages, MLflow's store internals,
    attribute access to a private name (obj._x) and node-content access (obj.__dict__[...])."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            ours = parts[0] == "fnnlab" or parts[:2] == ["hydra_plugins", "fnnlab"]
            ours = ours or node.module == "__future__"
            if not ours and (
                any(p.startswith("_") for p in parts)
                or node.module.startswith("mlflow.store")
                or any(a.name.startswith("_") for a in node.names)
            ):
                found.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(p.startswith("_") for p in alias.name.split(".")[1:]):
                    found.append(f"{where} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            name = node.attr
            private = name.startswith("_") and not name.startswith("__")
            owner = ast.unparse(node.value)
            if (private and owner not in ("self", "cls")) or name == "__dict__":
                if f"{owner}.{name}" not in STDLIB_PRIVATE:
                    found.append(f"{where} {owner}.{name}")
    return found


def test_no_private_names_outside_internals():
    files = [p for p in SRC.rglob("*.py") if p != SRC / "fnnlab" / "internals.py"]
    assert len(files) > 10
    uses = [use for path in files for use in private_uses(path)]
    assert uses == []


def test_internals_module_is_where_they_are():
    # The scan above finds them when they are there.
    uses = private_uses(SRC / "fnnlab" / "internals.py")
    assert any("hydra._internal" in u for u in uses)
    assert any("_tracking_client" in u for u in uses)
    assert any("__dict__" in u for u in uses)
    assert any("hydra_joblib_launcher._core" in u for u in uses)


def test_other_versions_take_the_public_paths():
    code = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda name: '9.9.9' if name == 'mlflow' else real(name)\n"
        "import fnnlab.internals as i\n"
        "print(i.FAST)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    warning = [line for line in out.stderr.splitlines() if "fnnlab" in line]
    assert len(warning) == 1 and "mlflow 9.9.9" in warning[0], out.stderr


# --- the public paths store the same runs -----------------------------------------------------


def stored(store: TmpStore) -> dict:
    """Everything a sweep stored, by run name, without ids, times and process details."""
    client = store.client
    # The parent's description links to its runs by id.
    volatile = {
        Tag.PARENT,
        Tag.PID,
        Tag.HOST,
        Tag.LEASE_UNTIL,
        Tag.SWEEP_OPENED,
        Tag.INVOCATION,
        Tag.SWEEP_DIR,
        "mlflow.runName",
        Tag.TRACEBACK,
        Tag.NOTE,
        provenance.NOTE_TAG,  # the note's hash: the note names runs by id
    }
    out = {}
    for run in store.runs():
        tags = {
            k: v
            for k, v in run.data.tags.items()
            if k not in volatile and not k.startswith(f"{Tag.SWEEP_DIR}.")
        }
        # The hashes of the answer's files: its tables and report name the runs by id.
        # A run's: its config and Hydra's files name the store and the output folder.
        for key in (provenance.FILES_TAG, Tag.FILES):
            if key in tags:
                tags[key] = sorted(provenance.read_digest(tags[key]))
        # NaN (a parent's leader metrics without a leader) compares equal to itself as text.
        histories = {
            key: sorted(
                (m.step, "nan" if math.isnan(m.value) else m.value)
                for m in client.get_metric_history(run.info.run_id, key)
            )
            for key in run.data.metrics
        }
        artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        out[run.info.run_name] = (run.info.status, run.data.params, tags, histories, artifacts)
    return out


@pytest.mark.slow
def test_sweep_with_fast_paths_off_stores_the_same(tmp_path):
    sweep = ["-m", "model.hidden_dim=4,8", "optim.lr=0.1,1000", "train.epochs=30"]
    stores = {}
    for fast in ("1", "0"):
        root = tmp_path / f"fast{fast}"
        root.mkdir()
        store = TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")
        env = {**os.environ, "FNNLAB_FAST_PATHS": fast}
        # The same relative store URI, so params and sweep ids agree too.
        where = ["tracking.uri=sqlite:///mlruns/mlflow.db", *store.overrides()[1:]]
        proc = run_script("fnnlab-train", *sweep, *where, env=env, cwd=root)
        assert proc.returncode == 0, proc.stderr
        stores[fast] = store
    fast, public = (stored(stores[k]) for k in ("1", "0"))
    assert len(fast) == 5  # the parent and four jobs
    assert fast == public
    # Each took its own path: only the fast one puts the embedded store in WAL mode.
    modes = {}
    for key, store in stores.items():
        with sqlite3.connect(store.root / "mlruns" / "mlflow.db") as conn:
            modes[key] = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert modes == {"1": "wal", "0": "delete"}
