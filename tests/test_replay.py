"""fnnlab-replay on real stores: runs replay identical in every mode and dtype, diverged or
not; an altered stored value is found at its epoch and metric; what cannot be replayed is
bad input; provenance tags and a dirty tree's diff; resume by code identity."""

from __future__ import annotations

import math
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
import scipy
import torch
import yaml
from conftest import TmpStore, run_command, run_in_process, run_script
from mlflow.entities import Metric, Run, RunInfo

from fnnlab import cli, provenance, tracking
from fnnlab.names import METRICS, Tag
from fnnlab.replay import MAX_DIFF_LINE, SHOWN_DIFFS, Diff, Replay, cut_lines
from fnnlab.report import TABLES
from fnnlab.tracking import MAX_TAG_VALUE

pytestmark = pytest.mark.slow

LINE = re.compile(r"^(?P<name>\S+) \((?P<run>[0-9a-f]{32})\): (?P<what>.+)$")


def train(store: TmpStore, *overrides: str, process: bool = False) -> None:
    """fnnlab-train, in this process or in its own: replays of runs trained in another
    process are what tell numbers that hold in one process only (fixture `made`)."""
    args = (*overrides, "tracking.plots=false", *store.overrides())
    out = run_command(cli.train, *args, process=process)
    assert out.returncode == 0, out.stderr[-3000:]


def replay(store: TmpStore, *overrides: str) -> subprocess.CompletedProcess:
    """fnnlab-replay, called in this process: this module replays dozens of times. (Replays
    under another environment, through a server, or of an unreachable store stay separate
    processes below.)"""
    return run_command(cli.replay, *overrides, *store.overrides())


def execute(store: TmpStore, statement: str, *params: object) -> None:
    """One statement on the store's SQLite database, committed: a value changed by hand."""
    db = sqlite3.connect(store.uri.removeprefix("sqlite:///"))
    with db:
        db.execute(statement, params)
    db.close()


def lines(out: subprocess.CompletedProcess) -> dict[str, str]:
    return {m["run"]: m["what"] for line in out.stdout.splitlines() if (m := LINE.match(line))}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> TmpStore:
    """Both modes x both dtypes, a diverged run (a sweep), and the reference run."""
    root = tmp_path_factory.mktemp("replay")
    store = TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")
    train(
        store,
        "-m",
        "model.backprop=tutorial,exact",
        "model.dtype=float32,float64",
        "optim.lr=0.1,1000",
        "train.epochs=40",
        process=True,
    )
    train(store, "experiment=reference", process=True)
    return store


