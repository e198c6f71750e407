"""Several invocations on one store (fnnlab.claims): the same sweep started two or four times
at once, overlapping sweeps, and claims whose holder died, on SQLite and on the tracking
server. Each ends with exactly one FINISHED run per configuration and a complete summary per
sweep, whatever the order the processes happen to run in."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TmpStore, compose_train, run_command, run_script
from mlflow.entities import ViewType

from fnnlab import cli, provenance
from fnnlab.claims import LEASE_S
from fnnlab.config import fingerprint
from fnnlab.names import Tag

BIN = Path(sys.executable).parent
# Long enough that invocations started together overlap in practice; the assertions hold
# whether they do or not.
EPOCHS = "train.epochs=400"


def start(overrides: list[str], sweep: list[str], out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [str(BIN / "fnnlab-train"), "-m", *sweep, EPOCHS, *overrides],
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def run_together(overrides: list[str], sweeps: list[list[str]], root: Path) -> list[str]:
    """Start every sweep at once; wait for all; their outputs (each must exit 0)."""
    logs = [root / f"sweep{i}.log" for i in range(len(sweeps))]
    procs = [start(overrides, s, log) for s, log in zip(sweeps, logs, strict=True)]
    codes = [p.wait(timeout=600) for p in procs]
    outs = [log.read_text() for log in logs]
    for code, out in zip(codes, outs, strict=True):
        assert code == 0, out[-3000:]
    return outs


def one_finished_per_config(runs: list, configs: int) -> None:
    jobs = [r for r in runs if r.data.tags.get(Tag.ROLE) == "job"]
    finished = Counter(r.data.tags[Tag.FINGERPRINT] for r in jobs if r.info.status == "FINISHED")
    assert len(finished) == configs
    assert set(finished.values()) == {1}, finished
    assert {r.info.status for r in jobs} == {"FINISHED"}


def closing_line(out: str) -> str:
    return next(line for line in out.splitlines() if re.match(r"\[sweep\] \w+ done in", line))


def trained_here(out: str) -> int:
    """Jobs an invocation trained itself (its run lines) rather than left to another."""
    return len(re.findall(r"^h\d+-lr\S+: loss ", out, re.M))


def initialised(store) -> None:
    """A store whose experiment exists (first use at once is another test's subject)."""
    from fnnlab.tracking import open_store

    open_store(store.uri, store.experiment)


@pytest.mark.slow
def test_identical_sweeps_started_together_share_the_work(store):
    initialised(store)
    sweep = ["model.hidden_dim=2,4", "optim.lr=0.01,0.1", "seed=range(3)"]
    # Four at once on two cores: more contention than two (which this test also ran).
    outs = run_together(store.overrides(), [sweep] * 4, store.root)
    runs = store.runs()
    one_finished_per_config(runs, 12)
    parents = [r for r in runs if r.data.tags.get(Tag.ROLE) == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    for out in outs:
        assert "12 finished" in closing_line(out), out[-2000:]
        assert parents[0].info.run_id in closing_line(out)
    # Every configuration was trained once, by one invocation or another.
    assert sum(trained_here(out) for out in outs) == 12


@pytest.mark.slow
def test_overlapping_sweeps_each_count_all_their_configurations(store):
    initialised(store)
    a = ["model.hidden_dim=2,4", "seed=range(3)"]
    b = ["model.hidden_dim=4,8", "seed=range(3)"]
    outs = run_together(store.overrides(), [a, b], store.root)
    one_finished_per_config(store.runs(), 9)
    for out in outs:
        assert "6 finished" in closing_line(out), out[-2000:]
    # Each sweep's answer covers its six configurations; the reused ones say so.
    parents = store.runs(f"tags.{Tag.ROLE} = 'sweep'")
    assert len(parents) == 2
    from fnnlab.aggregate import select

    reused = 0
    for parent in parents:
        sel = select(store.uri, store.experiment, parent_run_id=parent.info.run_id)
        widths = Counter(r.data.params["model.hidden_dim"] for r in sel.runs)
        assert sum(widths.values()) == 6 and len(widths) == 2
        reused += sel.reused
    # hidden_dim=4 was trained by one sweep and reused by the other.
    assert reused == 3


def test_a_later_sweep_reuses_and_links_finished_runs(store):
    from fnnlab.aggregate import select

    first = run_command(cli.train, "-m", "model.hidden_dim=2,4", *store.overrides())
    assert first.returncode == 0, first.stderr[-2000:]
    # The later command in a process of its own: what it reuses must be the same across
    # processes, not only within one (helper-51).
    second = run_script("fnnlab-train", "-m", "model.hidden_dim=2,4,8", *store.overrides())
    assert second.returncode == 0, second.stderr[-2000:]
    assert "3 finished (0 diverged, 2 reused from outside this sweep)" in second.stdout
    one_finished_per_config(store.runs(), 3)
    parent = next(
        p
        for p in store.runs(f"tags.{Tag.ROLE} = 'sweep'")
        if "2,4,8" in p.data.tags[Tag.SWEEP_OVERRIDES]
    )
    sel = select(store.uri, store.experiment, parent_run_id=parent.info.run_id)
    assert len(sel.runs) == 3 and sel.reused == 2
    texts = [p.read_text() for p in store.root.glob("multirun/*/aggregate/report.md")]
    assert any("2 of them made outside this sweep" in t for t in texts)


def test_a_reused_run_is_of_its_configuration_whatever_its_other_values(store):
    """A run made with another ui.port, regime.swing or limits.memory_gb trains what the
    sweep's job would (config.fingerprint) and is reused; the answer made it a configuration
    of its own, leaving its configuration one seed short (helper-43)."""
    from fnnlab.aggregate import aggregate, select

    other = ["ui.port=5001", "regime.swing=0.5", "limits.memory_gb=8"]
    single = ["model.hidden_dim=4", "optim.lr=1", "seed=0", "train.epochs=20", *other]
    first = run_command(cli.train, *single, *store.overrides())
    assert first.returncode == 0, first.stderr[-2000:]
    sweep = ["-m", "model.hidden_dim=4", "optim.lr=0.1,1", "seed=0,1", "train.epochs=20"]
    # The later command in a process of its own: what it reuses must be the same across
    # processes, not only within one (helper-51).
    second = run_script("fnnlab-train", *sweep, *store.overrides())
    assert second.returncode == 0, second.stderr[-2000:]
    assert "4 finished (0 diverged, 1 reused from outside this sweep)" in second.stdout
    assert not re.search(r"\b(port|swing|memory_gb)\b", second.stdout), second.stdout
    parent = store.runs(f"tags.{Tag.ROLE} = 'sweep'")[0]
    agg = aggregate(select(store.uri, store.experiment, parent_run_id=parent.info.run_id))
    assert agg.config_cols == ["hidden_dim", "lr", "backprop"]
    assert sorted(zip(agg.comparison["lr"], agg.comparison["n"], strict=True)) == [
        (0.1, 2),
        (1.0, 2),
    ]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def holder_run(store, overrides: list[str], host: str, pid: int, lease: float | None) -> str:
    """A RUNNING run of the configuration `overrides` make, as if another process had
    claimed it and stopped answering."""
    from fnnlab.tracking import open_store

    cfg = compose_train([*store.overrides()[:2], *overrides])
    s = open_store(store.uri, store.experiment)
    tags = {
        Tag.ROLE: "job",
        Tag.FINGERPRINT: fingerprint(cfg),
        Tag.CODE: provenance.code_hash(),
        Tag.HOST: host,
        Tag.PID: str(pid),
    }
    if lease is not None:
        tags[Tag.LEASE_UNTIL] = f"{lease:.0f}"
    return s.client.create_run(s.experiment_id, run_name="holder", tags=tags).info.run_id


@pytest.mark.parametrize(
    "host, lease",
    [
        ("this", LEASE_S),  # its process is gone, whatever its lease says
        ("elsewhere", -1.0),  # its lease ran out
        ("elsewhere", 15.0),  # its lease runs out while the sweep waits for it
    ],
)
def test_a_claim_whose_holder_died_is_taken_over(store, host, lease):
    job = ["model.hidden_dim=2", EPOCHS]
    hostname = socket.gethostname() if host == "this" else "another-machine"
    until = None if lease is None else time.time() + lease
    held = holder_run(store, job, hostname, dead_pid(), until)
    out = run_command(cli.train, "-m", *job, "seed=0,1", *store.overrides())
    assert out.returncode == 0, out.stderr[-2000:]
    one_finished_per_config(
        store.runs(f"tags.{Tag.ROLE} = 'job' and attributes.status != 'KILLED'"), 2
    )
    holder = store.client.get_run(held)
    assert holder.info.status == "KILLED"
    assert "found RUNNING after its process ended" in holder.data.tags[Tag.ERROR]
    assert "2 finished" in out.stdout
    # A held job run here after all is counted once: it was counted when it returned held
    # too, as finished, and the lines went to "job 3 of 2" (helper-66).
    jobs = [
        line.split(":")[0] for line in out.stdout.splitlines() if line.startswith("[sweep] job")
    ]
    assert jobs == ["[sweep] job 1 of 2", "[sweep] job 2 of 2"], out.stdout


def test_a_live_holder_elsewhere_is_waited_for_until_its_lease_lapses(store):
    """Another machine's run with a lease is not retrained while the lease lasts."""
    job = ["model.hidden_dim=2", EPOCHS]
    held = holder_run(store, job, "another-machine", 1, time.time() + LEASE_S * 10)
    # hydra.sweeper.rerun is not set: the job sees the holder, and the sweep waits; a
    # KeyboardInterrupt-free way to end the wait is to finish the holder's run.
    proc = subprocess.Popen(
        [str(BIN / "fnnlab-train"), "-m", *job, *store.overrides()],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # A watchdog, so that a changed message fails the test rather than waits out the lease.
    watchdog = threading.Timer(180, proc.kill)
    watchdog.start()
    try:
        line = ""
        for line in proc.stdout:
            if "another invocation is training it" in line:
                break
        assert "another invocation is training it" in line
        store.client.set_terminated(held, "FINISHED")
        out = proc.communicate(timeout=120)[0]
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 0, out[-2000:]
    jobs = store.runs(f"tags.{Tag.ROLE} = 'job'")
    assert [r.info.run_id for r in jobs] == [held]
    assert "1 finished (0 diverged" in out
    # Its one job was the holder's: no progress line counted it as finished here (helper-66).
    assert "[sweep] job" not in out, out


def test_a_runs_lease_is_renewed_while_its_values_and_files_are_written(store, monkeypatch):
    """A final write to a slow store that outlasts the lease (renewed only between epochs)
    let another host take the run for dead and train its configuration again: two FINISHED
    runs of one configuration (helper-66). The write here lasts until the lease is renewed,
    or gives up."""
    from fnnlab import claims, job

    monkeypatch.setattr(claims, "LEASE_S", 3.0)  # renewed each second
    upload, seen = job.upload_artifacts, []

    def slow_upload(s, run_id, *args):
        def lease() -> str:
            return s.client.get_run(run_id).data.tags[Tag.LEASE_UNTIL]

        first, deadline = lease(), time.monotonic() + 30
        while lease() == first and time.monotonic() < deadline:
            time.sleep(0.1)
        seen.append((first, lease()))
        return upload(s, run_id, *args)

    monkeypatch.setattr(job, "upload_artifacts", slow_upload)
    out = run_command(cli.train, "train.epochs=3", *store.overrides())
    assert out.returncode == 0, out.stderr[-3000:]
    ((first, then),) = seen
    assert float(then) > float(first)
    (run,) = store.runs()
    assert run.info.status == "FINISHED"


@dataclass
class ServerStore(TmpStore):
    """A TmpStore's face on the tracking server: its runs in an experiment of their own."""

    def overrides(self) -> list[str]:
        return ["tracking=server", *super().overrides()]


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.server)])
def any_store(request, store):
    """The embedded store, or the PostgreSQL-backed tracking server (its REST API): the
    lease is checked through either."""
    if request.param == "sqlite":
        return store
    server = request.getfixturevalue("tracking_server")
    return ServerStore(root=store.root, uri=server.url, experiment=f"lease-{uuid.uuid4().hex}")


