"""fit(): full-batch gradient descent with no I/O inside the loop.

It takes plain values and returns a History, so it is testable against autograd,
fast, and usable from any launcher; tracking happens afterwards, from the History.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from fnnlab.model import ScratchFNN, bce_with_logits, mean_bce
from fnnlab.names import METRICS

# A run diverges when its loss passes this many times the larger of its starting loss and
# ln 2 (the loss of predicting 0.5 everywhere), or a weight or gradient stops being finite.
DIVERGE_FACTOR = 100.0
# Epoch rows are gathered as Python floats this many at a time, then packed into an array:
# memory stays at 48 bytes an epoch however long the run.
_CHUNK = 4096


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
    """Train in place for `epochs` full-batch steps.

    Training stops at the first epoch whose loss is not finite or exceeds
    diverge_factor * max(loss at epoch 0, ln 2), or whose weight or gradient norms are
    not finite: the History keeps the epochs before it and records where it diverged.
    A saturated output (exactly 0 or 1, so the tutorial's formula meets log(0)) is not
    divergence: that epoch's loss is computed from the logits instead, finite, and the
    first such epoch is recorded. on_epoch(1), if given, is called after each epoch (a
    progress bar's update); sweeps pass None and pay nothing.
    """
    chunks: list[np.ndarray] = []
    rows: list[list[float]] = []
    diverged_at = saturated_at = None
    bound = math.inf
    norm = torch.linalg.vector_norm
    for epoch in range(epochs):
        y2, y4 = model.forward(X)
        loss = mean_bce(y4, y)
        grads = model.backward(X, y, y2, y4)
        accuracy = ((y4 >= 0.5).to(y.dtype) == y).to(torch.float64).mean()
        row = torch.stack(
            [loss, accuracy, norm(grads.w1), norm(grads.w2), norm(model.w1), norm(model.w2)]
        ).tolist()
        if not math.isfinite(row[0]):
            row[0] = bce_with_logits(y2 @ model.w2, y).item()
            if saturated_at is None and math.isfinite(row[0]):
                saturated_at = epoch
        if epoch == 0:
            bound = diverge_factor * max(row[0], math.log(2))
        if row[0] > bound or not all(map(math.isfinite, row)):
            diverged_at = epoch
            break
        rows.append(row)
        if len(rows) == _CHUNK:
            chunks.append(np.array(rows))
            rows = []
        model.step(grads, lr)
        if on_epoch is not None:
            on_epoch(1)
    if rows or not chunks:
        chunks.append(np.array(rows, dtype=np.float64).reshape(-1, len(METRICS)))
    table = np.concatenate(chunks)
    return History(
        metrics={name: table[:, i].copy() for i, name in enumerate(METRICS)},
        diverged_at=diverged_at,
        saturated_at=saturated_at,
        w1=model.w1.clone(),
        w2=model.w2.clone(),
    )
