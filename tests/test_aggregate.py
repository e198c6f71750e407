"""fnnlab-aggregate on real stores: the numbers against MlflowClient data computed here,
and every input that must end in one line and a non-zero exit."""

from __future__ import annotations

import html
import math
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TmpStore, run_command, run_script
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.entities import Metric, Param, Run, RunData, RunTag
from scipy import stats
from server_fixtures import stop_group

from fnnlab import aggregate, cli, report
from fnnlab.cli import wait_until_up
from fnnlab.config import ConfigValueError
from fnnlab.names import Tag
from fnnlab.tracking import log_values, one_run_per_config, open_store

SWEEP = ["model.hidden_dim=4,8", "optim.lr=0.01,0.1", "seed=0,1,2", "train.epochs=20"]


def sweep(store: TmpStore, *args: str) -> None:
    res = run_command(cli.train, "-m", *args, *store.overrides())
    assert res.returncode == 0, res.stderr[-2000:]


def run_aggregate(store: TmpStore, out: Path, *args: str, process: bool = False):
    """fnnlab-aggregate on the store, in this process or, for a test of everything the
    command prints on stderr (a warning, a line at exit), in its own."""
    args = (*store.overrides()[:2], f"aggregate.out_dir={out}", *args)
    return run_command(cli.aggregate, *args, process=process)


def one_line_error(res, *words: str) -> str:
    """The error output is one line naming the key and value; nothing else on stderr."""
    assert res.returncode != 0, res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fnnlab-aggregate: error: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> TmpStore:
    """A real 12-run sweep: 2 widths x 2 learning rates x 3 seeds, 20 epochs."""
    root = tmp_path_factory.mktemp("swept")
    store = TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")
    sweep(store, *SWEEP)
    return store


