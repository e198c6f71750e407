"""One training job: validated config in, one complete MLflow run out.

The run is FINISHED only after every metric, plot, config file and the weights are
written, so a FINISHED run is always complete. A job that raises ends its run
FAILED (KILLED when interrupted) with the error recorded, then re-raises. In a sweep
run by the fnnlab launcher, a run's end (its plots, artifacts and status) can come
after its job has returned, in the next job (see deferred_ends).
"""

from __future__ import annotations

import functools
import logging
import shutil
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from fnnlab import plot_helper, reference
from fnnlab.config import check_values, fingerprint, flatten, to_yaml
from fnnlab.data import load_iris2
from fnnlab.model import ScratchFNN
from fnnlab.tracking import (
    Store,
    end_run,
    log_values,
    open_store,
    process_tags,
    start_run,
    upload_artifacts,
)
from fnnlab.train import History, fit

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    run_id: str
    run_name: str
    experiment_id: str
    history: History
    summary: dict[str, float]


def run_name(cfg: DictConfig) -> str:
    """Short and readable in the MLflow UI, e.g. h32-lr0.001-s0 (-exact for that mode)."""
    name = f"h{cfg.model.hidden_dim}-lr{cfg.optim.lr:g}-s{cfg.seed}"
    return name if cfg.model.backprop == "tutorial" else f"{name}-{cfg.model.backprop}"


def train_model(cfg: DictConfig, on_epoch: Callable[[int], object] | None = None) -> History:
    """Data, model and training from the config alone: no I/O, no tracking."""
    # One intra-op thread: tensors this small gain nothing from more, and with parallel
    # workers on shared cores the extra threads spin against each other (measured 5-30x
    # slower fits). Row-sized ops run single-threaded either way, so the numbers match.
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    dtype = getattr(torch, cfg.model.dtype)
    X, y = load_iris2(list(cfg.data.features), cfg.data.normalize, dtype)
    model = ScratchFNN(
        X.shape[1],
        cfg.model.hidden_dim,
        seed=cfg.seed,
        backprop=cfg.model.backprop,
        discard_draws=cfg.model.init_discard_draws,
        dtype=dtype,
    )
    return fit(
        model,
        X,
        y,
        lr=cfg.optim.lr,
        epochs=cfg.train.epochs,
        on_epoch=on_epoch,
        diverge_factor=cfg.train.diverge_factor,
    )


def summarize(history: History, cfg: DictConfig) -> dict[str, float]:
    """Summary metrics: final values, best loss, and the deviation from the published curve."""
    losses = history.metrics["loss"]
    summary = {f"final/{k}": v for k, v in history.final().items()}
    summary["epochs_run"] = history.epochs_run
    if len(losses):
        best = int(np.argmin(losses))
        summary["best/loss"], summary["best/epoch"] = float(losses[best]), best
    if cfg.reference:
        summary["reference/max_abs_dev"] = reference.max_abs_deviation(losses)
    return summary


def write_files(history: History, cfg: DictConfig, out: Path, art: Path) -> None:
    """The run's config files and weights, beside its plots in its artifact folder."""
    (art / "config.yaml").write_text(to_yaml(cfg, resolve=True))
    hydra_dir = out / ".hydra"
    if hydra_dir.is_dir():
        shutil.copytree(hydra_dir, art / "hydra", dirs_exist_ok=True)
    torch.save({"w1": history.w1, "w2": history.w2}, art / "weights.pt")


def begin_plots(history: History, cfg: DictConfig, art: Path, name: str) -> plot_helper.Pending:
    """The per-run PNGs, drawn in the sweep's plot helper when there is one (see plot_helper)."""
    if not cfg.tracking.plots:
        return plot_helper.Pending()
    published = reference.published_losses() if cfg.reference else None
    curves = plot_helper.Curves.of(history)
    return plot_helper.begin(curves, art, name, published)


@dataclass
class _End:
    """What is left of a run once its values and files are written: its plots, which
    may still be drawing in the plot helper, the upload of its artifacts, and its end."""

    store: Store
    run_id: str
    name: str
    params: dict[str, object]
    art: Path
    pending: plot_helper.Pending

    def upload(self) -> None:
        """Wait for the plots and upload the artifact folder (all of it, plots included)."""
        self.pending.wait()
        upload_artifacts(self.store, self.run_id, str(self.art))


