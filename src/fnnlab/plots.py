"""Figures from a History, drawn without pyplot so nothing global accumulates
across the jobs of a sweep (no figure manager, no leaked figures).

A sweep draws two small figures per run, so drawing cost is per-run overhead. Each
kind of figure is built once per process; for every run its lines get that run's
data, title and legend, and it is saved again. Clearing or rebuilding the axes would
rebuild every tick and its text, which measured as most of the cost; fixed margins
replace the layout engine for the same reason.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

from fnnlab.train import History

DPI = 80
# zlib level 1: small line plots; the default level 6 costs time for a few percent of bytes.
PNG_OPTIONS = {"compress_level": 1}
GRAD_NORMS = ("grad_norm/w1", "grad_norm/w2")


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
    ax.legend(loc="upper right")
    return ax, lines


def _draw(ax: Axes, title: str, path: Path, extras: list, points: list | None = None) -> Path:
    """Rescale to this run's data, save, then drop the run's extra artists."""
    ax.relim()
    if points:
        ax.update_datalim(points)
    ax.autoscale_view()
    ax.set_title(title)
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
    history: History, path: Path, title: str, published: dict[int, float] | None = None
) -> Path:
    """Loss per epoch, with the published points overlaid when given."""
    ax, (line,) = _panel("loss")
    losses = history.metrics["loss"]
    line.set_data(range(len(losses)), losses)
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
    if history.diverged_at is not None:
        extras.append(
            ax.axvline(
                history.diverged_at,
                color="tab:gray",
                linestyle=":",
                label=f"diverged at {history.diverged_at}",
            )
        )
    return _draw(ax, title, path, extras, points)


def grad_norm_plot(history: History, path: Path, title: str) -> Path:
    """L2 norms of the applied gradients per epoch, log scale."""
    ax, lines = _panel("grad_norm")
    for line, name in zip(lines, GRAD_NORMS, strict=True):
        values = history.metrics[name]
        line.set_data(range(len(values)), values)
    return _draw(ax, title, path, [])
