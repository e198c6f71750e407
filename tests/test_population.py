"""A member's numbers do not depend on its population: trained with any others, in any
position, it gets exactly (bit for bit) what it gets alone (see fnnlab.model)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import LEARNING_RATES, log_uniform_int
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fnnlab import train
from fnnlab.data import load_iris2
from fnnlab.model import ScratchFNN, bce_with_logits, matmul, mean_bce
from fnnlab.train import METRICS, History, fit, fit_population

SIZES = (2, 3, 7, 20, 60, 64)
WIDTHS = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129)
WIDTHS += (255, 256, 257, 511, 512, 513, 1023, 1024)
RATES = (0.001, 0.1, 1.0, 1000.0)
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
MODES = pytest.mark.parametrize("backprop", ["tutorial", "exact"])


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bits(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """The values' bit patterns, so that equal means bit for bit (NaN and -0.0 included)."""
    a = t.numpy() if isinstance(t, torch.Tensor) else t
    return a.view(np.int32 if a.dtype == np.float32 else np.int64)


def assert_same_bits(a, b, what: str) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, what
    assert np.array_equal(bits(a), bits(b)), what


def assert_same_history(got: History, want: History, what: str) -> None:
    assert (got.diverged_at, got.saturated_at) == (want.diverged_at, want.saturated_at), what
    for name in METRICS:
        assert_same_bits(got.metrics[name], want.metrics[name], f"{what}: {name}")
    assert_same_bits(got.w1, want.w1, f"{what}: w1")
    assert_same_bits(got.w2, want.w2, f"{what}: w2")


# --- why the formulation matters ----------------------------------------------------------


def test_bmm_is_not_batch_invariant_on_this_build_and_matmul_is():
    """The output logits as torch.bmm computes them: a member's last bits change when a
    second member joins it (float32, widths 5-1024 here). fnnlab.model.matmul's do not."""
    gen = torch.Generator().manual_seed(0)
    differs = []
    for width in (5, 8, 16, 32, 128):
        y2 = torch.rand(2, 100, width, generator=gen)
        w2 = torch.randn(2, width, 1, generator=gen)
        if not torch.equal(torch.bmm(y2[:1], w2[:1]), torch.bmm(y2, w2)[:1]):
            differs.append(width)
        assert torch.equal(matmul(y2[:1], w2[:1]), matmul(y2, w2)[:1])
    if not differs:
        pytest.skip("torch.bmm happens to be batch-invariant for these shapes on this machine")
    assert differs


# --- one epoch, every width ---------------------------------------------------------------


def one_epoch(model: ScratchFNN, X, y, lrs: list[float]) -> dict[str, torch.Tensor]:
    """Every number an epoch of fit computes from the model, and its weights after a step."""
    y2, s4, y4 = model.forward(X)
    grads = model.backward(X, y, y2, y4)
    norm = torch.linalg.vector_norm
    numbers = {
        "y2": y2,
        "s4": s4,
        "y4": y4,
        "loss": mean_bce(y4, y),
        "loss from logits": bce_with_logits(s4, y),
        "grad w1": grads.w1,
        "grad w2": grads.w2,
        "grad norm w1": norm(grads.w1, dim=(-2, -1)),
        "grad norm w2": norm(grads.w2, dim=(-2, -1)),
        "weight norm w1": norm(model.w1, dim=(-2, -1)),
    }
    model.step(grads, torch.tensor(lrs, dtype=model.w1.dtype))
    numbers["w1 after"], numbers["w2 after"] = model.w1, model.w2
    return numbers


@DTYPES
@MODES
def test_one_epoch_of_a_member_does_not_depend_on_its_population(dtype, backprop):
    """Widths 1-1024, populations of 2-64 drawn in random order from 64 members: every
    intermediate, the loss, the gradients, their norms and the updated weights."""
    X, y = load_iris2(dtype=dtype)
    order = random.Random(0)
    for width in WIDTHS:
        alone = [
            one_epoch(ScratchFNN(2, width, seed=s, backprop=backprop, dtype=dtype), X, y, [lr])
            for s, lr in enumerate(RATES * 16)
        ]
        for size in SIZES:
            seeds = order.sample(range(64), size)
            lrs = [RATES[s % 4] for s in seeds]
            model = ScratchFNN(2, width, seed=seeds, backprop=backprop, dtype=dtype)
            together = one_epoch(model, X, y, lrs)
            for position, seed in enumerate(seeds):
                for name, values in together.items():
                    what = f"width {width}, {size} members, seed {seed} at {position}: {name}"
                    assert_same_bits(values[position], alone[seed][name][0], what)


# --- whole runs -------------------------------------------------------------------------------