def expected_summary(store: TmpStore) -> dict[tuple[int, float], dict]:
    """Per (hidden_dim, lr): counts, mean and std of final loss, from the client directly."""
    parent = store.runs("tags.role = 'sweep'")[0]
    children = store.runs(f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    groups: dict[tuple[int, float], list] = {}
    for r in children:
        key = (int(r.data.params["model.hidden_dim"]), float(r.data.params["optim.lr"]))
        groups.setdefault(key, []).append(r)
    out = {}
    for key, runs in groups.items():
        losses = [r.data.metrics["final/loss"] for r in runs]
        out[key] = {
            "runs": len(runs),
            "mean": statistics.fmean(losses),
            "std": statistics.stdev(losses),
            "acc": statistics.fmean(r.data.metrics["final/accuracy"] for r in runs),
            "ids": [r.info.run_id for r in runs],
        }
    return out


@pytest.mark.slow
def test_summary_matches_client_data(swept: TmpStore, tmp_path: Path) -> None:
    res = run_aggregate(swept, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    expected = expected_summary(swept)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == len(expected) == 4
    for row in summary.itertuples():
        exp = expected[(row.hidden_dim, row.lr)]
        assert (row.runs, row.used, row.failed, row.diverged) == (exp["runs"], 3, 0, 0)
        assert row.loss_mean == pytest.approx(exp["mean"], rel=1e-12)
        assert row.loss_std == pytest.approx(exp["std"], rel=1e-9)
        assert row.acc_mean == pytest.approx(exp["acc"], rel=1e-12)
        half = stats.t.ppf(0.975, 2) * exp["std"] / math.sqrt(3)
        assert row.loss_ci95 == pytest.approx(half, rel=1e-9)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 12 and set(runs["seed"]) == {0, 1, 2}

    # Mean curve at the last epoch = mean of the three runs' histories at that step.
    exp = expected[(8, 0.1)]
    values = [
        [m.value for m in swept.client.get_metric_history(i, "loss") if m.step == 19][0]
        for i in exp["ids"]
    ]
    curves = pd.read_csv(tmp_path / "curves.csv")
    c = curves[(curves.hidden_dim == 8) & (curves.lr == 0.1) & (curves.key == "loss")]
    last = c[c.step == 19].iloc[0]
    assert (len(c), last.n) == (20, 3)
    assert last["mean"] == pytest.approx(statistics.fmean(values), rel=1e-12)
    # Largest gradient norm of a run, against its history.
    rid = exp["ids"][0]
    gmax = max(m.value for m in swept.client.get_metric_history(rid, "grad_norm/w1"))
    assert runs.set_index("run_id").loc[rid, "max_grad_norm_w1"] == pytest.approx(gmax)

    # The comparison: the leader has the lowest mean tail loss over its three seeds.
    comparison = pd.read_csv(tmp_path / "comparison.csv")
    assert list(comparison.columns[:13]) == [
        "hidden_dim",
        "lr",
        "backprop",
        "n",
        "mean",
        "ci_low",
        "ci_high",
        "diff_vs_leader",
        "diff_ci_low",
        "diff_ci_high",
        "p_adj",
        "leader",
        "tied",
    ]
    assert "seeds_needed" in comparison.columns
    tails = {}
    for r in swept.runs("tags.role = 'job'"):
        key = (int(r.data.params["model.hidden_dim"]), float(r.data.params["optim.lr"]))
        tails.setdefault(key, []).append(r.data.metrics["tail/loss"])
    means = {k: statistics.fmean(v) for k, v in tails.items()}
    lead = min(means, key=means.get)
    row = comparison[comparison.leader].iloc[0]
    assert (row.hidden_dim, row.lr) == lead and row["mean"] == pytest.approx(means[lead])
    assert row.n == 3 and not row.tied

    # Logged back on the parent: files, the leader and its ties.
    parent = swept.runs("tags.role = 'sweep'")[0]
    assert parent.data.tags["aggregate.leader"] == f"hidden_dim={lead[0]} lr={lead[1]:g}"
    tied = comparison[comparison.tied == True]  # noqa: E712
    assert parent.data.tags["aggregate.tied"] == "; ".join(
        f"hidden_dim={r.hidden_dim} lr={r.lr:g}" for r in tied.itertuples()
    )
    # Rounded to 4 significant digits on the parent's Overview.
    assert parent.data.metrics["aggregate/leader_mean"] == float(f"{means[lead]:.4g}")
    assert parent.data.metrics["aggregate/runs"] == 12
    logged = {f.path for f in swept.client.list_artifacts(parent.info.run_id, "aggregate")}
    assert {
        "aggregate/report.md",
        "aggregate/comparison.csv",
        "aggregate/curves_loss.png",
    } <= logged
    report = (tmp_path / "report.md").read_text()
    assert "## The answer" in report and "- leader: hidden_dim=" in report
    assert "## Mean final loss ± 95% CI, width × learning rate" in report
    # The terminal gets the table and the leader.
    assert f"leader: hidden_dim={lead[0]} lr={lead[1]:g}" in res.stdout
    assert "tied with the leader:" in res.stdout


def without_recorded_outcomes(run: Run) -> Run:
    """The run as a version that recorded neither its regime nor its tail loss stored it."""
    m = [Metric(k, v, 0, 0) for k, v in run.data.metrics.items() if k != "tail/loss"]
    p = [Param(k, v) for k, v in run.data.params.items()]
    t = [RunTag(k, v) for k, v in run.data.tags.items() if k != Tag.REGIME]
    return Run(run.info, RunData(metrics=m, params=p, tags=t))


def test_batches_of_runs_give_the_tables_of_one_batch(swept: TmpStore, monkeypatch) -> None:
    """A sweep's curves are reduced a batch of runs at a time: one run per batch gives the
    tables of all runs in one batch (means and stds to rounding: their sums run in another
    order), and the regimes and tail losses filled in from the curves of runs that did not
    record them are those the runs recorded."""
    sel = aggregate.select(swept.uri, swept.experiment)
    whole = aggregate.aggregate(sel)
    assert len(aggregate.run_batches(sel.runs)) == 1
    sel.runs = [without_recorded_outcomes(r) for r in sel.runs]
    monkeypatch.setattr(aggregate, "BATCH_VALUES", 1)
    assert len(aggregate.run_batches(sel.runs)) == len(sel.runs) == 12
    batched = aggregate.aggregate(sel)

    # Filled in one by one, the regimes are Python strings, not pandas' string column.
    assert batched.runs.pop("regime").tolist() == whole.runs.pop("regime").tolist()
    pd.testing.assert_frame_equal(batched.runs, whole.runs)
    assert batched.runs["max_grad_norm_w1"].notna().all()
    pd.testing.assert_frame_equal(batched.summary, whole.summary)
    pd.testing.assert_frame_equal(batched.comparison, whole.comparison)
    pd.testing.assert_frame_equal(batched.regimes, whole.regimes)
    a, b = batched.curves, whole.curves
    assert len(a) == len(b) == 4 * 6 * 20 and (a["n"] == 3).all()
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=1e-15)


@given(
    data=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.floats(-1e3, 1e3, allow_nan=False)
            | st.sampled_from([math.nan, math.inf, -math.inf]),
        ),
        min_size=1,
        max_size=40,
    ),
    cuts=st.lists(st.integers(0, 40), max_size=4),
)
@settings(max_examples=200, deadline=None)
def test_combined_moments_are_the_moments_of_all_values(data, cuts) -> None:
    """Count, mean and variance of values split into parts, combined, against pandas over
    all of them: NaN left out, infinities, groups missing from a part, single values."""
    values = pd.DataFrame(data, columns=["group", "value"])
    parts = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(values)}), len(values)]
    for start, stop in zip(bounds, bounds[1:], strict=False):
        part = values.iloc[start:stop]
        grouped = part.groupby("group")["value"].agg(["count", "mean", "var"])
        parts.append(grouped.rename(columns={"count": "n"}))
    moments = aggregate.combine_moments(parts).sort_index()
    direct = values.groupby("group")["value"].agg(["count", "mean", "var"])
    assert moments["n"].tolist() == direct["count"].tolist()
    assert moments["n"].dtype == np.int64
    for col in ("mean", "var"):
        # Relative to the spread of the values: means and variances near 0 come out of
        # sums of other terms (a variance of 1e-12 from values of 1e3 is rounding).
        scale = values["value"].abs().where(np.isfinite(values["value"])).max()
        atol = 1e-12 * (1 + (scale if np.isfinite(scale) else 0)) ** (2 if col == "var" else 1)
        np.testing.assert_allclose(moments[col], direct[col], rtol=1e-9, atol=atol)


