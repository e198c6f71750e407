"""Writing long runs' values: fnnlab.tracking.log_values of a 2,000-epoch run (6 series,
12,000 metric values, 30 params, a summary value and a tag) into a fresh embedded store.

Two measurements:
- one process: each write goes to a new run of the same store; --repeat writes (8) are
  timed and all are printed with the best (the machine is shared, and other work only
  makes a write slower);
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
    alone = processes_at_once(1, opts.epochs, opts.runs)
    together = processes_at_once(opts.workers, opts.epochs, opts.runs)
    print(
        f"1 process writing {opts.runs} runs: {alone:.2f} s; {opts.workers} processes "
        f"writing {opts.runs} runs each at once: {together:.2f} s "
        f"({together / alone:.2f}x the time for {opts.workers}x the runs)"
    )


if __name__ == "__main__":
    main()