def test_a_run_marked_killed_while_its_job_stood_still_stays_killed(any_store, monkeypatch):
    """A job whose process stood still past its lease (suspended, or cut off from the store)
    is taken for dead by another host, which marks its run KILLED and trains the
    configuration again. When the job went on, it ended its run FINISHED: two finished runs
    of one configuration, one with the error "found RUNNING after its process ended". Now
    the run stays KILLED, with its values, and the job fails saying so."""
    from fnnlab import claims, job
    from fnnlab.tracking import open_store

    monkeypatch.setattr(claims, "LEASE_S", 3.0)  # at risk 1.5 s after the last renewal
    write_files = job.write_files

    def stand_still(history, cfg, art, *args):
        time.sleep(1.6)  # after training, before the final write: no renewal
        other = open_store(any_store.uri, any_store.experiment)  # the other host's
        claims.mark_dead(other, any_store.runs()[0], "its lease on another-machine ran out")
        return write_files(history, cfg, art, *args)

    monkeypatch.setattr(job, "write_files", stand_still)
    out = run_command(cli.train, "train.epochs=3", *any_store.overrides())
    assert out.returncode == 1
    line = out.stderr.splitlines()[-1]  # after Hydra's "Error executing job with ..."
    assert line.startswith("fnnlab-train: error: run h")
    assert "was ended KILLED by another invocation while this one stood still" in line
    (run,) = any_store.runs()
    assert run.info.status == "KILLED"
    assert run.data.tags[Tag.ERROR].startswith(claims.DEAD)
    assert len(any_store.client.get_metric_history(run.info.run_id, "loss")) == 3


