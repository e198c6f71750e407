"""An Aggregate -> files (CSV, Markdown, PNG) and back onto the sweep's parent run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from fnnlab import plots, reference
from fnnlab.aggregate import Aggregate
from fnnlab.names import UNFINISHED
from fnnlab.tracking import Store, log_values

# Summary columns as a person reads them.
SUMMARY_COLUMNS = {
    "runs": "runs",
    "used": "used",
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
    "heatmap_final_loss.png": "Mean final loss over width × learning rate",
    "curves_grad_norm.png": "Mean gradient norms per epoch",
}


def cell(v: Any) -> str:
    """NaN/None -> empty (e.g. the std of one seed); floats with 5 significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
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


def terminal_table(agg: Aggregate) -> str:
    table = summary_table(agg).drop(columns=["acc std", "acc min", "acc max"])
    return table.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.5g}")


def best_text(agg: Aggregate) -> str:
    if not agg.best:
        return "no configuration has a finished, non-diverged run"
    b = agg.best
    config = " ".join(f"{c}={cell(b[c])}" for c in agg.config_cols)
    spread = f" ± {cell(b['loss_std'])} (std)" if cell(b["loss_std"]) else " (one run: no std)"
    return f"{config}: mean final loss {cell(b['loss_mean'])}{spread} over {b['used']} runs"


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


def markdown_report(agg: Aggregate, plot_files: list[str]) -> str:
    sel, runs = agg.selection, agg.runs
    counts = runs["status"].value_counts()
    source = (
        f"sweep `{sel.sweep_id}` (parent run `{sel.parent_run_id}`)"
        if sel.parent_run_id
        else "runs selected without a sweep"
    )
    lines = [
        f"# Sweep summary: experiment `{sel.experiment}`",
        "",
        f"Source: {source}, tracking URI `{sel.uri}`.",
        "",
        f"{len(runs)} runs: {counts.get('FINISHED', 0)} finished "
        f"({int(runs['diverged'].sum())} of them diverged), "
        f"{sum(counts.get(s, 0) for s in UNFINISHED)} failed or killed, "
        f"{counts.get('RUNNING', 0)} still running"
        + (f"; {sel.superseded} earlier attempts superseded by reruns" if sel.superseded else "")
        + ". Loss and accuracy statistics use finished, non-diverged runs only (`used`); "
        "std and the 95% confidence interval of the mean (t distribution) "
        "are empty below two runs.",
        "",
        "## Best configuration",
        "",
        best_text(agg),
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
            agg.summary, out / "heatmap_final_loss.png", cols, f"{title} mean final loss"
        )
        written.append("heatmap_final_loss.png")
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


def write_outputs(agg: Aggregate, out: Path, with_plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    agg.runs.to_csv(out / "runs.csv", index=False)
    agg.summary.to_csv(out / "summary.csv", index=False)
    agg.curves.to_csv(out / "curves.csv", index=False)
    plot_files = write_plots(agg, out) if with_plots else []
    (out / "report.md").write_text(markdown_report(agg, plot_files))
    return [out / n for n in ("runs.csv", "summary.csv", "curves.csv", "report.md", *plot_files)]


def log_to_parent(agg: Aggregate, files: list[Path]) -> None:
    """Report, tables and plots under aggregate/ on the parent; the best configuration as
    tags (aggregate.best.<param>) and metrics (aggregate/best_*)."""
    sel = agg.selection
    if sel.parent_run_id is None:
        return
    store = Store(client=sel.client, experiment_id=sel.experiment_id, uri=sel.uri)
    # The files written, not the whole folder: it may hold other things (even the store).
    for f in files:
        sel.client.log_artifact(sel.parent_run_id, str(f), artifact_path="aggregate")
    runs = agg.runs
    metrics = {
        "aggregate/runs": len(runs),
        "aggregate/used": int(runs["used"].sum()),
        "aggregate/failed": int(runs["status"].isin(UNFINISHED).sum()),
        "aggregate/diverged": int(runs["diverged"].sum()),
        "aggregate/running": int((runs["status"] == "RUNNING").sum()),
    }
    tags = {"aggregate.best": best_text(agg)}
    if agg.best:
        tags |= {f"aggregate.best.{c}": cell(agg.best[c]) for c in agg.config_cols}
        for k in ("loss_mean", "loss_std", "loss_ci95", "acc_mean"):
            if cell(agg.best[k]):
                metrics[f"aggregate/best_{k}"] = agg.best[k]
    log_values(store, sel.parent_run_id, summary=metrics, tags=tags)
