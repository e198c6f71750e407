"""Aggregation of a 1,000-run sweep with full curves: how long does fnnlab-aggregate take?

Creates (once) an embedded store with one sweep parent and 1,000 finished child runs shaped
like fnnlab-train jobs (15 params, 6 metrics x 101 epochs, summary metrics, job tags),
written with MlflowClient.log_batch, then times each phase of the aggregation and prints
a table. The issue's target is 10 s for the whole aggregation on a 2-core machine.

    .venv/bin/python benchmarks/aggregate_1000.py [--store DIR] [--runs 1000] [--compare-client]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fnnlab import aggregate, report
from fnnlab.tracking import end_run, log_values, open_store, start_run

EXPERIMENT = "bench_aggregate"
WIDTHS, LRS = (8, 16, 32, 64, 128), (0.001, 0.01, 0.1, 1.0)


def fake_curves(rng: random.Random, epochs: int = 101) -> dict[str, list[float]]:
    """Plausible shapes; the values do not matter for the timing, only their number."""
    rate, floor = rng.uniform(0.01, 0.1), rng.uniform(0.05, 0.6)
    loss = [floor + 0.4 * math.exp(-rate * e) for e in range(epochs)]
    return {
        "loss": loss,
        "accuracy": [min(1.0, 0.5 + 0.5 * (1 - v)) for v in loss],
        "grad_norm/w1": [0.1 * math.exp(-rate * e) + rng.random() * 1e-3 for e in range(epochs)],
        "grad_norm/w2": [0.5 * math.exp(-rate * e) + rng.random() * 1e-3 for e in range(epochs)],
        "weight_norm/w1": [5 + 0.01 * e for e in range(epochs)],
        "weight_norm/w2": [4 + 0.02 * e for e in range(epochs)],
    }


def build(uri: str, n_runs: int) -> None:
    store = open_store(uri, EXPERIMENT)
    parent = store.client.create_run(
        store.experiment_id, run_name="sweep-bench", tags={"role": "sweep", "sweep_id": "bench"}
    ).info.run_id
    rng = random.Random(0)
    grid = itertools.product(range(n_runs // (len(WIDTHS) * len(LRS)) + 1), WIDTHS, LRS)
    t0 = time.perf_counter()
    for num, (seed, width, lr) in enumerate(itertools.islice(grid, n_runs)):
        params = {
            "model.hidden_dim": width,
            "model.backprop": "tutorial",
            "model.init_discard_draws": 0,
            "model.dtype": "float32",
            "optim.lr": lr,
            "data.name": "iris2",
            "data.features": [0, 1],
            "data.normalize": True,
            "train.epochs": 101,
            "tracking.uri": uri,
            "tracking.experiment": EXPERIMENT,
            "tracking.plots": True,
            "seed": seed,
            "reference": False,
        }
        tags = {
            "role": "job",
            "fingerprint": f"bench{num:05d}",
            "sweep_id": "bench",
            "job_num": str(num),
        }
        run_id = start_run(store, f"h{width}-lr{lr:g}-s{seed}", tags, parent)
        series = fake_curves(rng)
        summary = {f"final/{k}": v[-1] for k, v in series.items()}
        summary |= {"epochs_run": 101, "best/loss": min(series["loss"]), "best/epoch": 100}
        log_values(
            store, run_id, params=params, series=series, summary=summary, tags={"diverged": "false"}
        )
        end_run(store, run_id, "FINISHED")
        if (num + 1) % 100 == 0:
            print(f"  created {num + 1} runs ({time.perf_counter() - t0:.0f} s)", flush=True)
    end_run(store, parent, "FINISHED")


CPU: dict[str, float] = {}


def timed(fn, *args, **kw):
    """Result and wall seconds; CPU seconds (this process and its children) go to CPU[fn name].

    On a shared machine wall time includes waiting for a core; CPU time does not.
    """
    t0, c0 = time.perf_counter(), _cpu()
    out = fn(*args, **kw)
    CPU[fn.__name__] = _cpu() - c0
    return out, time.perf_counter() - t0


def _cpu() -> float:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--store", type=Path, default=None, help="folder for the store (kept; reused if present)"
    )
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument(
        "--compare-client",
        action="store_true",
        help="also time reading the curves with one get_metric_history call per series",
    )
    args = ap.parse_args()
    root = args.store or Path(tempfile.mkdtemp(prefix="fnnlab-bench-"))
    db = root / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{db}"
    if not db.exists():
        print(f"creating {args.runs} runs in {db} ...", flush=True)
        _, t_build = timed(build, uri, args.runs)
        print(f"  done in {t_build:.1f} s", flush=True)

    load = os.getloadavg()
    rows = []
    sel, t_select = timed(aggregate.select, uri, EXPERIMENT, "latest")
    rows.append(("select runs (search_runs)", t_select, CPU["select"]))
    ids = [r.info.run_id for r in sel.runs]
    curves, t_curves = timed(aggregate.read_curves, uri, sel.client, ids, method="sql")
    rows.append(
        (
            f"read curves, one SQL query per 500 runs ({len(curves)} values)",
            t_curves,
            CPU["read_curves"],
        )
    )
    del curves
    # The aggregation proper: the curves again, a batch of runs at a time, reduced to the
    # runs frame, the summary, the mean curves and the comparison.
    agg, t_agg = timed(aggregate.aggregate, sel)
    rows.append(
        ("read curves in batches + runs frame + summary + mean curves", t_agg, CPU["aggregate"])
    )
    total = t_select + t_agg
    c_total = CPU["select"] + CPU["aggregate"]
    rows.append(("= aggregation (store -> tables)", total, c_total))
    with tempfile.TemporaryDirectory() as tmp:
        _, t_out = timed(report.write_outputs, agg, Path(tmp))
    rows.append(("CSV + report + 3 plots", t_out, CPU["write_outputs"]))
    rows.append(
        ("= total without logging to the parent", total + t_out, c_total + CPU["write_outputs"])
    )
    # The command a user types, from process start to exit, logging onto the parent included.
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(Path(sys.executable).parent / "fnnlab-aggregate"),
            f"tracking.uri={uri}",
            f"tracking.experiment={EXPERIMENT}",
            f"aggregate.out_dir={tmp}",
        ]
        res, t_cli = timed(subprocess.run, cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(res.stderr)
    rows.append(
        ("fnnlab-aggregate command, start to exit (incl. imports, logging)", t_cli, CPU["run"])
    )
    if args.compare_client:
        _, t_client = timed(aggregate.read_curves, uri, sel.client, ids, method="client")
        rows.append(
            (
                "read curves with get_metric_history x 6 per run (16 threads)",
                t_client,
                CPU["read_curves"],
            )
        )

    print(f"\n{len(sel.runs)} runs, {len(agg.summary)} configurations, store {db}")
    width = max(len(r[0]) for r in rows)
    print(
        f"load average before: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min), {os.cpu_count()} cores"
    )
    print(f"{'phase':<{width}}  wall s   CPU s")
    for name, secs, cpu in rows:
        print(f"{name:<{width}}  {secs:6.2f}  {cpu:6.2f}")
    if args.compare_client:
        print(f"bulk SQL read is {t_client / t_curves:.0f}x faster than per-series calls")


if __name__ == "__main__":
    main()
