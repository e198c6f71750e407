"""Runs of any length on every store, and the configuration space rather than its default
point: property-based runs over widths, epochs, learning rates, modes and dtypes."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    LEARNING_RATES,
    TmpStore,
    compose_train,
    log_uniform_int,
    run_command,
    run_script,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from fnnlab import cli, job, plots, replay, tracking
from fnnlab.data import load_iris2
from fnnlab.model import ScratchFNN, bce_with_logits, mean_bce
from fnnlab.train import METRICS, fit

# --- what a complete run holds -----------------------------------------------------------


def check_run(client: MlflowClient, run_id: str, epochs: int, every: int = 1) -> dict:
    """Assert that the stored run is FINISHED and holds exactly the steps it should of every
    metric, with summaries that agree with its curves. Returns its metric histories."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    m, tags = run.data.metrics, run.data.tags
    ran = int(m["epochs_run"])
    if tags["diverged"] == "true":
        assert int(tags["diverged_at"]) == ran < epochs
    else:
        assert ran == epochs and "diverged_at" not in tags
    expected = list(tracking.logged_steps(ran, every))
    curves = {}
    for key in METRICS:
        history = sorted((h.step, h.value) for h in client.get_metric_history(run_id, key))
        assert [s for s, _ in history] == expected, key
        values = np.array([v for _, v in history])
        assert np.isfinite(values).all(), key
        curves[key] = values
        if ran and tags["diverged"] == "false":
            assert m[f"final/{key}"] == values[-1], key
    if ran and tags["diverged"] == "false":
        assert m["best/loss"] <= curves["loss"].min()
        assert 0 <= m["best/epoch"] < ran
        if every == 1:
            assert m["best/loss"] == curves["loss"].min()
            assert curves["loss"][int(m["best/epoch"])] == m["best/loss"]
            tail = curves["loss"][-max(1, math.ceil(0.1 * ran - 1e-9)) :]
            assert m["tail/loss"] == pytest.approx(tail.mean(), rel=1e-12)
        assert tags["regime"] in ("stable", "oscillating")
    else:
        # A diverged run (or one with no epoch) has no value to rank it among the others.
        assert not any(k.startswith(("final/", "best/", "tail/")) for k in m)
        assert tags["regime"] == ("diverged" if tags["diverged"] == "true" else "stable")
    return curves


def train_and_log(cfg, root: Path) -> str:
    """One run, as a job runs it, into the config's store; returns its run id."""
    out = root / "out" / uuid.uuid4().hex
    return job.run(cfg, out).run_id


def config(store_overrides: list[str], **values) -> object:
    overrides = [*store_overrides, *(f"{k}={v}" for k, v in values.items())]
    return compose_train(overrides)


# --- the trainer -----------------------------------------------------------------------------


def test_saturation_is_not_divergence_and_keeps_the_tutorials_loss():
    """h8, seed 4, lr 1, tutorial update: the output reaches exactly 1.0 in float32 after
    about 800 epochs; training goes on, and every loss the tutorial's formula can compute is
    exactly that formula's value."""
    torch.set_num_threads(1)
    X, y = load_iris2([0, 1], True, torch.float32)
    history = fit(ScratchFNN(2, 8, seed=4), X, y, lr=1.0, epochs=2000)
    assert history.diverged_at is None and history.epochs_run == 2000
    assert history.saturated_at is not None and 0 < history.saturated_at < 2000
    assert np.isfinite(history.metrics["loss"]).all()
    # Replay the same updates by hand: the logged loss is mean_bce wherever that is finite,
    # and the same cross-entropy from the logits where it is not.
    model = ScratchFNN(2, 8, seed=4)
    first_non_finite = None
    for epoch, logged in enumerate(history.metrics["loss"]):
        y2, s4, y4 = model.forward(X)
        naive = mean_bce(y4, y).item()
        if math.isfinite(naive):
            assert logged == naive, epoch
        else:
            first_non_finite = first_non_finite if first_non_finite is not None else epoch
            assert logged == bce_with_logits(s4, y).item(), epoch
        model.step(model.backward(X, y, y2, y4), 1.0)
    assert first_non_finite == history.saturated_at
    assert torch.equal(model.w1[0], history.w1) and torch.equal(model.w2[0], history.w2)


@pytest.mark.parametrize("backprop", ["tutorial", "exact"])
def test_a_loss_past_the_bound_is_divergence(backprop):
    X, y = load_iris2([0, 1], True, torch.float32)
    history = fit(ScratchFNN(2, 32, seed=0, backprop=backprop), X, y, lr=1000.0, epochs=50)
    assert history.diverged_at is not None and history.diverged_at == history.epochs_run
    bound = 100 * max(history.metrics["loss"][0], math.log(2))
    assert (history.metrics["loss"] <= bound).all()
    # The epoch it stopped at is past the bound.
    model = ScratchFNN(2, 32, seed=0, backprop=backprop)
    for _ in range(history.diverged_at):
        y2, _, y4 = model.forward(X)
        model.step(model.backward(X, y, y2, y4), 1000.0)
    _, s4, _ = model.forward(X)
    assert bce_with_logits(s4, y).item() > bound