@pytest.mark.parametrize("where", ["claiming", "ending"])
def test_a_run_marked_killed_before_or_while_it_ends_stays_killed(any_store, monkeypatch, where):
    """The other host marks the run KILLED while its job stands still in its claim, before
    the job's own lease renewals began (it was looked up only a third of a lease after
    those: a short job never), or while the job's FINISHED is on its way to the store (it
    landed after the KILLED: helper-71). Either way the run ends KILLED and the job fails."""
    from fnnlab import claims, job

    monkeypatch.setattr(claims, "LEASE_S", 3.0)  # at risk 1.5 s after the lease was taken

    def other_host(s, run_id: str) -> None:
        claims.mark_dead(s, s.client.get_run(run_id), "its lease on another-machine ran out")

    if where == "claiming":
        claim = claims.claim

        def stand_still_in_claim(s, *args):
            how, run_id, other = claim(s, *args)
            time.sleep(1.6)
            other_host(s, run_id)
            return how, run_id, other

        monkeypatch.setattr(claims, "claim", stand_still_in_claim)
    else:
        end_run = job.end_run

        def late_finish(s, run_id: str, status: str) -> None:
            if status == "FINISHED":
                time.sleep(1.6)
                other_host(s, run_id)  # lands first
            end_run(s, run_id, status)

        monkeypatch.setattr(job, "end_run", late_finish)
    cfg = compose_train([*any_store.overrides(), "train.epochs=3"])
    with pytest.raises(claims.RunTaken, match="was ended KILLED by another invocation"):
        job.run(cfg, any_store.root / "out", claim="code")
    (run,) = any_store.runs()
    assert run.info.status == "KILLED"
    assert run.data.tags[Tag.ERROR].startswith(claims.DEAD)
    assert len(any_store.client.get_metric_history(run.info.run_id, "loss")) == 3


