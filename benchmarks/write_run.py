"""Writing long runs' values: fnnlab.tracking.log_values of a 2,000-epoch run (6 series,
12,000 metric values, 30 params, a summary value and a tag) into a fresh embedded store.

Three measurements:
- one process: each write goes to a new run of the same store; --repeat writes (8) are
  timed and all are printed with the best (the machine is shared, and other work only
  makes a write slower);
- the store alone: the same rows (metrics, latest values, params, tag) inserted into
  MLflow's tables with sqlite3's executemany, one transaction a run, in the same store's
  settings; no MLflow, no validation. What SQLite itself takes, within its write lock;
- processes at once: --workers processes (2) each write --runs runs (20) into one store,
  as a sweep's workers do, against one process writing --runs runs alone. SQLite lets one
  writer in at a time, so what a write does within its transaction is done one process at
  a time. Each process opens the store and creates its runs before they all start.

To compare versions, run it with PYTHONPATH pointing at another checkout's src (same venv):

    PYTHONPATH=/path/to/other/src python benchmarks/write_run.py

Usage: python benchmarks/write_run.py [--epochs 2000] [--repeat 8] [--workers 2] [--runs 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sqlite3
import tempfile
import time

from fnnlab.tracking import log_values, open_store

SERIES = ("loss", "accuracy", "grad_norm/w1", "grad_norm/w2", "weight_norm/w1", "weight_norm/w2")
PARAMS = {f"p{i}": i for i in range(30)}


def series(epochs: int) -> dict[str, list[float]]:
    rng = random.Random(0)
    return {key: [rng.random() for _ in range(epochs)] for key in SERIES}


def write(store, run_id: str, values: dict[str, list[float]]) -> None:
    log_values(
        store,
        run_id,
        params=PARAMS,
        series=values,
        summary={"final_loss": 0.1},
        tags={"diverged": "false"},
    )


def one_process(epochs: int, repeat: int) -> list[float]:
    values = series(epochs)
    with tempfile.TemporaryDirectory(prefix="fnnlab-write-") as tmp:
        store = open_store(f"sqlite:///{tmp}/mlflow.db", "write")
        times = []
        for _ in range(repeat):
            run_id = store.client.create_run(store.experiment_id).info.run_id
            start = time.perf_counter()
            write(store, run_id, values)
            times.append((time.perf_counter() - start) * 1000)
    return times


def store_rows(run_id: str, values: dict[str, list[float]], now: int) -> dict[str, list[tuple]]:
    """The rows write() stores for a run, per table, as (key, value, ...) tuples."""
    metrics = [
        (k, v, now, step, 0, run_id) for k, vs in values.items() for step, v in enumerate(vs)
    ]
    metrics.append(("final_loss", 0.1, now, 0, 0, run_id))
    latest = [(k, vs[-1], now, len(vs) - 1, 0, run_id) for k, vs in values.items()]
    latest.append(("final_loss", 0.1, now, 0, 0, run_id))
    return {
        "metrics": metrics,
        "latest_metrics": latest,
        "params": [(k, str(v), run_id) for k, v in PARAMS.items()],
        "tags": [("diverged", "false", run_id)],
    }


def store_alone(path: str, run_ids: list[str], values: dict[str, list[float]]) -> list[float]:
    """ms to insert each run's rows into the SQLite file at path, one transaction a run."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous = NORMAL")  # as fnnlab's embedded store (durable_sqlite)
    times = []
    try:
        for run_id in run_ids:
            tables = store_rows(run_id, values, int(time.time() * 1000))
            start = time.perf_counter()
            con.execute("BEGIN IMMEDIATE")
            for table, rows in tables.items():
                marks = ", ".join("?" * len(rows[0]))
                columns = TABLE_COLUMNS[table]
                con.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
            con.execute("COMMIT")
            times.append((time.perf_counter() - start) * 1000)
    finally:
        con.close()
    return times


TABLE_COLUMNS = {
    "metrics": "key, value, timestamp, step, is_nan, run_uuid",
    "latest_metrics": "key, value, timestamp, step, is_nan, run_uuid",
    "params": "key, value, run_uuid",
    "tags": "key, value, run_uuid",
}


def store_alone_runs(epochs: int, runs: int) -> list[float]:
    """store_alone into a new fnnlab store, its runs created by MLflow."""
    values = series(epochs)
    with tempfile.TemporaryDirectory(prefix="fnnlab-write-") as tmp:
        store = open_store(f"sqlite:///{tmp}/mlflow.db", "write")
        run_ids = [store.client.create_run(store.experiment_id).info.run_id for _ in range(runs)]
        return store_alone(f"{tmp}/mlflow.db", run_ids, values)


def _writer(uri: str, epochs: int, runs: int, ready, go) -> None:
    store = open_store(uri, "write")
    values = series(epochs)
    run_ids = [store.client.create_run(store.experiment_id).info.run_id for _ in range(runs)]
    ready.release()
    go.wait()
    for run_id in run_ids:
        write(store, run_id, values)


def processes_at_once(workers: int, epochs: int, runs: int) -> float:
    """Seconds from the start signal until every one of `workers` processes has written
    `runs` runs into one new store."""
    with tempfile.TemporaryDirectory(prefix="fnnlab-write-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        open_store(uri, "write")  # the schema, once
        ready, go = multiprocessing.Semaphore(0), multiprocessing.Event()
        procs = [
            multiprocessing.Process(target=_writer, args=(uri, epochs, runs, ready, go))
            for _ in range(workers)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.acquire()
        start = time.perf_counter()
        go.set()
        for proc in procs:
            proc.join()
            if proc.exitcode:
                raise SystemExit(f"a writer failed with exit code {proc.exitcode}")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="runs per process at once")
    opts = parser.parse_args()
    times = one_process(opts.epochs, opts.repeat)
    values = len(SERIES) * opts.epochs
    print(
        f"log_values of {values} values: best {min(times):.0f} ms; "
        f"each: {', '.join(f'{t:.0f}' for t in times)} ms"
    )
    raw = store_alone_runs(opts.epochs, opts.repeat)
    print(
        f"the same rows into MLflow's tables with sqlite3 alone: best {min(raw):.0f} ms "
        f"({min(raw) / min(times):.2f}x log_values); each: {', '.join(f'{t:.0f}' for t in raw)} ms"
    )
    alone = processes_at_once(1, opts.epochs, opts.runs)
    together = processes_at_once(opts.workers, opts.epochs, opts.runs)
    print(
        f"1 process writing {opts.runs} runs: {alone:.2f} s; {opts.workers} processes "
        f"writing {opts.runs} runs each at once: {together:.2f} s "
        f"({together / alone:.2f}x the time for {opts.workers}x the runs)"
    )


if __name__ == "__main__":
    main()
