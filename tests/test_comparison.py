"""What a sweep says, on real sweeps: regimes of real runs, diverged runs out of MLflow's
rankings, and comparisons that separate what the seeds can separate and no more."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from conftest import TmpStore, run_command, run_script

from fnnlab import aggregate, cli
from fnnlab.compare import ONLY_ONE

pytestmark = pytest.mark.slow


def sweep(store: TmpStore, *overrides: str) -> None:
    proc = run_command(cli.train, "-m", *overrides, "tracking.plots=false", *store.overrides())
    assert proc.returncode == 0, proc.stderr[-3000:]


def latest(store: TmpStore, **kw) -> aggregate.Aggregate:
    return aggregate.aggregate(aggregate.select(store.uri, store.experiment), **kw)


def row(comparison: pd.DataFrame, **keys) -> pd.Series:
    mask = pd.Series(True, index=comparison.index)
    for k, v in keys.items():
        mask &= comparison[k] == v
    (i,) = comparison.index[mask]
    return comparison.loc[i]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TmpStore:
    root = tmp_path_factory.mktemp("comparison")
    return TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")


def test_regimes_of_real_runs_and_diverged_runs_out_of_rankings(store: TmpStore):
    sweep(store, "model.hidden_dim=32", "optim.lr=0.1,1000", "seed=range(5)")
    sweep(store, "model.hidden_dim=8", "optim.lr=0.001", "seed=range(5)")
    runs = store.runs("tags.role = 'job'")
    regimes = {}
    for r in runs:
        key = (r.data.params["model.hidden_dim"], r.data.params["optim.lr"])
        regimes.setdefault(key, set()).add(r.data.tags["regime"])
        if r.data.tags["diverged"] == "true":
            # No final/best value of a blown-up run to sort it among the good ones.
            assert not any(k.startswith(("final/", "best/", "tail/")) for k in r.data.metrics)
        else:
            assert math.isfinite(r.data.metrics["final/loss"])
            assert math.isfinite(r.data.metrics["tail/loss"])
    assert regimes == {
        ("32", "0.1"): {"oscillating"},
        ("32", "1000.0"): {"diverged"},
        ("8", "0.001"): {"stable"},
    }
    # MLflow's own ordering by final/loss puts no diverged run among the others.
    exp = store.client.get_experiment_by_name(store.experiment).experiment_id
    ordered = store.client.search_runs(
        [exp],
        "tags.role = 'job' and metrics.`final/loss` < 1e300",
        order_by=["metrics.`final/loss` ASC"],
    )
    assert len(ordered) == 10 and all(r.data.tags["diverged"] == "false" for r in ordered)

    # The aggregate of the first sweep agrees with the tags: regimes in runs.csv and the
    # summary, the stability bracket of width 32.
    parent = store.runs("tags.role = 'sweep' and tags.sweep_overrides LIKE '%1000%'")[0]
    agg = aggregate.aggregate(
        aggregate.select(store.uri, store.experiment, parent_run_id=parent.info.run_id)
    )
    assert set(agg.runs["regime"]) == {"oscillating", "diverged"}
    counts = agg.summary.set_index("lr")[["stable", "oscillating", "diverged"]]
    assert counts.loc[0.1].tolist() == [0, 5, 0] and counts.loc[1000.0].tolist() == [0, 0, 5]
    st = agg.stability.iloc[0]
    assert (st.stable_lr_max, st.diverges_at_lr) == (0.1, 1000.0)
    assert math.isnan(st.no_oscillation_lr_max) and st.oscillates_at_lr == 0.1
    # Diverged configurations have no outcome, so no mean: lr=1000 is not the leader, and
    # lr=0.1, compared with nothing, is none either (helper-43).
    c = agg.comparison
    assert row(c, lr=1000.0).n == 0 and not c.leader.any()
    assert row(c, lr=0.1).note == ONLY_ONE


def test_other_initial_draws_are_a_true_null_and_lr_is_not(store: TmpStore):
    """Within a learning rate, init_discard_draws=0 and 1 draw the initial weights from the
    same distribution: the two lr=0.1 configurations must be the leader and a tie; the
    lr=0.001 ones are far worse and not tied."""
    sweep(
        store,
        "model.hidden_dim=8",
        "optim.lr=0.001,0.1",
        "model.init_discard_draws=0,1",
        "seed=range(5)",
    )
    agg = latest(store)
    c = agg.comparison
    assert set(agg.config_cols) >= {"lr", "init_discard_draws"}
    fast = c[c.lr == 0.1]
    assert fast.leader.sum() == 1 and fast.tied.fillna(False).sum() == 1
    for _, r in c[c.lr == 0.001].iterrows():
        assert r.tied is False or r.tied == False  # noqa: E712
        assert r.p_adj < 0.05 and r.diff_vs_leader > 0
    # Paired by seed: both configurations of a pair have seeds 0-4.
    assert set(c.n) == {5}


def test_float32_against_float64_is_tied_below_the_margin(store: TmpStore):
    sweep(
        store, "model.hidden_dim=8", "optim.lr=0.01", "model.dtype=float32,float64", "seed=range(5)"
    )
    agg = latest(store)
    c = agg.comparison
    other = c[~c.leader].iloc[0]
    assert bool(other.tied) and "margin" in other.note
    assert abs(other.diff_vs_leader) < 0.01 * abs(c[c.leader].iloc[0]["mean"])


def test_cli_prints_the_leader_its_ties_and_writes_the_comparison(store: TmpStore, tmp_path):
    sweep(store, "model.hidden_dim=4,16", "optim.lr=0.01,0.1", "seed=range(3)")
    res = run_command(
        cli.aggregate,
        f"tracking.uri={store.uri}",
        f"tracking.experiment={store.experiment}",
        f"aggregate.out_dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "leader: hidden_dim=" in res.stdout and "tied with the leader:" in res.stdout
    assert "best" not in res.stdout
    comparison = pd.read_csv(tmp_path / "comparison.csv")
    assert len(comparison) == 4 and comparison.leader.sum() == 1
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert {"stable", "oscillating", "diverged"} <= set(summary.columns)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert set(runs.regime) <= {"stable", "oscillating", "diverged"} and runs.regime.notna().all()
    # Another outcome, and a bad one.
    acc = latest(store, outcome="final_accuracy")
    assert acc.comparison.loc[acc.comparison.leader, "mean"].iloc[0] == acc.comparison["mean"].max()
    bad = run_script(
        "fnnlab-aggregate",
        f"tracking.uri={store.uri}",
        f"tracking.experiment={store.experiment}",
        "aggregate.outcome=median",
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "fnnlab-aggregate: error: aggregate.outcome=median: must be one of tail_loss, "
        "final_loss, best_loss, final_accuracy"
    ]


def test_a_loss_that_rose_and_stayed_high_is_named(store: TmpStore):
    """Width 32 at lr=1: every seed's loss rises from about 1.5 to about 6 within 10 epochs
    and stays there, at chance accuracy. Neither diverged (below 100 times its start) nor
    oscillating, such runs are "stable", and the answer said nothing of it beyond their
    mean (helper-35)."""
    from fnnlab import report

    sweep(store, "model.hidden_dim=32", "optim.lr=0.1,1", "train.epochs=200", "seed=range(3)")
    agg = latest(store)
    assert set(agg.runs.loc[agg.runs["lr"] == 1.0, "regime"]) == {"stable"}
    (line,) = [
        x for x in report.leader_text(agg).splitlines() if x.startswith("loss ended above where")
    ]
    (label, tail, start), *others = report.ended_above_start(agg)
    assert label == "lr=1" and not others and tail > 3 * start, (label, tail, start)
    assert line.endswith(f"lr=1 ({tail:.4g} against {start:.4g})"), line


def test_runs_too_short_to_judge_have_no_oscillation_boundary(store: TmpStore):
    """Runs under regime.min_epochs (4) are "stable" without a test: the boundary said
    "oscillation or divergence none up to lr=1" of 3-epoch runs (helper-35). A rate at which
    they diverged bounds it from above only: at a smaller rate they may still diverge or
    oscillate later (helper-38: "divergence between lr=0.1 and lr=1000" beside "oscillation
    or divergence not judged"). Runs long enough, in the same sweep, keep their boundary."""
    from fnnlab import report

    sweep(store, "train.epochs=3,20", "optim.lr=0.1,1000", "seed=range(2)")
    agg = latest(store)
    short = "(not judged below it: runs of 3 epochs, fewer than regime.min_epochs=4)"
    assert report.stability_lines(agg)[1:] == [
        f"  hidden_dim=32 epochs=3: divergence at or below lr=1000 {short}; "
        f"oscillation or divergence at or below lr=1000 {short}",
        "  hidden_dim=32 epochs=20: divergence between lr=0.1 and lr=1000; "
        "oscillation or divergence already at lr=0.1 (the smallest swept)",
    ]
    assert (
        "too short to judge: 2 runs of 3 epochs, fewer than regime.min_epochs=4, count as "
        "stable: neither oscillation nor a divergence after their last epoch can be seen in them"
    ) in report.leader_text(agg).splitlines()
    # Without a rate where they went bad, nothing is bounded.
    sweep(store, "train.epochs=3", "optim.lr=0.1,1", "seed=range(2)")
    (line,) = report.stability_lines(latest(store))[1:]
    assert line == (
        "  hidden_dim=32: divergence not judged: runs of 3 epochs, fewer than "
        "regime.min_epochs=4; oscillation or divergence not judged: runs of 3 epochs, fewer "
        "than regime.min_epochs=4"
    )
