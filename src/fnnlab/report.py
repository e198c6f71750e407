"""An Aggregate -> files (CSV, Markdown, PNG) and back onto the sweep's parent run."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fnnlab import links, plots, provenance, reference
from fnnlab.aggregate import Aggregate, Selection, boundary_groups
from fnnlab.compare import BOUNDARY_COLUMNS, ONLY_ONE, is_whole, leader_label, same_mean
from fnnlab.config import AggregateConfig
from fnnlab.names import FINISHED, RUNNING, UNFINISHED, Tag
from fnnlab.outcome import HIGHER_IS_BETTER
from fnnlab.tracking import MAX_TAG_VALUE, Store, log_values

# Summary columns as a person reads them.
SUMMARY_COLUMNS = {
    "runs": "runs",
    "used": "used",
    "stable": "stable",
    "oscillating": "oscillating",
    "diverged": "diverged",
    "failed": "failed",
    "running": "running",
    "loss_mean": "loss mean",
    "loss_std": "loss std",
    "loss_ci95": "loss ±95% CI",
    "loss_min": "loss min",
    "loss_max": "loss max",
    "acc_mean": "acc mean",
    "acc_std": "acc std",
    "acc_min": "acc min",
    "acc_max": "acc max",
}
PLOTS = {
    "curves_loss.png": "Mean ± std loss per epoch",
    "heatmap_final_loss.png": "Mean outcome ± CI over width × learning rate",
    "heatmap_regimes.png": "Training regimes over width × learning rate",
    "curves_grad_norm.png": "Mean gradient norms per epoch",
}
# What each outcome is, for sentences.
OUTCOME_NAMES = {
    "tail_loss": "tail loss (mean loss over the last 10% of epochs)",
    "final_loss": "final loss",
    "best_loss": "best loss",
    "final_accuracy": "final accuracy",
}


def cell(v: Any) -> str:
    """NaN/None -> empty (e.g. the std of one seed); floats with 5 significant digits."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table; numbers right-aligned."""
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    align = (
        "|"
        + "|".join(
            "---:" if pd.api.types.is_numeric_dtype(frame[c]) and frame[c].dtype != bool else "---"
            for c in frame.columns
        )
        + "|"
    )
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, align, *body])


def summary_table(agg: Aggregate) -> pd.DataFrame:
    cols = [*agg.config_cols, *SUMMARY_COLUMNS]
    return agg.summary[cols].rename(columns=SUMMARY_COLUMNS)


# What the answer shows instead of its table of configurations when none finished: the
# terminal's line, and the reports' sentence.
NO_RUN_FINISHED = "no run finished: no configuration to show"
NO_RUN_FINISHED_SENTENCE = NO_RUN_FINISHED.capitalize() + "."


def no_run_finished(agg: Aggregate) -> bool:
    """Nothing to compare. (When no job logged its params either, the comparison still has
    a row: that of no configuration.)"""
    return not (agg.runs["status"] == FINISHED).any()


def terminal_table(agg: Aggregate) -> str:
    """One row per configuration: mean outcome and CI, n, verdict, regime counts."""
    if no_run_finished(agg):
        return NO_RUN_FINISHED
    table = comparison_table(agg).drop(columns=["p_adj"])
    # A column of whole numbers as such: jobs without params make the width's column float.
    for col in varying_cols(agg):
        if pd.api.types.is_float_dtype(table[col]) and table[col].dropna().map(is_whole).all():
            table[col] = table[col].astype("Int64")
    fixed = constant_text(agg)
    text = table.to_string(index=False, na_rep="")
    return "\n".join(part for part in (fixed, text, *table_notes(agg)) if part)


def _labeller(agg: Aggregate) -> Callable[[pd.Series], str]:
    """A configuration's name by the columns that vary ("all runs" when none), those found
    once for many rows."""
    cols = varying_cols(agg)
    return lambda row: leader_label(row, cols) or "all runs"


# The summary's run counts that the answer's lines and table show per configuration.
COUNTS = ("runs", "stable", "oscillating", "diverged")


def _with_counts(agg: Aggregate) -> pd.DataFrame:
    """The comparison, with each configuration's run counts (COUNTS, 0 when not known)."""
    cols = agg.config_cols
    s = agg.summary
    have = [k for k in COUNTS if k in s]
    if cols:
        c = agg.comparison.merge(s[[*cols, *have]], on=cols, how="left")
    else:
        c = agg.comparison.assign(**s.iloc[0][have])
    return c.assign(**{k: c[k].fillna(0).astype(int) if k in c else 0 for k in COUNTS})


def margin_text(agg: Aggregate) -> str:
    if agg.min_effect is None:
        return "1% of the leader's mean, the default"
    return "0: no margin" if agg.min_effect == 0 else f"{agg.min_effect:g}"


