"""End-to-end multiruns into a real SQLite MLflow store, checked through MlflowClient."""

from __future__ import annotations

import itertools
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, run_artifacts, run_command, run_in_process, run_other_app, run_script
from faulty_store import command_env

from fnnlab import cli, job, sweep, tracking
from fnnlab.names import Tag
from fnnlab.train import METRICS


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for info in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def split_runs(store):
    runs = store.runs()
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") == "job"]
    assert len(parents) + len(children) == len(runs)
    return parents, children


@pytest.mark.slow
def test_multirun_makes_one_parent_and_complete_children(store, tmp_path):
    proc = run_command(
        cli.train, "-m", "model.hidden_dim=4,8", "optim.lr=0.01,0.1", *store.overrides()
    )
    assert proc.returncode == 0, proc.stderr
    parents, children = split_runs(store)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/finished"] == 4 and parent.data.metrics["sweep/jobs"] == 4
    assert "model.hidden_dim=4,8" in parent.data.tags["mlflow.note.content"]

    client = store.client
    seen = set()
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert tags["diverged"] == "false" and len(tags["fingerprint"]) == 16
        h, lr = int(params["model.hidden_dim"]), float(params["optim.lr"])
        seen.add((h, lr, int(tags["job_num"])))
        assert run.info.run_name == f"h{h}-lr{lr:g}-s0"
        assert params["seed"] == "0" and params["train.epochs"] == "101"
        assert (
            params["model.backprop"] == "tutorial"
            and params["tracking.experiment"] == store.experiment
        )
        for name in METRICS:
            history = client.get_metric_history(run.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(101)), name
        assert run.data.metrics["final/loss"] == run.data.metrics["loss"]
        assert artifact_paths(client, run.info.run_id) == run_artifacts(run)
        weights = torch.load(
            client.download_artifacts(run.info.run_id, "weights.pt", str(tmp_path))
        )
        assert weights["w1"].shape == (2, h) and weights["w2"].shape == (h, 1)
    assert {(h, lr) for h, lr, _ in seen} == set(itertools.product([4, 8], [0.01, 0.1]))
    assert sorted(n for _, _, n in seen) == [0, 1, 2, 3]


