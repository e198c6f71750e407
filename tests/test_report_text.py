"""The sweep's answer in words (fnnlab.report) says better or worse in the direction of its
outcome, and says when the leader lost seeds to divergence: tables from fnnlab.compare on
outcomes made up for each case."""

from __future__ import annotations

import html
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_compare import regimes_per_mode

from fnnlab import report
from fnnlab.aggregate import Aggregate, Selection, comparisons, summarize
from fnnlab.compare import compare, stability_boundary
from fnnlab.outcome import HIGHER_IS_BETTER
from fnnlab.tracking import MAX_TAG_VALUE


def finished_selection(**fields) -> SimpleNamespace:
    """The fields of a Selection the answer's text and files read, of a sweep that ended
    with every job finished."""
    done = {"runs": [], "unfinished": 0, "jobs": 0, "running": False, "not_finished": []}
    return SimpleNamespace(**{"experiment": "e", "sweep_id": "s", **done, **fields})


def answer_of(outcome: str, values: dict[float, list[float]], alpha: float = 0.05) -> Aggregate:
    """An Aggregate over learning rates whose runs have these outcomes (NaN: diverged)."""
    runs = pd.DataFrame(
        [
            {
                "run_id": f"{lr}-{seed}",
                "lr": lr,
                "seed": seed,
                "outcome": v,
                "diverged": math.isnan(v),
                "status": "FINISHED",
                "epochs_run": 101,
            }
            for lr, vs in values.items()
            for seed, v in enumerate(vs)
        ]
    )
    summary = (
        runs.groupby("lr")
        .agg(diverged=("diverged", "sum"), runs=("seed", "size"))
        .reset_index()
        .assign(stable=lambda f: f["runs"] - f["diverged"], oscillating=0)
    )
    return Aggregate(
        selection=finished_selection(),
        runs=runs,
        summary=summary,
        curves=pd.DataFrame(),
        config_cols=["lr"],
        outcome=outcome,
        comparison=compare(runs, ["lr"], higher_is_better=outcome in HIGHER_IS_BETTER, alpha=alpha),
        alpha=alpha,
    )


def verdicts(agg: Aggregate) -> dict[float, str]:
    table = report.comparison_table(agg)
    return dict(zip(table["lr"], table["verdict"], strict=True))


def test_a_lower_accuracy_is_worse() -> None:
    agg = answer_of(
        "final_accuracy", {0.1: [0.99, 0.98, 0.99, 0.985], 1.0: [0.5, 0.52, 0.49, 0.51]}
    )
    assert verdicts(agg) == {0.1: "leader", 1.0: "worse"}
    text = report.leader_text(agg)
    assert "worse than the leader beyond seed noise: lr=1" in text
    assert "better" not in text


def test_a_lower_loss_with_diverged_seeds_is_better_not_worse() -> None:
    """A configuration that lost seeds cannot lead; over the seeds it kept it may still be
    better than the leader, and the answer says so, with the divergence."""
    nan = math.nan
    agg = answer_of(
        "tail_loss", {1.0: [0.1, 0.11, 0.12, 0.1, 0.11], 3.0: [0.01, 0.012, 0.011, nan, nan]}
    )
    assert verdicts(agg) == {1.0: "leader", 3.0: "better"}
    text = report.leader_text(agg)
    assert "better than the leader beyond seed noise, but some seeds diverged: lr=3" in text
    assert "worse" not in text


def test_a_leader_that_lost_seeds_says_so() -> None:
    nan = math.nan
    agg = answer_of("tail_loss", {1.0: [0.1, 0.11, nan, nan, nan], 3.0: [0.5, 0.52, nan, nan, nan]})
    first = report.leader_text(agg).splitlines()[0]
    assert first.startswith("leader: lr=1: ")
    assert first.endswith("(95% CI, Bonferroni, 2 seeds; 3 more diverged and are left out)")
    # One that lost fewer leads: lr=1's 2 survivors of 5 led, and lr=3, which lost 1 of 5,
    # was "worse than the leader beyond seed noise" (helper-68).
    agg = answer_of(
        "tail_loss", {1.0: [0.1, 0.11, nan, nan, nan], 3.0: [0.5, 0.52, nan, 0.5, 0.51]}
    )
    lines = report.leader_text(agg).splitlines()
    assert lines[0].startswith("leader: lr=3: ")
    assert lines[0].endswith("(95% CI, Bonferroni, 4 seeds; 1 more diverged and is left out)")
    assert "worse than the leader" not in report.leader_text(agg)
    assert lines[2].startswith(
        "better than the leader beyond seed noise, but some seeds diverged: lr=1 (-0.4"
    ), lines


def test_one_seed_left_out_is_singular() -> None:
    nan = math.nan
    agg = answer_of("tail_loss", {1.0: [0.1, 0.11, nan], 3.0: [0.5, 0.52, nan]})
    assert report.leader_text(agg).splitlines()[0].endswith("1 more diverged and is left out)")


