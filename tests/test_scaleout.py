"""Scaling out and surviving faults, against a real PostgreSQL-backed MLflow server.

The same small sweep runs under each launcher (in-process, joblib, Ray, submitit_local)
into its own experiment; the runs must be complete and identical across launchers.
The fault tests kill or interrupt a real sweep process, or stop the server under it,
and check that running the same command again completes the sweep exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, run_script
from faulty_store import command_env
from server_fixtures import SCRIPT, TrackingServer, free_port

from fnnlab.names import Tag

pytestmark = [pytest.mark.server, pytest.mark.slow]

SWEEP = ["model.hidden_dim=4,8", "seed=0,1", "train.epochs=20"]
LAUNCHERS = {
    "basic": [],
    "fnnlab_workers": ["hydra.launcher.n_jobs=2"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "ray": [
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
    ],
    # submitit_folder as the README gives it: with the plugin's %j a job can fail to start
    # (test_sweep.test_submitits_local_jobs_start_whatever_the_submitting_process_waits).
    "submitit_local": [
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.submitit_folder=${hydra.sweep.dir}/.submitit",
    ],
}
# Jobs slow enough (about a second) that a test can catch one in flight; few metrics. Each
# of its own width: jobs of one shape would train together before any of them tracks its
# run (fnnlab.population), and these tests need training in flight. Widths 2000-2007 at seed
# 0 all train (do not diverge).
SLOW_JOB = ["train.epochs=100"]


def slow_widths(n: int) -> str:
    return f"model.hidden_dim={','.join(str(2000 + i) for i in range(n))}"


ARTIFACTS = {"config.yaml", "weights.pt", "loss.png", "grad_norm.png", "hydra"}


def job_runs(server: TrackingServer, experiment: str, status: str | None = None) -> list:
    query = "tags.role = 'job'" + (f" and attributes.status = '{status}'" if status else "")
    return server.runs(experiment, query)


def in_flight(server: TrackingServer, experiment: str) -> list:
    """Job runs that train: RUNNING and claimed (a run still deciding its claim is deleted,
    not KILLED, when its job is interrupted; fnnlab.claims)."""
    return [
        r for r in job_runs(server, experiment, "RUNNING") if r.data.tags.get(Tag.CLAIMED) == "true"
    ]


def assert_complete(server: TrackingServer, run, epochs: int) -> None:
    """A FINISHED run has every epoch of every series, its summary, artifacts and weights."""
    client = server.client
    assert run.info.status == "FINISHED"
    assert run.data.tags["diverged"] == "false"
    for key in ("loss", "accuracy", "grad_norm/w1", "grad_norm/w2"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(epochs)), key
    assert run.data.metrics["epochs_run"] == epochs
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= ARTIFACTS


def by_fingerprint(server: TrackingServer, experiment: str) -> dict[str, tuple]:
    """What each finished job computed: params, summary metrics and the loss curve."""
    out = {}
    for run in job_runs(server, experiment, "FINISHED"):
        fp = run.data.tags["fingerprint"]
        assert fp not in out, f"two FINISHED runs for {fp}"
        loss = server.client.get_metric_history(run.info.run_id, "loss")
        curve = tuple(m.value for m in sorted(loss, key=lambda m: m.step))
        params = {k: v for k, v in run.data.params.items() if not k.startswith("tracking.")}
        out[fp] = (params, dict(run.data.metrics), curve)
    return out


@pytest.fixture(scope="module")
def launcher_sweeps(tracking_server: TrackingServer, tmp_path_factory) -> dict[str, tuple]:
    """The same sweep once per launcher, each into its own experiment; timings printed."""
    root = tmp_path_factory.mktemp("launchers")
    results = {}
    for name, launcher in LAUNCHERS.items():
        start = time.perf_counter()
        out = run_script(
            "fnnlab-train",
            "-m",
            *tracking_server.overrides(f"launch-{name}", root),
            *launcher,
            *SWEEP,
        )
        results[name] = (out, time.perf_counter() - start)
        print(f"launcher {name:15s} {results[name][1]:6.1f} s for 4 jobs (with start-up)")
    return results


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_every_launcher_finishes_complete_runs(name, launcher_sweeps, tracking_server) -> None:
    out, _ = launcher_sweeps[name]
    assert out.returncode == 0, out.stderr[-3000:]
    runs = job_runs(tracking_server, f"launch-{name}")
    assert len(runs) == 4
    for run in runs:
        assert_complete(tracking_server, run, epochs=20)
    (parent,) = tracking_server.runs(f"launch-{name}", "tags.role = 'sweep'")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/finished"] == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}


@pytest.mark.parametrize("name", [n for n in LAUNCHERS if n != "basic"])
def test_launchers_give_the_same_runs(name, launcher_sweeps, tracking_server) -> None:
    expected = by_fingerprint(tracking_server, "launch-basic")
    got = by_fingerprint(tracking_server, f"launch-{name}")
    assert len(expected) == 4
    assert got == expected


def test_unreachable_server_is_one_line_and_runs_nothing(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    start = time.perf_counter()
    out = run_script(
        "fnnlab-train",
        "-m",
        "tracking=server",
        f"tracking.uri=http://127.0.0.1:{port}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "seed=0,1",
        "train.epochs=5",
        timeout=120,
    )
    print(f"unreachable server: error after {time.perf_counter() - start:.1f} s")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"fnnlab-train: error: tracking.uri=http://127.0.0.1:{port}: ")
    assert "no MLflow tracking server answers" in lines[0]
    # No job started: no job folder, no job output.
    assert not (tmp_path / "sweep" / "0").exists()
    assert "h32-" not in out.stdout


def start_sweep(
    server: TrackingServer, experiment: str, root: Path, *args: str
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [str(BIN / "fnnlab-train"), "-m", *server.overrides(experiment, root), *args]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 300) -> None:
    """Poll the store until condition() holds; fail if the sweep ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"sweep ended before {what}: {proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.05)


