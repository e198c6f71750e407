"""Sweep throughput: fnnlab against the naive way and against training alone.

Runs the same 60-run sweep (hidden_dim 8, 32, 128 x lr 0.001, 0.01, 0.1, 1.0 x 5 seeds,
101 epochs, plots on) several ways, each into a fresh SQLite store:

  floor          the training alone (fnnlab's fit) in this process: no Hydra, no tracking
  naive          benchmarks/naive_app.py: Hydra's basic sweeper, mlflow.log_metric per
                 value, a new pyplot figure per plot
  fnnlab         fnnlab-train -m ... as users run it (default launcher, embedded store); for
                 this many jobs the launcher runs them in a worker process per core
  in one process the same with hydra.launcher.n_jobs=1: every job in the sweep's process
  fnnlab joblib  the same with hydra/launcher=joblib (Hydra's joblib launcher) on 2 workers
  baseline       with --baseline COMMIT, the default way at that earlier commit of fnnlab,
                 from a git worktree and a venv with this one's packages (same machine, run)

then the long sweep (hidden_dim 8, 16, 32 x lr 0.001, 0.003, 0.01, 0.03 x 5 seeds, 2,000
epochs, plots on: 12,000 metric values a run) the default way, and at the --baseline commit,
against the store's own inserts of its rows (sqlite3 alone, benchmarks/write_run.py),
then fnnlab on a 1,000-run sweep (5 widths x 4 rates x 50 seeds) and, with --huge 10000,
on a 10,000-run one, against the 1,000-run sweep.

Every sweep is its own process, run as users run it (the fnnlab-train entry point, or
the naive script, with the same command-line overrides). Process start is excluded:
the process first imports what a sweep needs, creates the store's schema (a one-off per
store) and opens it and, for the ways with workers, starts its worker processes and
warms them the same way (imports, opening the store); then it writes a start mark and
runs the sweep. ms per run = (process end - start mark) / runs, so it includes
composing and validating every job, training, tracking, plots and artifacts. Each store
is checked afterwards: every job a FINISHED run with all its per-epoch metric rows.
Peak memory is the sweep process's maximum resident set size.

Each way's 60-run sweep is repeated (--repeat, 3) and the best is shown, with every
repeat beside it: the machine is shared, and other work only makes a sweep slower.

Usage: python benchmarks/sweep_throughput.py [--seeds 5] [--big 1000] [--workers 2] [--repeat 3]
       [--baseline COMMIT]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
HIDDEN = (8, 32, 128)
LRS = (0.001, 0.01, 0.1, 1.0)
EPOCHS = 101


@dataclass
class Result:
    name: str
    runs: int
    ms_per_run: float  # the best of the repeats
    peak_mb: float | None = None
    all_ms: tuple[float, ...] = ()  # every repeat, for the spread

    @property
    def runs_per_s(self) -> float:
        return 1000 / self.ms_per_run


def _warm_worker(uri: str) -> int:
    """Start up a joblib worker as the sweep's own process is started up: import what a job
    imports and open the store (MLflow checks the schema once per process, 0.5-1 s here).
    Its pid proves the sweep reused the worker."""
    import fnnlab.cli  # noqa: F401
    import fnnlab.job  # noqa: F401
    from fnnlab.tracking import open_store

    open_store(uri, "bench")
    return os.getpid()


def child(way: str, uri: str, mark: Path, workers: int, argv: list[str]) -> None:
    """One sweep process. What happens before the mark is process start, not timed:
    the interpreter, the imports a sweep needs, the store's schema (a one-off per store),
    and for joblib the worker processes (started and warmed the same way)."""
    import runpy

    import hydra  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import mlflow

    if way == "naive":
        # Not fnnlab.tracking: that would give naive fnnlab's store settings.
        mlflow.MlflowClient(uri).search_experiments()
    else:
        import fnnlab.cli
        import fnnlab.job  # noqa: F401
        from fnnlab.tracking import open_store

        open_store(uri, "bench")
    pids = []
    if workers > 1:
        from joblib import Parallel, delayed

        pids = sorted(
            set(
                Parallel(n_jobs=workers, backend="loky", max_nbytes=None, mmap_mode="r")(
                    delayed(_warm_worker)(uri) for _ in range(4 * workers)
                )
            )
        )
    mark.write_text(f"{time.time()!r} {' '.join(map(str, pids))}")
    if way == "naive":
        sys.argv = [str(HERE / "naive_app.py"), *argv]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        sys.argv = ["fnnlab-train", *argv]
        fnnlab.cli.train()


def store_check(db: Path, runs: int, experiment: str) -> set[str]:
    """The sweep lost nothing: every job is a FINISHED run with its per-epoch metric rows.
    Returns the pids the jobs ran in."""
    from fnnlab.names import METRICS

    with sqlite3.connect(db) as con:
        exp = con.execute(
            "select experiment_id from experiments where name = ?", (experiment,)
        ).fetchone()[0]
        jobs = con.execute(
            "select run_uuid from runs where experiment_id = ? and status = 'FINISHED' "
            "and run_uuid not in "
            "(select run_uuid from tags where key = 'role' and value = 'sweep')",
            (exp,),
        ).fetchall()
        rows = con.execute(
            f"select count(*) from metrics where key in ({','.join('?' * len(METRICS))}) "
            "and run_uuid in "
            "(select run_uuid from runs where experiment_id = ?)",
            (*METRICS, exp),
        ).fetchone()[0]
        pids = {
            r[0]
            for r in con.execute(
                "select value from tags where key = 'fnnlab.pid' and run_uuid not in "
                "(select run_uuid from tags where key = 'role' and value = 'sweep')"
            )
        }
    # Diverged runs stop early, so at least one row per metric per run.
    if len(jobs) != runs or rows < runs * len(METRICS):
        raise SystemExit(f"{db}: {len(jobs)} FINISHED runs (want {runs}), {rows} metric rows")
    return pids


LONG_HIDDEN = (8, 16, 32)
LONG_LRS = (0.001, 0.003, 0.01, 0.03)
LONG_EPOCHS = 2000


def grid(seeds: int, hidden: tuple[int, ...] = HIDDEN, lrs: tuple[float, ...] = LRS) -> list[str]:
    return [
        f"model.hidden_dim={','.join(map(str, hidden))}",
        f"optim.lr={','.join(map(str, lrs))}",
        f"seed=range({seeds})",
    ]


def long_grid(seeds: int) -> list[str]:
    return [*grid(seeds, LONG_HIDDEN, LONG_LRS), f"train.epochs={LONG_EPOCHS}"]


def repeated(
    name: str, way: str, sweep: list[str], runs: int, work: Path, opts, python: str = sys.executable
) -> Result:
    """The best of opts.repeat sweeps (each into a fresh store): this machine is shared, and
    other work only ever makes a sweep slower. All repeats are reported as the spread."""
    results = [
        sweep_way(name, way, sweep, runs, work / f"repeat-{i}", opts.workers, python)
        for i in range(opts.repeat)
    ]
    best = min(results, key=lambda r: r.ms_per_run)
    best.all_ms = tuple(r.ms_per_run for r in results)
    return best


def baseline_python(commit: str, work: Path) -> str:
    """A Python that imports fnnlab at an earlier commit: a git worktree of it and a venv
    whose path has that worktree's src/ before this venv's packages (the same versions of
    every dependency; no install, and none of this checkout's code or Hydra plugins)."""
    import site

    src = work / f"fnnlab-{commit}"
    subprocess.run(
        ["git", "-C", str(HERE.parent), "worktree", "add", "--detach", str(src), commit],
        check=True,
        capture_output=True,
    )
    venv = work / f"venv-{commit}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (packages,) = (venv / "lib").glob("python*/site-packages")
    (packages / "fnnlab-baseline.pth").write_text(f"{src / 'src'}\n{site.getsitepackages()[0]}\n")
    return str(venv / "bin" / "python")


def remove_worktree(python: str) -> None:
    venv = Path(python).parents[1]
    src = venv.parent / venv.name.replace("venv-", "fnnlab-")
    subprocess.run(
        ["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(src)],
        capture_output=True,
    )


def sweep_way(
    name: str,
    way: str,
    sweep: list[str],
    runs: int,
    work: Path,
    workers: int,
    python: str = sys.executable,
) -> Result:
    """ms per run of one way of sweeping, from the start mark to the end of the process."""
    where = work / f"{way}-{runs}"
    where.mkdir(parents=True)
    db = where / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{db}"
    experiment = "naive" if way == "naive" else "bench"
    extra = {
        "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}"],
        "inprocess": ["hydra.launcher.n_jobs=1"],
    }.get(way, [])
    # The workers the sweep will use are started and warmed before the mark, as this
    # process is: for the default launcher, as many as it chooses for this many jobs (the
    # version before had none).
    warm = workers if way == "joblib" else 0
    if way == "fnnlab" and python == sys.executable:
        from hydra_plugins.fnnlab._core import workers as auto_workers

        warm = auto_workers(None, runs)
    argv = [
        "-m",
        *sweep,
        *extra,
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        f"hydra.sweep.dir={where}/multirun",
    ]
    mark = where / "start"
    cmd = [python, __file__, "--child", way, uri, str(mark), str(warm), "--", *argv]
    # Write back what earlier ways left in the page cache (the naive way's fsyncs above
    # all), so that it is not done during this way's timing.
    os.sync()
    with open(where / "sweep.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=where, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        end = time.time()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"{name} failed, see {where / 'sweep.log'}:\n"
            f"{(where / 'sweep.log').read_text()[-3000:]}"
        )
    start, *pids = mark.read_text().split()
    ran_in = store_check(db, runs, experiment)
    if warm > 1 and not ran_in <= set(pids):
        print(
            f"note: joblib jobs ran in workers {sorted(ran_in)} not all warmed up {pids}",
            file=sys.stderr,
        )
    return Result(name, runs, 1000 * (end - float(start)) / runs, usage.ru_maxrss / 1024)


def floor(seeds: int) -> Result:
    """Training alone: the same fits, nothing else."""
    import torch

    from fnnlab.data import load_iris2
    from fnnlab.model import ScratchFNN
    from fnnlab.train import fit

    torch.set_num_threads(1)
    X, y = load_iris2()
    fit(ScratchFNN(2, 32, seed=0), X, y, lr=0.01, epochs=EPOCHS)  # first-call costs
    start = time.perf_counter()
    n = 0
    for h in HIDDEN:
        for lr in LRS:
            for seed in range(seeds):
                fit(ScratchFNN(2, h, seed=seed), X, y, lr=lr, epochs=EPOCHS)
                n += 1
    return Result("floor (training only)", n, 1000 * (time.perf_counter() - start) / n)


def store_floor(runs: int, repeat: int) -> Result:
    """The long sweep's rows (6 series of LONG_EPOCHS values a run, the latest values, 30
    params, a tag) inserted into a new store's MLflow tables with sqlite3 alone, one
    transaction a run (write_run.store_alone_runs). SQLite takes one writer at a time, so
    no way into one SQLite store can write a sweep faster: every other part of a sweep has
    to fit in what remains of its time or run beside these inserts."""
    from write_run import store_alone_runs

    print(f"the store's inserts alone: {runs} runs ...", file=sys.stderr, flush=True)
    all_ms = tuple(sum(store_alone_runs(LONG_EPOCHS, runs)) / runs for _ in range(repeat))
    return Result("the store's inserts alone (sqlite3)", runs, min(all_ms), None, all_ms)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        way, uri, mark, workers, _, *argv = sys.argv[2:]
        child(way, uri, Path(mark), int(workers), argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per config (60 runs at 5)")
    parser.add_argument("--big", type=int, default=1000, help="runs of the large sweep (0: skip)")
    parser.add_argument(
        "--huge", type=int, default=0, help="runs of a still larger sweep (10000; 0: skip)"
    )
    parser.add_argument("--long", type=int, default=1, help="the long sweep too (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="joblib workers")
    parser.add_argument(
        "--repeat", type=int, default=3, help="sweeps per way of the 60-run table (best is shown)"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="also run the default way at this earlier commit of fnnlab (same machine, same run)",
    )
    opts = parser.parse_args()
    n = len(HIDDEN) * len(LRS) * opts.seeds
    with tempfile.TemporaryDirectory(prefix="fnnlab-bench-") as tmp:
        work = Path(tmp)
        results = [floor(opts.seeds)]
        ways = [
            ("naive (basic sweeper, log_metric, pyplot)", "naive"),
            ("fnnlab (default launcher)", "fnnlab"),
            ("fnnlab, in one process (n_jobs=1)", "inprocess"),
            (f"fnnlab, Hydra's joblib launcher, {opts.workers} workers", "joblib"),
        ]
        for name, way in ways:
            print(f"{name}: {n} runs ...", file=sys.stderr, flush=True)
            results.append(repeated(name, way, grid(opts.seeds), n, work, opts))
        python = baseline_python(opts.baseline, work) if opts.baseline else None
        long_results = []
        try:
            if python:
                name = f"fnnlab at {opts.baseline[:7]} (the version before)"
                print(f"{name}: {n} runs ...", file=sys.stderr, flush=True)
                at = work / "baseline"
                results.append(repeated(name, "fnnlab", grid(opts.seeds), n, at, opts, python))
            if opts.long:
                long_n = len(LONG_HIDDEN) * len(LONG_LRS) * opts.seeds
                long_ways = [("fnnlab (default launcher)", sys.executable)]
                if python:
                    long_ways.append((f"fnnlab at {opts.baseline[:7]}", python))
                for i, (name, py) in enumerate(long_ways):
                    print(f"long sweep, {name}: {long_n} runs ...", file=sys.stderr, flush=True)
                    at = work / f"long-{i}"
                    long_results.append(
                        repeated(name, "fnnlab", long_grid(opts.seeds), long_n, at, opts, py)
                    )
                long_results.append(store_floor(long_n, opts.repeat))
        finally:
            if python:
                remove_worktree(python)
        big = None
        if opts.big:
            # 5 widths x 4 rates x big/20 seeds: the same kind of jobs, many more of them.
            hidden = (8, 16, 32, 64, 128)
            print(f"fnnlab: {opts.big} runs ...", file=sys.stderr, flush=True)
            big = sweep_way(
                "fnnlab",
                "fnnlab",
                grid(opts.big // 20, hidden),
                20 * (opts.big // 20),
                work,
                opts.workers,
            )
        huge = None
        if opts.huge:
            print(f"fnnlab: {opts.huge} runs ...", file=sys.stderr, flush=True)
            huge = sweep_way(
                "fnnlab",
                "fnnlab",
                grid(opts.huge // 20, (8, 16, 32, 64, 128)),
                20 * (opts.huge // 20),
                work / "huge",
                opts.workers,
            )

    floor_r, naive_r, fn = results[0], results[1], results[2]
    print()
    print(
        f"Sweep of {n} runs ({len(HIDDEN)} widths x {len(LRS)} rates x {opts.seeds} seeds, "
        f"{EPOCHS} epochs, plots on), SQLite store, {os.cpu_count()} cores"
    )
    print()
    head = f"| {'way':<42} | {'runs/s':>7} | {'ms/run':>7} | {'x naive':>7} | {'x floor':>7} |"
    print(f"{head} {'ms/run of each repeat':<21} |")
    print(f"|{'-' * 44}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 23}|")
    for r in results:
        spread = ", ".join(f"{ms:.0f}" for ms in r.all_ms) or "-"
        print(
            f"| {r.name:<42} | {r.runs_per_s:7.1f} | {r.ms_per_run:7.1f} | "
            f"{r.runs_per_s / naive_r.runs_per_s:7.1f} | {r.ms_per_run / floor_r.ms_per_run:7.1f} "
            f"| {spread:<21} |"
        )
    print()
    print(
        f"runs/s and ms/run: the best of {opts.repeat} sweeps per way; x naive: throughput "
        "relative to naive; x floor: time per run relative to training alone."
    )
    if opts.baseline:
        before = results[-1]
        print(
            f"fnnlab (default launcher): {before.ms_per_run / fn.ms_per_run:.2f}x the runs/s "
            f"of {before.name}"
        )
    if big is not None:
        print(
            f"fnnlab {big.runs}-run sweep: {big.ms_per_run:.1f} ms/run "
            f"({big.ms_per_run / fn.ms_per_run:.2f}x the {n}-run sweep), "
            f"peak memory {big.peak_mb:.0f} MB ({big.peak_mb / fn.peak_mb:.2f}x the "
            f"{n}-run sweep's {fn.peak_mb:.0f} MB)"
        )
    if huge is not None and big is not None:
        print(
            f"fnnlab {huge.runs}-run sweep: {huge.ms_per_run:.1f} ms/run "
            f"({huge.ms_per_run / big.ms_per_run:.2f}x the {big.runs}-run sweep), "
            f"peak memory {huge.peak_mb:.0f} MB ({huge.peak_mb / big.peak_mb:.2f}x the "
            f"{big.runs}-run sweep's {big.peak_mb:.0f} MB)"
        )
    if long_results:
        print()
        print(
            f"Long sweep of {long_results[0].runs} runs ({len(LONG_HIDDEN)} widths x "
            f"{len(LONG_LRS)} rates x {opts.seeds} seeds, {LONG_EPOCHS} epochs, plots on), "
            "SQLite store"
        )
        print()
        print(f"| {'way':<42} | {'runs/s':>7} | {'ms/run':>7} | {'x before':>8} | each repeat |")
        print(f"|{'-' * 44}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 13}|")
        floor_row, long_results = long_results[-1], long_results[:-1]
        for r in [*long_results, floor_row]:
            spread = ", ".join(f"{ms:.0f}" for ms in r.all_ms)
            ratio = r.runs_per_s / long_results[-1].runs_per_s
            print(
                f"| {r.name:<42} | {r.runs_per_s:7.2f} | {r.ms_per_run:7.1f} | {ratio:8.2f} "
                f"| {spread} |"
            )
        print()
        print(
            "x before: throughput relative to the version before (the second row, if given; "
            "else the first)."
        )
        print(
            "the store's inserts alone: the same rows put into MLflow's tables by sqlite3, "
            "one transaction a run, no MLflow (benchmarks/write_run.py); SQLite takes one "
            "writer at a time, so no sweep into one SQLite store writes faster."
        )
        if opts.baseline:
            before = long_results[-1]
            print(
                f"4x the version before allows {before.ms_per_run / 4:.1f} ms/run, of which the "
                f"store's inserts alone take {floor_row.ms_per_run:.1f}"
            )


if __name__ == "__main__":
    main()