def test_long_history_is_compact():
    X, y = load_iris2([0, 1], True, torch.float32)
    history = fit(ScratchFNN(2, 4, seed=0), X, y, lr=0.01, epochs=10_000)
    assert history.epochs_run == 10_000
    for values in history.metrics.values():
        assert isinstance(values, np.ndarray) and values.dtype == np.float64
        assert values.shape == (10_000,)


# --- MLflow's limits, and thinning ------------------------------------------------------------


def test_batches_stay_within_mlflows_limits():
    metrics = iter([Metric("m", 0.0, 0, i) for i in range(2500)])
    params = [Param(f"p{i}", "1") for i in range(150)]
    tags = [RunTag(f"t{i}", "1") for i in range(120)]
    batches = list(tracking._batches(metrics, params, tags))
    for m, p, t in batches:
        assert len(p) <= 100 and len(t) <= 100 and len(m) <= 1000
        assert len(m) + len(p) + len(t) <= 1000
    assert sum(len(m) for m, _, _ in batches) == 2500
    assert sum(len(p) for _, p, _ in batches) == 150
    assert sum(len(t) for _, _, t in batches) == 120


@pytest.mark.parametrize(
    ("epochs", "every", "steps"),
    [
        (1, 1, [0]),
        (5, 1, [0, 1, 2, 3, 4]),
        (5, 2, [0, 2, 4]),
        (6, 4, [0, 4, 5]),
        (1, 10, [0]),
        (0, 3, []),
    ],
)
def test_logged_steps_keep_the_first_and_last(epochs, every, steps):
    assert list(tracking.logged_steps(epochs, every)) == steps


def test_plot_envelope_keeps_extremes_and_the_last_epoch():
    n = 100_000
    values = np.sin(np.arange(n) * 0.3)
    values[54_321] = 7.0
    steps, thinned = plots.envelope({"loss": values}, max_points=1000)
    assert len(steps) == len(thinned["loss"]) <= 1001
    assert thinned["loss"].max() == 7.0 and thinned["loss"].min() == values.min()
    assert steps[-1] == n - 1 and thinned["loss"][-1] == values[-1]
    short = plots.envelope({"loss": values[:50]}, max_points=1000)
    assert list(short[0]) == list(range(50))


# --- long runs on every store -------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> TmpStore:
    root = tmp_path_factory.mktemp("long")
    return TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db", experiment="long")


@pytest.fixture
def store_uri(request, sqlite_store, tmp_path):
    """(tracking overrides, client) for the embedded store, a PostgreSQL database opened
    directly as MLflow's SQL store, or the tracking server."""
    kind = request.param
    if kind == "sqlite":
        return sqlite_store.overrides(), sqlite_store.client
    server = request.getfixturevalue("tracking_server")
    experiment = f"long-{uuid.uuid4().hex[:8]}"
    if kind == "server":
        return server.overrides(experiment, tmp_path), server.client
    uri = server.database_uri("fnnlab_long_runs")
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment(experiment, artifact_location=(tmp_path / "art").as_uri())
    return [f"tracking.uri={uri}", f"tracking.experiment={experiment}"], client


STORES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.server)]
STORES.append(pytest.param("server", marks=pytest.mark.server))


@pytest.mark.parametrize("store_uri", STORES, indirect=True)
@pytest.mark.parametrize("epochs", [163, 1000, 5000])
def test_long_runs_finish_with_every_step(store_uri, epochs, tmp_path):
    overrides, client = store_uri
    cfg = config(overrides, **{"train.epochs": epochs, "model.hidden_dim": 8})
    run_id = train_and_log(cfg, tmp_path)
    curves = check_run(client, run_id, epochs)
    assert len(curves["loss"]) == epochs


def test_log_every_thins_the_curves_not_the_summaries(sqlite_store, tmp_path):
    cfg = config(
        sqlite_store.overrides(),
        **{"train.epochs": 1000, "tracking.log_every": 7, "model.hidden_dim": 8},
    )
    run_id = train_and_log(cfg, tmp_path)
    check_run(sqlite_store.client, run_id, 1000, every=7)
    full = job.train_model(cfg)
    run = sqlite_store.client.get_run(run_id)
    assert run.data.metrics["best/loss"] == full.metrics["loss"].min()
    assert run.data.metrics["final/loss"] == full.metrics["loss"][-1]