def test_every_line_says_which_seeds_diverged() -> None:
    """The leader's line said how many of its seeds diverged; a tied, worse or better one
    did not, and a configuration whose every seed diverged read as missing data."""
    nan = math.nan
    agg = answer_of(
        "tail_loss",
        {
            0.1: [0.3, 0.5, 0.4, 0.6],
            0.3: [0.25, 0.75, nan, nan],  # tied, 2 lost
            1.0: [0.9, 0.92, 0.91, nan],  # worse, 1 lost
            3.0: [nan, nan, nan, nan],
            10.0: [0.95, nan, nan, nan],
        },
    )
    assert verdicts(agg) == {
        0.1: "leader",
        0.3: "tied",
        1.0: "worse",
        3.0: "all diverged",
        10.0: "no claim",
    }
    lines = report.leader_text(agg).splitlines()
    tied = next(line for line in lines if line.startswith("tied with the leader: "))
    assert tied.startswith("tied with the leader: lr=0.3 (") and tied.endswith(
        "; 2 more seeds diverged)"
    ), tied
    worse = (
        "worse than the leader beyond seed noise: lr=1 (+0.46, p_adj 0.016; 1 more seed diverged)"
    )
    assert worse in lines
    assert "every seed diverged: lr=3 (4 diverged)" in lines
    assert "no claim (fewer than 2 seeds with an outcome): lr=10 (1 seed, 3 diverged)" in lines


def test_a_tie_below_the_margin_gives_its_p_value() -> None:
    """ "below the margin" alone read as "shown equal", also when the interval of the
    difference was about 35 times the margin wide ([-0.084, +0.088] against 0.0048)."""
    values = {1.0: [0.2, 0.9, 0.5, 0.1, 0.7], 3.0: [0.1, 0.95, 0.55, 0.15, 0.66]}
    text = report.leader_text(answer_of("tail_loss", values))
    assert "tied with the leader: lr=3 (+0.002, p_adj 0.95, below the margin)" in text


def test_intervals_are_named_by_their_confidence() -> None:
    values = {1.0: [0.1, 0.11, 0.12], 3.0: [0.5, 0.52, 0.51]}
    assert "(95% CI, Bonferroni, 3 seeds)" in report.leader_text(answer_of("tail_loss", values))
    agg = answer_of("tail_loss", values, alpha=0.5)
    assert "(50% CI, Bonferroni, 3 seeds)" in report.leader_text(agg)
    columns = list(report.comparison_table(agg).columns)
    assert (
        "mean tail_loss [50% CI, Bonferroni]" in columns
        and "vs leader [50% CI, Bonferroni]" in columns
    )
    # One configuration with 2 seeds: its interval is scipy's plain one, and named so.
    alone = answer_of("tail_loss", {1.0: [0.1, 0.11, 0.12], 3.0: [0.5, math.nan, math.nan]})
    assert "(95% CI, 3 seeds" in report.leader_text(alone)
    row = alone.comparison.iloc[0]
    x = [0.1, 0.11, 0.12]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        stats.t.interval(0.95, 2, np.mean(x), stats.sem(x))
    )


def test_two_seeds_of_equal_accuracy_are_no_certain_difference() -> None:
    """1.0 and 1.0 against 0.5 and 0.5: the answer used to call it worse beyond seed noise
    (a t-test with no spread, p = 0); an exact test over 2 seeds each can say no such thing."""
    agg = answer_of("final_accuracy", {0.1: [1.0, 1.0], 1.0: [0.5, 0.5]})
    assert verdicts(agg) == {0.1: "leader", 1.0: "tied"}
    text = report.leader_text(agg)
    assert "tied with the leader: lr=1 (-0.5, p_adj 0.33, ~4 seeds to separate it if real)" in text
    assert "worse" not in text
    table = report.comparison_table(agg).set_index("lr")
    assert table.loc[1.0, "vs leader [95% CI, Bonferroni]"] == "-0.5 (exact test: no interval)"
    agg = answer_of("final_accuracy", {0.1: [1.0] * 4, 1.0: [0.5] * 4})
    assert verdicts(agg) == {0.1: "leader", 1.0: "worse"}


def test_equal_accuracies_of_every_seed_are_not_certain() -> None:
    """Three seeds at 0.99 were "0.99 [0.99, 0.99]", and another width at 0.99 on every seed
    "identical to the leader" with "+0 [+0, +0]"."""
    agg = answer_of("final_accuracy", {0.1: [0.99] * 3, 1.0: [0.99] * 3})
    leader = report.leader_text(agg).splitlines()[0]
    assert leader.endswith("mean final accuracy 0.99 (3 seeds, all equal: no interval)"), leader
    table = report.comparison_table(agg).set_index("lr")
    assert table.loc[1.0, "vs leader [95% CI, Bonferroni]"] == "+0 (exact test: no interval)"
    # Either could have led: lr=0.1 leads by sort order alone (helper-47).
    assert leader == (
        "leader: lr=0.1 (the lead shared with lr=1: the same mean): "
        "mean final accuracy 0.99 (3 seeds, all equal: no interval)"
    )
    assert verdicts(agg) == {0.1: "leader", 1.0: "shares lead"}
    assert "identical" not in str(agg.comparison["note"].tolist())
    assert [r["lr"] for r in report.co_leaders(agg)] == [0.1, 1.0]
    # The same accuracies on other seeds: summed in another order, their means were 1.1e-16
    # apart, and one "tied" with the other (helper-55).
    one = [1.0, 0.9933333333333333, 1.0, 0.9733333333333334, 0.98]
    other = [1.0, 0.9933333333333333, 1.0, 0.98, 0.9733333333333334]
    agg = answer_of("final_accuracy", {0.1: one, 1.0: other})
    assert verdicts(agg) == {0.1: "leader", 1.0: "shares lead"}