def test_sigkill_mid_sweep_then_resume_runs_each_config_once(tracking_server, tmp_path) -> None:
    exp, sweep = "sigkill", [*SLOW_JOB, slow_widths(3)]
    proc = start_sweep(tracking_server, exp, tmp_path, *sweep)
    try:
        wait_for(
            proc,
            lambda: job_runs(tracking_server, exp, "FINISHED") and in_flight(tracking_server, exp),
            "a finished job and one in flight",
        )
    finally:
        proc.kill()  # SIGKILL: nothing in the process gets to clean up
        proc.communicate(timeout=60)
    # The job in flight, and the run before it if its end was still deferred to the
    # next job (fnnlab.job.deferred_ends): SIGKILL leaves both RUNNING.
    orphans = job_runs(tracking_server, exp, "RUNNING")
    assert 1 <= len(orphans) <= 2
    finished_before = len(job_runs(tracking_server, exp, "FINISHED"))

    out = run_script("fnnlab-train", "-m", *tracking_server.overrides(exp, tmp_path), *sweep)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"marked {len(orphans)} RUNNING runs of dead processes KILLED" in out.stdout + out.stderr
    assert f"skipping {finished_before} of 3 jobs" in out.stdout + out.stderr
    for orphan in orphans:
        assert tracking_server.client.get_run(orphan.info.run_id).info.status == "KILLED"
    finished = job_runs(tracking_server, exp, "FINISHED")
    assert len({r.data.tags["fingerprint"] for r in finished}) == len(finished) == 3
    for run in finished:
        assert_complete(tracking_server, run, epochs=100)
    assert not tracking_server.runs(exp, "attributes.status = 'RUNNING'")


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_workers_die_with_a_killed_sweep(tracking_server, tmp_path) -> None:
    exp = "sigkill-workers"
    args = ["hydra.launcher.n_jobs=2", *SLOW_JOB, slow_widths(8)]
    proc = start_sweep(tracking_server, exp, tmp_path, *args)
    workers: set[int] = set()
    try:
        wait_for(
            proc,
            lambda: len(in_flight(tracking_server, exp)) == 2,
            "two jobs in flight in the workers",
        )
        workers = {int(r.data.tags["fnnlab.pid"]) for r in job_runs(tracking_server, exp)}
        assert proc.pid not in workers and len(workers) == 2
        proc.kill()  # SIGKILL: the sweep cannot tell its workers anything
        proc.wait(timeout=60)  # not communicate(): orphaned workers would hold its pipe
        deadline = time.monotonic() + 120
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), "workers outlived the killed sweep"
    finally:
        proc.kill()
        for pid in workers:  # never leave them behind, even when the check failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stdout.close()
        proc.wait(timeout=60)
    # The sweep stopped short: fewer than 8 runs exist, each FINISHED or left RUNNING.
    finished = {r.info.run_id for r in job_runs(tracking_server, exp, "FINISHED")}
    running = job_runs(tracking_server, exp, "RUNNING")
    assert len(finished) + len(running) == len(job_runs(tracking_server, exp)) < 8


@pytest.mark.parametrize("name", ["basic", "fnnlab_workers", "joblib", "ray"])
def test_sigterm_ends_runs_in_flight_and_parent_killed(name, tracking_server, tmp_path) -> None:
    # With Ray, ray.init puts its own SIGTERM handler in the place of fnnlab's (fnnlab.sweep
    # puts it back).
    exp = f"sigterm-{name}"
    launcher = LAUNCHERS[name]
    proc = start_sweep(tracking_server, exp, tmp_path, *launcher, *SLOW_JOB, slow_widths(3))
    try:
        wait_for(proc, lambda: in_flight(tracking_server, exp), "a job in flight")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, output[-3000:]
    assert "fnnlab-train: interrupted" in output
    killed = job_runs(tracking_server, exp, "KILLED")
    if name == "basic":
        # In process: the job itself sees the interrupt and records it, and so does the
        # run before it if the interrupt came while ending that one (fnnlab.job's
        # deferred ends); a complete earlier run otherwise still ends FINISHED.
        assert 1 <= len(killed) <= 2
        assert all(r.data.tags["error"].startswith("KeyboardInterrupt") for r in killed)
    else:
        # Workers go down with the sweep; the sweep ends their runs before it exits. Ray's
        # workers go only once Ray shuts down, at the sweep's exit, and a job in flight may
        # end first: a complete FINISHED run, or KILLED.
        assert (0 if name == "ray" else 1) <= len(killed) <= 2
        assert all("process" in r.data.tags["error"] for r in killed)
        for run in job_runs(tracking_server, exp, "FINISHED"):
            assert_complete(tracking_server, run, epochs=100)
    (parent,) = tracking_server.runs(exp, "tags.role = 'sweep'")
    assert parent.info.status == "KILLED"
    assert not tracking_server.runs(exp, "attributes.status = 'RUNNING'")