def test_cli_run_of_2000_epochs_finishes(store: TmpStore):
    proc = run_command(cli.train, "train.epochs=2000", "tracking.plots=false", *store.overrides())
    assert proc.returncode == 0, proc.stderr
    (run,) = store.runs()
    check_run(store.client, run.info.run_id, 2000)


# --- the configuration space ---------------------------------------------------------------


RUNS = st.fixed_dictionaries(
    {
        "model.hidden_dim": log_uniform_int(1, 1024),
        "train.epochs": log_uniform_int(1, 5000),
        "optim.lr": LEARNING_RATES,
        "model.backprop": st.sampled_from(["tutorial", "exact"]),
        "model.dtype": st.sampled_from(["float32", "float64"]),
        "seed": st.integers(0, 2**32 - 1),
        "tracking.log_every": st.sampled_from([1, 1, 1, 3, 100]),
        "tracking.plots": st.booleans(),
    }
)
# Deterministic examples (derandomize), so the suite does not change from one run to the next;
# HYPOTHESIS_PROFILE=explore (tests/conftest.py) draws new ones, more of them.
SLOW_EXAMPLES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def corner(width: int, epochs: int, lr: float, backprop: str, dtype: str, every: int = 1) -> dict:
    return {
        "model.hidden_dim": width,
        "train.epochs": epochs,
        "optim.lr": lr,
        "model.backprop": backprop,
        "model.dtype": dtype,
        "seed": 2**32 - 1,
        "tracking.log_every": every,
        "tracking.plots": True,
    }


@settings(suppress_health_check=SLOW_EXAMPLES)
@given(values=RUNS)
@example(values=corner(1024, 5000, 1000.0, "exact", "float64"))
@example(values=corner(1024, 5000, 0.1, "tutorial", "float32", every=3))
@example(values=corner(1, 5000, 1e-5, "tutorial", "float32"))
@example(values=corner(32, 101, 0.001, "tutorial", "float32"))
def test_any_configuration_runs_to_a_complete_run_on_sqlite(values, sqlite_store, tmp_path):
    cfg = config(sqlite_store.overrides(), **values)
    run_id = train_and_log(cfg, tmp_path)
    check_run(sqlite_store.client, run_id, values["train.epochs"], values["tracking.log_every"])


@settings(max_examples=8, suppress_health_check=SLOW_EXAMPLES)
@given(values=RUNS)
@example(values=corner(1024, 5000, 1000.0, "exact", "float64"))
@example(values=corner(1, 3000, 1e-5, "tutorial", "float32", every=3))
def test_any_configuration_replays_bit_for_bit(values, sqlite_store, tmp_path):
    """Every stored number can be checked, over the configuration space and not its default
    point: a run its job stored replays identical (fnnlab.replay), diverged or not."""
    cfg = config(sqlite_store.overrides(), **values)
    run_id = train_and_log(cfg, tmp_path)
    store = tracking.open_store(str(cfg.tracking.uri), str(cfg.tracking.experiment))
    result = replay.replay_run(store, store.client.get_run(run_id))
    assert result.identical, result.line()


@pytest.mark.server
@settings(max_examples=6, suppress_health_check=SLOW_EXAMPLES)
@given(values=RUNS)
def test_any_configuration_runs_to_a_complete_run_on_the_server(values, tracking_server, tmp_path):
    overrides = tracking_server.overrides("long-server-properties", tmp_path)
    cfg = config(overrides, **values)
    run_id = train_and_log(cfg, tmp_path)
    check_run(tracking_server.client, run_id, values["train.epochs"], values["tracking.log_every"])


@pytest.mark.slow
@settings(max_examples=2, suppress_health_check=SLOW_EXAMPLES)
@given(
    widths=st.lists(log_uniform_int(1, 1024), min_size=2, max_size=2, unique=True),
    epochs=st.lists(log_uniform_int(1, 3000), min_size=2, max_size=2, unique=True),
    lr=LEARNING_RATES,
    backprop=st.sampled_from(["tutorial", "exact"]),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_any_sweep_in_two_workers_gives_complete_runs(
    widths, epochs, lr, backprop, dtype, tmp_path_factory
):
    root = tmp_path_factory.mktemp("workers")
    store = TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")
    proc = run_script(
        "fnnlab-train",
        "-m",
        "hydra.launcher.n_jobs=2",
        f"model.hidden_dim={','.join(map(str, widths))}",
        f"train.epochs={','.join(map(str, epochs))}",
        f"optim.lr={lr}",
        f"model.backprop={backprop}",
        f"model.dtype={dtype}",
        *store.overrides(),
    )
    assert proc.returncode == 0, proc.stderr
    runs = store.runs("tags.role = 'job'")
    assert len(runs) == 4
    for run in runs:
        check_run(store.client, run.info.run_id, int(run.data.params["train.epochs"]))