def test_a_curve_keeps_the_epochs_every_run_of_its_configuration_logged() -> None:
    """A run reused from one logged every 2nd epoch, beside two logged at every epoch: the
    mean curve alternated between 2 seeds and 3 (helper-43: 2.016, 1.642, 2.874 at epochs
    24-26)."""
    frame = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "lr": [0.1, 0.1, 0.1, 1.0], "used": True})
    steps = {"a": range(5), "b": range(5), "c": (0, 2, 4), "d": range(5)}
    rows = [(r, "loss", s, float(s + i)) for i, r in enumerate(steps) for s in steps[r]]
    curves = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    curves["run_id"] = curves["run_id"].astype("category")
    out = aggregate.mean_curves(frame, curves, ["lr"])
    assert out.loc[out["lr"] == 0.1, "step"].tolist() == [0, 2, 4]
    assert (out.loc[out["lr"] == 0.1, "n"] == 3).all()
    assert out.loc[out["lr"] == 1.0, "step"].tolist() == list(range(5))


def test_an_answer_not_logged_names_its_sweep_and_leaves_the_parent(store: TmpStore, tmp_path):
    """aggregate.log_to_parent=false was untested; its first line read "selection", not which
    sweep `latest` was (helper-43)."""
    sweep(
        store, "model.hidden_dim=4", "seed=0,1", "train.epochs=5", "hydra.sweeper.summarize=false"
    )
    parent = store.runs("tags.role = 'sweep'")[0]
    res = run_aggregate(store, tmp_path / "out", "aggregate.log_to_parent=false")
    assert res.returncode == 0, res.stderr[-2000:]
    sid, pid = parent.data.tags["sweep_id"], parent.info.run_id
    assert res.stdout.splitlines()[0] == (
        f"test: sweep {sid} (parent run {pid}; aggregate.log_to_parent=false: not logged on it), "
        "2 runs"
    )
    assert (tmp_path / "out" / "report.md").exists()
    # No link to the parent's report: not this answer's (here, none).
    assert "parent run:" in res.stdout and "report:" not in res.stdout
    after = store.client.get_run(pid)
    assert not [k for k in after.data.tags if k.startswith("aggregate")]
    assert not store.client.list_artifacts(pid)