@pytest.mark.parametrize(
    "launcher", [[], ["hydra.launcher.n_jobs=2"]], ids=["in-process", "workers"]
)
def test_server_stopped_mid_sweep_stops_it_then_restarted_and_resumed(
    launcher, tracking_server, tmp_path
) -> None:
    exp = f"server-stop-{'workers' if launcher else 'local'}"
    # Enough jobs that each worker, counting its own, has three left when the server goes.
    sweep = ["seed=range(16)", "train.epochs=20", *launcher]
    stopped = tmp_path / "stopped-at"
    # Down after the second job that ends in a process (tests/faulty_store.py): no race.
    stopper = [
        "+hydra.callbacks.fault._target_=faulty_store.StopServerAfter",
        f"+hydra.callbacks.fault.dir={tracking_server.dir}",
        f"+hydra.callbacks.fault.pg_port={tracking_server.pg_port}",
        f"+hydra.callbacks.fault.port={tracking_server.port}",
        "+hydra.callbacks.fault.jobs=2",
        f"+hydra.callbacks.fault.mark={stopped}",
    ]
    command = ["fnnlab-train", "-m", *tracking_server.overrides(exp, tmp_path), *sweep]
    try:
        out = run_script(*command, *stopper, env=command_env(), timeout=600)
        ended = time.time()
    finally:
        tracking_server.start()  # always back up for the tests after this one
    took = ended - float(stopped.read_text())
    last = out.stderr.strip().splitlines()[-1]
    print(f"sweep under a stopped server ended {took:.1f} s after the stop with: {last}")
    assert out.returncode == 1, out.stderr[-3000:]
    assert last.startswith(f"fnnlab-train: error: tracking.uri={tracking_server.url}: the store")
    assert "Traceback" not in out.stderr + out.stdout
    assert not job_runs(tracking_server, exp, "FINISHED")[4:]  # two per process at most

    out = run_script(*command)
    assert out.returncode == 0, out.stderr[-3000:]
    finished = job_runs(tracking_server, exp, "FINISHED")
    assert len({r.data.tags["fingerprint"] for r in finished}) == len(finished) == 16
    for run in finished:
        assert_complete(tracking_server, run, epochs=20)
    assert not tracking_server.runs(exp, "attributes.status = 'RUNNING'")
    (parent,) = tracking_server.runs(exp, "tags.role = 'sweep'")
    assert parent.info.status == "FINISHED"


@pytest.mark.parametrize(
    "env, why",
    [
        ({}, "binding beyond 127.0.0.1 needs FNNLAB_SERVER_EXPOSE=1 and MLflow auth"),
        (
            {"FNNLAB_SERVER_EXPOSE": "1"},
            "set MLFLOW_AUTH_ADMIN_PASSWORD to enable MLflow's basic auth",
        ),
    ],
)
def test_server_script_refuses_other_addresses_without_auth(env, why, tmp_path) -> None:
    folder = tmp_path / "server"
    full_env = {
        **os.environ,
        "FNNLAB_SERVER_DIR": str(folder),
        "FNNLAB_SERVER_HOST": "0.0.0.0",
        **env,
    }
    full_env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    out = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert out.stderr.strip() == f"server.sh: error: FNNLAB_SERVER_HOST=0.0.0.0: {why}"
    assert not folder.exists()  # refused before anything was created or started


def test_aggregate_reads_the_sweep_from_the_server(launcher_sweeps, tracking_server, tmp_path):
    """fnnlab-aggregate works against the PostgreSQL-backed server with the same overrides."""
    import pandas as pd

    experiment = "launch-basic"
    proc = run_script(
        "fnnlab-aggregate",
        *tracking_server.overrides(experiment, tmp_path)[:3],
        f"aggregate.out_dir={tmp_path}/agg",
    )
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(tmp_path / "agg" / "summary.csv").set_index("hidden_dim")
    finals: dict[int, list[float]] = {}
    for run in job_runs(tracking_server, experiment, "FINISHED"):
        h = int(run.data.params["model.hidden_dim"])
        finals.setdefault(h, []).append(run.data.metrics["final/loss"])
    assert sorted(finals) == sorted(summary.index) == [4, 8]
    for h, values in finals.items():
        assert summary.loc[h, "runs"] == len(values) == 2
        assert summary.loc[h, "loss_mean"] == pytest.approx(sum(values) / len(values), rel=1e-12)