def code(text: str) -> str:
    """Text (not empty, one line) as a Markdown code span, whatever backticks it holds (a
    filter names a param as params.`optim.lr`; MLflow takes them in an experiment name):
    fenced by one backtick more than its longest run of them."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def ci_name(agg: Aggregate) -> str:
    """The comparison's intervals, together at confidence 1 - aggregate.alpha (each at 1 -
    alpha over the number of means or pairs: Bonferroni): "95% CI, Bonferroni" by default.
    Named so: each is wider than the usual 95% interval of one mean or difference, which a
    reader checking one against scipy would get; "95% CI" when there is one such mean."""
    level = f"{(1 - agg.alpha) * 100:.4g}% CI"
    return level if (agg.comparison["n"] >= 2).sum() < 2 else f"{level}, Bonferroni"


def _mean_ci(row: pd.Series) -> str:
    if not cell(row["ci_low"]):
        n = int(row["n"])
        # Every seed the same (an accuracy of 1.0): its spread of 0 bounds nothing.
        why = f"n={n}" if n < 2 else f"all {n} seeds equal"
        return f"{row['mean']:.4g} ({why}: no interval)"
    return f"{row['mean']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"


def leader_text(agg: Aggregate) -> str:
    """The sweep's answer in a few lines: the leader, what it is tied with, what is not."""
    c, label = _with_counts(agg), _labeller(agg)
    leader = c[c["leader"]].iloc[0] if c["leader"].any() else None
    what = OUTCOME_NAMES[agg.outcome]
    lines = _partial_lines(agg.selection)
    all_diverged = _all_diverged(c)
    only = c[c["note"] == ONLY_ONE]
    if leader is not None:
        lines += _leader_lines(agg, c, leader, what, label)
    elif not only.empty:  # "leader" and "tied with the leader: none" would claim a comparison
        row = only.iloc[0]
        head = (
            "one configuration"
            if len(c) == 1
            else f"one configuration with 2 or more runs with a {agg.outcome.replace('_', ' ')}"
        )
        lines.append(
            f"{head}, nothing to compare it with: {label(row)}: mean {what} {_mean_text(agg, row)}"
        )
    else:
        lines.append(
            "no leader: every run diverged"
            if all_diverged.all() and not c.empty
            else f"no leader: no configuration has 2 or more runs with a "
            f"{agg.outcome.replace('_', ' ')} (finished, not diverged), so nothing can be told "
            "from seed noise"
        )
    # Every seed diverged is the clearest answer there is, not missing data.
    no_claim = c[c["tied"].isna() & ~c["leader"] & (c["note"] != ONLY_ONE)]
    gone = c[all_diverged]
    for rows, head in (
        (gone, "every seed diverged"),
        # Without a configuration to compare with, the line above says it of every one.
        (
            no_claim.drop(gone.index, errors="ignore")
            if leader is not None or not only.empty
            else c.iloc[:0],
            "no claim (fewer than 2 seeds with an outcome)",
        ),
    ):
        if not rows.empty:
            lines.append(
                f"{head}: "
                + "; ".join(
                    f"{label(r)} ({_seeds(r)})" if r["diverged"] else label(r)
                    for _, r in rows.iterrows()
                )
            )
    if short := too_short_line(agg):
        lines.append(short)
    if worse := ended_above_start(agg):
        # Neither diverged nor oscillating, such runs counted as "stable": at chance accuracy.
        lines.append(
            "loss ended above where it started (over seeds, the mean of the last 10% of "
            "epochs against epoch 0's): "
            + "; ".join(f"{name} ({tail:.4g} against {start:.4g})" for name, tail, start in worse)
        )
    return "\n".join(lines)


def _partial_lines(sel: Selection) -> list[str]:
    """A line when the answer is about part of the sweep: an interrupted sweep's answer read
    as a whole one (the configurations it never ran are in no table)."""
    again = "the sweep's fnnlab-train command, run again, runs them"
    # Those with a failed run are in the summary; the others are in no table at all.
    missing = (
        [f"configurations with no finished run: {'; '.join(sel.not_finished)}"]
        if sel.not_finished
        else []
    )
    if sel.unfinished:
        return [
            f"incomplete: {sel.unfinished} of the sweep's {sel.jobs} jobs have no finished run "
            f"({again}); this answer is about the runs that finished",
            *missing,
        ]
    if sel.running:
        return [
            "not ended: the sweep's parent run is RUNNING (in progress, or its process was "
            "killed: the sweep's fnnlab-train command, run again, resumes it); this answer is "
            "about the runs that finished so far",
            *missing,
        ]
    return []


def _mean_text(agg: Aggregate, row: pd.Series) -> str:
    """A configuration's mean outcome, its interval and seeds (row: with its counts)."""
    seeds = f"{int(row['n'])} seeds"
    if diverged := row["diverged"]:
        seeds += f"; {diverged} more diverged and {'is' if diverged == 1 else 'are'} left out"
    if cell(row["ci_low"]):
        return f"{_mean_ci(row)} ({ci_name(agg)}, {seeds})"
    return f"{row['mean']:.4g} ({seeds}, all equal: no interval)"  # every seed gave one value


def _leader_lines(
    agg: Aggregate,
    c: pd.DataFrame,
    leader: pd.Series,
    what: str,
    label: Callable[[pd.Series], str],
) -> list[str]:
    """The leader, its ties, and what is worse or better beyond seed noise (c: the comparison
    with its counts)."""
    shared = c[[shares_lead(r, leader) for _, r in c.iterrows()]]
    lines = [
        f"leader: {label(leader)}{_shared_text(shared, label)}: mean {what} "
        f"{_mean_text(agg, leader)}"
    ]
    tied = c[c["tied"].fillna(False).astype(bool) & ~c.index.isin(shared.index)]
    if tied.empty and not shared.empty:
        lines.append("tied with the leader: none other")
    elif tied.empty:
        lines.append("tied with the leader: none")
    else:
        parts = []
        for _, r in tied.iterrows():
            # The p-value always: "below the margin" alone read as "shown to be equal".
            why = f"p_adj {p_text(r['p_adj'], agg.alpha)}"
            why += ", below the margin" if "margin" in str(r["note"]) else ""
            need = (
                f", ~{int(r['seeds_needed'])} seeds to separate it if real"
                if cell(r["seeds_needed"])
                else ""
            )
            parts.append(f"{label(r)} ({r['diff_vs_leader']:+.3g}, {why}{need}{_lost(r)})")
        lines.append("tied with the leader: " + "; ".join(parts))
    others = c[~c["leader"] & (c["tied"] == False)]  # noqa: E712 (NA: no claim)
    better = [_better(r, agg) for _, r in others.iterrows()]
    # "Beyond seed noise" is at level alpha: one other than the default is named.
    level = "" if agg.alpha == AggregateConfig.alpha else f" (adjusted p < alpha={agg.alpha:g})"
    for rows, head in (
        (others[[not b for b in better]], "worse than the leader beyond seed noise"),
        # Only a configuration that lost a larger share of its seeds, which cannot lead, can
        # be better.
        (others[better], "better than the leader beyond seed noise, but some seeds diverged"),
    ):
        if not rows.empty:
            lines.append(
                f"{head}{level}: "
                + "; ".join(
                    f"{label(r)} ({r['diff_vs_leader']:+.3g}, "
                    f"p_adj {p_text(r['p_adj'], agg.alpha)}{_lost(r)})"
                    for _, r in rows.iterrows()
                )
            )
    return lines


def shares_lead(row: pd.Series, leader: pd.Series) -> bool:
    """A configuration tied with the leader at its mean (to rounding: the same outcomes on
    other seeds gave means 1.1e-16 apart, and "tied" where the data picked no winner): the
    leader leads it only by coming first in sort order. Not one that lost a larger share of
    its runs to divergence, which the leader is chosen over (fnnlab.compare). (Rows of the
    comparison with its counts.)"""
    return bool(
        not row["leader"]
        and pd.notna(row["tied"])
        and bool(row["tied"])
        and same_mean(row["mean"], leader["mean"])
        and row["diverged"] * leader["runs"] <= leader["diverged"] * row["runs"]
    )


