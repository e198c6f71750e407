"""The published tutorial losses, shipped with the package (see reference_curve.json)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def published_losses() -> dict[int, float]:
    """{epoch: loss} as the tutorial printed them (epochs 0, 20, ..., 100)."""
    text = resources.files("fnnlab").joinpath("reference_curve.json").read_text()
    return {int(epoch): loss for epoch, loss in json.loads(text)["published"].items()}


def max_abs_deviation(losses: list[float]) -> float:
    """Largest |ours - published| over the published epochs this run reached (inf if none)."""
    diffs = [abs(losses[e] - v) for e, v in published_losses().items() if e < len(losses)]
    return max(diffs) if diffs else float("inf")
