"""Figures from a run's curves or a sweep's frames, drawn without pyplot so nothing global
accumulates across the jobs of a sweep (no figure manager, no leaked figures).

A sweep draws two small figures per run, so those are per-run overhead. Each kind of
per-run figure is built once per process; for every run its lines get that run's data,
title and legend, and it is saved again. Clearing or rebuilding the axes would rebuild
every tick and its text, which measured as most of the cost; fixed margins replace the
layout engine, and fixed places for the title and axis labels, for the same reason.
"""

from __future__ import annotations

import re
import textwrap
from functools import cache
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text
from matplotlib.ticker import LogFormatter, MaxNLocator, NullLocator

from fnnlab.outcome import HIGHER_IS_BETTER

if TYPE_CHECKING:  # neither torch nor pandas is needed to draw a run's figures
    import pandas as pd


# A run's figures are RUN_FIGSIZE inches at DPI: 800 x 560 pixels.
DPI = 100
RUN_FIGSIZE = (8, 5.6)
# zlib level 1: small line plots; the default level 6 costs time for a few percent of bytes.
PNG_OPTIONS = {"compress_level": 1}
# Metric key -> legend entry.
GRAD_NORMS = {"grad_norm/w1": "‖∇w1‖", "grad_norm/w2": "‖∇w2‖"}
# A y axis is logarithmic when its finite positive values span more than this (max / min).
LOG_RATIO = 30.0
# ... or, for a sweep's curves, when one configuration peaks over this times the median peak.
OUTLIER_RATIO = 3.0
# Where a run's figure puts its legend.
LEGEND_LOC = "best"


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


# The files of draw_run, in a run's artifact folder.
RUN_FILES = ("loss.png", "grad_norm.png")


def draw_run(
    curves: Curves, art: Path, name: str, published: dict[int, float] | None
) -> tuple[Figure, Figure]:
    """The per-run figures, into the run's artifact folder (RUN_FILES)."""
    loss_png, grad_norm_png = RUN_FILES
    return (
        loss_plot(curves, art / loss_png, name, published),
        grad_norm_plot(curves, art / grad_norm_png, name),
    )


def _save(fig: Figure, path: Path) -> Figure:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, pil_kwargs=PNG_OPTIONS)
    return fig


def spans_decades(values: np.ndarray, ratio: float = LOG_RATIO) -> bool:
    """Whether the finite positive values span more than `ratio` (max / min): a log axis."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return bool(v.size) and v.max() > ratio * v.min()


class _PlainLog(LogFormatter):
    """Log-axis tick labels as plain numbers (0.3, 2, 1e-05) rather than 3×10⁻¹; minor ticks
    labelled as LogFormatter does (some of them when the axis spans a decade or two)."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _log_labels(axis: Any) -> None:
    """Plain tick labels on a log axis (a y axis, or a colour bar's)."""
    axis.set_major_formatter(_PlainLog())
    axis.set_minor_formatter(_PlainLog(labelOnlyBase=False))


class _Panel:
    """The reusable axes and data lines of one kind of per-run figure, and the artists
    only the last run drawn has (published points, divergence mark)."""

    def __init__(self, ax: Axes, lines: list[Line2D]) -> None:
        self.ax, self.lines = ax, lines
        self.extras: list = []

    def set_log(self, log: bool) -> None:
        if (self.ax.get_yscale() == "log") == log:
            return  # switching rebuilds the axis' ticks: only when the scale changes
        self.ax.set_yscale("log" if log else "linear")
        if log:
            _log_labels(self.ax.yaxis)
        else:
            self.ax.yaxis.set_major_locator(MaxNLocator(5))


@cache
def _panel(kind: str) -> _Panel:
    """The panel of one kind of figure, created once per process."""
    fig = Figure(figsize=RUN_FIGSIZE)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.93)
    ax = fig.add_subplot()
    ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    if kind == "loss":
        lines = ax.plot([], [], label="loss (cross-entropy)", color="tab:blue")
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set(xlabel="epoch", ylabel="mean cross-entropy")
    else:
        lines = [ax.plot([], [], label=label)[0] for label in GRAD_NORMS.values()]
        ax.set(xlabel="epoch", ylabel="gradient L2 norm")
    panel = _Panel(ax, lines)
    if kind != "loss":
        panel.set_log(True)
        # Minor ticks of a log axis are dozens of extra artists to draw per run; a loss on a
        # log axis keeps them (labelled): it spans a decade or two, with few decade ticks.
        ax.yaxis.set_minor_locator(NullLocator())
    # The x label where matplotlib puts it below these ticks (their height never changes),
    # fixed: placing it anew measures every tick label's extent on every save. The y label
    # stays placed by matplotlib, clear of tick labels whose width varies.
    ax.xaxis.set_label_coords(0.5, -0.07)
    ax.legend(loc=LEGEND_LOC)
    return panel