def test_a_write_that_begins_when_the_lease_is_due_renews_it_at_once(store):
    """The final write's renewal thread waited a full third of a lease (20 s) before its
    first renewal, however long the lease had gone unrenewed before the write: up to two
    thirds of one, and a read of the run at the job's end (helper-72). It renews when due."""
    from fnnlab import claims
    from fnnlab.tracking import open_store, start_run

    s = open_store(store.uri, store.experiment)
    lease = claims.LeaseRenewal(s, start_run(s, "r", claims.lease_tags(), None))
    lease.due = time.monotonic()  # training took its third of a lease
    before = lease.leased
    with lease.kept():
        deadline = time.monotonic() + 10  # half the wait before: the thread renews at once
        while lease.leased == before and time.monotonic() < deadline:
            time.sleep(0.05)
    assert lease.leased > before and not lease.lapsed


def test_contested_jobs_leave_only_deleted_runs(store):
    """A job that steps back deletes its run: nothing of it is in the active view."""
    initialised(store)
    sweep = ["model.hidden_dim=2", "seed=range(4)"]
    run_together(store.overrides(), [sweep, sweep], store.root)
    active = store.runs(f"tags.{Tag.ROLE} = 'job'")
    one_finished_per_config(active, 4)
    exp = store.client.get_experiment_by_name(store.experiment)
    deleted = store.client.search_runs(
        [exp.experiment_id], "", run_view_type=ViewType.DELETED_ONLY, max_results=1000
    )
    # Jobs that yielded, and parents that lost the race to be the sweep's one parent.
    assert {r.data.tags.get(Tag.ROLE) for r in deleted} <= {"job", "sweep"}
    assert all(r.data.tags.get(Tag.CLAIMED) is None for r in deleted)