def test_the_stability_boundary_is_per_backprop_mode() -> None:
    """Only the tutorial mode diverges and only the exact mode oscillates: pooled, one line
    said "divergence between lr=1 and lr=10; oscillation already at lr=0.1"."""
    runs = regimes_per_mode(
        {
            "tutorial": {0.1: "ss", 1.0: "ss", 10.0: "dd"},
            "exact": {0.1: "ss", 1.0: "oo", 10.0: "oo"},
        }
    )
    cols = ["hidden_dim", "backprop", "lr"]
    summary = runs.groupby(cols).size().rename("runs").reset_index()
    agg = Aggregate(
        selection=finished_selection(),
        runs=runs.assign(
            run_id=runs.index,
            status="FINISHED",
            diverged=runs["regime"] == "diverged",
            epochs_run=101,
        ),
        summary=summary,
        curves=pd.DataFrame(),
        config_cols=cols,
        outcome="tail_loss",
        comparison=pd.DataFrame(),
        stability=stability_boundary(runs, ["hidden_dim", "backprop"]),
    )
    assert report.stability_lines(agg) == [
        "stability boundary (learning rates, per hidden_dim, backprop):",
        "  hidden_dim=8 backprop=exact: divergence none up to lr=10; "
        "oscillation or divergence between lr=0.1 and lr=1",
        "  hidden_dim=8 backprop=tutorial: divergence between lr=1 and lr=10; "
        "oscillation or divergence between lr=1 and lr=10",
    ]
    # A rate as the answer's other lines write it: lr=1000000, not lr=1e+06.
    big = runs.assign(lr=runs["lr"] * 1e5)
    agg.stability = stability_boundary(big, ["hidden_dim", "backprop"])
    assert report.stability_lines(agg)[2] == (
        "  hidden_dim=8 backprop=tutorial: divergence between lr=100000 and lr=1000000; "
        "oscillation or divergence between lr=100000 and lr=1000000"
    )
    # One learning rate: no boundary in it can be seen, and the heading says which.
    single = runs[runs["lr"] == 1.0]
    agg.summary = single.groupby(cols).size().rename("runs").reset_index()
    agg.stability = stability_boundary(single, ["hidden_dim", "backprop"])
    assert report.stability_lines(agg)[0] == (
        "stability boundary (learning rates, per hidden_dim, backprop; only lr=1 was run):"
    )
    # One configuration: the boundary is per width, not per every column it has.
    one = runs[runs["backprop"] == "exact"]
    agg.summary = one.groupby(cols).size().rename("runs").reset_index()
    agg.stability = stability_boundary(one, ["hidden_dim", "backprop"])
    assert report.stability_lines(agg)[0] == "stability boundary (learning rates, per width):"


def test_jobs_without_params_vary_no_configuration() -> None:
    """Jobs that failed or were killed before they logged their params make a summary row of
    empty configuration, and the configuration columns float: the answer still names whole
    numbers in full and takes nothing for varied because of that row."""

    def answer(widths: tuple[int, ...], lrs: tuple[float, ...]) -> Aggregate:
        configs = [(float(h), lr) for h in widths for lr in lrs]
        runs = pd.DataFrame(
            [
                {"hidden_dim": h, "lr": lr, "seed": s, "outcome": 0.3 - 0.1 * i + 0.01 * s}
                for i, (h, lr) in enumerate(configs)
                for s in range(3)
            ]
        ).assign(diverged=False)
        counts = {"stable": 3, "oscillating": 0, "diverged": 0, "runs": 3}
        known = [{"hidden_dim": h, "lr": lr, **counts} for h, lr in configs]
        unknown = {"hidden_dim": math.nan, "lr": math.nan, **counts, "stable": 0}
        return Aggregate(
            selection=finished_selection(),
            runs=runs.assign(run_id=runs.index, status="FINISHED", epochs_run=101),
            summary=pd.DataFrame([*known, unknown]),
            curves=pd.DataFrame(),
            config_cols=["hidden_dim", "lr"],
            outcome="tail_loss",
            comparison=compare(runs, ["hidden_dim", "lr"]),
        )

    agg = answer((4, 1234567), (0.1,))
    assert report.varying_cols(agg) == ["hidden_dim"]
    assert report.constant_text(agg) == "lr=0.1"
    assert report.leader_text(agg).startswith("leader: hidden_dim=1234567: ")
    fixed, header, *rows = report.terminal_table(agg).splitlines()
    assert fixed == "lr=0.1" and header.split()[0] == "hidden_dim"
    assert [row.split()[0] for row in rows] == ["4", "1234567"]
    agg = answer((123456,), (0.1, 1e6))
    assert report.varying_cols(agg) == ["lr"]
    assert report.constant_text(agg) == "hidden_dim=123456"
    assert report.leader_text(agg).startswith("leader: lr=1000000: ")
    # A rate no integer column can hold stays a float, shown as such.
    agg = answer((8,), (0.1, 1e20))
    assert report.leader_text(agg).startswith("leader: lr=1e+20: ")
    assert [row.split()[0] for row in report.terminal_table(agg).splitlines()[2:]] == [
        "1.000000e-01",
        "1.000000e+20",
    ]


