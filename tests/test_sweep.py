"""End-to-end multiruns into a real SQLite MLflow store, checked through MlflowClient."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import RUN_ARTIFACTS, run_in_process, run_script

from fnnlab import cli, job
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
    proc = run_script(
        "fnnlab-train", "-m", "model.hidden_dim=4,8", "optim.lr=0.01,0.1", *store.overrides()
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
        assert artifact_paths(client, run.info.run_id) == RUN_ARTIFACTS
        weights = torch.load(
            client.download_artifacts(run.info.run_id, "weights.pt", str(tmp_path))
        )
        assert weights["w1"].shape == (2, h) and weights["w2"].shape == (h, 1)
    assert {(h, lr) for h, lr, _ in seen} == set(itertools.product([4, 8], [0.01, 0.1]))
    assert sorted(n for _, _, n in seen) == [0, 1, 2, 3]


@pytest.mark.slow
def test_failing_and_diverging_jobs_in_one_sweep(store, monkeypatch):
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
    assert parents[0].data.metrics["sweep/failed"] == 1
    assert parents[0].data.metrics["sweep/diverged"] == 2
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"h4-lr0.01-s0", "h8-lr0.01-s0", "h4-lr1000-s0", "h8-lr1000-s0"}

    failed = by_name["h8-lr0.01-s0"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"] == "RuntimeError: injected fault"
    assert (failed.data.params["model.hidden_dim"], failed.data.params["optim.lr"]) == ("8", "0.01")
    assert by_name["h4-lr0.01-s0"].info.status == "FINISHED"
    assert by_name["h4-lr0.01-s0"].data.tags["diverged"] == "false"

    client = store.client
    for name in ("h4-lr1000-s0", "h8-lr1000-s0"):
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
    assert parents[0].data.metrics["sweep/skipped"] == 3
    statuses = sorted((r.info.run_name, r.info.status) for r in children)
    assert statuses == [
        ("h4-lr0.01-s0", "FINISHED"),
        ("h4-lr1000-s0", "FINISHED"),
        ("h8-lr0.01-s0", "FAILED"),
        ("h8-lr0.01-s0", "FINISHED"),
        ("h8-lr1000-s0", "FINISHED"),
    ]


def test_single_run_records_the_reference_deviation(store):
    proc = run_script("fnnlab-train", "experiment=reference", *store.overrides())
    assert proc.returncode == 0, proc.stderr
    (run,) = store.runs()
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.metrics["reference/max_abs_dev"] <= 1e-6
    assert run.info.run_name == "h32-lr0.001-s2"
    assert "loss.png" in artifact_paths(store.client, run.info.run_id)


def _plots_in_helper(monkeypatch, broken: str | None = None) -> list[bool]:
    """Make every run of an in-process sweep wait for a ready plot helper, so that each
    run's end is deferred to the next job; the run named `broken` gets its plots sent to
    a folder that does not exist, so the helper's drawing fails. Returns, per run,
    whether its plots were in the helper."""
    from fnnlab import plot_helper

    real_begin, in_helper = plot_helper.begin, []

    def begin(curves, art, name, published):
        assert plot_helper._helper is not None and plot_helper._helper.is_ready(wait=60)
        pending = real_begin(curves, art / "missing" if name == broken else art, name, published)
        in_helper.append(pending.in_helper)
        return pending

    monkeypatch.setattr(plot_helper, "begin", begin)
    return in_helper


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2], ids=["ended-by-next-job", "ended-by-launcher"])
def test_a_run_failing_at_its_deferred_end_fails_its_job_alone(store, monkeypatch, seed):
    in_helper = _plots_in_helper(monkeypatch, broken=f"h8-lr0.1-s{seed}")
    args = ["-m", "model.hidden_dim=8", "optim.lr=0.1", "seed=0,1,2", "train.epochs=20"]
    assert run_in_process(monkeypatch, cli.train, *args, *store.overrides()) == 1
    assert in_helper == [True, True, True]

    parents, children = split_runs(store)
    assert parents[0].info.status == "FAILED" and parents[0].data.metrics["sweep/failed"] == 1
    by_name = {r.info.run_name: r for r in children}
    failed = by_name.pop(f"h8-lr0.1-s{seed}")
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"].startswith("FileNotFoundError")
    assert len(by_name) == 2
    for run in by_name.values():
        assert run.info.status == "FINISHED"
        assert artifact_paths(store.client, run.info.run_id) == RUN_ARTIFACTS


@pytest.mark.slow
def test_an_interrupt_still_ends_the_deferred_runs_before_it(store, monkeypatch):
    in_helper = _plots_in_helper(monkeypatch)
    real_train = job.train_model

    def interrupt_third(cfg, *args, **kwargs):
        if cfg.seed == 2:
            raise KeyboardInterrupt
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(job, "train_model", interrupt_third)
    args = ["-m", "model.hidden_dim=8", "optim.lr=0.1", "seed=0,1,2", "train.epochs=20"]
    assert run_in_process(monkeypatch, cli.train, *args, *store.overrides()) == 130
    assert in_helper == [True, True]

    parents, children = split_runs(store)
    assert parents[0].info.status == "KILLED"
    status = {r.info.run_name: r.info.status for r in children}
    # The second run's end was still deferred when the third job was interrupted.
    assert status == {"h8-lr0.1-s0": "FINISHED", "h8-lr0.1-s1": "FINISHED", "h8-lr0.1-s2": "KILLED"}
    for run in children:
        if run.info.status == "FINISHED":
            assert artifact_paths(store.client, run.info.run_id) == RUN_ARTIFACTS