@pytest.mark.slow
def test_failing_and_diverging_jobs_in_one_sweep(store, monkeypatch, capsys):
    real_train = job.train_model

    def fail_one(cfg, *args, **kwargs):
        if cfg.model.hidden_dim == 8 and cfg.optim.lr == 0.01:
            raise RuntimeError("injected fault")
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(job, "train_model", fail_one)
    args = [
        "-m",
        "model.hidden_dim=4,8",
        "optim.lr=0.01,1000",
        "train.epochs=30",
        *store.overrides(),
    ]
    assert run_in_process(monkeypatch, cli.train, *args) == 1

    parents, children = split_runs(store)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert parents[0].data.tags["error"] == "RuntimeError: injected fault"  # shown in the UI
    assert parents[0].data.metrics["sweep/failed"] == 1
    assert parents[0].data.metrics["sweep/diverged"] == 2
    # Every count, zeros too: a metric keeps its last value, an earlier invocation's too.
    assert parents[0].data.metrics["sweep/running"] == 0
    # The answer, where people look, says it is about part of the sweep; and so does
    # fnnlab-aggregate's, made again from the FAILED parent's counts.
    incomplete = "incomplete: 1 of the sweep's 4 jobs have no finished run"
    which = "configurations with no finished run: hidden_dim=8 lr=0.01"
    assert incomplete in parents[0].data.tags["mlflow.note.content"]
    assert which in parents[0].data.tags["mlflow.note.content"]
    out = capsys.readouterr().out
    assert incomplete in out and f"\n{which}\n" in out
    again = [f"tracking.uri={store.uri}", f"tracking.experiment={store.experiment}"]
    assert run_in_process(monkeypatch, cli.aggregate, *again, f"hydra.run.dir={store.root}/a") == 0
    out = capsys.readouterr().out
    assert incomplete in out and f"\n{which}\n" in out
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {
        "h4-lr0.01-s0-epochs30",
        "h8-lr0.01-s0-epochs30",
        "h4-lr1000-s0-epochs30",
        "h8-lr1000-s0-epochs30",
    }

    failed = by_name["h8-lr0.01-s0-epochs30"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"] == "RuntimeError: injected fault"
    assert (failed.data.params["model.hidden_dim"], failed.data.params["optim.lr"]) == ("8", "0.01")
    assert by_name["h4-lr0.01-s0-epochs30"].info.status == "FINISHED"
    assert by_name["h4-lr0.01-s0-epochs30"].data.tags["diverged"] == "false"

    client = store.client
    for name in ("h4-lr1000-s0-epochs30", "h8-lr1000-s0-epochs30"):
        run = by_name[name]
        assert run.info.status == "FINISHED" and run.data.tags["diverged"] == "true"
        stop = int(run.data.tags["diverged_at"])
        assert 0 < stop < 30
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in losses) == list(range(stop))
        assert run.data.metrics["epochs_run"] == stop

    # The same command again resumes: only the failed job runs, and the parent finishes.
    monkeypatch.setattr(job, "train_model", real_train)
    assert run_in_process(monkeypatch, cli.train, *args) == 0
    parents, children = split_runs(store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "error" not in parents[0].data.tags
    assert "incomplete" not in parents[0].data.tags["mlflow.note.content"]
    assert "no finished run" not in parents[0].data.tags["mlflow.note.content"]
    assert parents[0].data.metrics["sweep/skipped"] == 3
    statuses = sorted((r.info.run_name, r.info.status) for r in children)
    assert statuses == [
        ("h4-lr0.01-s0-epochs30", "FINISHED"),
        ("h4-lr1000-s0-epochs30", "FINISHED"),
        ("h8-lr0.01-s0-epochs30", "FAILED"),
        ("h8-lr0.01-s0-epochs30", "FINISHED"),
        ("h8-lr1000-s0-epochs30", "FINISHED"),
    ]


def test_a_rerun_clears_the_parents_error_also_when_another_did_first(store, monkeypatch):
    """Two invocations reopening a FAILED parent may both find its error tag: the one whose
    delete finds it gone goes on (it stopped Hydra's callback, and the sweep ran with no
    parent, which stayed RUNNING)."""
    from mlflow import MlflowClient

    real_train, real_delete = job.train_model, MlflowClient.delete_tag

    def fail_one(cfg, *args, **kwargs):
        if cfg.seed == 1:
            raise RuntimeError("injected fault")
        return real_train(cfg, *args, **kwargs)

    def deleted_by_another_first(client, run_id, key):
        real_delete(client, run_id, key)
        real_delete(client, run_id, key)  # this invocation's, after the other's

    args = ["-m", "seed=0,1", "train.epochs=5", "tracking.plots=false", *store.overrides()]
    monkeypatch.setattr(job, "train_model", fail_one)
    assert run_in_process(monkeypatch, cli.train, *args) == 1
    monkeypatch.setattr(job, "train_model", real_train)
    monkeypatch.setattr(MlflowClient, "delete_tag", deleted_by_another_first)
    assert run_in_process(monkeypatch, cli.train, *args) == 0
    (parent,), _ = split_runs(store)
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags


def test_an_error_past_the_sweeps_checks_stops_it_before_any_job(store, monkeypatch, capsys):
    """The store failing while the parent run is opened: one line, exit 1, no job run.
    Hydra turns an error of a callback into a warning, and ran the jobs with no parent."""
    from mlflow.exceptions import MlflowException

    def store_fails(*args, **kwargs):
        raise MlflowException("injected store fault")

    monkeypatch.setattr(sweep, "open_parent", store_fails)
    args = ["-m", "seed=0,1", "train.epochs=5", "tracking.plots=false", *store.overrides()]
    assert run_in_process(monkeypatch, cli.train, *args) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "fnnlab-train: error: tracking store: injected store fault"
    assert store.runs() == []


def test_single_run_records_the_reference_deviation(store):
    proc = run_command(cli.train, "experiment=reference", *store.overrides())
    assert proc.returncode == 0, proc.stderr
    (run,) = store.runs()
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.metrics["reference/max_abs_dev"] <= 1e-6
    assert run.info.run_name == "h32-lr0.001-s2-init_discard_draws1"
    assert "loss.png" in artifact_paths(store.client, run.info.run_id)


@pytest.mark.slow
def test_any_sweeper_gets_the_parent_run_and_summary(store):
    """hydra/sweeper=basic: the parent run, its children and the closing line come from the
    sweep callback, not from the fnnlab sweeper."""
    args = ["-m", "hydra/sweeper=basic", "model.hidden_dim=4,8", "train.epochs=20"]
    proc = run_command(cli.train, *args, *store.overrides())
    assert proc.returncode == 0, proc.stderr
    parents, children = split_runs(store)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/finished"] == 2 and parent.data.metrics["sweep/jobs"] == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["sweep_id"] == parent.data.tags["sweep_id"]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("[sweep] job ") for line in lines) == 2
    (done,) = [line for line in lines if line.startswith("[sweep] ") and " done in " in line]
    assert done.startswith(f"[sweep] {parent.data.tags['sweep_id']} done in ")
    assert parent.info.run_id in done
    # The sweep's answer follows, with any sweeper, ending with where to look.
    after = lines[lines.index(done) + 1 :]
    # One seed per configuration: nothing can be told from seed noise, and it says so.
    assert any(line.startswith("no leader: no configuration has 2") for line in after), after
    assert any(line.startswith("parent run:") and parent.info.run_id in line for line in after)
    assert parent.data.tags["aggregate.leader"] == ""
    # A bad job of the sweep stops it before anything is written, with any sweeper.
    before = store.db_bytes()
    bad = run_script(
        "fnnlab-train", "-m", "hydra/sweeper=basic", "model.hidden_dim=4,0", *store.overrides()
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "fnnlab-train: error: model.hidden_dim=0: must be at least 1"
    ]
    assert store.db_bytes() == before


def test_a_failed_job_under_the_basic_sweeper_ends_the_parent_failed(store, monkeypatch):
    """Hydra's basic sweeper raises the first failed job's error when its batch ends, so the
    sweep never reaches its end: the parent ends FAILED all the same, not KILLED as after an
    interrupt, counts the job that never ran, and nothing is left for the exit."""
    real_train = job.train_model

    def fail_one(cfg, *args, **kwargs):
        if cfg.seed == 1:
            raise RuntimeError("injected fault")
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(job, "train_model", fail_one)
    args = ["-m", "hydra/sweeper=basic", "hydra.sweeper.max_batch_size=1", "seed=0,1,2"]
    args += ["hydra.launcher.n_jobs=1", "train.epochs=20", "tracking.plots=false"]
    with pytest.raises(RuntimeError, match="injected fault"):
        run_in_process(monkeypatch, cli.train, *args, *store.overrides())
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["FAILED"]
    assert parents[0].data.tags["error"] == "RuntimeError: injected fault"
    metrics = parents[0].data.metrics
    assert (metrics["sweep/finished"], metrics["sweep/failed"], metrics["sweep/missing"]) == (
        1,
        2,
        1,
    )
    assert sorted((c.data.params["seed"], c.info.status) for c in children) == [
        ("0", "FINISHED"),
        ("1", "FAILED"),
    ]
    assert sweep._open == []


def test_the_error_line_comes_before_the_parent_is_closed(store, monkeypatch, capsys):
    """Closing the parent after a job's error writes to the store, which may be slow to
    answer (a hung tracking server): the command's one line is printed before that, and the
    parent still ends FAILED."""
    from mlflow.exceptions import MlflowException

    real_train, real_close = job.train_model, sweep.close_open
    printed_before_closing = []

    def fail_one(cfg, *args, **kwargs):
        if cfg.seed == 1:
            raise MlflowException("injected store fault")
        return real_train(cfg, *args, **kwargs)

    def close_open(after_error, error=None):
        printed_before_closing.append(capsys.readouterr().err)
        real_close(after_error, error)

    monkeypatch.setattr(job, "train_model", fail_one)
    monkeypatch.setattr(sweep, "close_open", close_open)
    args = ["-m", "hydra/sweeper=basic", "seed=0,1", "hydra.launcher.n_jobs=1"]
    args += ["train.epochs=20", "tracking.plots=false", *store.overrides()]
    assert run_in_process(monkeypatch, cli.train, *args) == 1
    line = "fnnlab-train: error: tracking store: injected store fault\n"
    assert printed_before_closing[0].endswith(line)
    assert line not in capsys.readouterr().err  # printed once
    parents, _ = split_runs(store)
    assert [p.info.status for p in parents] == ["FAILED"]


@pytest.mark.parametrize(
    "launcher",
    [
        [],  # fnnlab's, its jobs trained together in the sweep's process
        ["hydra.launcher.n_jobs=2"],  # fnnlab's, in worker processes
        ["hydra/launcher=basic"],
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        pytest.param(
            [
                "hydra/launcher=ray",
                "+hydra.launcher.ray.init.num_cpus=2",
                "+hydra.launcher.ray.init.include_dashboard=false",
            ],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["fnnlab", "fnnlab-workers", "basic", "joblib", "ray"],
)
def test_a_jobs_folder_that_cannot_be_made_stops_the_sweep_in_one_line(store, tmp_path, launcher):
    """A file where job 1's .hydra folder goes, in a sweep folder that exists: the sweep's
    own folder passes its check, and the job's is made by the launcher, outside the job.
    Hydra's traceback left the parent KILLED without a word; now one line names the folder's
    keys and the path, and the parent ends FAILED with it as its error. Job 0's run, if it
    ran, is complete."""
    folder = tmp_path / "sweep"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / ".hydra").write_text("not a folder")
    args = ["-m", "seed=0,1", "train.epochs=5", "tracking.plots=false", *launcher]
    proc = run_script("fnnlab-train", *args, *store.overrides(), f"hydra.sweep.dir={folder}")
    line = (
        f"fnnlab-train: error: hydra.sweep.dir={folder}, hydra.sweep.subdir=${{hydra.job.num}}: "
        f"cannot make or write {folder}/1/.hydra: it is a file; the sweep stopped"
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == line, proc.stderr
    assert "Traceback" not in proc.stderr
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["FAILED"]
    assert parents[0].data.tags["error"] == line.removeprefix("fnnlab-train: error: ")
    assert {c.data.params["seed"] for c in children} <= {"0"}
    assert all(c.info.status == "FINISHED" for c in children)
    assert (folder / "1" / ".hydra").read_text() == "not a folder"


def readme_submitit_local_launcher() -> list[str]:
    """The launcher overrides of the README's submitit_local command."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index("fnnlab-train -m hydra/launcher=submitit_local")
    command = text[start : text.index("\n", text.index("seed=", start))].replace("\\\n", " ")
    return [a for a in shlex.split(command) if a.startswith(("hydra/launcher=", "hydra.launcher."))]


def controller_started(paths) -> None:
    """Wait until submitit's controller for this job has opened its log, or has exited."""
    stat = Path(f"/proc/{paths.job_id}/stat")
    deadline = time.monotonic() + 120  # a bound so a broken controller fails the test, not hangs
    while not paths.stdout.exists():
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return
        assert time.monotonic() < deadline, f"controller {paths.job_id} neither logs nor exits"
        time.sleep(0.01)


def test_submitits_local_jobs_start_whatever_the_submitting_process_waits(
    store, tmp_path, monkeypatch
):
    """submitit starts a local job's controller, then makes the job's folder; a controller that
    opens its log in it first exits, and the sweep fails with "has not produced any output"
    (CI saw it once). Held here until each controller has logged or exited, the README's
    command (submitit_folder without %j) still finishes every run. (With the plugin's
    default folder the same test failed with submitit's error, tried when it was written.)"""
    from submitit.core.utils import JobPaths

    move = JobPaths.move_temporary_file

    def after_the_controller(paths, *args, **kwargs):
        controller_started(paths)
        return move(paths, *args, **kwargs)

    monkeypatch.setattr(JobPaths, "move_temporary_file", after_the_controller)
    launcher = readme_submitit_local_launcher()
    assert any(a.startswith("hydra.launcher.submitit_folder=") for a in launcher), launcher
    args = ["-m", *launcher, "hydra.launcher.timeout_min=10", "seed=0,1", "train.epochs=5"]
    args += ["tracking.plots=false", *store.overrides(), f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert run_in_process(monkeypatch, cli.train, *args) == 0
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted((c.data.params["seed"], c.info.status) for c in children) == [
        ("0", "FINISHED"),
        ("1", "FINISHED"),
    ]


def test_only_what_no_job_raised_is_named_as_the_sweep_folders(store, tmp_path):
    """A folder where Hydra's basic sweeper writes multirun.yaml is the sweep's, not a job's; a
    job's own error about a file in its folder (Hydra's basic sweeper raises it) stays that
    job's, as the parent's error too (helper-42)."""
    folder = tmp_path / "sweep"
    (folder / "multirun.yaml").mkdir(parents=True)
    args = ["-m", "hydra/sweeper=basic", "seed=0,1", "train.epochs=5", *store.overrides()]
    proc = run_command(cli.train, *args, f"hydra.sweep.dir={folder}")
    assert proc.returncode == 1
    line = (
        f"hydra.sweep.dir={folder}, hydra.sweep.subdir=${{hydra.job.num}}: cannot make or "
        f"write {folder}/multirun.yaml: Is a directory; the sweep stopped"
    )
    assert proc.stderr.strip().splitlines()[-1] == f"fnnlab-train: error: {line}", proc.stderr
    parents, children = split_runs(store)
    assert [(p.info.status, p.data.tags["error"]) for p in parents] == [("FAILED", line)]
    assert children == []

    folder = tmp_path / "sweep2"
    (folder / "1" / "artifacts" / "config.yaml").mkdir(parents=True)
    args = ["-m", "hydra/sweeper=basic", "seed=0,1", "model.hidden_dim=4", "train.epochs=5"]
    proc = run_command(cli.train, *args, *store.overrides(), f"hydra.sweep.dir={folder}")
    assert proc.returncode == 1
    assert "cannot make or write" not in proc.stderr, proc.stderr
    parent = [
        p for p in store.runs("tags.role = 'sweep'") if p.info.run_id != parents[0].info.run_id
    ]
    failed = [c for c in store.runs("tags.role = 'job'") if c.info.status == "FAILED"]
    assert len(parent) == 1 and len(failed) == 1
    error = failed[0].data.tags["error"]
    assert error.startswith("IsADirectoryError: ") and "config.yaml" in error, error
    assert (parent[0].info.status, parent[0].data.tags["error"]) == ("FAILED", error)


@pytest.mark.slow
def test_a_job_failed_in_a_worker_under_the_basic_sweeper_ends_the_parent_failed(store):
    """The job's error was not seen in the sweep's process: the parent ends FAILED from the
    failed run's error tag."""
    args = ["-m", "hydra/sweeper=basic", "model.hidden_dim=4,8", "hydra.launcher.n_jobs=2"]
    args += ["train.epochs=20", *store.overrides()]
    fault = ["+hydra.callbacks.fault._target_=faulty_store.FailFiguresOf"]
    fault += ["+hydra.callbacks.fault.prefix=h8-"]
    out = run_script("fnnlab-train", *args, *fault, env=command_env())
    assert out.returncode == 1, out.stderr[-3000:]
    assert "RuntimeError: injected fault in h8-" in out.stderr
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["FAILED"]
    statuses = sorted((c.data.params["model.hidden_dim"], c.info.status) for c in children)
    assert statuses == [("4", "FINISHED"), ("8", "FAILED")]
    failed = next(c for c in children if c.info.status == "FAILED")
    assert parents[0].data.tags["error"] == failed.data.tags["error"]  # seen only in the store
    assert failed.data.tags[Tag.PID] != parents[0].data.tags[Tag.PID]  # it ran in a worker


@pytest.mark.slow
def test_sigterm_ends_the_run_in_flight_and_the_parent_killed(store):
    """SIGTERM mid-sweep (in-process launcher): the finished runs stay complete, the run in
    flight and the parent end KILLED, the command exits 130."""
    # Two shapes (jobs of one shape would train together before tracking, fnnlab.population):
    # the second trains for far longer than the test waits, so the signal finds it training
    # however fast the machine (three jobs of 300 epochs each could all end between two
    # looks at the store).
    # No memory limit: a run's estimate counts every epoch, not those run before the signal.
    slow = ["model.hidden_dim=2000", "train.epochs=300,5000000", "tracking.plots=false"]
    slow += ["limits.memory_gb=inf"]
    proc = subprocess.Popen(
        [str(BIN / "fnnlab-train"), "-m", *slow, *store.overrides()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The first run's line: it finished (and the store's schema exists, so reading it
        # here does not race the sweep's first use of it). Then wait for the second run.
        for line in proc.stdout:
            if line.startswith("h2000-"):
                break
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            # RUNNING and claimed: training (a run still claiming ends "while claiming").
            statuses = sorted(
                r.info.status + ("" if r.data.tags.get("fnnlab.claimed") else " unclaimed")
                for r in store.runs("tags.role = 'job'")
            )
            if statuses == ["FINISHED", "RUNNING"]:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the sweep did not get to its second run: {statuses}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    parents, children = split_runs(store)
    assert parents[0].info.status == "KILLED"
    statuses = sorted((r.data.tags["job_num"], r.info.status) for r in children)
    assert statuses == [("0", "FINISHED"), ("1", "KILLED")]
    killed = next(r for r in children if r.info.status == "KILLED")
    assert killed.data.tags["error"] == "KeyboardInterrupt: "


def test_an_interrupt_inside_the_database_driver_ends_the_run_killed_at_once(store, monkeypatch):
    """Ctrl-C landing in the driver's call that writes a run's values: SQLAlchemy drops that
    connection, which SQLite keeps open, with its write lock, while the interrupt's
    traceback holds its cursor. The run still ends KILLED, and the interrupt goes on (exit
    130): not the store's "database is locked" in its place, the sweep going on."""
    from sqlalchemy.engine.default import DefaultDialect

    real = DefaultDialect.do_executemany
    interrupts = [KeyboardInterrupt]

    def interrupted(self, cursor, statement, *args, **kwargs):
        real(self, cursor, statement, *args, **kwargs)
        if interrupts and statement.startswith("INSERT INTO metrics"):
            raise interrupts.pop()

    monkeypatch.setattr(DefaultDialect, "do_executemany", interrupted)
    # Without the fix, each write waits out SQLite's busy timeout once, then fails.
    monkeypatch.setattr(tracking, "LOCK_RETRY_SECONDS", 0.0)
    args = ["-m", "seed=0,1", "hydra.launcher.n_jobs=1", "train.epochs=20", "tracking.plots=false"]
    assert run_in_process(monkeypatch, cli.train, *args, *store.overrides()) == 130
    assert not interrupts
    (run,) = store.runs("tags.role = 'job'")
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "KeyboardInterrupt: "
    assert "do_executemany" in run.data.tags["error.traceback"]
    (parent,) = store.runs("tags.role = 'sweep'")
    assert parent.info.status == "KILLED"  # by what the process's exit does (as_a_command)


# fnnlab-train with Ctrl-C landing in the driver's call that writes the parent's counts at
# the sweep's end; a write that meets a lock fails at once.
INTERRUPTED_PARENT_WRITE = """
from sqlalchemy.engine.default import DefaultDialect
from fnnlab import cli, tracking

real = DefaultDialect.do_executemany
interrupts = [KeyboardInterrupt]

def interrupted(self, cursor, statement, parameters, *args):
    real(self, cursor, statement, parameters, *args)
    counts = statement.startswith("INSERT INTO metrics") and "sweep/" in str(parameters[0])
    if interrupts and counts:
        raise interrupts.pop()

DefaultDialect.do_executemany = interrupted
tracking.LOCK_RETRY_SECONDS = 0.0
cli.train()
"""


@pytest.mark.slow
def test_an_interrupt_inside_the_database_driver_at_the_sweeps_end_ends_it_killed(store):
    """The same in the sweep's own write: its clean-up at exit still ends the parent KILLED."""
    args = ["-m", "seed=0,1", "train.epochs=20", "tracking.plots=false", *store.overrides()]
    args += ["hydra.sweeper.summarize=false"]
    proc = run_script("python", "-c", INTERRUPTED_PARENT_WRITE, *args)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "could not end parent run" not in proc.stderr
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]


# fnnlab-train under the basic sweeper with a failing job, and Ctrl-C landing in the
# parent's close after that error.
INTERRUPTED_CLOSE_AFTER_ERROR = """
from fnnlab import cli, job, sweep

real_train, real_counts = job.train_model, sweep.sweep_counts
interrupts = [KeyboardInterrupt]

def fail_one(cfg, *args, **kwargs):
    if cfg.seed == 1:
        raise RuntimeError("injected fault")
    return real_train(cfg, *args, **kwargs)

def interrupted(*args, **kwargs):
    if interrupts:
        raise interrupts.pop()
    return real_counts(*args, **kwargs)

job.train_model, sweep.sweep_counts = fail_one, interrupted
cli.train()
"""


@pytest.mark.slow
def test_an_interrupt_while_closing_after_an_error_leaves_the_parent_to_the_exit(store):
    """Ctrl-C during the writes that close the parent after a job's error (a slow store,
    say): the command exits interrupted and its exit still ends the parent KILLED."""
    args = ["-m", "hydra/sweeper=basic", "seed=0,1", "hydra.launcher.n_jobs=1"]
    args += ["train.epochs=20", "tracking.plots=false", *store.overrides()]
    proc = run_script("python", "-c", INTERRUPTED_CLOSE_AFTER_ERROR, *args)
    assert proc.returncode == 130, proc.stderr[-3000:]
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert sorted((c.data.params["seed"], c.info.status) for c in children) == [
        ("0", "FINISHED"),
        ("1", "FAILED"),
    ]


# fnnlab-train with the sweep's answer interrupted, as by Ctrl-C while the answer is made.
INTERRUPTED_ANSWER = """
from fnnlab import cli, sweep

def interrupted(self, counts):
    raise KeyboardInterrupt

sweep.Sweep.answer = interrupted
cli.train()
"""


@pytest.mark.slow
def test_an_interrupt_during_the_answer_ends_the_parent_killed(store):
    """After the jobs, until the parent is closed: the jobs' runs stay FINISHED, the parent
    ends KILLED (not RUNNING with its process gone), and a rerun closes it FINISHED."""
    args = ["-m", "seed=0,1", "train.epochs=20", "tracking.plots=false", *store.overrides()]
    proc = run_script("python", "-c", INTERRUPTED_ANSWER, *args)
    assert proc.returncode == 130, proc.stderr[-3000:]
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    rerun = run_command(cli.train, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 2


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_sweep_in_one_line_and_a_rerun_ends_it(store):
    """One of two workers SIGKILLed after its first job (as by the OOM killer): the command
    says so in one line and exits 1, no run stays RUNNING, and a rerun finishes the sweep.
    (Whether the other worker has a run in flight then depends on timing; a run left
    RUNNING by a dead process is marked KILLED: tests/test_scaleout.py.)"""
    args = ["-m", "seed=range(4)", "optim.lr=0.1,1", "train.epochs=20", "tracking.plots=false"]
    args += ["hydra.launcher.n_jobs=2", *store.overrides()]
    kill = ["+hydra.callbacks.fault._target_=faulty_store.KillWorkerAfter"]
    kill += ["+hydra.callbacks.fault.jobs=1", f"+hydra.callbacks.fault.once={store.root}/killed"]
    out = run_script("fnnlab-train", *args, *kill, env=command_env())
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert (
        "fnnlab-train: error: a worker process ended in the middle of its jobs (exit code "
        "SIGKILL(-9)); the sweep stopped. Rerun the same command to run the jobs that did "
        "not finish"
    ) in out.stderr.splitlines()
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert "RUNNING" not in {c.info.status for c in children}
    rerun = run_script("fnnlab-train", *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["FINISHED"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted((c.data.params["seed"], c.data.params["optim.lr"]) for c in finished) == sorted(
        (str(s), lr) for s in range(4) for lr in ("0.1", "1.0")
    )


@pytest.mark.slow
def test_a_worker_that_dies_under_hydras_joblib_launcher_ends_the_parent_killed(store):
    """loky's error is said in one line, as under the fnnlab launcher (exit status 1), and
    the parent ends KILLED, as after an interrupt: no job failed."""
    args = ["-m", "seed=range(4)", "train.epochs=20", "tracking.plots=false"]
    args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *store.overrides()]
    kill = ["+hydra.callbacks.fault._target_=faulty_store.KillWorkerAfter"]
    kill += ["+hydra.callbacks.fault.jobs=1", f"+hydra.callbacks.fault.once={store.root}/killed"]
    out = run_script("fnnlab-train", *args, *kill, env=command_env())
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "fnnlab-train: error: a worker process ended in the middle of its jobs (exit code "
        "SIGKILL(-9)); the sweep stopped. Rerun the same command to run the jobs that did "
        "not finish"
    )
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert "RUNNING" not in {c.info.status for c in children}


@pytest.mark.slow
def test_a_submitit_job_that_dies_stops_the_sweep_in_one_line(store):
    """submitit_local's error for a job process killed after its job (no result to read)
    was a 40-line traceback (helper-61); the other launchers' is one line, exit 1."""
    args = ["-m", "seed=0,1", "train.epochs=20", "tracking.plots=false"]
    args += [*readme_submitit_local_launcher(), *store.overrides()]
    kill = ["+hydra.callbacks.fault._target_=faulty_store.KillWorkerAfter"]
    kill += ["+hydra.callbacks.fault.jobs=1", f"+hydra.callbacks.fault.once={store.root}/killed"]
    out = run_script("fnnlab-train", *args, *kill, env=command_env())
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("fnnlab-train: error: a submitit job (job "), last
    assert last.endswith(
        ") ended without its result (killed, out of memory or crashed); the sweep stopped. "
        "Rerun the same command to run the jobs that did not finish"
    ), last
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["KILLED"]


def test_a_submitit_job_past_its_time_limit_is_said_in_one_line(capsys):
    """submitit raises FailedJobError, a kind of UncompletedJobError, for a job past
    hydra.launcher.timeout_min: it was left to its traceback (helper-62). And for any other
    error the job raised outside fnnlab's task: its last line (helper-63: named as a
    timeout or a kill, a rerun would fail alike)."""
    from submitit.core.utils import FailedJobError

    for trace, said in (
        (
            "UncompletedJobError: Job not requeued because: timed-out and not checkpointable.",
            "a submitit job ran past hydra.launcher.timeout_min; the sweep stopped. Rerun the "
            "same command to run the jobs that did not finish",
        ),
        (
            "Traceback ...\nFileExistsError: [Errno 17] File exists: '/s/sw/1'\n",
            "a submitit job failed: FileExistsError: [Errno 17] File exists: '/s/sw/1'; the "
            "sweep stopped",
        ),
    ):
        exc = FailedJobError(f"Job (task=0) failed during processing with trace:\n{trace}")
        assert cli.report("fnnlab-train", exc, False) == 1
        assert capsys.readouterr().err == f"fnnlab-train: error: {said}\n"


@pytest.mark.slow
def test_a_job_past_hydras_joblib_timeout_stops_the_sweep_in_one_line(store):
    """joblib ends every worker once a job runs past hydra.launcher.timeout: one line that
    names the setting, exit status 1, the runs in flight KILLED and the parent FAILED (a job
    failed: it timed out, as a job submitit times out fails). The jobs' hundred million
    epochs take hours on any machine (a million took minutes here, helper-77: a machine a few
    times faster ended them inside the timeout); the timeout, 30 seconds, leaves the workers
    time to start and make their runs. No memory limit: a run's estimate counts every epoch."""
    args = ["-m", "seed=0,1", "train.epochs=100000000", "tracking.log_every=100000000"]
    args += ["limits.memory_gb=inf"]
    args += ["tracking.plots=false", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    out = run_script("fnnlab-train", *args, "hydra.launcher.timeout=30", *store.overrides())
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "fnnlab-train: error: hydra.launcher.timeout=30: a job ran longer, and joblib "
        "stopped the sweep (its runs in flight end KILLED). Rerun with a longer timeout, or "
        "null for none: the jobs that finished are skipped"
    )
    parents, children = split_runs(store)
    assert [p.info.status for p in parents] == ["FAILED"]
    assert parents[0].data.tags["error"] == out.stderr.strip().splitlines()[-1].split(": ", 2)[2]
    assert [c.info.status for c in children] == ["KILLED", "KILLED"]


@pytest.mark.slow
def test_a_broken_pool_that_is_no_workers_death_is_not_called_one(tmp_path):
    """A job's error that cannot be unpickled in the sweep's process also breaks loky's
    pool, with no worker dead."""
    out = run_other_app(tmp_path, "hydra.launcher.n_jobs=2", "seed=0,1", "fail=1")
    assert out.returncode == 1
    assert "A result has failed to un-serialize" in out.stderr
    assert "a worker process ended" not in out.stderr


@pytest.mark.slow
def test_a_failed_job_in_a_worker_is_named_at_the_sweeps_end(store):
    """A job that fails in a worker process (a file where its artifacts folder goes, so
    it fails once its run exists) is named by the sweep's last line, from its run's error
    tag."""
    (store.root / "out" / "3").mkdir(parents=True)
    (store.root / "out" / "3" / "artifacts").write_text("not a folder")
    out = run_script(
        "fnnlab-train",
        "-m",
        "seed=range(4)",
        "train.epochs=20",
        "tracking.plots=false",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.summarize=false",
        *store.overrides()[:2],
        f"hydra.sweep.dir={store.root / 'out'}",
    )
    assert out.returncode == 1, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "1 jobs failed or did not finish" in last
    blocked = store.root / "out" / "3" / "artifacts"
    assert f"First error: FileExistsError: [Errno 17] File exists: '{blocked}'" in last, last


def test_a_sweep_folder_with_a_quote_still_finds_its_parent(store):
    """The folder goes into an MLflow filter: quoted, not refused or broken."""
    folder = store.root / "it's a sweep"
    out = run_command(
        cli.train,
        "-m",
        "model.hidden_dim=2,4",
        "train.epochs=20",
        *store.overrides()[:2],
        f'hydra.sweep.dir="{folder}"',
        "hydra.sweeper.summarize=false",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    parent = store.runs("tags.role = 'sweep'")[0]
    children = store.runs(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}


@pytest.mark.slow
def test_a_resumed_sweeps_jobs_keep_their_numbers_and_folders(store, tmp_path, monkeypatch):
    """The fnnlab sweeper numbered the jobs left after skipping from 0: a resumed sweep's
    seed=2 became job 1 and wrote into the folder of the finished seed=1 (helper-61). The
    fnnlab launcher takes them in one launch, trained together (helper-62: launched apart,
    each alone); Hydra's launchers, which number a launch's jobs on from its first, in runs
    of consecutive numbers."""
    quick = ["train.epochs=2", "tracking.plots=false", "hydra.sweeper.summarize=false"]
    for launcher, lr in (([], "0.1"), (["hydra/launcher=joblib"], "0.2")):
        args = ["-m", *store.overrides(), *quick, *launcher, f"optim.lr={lr}"]
        assert run_in_process(monkeypatch, cli.train, *args, "seed=1") == 0
        folder = tmp_path / f"resumed-{lr}"
        out = run_script("fnnlab-train", *args, "seed=0,1,2,3", f"hydra.sweep.dir={folder}")
        assert out.returncode == 0, out.stderr[-3000:]
        assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == ["0", "2", "3"]
        # The progress lines (of jobs that end in the sweep's process: not joblib's) count
        # the 3 jobs that run, not the skipped one (helper-62).
        jobs = [line for line in out.stdout.splitlines() if line.startswith("[sweep] job ")]
        expected = [] if launcher else [f"[sweep] job {n} of 3" for n in (1, 2, 3)]
        assert [line.split(":")[0] for line in jobs] == expected, out.stdout
        for num in (0, 2, 3):
            overrides = (folder / str(num) / ".hydra" / "overrides.yaml").read_text()
            assert f"- seed={num}\n" in overrides, overrides
        (parent,) = store.runs(f"tags.role = 'sweep' and tags.sweep_dir = '{folder}'")
        runs = store.runs(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        numbers = sorted((r.data.tags[Tag.JOB_NUM], r.data.params["seed"]) for r in runs)
        assert numbers == [("0", "0"), ("2", "2"), ("3", "3")]
        if not launcher:
            assert "Training jobs #0, #2, #3 together" in out.stdout + out.stderr


def test_a_sweep_run_again_where_another_sweep_ran_since_finds_its_own_parent(
    store, tmp_path, monkeypatch
):
    """Two sweeps in one hydra.sweep.dir, one after the other: the first, run again, found
    the second's parent by the folder, and logged its skipped jobs (and the runs it reused)
    on it; the second's replay then said its counts differed (helper-65)."""
    quick = ["train.epochs=2", "tracking.plots=false", "hydra.sweeper.summarize=false"]
    args = ["-m", *store.overrides(), *quick, f"hydra.sweep.dir={tmp_path / 'shared'}"]
    for seeds in ("seed=0,1", "seed=0,1,2"):
        assert run_in_process(monkeypatch, cli.train, *args, seeds) == 0
    # Run again in a process of its own, as a user would (this process found its parent
    # once per folder: the second sweep's jobs had taken the first's).
    out = run_script("fnnlab-train", *args, "seed=0,1")
    assert out.returncode == 0, out.stderr[-3000:]
    parents = {p.data.metrics["sweep/jobs"]: p for p in store.runs("tags.role = 'sweep'")}
    assert sorted(parents) == [2, 3]

    def skipped(parent):
        history = store.client.get_metric_history(parent.info.run_id, "sweep/skipped")
        return [m.value for m in history]

    # Each sweep's own invocations: the second skipped seeds 0 and 1, the first run again too.
    assert skipped(parents[3]) == [2] and skipped(parents[2]) == [2]