# --- the claim, step by step, on a real store ---------------------------------------------------


@pytest.fixture
def opened(store):
    from fnnlab.tracking import open_store

    return open_store(store.uri, store.experiment)


def fake_run(s, *, status="RUNNING", claimed=False, pid=None, code="c", host=None, lease=True):
    """A run of configuration 'fp' as another process would have left it."""
    tags = {
        Tag.ROLE: "job",
        Tag.FINGERPRINT: "fp",
        Tag.CODE: code,
        Tag.HOST: host or socket.gethostname(),
        Tag.PID: str(os.getppid() if pid is None else pid),  # the parent process: alive
    }
    if lease:
        tags[Tag.LEASE_UNTIL] = f"{time.time() + LEASE_S:.0f}"
    if claimed:
        tags[Tag.CLAIMED] = "true"
    run_id = s.client.create_run(s.experiment_id, tags=tags).info.run_id
    if status != "RUNNING":
        s.client.set_terminated(run_id, status)
    return run_id


def claim_fp(s, match="code"):
    from fnnlab import claims

    made = []

    def create():
        made.append(fake_run(s, pid=os.getpid()))
        return made[-1]

    how, run_id, _ = claims.claim(s, "fp", "c", match, create)
    return how, run_id, made


def lifecycle(s, run_id):
    return s.client.get_run(run_id).info.lifecycle_stage


def test_a_claim_alone_is_marked_claimed(opened):
    how, run_id, made = claim_fp(opened)
    assert how == "mine" and made == [run_id]
    assert opened.client.get_run(run_id).data.tags[Tag.CLAIMED] == "true"


def test_a_claimed_live_holder_keeps_it_and_the_job_leaves_nothing(opened):
    holder = fake_run(opened, claimed=True)
    how, run_id, made = claim_fp(opened)
    assert (how, run_id) == ("held", holder)
    assert [lifecycle(opened, m) for m in made] == ["deleted"]


def test_a_finished_run_by_the_same_code_is_reused_and_other_code_is_not(opened):
    fake_run(opened, status="FINISHED", code="other")
    how, _, made = claim_fp(opened, match="code")
    assert how == "mine"
    opened.client.set_terminated(made[0], "FINISHED")
    how, run_id, _ = claim_fp(opened, match="code")
    assert (how, run_id) == ("done", made[0])


def test_a_running_run_of_other_code_holds_nothing_with_match_code(opened):
    fake_run(opened, claimed=True, code="other")
    assert claim_fp(opened, match="code")[0] == "mine"
    assert claim_fp(opened, match="config")[0] == "held"


def test_an_undecided_run_is_waited_out_then_reported(opened):
    """Another job deciding forever (it never marks its run claimed): the claim gives up
    after its tries and reports it, leaving nothing of its own."""
    pending = fake_run(opened)
    how, run_id, made = claim_fp(opened)
    assert (how, run_id) == ("pending", pending)
    assert {lifecycle(opened, m) for m in made} == {"deleted"}