def test_runs_replay_identical_and_are_tagged(made: TmpStore) -> None:
    out = replay(made, "replay.sweep=latest")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    found = lines(out)
    jobs = made.runs("tags.role = 'job' and tags.sweep_id != ''")
    assert len(jobs) == 8 and set(found) == {r.info.run_id for r in jobs}
    assert set(found.values()) == {"identical"}
    (parent,) = made.runs("tags.role = 'sweep'")
    assert out.stdout.strip().splitlines()[-3:] == [
        "replayed 8 runs: 8 identical, 0 differ; 0 not replayable",
        f"the sweep's counts (parent run {parent.info.run_id}): identical",
        f"the sweep's answer (parent run {parent.info.run_id}): identical",
    ]
    assert made.client.get_run(parent.info.run_id).data.tags["replay.counts"] == "identical"
    diverged = [r for r in made.runs("tags.diverged = 'true'")]
    assert len(diverged) == 4  # lr=1000 in every mode and dtype: its epoch is compared too
    for run in made.runs("tags.role = 'job'"):
        tags = run.data.tags
        if run.info.run_id in found:
            assert tags["replay.status"] == "identical" and tags["replay.at"]
            assert "replay.first_diff" not in tags
        # What could change the numbers, recorded with every run.
        for key in ("python", "torch", "numpy", "mlflow", "hydra", "sklearn", "fnnlab"):
            assert tags[f"env.{key}"], key
        assert tags["env.torch"] == torch.__version__
        assert len(tags["env.code"]) == 16 and len(tags["env.data"]) == 16
        assert tags["env.torch_threads"] == "1" and tags["env.git_dirty"] in ("true", "false")
    # The reference run, by its id; no new run without replay.log.
    (ref,) = made.runs("params.reference = 'True'")
    before = len(made.runs())
    out = replay(made, f"replay.run={ref.info.run_id}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == f"{ref.info.run_name} ({ref.info.run_id}): identical"
    assert len(made.runs()) == before
    # replay.log=true: the replay is a new run pointing at the original, named as it is,
    # also when an earlier fnnlab named it otherwise.
    made.client.update_run(ref.info.run_id, name="h32-lr0.001-s2")
    out = replay(made, f"replay.run={ref.info.run_id}", "replay.log=true")
    made.client.update_run(ref.info.run_id, name=ref.info.run_name)
    assert out.returncode == 0, out.stderr[-3000:]
    (logged,) = made.runs(f"tags.`replay.of` = '{ref.info.run_id}'")
    assert logged.data.metrics["final/loss"] == ref.data.metrics["final/loss"]
    assert logged.info.run_name == "h32-lr0.001-s2"
    # What the replay found is not in replay.status: a replay of the logged run would
    # overwrite it (helper-37).
    assert logged.data.tags["replay.of_status"] == "identical"
    assert "replay.status" not in logged.data.tags
    # Its output folder cannot be made: one line, and no half-made FAILED run (helper-37).
    blocked = made.root / "blocked"
    blocked.mkdir()
    (blocked / ref.info.run_id).write_text("a file where the folder would be")
    before = len(made.runs())
    out = run_script(
        "fnnlab-replay",
        f"replay.run={ref.info.run_id}",
        "replay.log=true",
        *made.overrides()[:2],
        f"hydra.run.dir={blocked}",
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stdout.strip().startswith(
        f"{ref.info.run_name} ({ref.info.run_id}): identical (not logged: "
    ), out.stdout
    assert len(made.runs()) == before


def test_an_altered_value_differs_at_its_epoch_and_metric(made: TmpStore) -> None:
    run = made.runs("tags.role = 'job' and tags.diverged = 'false'")[0]
    rid = run.info.run_id
    db = sqlite3.connect(made.uri.removeprefix("sqlite:///"))
    with db:
        changed = db.execute(
            "UPDATE metrics SET value = value * (1 + 1e-12) "
            "WHERE run_uuid = ? AND key = 'grad_norm/w1' AND step = 17",
            (rid,),
        ).rowcount
        changed += db.execute(
            "UPDATE metrics SET value = value + 0.25 "
            "WHERE run_uuid = ? AND key = 'loss' AND step IN (20, 21)",
            (rid,),
        ).rowcount
        changed += db.execute(  # NaN, as MLflow stores it
            "UPDATE metrics SET value = 0, is_nan = 1 "
            "WHERE run_uuid = ? AND key = 'weight_norm/w1' AND step = 20",
            (rid,),
        ).rowcount
        (n,) = db.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key = 'loss'", (rid,)
        ).fetchone()
    db.close()
    assert changed == 4
    out = replay(made, f"replay.run={rid}")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    what = lines(out)[rid]
    # Every difference, with how many of the curve's n values differ and by how much (a
    # NaN against a number: inf).
    assert re.fullmatch(
        rf"differs at epoch 17 grad_norm/w1 \(1 of {n} values, largest [0-9.e-]+\), "
        rf"largest difference inf; also epoch 20 loss \(2 of {n} values, largest 0.25\), "
        rf"epoch 20 weight_norm/w1 \(1 of {n} values, largest inf\); since then: .+",
        what,
    ), what
    tags = made.client.get_run(rid).data.tags
    assert (
        tags["replay.status"] == "differs" and tags["replay.first_diff"] == "epoch 17 grad_norm/w1"
    )
    first, *rest = tags["replay.diffs"].splitlines()
    assert first.startswith(f"epoch 17 grad_norm/w1 (1 of {n} values, largest ")
    assert rest == [
        f"epoch 20 loss (2 of {n} values, largest 0.25)",
        f"epoch 20 weight_norm/w1 (1 of {n} values, largest inf)",
    ]


def test_every_stored_value_of_a_summary_metric_is_checked(made: TmpStore) -> None:
    """A summary metric's history and the latest values (MLflow's other table, which its
    runs table and charts show) were not compared: a value logged again, or a value changed
    in one table only, replayed identical (helper-37)."""
    # Runs of the sweep (40 epochs), not the reference run; test_a_changed_cpu_vector_path
    # takes the first.
    once, both, last = made.runs("tags.diverged = 'false' and params.reference = 'False'")[1:4]
    made.client.log_batch(once.info.run_id, [Metric("final/loss", 0.5, 1, 0)])  # an old time
    db = sqlite3.connect(made.uri.removeprefix("sqlite:///"))
    with db:
        db.execute(
            "UPDATE latest_metrics SET value = value + 1 WHERE key = 'loss' AND run_uuid = ?",
            (both.info.run_id,),
        )
        db.execute(
            "UPDATE metrics SET value = value + 1 WHERE key = 'tail/loss' AND run_uuid = ?",
            (both.info.run_id,),
        )
    db.close()
    out = replay(made, f"replay.run={once.info.run_id}")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    what = lines(out)[once.info.run_id]
    assert what.startswith("differs at epoch 39 final/loss stored 2 times, largest difference ")
    gap = abs(0.5 - once.data.metrics["final/loss"])
    assert f"largest difference {gap:.3g};" in what, what  # not inf (helper-38)
    out = replay(made, f"replay.run={both.info.run_id}")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    tags = made.client.get_run(both.info.run_id).data.tags
    latest = both.data.metrics["loss"]
    tail = both.data.metrics["tail/loss"]
    assert tags["replay.diffs"].splitlines() == [
        f"epoch 39 loss latest value {latest + 1} -> {latest}",
        f"epoch 39 tail/loss {tail + 1} in its history, {tail} as its latest value",
    ]
    # The last epoch's value changed in both tables: one difference, not a second for the
    # latest value (helper-38).
    db = sqlite3.connect(made.uri.removeprefix("sqlite:///"))
    with db:
        for table in ("metrics", "latest_metrics"):
            db.execute(
                f"UPDATE {table} SET value = value + 1 WHERE key = 'loss' AND step = 39 "
                "AND run_uuid = ?",
                (last.info.run_id,),
            )
    db.close()
    out = replay(made, f"replay.run={last.info.run_id}")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    diffs = made.client.get_run(last.info.run_id).data.tags["replay.diffs"].splitlines()
    assert diffs == ["epoch 39 loss (1 of 40 values, largest 1)"], diffs


def test_a_changed_cpu_vector_path_is_named(made: TmpStore) -> None:
    """torch's CPU kernels differ in their last bits from one vector path to another
    (ATEN_CPU_CAPABILITY=default on an AVX512 machine: O(1) differences within 40 epochs),
    and the replay blamed the code or a dirty tree (helper-37): the path is recorded."""
    run = made.runs("tags.diverged = 'false' and params.reference = 'False'")[0]
    rid, capability = run.info.run_id, torch.backends.cpu.get_cpu_capability()
    assert run.data.tags["env.cpu_capability"] == capability
    lowered = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = run_script("fnnlab-replay", f"replay.run={rid}", *made.overrides(), env=lowered)
    what = lines(out)[rid]
    if capability == "DEFAULT":
        assert what == "identical", what
    else:  # the vector path may not matter to this run
        assert (
            what == "identical"
            or what.endswith(f"torch CPU capability {capability} -> DEFAULT")
            or f"torch CPU capability {capability} -> DEFAULT;" in what
        ), what
    assert provenance.env_diff(
        {"env.cpu_capability": "AVX512"}, {"env.cpu_capability": "AVX2"}
    ) == ["torch CPU capability AVX512 -> AVX2"]


def test_omp_num_threads_is_named_only_with_another_torch_thread_count() -> None:
    """Loky's workers set OMP_NUM_THREADS for each job, fnnlab-replay does not: every sweep
    job that differed named "OMP_NUM_THREADS 1 -> unset", which does not reach training
    when torch's thread count is the same: fnnlab sets it (helper-64)."""
    one = {"env.torch_threads": "1"}
    then, now = one | {"env.omp_num_threads": "1"}, one | {"env.omp_num_threads": ""}
    assert provenance.env_diff(then, now) == []
    then = {"env.torch_threads": "2", "env.omp_num_threads": "2"}
    assert provenance.env_diff(then, now) == ["torch threads 2 -> 1", "OMP_NUM_THREADS 2 -> unset"]


def test_what_cannot_be_replayed_is_bad_input(made: TmpStore, monkeypatch, capsys) -> None:
    run = made.runs("tags.role = 'job' and tags.diverged = 'true'")[0]
    rid = run.info.run_id
    config = (
        Path(made.client.get_run(rid).info.artifact_uri.removeprefix("file://")) / "config.yaml"
    )
    config.unlink()
    made.client.set_tag(rid, "replay.status", "identical")  # an earlier replay's
    made.client.set_tag(rid, "replay.diffs", "epoch 3 loss (1 of 30 values)")
    out = replay(made, f"replay.run={rid}")
    assert out.returncode == 2
    assert f"({rid}): not replayable: run {rid}: its config.yaml artifact cannot be read" in (
        out.stdout
    )
    # The earlier replay's "identical" stood (helper-37).
    tags = made.client.get_run(rid).data.tags
    assert tags["replay.status"] == "not replayable" and "replay.diffs" not in tags
    assert tags["replay.why"].startswith(f"run {rid}: its config.yaml artifact cannot be read")
    # Artifacts in a cloud store whose client library is not installed: one line, not
    # the ImportError's traceback.
    other = made.runs("tags.role = 'job' and tags.diverged = 'true'")[1].info.run_id
    db = sqlite3.connect(made.uri.removeprefix("sqlite:///"))
    with db:
        db.execute("UPDATE runs SET artifact_uri = 'gs://bucket/x' WHERE run_uuid = ?", (other,))
    db.close()
    out = replay(made, f"replay.run={other}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"not replayable: run {other}: its config.yaml artifact cannot be read (" in out.stdout
    # Weights on the meta device have no values to compare: named, not a traceback.
    third = made.runs("tags.role = 'job' and tags.diverged = 'true'")[2]
    weights = artifact(third, "weights.pt")
    torch.save({k: v.to("meta") for k, v in torch.load(weights).items()}, weights)
    out = replay(made, f"replay.run={third.info.run_id}")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "weights.pt without the dense CPU tensors w1 and w2" in out.stdout, out.stdout
    # Through the console script's entry point, in this process (a process start each
    # costs seconds); the unreachable store below goes through the console script itself.
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # replay sets it
    capsys.readouterr()
    for args, words in (
        (["replay.run=0123456789abcdef0123456789abcdef"], "replay.run=0123456789abcdef"),
        (["replay.sweep=nothex"], "replay.sweep=nothex: not a sweep id"),
        # Ignored with one run (helper-64).
        ([f"replay.run={rid}", "replay.sample=2"], "replay.sample=2: chooses among a sweep's"),
        ([f"replay.run={rid}", "replay.seed=3"], "replay.seed=3: chooses the runs replay.sample"),
        (["replay.sweep=latest", "replay.seed=3"], "replay.seed=3: chooses the runs"),
        ([], "give one of replay.run"),
    ):
        status = run_in_process(monkeypatch, cli.replay, *args, *made.overrides())
        assert status == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("fnnlab-replay: error: ") and words in line, line
    unreachable = run_script(
        "fnnlab-replay", "replay.sweep=latest", "tracking.uri=http://127.0.0.1:9"
    )
    assert unreachable.returncode == 2
    assert unreachable.stderr.strip().splitlines()[-1].startswith("fnnlab-replay: error: ")


def test_a_runs_environment_record_is_checked_and_a_deleted_run_refused(
    store: TmpStore, monkeypatch, capsys
) -> None:
    """helper-54: an edited env.data (the training data's hash, which replay makes again)
    passed as identical; a run without env.* tags said "no recorded difference in
    environment"; a deleted run was retrained, then its tags could not be written: exit 1,
    as if it differed, and Hydra's job-failure banner."""
    train(store, "train.epochs=5")
    (run,) = store.runs()
    rid, client = run.info.run_id, store.client
    client.set_tag(rid, "env.data", "0" * 16)
    out = replay(store, f"replay.run={rid}")
    now = run.data.tags["env.data"]
    assert out.returncode == 1
    assert lines(out)[rid].startswith(f"differs at epoch 0 tag env.data {'0' * 16}, made now {now}")
    for key in [k for k in run.data.tags if k.startswith("env.")]:
        client.delete_tag(rid, key)
    client.log_metric(rid, "final/loss", 0.1)  # so that it differs
    out = replay(store, f"replay.run={rid}")
    assert lines(out)[rid].endswith("; since then: environment not recorded with this run")

    client.delete_run(rid)
    before = store.db_bytes()
    capsys.readouterr()
    assert run_in_process(monkeypatch, cli.replay, f"replay.run={rid}", *store.overrides()) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"fnnlab-replay: error: replay.run={rid}: is deleted in this store: restore it "
        f"(`mlflow runs restore --run-id {rid}` with MLFLOW_TRACKING_URI set to the store) "
        "to replay it"
    )
    assert store.db_bytes() == before


def test_a_runs_files_are_checked_against_the_hashes_it_recorded(store: TmpStore) -> None:
    """helper-54: a run's plots and Hydra's files were never checked: a PNG overwritten or a
    file of hydra/ changed replayed identical. The run records every file's sha256 (tag
    files, as `sha256sum` prints them)."""
    assert run_command(cli.train, "train.epochs=5", *store.overrides()).returncode == 0
    (run,) = store.runs()
    rid = run.info.run_id
    written = provenance.read_digest(run.data.tags[Tag.FILES])
    assert {"config.yaml", "weights.pt", "loss.png", "grad_norm.png"} <= written.keys()
    assert {"hydra/config.yaml", "hydra/hydra.yaml", "hydra/overrides.yaml"} <= written.keys()
    assert lines(replay(store, f"replay.run={rid}"))[rid] == "identical"
    artifact(run, "loss.png").write_bytes(b"not a png")
    artifact(run, "hydra/overrides.yaml").unlink()
    # Named once, as a file the run wrote, not also as weights that differ.
    weights = artifact(run, "weights.pt").read_bytes()
    artifact(run, "weights.pt").unlink()
    out = replay(store, f"replay.run={rid}")
    assert out.returncode == 1
    assert client_diffs(store, rid) == [
        "epoch 5 hydra/overrides.yaml not stored (the run wrote it: tag files)",
        "epoch 5 loss.png is not the file the run wrote (tag files)",
        "epoch 5 weights.pt not stored (the run wrote it: tag files)",
    ]
    artifact(run, "weights.pt").write_bytes(weights)
    # The tag edited to leave a file out, or deleted, passed as identical (helper-57).
    kept = "".join(f"{h}  {n}\n" for n, h in written.items() if n not in ("loss.png", "weights.pt"))
    store.client.set_tag(rid, Tag.FILES, kept)
    out = replay(store, f"replay.run={rid}")
    assert client_diffs(store, rid) == [
        "epoch 5 tag files does not list loss.png, weights.pt: not checked",
        "epoch 5 hydra/overrides.yaml not stored (the run wrote it: tag files)",
    ]
    store.client.delete_tag(rid, Tag.FILES)
    out = replay(store, f"replay.run={rid}")
    assert (
        lines(out)[rid]
        == "identical (files but config.yaml and weights.pt not checked: no tag files)"
    )


def client_diffs(store: TmpStore, rid: str) -> list[str]:
    return store.client.get_run(rid).data.tags["replay.diffs"].splitlines()


def artifact(run, name: str) -> Path:
    return Path(run.info.artifact_uri.removeprefix("file://")) / name


def test_every_stored_value_and_file_is_checked(store: TmpStore) -> None:
    """Beyond the curves: the summary metrics, the tags of how training went, the params
    against config.yaml, a value stored twice, the weights' dtype, files that cannot be
    read. A sweep's reused runs are replayed too; an earlier difference's tag goes once a run
    replays identical; a run that cannot be checked makes the exit status 2."""
    train(store, "-m", "seed=range(3)", "optim.lr=0.1,1000", "train.epochs=30")
    train(store, "-m", "seed=range(6)", "optim.lr=0.1,1000", "train.epochs=30")  # 6 reused
    # Keyed by name without the suffix every one of these runs has.
    runs = {r.info.run_name.removesuffix("-epochs30"): r for r in store.runs("tags.role = 'job'")}
    ids = {name: run.info.run_id for name, run in runs.items()}
    assert len(runs) == 12
    client = store.client
    client.set_tag(ids["h32-lr0.1-s0"], "replay.first_diff", "epoch 3 loss")
    client.set_tag(ids["h32-lr0.1-s0"], "replay.diffs", "epoch 3 loss (1 of 30 values)")
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert lines(out) == {rid: "identical" for rid in ids.values()}
    tags = client.get_run(ids["h32-lr0.1-s0"]).data.tags
    assert "replay.first_diff" not in tags and "replay.diffs" not in tags

    # lr 0.1 runs train 30 epochs (0 to 29); lr 1000 runs diverge at epoch 1.
    client.log_metric(ids["h32-lr0.1-s0"], "final/loss", 0.1)
    regime = runs["h32-lr0.1-s1"].data.tags["regime"]
    client.set_tag(ids["h32-lr0.1-s1"], "regime", "stable" if regime != "stable" else "oscillating")
    client.set_tag(ids["h32-lr0.1-s2"], "diverged_at", "7")
    artifact(runs["h32-lr0.1-s3"], "weights.pt").write_text("not a pickle")
    fingerprint = runs["h32-lr0.1-s3"].data.tags["fingerprint"]
    client.set_tag(ids["h32-lr0.1-s3"], "fingerprint", "0" * 16)
    # As a run made before a key existed: a hash without it, no param of it, and a
    # config.yaml without it.
    old = runs["h32-lr0.1-s2"].data.tags["fingerprint"]
    client.set_tag(ids["h32-lr0.1-s2"], "fingerprint", "1" * 16)
    config = artifact(runs["h32-lr0.1-s2"], "config.yaml")
    written = yaml.safe_load(config.read_text())
    del written["train"]["diverge_factor"], written["model"]["dtype"]
    config.write_text(yaml.safe_dump(written))
    client.log_batch(ids["h32-lr0.1-s4"], [Metric("loss", 9.9, 0, 4)])  # an earlier time
    weights = artifact(runs["h32-lr1000-s0"], "weights.pt")
    torch.save({k: v.double() for k, v in torch.load(weights).items()}, weights)
    db = sqlite3.connect(store.uri.removeprefix("sqlite:///"))
    with db:
        db.execute(
            "UPDATE params SET value = '0.5' WHERE key = 'optim.lr' AND run_uuid = ?",
            (ids["h32-lr1000-s2"],),
        )
        db.execute(
            "DELETE FROM params WHERE key IN ('train.diverge_factor', 'model.dtype') "
            "AND run_uuid = ?",
            (ids["h32-lr0.1-s2"],),
        )
        # A param deleted: config.yaml still has it (helper-37 found this missed).
        db.execute(
            "DELETE FROM params WHERE key = 'optim.lr' AND run_uuid = ?", (ids["h32-lr0.1-s1"],)
        )
    db.close()
    client.log_metric(ids["h32-lr1000-s3"], "best/loss", 0.5)  # a diverged run has none
    client.set_terminated(ids["h32-lr1000-s4"], "FAILED")
    client.log_metric(ids["h32-lr0.1-s5"], "epochs_run", math.nan)
    client.set_tag(ids["h32-lr1000-s5"], "diverged_at", "²")
    # A failed try of a configuration that finished when the sweep ran again: not counted.
    first = runs["h32-lr0.1-s0"]
    again = client.create_run(
        first.info.experiment_id,
        tags={k: first.data.tags[k] for k in ("role", "fingerprint", "mlflow.parentRunId")},
    )
    client.set_terminated(again.info.run_id, "FAILED")
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]  # one could not be checked
    found = lines(out)
    expected = {
        "h32-lr0.1-s0": "differs at epoch 29 final/loss 0.1 -> ",
        "h32-lr0.1-s1": "differs at epoch 0 param optim.lr not stored, config.yaml '0.1', "
        "largest difference inf; also epoch 29 regime ",
        "h32-lr0.1-s2": f"differs at epoch 0 fingerprint {'1' * 16}, config.yaml {old} (keys ",
        "h32-lr0.1-s3": f"differs at epoch 0 fingerprint {'0' * 16}, config.yaml {fingerprint}, "
        "largest difference inf; also epoch 30 weights.pt unreadable (",
        "h32-lr0.1-s4": "differs at epoch 4 loss (step 4 stored twice), ",
        "h32-lr1000-s0": "differs at epoch 1 final weights w1 dtype torch.float64 -> torch.float32",
        "h32-lr1000-s1": "identical",
        "h32-lr1000-s2": "differs at epoch 0 param optim.lr '0.5', config.yaml '1000.0', ",
        "h32-lr1000-s3": "differs at epoch 0 best/loss 0.5 -> None, ",
        "h32-lr1000-s4": "not replayable: it is FAILED",
        "h32-lr0.1-s5": "differs at epoch 29 epochs_run nan -> 30.0, largest difference inf",
        "h32-lr1000-s5": "differs at epoch 0 diverged_at ² -> ",
    }
    for name, start in expected.items():
        assert found[ids[name]].startswith(start), (name, found[ids[name]])
    assert client.get_run(ids["h32-lr0.1-s2"]).data.tags["replay.diffs"].splitlines() == [
        f"epoch 0 fingerprint {'1' * 16}, config.yaml {old} (keys added since the run: "
        "model.dtype, train.diverge_factor)",
        "epoch 7 diverged_at 7 -> None",
        "epoch 30 config.yaml is not the file the run wrote (tag files)",
    ]
    count, counts, answer = out.stdout.strip().splitlines()[-3:]
    assert count == "replayed 11 runs: 1 identical, 10 differ; 1 not replayable"
    # The parent's counts, made again from its runs: one ended FAILED since (helper-64).
    pid = store.runs("tags.role = 'sweep'")[0].info.run_id
    assert counts == (
        f"the sweep's counts (parent run {pid}): differ: sweep/finished 12 stored, 11 from its "
        "runs now; sweep/failed 0 stored, 1 from its runs now; sweep/diverged 6 stored, 5 from "
        "its runs now"
    ), counts
    assert client.get_run(pid).data.tags["replay.counts"].splitlines() == [
        "sweep/finished 12 stored, 11 from its runs now",
        "sweep/failed 0 stored, 1 from its runs now",
        "sweep/diverged 6 stored, 5 from its runs now",
    ]
    # The sweep's answer was made from the runs as they were.
    assert answer.startswith("the sweep's answer (parent run ") and ": differs: runs.csv: " in (
        answer
    ), answer

    config = artifact(runs["h32-lr1000-s1"], "config.yaml")
    for damaged in (b"a: [unclosed\n", "seed: \xe9\n".encode("latin-1")):
        config.write_bytes(damaged)
        out = replay(store, f"replay.run={ids['h32-lr1000-s1']}")
        assert out.returncode == 2, out.stdout + out.stderr[-3000:]
        assert "its config.yaml artifact cannot be read (" in lines(out)[ids["h32-lr1000-s1"]]

    client.log_param(ids["h32-lr0.1-s0"], "extra.key", "1")  # logged after the run
    out = replay(store, f"replay.run={ids['h32-lr0.1-s0']}")
    what = lines(out)[ids["h32-lr0.1-s0"]]
    assert what.startswith(
        "differs at epoch 0 param extra.key '1', not in config.yaml, largest difference inf; "
        "also epoch 29 final/loss 0.1 -> "
    ), what
    assert client.get_run(ids["h32-lr0.1-s0"]).data.tags["replay.diffs"].splitlines() == [
        "epoch 0 param extra.key '1', not in config.yaml",
        f"epoch 29 final/loss 0.1 -> {runs['h32-lr0.1-s0'].data.metrics['final/loss']}",
        "epoch 29 final/loss stored 2 times",
    ]

    # config.yaml without a key the run has a param of: helper-49 found the default it was
    # replayed with called config.yaml's, and the key taken for one added since the run.
    rid = ids["h32-lr1000-s3"]
    config = artifact(runs["h32-lr1000-s3"], "config.yaml")
    written = yaml.safe_load(config.read_text())
    del written["train"]["epochs"]
    config.write_text(yaml.safe_dump(written))
    out = replay(store, f"replay.run={rid}")
    diffs = client.get_run(rid).data.tags["replay.diffs"].splitlines()
    stored_fingerprint = runs["h32-lr1000-s3"].data.tags["fingerprint"]
    assert diffs[0].startswith(f"epoch 0 fingerprint {stored_fingerprint}, config.yaml "), diffs
    assert "added since" not in diffs[0]
    assert diffs[1] == (
        "epoch 0 param train.epochs '30', not in config.yaml (replayed with today's default '101')"
    )


def test_what_one_table_or_file_holds_alone_is_named(store: TmpStore) -> None:
    """Values only one of MLflow's two metric tables holds, tensors and steps a run does not
    have, and the runs of an answer's table: each replayed "identical", or was named without
    saying what (helper-41)."""
    train(store, "-m", "seed=range(6)", "train.epochs=20")
    runs = {r.data.params["seed"]: r for r in store.runs("tags.role = 'job'")}
    ids = {seed: run.info.run_id for seed, run in runs.items()}
    parent = store.runs("tags.role = 'sweep'")[0]
    pid = parent.info.run_id
    db = sqlite3.connect(store.uri.removeprefix("sqlite:///"))
    with db:
        # A summary metric's history gone, its latest value kept.
        db.execute("DELETE FROM metrics WHERE key = 'best/loss' AND run_uuid = ?", (ids["0"],))
        # A metric in the history alone, and one in the latest values alone.
        db.execute("INSERT INTO metrics VALUES ('foo', 1.0, 0, ?, 0, 0)", (ids["1"],))
        db.execute(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
            "VALUES ('bogus', 1.0, 0, 0, 0, ?)",
            (ids["0"],),
        )
        # A summary metric's latest value gone, its history kept.
        db.execute(
            "DELETE FROM latest_metrics WHERE key = 'best/epoch' AND run_uuid = ?", (ids["1"],)
        )
        # A negative step: it was compared with the last epoch's value.
        db.execute(
            "UPDATE metrics SET step = -1 WHERE key = 'loss' AND step = 0 AND run_uuid = ?",
            (ids["3"],),
        )
        db.execute(
            "DELETE FROM metrics WHERE key = 'accuracy' AND step IN (10, 12) AND run_uuid = ?",
            (ids["3"],),
        )
        # A summary metric moved to another step, its value kept (helper-64).
        for table in ("metrics", "latest_metrics"):
            db.execute(
                f"UPDATE {table} SET step = 7 WHERE key = 'final/loss' AND run_uuid = ?",
                (ids["2"],),
            )
        # A count's latest value changed alone (helper-64).
        db.execute(
            "UPDATE latest_metrics SET value = 99 WHERE key = 'sweep/jobs' AND run_uuid = ?",
            (pid,),
        )
        # The answer: a metric's history changed alone, and a run deleted since.
        db.execute(
            "UPDATE metrics SET value = 4 WHERE key = 'aggregate/used' AND run_uuid = ?", (pid,)
        )
    db.close()
    store.client.delete_run(ids["5"])
    files = parent.data.tags["aggregate.files"]
    store.client.set_tag(
        pid,
        "aggregate.files",
        "".join(f"{x}\n" for x in files.splitlines() if "report.md" not in x),
    )
    weights = artifact(runs["2"], "weights.pt")
    torch.save({**torch.load(weights), "w3": torch.zeros(2)}, weights)
    weights = artifact(runs["4"], "weights.pt")
    saved = torch.load(weights)
    torch.save({**saved, "w1": saved["w1"][:, :8]}, weights)

    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    diffs = {seed: store.client.get_run(ids[seed]).data.tags.get("replay.diffs") for seed in ids}
    best = runs["0"].data.metrics["best/loss"]
    assert diffs["0"].splitlines() == [
        "epoch 19 bogus 1.0 -> None",  # named once (helper-42)
        f"epoch 19 best/loss {best} as its latest value, no history",
    ]
    epoch = runs["1"].data.metrics["best/epoch"]
    assert diffs["1"].splitlines() == [
        f"epoch 19 best/epoch no latest value -> {epoch}",
        "epoch 19 foo 1.0 in its history, no latest value",
    ]
    written_again = "epoch 20 weights.pt is not the file the run wrote (tag files)"
    assert diffs["2"].splitlines() == [
        "epoch 19 final/loss stored at step 7, logged at step 0",
        "epoch 20 weights.pt holds more than w1 and w2: w3",
        written_again,
    ]
    assert diffs["3"].splitlines() == [
        "epoch 0 loss (step 0 missing; step -1 extra)",  # -1 is no epoch (helper-42)
        "epoch 10 accuracy (2 steps missing, first 10)",
    ]
    assert diffs["4"].splitlines() == [
        "epoch 20 final weights w1 shape (2, 8) -> (2, 32)",
        written_again,
    ]
    answer = out.stdout.strip().splitlines()[-1]
    used = parent.data.metrics["aggregate/used"]
    assert answer.startswith(f"the sweep's answer (parent run {pid}): differs: "), answer
    tags = store.client.get_run(pid).data.tags
    assert (
        f"runs.csv: 6 rows stored, 5 made now (stored only: {ids['5']})"
        in tags["replay.diffs"].splitlines()
    ), tags["replay.diffs"]
    diffs = tags["replay.diffs"].splitlines()
    assert diffs[0] == "tag aggregate.files does not list report.md: not checked", diffs
    assert f"metric aggregate/used {used} as its latest value, its history holds 4.0" in diffs
    # The parent's counts: the deleted run, and the changed latest value.
    assert tags["replay.counts"].splitlines() == [
        "sweep/finished 6 stored, 5 from its runs now",
        "metric sweep/jobs 99.0 as its latest value, its history holds 6.0",
    ], tags["replay.counts"]


def test_a_stored_value_that_is_no_number_is_not_replayable(store: TmpStore) -> None:
    """SQLite keeps any text in a number's column: a step 'abc' gave a traceback and exit 1,
    and an earlier replay's "identical" stood (helper-64); a latest value too (helper-65)."""
    train(store, "-m", "seed=0,1,2", "train.epochs=5", "hydra.sweeper.summarize=false")
    runs = {r.data.params["seed"]: r for r in store.runs("tags.role = 'job'")}
    cases = (
        (
            "0",
            "UPDATE metrics SET step = 'abc' WHERE key = 'loss' AND step = 3 AND run_uuid = ?",
            "not replayable: a stored metric value cannot be read (",
        ),
        (
            "1",
            "UPDATE latest_metrics SET value = 'abc' WHERE key = 'final/loss' AND run_uuid = ?",
            "not replayable: its latest value of final/loss is no number ('abc')",
        ),
    )
    for seed, statement, said in cases:
        rid = runs[seed].info.run_id
        store.client.set_tag(rid, "replay.status", "identical")
        execute(store, statement, rid)
        out = replay(store, f"replay.run={rid}")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert lines(out)[rid].startswith(said), lines(out)[rid]
        assert store.client.get_run(rid).data.tags["replay.status"] == "not replayable"
    # A folder where weights.pt was: not "missing" (helper-64).
    other = runs["2"]
    weights = artifact(other, "weights.pt")
    weights.unlink()
    weights.mkdir()
    (weights / "x").write_text("")
    out = replay(store, f"replay.run={other.info.run_id}")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    diffs = store.client.get_run(other.info.run_id).data.tags["replay.diffs"]
    assert "weights.pt unreadable (IsADirectoryError)" in diffs, diffs


def test_a_sweeps_counts_that_hold_no_number_are_not_checkable(store: TmpStore) -> None:
    """A count's latest value that is no number was a traceback (helper-65); the answer's
    line says there is none, and the counts' tag says why they were not checked."""
    train(store, "-m", "seed=0,1", "train.epochs=2", "hydra.sweeper.summarize=false")
    (parent,) = store.runs("tags.role = 'sweep'")
    pid = parent.info.run_id
    execute(
        store,
        "UPDATE latest_metrics SET value = 'x' WHERE key = 'sweep/reused' AND run_uuid = ?",
        pid,
    )
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    why = "not checkable: its latest value of sweep/reused is no number ('x')"
    assert out.stdout.strip().splitlines()[-2:] == [
        f"the sweep's counts (parent run {pid}): {why}",
        f"the sweep's answer (parent run {pid}): none stored",
    ], out.stdout
    assert store.client.get_run(pid).data.tags["replay.counts"] == why


def test_a_replay_that_cannot_be_logged_names_the_run_it_left(store: TmpStore) -> None:
    """replay.log=true, and the artifact store failed: the line said "not logged" while a
    FAILED run tagged replay.of stayed in the store, unnamed; an error other than an
    OSError (a remote artifact store's) was a traceback (helper-64)."""
    train(store, "train.epochs=5")
    (run,) = store.runs()
    rid = run.info.run_id
    blocker = store.root / "afile"
    blocker.write_text("")
    execute(store, "UPDATE experiments SET artifact_location = ?", f"{blocker.as_uri()}/artifacts")
    out = replay(store, f"replay.run={rid}", "replay.log=true")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (left,) = store.runs(f"tags.`replay.of` = '{rid}'")
    assert left.info.status == "FAILED"
    what = lines(out)[rid]
    assert what.startswith("identical (not logged: "), what
    assert what.endswith(f"; its run {left.info.run_id} ended FAILED)"), what


def test_a_metrics_history_is_checked_whatever_options_made_the_answer(store: TmpStore):
    """An answer stored before its alpha and min_effect were recorded is made again with
    their defaults; a history changed since is still named as such, not as options that
    do not make the answer again (helper-42)."""
    train(store, "-m", "seed=0,1", "train.epochs=5")
    parent = store.runs("tags.role = 'sweep'")[0]
    pid = parent.info.run_id
    for key in ("aggregate.alpha", "aggregate.min_effect"):
        store.client.delete_tag(pid, key)
    db = sqlite3.connect(store.uri.removeprefix("sqlite:///"))
    with db:
        db.execute(
            "UPDATE metrics SET value = 4 WHERE key = 'aggregate/used' AND run_uuid = ?", (pid,)
        )
    db.close()
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert (
        out.stdout.strip()
        .splitlines()[-1]
        .startswith(
            f"the sweep's answer (parent run {pid}): differs (alpha and min_effect were not "
            "recorded with it: their defaults taken): metric aggregate/used 2.0 as its latest "
            "value, its history holds 4.0; since then: "
        )
    ), out.stdout


def test_a_logged_replay_of_a_changed_config_is_named_by_it(store: TmpStore) -> None:
    """replay.log=true gives the new run the original's name only when config.yaml still
    makes the original's run: else the name says what it trained (helper-41). A run made
    before a training key existed (its fingerprint differs for that alone) keeps its name."""
    train(store, "train.epochs=5")
    run = store.runs()[0]
    config = artifact(run, "config.yaml")
    config.write_text(config.read_text().replace("lr: 0.001", "lr: 0.2"))
    out = replay(store, f"replay.run={run.info.run_id}", "replay.log=true")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    logged = [r for r in store.runs() if r.data.tags.get("replay.of") == run.info.run_id]
    assert [r.info.run_name for r in logged] == ["h32-lr0.2-s0-epochs5"]

    train(store, "train.epochs=5", "seed=1")
    (run,) = store.runs("params.seed = '1'")
    old = run.info.run_id
    # As a run made before model.dtype existed, and named by the fnnlab of then.
    config = artifact(run, "config.yaml")
    written = yaml.safe_load(config.read_text())
    del written["model"]["dtype"]
    config.write_text(yaml.safe_dump(written))
    db = sqlite3.connect(store.uri.removeprefix("sqlite:///"))
    with db:
        db.execute("DELETE FROM params WHERE key = 'model.dtype' AND run_uuid = ?", (old,))
    db.close()
    store.client.set_tag(old, "fingerprint", "1" * 16)
    store.client.update_run(old, name="h32-lr0.001-s1")
    out = replay(store, f"replay.run={old}", "replay.log=true")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    logged = [r for r in store.runs() if r.data.tags.get("replay.of") == old]
    assert [r.info.run_name for r in logged] == ["h32-lr0.001-s1"]


def answer_line(store: TmpStore, status: int) -> str:
    """The last line of a replay of the latest sweep (the answer's), after its exit status."""
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == status, out.stdout + out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_files_changed_after_the_answer_are_named(store: TmpStore, tmp_path) -> None:
    """The parent's tag aggregate.files holds sha256sum's lines for every file the answer
    wrote: `sha256sum -c` accepts the downloaded folder, and a file changed or written again
    since is named first, before what it changes in the answer."""
    train(store, "-m", "model.hidden_dim=4,8", "seed=0,1", "train.epochs=20")
    (parent,) = store.runs("tags.role = 'sweep'")
    pid = parent.info.run_id
    head = f"the sweep's answer (parent run {pid}): "
    digest = parent.data.tags["aggregate.files"]
    names = [line.split("  ")[1] for line in digest.splitlines()]
    assert {"runs.csv", "comparison.csv", "curves.csv", "report.md", "report.html"} <= set(names)
    folder = Path(store.client.download_artifacts(pid, "aggregate", str(tmp_path)))
    (tmp_path / "SHA256SUMS").write_text(digest)
    check = subprocess.run(
        ["sha256sum", "-c", str(tmp_path / "SHA256SUMS")],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and check.stdout.count(": OK") == len(names), check.stdout
    # The report edited by hand: the answer made again is the same, the file is not.
    changed = tmp_path / "changed"
    changed.mkdir()
    report = (folder / "report.md").read_text()
    (changed / "report.md").write_text(report.replace("leader", "winner"))
    store.client.log_artifact(pid, str(changed / "report.md"), "aggregate")
    assert answer_line(store, 1).startswith(
        head + "differs: aggregate/report.md is not the file the answer wrote "
        "(tag aggregate.files); since then: "
    )
    # A table edited: named first, then what differs in it.
    comparison = (folder / "comparison.csv").read_text().splitlines(keepends=True)
    comparison[1] = comparison[1].replace(",", ",9", 1)
    (changed / "comparison.csv").write_text("".join(comparison))
    store.client.log_artifact(pid, str(changed / "comparison.csv"), "aggregate")
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    diffs = store.client.get_run(pid).data.tags["replay.diffs"].splitlines()
    assert diffs[:2] == [
        "aggregate/comparison.csv is not the file the answer wrote (tag aggregate.files)",
        "aggregate/report.md is not the file the answer wrote (tag aggregate.files)",
    ], diffs
    assert diffs[2].startswith("comparison.csv: 1 of "), diffs
    # Made again by fnnlab-aggregate: the tag lists the new files, and they check.
    out = run_command(cli.aggregate, f"aggregate.out_dir={tmp_path / 'again'}", *store.overrides())
    assert out.returncode == 0, out.stderr[-3000:]
    assert answer_line(store, 0) == head + "identical"
    # Made again without figures: the earlier answer's stay (MLflow cannot delete them), and
    # the description says they are not of this answer.
    out = run_command(
        cli.aggregate,
        "aggregate.plots=false",
        f"aggregate.out_dir={tmp_path / 'no_plots'}",
        *store.overrides(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    tags = store.client.get_run(pid).data.tags
    figures = sorted(name for name in names if name.endswith(".png"))
    assert figures and not any(f in tags["aggregate.files"] for f in figures)
    listed = ", ".join(f"`aggregate/{f}`" for f in figures)
    assert tags["mlflow.note.content"].endswith(
        f"Not of this answer: {listed} (an earlier answer's; MLflow keeps them).\n"
    ), tags["mlflow.note.content"]
    assert answer_line(store, 0) == head + "identical"
    # Without the tag (an older fnnlab's answer, or deleted), what is not checked is said:
    # it read as all checked (helper-37).
    store.client.delete_tag(pid, "aggregate.files")
    assert answer_line(store, 0) == (
        head + "identical (its report and figures not checked: no tag aggregate.files)"
    )
    store.client.set_tag(pid, "aggregate.files", tags["aggregate.files"])
    # The description MLflow's UI shows on the parent (helper-49: edited, it replayed
    # identical): checked against its hash, and without the hash, said to be unchecked.
    note = tags["mlflow.note.content"]
    store.client.set_tag(pid, "mlflow.note.content", note.replace("leader", "winner", 1))
    assert answer_line(store, 1).startswith(
        head + "differs: the parent's description (tag mlflow.note.content) is not the one "
        "the answer wrote (tag aggregate.note_sha256); since then: "
    )
    store.client.set_tag(pid, "mlflow.note.content", note)
    store.client.delete_tag(pid, "aggregate.note_sha256")
    assert answer_line(store, 0) == (
        head + "identical (its description not checked: no tag aggregate.note_sha256)"
    )
    store.client.set_tag(pid, "aggregate.note_sha256", tags["aggregate.note_sha256"])
    # Its options not recorded, so made with the defaults (which make it): a file changed
    # since is a difference, not a sign that the defaults are not the options it had.
    for key in ("aggregate.alpha", "aggregate.min_effect"):
        store.client.delete_tag(pid, key)
    (tmp_path / "now").mkdir()
    now = store.client.download_artifacts(pid, "aggregate/report.md", str(tmp_path / "now"))
    (changed / "report.md").write_text("edited")
    store.client.log_artifact(pid, str(changed / "report.md"), "aggregate")
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    defaults = "(alpha and min_effect were not recorded with it: their defaults taken)"
    assert (
        out.stdout.strip()
        .splitlines()[-1]
        .startswith(
            f"{head}differs {defaults}: aggregate/report.md is not the file the answer wrote "
            "(tag aggregate.files); since then: "
        )
    )
    # A metric of the answer's kind that today's answer does not make (helper-49: it passed
    # unsaid). MLflow cannot delete it, so it is named, not a difference (helper-50: the
    # answer made again could not clear it).
    for key in ("alpha", "min_effect"):
        store.client.set_tag(pid, f"aggregate.{key}", tags[f"aggregate.{key}"])
    store.client.log_artifact(pid, now, "aggregate")
    assert answer_line(store, 0) == head + "identical"
    store.client.log_metric(pid, "aggregate/seeds_needed", 19)
    store.client.log_metric(pid, "aggregate/best_mean", 0.5)
    assert answer_line(store, 0) == head + (
        "identical (not made by the answer, so not checked: metrics aggregate/best_mean, "
        "aggregate/seeds_needed)"
    )


def test_a_line_names_the_first_differences_and_the_tag_every_one() -> None:
    """Beyond SHOWN_DIFFS more, a line counts the rest; replay.diffs has every one, cut to
    the tag limit."""
    info = RunInfo("a" * 32, "0", "u", "FINISHED", 0, 1, "active", run_name="h8-lr0.1-s0")
    diffs = [Diff(e, 0, key, 1e-9, f"{e} of 40 values") for e, key in enumerate(METRICS)]
    result = Replay(run=Run(info, None), diffs=diffs)
    line = result.line()
    shown = [d.text() for d in diffs[1 : 1 + SHOWN_DIFFS]]
    assert line == (
        f"h8-lr0.1-s0 ({'a' * 32}): differs at epoch 0 loss (0 of 40 values, largest 1e-09), "
        f"largest difference 1e-09; also {', '.join(shown)} and "
        f"{len(diffs) - 1 - SHOWN_DIFFS} more (tag replay.diffs); "
        "since then: no recorded difference in environment"
    )
    assert cut_lines(result.diff_lines()).splitlines() == [d.text() for d in diffs]
    # Beyond the limit: the whole lines that fit with "...", and not one more.
    texts = [d.text() for d in diffs * 100]
    *kept, last = cut_lines(texts).splitlines()
    assert last == "..." and kept == texts[: len(kept)]
    assert len(cut_lines(texts)) <= MAX_TAG_VALUE
    assert len("\n".join([*texts[: len(kept) + 1], "..."])) > MAX_TAG_VALUE
    # One long line (a param's value of thousands of characters) is cut, and the short
    # lines after it are kept.
    long = f"epoch 0 param data.name {'x' * 6000!r}, config.yaml 'iris'"
    first, *rest = cut_lines([long, *texts[:3]]).splitlines()
    assert first == long[: MAX_DIFF_LINE - 3] + "..." and rest == texts[:3]


def test_the_sweeps_answer_is_made_again_and_compared(store: TmpStore, tmp_path) -> None:
    """replay.sweep also makes the answer stored on the sweep's parent again, from the runs the
    store holds and with the options it was made with, and compares its tables, metrics and
    tags exactly: a value changed after the answer was made is found."""
    train(store, "-m", "model.hidden_dim=4,8", "seed=0,1", "train.epochs=20")
    (parent,) = store.runs("tags.role = 'sweep'")
    pid = parent.info.run_id
    head = f"the sweep's answer (parent run {pid}): "
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == head + "identical"
    tags = store.client.get_run(pid).data.tags
    assert tags["replay.status"] == "identical" and "replay.diffs" not in tags
    assert (tags["aggregate.alpha"], tags["aggregate.min_effect"]) == ("0.05", "null")
    # What made the answer is recorded with it: the code its runs were made with, here.
    (job, *_) = store.runs("tags.role = 'job'")
    for key in ("code", "torch", "mlflow", "git_commit", "git_dirty"):
        assert tags[f"aggregate.env.{key}"] == job.data.tags[f"env.{key}"], key
    # An answer stored before its alpha and min_effect were: made with the defaults, and said.
    for key in ("aggregate.alpha", "aggregate.min_effect"):
        store.client.delete_tag(pid, key)
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == head + (
        "identical (alpha and min_effect were not recorded with it: their defaults taken)"
    )
    # fnnlab-aggregate's options are recorded, and the answer is made again with them.
    out = run_command(
        cli.aggregate,
        "aggregate.outcome=final_loss",
        "aggregate.alpha=0.1",
        "aggregate.min_effect=0",
        "aggregate.plots=false",
        f"aggregate.out_dir={tmp_path / 'answer'}",
        *store.overrides(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    tags = store.client.get_run(pid).data.tags
    assert (tags["aggregate.alpha"], tags["aggregate.min_effect"]) == ("0.1", "0.0")
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == head + "identical"
    # Not recorded, and not the defaults: not checkable, rather than a false difference.
    for key in ("aggregate.alpha", "aggregate.min_effect"):
        store.client.delete_tag(pid, key)
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    assert (
        out.stdout.strip()
        .splitlines()[-1]
        .startswith(
            head + "not checkable: its alpha and min_effect were not recorded, and their defaults "
            "do not make it again (comparison.csv: "
        )
    )
    # Or fnnlab changed since: said too (an older answer read as if its options were to blame).
    code = store.client.get_run(pid).data.tags["aggregate.env.code"]
    store.client.set_tag(pid, "aggregate.env.code", "0123456789abcdef")
    out = replay(store, "replay.sweep=latest")
    assert f"; since then: code 0123456789abcdef -> {code}" in out.stdout, out.stdout
    store.client.set_tag(pid, "aggregate.env.code", code)
    store.client.set_tag(pid, "aggregate.alpha", "0.1")  # one of the two: a changed tag
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert (
        out.stdout.strip()
        .splitlines()[-1]
        .startswith(head + "differs: tag aggregate.min_effect None -> 'null'; since then: ")
    )
    store.client.set_tag(pid, "aggregate.min_effect", "0.0")
    # A run's stored final loss changed after the answer was made.
    (run,) = store.runs(
        "tags.role = 'job' and params.`model.hidden_dim` = '4' and params.seed = '1'"
    )
    db = sqlite3.connect(store.uri.removeprefix("sqlite:///"))
    with db:
        for table in ("metrics", "latest_metrics"):
            db.execute(
                f"UPDATE {table} SET value = value + 0.5 WHERE run_uuid = ? AND key = 'final/loss'",
                (run.info.run_id,),
            )
    db.close()
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    was = run.data.metrics["final/loss"]
    assert last.startswith(
        f"{head}differs: runs.csv: 2 of 96 values differ, first run_name={run.info.run_name} "
    ), last
    assert f"final_loss {was} -> {was + 0.5}; and 2 more (tag replay.diffs); since then: " in (
        last
    ), last
    tags = store.client.get_run(pid).data.tags
    assert tags["replay.status"] == "differs"
    diffs = tags["replay.diffs"].splitlines()
    assert [d.split(":")[0] for d in diffs] == ["runs.csv", "summary.csv", "comparison.csv"], diffs
    # A difference says what changed since the answer was made, as a run's does.
    code = tags["aggregate.env.code"]
    store.client.set_tag(pid, "aggregate.env.code", "0" * 16)
    store.client.set_tag(pid, "aggregate.env.scipy", "0.1")
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    since = out.stdout.strip().splitlines()[-1].split("; since then: ")[1]
    assert since.startswith(f"scipy 0.1 -> {scipy.__version__}; code {'0' * 16} -> {code}"), since
    for key in [k for k in tags if k.startswith("aggregate.env.")]:
        store.client.delete_tag(pid, key)
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert out.stdout.strip().endswith("; since then: not recorded with this answer")
    # A sweep that made no answer: nothing to compare, and said so.
    train(
        store,
        "-m",
        "model.hidden_dim=4",
        "seed=0,1",
        "train.epochs=10",
        "hydra.sweeper.summarize=false",
    )
    out = replay(store, "replay.sweep=latest")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    (other,) = [p for p in store.runs("tags.role = 'sweep'") if p.info.run_id != pid]
    assert out.stdout.strip().splitlines()[-1] == (
        f"the sweep's answer (parent run {other.info.run_id}): none stored"
    )


def test_an_answer_is_checked_whatever_it_holds(store: TmpStore, tmp_path) -> None:
    """An answer without a finished run, a run's error over several lines (CRLF included) in
    runs.csv, a stored table that is no longer a table, an answer of a version that did not
    record its options; a filter longer than its tag is refused."""
    train(store, "-m", "model.hidden_dim=4", "seed=0,1", "train.epochs=10")
    (parent,) = store.runs("tags.role = 'sweep'")
    head = f"the sweep's answer (parent run {parent.info.run_id}): "
    failed = store.runs("params.seed = '1'")[0].info.run_id
    store.client.set_terminated(failed, "FAILED")
    store.client.set_tag(failed, "error", "MlflowException: 502\r\n<html>Bad Gateway</html>\r\n")

    def aggregate(*overrides: str) -> subprocess.CompletedProcess:
        out_dir = f"aggregate.out_dir={tmp_path / 'answer'}"
        return run_command(cli.aggregate, *overrides, out_dir, *store.overrides())

    def answer() -> str:
        out = replay(store, "replay.sweep=latest")
        assert out.returncode == 2, out.stdout + out.stderr[-3000:]  # the failed run
        return out.stdout.strip().splitlines()[-1]

    out = aggregate("aggregate.filter=\"attributes.status = 'FAILED'\"")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no run finished: no configuration to show" in out.stdout
    # The report and the parent's description say so too, not an empty table.
    report = (tmp_path / "answer" / "report.md").read_text()
    assert "No run finished: no configuration to show." in report and "| verdict |" not in report
    note = store.runs("tags.role = 'sweep'")[0].data.tags["mlflow.note.content"]
    assert "No run finished: no configuration to show." in note and "|" not in note
    html = (tmp_path / "answer" / "report.html").read_text()
    assert "<p>No run finished: no configuration to show.</p>" in html and "<table" not in html
    assert answer() == head + "identical"
    out = aggregate()
    assert out.returncode == 0, out.stderr[-3000:]
    assert answer() == head + "identical"
    (artifact(parent, "aggregate") / "summary.csv").write_bytes(b"")
    changed = "aggregate/summary.csv is not the file the answer wrote (tag aggregate.files)"
    assert answer().startswith(head + f"differs: {changed}; and 1 more (tag replay.diffs)")
    assert store.client.get_run(parent.info.run_id).data.tags["replay.diffs"].splitlines() == [
        changed,
        "summary.csv: the stored file differs, and is not a table (EmptyDataError)",
    ]
    # A field more in every row than in the header: a difference, not a traceback.
    out = aggregate()
    assert out.returncode == 0, out.stderr[-3000:]
    summary = artifact(parent, "aggregate") / "summary.csv"
    header, *rows = summary.read_text().splitlines()
    summary.write_text("\n".join([header, *(f"{row},x" for row in rows)]) + "\n")
    assert answer().startswith(head + f"differs: {changed}; and 1 more")
    diffs = store.client.get_run(parent.info.run_id).data.tags["replay.diffs"].splitlines()
    assert diffs[1].startswith("summary.csv: "), diffs
    store.client.delete_tag(parent.info.run_id, "aggregate.outcome")
    untagged = head + (
        "not checkable: it has tables but no aggregate.outcome tag (an older fnnlab's answer, "
        "or one that stopped half-way)"
    )
    assert answer() == untagged
    # Any file every answer writes says one was stored, not runs.csv alone (helper-44).
    tables = [artifact(parent, "aggregate") / name for name in TABLES]
    kept = [t.read_bytes() for t in tables]
    tables[0].unlink()
    assert answer() == untagged
    for t in tables[1:]:
        t.unlink()
    assert answer() == untagged  # its report.md and report.html
    for t, data in zip(tables, kept, strict=True):
        t.write_bytes(data)
    # An option that no longer makes an answer (a tag changed by hand).
    store.client.set_tag(parent.info.run_id, "aggregate.outcome", "bogus")
    # The file changed by hand is named all the same.
    assert answer() == head + (
        "not checkable: it cannot be made again (aggregate.outcome=bogus: must be one of "
        f"tail_loss, final_loss, best_loss, final_accuracy); and {changed}"
    )
    out = aggregate(f"aggregate.filter=\"params.seed != '{'x' * MAX_TAG_VALUE}'\"")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"fnnlab-aggregate: error: aggregate.filter=params.seed != '{'x' * 24}...: longer than "
        f"{MAX_TAG_VALUE} characters, what the tag that records it holds"
    )


def test_replay_creates_no_store_and_no_experiment(store: TmpStore, tmp_path, capsys, monkeypatch):
    """A typo in tracking.uri or tracking.experiment is one line and exit 2, with nothing
    left behind; replay.run replays in that run's own experiment, whatever
    tracking.experiment says, and logs a replay there."""
    train(store, "train.epochs=5", "ui.host=127.0.0.1\\${x}")  # "${" in a value: text
    (run,) = store.runs()
    assert run.data.params["ui.host"] == "127.0.0.1${x}"
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # replay sets it
    missing = tmp_path / "nothing" / "mlflow.db"
    empty = tmp_path / "empty.db"
    empty.touch()
    typo = TmpStore(root=store.root, uri=store.uri, experiment="typo")
    for args, words in (
        (["replay.sweep=latest", f"tracking.uri=sqlite:///{missing}"], "no database file"),
        (["replay.sweep=latest", f"tracking.uri=sqlite:///{empty}"], "an empty file"),
        (["replay.sweep=latest", *typo.overrides()], "tracking.experiment=typo"),
    ):
        capsys.readouterr()
        assert run_in_process(monkeypatch, cli.replay, *args) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("fnnlab-replay: error: ") and words in line, line
    assert not missing.parent.exists() and empty.stat().st_size == 0
    status = run_in_process(
        monkeypatch,
        cli.replay,
        f"replay.run={run.info.run_id}",
        "replay.log=true",
        *typo.overrides(),
    )
    assert status == 0
    assert store.client.get_experiment_by_name("typo") is None
    (logged,) = store.runs(f"tags.`replay.of` = '{run.info.run_id}'")
    assert logged.info.experiment_id == run.info.experiment_id
    # The run's experiment deleted: named with the key given, not tracking.experiment
    # (helper-49), and nothing written.
    eid = run.info.experiment_id
    store.client.delete_experiment(eid)
    before = store.db_bytes()
    capsys.readouterr()
    assert (
        run_in_process(monkeypatch, cli.replay, f"replay.run={run.info.run_id}", *typo.overrides())
        == 2
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"fnnlab-replay: error: replay.run={run.info.run_id}: its experiment {store.experiment} "
        f"is deleted in this store (experiment {eid}): restore it (`mlflow experiments restore "
        f"-x {eid}` with MLFLOW_TRACKING_URI set to the store) to replay its runs"
    )
    assert store.db_bytes() == before
    store.client.restore_experiment(eid)


def test_replay_through_the_postgres_tracking_server(tracking_server, tmp_path) -> None:
    exp = "replay-server"
    args = tracking_server.overrides(exp, tmp_path)
    out = run_script("fnnlab-train", "-m", "model.hidden_dim=4,8", "train.epochs=30", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    out = run_script("fnnlab-replay", "replay.sweep=latest", *args)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert set(lines(out).values()) == {"identical"} and len(lines(out)) == 2
    # The sweep's answer too, its tables read back through the server.
    (parent,) = tracking_server.runs(exp, "tags.role = 'sweep'")
    assert out.stdout.strip().splitlines()[-1] == (
        f"the sweep's answer (parent run {parent.info.run_id}): identical"
    )
    for run in [*tracking_server.runs(exp, "tags.role = 'job'"), parent]:
        assert run.data.tags["replay.status"] == "identical"


@pytest.fixture
def dirty_repo(tmp_path: Path, monkeypatch):
    """A git checkout with a changed tracked file, standing in for the project's tree."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    (repo / "model.py").write_text("width = 8\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    (repo / "model.py").write_text("width = 16\n")
    caches = (
        provenance.commit_at,
        provenance.git_state,
        provenance._static_tags,
        provenance.code_hash,
    )
    for c in caches:
        c.cache_clear()
    monkeypatch.setattr(provenance, "project_root", lambda: repo)
    yield repo
    for c in caches:
        c.cache_clear()


def test_a_run_from_a_dirty_tree_carries_its_diff(dirty_repo, store) -> None:
    commit, dirty, diff = provenance.git_state()
    assert dirty and b"-width = 8\n+width = 16" in diff and len(commit) == 40
    cut = provenance.diff_artifact(cap=20)
    assert cut.startswith(diff[:20]) and f"diff cut at 20 of {len(diff)} bytes".encode() in cut
    train(store, "train.epochs=5")
    (run,) = store.runs()
    tags = run.data.tags
    assert tags["env.git_dirty"] == "true" and tags["env.git_commit"] == commit
    assert len(tags["env.git_diff_sha256"]) == 16
    path = store.client.download_artifacts(
        run.info.run_id, provenance.DIFF_ARTIFACT, str(store.root)
    )
    assert Path(path).read_bytes() == diff


def test_a_checkout_git_cannot_read_is_dirty_unknown(dirty_repo, store) -> None:
    # A damaged index: git still names the commit, but cannot say what changed.
    (dirty_repo / ".git" / "index").write_bytes(b"not an index")
    commit, dirty, diff = provenance.git_state()
    assert len(commit) == 40 and dirty is None and diff is None
    assert provenance.diff_artifact() is None
    # The run's tags and the process tags ask git once.
    assert tracking.process_tags()[Tag.GIT_COMMIT] == commit
    assert provenance.commit_at.cache_info().currsize == 1
    train(store, "train.epochs=5")
    (run,) = store.runs()
    tags = run.data.tags
    assert tags["env.git_dirty"] == "unknown" and tags["env.git_commit"] == commit
    assert tags[Tag.GIT_COMMIT] == commit and "env.git_diff_sha256" not in tags
    base = {"env.git_commit": commit}
    for then, now, line in (
        ("unknown", "false", "dirty tree unknown then"),
        ("false", "unknown", "dirty tree unknown now"),
        ("unknown", "true", "dirty tree now"),
    ):
        said = provenance.env_diff(base | {"env.git_dirty": then}, base | {"env.git_dirty": now})
        assert line in said, said
    assert (
        provenance.env_diff(
            base | {"env.git_dirty": "unknown"}, base | {"env.git_dirty": "unknown"}
        )
        == []
    )


def test_a_diff_git_cannot_make_is_not_stored_as_empty(dirty_repo) -> None:
    """helper-49: git could list an untracked file but not diff a damaged object; the run
    was dirty with the hash of an empty diff, and an empty git_diff.patch."""
    (dirty_repo / "notes.txt").write_text("untracked\n")
    blob = subprocess.run(
        ["git", "-C", str(dirty_repo), "rev-parse", "HEAD:model.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    obj = dirty_repo / ".git" / "objects" / blob[:2] / blob[2:]
    obj.chmod(0o644)
    obj.write_bytes(b"junk")
    commit, dirty, diff = provenance.git_state()
    assert dirty is True and diff is None
    assert provenance.diff_artifact() is None
    tags = provenance.env_tags("data")
    assert tags["env.git_dirty"] == "true" and "env.git_diff_sha256" not in tags
    # Replayed once git can make the diff again: unknown then, not none (helper-50).
    now = tags | {"env.git_diff_sha256": "ff5e6cbfcf32f768"}
    assert "diff unknown -> ff5e6cbfcf32f768" in provenance.env_diff(tags, now)


def test_resume_reruns_jobs_made_by_other_code(store: TmpStore) -> None:
    sweep = ["-m", "model.hidden_dim=4,8", "seed=0,1", "train.epochs=5", "tracking.plots=false"]
    out = run_command(cli.train, *sweep, *store.overrides())
    assert out.returncode == 0, out.stderr[-3000:]
    # Two runs as if made by other code: their recorded code hash is not today's.
    jobs = store.runs("tags.role = 'job'")
    for run in jobs[:2]:
        store.client.set_tag(run.info.run_id, "env.code", "0" * 16)
    # The later command in a process of its own: what it reuses must be the same across
    # processes, not only within one (helper-51).
    by_config = run_script(
        "fnnlab-train", *sweep, "hydra.sweeper.resume_match=config", *store.overrides()
    )
    assert by_config.returncode == 0, by_config.stderr[-3000:]
    assert "skipping 4 of 4 jobs" in by_config.stdout + by_config.stderr
    assert len(store.runs("tags.role = 'job'")) == 4
    by_code = run_script("fnnlab-train", *sweep, *store.overrides())
    assert by_code.returncode == 0, by_code.stderr[-3000:]
    assert "skipping 2 of 4 jobs that already have a FINISHED run with the same code; " in (
        by_code.stdout + by_code.stderr
    )
    assert "running 2 again because the code changed" in by_code.stdout + by_code.stderr
    assert len(store.runs("tags.role = 'job'")) == 6
    bad = run_command(cli.train, *sweep, "hydra.sweeper.resume_match=fuzzy", *store.overrides())
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "fnnlab-train: error: hydra.sweeper.resume_match=fuzzy: must be one of code, config"
    )


def test_a_sweep_run_again_keeps_its_own_runs_not_a_logged_replay(store: TmpStore) -> None:
    """replay.log=true makes a later FINISHED run of the same configuration: the sweep run
    again counted it as reused from outside itself, and another sweep reused the copy."""
    sweep = ["-m", "seed=0,1", "train.epochs=5", "tracking.plots=false"]
    assert run_command(cli.train, *sweep, *store.overrides()).returncode == 0
    own = {r.info.run_id for r in store.runs("tags.role = 'job'")}
    first = sorted(own)[0]
    assert replay(store, f"replay.run={first}", "replay.log=true").returncode == 0
    (copy,) = store.runs(f"tags.`replay.of` = '{first}'")
    again = run_command(cli.train, *sweep, *store.overrides())
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 finished (0 diverged), 0 failed" in again.stdout, again.stdout
    # Another sweep that takes that configuration reuses the original, not the copy.
    other = run_command(
        cli.train,
        "-m",
        "seed=0,1,2",
        "train.epochs=5",
        "tracking.plots=false",
        *store.overrides(),
        f"hydra.sweep.dir={store.root}/other",
    )
    assert other.returncode == 0, other.stderr[-3000:]
    assert "3 finished (0 diverged, 2 reused from outside this sweep)" in other.stdout
    assert not any(
        k.startswith("fnnlab.sweep.") for k in store.client.get_run(copy.info.run_id).data.tags
    )
    assert replay(store, "replay.sweep=latest").returncode == 0