def _end_with_error(
    store: Store, run_id: str, name: str, params: dict[str, object], exc: BaseException
) -> None:
    """End a run FAILED, or KILLED when interrupted, with the error and its traceback."""
    status = "KILLED" if isinstance(exc, KeyboardInterrupt | SystemExit) else "FAILED"
    log.error("run %s (%s) ended %s: %s: %s", name, run_id, status, type(exc).__name__, exc)
    try:
        error = f"{type(exc).__name__}: {exc}"
        # Params too, so a run that failed early still says what it was (re-logging
        # a param with the same value is allowed when the failure came after them).
        log_values(
            store,
            run_id,
            params=params,
            tags={"error": error, "error.traceback": traceback.format_exc()[-4000:]},
        )
    finally:
        end_run(store, run_id, status)


# Runs whose end is deferred, oldest first, while a deferred_ends() block is open.
_deferred: list[_End] | None = None
_deferred_failed: dict[str, BaseException] = {}


@contextmanager
def deferred_ends() -> Iterator[dict[str, BaseException]]:
    """Within this block, a run whose plots are in the plot helper ends in the next job.

    Such a run's values and files are all written when its job returns; what is left
    is waiting for its PNGs, uploading its artifacts and ending it FINISHED. The next
    job does that after it has trained and handed its own plots to the helper, and the
    block does it for the last ones, however it exits (the runs are complete; an
    interrupt meanwhile ends them KILLED). So the helper draws a run's plots while the
    next run is composed, created and trained, instead of the sweep waiting for them.

    The fnnlab launcher opens it around the jobs it runs one after another. It yields
    {run_id: error} for the runs that failed at their end: their jobs had already
    returned, and the launcher marks them failed. So Hydra's on_job_end callbacks, and
    the line printed for a job, come before its run is FINISHED.
    """
    global _deferred
    _deferred = []
    _deferred_failed.clear()
    try:
        yield _deferred_failed
    finally:
        try:
            finish_deferred()
        finally:
            _deferred = None


def finish_deferred() -> None:
    """End the deferred runs, oldest first. A run whose end fails ends FAILED and is
    recorded; it does not fail the job that ends it. An interrupt propagates."""
    while _deferred:
        end = _deferred.pop(0)
        try:
            end.upload()
            end_run(end.store, end.run_id, "FINISHED")
        except BaseException as exc:
            _deferred_failed[end.run_id] = exc
            end.pending.discard()
            try:
                _end_with_error(end.store, end.run_id, end.name, end.params, exc)
            except Exception as error:
                log.error("could not end run %s: %s", end.run_id, error)
            if not isinstance(exc, Exception):
                raise


@functools.lru_cache(maxsize=4)
def sweep_store(uri: str, experiment: str, parent_run_id: str) -> Store:
    """The store of a sweep's jobs, opened once per process and sweep (3 ms a job otherwise)."""
    return open_store(uri, experiment)


def run(
    cfg: DictConfig,
    output_dir: Path,
    *,
    parent_run_id: str | None = None,
    sweep_tags: dict[str, str] | None = None,
    store: Store | None = None,
    on_epoch: Callable[[int], object] | None = None,
) -> JobResult:
    """Validate, train, and record one run. Raises ConfigValueError before any run exists."""
    check_values(cfg)
    if store is None:
        uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
        if parent_run_id:
            store = sweep_store(uri, experiment, parent_run_id)
        else:
            store = open_store(uri, experiment)
    name = run_name(cfg)
    tags = {"role": "job", "fingerprint": fingerprint(cfg), **process_tags(), **(sweep_tags or {})}
    params = flatten(cfg)
    run_id = start_run(store, name, tags, parent_run_id)
    pending = plot_helper.Pending()
    deferred = False
    try:
        history = train_model(cfg, on_epoch)
        summary = summarize(history, cfg)
        art = output_dir / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        # Plots first: the helper draws them while this process writes the metrics.
        pending = begin_plots(history, cfg, art, name)
        # Earlier runs' plots were drawn meanwhile: end those runs now (see deferred_ends).
        finish_deferred()
        diverged = history.diverged_at is not None
        end_tags = {"diverged": str(diverged).lower()}
        if diverged:
            end_tags["diverged_at"] = str(history.diverged_at)
        if history.saturated_at is not None:
            end_tags["saturated_at"] = str(history.saturated_at)
        log_values(
            store,
            run_id,
            params=params,
            series=history.metrics,
            summary=summary,
            tags=end_tags,
            every=cfg.tracking.log_every,
        )
        write_files(history, cfg, output_dir, art)
        end = _End(store, run_id, name, params, art, pending)
        if _deferred is not None and pending.in_helper:
            _deferred.append(end)
            deferred = True
        else:
            end.upload()
    except BaseException as exc:
        pending.discard()
        _end_with_error(store, run_id, name, params, exc)
        raise
    if not deferred:
        end_run(store, run_id, "FINISHED")
    return JobResult(
        run_id=run_id,
        run_name=name,
        experiment_id=store.experiment_id,
        history=history,
        summary=summary,
    )