@pytest.mark.parametrize("error, stage", [(KeyboardInterrupt, "KILLED"), (OSError, "deleted")])
def test_a_claim_cut_short_leaves_an_interrupted_run_killed_and_nothing_else(
    opened, monkeypatch, error, stage
):
    """An interrupt while deciding is recorded like an interrupted job (its claim may have
    landed); a failing store leaves the job's run out of view."""
    from fnnlab import claims

    def fail(*args, **kwargs):
        raise error("cut short")

    monkeypatch.setattr(claims, "_look", fail)
    with pytest.raises(error):
        claim_fp(opened)
    (made,) = opened.client.search_runs(
        [opened.experiment_id], run_view_type=ViewType.ALL, filter_string="tags.fingerprint = 'fp'"
    )
    if stage == "KILLED":
        assert made.info.status == "KILLED" and made.info.lifecycle_stage == "active"
        assert made.data.tags[Tag.ERROR] == "KeyboardInterrupt: while claiming"
    else:
        assert made.info.lifecycle_stage == "deleted"


def test_an_interrupt_while_claiming_goes_on_when_the_store_cannot_record_it(
    opened, monkeypatch, caplog
):
    """The interrupt, not the store's error, ends the claim (and so the sweep); what could
    not be written is one logged line."""
    from mlflow.exceptions import MlflowException

    from fnnlab import claims, tracking

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def locked(*args, **kwargs):
        raise MlflowException("database is locked")

    monkeypatch.setattr(claims, "_look", interrupted)
    monkeypatch.setattr(tracking, "log_values", locked)  # the write of the run's end
    with pytest.raises(KeyboardInterrupt):
        claim_fp(opened)
    assert "its interrupt could not be recorded in full: database is locked" in caplog.text
    (made,) = opened.client.search_runs([opened.experiment_id], "tags.fingerprint = 'fp'")
    assert made.info.status == "KILLED"


def test_dead_holders_and_runs_without_lease_are_passed_over(opened):
    dead = fake_run(opened, claimed=True, pid=dead_pid())
    elsewhere = fake_run(opened, claimed=True, host="another-machine", lease=False)
    assert claim_fp(opened)[0] == "mine"
    assert opened.client.get_run(dead).info.status == "KILLED"
    assert opened.client.get_run(elsewhere).info.status == "RUNNING"  # not ours to judge


def test_an_interrupted_sweep_waits_for_its_own_runs_only(opened, monkeypatch):
    """What an interrupted Ray sweep waits for, after Ray's shutdown, before it ends the
    parent (Sweep.abandon): its own workers' runs still RUNNING. A live run of another
    invocation of the same sweep is not one: it trains on, and the wait lasted its
    whole RAY_EXIT_S for it."""
    from fnnlab.sweep import invocation, reap_dead_runs

    mine, other = invocation("/sweeps/a"), invocation("/sweeps/b")
    made = {}
    for name, of, pid in [("mine", mine, None), ("other", other, None), ("gone", mine, dead_pid())]:
        made[name] = fake_run(opened, pid=pid)
        for key, value in ((Tag.SWEEP_ID, "s1"), (Tag.INVOCATION, of)):
            opened.client.set_tag(made[name], key, value)
    assert reap_dead_runs(opened, "s1", float("inf"), mine) == (1, 1)
    assert reap_dead_runs(opened, "s1", float("inf"), other) == (0, 1)
    assert reap_dead_runs(opened, "s1", float("inf")) == (0, 2)
    status = {name: opened.client.get_run(run_id).info.status for name, run_id in made.items()}
    assert status == {"mine": "RUNNING", "other": "RUNNING", "gone": "KILLED"}

    # An interrupted Ray sweep of invocation `mine`, its own run gone by now: it looks once
    # and closes the parent (it looked again and again for RAY_EXIT_S before).
    from fnnlab import sweep as sweep_module

    opened.client.set_terminated(made["mine"], "KILLED")
    parent = opened.client.create_run(opened.experiment_id, tags={Tag.ROLE: "sweep"})
    interrupted = object.__new__(sweep_module.Sweep)
    interrupted.__dict__.update(
        pid=os.getpid(),
        ray=True,
        store=opened,
        id="s1",
        dir="/sweeps/a",
        jobs=None,
        prints=None,
        parent=parent.info.run_id,
        first_error=None,
    )
    looks = []

    def reap(*args):
        looks.append(args)
        return reap_dead_runs(*args)

    monkeypatch.setattr(sweep_module, "reap_dead_runs", reap)
    interrupted.abandon()
    assert len(looks) == 1
    assert opened.client.get_run(parent.info.run_id).info.status == "KILLED"
    assert opened.client.get_run(made["other"]).info.status == "RUNNING"


