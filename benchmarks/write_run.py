"""Writing one long run's values: fnnlab.tracking.log_values of a 2,000-epoch run (6 series,
12,000 metric values, 30 params, a summary value and a tag) into a fresh embedded store.

Each write goes to a new run of the same store; --repeat writes (8) are timed and all are
printed with the best: the machine is shared, and other work only makes a write slower. To
compare versions, run it with PYTHONPATH pointing at another checkout's src (same venv):

    PYTHONPATH=/path/to/other/src python benchmarks/write_run.py

Usage: python benchmarks/write_run.py [--epochs 2000] [--repeat 8]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from fnnlab.tracking import log_values, open_store

SERIES = ("loss", "accuracy", "grad_norm/w1", "grad_norm/w2", "weight_norm/w1", "weight_norm/w2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=8)
    opts = parser.parse_args()
    rng = random.Random(0)
    series = {key: [rng.random() for _ in range(opts.epochs)] for key in SERIES}
    params = {f"p{i}": i for i in range(30)}
    with tempfile.TemporaryDirectory(prefix="fnnlab-write-") as tmp:
        store = open_store(f"sqlite:///{tmp}/mlflow.db", "write")
        times = []
        for _ in range(opts.repeat):
            run_id = store.client.create_run(store.experiment_id).info.run_id
            start = time.perf_counter()
            log_values(
                store,
                run_id,
                params=params,
                series=series,
                summary={"final_loss": 0.1},
                tags={"diverged": "false"},
            )
            times.append((time.perf_counter() - start) * 1000)
    values = len(SERIES) * opts.epochs
    print(
        f"log_values of {values} values: best {min(times):.0f} ms; "
        f"each: {', '.join(f'{t:.0f}' for t in times)} ms"
    )


if __name__ == "__main__":
    main()
