"""fit() and fit_population(): full-batch gradient descent with no I/O inside the loop.

They take plain values and return Histories, so they are testable against autograd,
fast, and usable from any launcher; tracking happens afterwards, from the History.
fit_population trains a population of networks of one shape together (see
fnnlab.model); each member's History is exactly the one fit would give it alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fnnlab.model import ScratchFNN, bce_with_logits, mean_bce
from fnnlab.names import METRICS

# A run diverges when its loss passes this many times the larger of its starting loss and
# ln 2 (the loss of predicting 0.5 everywhere), or a weight or gradient stops being finite.
DIVERGE_FACTOR = 100.0
# Epoch rows are written into a table of this many epochs at a time, then kept as a numpy
# array: memory stays at 48 bytes per member and epoch however long the run.
_CHUNK = 4096
# Members are trained in groups whose hidden activations (members x rows x hidden_dim
# values) take at most this many bytes (float32: 16 members at width 128, 4 at 512, 2 at
# 1024): past that a larger group saves no per-op work, and its tensors fall out of the
# CPU's caches. Measured (benchmarks/population_fit.py --groups, float32, 1 thread, us
# per member-epoch, best of 3, three runs): width 128, 420-500 alone, 90-101 in groups of
# 16, 127-131 in one of 32; width 512, 600-640 alone, 283-377 in groups of 4, 384-640 in
# groups of 8; width 1024, 830-1260 alone, 625-800 in groups of 2, 1060-1270 in one of 32.
_GROUP_BYTES = 832 * 1024


@dataclass
class History:
    """Per-epoch values; row e describes epoch e: the loss, accuracy and weight norms
    before that epoch's update, and the norms of the gradients that update applied."""

    # One float64 array per metric, one value per epoch run.
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    diverged_at: int | None = None  # the epoch training stopped at (see fit)
    # First epoch whose output reached exactly 0 or 1, where the tutorial's loss formula
    # takes log(0); from then on such epochs log the same loss computed from the logits.
    saturated_at: int | None = None
    w1: torch.Tensor | None = None  # weights after the last update
    w2: torch.Tensor | None = None

    @property
    def epochs_run(self) -> int:
        return len(self.metrics["loss"])

    def final(self) -> dict[str, float]:
        return {name: float(values[-1]) for name, values in self.metrics.items() if len(values)}


def fit(
    model: ScratchFNN,
    X: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    epochs: int,
    on_epoch: Callable[[int], object] | None = None,
    diverge_factor: float = DIVERGE_FACTOR,
) -> History:
    """Train one network (a population of one) in place for `epochs` full-batch steps.

    Training stops at the first epoch whose loss is not finite or exceeds
    diverge_factor * max(loss at epoch 0, ln 2), or whose weight or gradient norms are
    not finite: the History keeps the epochs before it and records where it diverged.
    A saturated output (exactly 0 or 1, so the tutorial's formula meets log(0)) is not
    divergence: that epoch's loss is computed from the logits instead, finite, and the
    first such epoch is recorded. on_epoch(1), if given, is called after each epoch (a
    progress bar's update); sweeps pass None and pay nothing.
    """
    if model.size != 1:
        raise ValueError(f"fit trains one network, got {model.size}: use fit_population")
    (history,) = fit_population(model, X, y, [lr], epochs, on_epoch, diverge_factor)
    return history


def fit_population(
    model: ScratchFNN,
    X: torch.Tensor,
    y: torch.Tensor,
    lrs: Sequence[float],
    epochs: int,
    on_epoch: Callable[[int], object] | None = None,
    diverge_factor: float = DIVERGE_FACTOR,
) -> list[History]:
    """Train every member of `model` in place, member b with learning rate lrs[b], and
    return one History per member: exactly (bit for bit) the one fit gives it alone.

    Each member stops on its own, as fit describes, while the others go on; training
    ends when every member has stopped or run `epochs` epochs. on_epoch(k), if given, is
    called after each epoch with k the number of members it trained.
    """
    if len(lrs) != model.size:
        raise ValueError(f"{len(lrs)} learning rates for {model.size} members")
    rates = torch.tensor(list(lrs), dtype=model.w1.dtype).reshape(-1, 1, 1)
    per_member = X.shape[0] * model.w1.shape[-1] * model.w1.element_size()
    group = max(1, _GROUP_BYTES // per_member)
    histories: list[History] = []
    for start in range(0, model.size, group):
        stop = min(start + group, model.size)
        part = model.members(start, stop)
        histories += _fit_group(part, X, y, rates[start:stop], epochs, on_epoch, diverge_factor)
    return histories


def _fit_group(
    model: ScratchFNN,
    X: torch.Tensor,
    y: torch.Tensor,
    lrs: torch.Tensor,
    epochs: int,
    on_epoch: Callable[[int], object] | None,
    diverge_factor: float,
) -> list[History]:
    size = model.size
    # The bookkeeping is numpy's: on arrays of one value per member its ops take about a
    # microsecond where torch's take several, and there are a dozen of them every epoch.
    # Every epoch's metrics for every member, one (members x METRICS) row per epoch, also
    # for members that have stopped (their rows past their end are dropped at the end).
    chunks: list[np.ndarray] = []
    table = np.empty((min(epochs, _CHUNK), size, len(METRICS)))
    filled = 0
    active = np.ones(size, dtype=bool)
    diverged_at = np.full(size, -1)  # -1: not (yet)
    saturated_at = np.full(size, -1)
    bound = np.full(size, math.inf)
    labels = y.numpy()
    norm = functools.partial(torch.linalg.vector_norm, dim=(-2, -1))
    for epoch in range(epochs):
        y2, s4, y4 = model.forward(X)
        grads = model.backward(X, y, y2, y4)
        row = table[filled]
        loss = row[:, 0]
        loss[:] = mean_bce(y4, y).numpy()
        row[:, 1] = ((y4.numpy() >= 0.5).astype(labels.dtype) == labels).mean(axis=(1, 2))
        for i, weights in enumerate((grads.w1, grads.w2, model.w1, model.w2), start=2):
            row[:, i] = norm(weights).numpy()
        saturated = active & ~np.isfinite(loss)
        if saturated.any():
            loss[saturated] = bce_with_logits(s4, y).numpy()[saturated]
            saturated_at[saturated & np.isfinite(loss) & (saturated_at < 0)] = epoch
        if epoch == 0:
            bound = diverge_factor * np.maximum(loss, math.log(2))
        stopped = active & ((loss > bound) | ~np.isfinite(row).all(axis=1))
        if stopped.any():
            diverged_at[stopped] = epoch
            active &= ~stopped
            if not active.any():
                break
        filled += 1
        if filled == len(table):
            chunks.append(table)
            table = np.empty((min(epochs - epoch - 1, _CHUNK), size, len(METRICS)))
            filled = 0
        # Stopped members keep their weights (and go on computing, unused, with them).
        model.step(grads, lrs, None if active.all() else torch.from_numpy(active))
        if on_epoch is not None:
            on_epoch(int(active.sum()))
    chunks.append(table[:filled])
    rows = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    histories = []
    for b in range(size):
        diverged, saturated = int(diverged_at[b]), int(saturated_at[b])
        end = diverged if diverged >= 0 else epochs
        histories.append(
            History(
                metrics={name: rows[:end, b, i].copy() for i, name in enumerate(METRICS)},
                diverged_at=diverged if diverged >= 0 else None,
                saturated_at=saturated if saturated >= 0 else None,
                w1=model.w1[b].clone(),
                w2=model.w2[b].clone(),
            )
        )
    return histories
