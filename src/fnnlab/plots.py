"""Figures from a History, drawn without pyplot so nothing global accumulates
across the jobs of a sweep (no figure manager, no leaked figures)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fnnlab.train import History

DPI = 80


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def loss_plot(
    history: History, path: Path, title: str, published: dict[int, float] | None = None
) -> Path:
    """Loss per epoch, with the published points overlaid when given."""
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(history.metrics["loss"], label="fnnlab", color="tab:blue")
    if published:
        ax.scatter(
            list(published),
            list(published.values()),
            color="tab:red",
            marker="x",
            zorder=3,
            label="published",
        )
    if history.diverged_at is not None:
        ax.axvline(
            history.diverged_at,
            color="tab:gray",
            linestyle=":",
            label=f"diverged at {history.diverged_at}",
        )
    ax.set(xlabel="epoch", ylabel="mean cross-entropy", title=title)
    ax.legend()
    return _save(fig, path)


def grad_norm_plot(history: History, path: Path, title: str) -> Path:
    """L2 norms of the applied gradients per epoch, log scale."""
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for name in ("grad_norm/w1", "grad_norm/w2"):
        ax.plot(history.metrics[name], label=name)
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="gradient L2 norm", title=title)
    ax.legend()
    return _save(fig, path)
