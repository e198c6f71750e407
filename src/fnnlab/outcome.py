"""One run in a number and a word: its outcome and its training regime.

Numpy only (no store, no torch, no scipy), so a job tags its run's regime when it ends and
the sweep's analysis (fnnlab.compare) reads the same definitions.

Outcome. A run's outcome is, by default, its mean loss over the last 10% of the epochs it ran
("tail_loss"): less noisy than the last epoch alone when the loss wiggles. A diverged run has no
outcome: callers pass NaN, and such runs count only through the `diverged` column.

Regime. A run is "diverged" when the trainer says so (a weight or gradient stopped being finite,
or its loss passed its bound); this module never re-decides that. Otherwise it is "oscillating"
when, over the last 20% of its epochs (at least 5), the loss moves back and forth: the smaller
of its summed rises and its summed falls there (half of its total variation beyond the net
change) is at least 1% of its mean level in that window, ignoring steps smaller than 0.01% of
the level as rounding noise. Any other run, including one whose loss falls, or slowly rises,
smoothly through the tail, and any run of fewer than 4 epochs, is "stable".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# --- outcome of one run ---------------------------------------------------------------

OUTCOMES = ("tail_loss", "final_loss", "best_loss", "final_accuracy")
HIGHER_IS_BETTER = {"final_accuracy"}
# Outcomes of few values (a fraction of 100 samples): different runs often give equal ones.
COARSE = {"final_accuracy"}


def _ceil_fraction(fraction: float, n: int) -> int:
    """ceil(fraction * n), immune to products such as 0.7 * 10 = 7.000000000000001."""
    return math.ceil(fraction * n - 1e-9)


def run_outcome(
    loss: np.ndarray | Sequence[float],
    accuracy: np.ndarray | Sequence[float] | None = None,
    kind: str = "tail_loss",
    tail_fraction: float = 0.1,
) -> float:
    """One number per run from its per-epoch curves (epoch e at index e).

    "tail_loss" (default) is the mean loss over the last `tail_fraction` of the epochs run,
    at least one epoch: the final loss alone is one draw from a curve that may wiggle.
    "final_loss" and "best_loss" (the minimum) are the classic alternatives, and
    "final_accuracy" is the only kind where higher is better (see HIGHER_IS_BETTER).

    A run without epochs gives NaN. A diverged run has no outcome: callers pass NaN for it
    rather than the value of its truncated curve, and compare() counts it only as diverged.
    """
    if kind not in OUTCOMES:
        raise ValueError(f"kind must be one of {OUTCOMES}, got {kind!r}")
    if kind == "final_accuracy":
        if accuracy is None:
            raise ValueError("kind='final_accuracy' needs the accuracy curve")
        acc = np.asarray(accuracy, dtype=float)
        return float(acc[-1]) if acc.size else math.nan
    curve = np.asarray(loss, dtype=float)
    if curve.size == 0:
        return math.nan
    if kind == "final_loss":
        return float(curve[-1])
    if kind == "best_loss":
        return float(np.min(curve))
    if not 0 < tail_fraction <= 1:
        raise ValueError(f"tail_fraction must be in (0, 1], got {tail_fraction}")
    n_tail = max(1, _ceil_fraction(tail_fraction, curve.size))
    return float(np.mean(curve[-n_tail:]))


# --- training regime of one run -------------------------------------------------------

REGIMES = ("stable", "oscillating", "diverged")


@dataclass(frozen=True)
class RegimeThresholds:
    """When a loss curve counts as oscillating (see classify_regime)."""

    tail_fraction: float = 0.2  # the window: this fraction of the epochs run, at the end
    min_tail_epochs: int = 5  # ... but at least this many epochs (all of a shorter curve)
    min_epochs: int = 4  # curves shorter than this are "stable" (too short to judge)
    swing: float = 0.01  # back-and-forth movement, as a fraction of the window's mean loss
    noise: float = 1e-4  # single steps below this fraction of the mean loss are rounding noise

    def __post_init__(self) -> None:
        if not 0 < self.tail_fraction <= 1:
            raise ValueError(f"tail_fraction must be in (0, 1], got {self.tail_fraction}")
        if self.min_tail_epochs < 2 or self.min_epochs < 2:
            raise ValueError("min_tail_epochs and min_epochs must be at least 2")
        if self.swing <= 0 or self.noise < 0:
            raise ValueError("swing must be positive and noise non-negative")


def oscillation_swing(
    loss: np.ndarray | Sequence[float], thresholds: RegimeThresholds = RegimeThresholds()
) -> float:
    """The back-and-forth movement of the loss over the tail window, relative to its level.

    With R the summed rises and F the summed falls between consecutive epochs in the window
    (steps smaller than `noise` times the level left out), this is min(R, F) / level: half of
    the total variation in excess of the net change. A monotone curve, falling or rising,
    scores 0 however steep; a loss jumping up and down scores about half its range per
    epoch. Using both directions matters on real curves: with backprop="tutorial" the update
    descends the squared error while the logged loss is the cross-entropy, which can rise
    slowly and smoothly for hundreds of epochs (hidden_dim 2 or 8, lr 0.5, 1001 epochs).

    Non-finite values are dropped (the trainer never logs them). NaN for curves shorter than
    `min_epochs` and for a window whose mean level is 0.
    """
    curve = np.asarray(loss, dtype=float)
    curve = curve[np.isfinite(curve)]
    if curve.size < thresholds.min_epochs:
        return math.nan
    k = max(thresholds.min_tail_epochs, _ceil_fraction(thresholds.tail_fraction, curve.size))
    window = curve[-k:]
    level = float(np.mean(np.abs(window)))
    if level == 0:
        return math.nan
    steps = np.diff(window)
    steps = steps[np.abs(steps) >= thresholds.noise * level]
    rises = float(steps[steps > 0].sum())
    falls = float(-steps[steps < 0].sum())
    return min(rises, falls) / level


def classify_regime(
    loss: np.ndarray | Sequence[float],
    diverged: bool,
    thresholds: RegimeThresholds = RegimeThresholds(),
) -> str:
    """The regime of one run: "diverged", "oscillating" or "stable" (see the module docstring).

    `diverged` comes from the trainer and is returned as is: the loss curve of a diverged run
    stops before its non-finite epoch and says nothing more. Otherwise the run is
    "oscillating" when oscillation_swing(loss) >= thresholds.swing.

    Why this measure: gradient descent with a step small enough for the local curvature only
    goes down, so a loss that climbs back and falls again in the tail is overshooting. The
    threshold is relative to the loss level, so rounding wiggles of a converged run (1e-7 on a
    loss of 0.1) never count; and a bump that dies out before the tail does not either. The
    fraction of sign changes of consecutive steps was considered and rejected: on real runs
    that clearly oscillate (backprop="tutorial", widths 2 to 32, lr 0.1 to 0.5, 101 epochs)
    it ranges from 0.1 (a few large bumps) to 1 (a zig-zag).
    """
    if diverged:
        return "diverged"
    swing = oscillation_swing(loss, thresholds)
    if math.isfinite(swing) and swing >= thresholds.swing:
        return "oscillating"
    return "stable"
