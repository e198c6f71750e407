"""What the embedded store's durability costs: a run's writes under three SQLite settings.

fnnlab opens its own SQLite store in write-ahead-log mode with synchronous=NORMAL
(fnnlab.internals.durable_sqlite): an OS crash or power loss can lose the last commits but
cannot corrupt the file. Before, it ran the rollback journal with synchronous=OFF (fast,
but an OS crash could corrupt the whole file); MLflow's default is the rollback journal with
synchronous=FULL (an fsync or two a commit). Each way writes the same runs, as a job does
(create the run, one batch of params, 606 per-epoch values and tags, end it FINISHED), into a
fresh store; the table shows ms per run, best of --repeat.

Usage: python benchmarks/store_durability.py [--runs 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import sqlalchemy
from mlflow.tracking import MlflowClient

from fnnlab import internals
from fnnlab.tracking import Store, end_run, log_values, start_run

SETTINGS = {
    "WAL, synchronous=NORMAL (fnnlab)": ("WAL", "NORMAL"),
    "rollback journal, synchronous=OFF (before)": ("DELETE", "OFF"),
    "rollback journal, synchronous=FULL (MLflow's default)": ("DELETE", "FULL"),
}
SERIES = {key: [0.5 + i / 1000 for i in range(101)] for key in ("a", "b", "c", "d", "e", "f")}
PARAMS = {f"p{i}": i for i in range(17)}


def per_run_ms(journal: str, sync: str, runs: int, where: Path) -> float:
    # Not open_store: it would apply fnnlab's settings; these go on this store's engine only.
    client = MlflowClient(f"sqlite:///{where}/mlflow.db")
    exp = client.create_experiment("bench", artifact_location=(where / "art").as_uri())
    store = Store(client=client, experiment_id=exp, uri="", sql=internals.sql_store(client))
    engine = store.sql.engine
    sqlalchemy.event.listen(
        engine, "connect", lambda conn, _: conn.execute(f"PRAGMA synchronous = {sync}")
    )
    engine.dispose()
    with engine.connect() as conn:
        conn.exec_driver_sql(f"PRAGMA journal_mode = {journal}")
    start = time.perf_counter()
    for i in range(runs):
        run_id = start_run(store, f"r{i}", {"role": "job"}, None)
        log_values(store, run_id, params=PARAMS, series=SERIES, tags={"diverged": "false"})
        end_run(store, run_id, "FINISHED")
    return 1000 * (time.perf_counter() - start) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    assert internals.FAST, "needs the fast paths (the store's engine)"
    print(f"\nStore writes of one run ({opts.runs} runs per store, best of {opts.repeat})\n")
    print(f"| {'SQLite settings':<54} | {'ms/run':>7} | {'x fnnlab':>8} |")
    print(f"|{'-' * 56}|{'-' * 9}|{'-' * 10}|")
    best = {}
    with tempfile.TemporaryDirectory(prefix="fnnlab-durability-") as tmp:
        for r in range(opts.repeat):
            for name, (journal, sync) in SETTINGS.items():
                where = Path(tmp) / f"{r}-{journal}-{sync}"
                where.mkdir()
                ms = per_run_ms(journal, sync, opts.runs, where)
                best[name] = min(best.get(name, ms), ms)
    ours = best[next(iter(SETTINGS))]
    for name, ms in best.items():
        print(f"| {name:<54} | {ms:7.1f} | {ms / ours:8.2f} |")


if __name__ == "__main__":
    main()