def _shared_text(shared: pd.DataFrame, label: Callable[[pd.Series], str]) -> str:
    """' (the lead shared with lr=10: the same mean)', or '' when no configuration shares it."""
    if shared.empty:
        return ""
    names = "; ".join(label(r) for _, r in shared.iterrows())
    return f" (the lead shared with {names}: the same mean)"


def ended_above_start(agg: Aggregate) -> list[tuple[str, float, float]]:
    """(configuration, mean tail loss, mean loss before training) of the configurations whose
    mean tail loss is above their mean loss at epoch 0, over the used runs (those of the
    curves): training made them worse. A loss that rose and stayed high passes neither the
    divergence bound nor the oscillation test."""
    c, cols = agg.curves, agg.config_cols
    if c.empty or "key" not in c:
        return []
    start = c.loc[(c["key"] == "loss") & (c["step"] == 0), [*cols, "mean"]]
    used = agg.runs[agg.runs["used"]]
    if start.empty or used.empty:
        return []
    if cols:
        tail = used.groupby(cols, dropna=False, as_index=False)["tail_loss"].mean()
        both = tail.merge(start, on=cols)
    else:
        both = pd.DataFrame(
            {"tail_loss": [used["tail_loss"].mean()], "mean": [start["mean"].iloc[0]]}
        )
    both = both[both["tail_loss"] > both["mean"]]
    label = _labeller(agg)
    return [(label(r), r["tail_loss"], r["mean"]) for _, r in both.iterrows()]


def too_short(agg: Aggregate) -> pd.DataFrame:
    """The finished runs that neither diverged nor ran `regime.min_epochs` epochs, with their
    min_epochs: their regime is "stable" by definition, not judged."""
    runs = agg.runs
    min_epochs = pd.Series(
        {r.info.run_id: r.data.params.get("regime.min_epochs", "4") for r in agg.selection.runs},
        dtype=object,
    )
    # A param changed in the store to text judges nothing (NaN), as a missing epochs_run.
    runs = runs.assign(min_epochs=pd.to_numeric(runs["run_id"].map(min_epochs), errors="coerce"))
    return runs[
        (runs["status"] == FINISHED) & ~runs["diverged"] & (runs["epochs_run"] < runs["min_epochs"])
    ]


def _epochs_words(short: pd.DataFrame) -> str:
    """'3 epochs, fewer than regime.min_epochs=4', of the runs too short to judge."""
    ran = ", ".join(f"{v:g}" for v in sorted(short["epochs_run"].unique()))
    least = ", ".join(f"{v:g}" for v in sorted(short["min_epochs"].unique()))
    return f"{ran} {'epoch' if ran == '1' else 'epochs'}, fewer than regime.min_epochs={least}"


def too_short_line(agg: Aggregate) -> str:
    """A line when some runs were too short for their regime to be judged: they count as
    stable, which the boundary would otherwise report as "none up to" their rates."""
    short = too_short(agg)
    if short.empty:
        return ""
    line = (
        f"too short to judge: {len(short)} {'run' if len(short) == 1 else 'runs'} of "
        f"{_epochs_words(short)}, count as stable: neither oscillation nor a divergence "
        "after their last epoch can be seen in them"
    )
    if (short["epochs_run"] == 1).any():
        # The loss of epoch e is taken before that epoch's update, as in the tutorial.
        line += "; a run of 1 epoch's outcome is its loss before any update"
    return line


def _all_diverged(c: pd.DataFrame) -> pd.Series:
    """Per row of the comparison with its counts: every run of the configuration diverged."""
    return (c["diverged"] > 0) & (c["diverged"] == c["runs"])


def _lost(row: pd.Series) -> str:
    """'; k more seeds diverged' after a configuration's numbers (a row of the comparison
    with its counts), when some did: its mean is over the others only."""
    k = row["diverged"]
    return f"; {k} more {'seed' if k == 1 else 'seeds'} diverged" if k else ""


def _seeds(row: pd.Series) -> str:
    """'3 diverged', or '1 seed, 2 diverged': of a configuration without a claim."""
    n, k = int(row["n"]), row["diverged"]
    return f"{k} diverged" if n == 0 else f"{n} {'seed' if n == 1 else 'seeds'}, {k} diverged"


def verdict(row: pd.Series, agg: Aggregate, leader: pd.Series | None) -> str:
    """A row of the comparison with its counts (_with_counts), and the leader's such row."""
    if row["leader"]:
        return "leader"
    if leader is not None and shares_lead(row, leader):
        return "shares lead"
    if row["note"] == ONLY_ONE:
        return "only one"
    if pd.isna(row["tied"]):
        return "all diverged" if 0 < row["diverged"] == row["runs"] else "no claim"
    if row["tied"]:
        return "tied" + MARGIN_MARK if margin_only(row, agg) else "tied"
    word = "better" if _better(row, agg) else "worse"
    return word + HOLM_MARK if holm_only(row) else word


# Verdicts whose interval seems to say otherwise: a difference found while its interval
# holds 0 (holm_only), a tie beyond seed noise (margin_only); table_notes says why.
HOLM_MARK, MARGIN_MARK = " (Holm)", " (margin)"


def p_text(p: float, alpha: float) -> str:
    """An adjusted p in 2 significant digits, more where 2 would round it to alpha or across
    it (0.0497 is not "0.05" beside "p_adj < 0.05")."""
    for digits in range(2, 18):  # 17 digits give a float back exactly
        text = f"{p:.{digits}g}"
        shown = float(text)
        if (shown < alpha, shown == alpha) == (p < alpha, p == alpha):
            break
    return text


def margin_only(row: pd.Series, agg: Aggregate) -> bool:
    """A tie only by the margin (aggregate.min_effect): the test finds the difference (its
    interval may leave 0 out), which is too small to count. A tie is p_adj at or above
    alpha or a difference below the margin (fnnlab.compare), so with p_adj below alpha it is
    the margin's."""
    return bool(
        pd.notna(row["tied"]) and row["tied"] and not row["leader"] and row["p_adj"] < agg.alpha
    )


def holm_only(row: pd.Series) -> bool:
    """A difference beyond seed noise by Holm's adjustment whose interval still holds 0:
    Holm's step-down test takes the i-th smallest of m p-values at alpha / (m - i + 1), the
    interval is at alpha / m (Bonferroni) for every pair, so the two can disagree this way
    (never the other)."""
    return bool(
        pd.notna(row["tied"])
        and not row["tied"]
        and not row["leader"]
        and cell(row["diff_ci_low"])
        and row["diff_ci_low"] <= 0 <= row["diff_ci_high"]
    )