@pytest.mark.slow
def test_failed_diverged_running_and_reruns(store: TmpStore) -> None:
    # At width 8, lr=100 diverges at epoch 1 for seeds 0 and 1 (tutorial update); lr=0.1 does not.
    sweep(store, "model.hidden_dim=8", "optim.lr=0.1,100", "seed=0,1", "train.epochs=10")
    st = open_store(store.uri, store.experiment)
    parent = store.runs("tags.role = 'sweep'")[0]
    pid, sid = parent.info.run_id, parent.data.tags["sweep_id"]
    finished = store.runs("params.`optim.lr` = '0.1' and params.seed = '0'")[0]

    def job_run(fingerprint: str, status: str | None, error: str = "") -> str:
        """What job.run leaves for a job that failed or is still running: tags, no params."""
        tags = {
            "role": "job",
            "fingerprint": fingerprint,
            "sweep_id": sid,
            "mlflow.parentRunId": pid,
        }
        rid = st.client.create_run(st.experiment_id, run_name="h4-lr0.5-s0", tags=tags).info.run_id
        if error:
            log_values(st, rid, tags={"error": error})
        if status:
            st.client.set_terminated(rid, status)
        return rid

    failed = job_run("f" * 16, "FAILED", "RuntimeError: boom")
    running = job_run("r" * 16, None)
    # An earlier FAILED attempt of a configuration that later finished: superseded.
    job_run(finished.data.tags["fingerprint"], "FAILED", "RuntimeError: first try")

    # The output folder holds the store itself: only the written files may be logged.
    out = store.root
    res = run_aggregate(store, out)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = pd.read_csv(out / "runs.csv").set_index("run_id")
    assert len(runs) == 6  # 4 jobs + failed + running; the superseded attempt is gone
    assert runs.loc[failed, "status"] == "FAILED" and runs.loc[running, "status"] == "RUNNING"
    assert (
        finished.info.run_id in runs.index
        and runs.loc[finished.info.run_id, "status"] == "FINISHED"
    )
    diverged = store.runs("tags.diverged = 'true'")
    assert len(diverged) == 2
    assert runs.loc[[r.info.run_id for r in diverged], "diverged"].all()
    assert runs["used"].sum() == 2

    summary = pd.read_csv(out / "summary.csv")
    ok = summary[summary.lr == 0.1].iloc[0]
    losses = [r.data.metrics["final/loss"] for r in store.runs("params.`optim.lr` = '0.1'")]
    assert (ok.runs, ok.used, ok.diverged) == (2, 2, 0)
    assert ok.loss_mean == pytest.approx(statistics.fmean(losses))
    bad = summary[summary.lr == 100].iloc[0]
    assert (bad.runs, bad.used, bad.diverged) == (2, 0, 2)
    assert math.isnan(bad.loss_mean)  # diverged runs are left out of the loss statistics
    # Failed and running jobs have no params: one row of unknown configuration counts them.
    unknown = summary[summary.lr.isna()].iloc[0]
    assert (unknown.runs, unknown.failed, unknown.running, unknown.used) == (2, 1, 1, 0)
    report = (out / "report.md").read_text()
    assert "1 failed or killed, 1 still running; 1 earlier attempts superseded" in report
    assert "RuntimeError: boom" in report
    assert "The row with an empty configuration counts jobs that failed" in report
    # That row is no configuration: it makes nothing vary (backprop, width) in the answer.
    assert res.stdout.splitlines()[1] == "hidden_dim=8 backprop=tutorial"
    # lr=100 diverged: lr=0.1 is compared with nothing, so it is no leader (helper-43).
    only = "one configuration with 2 or more runs with a tail loss, nothing to compare it with"
    assert f"{only}: lr=0.1: " in res.stdout
    assert "stability boundary (learning rates, per width):" in res.stdout
    assert store.runs("tags.role = 'sweep'")[0].data.tags["aggregate.leader"] == ""
    logged = st.client.list_artifacts(pid, "aggregate")
    assert sorted(f.path for f in logged) == sorted(f"aggregate/{p.name}" for p in out.glob("*.*"))


