"""A launch's jobs trained together: jobs of one shape (everything that decides a run but
its seed and learning rate) are one population for fnnlab.train.fit_population.

The launcher wraps a group's jobs in `trained_together(configs)`; each job then takes its
member's History (`take`) instead of training, and tracks it as its own run. A member's
History is bit for bit the one it gets alone (fnnlab.model), so where a job was trained
does not change what it records, and a job outside a group (any other launcher, a single
run) trains as a population of one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from fnnlab.config import (
    TRAINING_KEYS,
    check_values,
    fingerprint,
    flatten,
    members_within_memory,
)

if TYPE_CHECKING:
    from fnnlab.train import History

log = logging.getLogger(__name__)

# What members differ in; everything else in TRAINING_KEYS makes the shape.
MEMBER_KEYS = ("seed", "optim.lr")

_trained: ContextVar[dict[str, History] | None] = ContextVar("fnnlab_trained", default=None)


def shape(cfg: DictConfig) -> str:
    """What jobs must share to train together (a JSON text, comparable and hashable)."""
    values = flatten(cfg, TRAINING_KEYS)
    return json.dumps({k: v for k, v in values.items() if k not in MEMBER_KEYS}, sort_keys=True)


def groups(configs: Sequence[DictConfig]) -> list[list[int]]:
    """Indices of `configs` in groups of one shape, in order of first appearance, each of
    at most as many members as fit in the memory limit (members_within_memory). A config
    whose shape cannot be known here is a group of its own (see _shape_here)."""
    by_shape: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, cfg in enumerate(configs):
        key = _shape_here(cfg)
        if key is None:
            out.append([i])
            continue
        if key not in by_shape or len(by_shape[key]) >= members_within_memory(cfg):
            by_shape[key] = []
            out.append(by_shape[key])
        by_shape[key].append(i)
    return out


def _shape_here(cfg: DictConfig) -> str | None:
    """cfg's shape, or None for a job that trains alone, in its own job: one of another app
    (the launcher runs any Hydra app), one that fails its checks, or one that cannot be
    read outside its job (${hydra:job.num} resolves only there). Whatever the error, the
    job then meets it where it would with any launcher, and fails, or not, as its own run."""
    if not all(key in cfg for key in TRAINING_KEYS):
        return None
    try:
        check_values(cfg)
        return shape(cfg)
    except Exception:
        return None


def one_thread() -> None:
    """One intra-op thread: tensors this small gain nothing from more, and with parallel
    workers on shared cores the extra threads spin against each other (measured 5-30x
    slower fits). Every fit runs on it, a group's as a lone run's: how torch splits an
    operation between threads must not be able to change a member's numbers."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def fit_configs(
    configs: Sequence[DictConfig], on_epoch: Callable[[int], object] | None = None
) -> list[History]:
    """Train the jobs of `configs` (one shape) as one population: one History each."""
    # Imported here, not with the module: the fnnlab launcher imports this module for any
    # Hydra app, and torch takes seconds to import.
    import torch

    from fnnlab.data import load_iris2
    from fnnlab.model import ScratchFNN
    from fnnlab.train import fit_population

    one_thread()
    first = configs[0]
    dtype = getattr(torch, first.model.dtype)
    X, y = load_iris2(list(first.data.features), first.data.normalize, dtype)
    model = ScratchFNN(
        X.shape[1],
        first.model.hidden_dim,
        seed=[int(cfg.seed) for cfg in configs],
        backprop=first.model.backprop,
        discard_draws=first.model.init_discard_draws,
        dtype=dtype,
    )
    return fit_population(
        model,
        X,
        y,
        [float(cfg.optim.lr) for cfg in configs],
        first.train.epochs,
        on_epoch=on_epoch,
        diverge_factor=first.train.diverge_factor,
    )


@contextmanager
def trained_together(configs: Sequence[DictConfig]) -> Iterator[None]:
    """Train `configs` (one shape) together; their jobs within take their Histories."""
    histories: list[History] = []
    if len(configs) > 1:
        try:
            histories = fit_configs(configs)
        except Exception as exc:  # each job then trains alone, and fails as its own run
            log.warning(
                "%d jobs could not train together (%s); each trains alone", len(configs), exc
            )
    trained = {fingerprint(cfg): h for cfg, h in zip(configs, histories, strict=False)}
    token = _trained.set(trained)
    try:
        yield
    finally:
        _trained.reset(token)


def take(cfg: DictConfig) -> History | None:
    """This job's History if its group trained it (once: the next take trains anew)."""
    trained = _trained.get()
    return None if trained is None else trained.pop(fingerprint(cfg), None)