def test_the_parent_is_the_claimed_one_and_a_dead_decider_is_no_parent(opened):
    from fnnlab import claims

    query = f"tags.{Tag.ROLE} = 'sweep' and tags.{Tag.SWEEP_ID} = 'abc'"

    def parent(**tags):
        tags = {Tag.ROLE: "sweep", Tag.SWEEP_ID: "abc", Tag.HOST: socket.gethostname(), **tags}
        return opened.client.create_run(opened.experiment_id, tags=tags).info.run_id

    # Its maker died before deciding: passed over (and marked KILLED), not looped on.
    crashed = parent(**{Tag.PID: str(dead_pid()), Tag.LEASE_UNTIL: "0"})
    made = []

    def create():
        made.append(parent(**{Tag.PID: "1", Tag.LEASE_UNTIL: "0"}))
        return made[-1]

    run_id, created = claims.unique_run(opened, query, create)
    assert created and run_id == made[0]
    assert opened.client.get_run(crashed).info.status == "KILLED"
    # The next invocation finds that one.
    assert claims.unique_run(opened, query, lambda: pytest.fail("created")) == (run_id, False)


def test_a_holder_that_went_is_run_again_by_the_waiting_sweep(opened):
    from fnnlab.sweep import wait_for_holders

    gone = fake_run(opened, claimed=True)
    opened.client.delete_run(gone)
    died = fake_run(opened, claimed=True, pid=dead_pid())
    finished = fake_run(opened, claimed=True, status="FINISHED")
    held = [(["a=1"], gone), (["a=2"], died), (["a=3"], finished)]
    assert wait_for_holders(opened, held, 86400.0) == [["a=1"], ["a=2"]]


@pytest.mark.server
@pytest.mark.slow
def test_identical_sweeps_on_the_server_with_workers(tracking_server, tmp_path):
    experiment = "concurrent-workers"
    overrides = [*tracking_server.overrides(experiment, tmp_path), "hydra.launcher.n_jobs=2"]
    sweep = ["model.hidden_dim=2,4", "seed=range(4)"]
    outs = run_together(overrides, [sweep, sweep], tmp_path)
    runs = tracking_server.runs(experiment)
    one_finished_per_config(runs, 8)
    assert len([r for r in runs if r.data.tags.get(Tag.ROLE) == "sweep"]) == 1
    for out in outs:
        assert "8 finished" in closing_line(out), out[-2000:]


def test_a_run_deleted_while_it_is_marked_dead_or_untagged_is_left_alone(store, monkeypatch):
    """Another invocation deletes its claim's losing candidate (a job's run, or a parent that
    holds the sweep's folder tag) while this one writes to it: the write raised "must be in
    the 'active' state" and ended the sweep (helper-67)."""
    from fnnlab import claims, sweep
    from fnnlab.tracking import open_store

    s = open_store(store.uri, store.experiment)
    rid = s.client.create_run(s.experiment_id, run_name="candidate").info.run_id
    run = s.client.get_run(rid)
    real_log = claims.log_values

    def deleted_first(st, run_id, **kwargs):
        st.client.delete_run(run_id)
        return real_log(st, run_id, **kwargs)

    monkeypatch.setattr(claims, "log_values", deleted_first)
    claims.mark_dead(s, run, "its process is gone")
    assert s.client.get_run(rid).info.lifecycle_stage == "deleted"
    # Deleted before the look: nothing is written.
    claims.mark_dead(s, run, "its process is gone")
    monkeypatch.setattr(claims, "log_values", real_log)
    # A parent candidate of another invocation, deleted between the search and the untag.
    folder = str(store.root / "shared")
    first = sweep.open_parent(s, "a" * 12, ["seed=0,1"], 2, folder)
    real_untag = s.client.delete_tag

    def parent_deleted_first(run_id, key):
        s.client.delete_run(run_id)
        return real_untag(run_id, key)

    monkeypatch.setattr(s.client, "delete_tag", parent_deleted_first)
    second = sweep.open_parent(s, "b" * 12, ["seed=0,1,2"], 3, folder)
    assert s.client.get_run(first).info.lifecycle_stage == "deleted"
    assert sweep.find_parent(s, folder).info.run_id == second