def test_the_description_fits_the_tag_and_keeps_what_is_not_of_this_answer() -> None:
    """Within what log_values keeps of a tag (a longer one lost its end mid-link): links give
    way, then tables; the files of an earlier answer are named, a few and then how many."""
    agg = answer_of("final_loss", {0.1: [0.30, 0.31, 0.29], 1.0: [0.5, 0.52, 0.49]})
    agg.selection.filter = None
    agg.runs["status"] = "FINISHED"
    earlier = [f"old_{i}.png" for i in range(10)] + ["sub/"]
    listed = ", ".join(f"`aggregate/old_{i}.png`" for i in range(report.SHOWN_EARLIER))
    tail = f"Not of this answer: {listed} and 5 more (an earlier answer's; MLflow keeps them).\n"
    # With 60 links the whole text is 5,616 characters: within MLflow's 8,000, beyond what
    # log_values keeps.
    for n, linked in ((1, True), (60, False), (4000, False)):
        views = [("report", "http://127.0.0.1:5000/report")] + [
            (f"h8-lr0.1-s{i}", f"http://127.0.0.1:5000/#/runs/{i:032x}") for i in range(n)
        ]
        note = report.description(agg, views, "optim.lr=0.1,1", earlier)
        assert len(note) <= MAX_TAG_VALUE and note.endswith(tail), (n, note[-300:])
        assert note.startswith("### ") and ("h8-lr0.1-s0" in note) == linked
        assert "Mean final_loss" in note and ("More: [report]" in note) != linked
    assert not report.description(agg, views, "optim.lr=0.1,1").rstrip().endswith("them).")

    # So many tied configurations that the answer's lines alone are too long: they give way
    # after a whole configuration; the links to the report, the sweep and the earlier files stay.
    # (Of means a little apart: configurations of one mean would all share the lead.)
    values = {lr / 1000: [0.3, 0.31, 0.29 + lr * 1e-6] for lr in range(1, 301)}
    agg = answer_of("final_loss", values)
    agg.selection.filter = None
    agg.runs["status"] = "FINISHED"
    note = report.description(agg, views, "optim.lr=...", earlier)
    assert len(note) <= MAX_TAG_VALUE and note.endswith(tail), note[-500:]
    head, rest = note.split("…\n")
    assert head.startswith("### leader: ") and "\n- tied with the leader: lr=0.002 (" in head
    assert head.endswith(", below the margin); ") and len(note) > MAX_TAG_VALUE - 100
    assert rest.startswith("\nMore: [report]") and "Sweep over `optim.lr=...`" in rest


def test_configurations_whose_loss_ended_above_its_start() -> None:
    """Over the used runs: the mean tail loss against the mean loss at epoch 0, with and
    without configuration columns (one configuration)."""
    runs = pd.DataFrame(
        {"lr": [0.1, 0.1, 1.0, 1.0, 1.0], "tail_loss": [0.2, 0.3, 6.0, 5.0, 99.0]}
    ).assign(used=[True, True, True, True, False])
    curves = pd.DataFrame({"lr": [0.1, 0.1, 1.0, 1.0], "key": "loss", "step": [0, 1, 0, 1]}).assign(
        mean=[0.7, 0.6, 1.5, 4.0]
    )
    agg = SimpleNamespace(runs=runs, curves=curves, config_cols=["lr"])
    agg.summary = runs[["lr"]].drop_duplicates()
    assert report.ended_above_start(agg) == [("lr=1", 5.5, 1.5)]
    one = SimpleNamespace(runs=runs[runs["lr"] == 1.0], curves=curves[curves["lr"] == 1.0])
    one.config_cols, one.summary = [], pd.DataFrame(index=[0])
    assert report.ended_above_start(one) == [("all runs", 5.5, 1.5)]
    one.curves = pd.DataFrame()
    assert report.ended_above_start(one) == []