def _draw(
    panel: _Panel, title: str, path: Path, extras: list, points: list | None = None
) -> Figure:
    """Rescale to this run's data and save. This run's extra artists stay on the figure
    (so a caller can inspect what was saved) until the next run drawn on this panel."""
    ax = panel.ax
    ax.relim()
    if points:
        ax.update_datalim(points)
    ax.autoscale_view()
    # y given: a fixed title, not moved clear of top ticks (there are none; that check
    # measured as a tenth of a save).
    ax.set_title(title, y=1.0)
    if extras or panel.extras:
        # Entries differ from the last run's: a legend for this run.
        ax.legend(loc=LEGEND_LOC)
    panel.extras = extras
    ax.figure.savefig(path, dpi=DPI, pil_kwargs=PNG_OPTIONS)
    return ax.figure


def loss_plot(
    curves: Curves, path: Path, title: str, published: dict[int, float] | None = None
) -> Figure:
    """Loss per epoch, with the published points overlaid when given; log y when the loss
    (with those points) spans more than LOG_RATIO (see spans_decades), linear otherwise."""
    panel = _panel("loss")
    ax, (line,) = panel.ax, panel.lines
    for artist in panel.extras:
        artist.remove()
    loss = curves.metrics["loss"]
    line.set_data(curves.steps, loss)
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
                label="published (tutorial)",
            )
        )
    if curves.diverged_at is not None:
        extras.append(
            ax.axvline(
                curves.diverged_at,
                color="tab:gray",
                linestyle=":",
                label=f"diverged at epoch {curves.diverged_at}",
            )
        )
    values = np.concatenate([loss, list(published.values())]) if published else loss
    panel.set_log(spans_decades(values))
    return _draw(panel, title, path, extras, points)


def grad_norm_plot(curves: Curves, path: Path, title: str) -> Figure:
    """L2 norms of the applied gradients per epoch, log scale."""
    panel = _panel("grad_norm")
    for line, key in zip(panel.lines, GRAD_NORMS, strict=True):
        line.set_data(curves.steps, curves.metrics[key])
    return _draw(panel, title, path, [])


# --- sweep figures, from the frames of fnnlab.aggregate ----------------------------------


def _label(keys: tuple, names: list[str]) -> str:
    return " ".join(f"{n}={_fmt(v)}" for n, v in zip(names, keys, strict=True)) or "all runs"


