"""One training job: validated config in, one complete MLflow run out.

The run is FINISHED only after every metric, plot, config file and the weights are
written, so a FINISHED run is always complete. A job that raises ends its run
FAILED (KILLED when interrupted) with the error recorded, then re-raises.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from fnnlab import plot_helper, reference
from fnnlab.config import check_values, fingerprint, flatten, to_yaml
from fnnlab.data import load_iris2
from fnnlab.model import ScratchFNN
from fnnlab.tracking import Store, end_run, log_values, open_store, process_tags, start_run
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
    return fit(model, X, y, lr=cfg.optim.lr, epochs=cfg.train.epochs, on_epoch=on_epoch)


def summarize(history: History, cfg: DictConfig) -> dict[str, float]:
    """Summary metrics: final values, best loss, and the deviation from the published curve."""
    losses = history.metrics["loss"]
    summary = {f"final/{k}": v for k, v in history.final().items()}
    summary["epochs_run"] = history.epochs_run
    if losses:
        best = min(range(len(losses)), key=losses.__getitem__)
        summary["best/loss"], summary["best/epoch"] = losses[best], best
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
    curves = plot_helper.Curves(history.metrics, history.diverged_at)
    return plot_helper.begin(curves, art, name, published)


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
    store = store or open_store(cfg.tracking.uri, cfg.tracking.experiment)
    name = run_name(cfg)
    tags = {"role": "job", "fingerprint": fingerprint(cfg), **process_tags(), **(sweep_tags or {})}
    params = flatten(cfg)
    run_id = start_run(store, name, tags, parent_run_id)
    pending = plot_helper.Pending()
    try:
        history = train_model(cfg, on_epoch)
        summary = summarize(history, cfg)
        art = output_dir / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        # Plots first: the helper draws them while this process writes the metrics.
        pending = begin_plots(history, cfg, art, name)
        diverged = history.diverged_at is not None
        end_tags = {"diverged": str(diverged).lower()}
        if diverged:
            end_tags["diverged_at"] = str(history.diverged_at)
        log_values(
            store,
            run_id,
            params=params,
            series=history.metrics,
            summary=summary,
            tags=end_tags,
        )
        write_files(history, cfg, output_dir, art)
        pending.wait()
        store.client.log_artifacts(run_id, str(art))
    except BaseException as exc:
        pending.discard()
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
        raise
    end_run(store, run_id, "FINISHED")
    return JobResult(
        run_id=run_id,
        run_name=name,
        experiment_id=store.experiment_id,
        history=history,
        summary=summary,
    )