def test_without_a_leader_the_answer_still_names_what_diverged() -> None:
    """The lines of configurations whose every seed diverged came only after a leader's: with
    one seed each, or every run diverged, the answer said "nothing can be told from seed
    noise" (helper-36)."""
    nan = math.nan
    agg = answer_of("tail_loss", {1.0: [0.5], 300.0: [nan]})
    lines = report.leader_text(agg).splitlines()
    assert lines[0].startswith("no leader: no configuration has 2 or more runs")
    assert lines[1:] == ["every seed diverged: lr=300 (1 diverged)"]
    assert verdicts(agg) == {1.0: "no claim", 300.0: "all diverged"}
    agg = answer_of("tail_loss", {300.0: [nan, nan], 600.0: [nan, nan]})
    assert report.leader_text(agg).splitlines() == [
        "no leader: every run diverged",
        "every seed diverged: lr=300 (2 diverged); lr=600 (2 diverged)",
    ]


def test_an_answer_about_part_of_a_sweep_says_so_first() -> None:
    values = {1.0: [0.1, 0.11, 0.12], 3.0: [0.5, 0.52, 0.51]}
    agg = answer_of("tail_loss", values)
    agg.selection.unfinished, agg.selection.jobs = 8, 12
    first = report.leader_text(agg).splitlines()[0]
    assert first.startswith("incomplete: 8 of the sweep's 12 jobs have no finished run (the ")
    assert "fnnlab-train command, run again, runs them" in first
    agg.selection.unfinished, agg.selection.running = 0, True
    first = report.leader_text(agg).splitlines()[0]
    assert first.startswith("not ended: the sweep's parent run is RUNNING"), first


def test_the_count_of_runs_names_jobs_that_made_none() -> None:
    """report.md said "4 runs: 4 finished, 0 failed or killed" above the answer's
    "incomplete: 2 of the sweep's 6 jobs": those 2 jobs never made a run (helper-36)."""
    agg = answer_of("tail_loss", {1.0: [0.1, 0.11], 3.0: [0.5, 0.52]})
    agg.selection.superseded = agg.selection.reused = 0
    assert report.run_counts(agg) == (
        "4 runs: 4 finished (0 of them diverged), 0 failed or killed, 0 still running"
    )
    agg.selection.unfinished, agg.selection.jobs = 2, 6
    assert report.run_counts(agg).endswith(
        "0 still running; 2 of the sweep's 6 jobs have no finished run"
    )


def test_runs_too_short_to_judge_are_named() -> None:
    """Runs shorter than regime.min_epochs are "stable" by definition: the boundary said
    "oscillation or divergence none up to lr=1" of 3-epoch runs (helper-35)."""
    agg = answer_of("tail_loss", {1.0: [0.1, 0.11], 3.0: [0.5, 0.52]})
    assert report.too_short_line(agg) == ""
    agg.runs["epochs_run"] = 3
    agg.selection.runs = [
        SimpleNamespace(info=SimpleNamespace(run_id=i), data=SimpleNamespace(params={}))
        for i in agg.runs["run_id"]
    ]
    line = "too short to judge: 4 runs of 3 epochs, fewer than regime.min_epochs=4, count as"
    assert report.too_short_line(agg).startswith(line)
    assert line in report.leader_text(agg).splitlines()[-1]
    for run in agg.selection.runs:
        run.data.params["regime.min_epochs"] = "3"
    assert report.too_short_line(agg) == ""
    agg.runs["epochs_run"] = 1
    assert report.too_short_line(agg).endswith(
        "of 1 epoch, fewer than regime.min_epochs=3, count as stable: neither oscillation nor "
        "a divergence after their last epoch can be seen in them; a run of 1 epoch's outcome "
        "is its loss before any update"
    )
    # A param changed in the store to text: nothing judged, not a ValueError.
    agg.selection.runs[0].data.params["regime.min_epochs"] = "four"
    assert report.too_short_line(agg).startswith("too short to judge: 3 runs of 1 epoch, ")


def test_one_configuration_has_no_leader_and_no_ties() -> None:
    """'leader' and 'tied with the leader: none' claimed a comparison with nothing."""
    agg = answer_of("tail_loss", {0.1: [0.1, 0.11, 0.12]})
    lines = report.leader_text(agg).splitlines()
    assert lines[0].startswith("one configuration, nothing to compare it with: lr=0.1: mean ")
    assert not any("leader" in line for line in lines), lines
    assert verdicts(agg) == {0.1: "only one"}


def test_the_only_configuration_with_seeds_is_no_leader_beside_ones_without() -> None:
    """Beside configurations of one seed or none, the only one of several seeds was the
    "leader", "tied with the leader: none", and so on the parent run's tag (helper-43)."""
    nan = math.nan
    agg = answer_of("tail_loss", {0.1: [0.1, 0.11, 0.12], 1.0: [0.5], 80.0: [nan, nan]})
    lines = report.leader_text(agg).splitlines()
    assert lines[0].startswith(
        "one configuration with 2 or more runs with a tail loss, nothing to compare it with: "
        "lr=0.1: mean "
    )
    assert "no claim (fewer than 2 seeds with an outcome): lr=1" in lines
    assert not any("leader" in line for line in lines), lines
    assert verdicts(agg) == {0.1: "only one", 1.0: "no claim", 80.0: "all diverged"}
    agg.runs = agg.runs.assign(used=~agg.runs["diverged"], regime="stable", error="")
    agg.selection.filter = None
    metrics, tags = report.parent_values(agg)
    assert tags["aggregate.leader"] == "" and math.isnan(metrics["aggregate/leader_mean"])


