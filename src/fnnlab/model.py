"""ScratchFNN: the tutorial's 2 -> hidden (sigmoid) -> 1 (sigmoid) network, no biases.

Forward and backward are written by hand with tensor ops; autograd is never used.
A plain class, not an nn.Module: the tutorial overrode nn.Module.train, which breaks it.

One ScratchFNN is a population of B such networks of one shape, trained together: every
tensor has a leading member axis, and member b's numbers are exactly (bit for bit) what
they would be if it were trained alone, whatever B and wherever it sits in the population.
That needs care, because the tutorial's update is chaotic enough to grow a difference in
the last bit to O(1) within 100 epochs, and the obvious batched ops are not like that on
this CPU build: torch.bmm (and einsum, which calls it) gives a member different last bits
in a batch of 1 and of 2, and torch.sigmoid, torch.log1p and torch.logaddexp give an element
different last bits depending on where it sits in the tensor (vector body or scalar tail).
So every product of matrices here sums within one member's slice of the tensors, in an
order fixed by the shapes alone (`matmul` below, a broadcast multiply and a sum, or for
X @ w1 a sum over the few inputs written out), and the nonlinearities are written from exp,
log and the four arithmetic operations, whose results do not depend on an element's place.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fnnlab.names import BACKPROP_MODES


@dataclass
class Gradients:
    w1: torch.Tensor
    w2: torch.Tensor


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for each member (a leading batch axis on either), as the products summed over
    the shared axis. The sum runs within one member's slice, in an order fixed by the shapes
    alone, so a member's result does not depend on the others (unlike torch.bmm's)."""
    if a.shape[-1] == 1:  # an outer product: nothing to sum
        return a * b
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def sigmoid(s: torch.Tensor) -> torch.Tensor:
    """1 / (1 + e^-s), as the tutorial wrote it (torch.sigmoid's last bit depends on the
    element's place in the tensor). Computed in place: pass a tensor nothing else needs."""
    return s.neg_().exp_().add_(1).reciprocal_()


def _log1p(z: torch.Tensor) -> torch.Tensor:
    """log(1 + z), accurate for small z (torch.log1p's last bit depends on the element's
    place in the tensor): log(u) * z / (u - 1) with u = 1 + z corrects u's rounding."""
    u = 1 + z
    return torch.where(u == 1, z, torch.log(u) * (z / (u - 1)))


def mean_bce(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss the tutorial prints: mean binary cross-entropy, written as it wrote it.
    One value per member (the mean over the last two axes: the samples and the output)."""
    return torch.mean(-(y * torch.log(y_hat) + (1 - y) * torch.log(1 - y_hat)), dim=(-2, -1))


def bce_with_logits(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_bce(sigmoid(s), y) from the logits s: finite where the output rounds to exactly
    0 or 1 and mean_bce meets log(0) (log(1 + e^s) - y*s, with log(1 + e^s) written as
    max(s, 0) + log(1 + e^-|s|))."""
    softplus = torch.clamp(s, min=0) + _log1p(torch.exp(-s.abs()))
    return torch.mean(softplus - y * s, dim=(-2, -1))


def half_sse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss whose gradient the tutorial's backward pass actually computes."""
    return 0.5 * torch.sum((y_hat - y) ** 2, dim=(-2, -1))


class ScratchFNN:
    """Weights w1 (B x input_dim x hidden_dim) and w2 (B x hidden_dim x 1), member b drawn
    with torch.randn from its own seed, exactly as a lone network with that seed.

    seed: one seed (a population of one, the tutorial's network) or one per member.

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
        seed: int | Sequence[int] = 0,
        backprop: str = "tutorial",
        discard_draws: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if backprop not in BACKPROP_MODES:
            raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {backprop!r}")
        self.backprop = backprop
        seeds = list(seed) if isinstance(seed, Sequence) else [seed]
        w1, w2 = [], []
        for member_seed in seeds:
            # A private generator: seeding it gives the same numbers as torch.manual_seed
            # without touching global state shared with other jobs in this process.
            gen = torch.Generator().manual_seed(member_seed)
            for _ in range(discard_draws):
                torch.randn(input_dim, hidden_dim, generator=gen)
            w1.append(torch.randn(input_dim, hidden_dim, generator=gen))
            w2.append(torch.randn(hidden_dim, 1, generator=gen))
        # Drawn in float32 (as published) and then cast, so every dtype starts alike.
        self.w1 = torch.stack(w1).to(dtype)
        self.w2 = torch.stack(w2).to(dtype)

    @property
    def size(self) -> int:
        """The number of members, B."""
        return self.w1.shape[0]

    def members(self, start: int, stop: int) -> ScratchFNN:
        """Members start..stop-1 as a population of their own whose weights are views of
        these: training it trains them in place."""
        part = copy.copy(self)
        part.w1, part.w2 = self.w1[start:stop], self.w2[start:stop]
        return part

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the hidden activations y2 (B x N x hidden_dim), the output's logits
        s4 and the output y4 = sigmoid(s4) (both B x N x 1)."""
        # X @ w1 as a sum of outer products, one input at a time: the inputs are few, and
        # for 20 members at widths 8-128 this is 2-4x faster than matmul's single product.
        columns, rows = X.split(1, dim=1), self.w1.split(1, dim=1)
        s2 = columns[0] * rows[0]
        for column, row in zip(columns[1:], rows[1:], strict=True):
            s2 += column * row
        y2 = sigmoid(s2)
        s4 = matmul(y2, self.w2)
        y4 = sigmoid(s4.clone())
        return y2, s4, y4

    def backward(
        self, X: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, y4: torch.Tensor
    ) -> Gradients:
        """Gradients of this mode's loss with respect to w1 and w2, per member."""
        if self.backprop == "tutorial":
            delta_out = (y4 - y) * y4 * (1 - y4)
        else:
            delta_out = (y4 - y) / y.shape[-2]
        grad_w2 = matmul(y2.mT, delta_out)
        delta_hidden = matmul(delta_out, self.w2.mT)
        delta_hidden *= y2
        delta_hidden *= 1 - y2
        # X.T made contiguous (it is small): torch orders a broadcast product's loops by its
        # inputs' strides, and with a transposed view it would loop over the inputs inside
        # the samples, in blocks of 2 x hidden_dim values (1.3-2x slower at widths 8-128).
        grad_w1 = matmul(X.T.contiguous(), delta_hidden)
        return Gradients(w1=grad_w1, w2=grad_w2)

    def step(
        self, grads: Gradients, lr: float | torch.Tensor, active: torch.Tensor | None = None
    ) -> None:
        """Plain gradient descent, in place, member b with learning rate lr[b] (or one lr
        for all). Members whose active[b] is False keep their weights: their update is
        replaced by 0, not multiplied by it, so a non-finite gradient stays theirs."""
        lr = torch.as_tensor(lr, dtype=self.w1.dtype).reshape(-1, 1, 1)
        for weights, grad in ((self.w1, grads.w1), (self.w2, grads.w2)):
            update = lr * grad
            if active is not None:
                update = torch.where(active.reshape(-1, 1, 1), update, 0)
            weights -= update
