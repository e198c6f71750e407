"""What the throughput work must not change: a swept run equals the same run made alone,
and a parallel sweep into SQLite (the fnnlab launcher's workers, Hydra's joblib launcher)
loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_artifacts, run_command, run_script
from mlflow.exceptions import MlflowException

from fnnlab import cli
from fnnlab.tracking import retry_locked
from fnnlab.train import METRICS

EPOCHS = 25


def job_runs(store) -> list:
    return store.runs("tags.role = 'job'")


def history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in METRICS
    }


def artifact_files(client, run_id: str, tmp: Path) -> set[str]:
    root = Path(client.download_artifacts(run_id, "", str(tmp)))
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher", [[], ["hydra.launcher.n_jobs=2"]], ids=["in-process", "workers"]
)
def test_swept_run_equals_the_same_run_alone(launcher, store, tmp_path):
    common = [f"train.epochs={EPOCHS}", *store.overrides()]
    swept = run_script(
        "fnnlab-train",
        "-m",
        "model.hidden_dim=8,32",
        "optim.lr=0.1,1.0",
        "seed=1",
        *launcher,
        *common,
    )
    assert swept.returncode == 0, swept.stderr
    alone = run_command(cli.train, "model.hidden_dim=32", "optim.lr=1.0", "seed=1", *common)
    assert alone.returncode == 0, alone.stderr

    runs = job_runs(store)
    assert len(runs) == 5
    single = [r for r in runs if "sweep_id" not in r.data.tags]
    assert len(single) == 1
    single = single[0]
    twin = [
        r
        for r in runs
        if "sweep_id" in r.data.tags
        and r.data.tags["fingerprint"] == single.data.tags["fingerprint"]
    ]
    assert len(twin) == 1
    twin = twin[0]
    client = store.client
    assert twin.info.status == single.info.status == "FINISHED"
    assert twin.data.params == single.data.params
    # Every per-epoch value and every summary value, exactly.
    assert history(client, twin.info.run_id) == history(client, single.info.run_id)
    assert len(history(client, single.info.run_id)["loss"]) == EPOCHS
    assert twin.data.metrics == single.data.metrics
    for key in ("diverged", "fingerprint"):
        assert twin.data.tags[key] == single.data.tags[key]
    weights = [
        torch.load(
            client.download_artifacts(r.info.run_id, "weights.pt", str(tmp_path / r.info.run_id))
        )
        for r in (twin, single)
    ]
    assert torch.equal(weights[0]["w1"], weights[1]["w1"])
    assert torch.equal(weights[0]["w2"], weights[1]["w2"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [["hydra.launcher.n_jobs=2"], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
    ids=["fnnlab-workers", "hydra-joblib"],
)
def test_parallel_sweep_into_sqlite_loses_nothing(launcher, store, tmp_path):
    result = run_script(
        "fnnlab-train",
        "-m",
        *launcher,
        "model.hidden_dim=8,32",
        "optim.lr=0.01,1.0",
        "seed=0,1,2",
        f"train.epochs={EPOCHS}",
        *store.overrides(),
    )
    assert result.returncode == 0, result.stderr
    parent = store.runs("tags.role = 'sweep'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.metrics["sweep/finished"] == 12
    runs = job_runs(store)
    assert len(runs) == 12
    assert len({r.data.tags["fingerprint"] for r in runs}) == 12
    client = store.client
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        # Jobs ran in the workers, not in the sweep's own process.
        assert run.data.tags["fnnlab.pid"] != parent[0].data.tags["fnnlab.pid"]
        steps = int(run.data.metrics["epochs_run"])
        assert steps == EPOCHS or run.data.tags["diverged"] == "true"
        for key, values in history(client, run.info.run_id).items():
            assert [s for s, _ in values] == list(range(steps)), key
        assert artifact_files(client, run.info.run_id, tmp_path / run.info.run_id) == run_artifacts(
            run
        )


def test_store_writes_retry_while_sqlite_is_locked():
    calls = []

    def write(value):
        calls.append(value)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return value

    assert retry_locked(write, "ok") == "ok"
    assert calls == ["ok"] * 3


def test_other_store_errors_are_not_retried():
    calls = []

    def write():
        calls.append(1)
        raise MlflowException("Run 'x' not found")

    with pytest.raises(MlflowException, match="not found"):
        retry_locked(write)
    assert calls == [1]