def test_a_claim_at_another_alpha_names_it() -> None:
    values = {0.1: [0.1, 0.11, 0.12], 1.0: [0.3, 0.32, 0.35]}
    assert "worse than the leader beyond seed noise: lr=1" in report.leader_text(
        answer_of("tail_loss", values)
    )
    agg = answer_of("tail_loss", values, alpha=0.5)
    assert "worse than the leader beyond seed noise (adjusted p < alpha=0.5): lr=1" in (
        report.leader_text(agg)
    )


def width_lr_grid(runs: pd.DataFrame) -> pd.DataFrame:
    """The description's width x lr grid of runs with these tail losses ("outcome"), indexed
    by width."""
    cols = ["hidden_dim", "lr"]
    summary = runs.groupby(cols).size().rename("runs").reset_index()
    agg = Aggregate(
        selection=finished_selection(),
        runs=runs,
        summary=summary.assign(oscillating=0, diverged=0),
        curves=pd.DataFrame(),
        config_cols=cols,
        outcome="tail_loss",
        comparison=compare(runs, cols),
    )
    return report.comparison_grid(agg).set_index("hidden_dim")


def test_a_grid_cell_of_one_seed_names_its_n_once() -> None:
    """The description's width x lr grid said '61.33 (n=1: no interval), n=1'."""
    runs = pd.DataFrame(
        [
            {"hidden_dim": h, "lr": lr, "seed": s, "outcome": 0.3 + h / 100 + s / 1000}
            for h in (4, 8)
            for lr in (0.1, 1.0)
            for s in range(1 if (h, lr) == (8, 1.0) else 3)
        ]
    ).assign(diverged=False)
    grid = width_lr_grid(runs)
    assert grid.loc[8, "lr=1"] == "0.38 (n=1: no interval)"
    # At 1 - 0.05 / 3: three configurations have 2 seeds or more (the means' intervals hold
    # all three at once).
    assert grid.loc[8, "lr=0.1"] == "0.381 [0.3766, 0.3854], n=3"


def test_the_same_runs_share_the_lead() -> None:
    """Two configurations that made the same runs (a setting that changed nothing): one was
    the leader, by sort order, and the other a plain tie; only comparison.csv's note said so
    (helper-47). A third of another mean is still tied or not on its own."""
    values = {0.1: [0.2, 0.3, 0.25], 1.0: [0.2, 0.3, 0.25], 3.0: [0.21, 0.33, 0.24]}
    agg = answer_of("tail_loss", values)
    assert agg.comparison.set_index("lr").loc[1.0, "note"] == "identical to the leader"
    lines = report.leader_text(agg).splitlines()
    assert lines[0].startswith("leader: lr=0.1 (the lead shared with lr=1: the same mean): ")
    assert lines[1].startswith("tied with the leader: lr=3 (+0.01, p_adj ")
    assert verdicts(agg) == {0.1: "leader", 1.0: "shares lead", 3.0: "tied"}
    assert [r["lr"] for r in report.co_leaders(agg)] == [0.1, 1.0]
    # The parent's tags as the answer's lines: lr=1 was in aggregate.leader and in
    # aggregate.tied (helper-68).
    agg.runs = agg.runs.assign(used=True, regime="stable", error="")
    agg.selection.filter = None
    tags = report.parent_values(agg)[1]
    assert (tags["aggregate.leader"], tags["aggregate.tied"]) == ("lr=0.1; lr=1", "lr=3")


def test_a_grid_cell_that_shares_the_lead_says_so() -> None:
    """The parent run's width x lr grid called it "tied", unlike the table and the answer."""
    outcomes = {(4, 0.1): [0.2, 0.3], (8, 0.1): [0.2, 0.3], (4, 1.0): [0.21, 0.33]}
    outcomes[(8, 1.0)] = [0.6, 0.7]
    runs = pd.DataFrame(
        [
            {"hidden_dim": h, "lr": lr, "seed": s, "outcome": v}
            for (h, lr), values in outcomes.items()
            for s, v in enumerate(values)
        ]
    ).assign(diverged=False)
    grid = width_lr_grid(runs)
    assert grid.loc[4, "lr=0.1"].endswith(", n=2, **leader**")
    assert grid.loc[8, "lr=0.1"].endswith(", n=2, shares lead")
    assert grid.loc[4, "lr=1"].endswith(", n=2, tied")