@pytest.mark.slow
def test_single_seed_gives_empty_std(swept: TmpStore, tmp_path: Path) -> None:
    res = run_aggregate(
        swept, tmp_path, "aggregate.filter=\"params.seed = '1'\"", "aggregate.plots=false"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 4 and (summary.used == 1).all()
    assert summary.loss_std.isna().all() and summary.loss_ci95.isna().all()
    expected = {
        (int(r.data.params["model.hidden_dim"]), float(r.data.params["optim.lr"])): r.data.metrics[
            "final/loss"
        ]
        for r in swept.runs("params.seed = '1'")
    }
    for row in summary.itertuples():
        assert row.loss_mean == row.loss_min == expected[(row.hidden_dim, row.lr)]
    # The parent's answer says it is about a subset, and one seed each leaves no leader: the
    # earlier answer's leader metrics are not left standing.
    parent = swept.runs("tags.role = 'sweep'")[0]
    assert parent.data.tags["aggregate.filter"] == "params.seed = '1'"
    assert parent.data.tags["aggregate.leader"] == ""
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("Only the runs matching `params.seed = '1'` (aggregate.filter).")
    # So do the report and the terminal, which said "sweep ..., 4 runs" alone.
    only = "Only the runs matching `params.seed = '1'` (aggregate.filter): not the whole sweep."
    assert only in (tmp_path / "report.md").read_text().split("## The answer")[0]
    assert res.stdout.splitlines()[0].endswith(
        ", 4 runs matching params.seed = '1' (aggregate.filter)"
    )
    for key in ("mean", "n", "ci_low", "ci_high"):
        assert math.isnan(parent.data.metrics[f"aggregate/leader_{key}"]), key
    # Aggregated again without the filter: the whole sweep's answer is back.
    res = run_aggregate(swept, tmp_path / "all", "aggregate.plots=false")
    assert res.returncode == 0, res.stderr[-2000:]
    parent = swept.runs("tags.role = 'sweep'")[0]
    assert parent.data.tags["aggregate.filter"] == "" and parent.data.tags["aggregate.leader"]
    assert parent.data.metrics["aggregate/leader_n"] == 3
    assert not parent.data.tags["mlflow.note.content"].startswith("Only the runs")


def test_one_run_per_config_prefers_finished_then_latest(store: TmpStore) -> None:
    st = open_store(store.uri, store.experiment)
    ids = {}
    for name, fp, status in [
        ("a1", "a", "FINISHED"),
        ("a2", "a", "FAILED"),
        ("b1", "b", "FAILED"),
        ("b2", "b", "FAILED"),
        ("c", "c", "RUNNING"),
    ]:
        rid = st.client.create_run(
            st.experiment_id, run_name=name, tags={"fingerprint": fp}
        ).info.run_id
        if status != "RUNNING":
            st.client.set_terminated(rid, status)
        ids[name] = rid
    runs = [st.client.get_run(i) for i in ids.values()]
    kept = one_run_per_config(runs)
    assert {r.info.run_id for r in kept} == {ids["a1"], ids["b2"], ids["c"]}


# --- inputs that must fail with one line --------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[TmpStore, str]:
    """A store with one sweep parent and one finished child, written with the client."""
    root = tmp_path_factory.mktemp("small")
    store = TmpStore(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db")
    st = open_store(store.uri, store.experiment)
    open_store(store.uri, "nosweeps")
    tags = {"role": "sweep", "sweep_id": "abc123"}
    pid = st.client.create_run(st.experiment_id, run_name="sweep", tags=tags).info.run_id
    job = {"role": "job", "fingerprint": "x", "mlflow.parentRunId": pid}
    rid = st.client.create_run(st.experiment_id, run_name="h4-lr0.1-s0", tags=job).info.run_id
    params = {"model.hidden_dim": 4, "optim.lr": 0.1, "model.backprop": "tutorial", "seed": 0}
    log_values(st, rid, params=params, series={"loss": [0.7, 0.6]}, summary={"final/loss": 0.6})
    st.client.set_terminated(rid, "FINISHED")
    # Experiment "allfailed": a sweep whose two jobs failed before logging anything.
    af = open_store(store.uri, "allfailed")
    tags = {"role": "sweep", "sweep_id": "dead01"}
    apid = af.client.create_run(af.experiment_id, run_name="sweep", tags=tags).info.run_id
    for fp in ("a", "b"):
        job = {"role": "job", "fingerprint": fp, "mlflow.parentRunId": apid, "error": "boom"}
        fid = af.client.create_run(af.experiment_id, run_name=f"job-{fp}", tags=job).info.run_id
        af.client.set_terminated(fid, "FAILED")
    return store, pid


def test_all_failed_sweep_is_reported(small, tmp_path: Path) -> None:
    store, _ = small
    agg = aggregate.aggregate(aggregate.select(store.uri, "allfailed"))
    assert agg.summary[["runs", "used", "failed"]].values.tolist() == [[2, 0, 2]]
    assert agg.leader is None and agg.curves.empty
    files = report.write_outputs(agg, tmp_path)
    assert sorted(f.name for f in files) == [
        "comparison.csv",
        "curves.csv",
        "report.html",
        "report.md",
        "runs.csv",
        "stability.csv",
        "summary.csv",
    ]
    # Its header alone: an earlier answer's on the parent run is replaced, not left.
    assert (tmp_path / "stability.csv").read_text().splitlines() == [
        "hidden_dim,stable_lr_max,diverges_at_lr,no_oscillation_lr_max,oscillates_at_lr"
    ]
    text = (tmp_path / "report.md").read_text()
    assert "0 finished (0 of them diverged), 2 failed or killed" in text
    assert "no leader: no configuration has 2 or more runs" in text
    # No job logged its params, so there is no configuration column at all: still no table
    # (its one row, of no configuration, said "0 ... no claim").
    assert agg.config_cols == []
    assert "No run finished: no configuration to show." in text and "| verdict |" not in text
    html = (tmp_path / "report.html").read_text()
    assert "<p>No run finished: no configuration to show.</p>" in html and "<table" not in html
    assert report.terminal_table(agg) == "no run finished: no configuration to show"
    note = report.description(agg, [])
    assert "No run finished: no configuration to show." in note and "|" not in note


def test_a_filter_with_backticks_stays_one_code_span(small) -> None:
    """A filter naming params.`model.hidden_dim` ended the Markdown code span around it
    early, in report.md and on the parent run; report.md's method named only the t-tests,
    though an outcome with no spread gets a permutation test (helper-47)."""
    store, _ = small
    flt = "params.seed != '1' and params.`model.hidden_dim` = '4'"
    assert report.code(flt) == f"``{flt}``"
    assert report.code("`a`") == "`` `a` ``" and report.code("a") == "`a`"
    agg = aggregate.aggregate(aggregate.select(store.uri, store.experiment, filter_string=flt))
    span = f"Only the runs matching ``{flt}`` (aggregate.filter)"
    assert span in report.description(agg, []) and span in report.markdown_report(agg, [])
    method = "when one of them has no spread, a permutation test"
    assert method in report.markdown_report(agg, [])
    # report.html, which the sweep's "report" link opens, did not say it at all (helper-48).
    page = report.html_report(agg, Path("."), [])
    assert f"Only the runs matching <code>{html.escape(flt)}</code> (aggregate.filter)" in page


@pytest.mark.parametrize("blank", ["", " ", "\t "])
def test_a_blank_filter_is_no_filter(small, blank) -> None:
    """Before, " " selected every run, as no filter does, and the answer said it was of the
    runs "matching   (aggregate.filter)"."""
    store, _ = small
    sel = aggregate.select(store.uri, store.experiment, filter_string=blank)
    assert sel.filter is None and len(sel.runs) == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"experiment": "nope"}, ["tracking.experiment=nope", "no such experiment"]),
        ({"experiment": "nosweeps"}, ["aggregate.sweep=latest", "no sweep in"]),
        ({"sweep": "deadbeef"}, ["aggregate.sweep=deadbeef", "matches none"]),
        ({"sweep": "x' or '1"}, ["aggregate.sweep=x' or '1", "not a sweep id"]),
        ({"sweep": "%"}, ["aggregate.sweep=%", "not a sweep id"]),
        ({"parent_run_id": "0123abcd"}, ["aggregate.parent_run_id=0123abcd", "no such run"]),
        (
            {"filter_string": "params.seed = '99'"},
            ["aggregate.filter=params.seed = '99'", "selects no"],
        ),
        ({"filter_string": "params.seed ~ 1"}, ["aggregate.filter=params.seed ~ 1"]),
    ],
    ids=[
        "experiment",
        "no-sweep",
        "sweep-id",
        "quote",
        "like-pattern",
        "parent-run",
        "empty-filter",
        "bad-filter",
    ],
)
def test_bad_selection_names_key_and_value(small, kw, words) -> None:
    store, _ = small
    args = {"experiment": store.experiment, **kw}
    with pytest.raises(ConfigValueError) as err:
        aggregate.select(store.uri, **args)
    message = str(err.value)
    assert "\n" not in message and message.startswith(words[0] + ":"), message
    for w in words[1:]:
        assert w in message


