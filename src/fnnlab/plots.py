"""Figures from a run's curves or a sweep's frames, drawn without pyplot so nothing global
accumulates across the jobs of a sweep (no figure manager, no leaked figures).

A sweep draws two small figures per run, so those are per-run overhead. Each kind of
per-run figure is built once per process; for every run its lines get that run's data,
title and legend, and it is saved again. Clearing or rebuilding the axes would rebuild
every tick and its text, which measured as most of the cost; fixed margins replace the
layout engine, and fixed places for the title and axis labels, for the same reason.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

if TYPE_CHECKING:  # neither torch nor pandas is needed to draw a run's figures
    import pandas as pd


DPI = 80
# zlib level 1: small line plots; the default level 6 costs time for a few percent of bytes.
PNG_OPTIONS = {"compress_level": 1}
GRAD_NORMS = ("grad_norm/w1", "grad_norm/w2")


# A run's curves are drawn from at most about this many points each.
MAX_POINTS = 4000


def envelope(
    metrics: dict[str, np.ndarray], max_points: int = MAX_POINTS
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(steps, values per metric) to draw: every epoch when there are at most max_points;
    else, for each of max_points / 2 slices of epochs, its smallest and largest value at
    the slice's first epoch (so spikes and oscillations stay visible), then the last epoch.
    """
    n = len(next(iter(metrics.values()), []))
    if n <= max_points:
        return np.arange(n), {k: np.asarray(v) for k, v in metrics.items()}
    starts = np.unique(np.linspace(0, n, max_points // 2, endpoint=False).astype(np.int64))
    steps = np.append(np.repeat(starts, 2), n - 1)
    out = {}
    for key, values in metrics.items():
        values = np.asarray(values)
        low, high = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
        out[key] = np.append(np.column_stack([low, high]).ravel(), values[-1])
    return steps, out


class Curves(NamedTuple):
    """What a run's figures show: its values at `steps` (every epoch of a short run; for a
    long one each slice's smallest and largest, see envelope), so a long run costs the
    figures no more than a short one."""

    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    diverged_at: int | None

    @classmethod
    def of(cls, history: Any) -> Curves:
        steps, metrics = envelope(history.metrics)
        return cls(steps, metrics, history.diverged_at)


def draw_run(curves: Curves, art: Path, name: str, published: dict[int, float] | None) -> None:
    """The per-run figures, into the run's artifact folder."""
    loss_plot(curves, art / "loss.png", name, published)
    grad_norm_plot(curves, art / "grad_norm.png", name)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


@cache
def _panel(kind: str) -> tuple[Axes, list[Line2D]]:
    """The reusable axes and data lines of one kind of figure, created once per process."""
    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.91)
    ax = fig.add_subplot()
    ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    if kind == "loss":
        lines = ax.plot([], [], label="fnnlab", color="tab:blue")
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set(xlabel="epoch", ylabel="mean cross-entropy")
    else:
        lines = [ax.plot([], [], label=name)[0] for name in GRAD_NORMS]
        ax.set_yscale("log")
        # Minor ticks of a log axis are dozens of extra artists to draw per run.
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set(xlabel="epoch", ylabel="gradient L2 norm")
    # The x label where matplotlib puts it below these ticks (their height never changes),
    # fixed: placing it anew measures every tick label's extent on every save. The y label
    # stays placed by matplotlib, clear of tick labels whose width varies.
    ax.xaxis.set_label_coords(0.5, -0.1075)
    ax.legend(loc="upper right")
    return ax, lines


def _draw(ax: Axes, title: str, path: Path, extras: list, points: list | None = None) -> Path:
    """Rescale to this run's data, save, then drop the run's extra artists."""
    ax.relim()
    if points:
        ax.update_datalim(points)
    ax.autoscale_view()
    # y given: a fixed title, not moved clear of top ticks (there are none; that check
    # measured as a tenth of a save).
    ax.set_title(title, y=1.0)
    if extras:
        # Entries differ from the panel's own: a legend for this run only.
        ax.legend(loc="upper right")
    try:
        ax.figure.savefig(path, dpi=DPI, pil_kwargs=PNG_OPTIONS)
    finally:
        for artist in extras:
            artist.remove()
        if extras:
            ax.legend(loc="upper right")
    return path


def loss_plot(
    curves: Curves, path: Path, title: str, published: dict[int, float] | None = None
) -> Path:
    """Loss per epoch, with the published points overlaid when given."""
    ax, (line,) = _panel("loss")
    line.set_data(curves.steps, curves.metrics["loss"])
    extras, points = [], None
    if published:
        points = list(published.items())
        extras.append(
            ax.scatter(
                list(published),
                list(published.values()),
                color="tab:red",
                marker="x",
                zorder=3,
                label="published",
            )
        )
    if curves.diverged_at is not None:
        extras.append(
            ax.axvline(
                curves.diverged_at,
                color="tab:gray",
                linestyle=":",
                label=f"diverged at {curves.diverged_at}",
            )
        )
    return _draw(ax, title, path, extras, points)


def grad_norm_plot(curves: Curves, path: Path, title: str) -> Path:
    """L2 norms of the applied gradients per epoch, log scale."""
    ax, lines = _panel("grad_norm")
    for line, name in zip(lines, GRAD_NORMS, strict=True):
        line.set_data(curves.steps, curves.metrics[name])
    return _draw(ax, title, path, [])


# --- sweep figures, from the frames of fnnlab.aggregate ----------------------------------


def _label(keys: tuple, names: list[str]) -> str:
    return " ".join(f"{n}={_fmt(v)}" for n, v in zip(names, keys, strict=True)) or "all runs"


def _fmt(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _panels(n: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list]:
    cols = min(3, n)
    rows = -(-n // cols)
    # Wide enough for the title and legend even with one panel.
    fig = Figure(figsize=(max(width * cols, 7.5), height * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def sweep_curves_plot(
    curves: pd.DataFrame,
    path: Path,
    config_cols: list[str],
    metrics: dict[str, str],
    ylabel: str,
    title: str,
    panel_col: str = "hidden_dim",
    logy: bool = False,
    published: dict[int, float] | None = None,
    band: bool = True,
) -> Path:
    """Mean (+/- std unless band=False) per configuration over epochs: a panel per width,
    a colour per other configuration (learning rate, ...), a line style per metric
    (metrics: key -> style)."""
    import pandas as pd

    panel_col = panel_col if panel_col in config_cols else None
    line_cols = [c for c in config_cols if c != panel_col]
    # Name lines by what differs between them (all of it if nothing does).
    line_cols = [c for c in line_cols if curves[c].nunique() > 1] or line_cols
    panel_values = sorted(curves[panel_col].dropna().unique()) if panel_col else [None]
    line_keys = sorted(curves.groupby(line_cols, dropna=False).groups) if line_cols else [()]
    line_keys = [k if isinstance(k, tuple) else (k,) for k in line_keys]
    colours = matplotlib.colormaps["viridis" if len(line_keys) > 10 else "tab10"]
    fig, axes = _panels(len(panel_values))
    for ax, pv in zip(axes, panel_values, strict=True):
        sub = curves if panel_col is None else curves[curves[panel_col] == pv]
        for i, lk in enumerate(line_keys):
            mask = pd.Series(True, index=sub.index)
            for c, v in zip(line_cols, lk, strict=True):
                mask &= sub[c] == v
            many = len(line_keys) > 10
            colour = colours(i / (len(line_keys) - 1)) if many else colours(i % 10)
            for key, style in metrics.items():
                c = sub[mask & (sub["key"] == key)].sort_values("step")
                if c.empty:
                    continue
                label = _label(lk, line_cols) if key == next(iter(metrics)) else None
                ax.plot(c["step"], c["mean"], color=colour, linestyle=style, label=label)
                std = c["std"].fillna(0)  # one seed: no band
                if band:
                    lo, hi = c["mean"] - std, c["mean"] + std
                    ax.fill_between(c["step"], lo, hi, color=colour, alpha=0.15, linewidth=0)
        if published:
            label = "published" if ax is axes[0] else None
            epochs, losses = list(published), list(published.values())
            ax.scatter(epochs, losses, color="tab:red", marker="x", zorder=3, label=label)
        if logy:
            ax.set_yscale("log")
        panel_title = f"{panel_col}={_fmt(pv)}" if panel_col else title
        ax.set(xlabel="epoch", ylabel=ylabel, title=panel_title)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(metrics) > 1:
        for key, style in metrics.items():
            handles.append(Line2D([], [], color="black", linestyle=style))
            labels.append(key)
    ncols = min(3, len(labels))
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def sweep_heatmap(
    summary: pd.DataFrame,
    path: Path,
    config_cols: list[str],
    title: str,
    value: str = "loss_mean",
    row_col: str = "hidden_dim",
    col_col: str = "lr",
) -> Path:
    """value over width x learning rate, a panel per combination of any other swept params.
    Empty cells are configurations without a usable run (all failed or diverged)."""
    facet_cols = [
        c for c in config_cols if c not in (row_col, col_col) and summary[c].nunique() > 1
    ]
    facets = sorted(summary.groupby(facet_cols, dropna=False).groups) if facet_cols else [()]
    facets = [k if isinstance(k, tuple) else (k,) for k in facets]
    fig, axes = _panels(len(facets), width=5, height=4)
    # One colour scale for all panels, so that panels compare.
    vmin, vmax = summary[value].min(), summary[value].max()
    for ax, fk in zip(axes, facets, strict=True):
        sub = summary
        for c, v in zip(facet_cols, fk, strict=True):
            sub = sub[sub[c] == v]
        grid = sub.pivot_table(
            index=row_col, columns=col_col, values=value, dropna=False, aggfunc="first"
        )
        cells = grid.to_numpy(dtype=float)
        im = ax.imshow(cells, cmap="viridis_r", aspect="auto", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(grid.columns)), [_fmt(v) for v in grid.columns])
        ax.set_yticks(range(len(grid.index)), [_fmt(v) for v in grid.index])
        panel_title = _label(fk, facet_cols) if facet_cols else title
        ax.set(xlabel=col_col, ylabel=row_col, title=panel_title)
        for (i, j), v in np.ndenumerate(cells):
            dark = not np.isnan(v) and v >= (vmin + vmax) / 2
            text = "n/a" if np.isnan(v) else f"{v:.3g}"
            colour = "white" if dark else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color=colour)
        fig.colorbar(im, ax=ax, label=value)
    if facet_cols:
        fig.suptitle(title)
    return _save(fig, path)


def regime_heatmap(
    fractions: pd.DataFrame,
    path: Path,
    title: str,
    row_col: str = "hidden_dim",
    col_col: str = "lr",
) -> Path:
    """A panel per training regime (stable, oscillating, diverged): over width x learning
    rate, the fraction of a cell's seeds in that regime, with n."""
    regimes = [c for c in ("stable", "oscillating", "diverged") if c in fractions]
    colours = {"stable": "Greens", "oscillating": "Oranges", "diverged": "Reds"}
    fig, axes = _panels(len(regimes), width=4.4, height=3.6)
    for ax, regime in zip(axes, regimes, strict=True):
        grid = fractions.pivot_table(index=row_col, columns=col_col, values=regime)
        n = fractions.pivot_table(index=row_col, columns=col_col, values="n")
        cells = grid.to_numpy(dtype=float)
        ax.imshow(cells, cmap=colours[regime], vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(grid.columns)), [_fmt(v) for v in grid.columns])
        ax.set_yticks(range(len(grid.index)), [_fmt(v) for v in grid.index])
        ax.set(xlabel=col_col, ylabel=row_col, title=f"fraction {regime}")
        for (i, j), v in np.ndenumerate(cells):
            if np.isnan(v):
                continue
            count = int(n.to_numpy()[i, j])
            ax.text(
                j,
                i,
                f"{v:.0%}\nn={count}",
                ha="center",
                va="center",
                fontsize="small",
                color="white" if v > 0.6 else "black",
            )
    fig.suptitle(title)
    return _save(fig, path)