def table_notes(agg: Aggregate, grid: bool = False) -> list[str]:
    """The lines under a table of verdicts that explain its marked ones (HOLM_MARK,
    MARGIN_MARK), those it has; under the width x learning-rate grid (comparison_grid),
    which names ties but no "worse" or "better", the margin's only."""
    if no_run_finished(agg):
        return []
    rows = [r for _, r in agg.comparison.iterrows()]
    notes = []
    if not grid and any(holm_only(r) for r in rows):
        notes.append(
            f"{HOLM_MARK.strip()}: beyond seed noise by Holm's adjustment (p_adj < "
            f"{agg.alpha:g}), while the difference's interval, at the stricter level of "
            "Bonferroni's adjustment over every pair, holds 0"
        )
    if any(margin_only(r, agg) for r in rows):
        notes.append(
            f"{MARGIN_MARK.strip()}: beyond seed noise (p_adj < {agg.alpha:g}), but the "
            f"difference is below the margin aggregate.min_effect ({margin_text(agg)}), "
            "too small to count"
        )
    return notes


def _better(row: pd.Series, agg: Aggregate) -> bool:
    """The configuration's mean outcome is better than the leader's: higher for an accuracy,
    lower for a loss."""
    diff = row["diff_vs_leader"]
    return bool(diff > 0 if agg.outcome in HIGHER_IS_BETTER else diff < 0)


def comparison_table(agg: Aggregate) -> pd.DataFrame:
    """What a person reads of comparison.csv: per configuration, mean ± CI, the difference
    with the leader, the verdict, and the regime counts (the full numbers stay in the CSVs)."""
    c = _with_counts(agg)
    leader = c[c["leader"]].iloc[0] if c["leader"].any() else None
    # Both adjusted over every pair: the intervals by Bonferroni, the verdicts by Holm, which
    # finds every difference an interval shows, and may find one whose interval holds 0.
    mean, vs = f"mean {agg.outcome} [{ci_name(agg)}]", f"vs leader [{ci_name(agg)}]"
    varying = varying_cols(agg)
    columns = [*varying, "n", mean, vs, "p_adj", "verdict", "seeds needed"]
    rows = []
    for _, r in c.iterrows():
        diff = ""
        if cell(r["diff_ci_low"]):
            diff = f"{r['diff_vs_leader']:+.3g} [{r['diff_ci_low']:+.3g}, {r['diff_ci_high']:+.3g}]"
        elif r["test"] == "permutation":
            diff = f"{r['diff_vs_leader']:+.3g} (exact test: no interval)"
        rows.append(
            {
                **{k: r[k] for k in varying},
                "n": int(r["n"]),
                mean: _mean_ci(r) if int(r["n"]) else "",
                vs: diff,
                "p_adj": p_text(r["p_adj"], agg.alpha) if cell(r["p_adj"]) else "",
                "verdict": verdict(r, agg, leader),
                "seeds needed": int(r["seeds_needed"]) if cell(r["seeds_needed"]) else "",
                "stable/osc./div.": "/".join(
                    str(int(r[k])) for k in ("stable", "oscillating", "diverged")
                ),
            }
        )
    # No row when no run finished: the columns still.
    return pd.DataFrame(rows, columns=[*columns, "stable/osc./div."])


def varying_cols(agg: Aggregate) -> list[str]:
    """The configuration columns that differ between configurations (the others are shown
    once), or all of them when none does: what names a configuration."""
    return differing_cols(agg) or agg.config_cols


def differing_cols(agg: Aggregate) -> list[str]:
    """The configuration columns that differ between configurations. The row of jobs that
    logged no params (failed or killed before, or running) is not a configuration: its empty
    values vary nothing."""
    s = agg.summary
    if agg.config_cols:
        s = s[s[agg.config_cols].notna().any(axis=1)]
    return [c for c in agg.config_cols if s[c].nunique(dropna=False) > 1]


def constant_text(agg: Aggregate) -> str:
    fixed = [c for c in agg.config_cols if c not in varying_cols(agg)]
    # Not from the row of jobs without params, whichever comes first.
    values = {c: v.iloc[0] for c in fixed if not (v := agg.summary[c].dropna()).empty}
    return leader_label(values, list(values))


def stability_cols(agg: Aggregate) -> list[str]:
    """What the stability boundary is given per: the width, and whatever else varies but the
    learning rate (a backprop mode has its own boundary)."""
    return ["hidden_dim", *(c for c in differing_cols(agg) if c not in ("hidden_dim", "lr"))]


def stability_per(agg: Aggregate) -> str:
    """'width', or the columns the boundary is given per: 'hidden_dim, backprop'; and, when
    the runs have one learning rate, that one: no boundary in it can be seen."""
    cols = stability_cols(agg)
    per = "width" if cols == ["hidden_dim"] else ", ".join(cols)
    rates = agg.summary["lr"].dropna().unique() if "lr" in agg.summary else []
    return f"{per}; only {_lr(rates[0])} was run" if len(rates) == 1 else per


def _lr(value: float) -> str:
    """'lr=...' as the answer names a configuration's rate (lr=1000000, not lr=1e+06)."""
    return leader_label({"lr": value}, ["lr"])


def stability_text(agg: Aggregate) -> pd.DataFrame | None:
    """The stability bracket per width (and mode, ...), as text."""
    if agg.stability is None:
        return None

    def bracket(good: float, bad: float) -> str:
        if not cell(bad):
            return f"none up to {_lr(good)}"
        if not cell(good):
            return f"already at {_lr(bad)} (the smallest swept)"
        return f"between {_lr(good)} and {_lr(bad)}"

    st = agg.stability
    groups = boundary_groups(agg.config_cols)
    short = too_short(agg)
    words = pd.DataFrame(
        [
            {**dict(zip(groups, key, strict=True)), "_words": _epochs_words(sub)}
            for key, sub in short.groupby(groups, dropna=False)
        ],
        columns=[*groups, "_words"],
    )
    # Per boundary row: the words of its runs too short to judge, or NaN.
    flagged = st[groups].merge(words, on=groups, how="left")["_words"]

    def judged(good: float, bad: float, short_words: Any) -> str:
        if not isinstance(short_words, str):
            return bracket(good, bad)
        # Short runs at smaller rates may still go bad later: only the first bad rate seen
        # bounds it.
        if cell(bad):
            return f"at or below {_lr(bad)} (not judged below it: runs of {short_words})"
        return f"not judged: runs of {short_words}"

    return pd.DataFrame(
        {
            **{c: st[c] for c in stability_cols(agg)},
            "divergence sets in": [
                judged(g, b, w)
                for g, b, w in zip(st["stable_lr_max"], st["diverges_at_lr"], flagged, strict=True)
            ],
            "oscillation or divergence sets in": [
                judged(g, b, w)
                for g, b, w in zip(
                    st["no_oscillation_lr_max"], st["oscillates_at_lr"], flagged, strict=True
                )
            ],
        }
    )