def answer_with_failed_runs(values: dict[float, list]) -> Aggregate:
    """An Aggregate made by fnnlab.aggregate's own summary and comparison: per learning rate,
    tail losses, NaN for a run that diverged, "F" for one that FAILED."""
    rows = []
    for lr, vs in values.items():
        for seed, v in enumerate(vs):
            failed = v == "F"
            diverged = not failed and math.isnan(v)
            out = math.nan if failed or diverged else v
            rows.append(
                {
                    "run_id": f"{lr}-{seed}",
                    "lr": lr,
                    "seed": seed,
                    "status": "FAILED" if failed else "FINISHED",
                    "diverged": diverged,
                    "regime": None if failed else "diverged" if diverged else "stable",
                    "used": not failed and not diverged,
                    "final_loss": out,
                    "final_accuracy": math.nan,
                    "tail_loss": out,
                    "epochs_run": 101,
                    "error": "",
                }
            )
    frame = pd.DataFrame(rows)
    return Aggregate(
        selection=finished_selection(filter=None),
        runs=frame,
        summary=summarize(frame, ["lr"]),
        curves=pd.DataFrame(),
        config_cols=["lr"],
        outcome="tail_loss",
        comparison=comparisons(frame, ["lr"], "tail_loss"),
    )


def test_the_share_of_seeds_lost_counts_the_runs_the_answer_counts() -> None:
    """Both lost 1 of 6 runs to divergence, and lr=3, far better, had a FAILED run too: over
    finished runs only it lost 1 of 5 and could not lead, while the answer's counts showed 1
    of 6 for both; and "shares lead" was decided from other counts than the leader's pool
    (helper-70)."""
    nan = math.nan
    agg = answer_with_failed_runs(
        {1.0: [0.50, 0.52, 0.51, 0.53, 0.50, nan], 3.0: [0.10, 0.11, 0.10, 0.12, nan, "F"]}
    )
    assert report.leader_text(agg).startswith("leader: lr=3: ")
    # lr=3 lost 2 of 8 runs, lr=1 1 of 4: the same share, the same mean: the lead is shared.
    agg = answer_with_failed_runs({1.0: [0.1, 0.2, nan, 0.3], 3.0: [0.2, 0.2, nan, nan, *"FFFF"]})
    assert verdicts(agg) == {1.0: "shares lead", 3.0: "leader"}
    # lr=1 lost 1 of 6, lr=3 1 of 4: lr=1 leads alone, lr=3 is tied, and the tags say so.
    agg = answer_with_failed_runs({1.0: [0.1, 0.2, nan, 0.3, "F", "F"], 3.0: [0.3, 0.1, 0.2, nan]})
    assert verdicts(agg) == {1.0: "leader", 3.0: "tied"}
    tags = report.parent_values(agg)[1]
    assert (tags["aggregate.leader"], tags["aggregate.tied"]) == ("lr=1", "lr=3")


def test_a_tied_configuration_printed_as_the_leader_is_still_tagged_tied() -> None:
    """aggregate.tied left out the configurations that share the lead by their label: one
    that prints alike (lr=0.001 and lr=0.0010000004) was left out too (helper-70)."""
    agg = answer_with_failed_runs(
        {0.001: [0.10, 0.12, 0.11, 0.13], 0.0010000004: [0.20, 0.05, 0.30, 0.02]}
    )
    tags = report.parent_values(agg)[1]
    assert (tags["aggregate.leader"], tags["aggregate.tied"]) == ("lr=0.001", "lr=0.001")


def test_a_difference_holm_finds_and_its_interval_holds_0_is_marked_and_said_why(tmp_path):
    """lr=2's p is the largest of the 3 pairs', which Holm's adjustment takes at alpha (its
    p_adj is its p, 0.045), while every interval is at alpha/3 (Bonferroni): its difference
    is beyond seed noise and its interval holds 0. Its verdict says so ("worse (Holm)"), and
    a line under each table says why; lr=1's, whose interval leaves 0 out, is plainly worse.
    The answer's lines give each p_adj."""
    agg = answer_with_failed_runs(
        {
            0.1: [0.31, 0.32, 0.31, 0.27, 0.32],
            1.0: [0.61, 0.59, 0.61, 0.61, 0.61],
            2.0: [0.34, 0.36, 0.32, 0.34, 0.33],
        }
    )
    row = agg.comparison.set_index("lr").loc[2.0]
    assert row["diff_ci_low"] < 0 < row["diff_ci_high"] and row["p_adj"] < agg.alpha
    assert verdicts(agg) == {0.1: "leader", 1.0: "worse", 2.0: "worse (Holm)"}
    note = (
        "(Holm): beyond seed noise by Holm's adjustment (p_adj < 0.05), while the difference's "
        "interval, at the stricter level of Bonferroni's adjustment over every pair, holds 0"
    )
    assert report.table_notes(agg) == [note]
    assert report.terminal_table(agg).splitlines()[-1] == note
    agg.selection = Selection(None, "sqlite://", "e", "1", "p", "s", [])  # report.md names it
    assert note in report.markdown_report(agg, []).split("\n\n")
    assert f"<p>{html.escape(note)}</p>" in report.html_report(agg, tmp_path, [])
    assert note in report.description(agg, []).split("\n\n")
    text = report.leader_text(agg)
    assert "lr=2 (+0.032, p_adj 0.045)" in text and "lr=1 (+0.3, p_adj 3.7e-05)" in text