def test_selection_by_parent_run_id(small) -> None:
    store, pid = small
    agg = aggregate.aggregate(aggregate.select(store.uri, store.experiment, parent_run_id=pid))
    assert len(agg.summary) == 1 and agg.summary.loss_mean[0] == 0.6
    assert math.isnan(agg.summary.loss_std[0])  # one seed: empty std, no error
    # One seed: no leader can be named, and the report says so.
    assert agg.leader is None and agg.comparison.n.tolist() == [1]
    assert "no leader" in report.leader_text(agg)
    # The tracking-server path (parallel metric histories) reads the same curves.
    ids = [r.info.run_id for r in agg.selection.runs]
    by_sql = aggregate.read_curves(store.uri, store.client, ids, method="sql")
    by_client = aggregate.read_curves(store.uri, store.client, ids, method="client")
    assert by_sql.sort_values("step").values.tolist() == [
        [ids[0], "loss", 0, 0.7],
        [ids[0], "loss", 1, 0.6],
    ]
    assert (
        by_client.sort_values("step").values.tolist() == by_sql.sort_values("step").values.tolist()
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def database_uri(request, tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a database URI
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/mlflow.db"
    return request.getfixturevalue("tracking_server").database_uri("fnnlab_read_curves")


def test_curves_read_from_the_database_are_mlflows_histories(database_uri) -> None:
    """The database path (rows straight from the driver's cursor) against MLflow's own
    get_metric_history: NaN, infinities, a step logged twice, runs and keys left out; both
    in (run_id, key, step) order, whatever order the database or the threads gave."""
    from mlflow.entities import Metric

    store = open_store(database_uri, "curves")
    ids = [store.client.create_run(store.experiment_id).info.run_id for _ in range(3)]
    values = [0.5, math.nan, math.inf, -math.inf, 1e-300, 2.0]
    for i, run_id in enumerate(ids):
        metrics = [
            Metric(key, v * (i + 1), 1000 + step, step)
            for key in ("loss", "accuracy", "other")
            for step, v in enumerate(values)
        ]
        metrics.append(Metric("loss", 7.0 + i, 2000, 2))  # step 2 again, later: it counts
        store.client.log_batch(run_id, metrics=metrics)
    wanted, keys = ids[:2], ("loss", "accuracy")
    by_sql = aggregate.read_curves(database_uri, store.client, wanted, keys, method="sql")
    by_client = aggregate.read_curves(database_uri, store.client, wanted, keys, method="client")
    pd.testing.assert_frame_equal(by_sql, by_client)
    rows = list(zip(by_sql.run_id.astype(str), by_sql.key.astype(str), by_sql.step, strict=True))
    assert rows == sorted(rows)
    assert len(by_sql) == 2 * 2 * len(values) and set(by_sql.run_id) == set(wanted)
    # The second run's loss: values x 2, step 2 logged again as 8, -inf stored as MLflow
    # stores it (the most negative float).
    loss = by_sql[(by_sql.run_id == ids[1]) & (by_sql.key == "loss")].value.tolist()
    assert math.isnan(loss[1])
    assert loss[:1] + loss[2:] == [1.0, 8.0, -sys.float_info.max, 2e-300, 4.0]


def test_cli_selection_error_is_one_line(small, tmp_path: Path) -> None:
    store, _ = small
    selection = "aggregate.filter=\"params.seed = '99'\""
    res = run_aggregate(store, tmp_path / "out", selection, process=True)
    one_line_error(res, "aggregate.filter=params.seed = '99'", "selects no runs")
    assert res.returncode == 2 and not (tmp_path / "out").exists()
    # A filter of the value as the answer prints it (lr=30 as "30") said only "selects no
    # runs" (helper-47).
    assert "(params compare as the text stored: a learning rate of 30 is '30.0')" in res.stderr


@pytest.mark.parametrize(
    ("option", "named", "why"),
    [
        ("aggregate.alpha=0", "aggregate.alpha=0", "must be in (0, 0.5]"),
        ("aggregate.alpha=nan", "aggregate.alpha=nan", "must be in (0, 0.5]"),
        ("aggregate.alpha=0.999", "aggregate.alpha=0.999", "must be in (0, 0.5]"),
        ("aggregate.min_effect=-1", "aggregate.min_effect=-1", "must be a finite number 0 or more"),
        # YAML reads 1e400 as infinity, a margin that ties everything: named as typed.
        (
            "aggregate.min_effect=1e400",
            "aggregate.min_effect=1e400 (read as inf)",
            "must be a finite number 0 or more, or null",
        ),
        (f"aggregate.min_effect={'9' * 400}", "aggregate.min_effect=999", "int too large"),
    ],
)
def test_bad_options_are_one_line(small, tmp_path: Path, option: str, named: str, why: str) -> None:
    store, _ = small
    before = store.db_bytes()
    res = run_aggregate(store, tmp_path / "out", option, process=True)
    one_line_error(res, named, why)
    assert res.returncode == 2 and not (tmp_path / "out").exists()
    assert store.db_bytes() == before


def test_unreachable_server_fails_with_one_line(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    res = run_script(
        "fnnlab-aggregate", f"tracking.uri={uri}", f"aggregate.out_dir={tmp_path}/o", timeout=60
    )
    one_line_error(res, f"tracking.uri={uri}", "no MLflow tracking server answers")


def test_missing_database_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "none" / "mlflow.db"
    res = run_script(
        "fnnlab-aggregate", f"tracking.uri=sqlite:///{db}", f"aggregate.out_dir={tmp_path}/o"
    )
    one_line_error(res, f"tracking.uri=sqlite:///{db}", "no database file")
    assert not db.exists() and not db.parent.exists()


@pytest.fixture
def server(small):
    """An MLflow tracking server on 127.0.0.1 over the small store; always stopped."""
    store, _ = small
    port = closed_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store.uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # As fnnlab-ui and server.sh start it: without job execution, which adds a process and
    # left a lock file of its job store in /tmp after every run of the suite.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # A session of its own, so that the server's worker processes stop with it.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


@pytest.mark.slow
def test_tracking_server(small, server: str, tmp_path: Path) -> None:
    """The same sweep through a server: curves come from parallel metric-history calls."""
    store, pid = small
    res = run_script(
        "fnnlab-aggregate",
        f"tracking.uri={server}",
        f"tracking.experiment={store.experiment}",
        f"aggregate.out_dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 1 and summary.loss_mean[0] == 0.6
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert curves[curves.key == "loss"].sort_values("step")["mean"].tolist() == [0.7, 0.6]
    parent = store.client.get_run(pid)
    assert parent.data.tags["aggregate.leader"] == ""


def test_the_configurations_an_incomplete_sweep_never_finished_are_named() -> None:
    """An answer about part of a sweep said how many jobs had no finished run, not which
    configurations: those none of whose jobs ran are in no table (helper-36)."""
    from types import SimpleNamespace

    def run(status: str, **params: str) -> SimpleNamespace:
        return SimpleNamespace(
            info=SimpleNamespace(status=status), data=SimpleNamespace(params=params)
        )

    runs = [
        run("FINISHED", **{"optim.lr": "0.1", "model.hidden_dim": "8", "seed": "0"}),
        run("FAILED", **{"optim.lr": "1.0", "model.hidden_dim": "8", "seed": "0"}),
        run("FINISHED", **{"optim.lr": "1.0", "model.hidden_dim": "32", "seed": "1"}),
        run("RUNNING"),  # killed before it logged its params
    ]
    sweep = "model.hidden_dim=8,32 optim.lr=0.1,1 seed=range(2) tracking.uri=sqlite:///x.db"
    assert aggregate.not_finished(sweep, runs) == ["hidden_dim=8 lr=1", "hidden_dim=32 lr=0.1"]
    assert aggregate.not_finished(sweep, runs, most=1) == ["hidden_dim=8 lr=1", "1 more"]
    # A value with a space in it, as the tag joins the command line.
    features = {"data.features": "[0, 1]", "optim.lr": "0.1"}
    spaced = [run("FINISHED", **features)]
    assert aggregate.not_finished("data.features=[0, 1],[2, 3] optim.lr=0.1", spaced) == [
        "features=[2, 3]"
    ]
    # Values typed otherwise than the config holds them: quoted, a bool as 1 or yes
    # (helper-38: every configuration was named).
    typed = [
        run("FINISHED", **{"model.backprop": "exact", "data.normalize": "True", "seed": "0"}),
        run("FINISHED", **{"model.backprop": "exact", "data.normalize": "False", "seed": "0"}),
        run("FINISHED", **{"model.backprop": "tutorial", "data.normalize": "True", "seed": "0"}),
    ]
    for swept in (
        "model.backprop='exact','tutorial' data.normalize=1,0",
        "model.backprop=exact,tutorial data.normalize=yes,off",
    ):
        assert aggregate.not_finished(swept, typed) == ["backprop=tutorial normalize=False"]
    # What cannot be told is not guessed: another sweeper's grammar, a swept group.
    assert aggregate.not_finished("optim.lr=interval(0.1,1)", runs) == []
    assert aggregate.not_finished("optim=glob(*) seed=0,1", runs) == []
    assert aggregate.not_finished("seed=0,1", runs) == []


def test_what_a_sweep_lost_or_holds_is_refused_or_said(store, tmp_path: Path) -> None:
    """helper-59: a deleted parent given as aggregate.parent_run_id ended in a job-failure
    banner, exit 1, its answer's files uploaded without its tags; a training run's id said
    only "selects no runs"; aggregate.out_dir inside the store's artifacts wrote the answer
    among a run's files; and runs deleted from a FINISHED sweep were dropped without a word."""
    sweep(store, "optim.lr=0.01,0.1", "seed=0,1", "train.epochs=3", "tracking.plots=false")
    (parent,) = store.runs("tags.role = 'sweep'")
    pid = parent.info.run_id
    jobs = store.runs("tags.role = 'job'")
    before = store.db_bytes()
    out = tmp_path / "out"
    res = run_aggregate(store, out, f"aggregate.parent_run_id={jobs[0].info.run_id}")
    one_line_error(res, "is not a sweep's parent run", f": its sweep's parent run is {pid}")
    artifacts = store.root / "mlruns" / "artifacts"
    inside = artifacts / pid / "artifacts"  # the parent's: its answer, under aggregate/
    files = sorted(inside.rglob("*"))
    res = run_aggregate(store, inside)
    one_line_error(res, f"aggregate.out_dir={inside}: inside the store's artifacts ({artifacts})")
    assert res.returncode == 2 and sorted(inside.rglob("*")) == files
    assert store.db_bytes() == before
    store.client.delete_run(pid)
    before = store.db_bytes()
    res = run_aggregate(store, out, f"aggregate.parent_run_id={pid}")
    one_line_error(res, f"aggregate.parent_run_id={pid}: is deleted in this store: restore it")
    assert res.returncode == 2 and not out.exists() and sorted(inside.rglob("*")) == files
    assert store.db_bytes() == before
    store.client.restore_run(pid)
    # Both seeds' runs of one configuration, and one seed's of the other, deleted.
    gone = [r for r in jobs if r.data.params["seed"] == "0" or r.data.params["optim.lr"] == "0.1"]
    for run in gone:
        store.client.delete_run(run.info.run_id)
    res = run_aggregate(store, out, "aggregate.plots=false")
    assert res.returncode == 0, res.stderr
    assert "incomplete: 3 of the sweep's 4 jobs have no finished run" in res.stdout
    assert "\nconfigurations with no finished run: lr=0.1\n" in res.stdout


def test_the_latest_sweep_is_the_one_run_last(store) -> None:
    """A sweep run again keeps its parent run, and with it its first start: `latest` named
    the sweep started after it, and fnnlab-aggregate wrote its answer over that one's
    (helper-59)."""
    first = ["seed=0", "train.epochs=2", "tracking.plots=false", "hydra.sweeper.summarize=false"]
    sweep(store, *first)
    sweep(store, *first, "optim.lr=0.1")
    latest = aggregate.select(store.uri, store.experiment).sweep_id
    sweep(store, *first)  # resumed: its one job had finished
    again = aggregate.select(store.uri, store.experiment).sweep_id
    assert again != latest and len(store.runs("tags.role = 'sweep'")) == 2
    # A tag edited into no time, or one in the future, counts as not there (helper-60: "²"
    # passed str.isdigit, and int() raised a traceback).
    (parent,) = store.runs(f"tags.role = 'sweep' and tags.sweep_id = '{again}'")
    for edited in ("²", "99999999999999", "-1"):
        store.client.set_tag(parent.info.run_id, Tag.SWEEP_OPENED, edited)
        assert aggregate.select(store.uri, store.experiment).sweep_id == latest
