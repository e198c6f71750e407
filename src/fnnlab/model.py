"""ScratchFNN: the tutorial's 2 -> hidden (sigmoid) -> 1 (sigmoid) network, no biases.

Forward and backward are written by hand with tensor ops; autograd is never used.
A plain class, not an nn.Module: the tutorial overrode nn.Module.train, which breaks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fnnlab.names import BACKPROP_MODES


@dataclass
class Gradients:
    w1: torch.Tensor
    w2: torch.Tensor


def sigmoid(s: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-s))


def mean_bce(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss the tutorial prints: mean binary cross-entropy, written as it wrote it."""
    return torch.mean(-(y * torch.log(y_hat) + (1 - y) * torch.log(1 - y_hat)))


def bce_with_logits(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_bce(sigmoid(s), y) from the logits s: finite where the output rounds to exactly
    0 or 1 and mean_bce meets log(0) (log(1 + e^s) - y*s, with log(1 + e^s) as logaddexp)."""
    return torch.mean(torch.logaddexp(torch.zeros_like(s), s) - y * s)


def half_sse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss whose gradient the tutorial's backward pass actually computes."""
    return 0.5 * torch.sum((y_hat - y) ** 2)


class ScratchFNN:
    """Weights w1 (input_dim x hidden_dim) and w2 (hidden_dim x 1), drawn with torch.randn.

    backprop="tutorial" reproduces the published update: the output delta is
    (y4 - y) * y4 * (1 - y4), summed over samples. That is the gradient of
    0.5 * sum((y4 - y)^2), not of the cross-entropy that the tutorial logs.
    backprop="exact" uses the true gradient of the logged loss, the mean binary
    cross-entropy, whose output delta is (y4 - y) / N.

    discard_draws: how many torch.randn(input_dim, hidden_dim) draws to throw away
    after seeding and before drawing w1. The published notebook printed one such
    draw in a cell of its own, so the reference curve needs discard_draws=1.
    """

    def __init__(
        self,
        input_dim: int = 2,
        hidden_dim: int = 32,
        *,
        seed: int = 0,
        backprop: str = "tutorial",
        discard_draws: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if backprop not in BACKPROP_MODES:
            raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {backprop!r}")
        self.backprop = backprop
        # A private generator: seeding it gives the same numbers as torch.manual_seed
        # without touching global state shared with other jobs in this process.
        gen = torch.Generator().manual_seed(seed)
        for _ in range(discard_draws):
            torch.randn(input_dim, hidden_dim, generator=gen)
        # Drawn in float32 (as published) and then cast, so every dtype starts alike.
        self.w1 = torch.randn(input_dim, hidden_dim, generator=gen).to(dtype)
        self.w2 = torch.randn(hidden_dim, 1, generator=gen).to(dtype)

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the hidden activations y2 and the output y4."""
        y2 = sigmoid(X @ self.w1)
        y4 = sigmoid(y2 @ self.w2)
        return y2, y4

    def backward(
        self, X: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, y4: torch.Tensor
    ) -> Gradients:
        """Gradients of this mode's loss with respect to w1 and w2."""
        if self.backprop == "tutorial":
            delta_out = (y4 - y) * y4 * (1 - y4)
        else:
            delta_out = (y4 - y) / y.shape[0]
        grad_w2 = y2.T @ delta_out
        delta_hidden = (delta_out @ self.w2.T) * y2 * (1 - y2)
        grad_w1 = X.T @ delta_hidden
        return Gradients(w1=grad_w1, w2=grad_w2)

    def step(self, grads: Gradients, lr: float) -> None:
        """Plain gradient descent, in place."""
        self.w1 -= lr * grads.w1
        self.w2 -= lr * grads.w2