# 5 seeds x 4 learning rates: at lr 1000 members diverge at once (most saturate first), at
# lr 1 some saturate at width 128 and go on, and at width 32 the tutorial update at lr 0.1
# oscillates (a chaotic run, where a last-bit difference would grow).
MEMBERS = [(seed, lr) for seed in range(5) for lr in RATES]
EPOCHS = 120


def train_alone(width, backprop, dtype, epochs) -> dict[tuple[int, float], History]:
    X, y = load_iris2(dtype=dtype)
    return {
        (seed, lr): fit(
            ScratchFNN(2, width, seed=seed, backprop=backprop, dtype=dtype), X, y, lr, epochs
        )
        for seed, lr in MEMBERS
    }


def train_together(members, width, backprop, dtype, epochs) -> list[History]:
    X, y = load_iris2(dtype=dtype)
    model = ScratchFNN(2, width, seed=[s for s, _ in members], backprop=backprop, dtype=dtype)
    return fit_population(model, X, y, [lr for _, lr in members], epochs)


def check_populations(width, backprop, dtype, epochs, sizes) -> dict:
    """Train the MEMBERS alone, then in populations of the given sizes (randomly ordered;
    sizes over 20 add more seeds), and check that each is the same in every one."""
    alone = train_alone(width, backprop, dtype, epochs)
    order = random.Random(width)
    for size in sizes:
        if size <= len(MEMBERS):
            members = order.sample(MEMBERS, size)
        else:
            more = [(seed, lr) for seed in range(size // 4) for lr in RATES]
            members = order.sample(more, len(more))
        histories = train_together(members, width, backprop, dtype, epochs)
        assert len(histories) == len(members)
        for position, (member, history) in enumerate(zip(members, histories, strict=True)):
            if member in alone:
                assert_same_history(
                    history, alone[member], f"{size} members, {member} at {position}"
                )
    return alone


@DTYPES
@MODES
@pytest.mark.parametrize("width", [1, 8, 32, 128])
def test_a_run_does_not_depend_on_its_population(width, backprop, dtype):
    """Populations of 2-64 members in random order, 64 in the groups fit_population makes
    (one up to width 32 in float32, else of 8 to 33 members: 64 in one group at every
    width is in the test of one epoch above)."""
    alone = check_populations(width, backprop, dtype, EPOCHS, (20, 2, 3, 7, 64))
    # What the populations held: members that ran to the end, and from width 8 on,
    # members that saturated (at lr 1000, then diverged at once or an epoch later).
    finished = [h for h in alone.values() if h.diverged_at is None]
    assert finished
    if (width, backprop) != (1, "exact"):  # the one case where none diverges
        assert len(finished) < len(alone)
    if width > 1:
        assert any(h.saturated_at is not None for h in alone.values())
    if width == 128 and dtype == torch.float32:  # saturated and still training
        assert any(h.saturated_at is not None for h in finished)
    if width == 32 and backprop == "tutorial":  # oscillating: the loss goes up many times
        losses = alone[(0, 0.1)].metrics["loss"]
        assert alone[(0, 0.1)].diverged_at is None and (np.diff(losses) > 0).sum() > 20


def test_a_run_at_width_1024_does_not_depend_on_its_population(monkeypatch):
    """fit_population's groups are of 2 members at this width: here also one of 20."""
    check_populations(1024, "tutorial", torch.float32, 40, (20, 7))
    monkeypatch.setattr(train, "_GROUP_BYTES", 1 << 40)
    check_populations(1024, "tutorial", torch.float32, 40, (20,))


def test_saturating_members_after_hundreds_of_epochs():
    """h8, lr 1: some seeds saturate after hundreds of epochs and go on, the others do not.
    Each is the same with the others as alone. Which seeds saturate depends on the CPU
    (its vector kernels differ in the last bits, and lr 1 is chaotic): 4 and 5 on an AMD
    EPYC (around epochs 830 and 660), 4 and 11 on an Intel Xeon (671 and 798)."""
    X, y = load_iris2()
    seeds = [5, 0, 4, 1, 11]
    together = fit_population(ScratchFNN(2, 8, seed=seeds), X, y, [1.0] * len(seeds), 900)
    for seed, history in zip(seeds, together, strict=True):
        assert_same_history(history, fit(ScratchFNN(2, 8, seed=seed), X, y, 1.0, 900), str(seed))
    saturated = [h.saturated_at is not None for h in together]
    assert any(saturated) and not all(saturated), saturated
    assert all(h.diverged_at is None and h.epochs_run == 900 for h in together)


# --- stopping members ---------------------------------------------------------------------


def test_a_member_with_non_finite_weights_stops_and_leaks_nothing():
    X, y = load_iris2()
    model = ScratchFNN(2, 8, seed=[0, 1, 2])
    model.w1[1, 0, 3] = float("nan")
    model.w2[1, 5, 0] = float("inf")
    frozen_w1, frozen_w2 = model.w1[1].clone(), model.w2[1].clone()
    histories = fit_population(model, X, y, [0.1, 0.1, 0.1], 50)
    assert histories[1].diverged_at == 0 and histories[1].epochs_run == 0
    assert_same_bits(histories[1].w1, frozen_w1, "w1")
    assert_same_bits(histories[1].w2, frozen_w2, "w2")
    for member, seed in ((0, 0), (2, 2)):
        alone = fit(ScratchFNN(2, 8, seed=seed), X, y, 0.1, 50)
        assert_same_history(histories[member], alone, f"seed {seed}")
    # Trained in place: the model holds the weights the histories report.
    assert torch.equal(model.w1[0], histories[0].w1) and torch.equal(model.w2[2], histories[2].w2)


def test_training_ends_when_every_member_has_stopped():
    X, y = load_iris2()
    calls = []
    histories = fit_population(
        ScratchFNN(2, 32, seed=[0, 1, 2]), X, y, [1000.0, 0.01, 1000.0], 30, on_epoch=calls.append
    )
    assert [h.diverged_at for h in histories] == [1, None, 1]
    assert calls == [3] + [1] * 29  # members trained in each epoch
    calls.clear()
    histories = fit_population(
        ScratchFNN(2, 32, seed=[0, 1]), X, y, [1000.0, 1000.0], 10_000, on_epoch=calls.append
    )
    assert [h.diverged_at for h in histories] == [1, 1] and calls == [2]


def test_rows_cross_chunk_boundaries(monkeypatch):
    """Per-epoch rows are packed a chunk of epochs at a time; a small chunk gives the same
    histories, also for a member that stops in the middle of one."""
    monkeypatch.setattr(train, "_CHUNK", 7)
    X, y = load_iris2()
    members = [(0, 0.01), (1, 1000.0), (2, 0.5)]
    small = train_together(members, 8, "tutorial", torch.float32, 30)
    monkeypatch.undo()
    for (seed, lr), history in zip(members, small, strict=True):
        alone = fit(ScratchFNN(2, 8, seed=seed), X, y, lr, 30)
        assert_same_history(history, alone, str(seed))
        for values in history.metrics.values():
            assert values.dtype == np.float64 and values.flags.c_contiguous


def test_fit_is_for_one_network_and_rates_are_one_per_member():
    X, y = load_iris2()
    with pytest.raises(ValueError, match="fit_population"):
        fit(ScratchFNN(2, 8, seed=[0, 1]), X, y, 0.1, 5)
    with pytest.raises(ValueError, match="3 learning rates for 2 members"):
        fit_population(ScratchFNN(2, 8, seed=[0, 1]), X, y, [0.1, 0.1, 0.1], 5)


# --- any configuration ------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    width=log_uniform_int(1, 1024),
    epochs=log_uniform_int(1, 3000),
    members=st.lists(
        st.tuples(st.integers(0, 2**32 - 1), LEARNING_RATES), min_size=2, max_size=8, unique=True
    ),
    backprop=st.sampled_from(["tutorial", "exact"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    chunk=st.sampled_from([train._CHUNK, 1, 5]),
    group=st.sampled_from([train._GROUP_BYTES, 1, 3 * 100 * 8]),
)
@example(1024, 600, [(0, 1000.0), (1, 1e-5), (2, 0.1)], "exact", torch.float64, 5, 1)
@example(1, 3000, [(s, 10.0 ** (s - 5)) for s in range(9)], "tutorial", torch.float32, 1, 2400)
def test_any_population_gives_each_member_its_run_alone(
    width, epochs, members, backprop, dtype, chunk, group
):
    """Any width, epochs, learning rates (1e-5 to 1e3, so members that diverge at once, late
    or never), seeds, mode and dtype: each member of a population, also one split in
    groups of one or a few members or packed a few epochs at a time, gets exactly what it
    gets alone."""
    X, y = load_iris2(dtype=dtype)
    alone = [
        fit(ScratchFNN(2, width, seed=s, backprop=backprop, dtype=dtype), X, y, lr, epochs)
        for s, lr in members
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "_CHUNK", chunk)
        patch.setattr(train, "_GROUP_BYTES", group)
        together = train_together(members, width, backprop, dtype, epochs)
    for position, (member, got, want) in enumerate(zip(members, together, alone, strict=True)):
        assert_same_history(got, want, f"{member} at {position}")
        assert got.epochs_run == (epochs if want.diverged_at is None else want.diverged_at)