def test_a_tie_only_by_the_margin_is_marked_and_said_why(tmp_path):
    """lr=1 is 0.006 above the leader, beyond seed noise (its interval leaves 0 out), and
    tied by the margin of 1% of the leader's mean: "tied (margin)", and a line says why
    (helper-75: it read "tied" beside an interval that left 0 out)."""
    agg = answer_with_failed_runs(
        {
            0.1: [1.0000, 1.0010, 0.9990, 1.0005, 0.9995],
            1.0: [1.0060, 1.0068, 1.0052, 1.0063, 1.0057],
            2.0: [1.5, 1.6, 1.4, 1.55, 1.45],
        }
    )
    row = agg.comparison.set_index("lr").loc[1.0]
    assert 0 < row["diff_ci_low"] and row["p_adj"] < agg.alpha and row["tied"]
    assert verdicts(agg) == {0.1: "leader", 1.0: "tied (margin)", 2.0: "worse"}
    note = (
        "(margin): beyond seed noise (p_adj < 0.05), but the difference is below the margin "
        "aggregate.min_effect (1% of the leader's mean, the default), too small to count"
    )
    assert report.table_notes(agg) == [note]
    assert report.terminal_table(agg).splitlines()[-1] == note
    agg.selection = Selection(None, "sqlite://", "e", "1", "p", "s", [])
    assert note in report.markdown_report(agg, []).split("\n\n")
    assert f"<p>{html.escape(note)}</p>" in report.html_report(agg, tmp_path, [])


def test_no_line_under_the_table_when_no_verdict_is_marked() -> None:
    """Three configurations (Holm and Bonferroni can differ), every claimed difference's
    interval leaving 0 out, and a tie with a p above alpha."""
    agg = answer_with_failed_runs(
        {
            0.1: [0.31, 0.32, 0.31, 0.27, 0.32],
            1.0: [0.61, 0.59, 0.61, 0.61, 0.61],
            2.0: [0.30, 0.36, 0.32, 0.29, 0.33],
        }
    )
    assert verdicts(agg) == {0.1: "leader", 1.0: "worse", 2.0: "tied"}
    assert report.table_notes(agg) == []
    assert "(Holm)" not in report.terminal_table(agg)
    assert "(margin)" not in report.terminal_table(agg)


@pytest.mark.parametrize(
    ("p", "alpha", "text"),
    [
        (0.0497, 0.05, "0.0497"),
        (0.0503, 0.05, "0.0503"),
        (0.046, 0.05, "0.046"),
        (0.05, 0.05, "0.05"),
        (0.0996, 0.1, "0.0996"),
        (3.7e-05, 0.05, "3.7e-05"),
        (1.0, 0.05, "1"),
        (0.049999999, 0.05, "0.049999999"),
        (0.050000001, 0.05, "0.050000001"),
        (0.0, 0.05, "0"),
    ],
)
def test_an_adjusted_p_is_never_shown_rounded_to_alpha_or_across_it(p, alpha, text):
    """helper-75: 0.0497 read "p_adj 0.05" under "p_adj < 0.05", and so did a tie at 0.0503."""
    assert report.p_text(p, alpha) == text


def test_the_width_by_rate_grid_marks_a_tie_by_the_margin_and_says_why() -> None:
    """The parent run's description shows width x learning rate as a grid, which names ties
    (not "worse"): a tie by the margin alone reads "tied (margin)" there too, with its line
    (helper-76: a plain "tied", no line)."""
    outcomes = {
        (8, 0.1): [1.0000, 1.0010, 0.9990, 1.0005, 0.9995],
        (8, 1.0): [1.0060, 1.0068, 1.0052, 1.0063, 1.0057],
        (16, 0.1): [1.5, 1.6, 1.4, 1.55, 1.45],
        (16, 1.0): [1.5, 1.6, 1.4, 1.55, 1.46],
    }
    runs = pd.DataFrame(
        [
            {
                "run_id": f"{h}-{lr}-{seed}",
                "hidden_dim": h,
                "lr": lr,
                "seed": seed,
                "status": "FINISHED",
                "diverged": False,
                "regime": "stable",
                "used": True,
                "final_loss": v,
                "final_accuracy": math.nan,
                "tail_loss": v,
                "epochs_run": 101,
                "error": "",
            }
            for (h, lr), values in outcomes.items()
            for seed, v in enumerate(values)
        ]
    )
    cols = ["hidden_dim", "lr"]
    agg = Aggregate(
        selection=finished_selection(filter=None, parent_run_id=None),
        runs=runs,
        summary=summarize(runs, cols),
        curves=pd.DataFrame(),
        config_cols=cols,
        outcome="tail_loss",
        comparison=comparisons(runs, cols, "tail_loss"),
    )
    grid = report.comparison_grid(agg).set_index("hidden_dim")
    assert grid.loc[8, "lr=1"] == "1.006 [1.005, 1.007], n=5, tied (margin)"
    description = report.description(agg, []).split("\n\n")
    (note,) = report.table_notes(agg)
    assert note.startswith("(margin): ") and note in description