def _fmt(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _keys(frame: pd.DataFrame, cols: list[str]) -> list[tuple]:
    """The distinct value tuples of `cols`, sorted ([()] without columns)."""
    if not cols:
        return [()]
    return sorted(frame[cols].drop_duplicates().itertuples(index=False, name=None))


# The sweep figures' margins, in inches, fixed rather than measured: measuring every tick
# label (matplotlib's constrained layout) was most of the time of drawing them.
LEFT = 1.0  # y tick labels of up to 7 characters (-0.0002, 100000) and the y label
RIGHT = 0.25
PANEL_TOP = 0.35  # a panel's title
TITLE_TOP = 0.4  # the figure's title
BELOW = 0.6  # x tick labels and the x label
COLOUR_BAR = 0.85  # a colour bar's tick labels and label, right of it


def _panels(
    n: int, width: float = 4.2, height: float = 3.2, colour_bars: bool = False
) -> tuple[Figure, list]:
    cols = min(3, n)
    rows = -(-n // cols)
    # Wide enough for the title and legend even with one panel; at least 800 x 560 pixels.
    size = (max(width * cols, 8), max(height * rows + 1.0, 5.6))
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    bar = COLOUR_BAR if colour_bars else 0.0
    w, h = size
    gap = bar + LEFT  # between panels: this one's colour bar, the next one's y labels
    panel_w = (w - LEFT - bar - RIGHT - (cols - 1) * gap) / cols
    fig.subplots_adjust(left=LEFT / w, right=1 - (bar + RIGHT) / w, wspace=gap / panel_w)
    return fig, axes[:n]


# Titles shrink to this size, no smaller, before a word of theirs is broken.
SMALLEST_TITLE = 8.0
# Where textwrap breaks lines: ASCII whitespace only (a no-break space is within a word).
_SPACES = re.compile(r"[\t\n\x0b\x0c\r ]+")


def _words(text: str) -> list[str]:
    return [word for word in _SPACES.split(text) if word]


def _width(text: Text, content: str, renderer: Any) -> float:
    """How wide `text` would be, in pixels, holding `content`."""
    was = text.get_text()
    text.set_text(content)
    wide = text.get_window_extent(renderer).width
    text.set_text(was)
    return wide


def _title_size(text: Text, width: float, renderer: Any) -> float:
    """The font size at which the widest word of `text` fits in `width` pixels on a line
    of its own: its size if it does already, SMALLEST_TITLE at least."""
    words = set(_words(text.get_text()))
    wide = max((_width(text, word, renderer) for word in words), default=0.0)
    if wide <= width:
        return text.get_fontsize()
    return max(SMALLEST_TITLE, 0.95 * text.get_fontsize() * width / wide)


def _wrap(text: Text, width: float, renderer: Any) -> float:
    """Break one-line `text` into lines no wider than `width` pixels: at spaces (a long
    experiment name, a facet of several params), and within words only when a word alone
    is too wide. The height it gained, in inches."""
    line = text.get_window_extent(renderer)
    if line.width <= width:
        return 0.0
    words = text.get_text()
    count = len(_words(words))
    chars = max(1, int(len(words) * width / line.width))
    whole = True
    while True:
        lines = textwrap.wrap(words, chars, break_long_words=not whole, break_on_hyphens=False)
        text.set_text("\n".join(lines))
        wrapped = text.get_window_extent(renderer)
        if wrapped.width <= width or (chars == 1 and not whole):
            return (wrapped.height - line.height) / renderer.dpi
        if whole and len(lines) == count:
            whole = False  # every word on a line of its own, one still too wide
        else:
            chars = max(1, chars - max(1, chars // 10))


def _fit(texts: list[Text], widths: list[float], renderer: Any) -> float:
    """Titles fitted to their widths (pixels): as plain text (an experiment name's "$" is
    no formula) on one line, then all at one font size, the largest at which each word fits
    on a line of its own, then broken into lines; the height the tallest gained, in
    inches."""
    for text in texts:
        text.set_parse_math(False)
        text.set_text(" ".join(_words(text.get_text())))
    size = min(_title_size(t, w, renderer) for t, w in zip(texts, widths, strict=True))
    for text in texts:
        if size < text.get_fontsize():
            text.set_fontsize(size)
    return max(_wrap(t, w, renderer) for t, w in zip(texts, widths, strict=True))


def _finish(fig: Figure, title: str | None, handles: list, labels: list[str]) -> None:
    """The title at the top and the legend at the bottom, in as many columns (up to 4) as
    fit the figure's width; the figure grows by the legend's height, so that the panels
    keep theirs whatever the number of entries. Titles wider than their figure or panel
    are broken into lines, and the figure grows by those too."""
    w, h = fig.get_size_inches()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    # Every row's panel titles get the room of the tallest.
    row_extra = _fit([ax.title for ax in panels], [ax.bbox.width for ax in panels], renderer)
    top, bottom, title_extra = PANEL_TOP + row_extra, BELOW, 0.0
    if title:
        suptitle = fig.suptitle(title, va="top")
        title_extra = _fit([suptitle], [fig.bbox.width - 0.2 * fig.dpi], renderer)
        top += TITLE_TOP + title_extra
    # The figure's grid (a colour bar splits a panel's cell into a grid of its own).
    rows = fig.axes[0].get_subplotspec().get_topmost_subplotspec().get_gridspec().nrows
    h += rows * row_extra + title_extra
    if labels:
        for ncols in range(min(4, len(labels)), 0, -1):
            legend = fig.legend(handles, labels, loc="lower center", ncols=ncols)
            box = legend.get_window_extent(renderer)
            if box.width <= fig.bbox.width - 0.1 * fig.dpi or ncols == 1:
                break
            legend.remove()
        grow = box.height / fig.dpi + 0.1
        bottom += grow
        h += grow
    fig.set_size_inches(w, h)
    if labels:
        legend.set_bbox_to_anchor((0.5, 0.05 / h), transform=fig.transFigure)
    if title:
        suptitle.set_y(1 - 0.1 / h)
    gap = BELOW + PANEL_TOP + row_extra  # between rows: x labels above, panel titles below
    panel_h = (h - top - bottom - (rows - 1) * gap) / rows
    fig.subplots_adjust(top=1 - top / h, bottom=bottom / h, hspace=gap / panel_h)


def curves_need_log(curves: pd.DataFrame, config_cols: list[str], keys: list[str]) -> bool:
    """The rule for sweep_curves_plot's logy="auto": a log y axis when the mean curves of
    `keys` span more than LOG_RATIO (max / min of finite positive means), or when one
    configuration's largest mean is over OUTLIER_RATIO times the median of the
    configurations' largest means (one exploding learning rate would flatten the rest);
    a linear axis otherwise."""
    c = curves[curves["key"].isin(keys)]
    c = c[np.isfinite(c["mean"]) & (c["mean"] > 0)]
    if c.empty:
        return False
    if spans_decades(c["mean"].to_numpy()):
        return True
    if not config_cols:
        return False
    peaks = c.groupby(config_cols, dropna=False)["mean"].max()
    return bool(peaks.max() > OUTLIER_RATIO * peaks.median())


def sweep_curves_plot(
    curves: pd.DataFrame,
    path: Path,
    config_cols: list[str],
    metrics: dict[str, str],
    ylabel: str,
    title: str,
    panel_col: str = "hidden_dim",
    logy: bool | str = "auto",
    published: dict[int, float] | None = None,
    band: bool = True,
) -> Figure:
    """Mean (+/- std unless band=False) per configuration over epochs: a panel per width,
    a colour per other configuration (learning rate, ...), a line style per metric
    (metrics: key -> style). logy: True, False, or "auto" (see curves_need_log). On a log
    axis the y range is the means' (a band reaching 0 would stretch it over decades)."""
    import pandas as pd

    if logy == "auto":
        logy = curves_need_log(curves, config_cols, list(metrics))
    panel_col = panel_col if panel_col in config_cols else None
    line_cols = [c for c in config_cols if c != panel_col]
    # Name lines by what differs between them (all of it if nothing does).
    line_cols = [c for c in line_cols if curves[c].nunique() > 1] or line_cols
    panel_values = sorted(curves[panel_col].dropna().unique()) if panel_col else [None]
    line_keys = _keys(curves, line_cols)
    colours = matplotlib.colormaps["viridis" if len(line_keys) > 10 else "tab10"]
    fig, axes = _panels(len(panel_values))
    for ax, pv in zip(axes, panel_values, strict=True):
        sub = curves if panel_col is None else curves[curves[panel_col] == pv]
        means = []
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
                means.append(c["mean"].to_numpy())
                label = _label(lk, line_cols) if key == next(iter(metrics)) else None
                ax.plot(c["step"], c["mean"], color=colour, linestyle=style, label=label)
                std = c["std"].fillna(0)  # one seed: no band
                if band:
                    lo, hi = c["mean"] - std, c["mean"] + std
                    ax.fill_between(c["step"], lo, hi, color=colour, alpha=0.15, linewidth=0)
        if published:
            label = "published (tutorial)" if ax is axes[0] else None
            epochs, losses = list(published), list(published.values())
            ax.scatter(epochs, losses, color="tab:red", marker="x", zorder=3, label=label)
            means.append(np.asarray(losses, dtype=float))
        if logy:
            ax.set_yscale("log")
            _log_labels(ax.yaxis)
            v = np.concatenate(means) if means else np.array([])
            v = v[np.isfinite(v) & (v > 0)]
            if v.size:
                ax.set_ylim(v.min() / 1.25, v.max() * 1.25)
        panel_title = f"{panel_col}={_fmt(pv)}" if panel_col else title
        label = f"{ylabel} (log scale)" if logy else ylabel
        ax.set(xlabel="epoch", ylabel=label, title=panel_title)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(metrics) > 1:
        for key, style in metrics.items():
            handles.append(Line2D([], [], color="black", linestyle=style))
            labels.append(key)
    _finish(fig, title, handles, labels)
    return _save(fig, path)


def _cell_text(row: pd.Series | None) -> tuple[str, list[str]]:
    """A heatmap cell's annotation and its marks (leader, tied, diverged, oscillating)."""
    if row is None:
        return "no outcome", []
    n = int(row["n"]) if np.isfinite(row["n"]) else 0
    marks = []
    if row["leader"]:
        marks.append("leader")
    elif row["tied"]:
        marks.append("tied")
    for col, short in (("diverged", "div."), ("oscillating", "osc.")):
        count = row.get(col, 0)
        if np.isfinite(count) and count > 0:
            marks.append(f"{int(count)} {short}")
    if not n or not np.isfinite(row["mean"]):
        lines = ["no outcome"]
    else:
        lines = [f"{row['mean']:.3g}"]
        half = (row["ci_high"] - row["ci_low"]) / 2
        if np.isfinite(half):
            lines.append(f"±{half:.2g}")
    lines.append(f"n={n}")
    return "\n".join([*lines, *marks]), marks


def _cell_mean(row: pd.Series | None) -> float:
    """What a heatmap cell is coloured by: NaN (grey) without a positive mean outcome."""
    if row is None or not row["n"] > 0 or not row["mean"] > 0:
        return np.nan
    return float(row["mean"])


# The outcome heatmap's colour scale spans at least this factor (see sweep_heatmap).
MIN_COLOUR_SPAN = 4.0


def sweep_heatmap(
    comparison: pd.DataFrame,
    path: Path,
    config_cols: list[str],
    title: str,
    counts: pd.DataFrame | None = None,
    outcome: str = "tail_loss",
    row_col: str = "hidden_dim",
    col_col: str = "lr",
) -> Figure:
    """The comparison's mean outcome over width x learning rate, a panel per combination of
    any other swept params, on a log colour scale. Each cell shows mean ± CI half-width and
    n; the leader has a thick red border, configurations tied with it a dashed one.
    `counts` (the summary: config columns, diverged, oscillating), when given, marks cells
    with diverged runs (hatched, "k div.") or oscillating ones ("k osc."). Cells without an
    outcome (every run diverged or failed, or no run) are grey. The colour scale spans the
    means, and at least a factor of MIN_COLOUR_SPAN."""
    frame = comparison
    if counts is not None:
        extra = counts[[*config_cols, "diverged", "oscillating"]]
        # Outer: a configuration whose runs all failed is in the summary only.
        frame = frame.merge(extra, on=config_cols, how="outer")
    frame = frame.assign(
        leader=frame["leader"].fillna(False).astype(bool),
        tied=frame["tied"].astype("boolean").fillna(False).astype(bool),
    )
    facet_cols = [k for k in config_cols if k not in (row_col, col_col) and frame[k].nunique() > 1]
    facets = _keys(frame, facet_cols)
    rows = sorted(frame[row_col].dropna().unique())
    cols = sorted(frame[col_col].dropna().unique())
    fig, axes = _panels(
        len(facets), width=1.3 * len(cols) + 2.2, height=0.95 * len(rows) + 1.2, colour_bars=True
    )
    # One colour scale for all panels, so that panels compare.
    means = frame["mean"].to_numpy(dtype=float)
    means = means[np.isfinite(means) & (means > 0)]
    vmin, vmax = (means.min(), means.max()) if means.size else (1.0, 10.0)
    # Colours show ratios of means: a span under MIN_COLOUR_SPAN is widened about its
    # geometric middle, so that means a fraction of a percent apart look alike, not like
    # the two ends of the scale.
    if vmax < MIN_COLOUR_SPAN * vmin:
        middle = np.sqrt(vmin) * np.sqrt(vmax)
        vmin, vmax = middle / np.sqrt(MIN_COLOUR_SPAN), middle * np.sqrt(MIN_COLOUR_SPAN)
        if outcome == "final_accuracy" and vmax > 1:  # no accuracy passes 1: widen downward
            vmax = max(1.0, means.max())
            vmin = vmax / MIN_COLOUR_SPAN
    norm = LogNorm(vmin, vmax)
    # Bright is good; grey is no outcome.
    cmap = "viridis" if outcome in HIGHER_IS_BETTER else "viridis_r"
    cmap = matplotlib.colormaps[cmap].with_extremes(bad="0.85")
    shown: set[str] = set()  # the cells' marks, for the legend
    for ax, fk in zip(axes, facets, strict=True):
        sub = frame
        for k, v in zip(facet_cols, fk, strict=True):
            sub = sub[sub[k] == v]
        by_cell = {(r[row_col], r[col_col]): r for _, r in sub.iterrows()}
        cells = np.array([[_cell_mean(by_cell.get((rv, cv))) for cv in cols] for rv in rows])
        im = ax.imshow(np.ma.masked_invalid(cells), cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(cols)), [_fmt(v) for v in cols])
        ax.set_yticks(range(len(rows)), [_fmt(v) for v in rows])
        panel_title = _label(fk, facet_cols) if facet_cols else title
        ax.set(xlabel=col_col, ylabel=row_col, title=panel_title)
        for (i, rv), (j, cv) in product(enumerate(rows), enumerate(cols)):
            text, marks = _cell_text(by_cell.get((rv, cv)))
            v = cells[i, j]
            shown |= {*marks, *([] if np.isfinite(v) else ["no outcome"])}
            r, g, b = cmap(norm(v))[:3] if np.isfinite(v) else (0.85, 0.85, 0.85)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            colour = "white" if dark else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8.5, color=colour)
            box = {"xy": (j - 0.5, i - 0.5), "width": 1, "height": 1, "fill": False}
            if "leader" in marks:
                ax.add_patch(Rectangle(**box, edgecolor="tab:red", linewidth=4, zorder=3))
            elif "tied" in marks:
                ax.add_patch(
                    Rectangle(**box, edgecolor="tab:red", linewidth=2, linestyle="--", zorder=3)
                )
            if any(m.endswith("div.") for m in marks):
                ax.add_patch(Rectangle(**box, hatch="//", edgecolor="0.5", linewidth=0, alpha=0.5))
        bar = fig.colorbar(im, ax=ax, label=f"mean {outcome} (log scale)")
        _log_labels(bar.ax.yaxis)
    # Only what some cell shows: a legend of "leader" and "tied" where neither is (no leader,
    # or one configuration compared with nothing) read as if they were.
    keys = [
        key
        for key, mark in (
            (Patch(fill=False, edgecolor="tab:red", linewidth=3, label="leader"), "leader"),
            (
                Patch(fill=False, edgecolor="tab:red", linewidth=1.5, linestyle="--", label="tied"),
                "tied",
            ),
            (Patch(fill=False, edgecolor="0.5", hatch="//", label="runs diverged"), "div."),
            (Patch(facecolor="0.85", edgecolor="0.5", label="no outcome"), "no outcome"),
        )
        if any(m.endswith(mark) for m in shown)
    ]
    _finish(fig, title if facet_cols else None, keys, [k.get_label() for k in keys])
    return _save(fig, path)


def regime_heatmap(
    fractions: pd.DataFrame,
    path: Path,
    title: str,
    row_col: str = "hidden_dim",
    col_col: str = "lr",
) -> Figure:
    """A panel per training regime (stable, oscillating, diverged): over width x learning
    rate, the fraction of a cell's seeds in that regime, with n."""
    regimes = [c for c in ("stable", "oscillating", "diverged") if c in fractions]
    colours = {"stable": "Greens", "oscillating": "Oranges", "diverged": "Reds"}
    # Wide enough for each column's tick label and cell note, besides the fixed margins.
    width = max(4.8, 0.6 * fractions[col_col].nunique() + LEFT + COLOUR_BAR + 0.6)
    fig, axes = _panels(len(regimes), width=width, height=3.8, colour_bars=True)
    for ax, regime in zip(axes, regimes, strict=True):
        grid = fractions.pivot_table(index=row_col, columns=col_col, values=regime)
        n = fractions.pivot_table(index=row_col, columns=col_col, values="n")
        cells = grid.to_numpy(dtype=float)
        im = ax.imshow(cells, cmap=colours[regime], vmin=0, vmax=1, aspect="auto")
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
        bar = fig.colorbar(im, ax=ax, label=f"fraction of seeds {regime}", format="{x:.0%}")
        bar.set_ticks([0, 0.25, 0.5, 0.75, 1])
    _finish(fig, title, [], [])
    return _save(fig, path)