def stability_lines(agg: Aggregate) -> list[str]:
    """The stability boundary in the terminal's answer: a heading, then a line per width (and
    mode, ...)."""
    stab = stability_text(agg)
    if stab is None:
        return []
    return [f"stability boundary (learning rates, per {stability_per(agg)}):"] + [
        f"  {leader_label(r, stability_cols(agg))}: divergence {r['divergence sets in']}; "
        f"oscillation or divergence {r['oscillation or divergence sets in']}"
        for _, r in stab.iterrows()
    ]


def reference_table(agg: Aggregate) -> pd.DataFrame | None:
    """Published tutorial losses next to each configuration's mean curve, for reference runs."""
    if not any(r.data.params.get("reference") == "True" for r in agg.selection.runs):
        return None
    published = reference.published_losses()
    loss = agg.curves[(agg.curves["key"] == "loss") & agg.curves["step"].isin(list(published))]
    # Name configurations by what differs between them; 7 decimals: agreement is ~1e-7.
    varying = [c for c in agg.config_cols if agg.summary[c].nunique() > 1] or agg.config_cols
    table = pd.DataFrame(
        {"epoch": list(published), "published": [f"{v:.7f}" for v in published.values()]}
    )
    for keys, sub in loss.groupby(varying, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        name = " ".join(f"{c}={cell(v)}" for c, v in zip(varying, keys, strict=True))
        ours = table["epoch"].map(sub.groupby("step")["mean"].first())
        table[name] = [f"{v:.7f}" for v in ours]
        table[f"{name} − published"] = [
            f"{o - p:+.1e}" for o, p in zip(ours, published.values(), strict=True)
        ]
    return table


def grid_table(agg: Aggregate, rows: str = "hidden_dim", cols: str = "lr") -> pd.DataFrame | None:
    """Mean final loss ± 95% CI over width x learning rate, the heatmap as text."""
    s = agg.summary
    if rows not in s or cols not in s or (s[rows].nunique() < 2 and s[cols].nunique() < 2):
        return None
    others = [c for c in agg.config_cols if c not in (rows, cols) and s[c].nunique() > 1]

    def text(r: pd.Series) -> str:
        if r["used"] == 0:
            return "no usable run"
        ci = f" ± {r['loss_ci95']:.3f}" if cell(r["loss_ci95"]) else ""
        bad = int(r["diverged"] + r["failed"])
        return f"{r['loss_mean']:.3f}{ci}" + (
            f" ({bad} of {int(r['runs'])} left out)" if bad else ""
        )

    grid = s.assign(cell=s.apply(text, axis=1)).pivot_table(
        index=[*others, rows], columns=cols, values="cell", aggfunc="first"
    )
    grid.columns = [f"{cols}={cell(c)}" for c in grid.columns]
    return grid.reset_index()


def comparison_grid(
    agg: Aggregate, rows: str = "hidden_dim", cols: str = "lr"
) -> pd.DataFrame | None:
    """The comparison over width x learning rate, one cell per configuration: mean outcome
    [CI], n, the verdict against the leader and the oscillating/diverged counts."""
    if not {rows, cols} <= set(varying_cols(agg)):
        return None
    others = [c for c in varying_cols(agg) if c not in (rows, cols)]
    counts = agg.summary[[*agg.config_cols, "runs", "oscillating", "diverged"]]
    c = agg.comparison.merge(counts, on=agg.config_cols, how="left")
    if c.empty:  # no run finished
        return None
    leader = c[c["leader"]].iloc[0] if c["leader"].any() else None

    def text(r: pd.Series) -> str:
        n = int(r["n"])
        # Below 2 seeds _mean_ci says "n=1: no interval" itself.
        parts = [_mean_ci(r), f"n={n}"] if n > 1 else [_mean_ci(r)] if n else ["no outcome", "n=0"]
        if r["leader"]:
            parts.append("**leader**")
        elif leader is not None and shares_lead(r, leader):
            parts.append("shares lead")
        elif pd.notna(r["tied"]) and r["tied"]:
            parts.append("tied" + MARGIN_MARK if margin_only(r, agg) else "tied")
        for key, short in (("oscillating", "osc."), ("diverged", "div.")):
            if r[key]:
                parts.append(f"{int(r[key])} {short}")
        return ", ".join(parts)

    grid = c.assign(cell=c.apply(text, axis=1)).pivot_table(
        index=[*others, rows], columns=cols, values="cell", aggfunc="first"
    )
    grid.columns = [f"{cols}={cell(v)}" for v in grid.columns]
    return grid.reset_index().fillna("")


def run_refs(agg: Aggregate) -> list[links.RunRef]:
    """The sweep's finished runs, for the comparison links."""
    done = agg.runs[agg.runs["status"] == FINISHED]
    width = done["hidden_dim"] if "hidden_dim" in done else pd.Series("", index=done.index)
    return [
        links.RunRef(r, n, cell(w), bool(d))
        for r, n, w, d in zip(
            done["run_id"], done["run_name"], width, done["diverged"], strict=True
        )
    ]


def sweep_views(agg: Aggregate, base: str, logged: bool = True) -> list[tuple[str, str]]:
    sel = agg.selection
    if sel.parent_run_id is None:
        return []
    return links.sweep_views(base, sel.experiment_id, sel.parent_run_id, run_refs(agg), logged)


def answer_text(agg: Aggregate, views: list[tuple[str, str]]) -> str:
    """What the terminal shows at the end of a sweep and from fnnlab-aggregate: the table,
    the leader and its ties, the stability boundary, and where to look next."""
    lines = [terminal_table(agg), leader_text(agg), *stability_lines(agg)]
    diverged = [r.name for r in run_refs(agg) if r.diverged]
    if views:
        width = max(len(label) for label, _ in views) + 1
        lines += [f"{label + ':':<{width}} {url}" for label, url in views]
        if diverged:
            lines.append(f"diverged, left out of the curve links: {', '.join(diverged)}")
        lines.append(links.group_hint(r.data.params for r in agg.selection.runs))
    return "\n".join(lines)


# log_values keeps at most this many characters of a tag value, the description included:
# a longer one would lose its end, cut mid-link, not give way as description() does.
MAX_DESCRIPTION = MAX_TAG_VALUE
# An earlier answer's files named on the description, at most; then how many more.
SHOWN_EARLIER = 6


def description(
    agg: Aggregate, views: list[tuple[str, str]], overrides: str = "", earlier: Sequence[str] = ()
) -> str:
    """The parent run's description (MLflow renders it as Markdown on the run's Overview):
    the answer, the width x learning-rate table, the stability boundary, the links, and the
    files under aggregate/ that are an earlier answer's (`earlier`: MLflow cannot delete
    them, and a figure there would pass for this answer's). Within what log_values keeps of a
    tag: the links (which name every run) give way to one to the report, then the tables,
    then the end of the answer's lines; the sweep's line and the earlier files stay."""
    answer = leader_text(agg).splitlines()
    head = ["### " + answer[0], "", *[f"- {line}" for line in answer[1:]]]
    if no_run_finished(agg):
        tables = ["", NO_RUN_FINISHED_SENTENCE]
    else:
        fixed = constant_text(agg)
        grid = comparison_grid(agg)
        table = grid if grid is not None else comparison_table(agg).drop(columns=["p_adj"])
        tables = [
            "",
            (f"Same in every run: {code(fixed)}. " if fixed else "")
            + f"Mean {agg.outcome} [{ci_name(agg)}] over seeds:",
            "",
            markdown_table(table),
        ]
        for note in table_notes(agg, grid is not None):
            tables += ["", note]
    stab = stability_text(agg)
    if stab is not None:
        tables += [
            "",
            f"**Stability boundary** (learning rates, per {stability_per(agg)})",
            "",
            markdown_table(stab),
        ]
    shown = [(label, url) for label, url in views if label != "parent run"]
    link_line = ["", " · ".join(f"[{label}]({url})" for label, url in shown)]
    report = [(label, url) for label, url in shown if label == "report"]
    short = (
        [
            "",
            "More: "
            + " · ".join(f"[{label}]({url})" for label, url in report)
            + " (fnnlab-ui prints every link)",
        ]
        if report
        else []
    )
    sweep = [
        "",
        f"Sweep over {code(overrides or '(no overrides)')}: each child run is one job; running "
        "the same command again resumes it.",
    ]
    stale = []
    if earlier:
        names = ", ".join(f"`aggregate/{name}`" for name in earlier[:SHOWN_EARLIER])
        more = len(earlier) - SHOWN_EARLIER
        names += f" and {more} more" if more > 0 else ""
        stale = ["", f"Not of this answer: {names} (an earlier answer's; MLflow keeps them)."]
    if agg.selection.filter:
        # A filtered aggregation replaces the sweep's answer: say it is about a subset.
        head = [
            f"Only the runs matching {code(agg.selection.filter)} (aggregate.filter).",
            "",
            *head,
        ]
    for parts in (
        (head, tables, link_line, sweep, stale),
        (head, tables, short, sweep, stale),
    ):
        text = _joined(*parts)
        if len(text) <= MAX_DESCRIPTION:
            return text
    # Last, the end of the answer's lines (its tied line lists every tied configuration).
    tail = _joined(short, sweep, stale)
    room = MAX_DESCRIPTION - len(tail) - 2
    text = _joined(head)
    if len(text) <= room:
        return text + tail
    if room <= 0:  # a filter or overrides of thousands of characters
        return (text + tail)[: MAX_DESCRIPTION - 2] + "…\n"
    # After the last whole configuration ("lr=0.1 (+0.01, p_adj 1); ") or line.
    cut = text[:room]
    entry = cut.rfind("; ")
    end = max(entry + 2 if entry >= 0 else 0, cut.rfind("\n") + 1)
    return cut[:end] + "…\n" + tail


def _joined(*parts: list[str]) -> str:
    return "\n".join(line for part in parts for line in part) + "\n"


def html_report(agg: Aggregate, out: Path, plot_files: list[str]) -> str:
    """report.html: what report.md says, with its plots inline, for MLflow's artifact viewer
    (which shows HTML but not a Markdown file's images)."""

    def table(frame: pd.DataFrame) -> str:
        return frame.map(cell).to_html(index=False, escape=True, border=0)

    sel = agg.selection
    title = f"{sel.experiment}: sweep {sel.sweep_id or '(selection)'}"
    only = (
        [
            f"<p>Only the runs matching <code>{html.escape(sel.filter)}</code> (aggregate.filter): "
            "not the whole sweep.</p>"
        ]
        if sel.filter
        else []
    )
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        *only,
        "<h2>The answer</h2><ul>",
        *[f"<li>{html.escape(line)}</li>" for line in leader_text(agg).splitlines()],
        "</ul>",
    ]
    fixed = constant_text(agg)
    if fixed:
        parts.append(f"<p>Same in every run: <code>{html.escape(fixed)}</code></p>")
    parts.append(
        f"<p>{NO_RUN_FINISHED_SENTENCE}</p>"
        if no_run_finished(agg)
        else table(comparison_table(agg))
    )
    parts += [f"<p>{html.escape(note)}</p>" for note in table_notes(agg)]
    stab = stability_text(agg)
    if stab is not None:
        parts += [f"<h2>Stability boundary per {stability_per(agg)}</h2>", table(stab)]
    for name in plot_files:
        data = base64.b64encode((out / name).read_bytes()).decode()
        parts += [
            f"<h2>{html.escape(PLOTS[name])}</h2>",
            f'<img alt="{html.escape(PLOTS[name])}" src="data:image/png;base64,{data}" '
            'style="max-width:100%">',
        ]
    parts.append(
        f"<p>Every number per run and per configuration: {', '.join(TABLES)} beside this file.</p>"
    )
    style = (
        "body{font-family:sans-serif;margin:1.5em;max-width:1100px}"
        "table{border-collapse:collapse;font-size:13px}"
        "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def run_counts(agg: Aggregate) -> str:
    """'12 runs: 10 finished (2 of them diverged), ...': report.md's count of the runs."""
    sel, runs = agg.selection, agg.runs
    counts = runs["status"].value_counts()
    return (
        f"{len(runs)} runs: {counts.get('FINISHED', 0)} finished "
        f"({int(runs['diverged'].sum())} of them diverged), "
        f"{sum(counts.get(s, 0) for s in UNFINISHED)} failed or killed, "
        f"{counts.get('RUNNING', 0)} still running"
        # Jobs that never made a run are in no count above.
        + (
            f"; {sel.unfinished} of the sweep's {sel.jobs} jobs have no finished run"
            if sel.unfinished
            else ""
        )
        + (f"; {sel.superseded} earlier attempts superseded by reruns" if sel.superseded else "")
        + (
            f"; {sel.reused} of them made outside this sweep (same configuration) and reused here"
            if sel.reused
            else ""
        )
    )


def markdown_report(agg: Aggregate, plot_files: list[str]) -> str:
    sel, runs = agg.selection, agg.runs
    source = (
        f"sweep `{sel.sweep_id}` (parent run `{sel.parent_run_id}`)"
        if sel.parent_run_id
        else "runs selected without a sweep"
    )
    lines = [
        f"# Sweep summary: experiment {code(sel.experiment)}",
        "",
        f"Source: {source}, tracking URI {code(sel.uri)}.",
        "",
        *(
            [
                f"Only the runs matching {code(sel.filter)} (aggregate.filter): "
                "not the whole sweep.",
                "",
            ]
            if sel.filter
            else []
        ),
        run_counts(agg)
        + ". Loss and accuracy statistics use finished, non-diverged runs only (`used`); "
        "std and the 95% confidence interval of the mean (t distribution) "
        "are empty below two runs.",
        "",
        "## The answer",
        "",
        *[f"- {line}" for line in leader_text(agg).splitlines()],
        "",
        f"Outcome: the {OUTCOME_NAMES[agg.outcome]} of each finished, non-diverged run "
        "(`aggregate.outcome`). Each configuration is compared with the leader over seeds: a "
        "paired t-test when both have the same seeds, Welch's otherwise; when one of them has "
        "no spread, a permutation test (against a group with spread, the larger of its p "
        "and Welch's; exact on values on a grid, such as an accuracy's, when the constant lies "
        "beyond the other's values, or up to 10,000 splits (7 seeds each, or 3 against 37), "
        "else from 10,000 splits drawn, p at least 2/10,001, which a note says when Holm's "
        "adjustment then allows no claim), "
        "Holm-adjusted over every pair of configurations (the leader is chosen from the data). "
        "Tied: adjusted p "
        f"at or above `aggregate.alpha` ({agg.alpha:g}), or a difference below the margin "
        f"`aggregate.min_effect` ({margin_text(agg)}). The interval of a configuration's "
        "mean is at 1 - alpha over the number of configurations, and that of a difference "
        "with the leader at 1 - alpha over the number of pairs (Bonferroni), so that together "
        "they hold every mean, and every pair's difference, at 1 - alpha: the leader's too, "
        "which the data chose. `seeds needed`: seeds per "
        "configuration for 80% power at the observed difference and spread, at alpha over "
        "the number of pairs, if that difference were the true one.",
        "",
        f"Same in every configuration: {constant_text(agg) or '(nothing)'}.",
        "",
        NO_RUN_FINISHED_SENTENCE if no_run_finished(agg) else markdown_table(comparison_table(agg)),
    ]
    for note in table_notes(agg):
        lines += ["", note]
    stab = stability_text(agg)
    if stab is not None:
        lines += [
            "",
            f"## Stability boundary per {stability_per(agg)}",
            "",
            "Scanning the swept learning rates upward: the last one at which every seed stayed "
            "non-diverged (non-oscillating) and the first at which one did not.",
            "",
            markdown_table(stab),
        ]
    lines += [
        "",
        "## Per configuration, over seeds (final epoch)",
        "",
        markdown_table(summary_table(agg)),
    ]
    if agg.config_cols and agg.summary[agg.config_cols].isna().all(axis=1).any():
        lines += [
            "",
            "The row with an empty configuration counts jobs that failed, were killed or "
            "were still running before they logged their parameters.",
        ]
    grid = grid_table(agg)
    if grid is not None:
        lines += [
            "",
            "## Mean final loss ± 95% CI, width × learning rate",
            "",
            "Left out: diverged or failed runs, not in the mean.",
            "",
            markdown_table(grid),
        ]
    ref = reference_table(agg)
    if ref is not None:
        lines += [
            "",
            "## Published tutorial losses and ours (mean over used runs)",
            "",
            markdown_table(ref),
        ]
    bad = runs[~runs["used"]]
    if not bad.empty:
        cols = ["run_name", *agg.config_cols, "seed", "status", "diverged_at", "error"]
        lines += [
            "",
            "## Runs left out of the statistics",
            "",
            markdown_table(bad[[c for c in cols if c in bad]].head(100)),
        ]
    if plot_files:
        lines += ["", "## Plots", ""]
        lines += [f"![{PLOTS[f]}]({f})" for f in plot_files]
    return "\n".join(lines) + "\n"


def write_plots(agg: Aggregate, out: Path) -> list[str]:
    """The plots that apply: none without curves, no heatmap without width and lr."""
    if agg.curves.empty:
        return []
    title = f"{agg.selection.experiment}: {agg.selection.sweep_id or 'selection'}"
    cols = agg.config_cols
    published = reference.published_losses() if reference_table(agg) is not None else None
    plots.sweep_curves_plot(
        agg.curves,
        out / "curves_loss.png",
        cols,
        {"loss": "-"},
        "mean cross-entropy",
        f"{title} loss (mean ± std over seeds)",
        published=published,
    )
    written = ["curves_loss.png"]
    if {"hidden_dim", "lr"} <= set(cols):
        plots.sweep_heatmap(
            # The comparison's mean outcome per configuration; the summary's diverged and
            # oscillating counts mark cells. The file keeps its name for existing links.
            agg.comparison,
            out / "heatmap_final_loss.png",
            cols,
            f"{title} mean {agg.outcome} (± CI half-width)",
            counts=agg.summary,
            outcome=agg.outcome,
        )
        written.append("heatmap_final_loss.png")
    if agg.regimes is not None:
        pooled = [c for c in stability_cols(agg) if c != "hidden_dim"]
        over = f" (pooled over {', '.join(pooled)})" if pooled else ""
        plots.regime_heatmap(agg.regimes, out / "heatmap_regimes.png", f"{title} regimes{over}")
        written.append("heatmap_regimes.png")
    plots.sweep_curves_plot(
        agg.curves,
        out / "curves_grad_norm.png",
        cols,
        {"grad_norm/w1": "-", "grad_norm/w2": "--"},
        "gradient L2 norm",
        f"{title} gradient norms (mean over seeds)",
        logy=True,
        band=False,  # a ± std band spans decades on a log axis and hides the means
    )
    return [*written, "curves_grad_norm.png"]


# The answer's tables, and the files every answer writes (fnnlab.replay checks that the
# answer's tag of its files' hashes lists them).
TABLES = ("runs.csv", "summary.csv", "comparison.csv", "curves.csv", "stability.csv")
REPORTS = ("report.md", "report.html")


def tables(agg: Aggregate) -> dict[str, pd.DataFrame]:
    """The answer's tables by file name (fnnlab.replay makes them again and compares). Always
    the same files: an earlier answer's cannot be deleted from the parent run, so a table
    with nothing to say (no stability boundary when no run finished) is its header alone."""
    no_boundary = pd.DataFrame(columns=[*boundary_groups(agg.config_cols), *BOUNDARY_COLUMNS])
    stability = no_boundary if agg.stability is None else agg.stability
    frames = (agg.runs, agg.summary, agg.comparison, agg.curves, stability)
    return dict(zip(TABLES, frames, strict=True))


def write_outputs(agg: Aggregate, out: Path, with_plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    names = tables(agg)
    for name, frame in names.items():
        frame.to_csv(out / name, index=False)
    plot_files = write_plots(agg, out) if with_plots else []
    markdown, html = REPORTS
    (out / markdown).write_text(markdown_report(agg, plot_files))
    (out / html).write_text(html_report(agg, out, plot_files))
    return [out / n for n in (*names, *REPORTS, *plot_files)]


def _rounded(value: float) -> float:
    """4 significant digits: what a summary metric on the Overview needs."""
    return float(f"{value:.4g}")


def log_to_parent(agg: Aggregate, files: list[Path], views: list[tuple[str, str]]) -> None:
    """Report, tables and plots under aggregate/ on the parent, parent_values, the answer
    as the run's description, what made it (aggregate.env.*) and the hash of every file it
    wrote (aggregate.files) and of the description (aggregate.note_sha256)."""
    sel = agg.selection
    if sel.parent_run_id is None:
        return
    store = Store(client=sel.client, experiment_id=sel.experiment_id, uri=sel.uri)
    written = {f.name for f in files}
    stored = sel.client.list_artifacts(sel.parent_run_id, "aggregate")
    # A folder there (logged by hand or by another tool): its name and a slash.
    earlier = sorted(
        Path(a.path).name + ("/" if a.is_dir else "")
        for a in stored
        if Path(a.path).name not in written
    )
    # The files written, not the whole folder: it may hold other things (even the store).
    for f in files:
        sel.client.log_artifact(sel.parent_run_id, str(f), artifact_path="aggregate")
    metrics, tags = parent_values(agg)
    overrides = sel.client.get_run(sel.parent_run_id).data.tags.get(Tag.SWEEP_OVERRIDES, "")
    tags[Tag.NOTE] = description(agg, views, overrides, earlier)
    tags |= provenance.answer_env_tags()  # what made it, for fnnlab-replay
    tags[provenance.FILES_TAG] = provenance.files_digest({f.name: f.read_bytes() for f in files})
    # As log_values stores it: MLflow's UI shows the description, which no file holds.
    tags[provenance.NOTE_TAG] = provenance.file_hash(tags[Tag.NOTE][:MAX_TAG_VALUE].encode())
    log_values(store, sel.parent_run_id, summary=metrics, tags=tags)


def co_leaders(agg: Aggregate) -> list[pd.Series]:
    """The leader, then the configurations that share its lead (shares_lead)."""
    c = _with_counts(agg)
    leader = c[c["leader"]].iloc[0]
    return [leader, *(r for _, r in c.iterrows() if shares_lead(r, leader))]


def parent_values(agg: Aggregate) -> tuple[dict[str, float], dict[str, str]]:
    """The answer's metrics and tags on the parent run: counts of runs, the leader's mean
    outcome and interval, the leader and its ties (aggregate.leader, aggregate.tied), and the
    options it was made with (outcome, filter, alpha, min_effect)."""
    sel = agg.selection
    runs = agg.runs
    metrics = {
        "aggregate/runs": len(runs),
        "aggregate/used": int(runs["used"].sum()),
        "aggregate/failed": int(runs["status"].isin(UNFINISHED).sum()),
        "aggregate/diverged": int(runs["diverged"].sum()),
        "aggregate/running": int((runs["status"] == RUNNING).sum()),
        "aggregate/oscillating": int((runs["regime"] == "oscillating").sum()),
    }
    leader, label = agg.leader, _labeller(agg)
    leaders = [] if leader is None else co_leaders(agg)
    shared = {r.name for r in leaders}  # rows of the comparison (_with_counts keeps them)
    tags = {
        # With configurations of exactly its mean, all of them: which comes first is no answer.
        "aggregate.leader": "; ".join(label(r) for r in leaders),
        # As the answer's line: not those that share the lead (helper-68).
        "aggregate.tied": "; ".join(label(r) for i, r in agg.tied.iterrows() if i not in shared),
        "aggregate.outcome": agg.outcome,
        "aggregate.filter": sel.filter or "",
        "aggregate.alpha": repr(agg.alpha),
        "aggregate.min_effect": "null" if agg.min_effect is None else repr(agg.min_effect),
    }
    # Metrics cannot be deleted: without a leader (or its interval) they become NaN rather
    # than keep an earlier answer's values.
    nan = math.nan
    metrics |= {
        "aggregate/leader_mean": nan if leader is None else leader["mean"],
        "aggregate/leader_n": nan if leader is None else leader["n"],
        "aggregate/leader_ci_low": nan if leader is None else leader["ci_low"],
        "aggregate/leader_ci_high": nan if leader is None else leader["ci_high"],
    }
    return {k: _rounded(v) for k, v in metrics.items()}, tags


def publish(
    agg: Aggregate, out: Path, base: str, with_plots: bool = True, log: bool = True
) -> tuple[list[Path], str]:
    """Files in `out`, logged with the answer onto the parent run (when `log`); returns the
    files and the answer as text. The one path of fnnlab-aggregate and a sweep's end."""
    files = write_outputs(agg, out, with_plots)
    views = sweep_views(agg, base, logged=log)
    if log:
        log_to_parent(agg, files, views)
    return files, answer_text(agg, views)
