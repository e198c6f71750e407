"""One training job: validated config in, one complete MLflow run out.

A run begins and ends in run(): it is created, trained, its values, files and plots are
written and uploaded, and only then is it FINISHED, so a FINISHED run is always complete.
A job that raises ends its run FAILED (KILLED when interrupted) with the error recorded,
then re-raises.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fnnlab import claims, plots, population, provenance, reference
from fnnlab.config import (
    HYDRA_FILES,
    TRAINING_KEYS,
    TrainAppConfig,
    check_values,
    fingerprint,
    flatten,
)
from fnnlab.data import load_iris2
from fnnlab.errortext import first_line
from fnnlab.internals import to_yaml
from fnnlab.names import FINISHED, KILLED, ROLE_JOB, Tag
from fnnlab.outcome import RegimeThresholds, classify_regime, run_outcome
from fnnlab.tracking import (
    Store,
    end_after_error,
    end_run,
    log_values,
    open_store_once,
    process_tags,
    start_run,
    status_after,
    upload_artifacts,
)
from fnnlab.train import History

log = logging.getLogger(__name__)


@dataclass
class Claimed:
    """A sweep job whose configuration another invocation has: `how` is done (its run
    FINISHED; this sweep reuses it), held (it is training it now; the sweep waits) or
    pending (it is deciding whether to; the sweep waits too)."""

    how: str
    run_id: str
    run_name: str
    experiment_id: str


@dataclass
class JobResult:
    run_id: str
    run_name: str
    experiment_id: str
    history: History
    summary: dict[str, float]


def run_name(cfg: DictConfig) -> str:
    """Short and readable in the MLflow UI, e.g. h32-lr0.001-s0, then each other key that
    decides the numbers and is not at its default, e.g. h8-lr0.1-s0-exact-float64-epochs2000:
    runs that compute different numbers are named apart."""
    name = f"h{cfg.model.hidden_dim}-lr{_name_text(cfg.optim.lr)}-s{cfg.seed}"
    defaults = _training_defaults()
    for key, value in flatten(cfg, TRAINING_KEYS).items():
        if key in ("model.hidden_dim", "optim.lr", "seed") or value == defaults.get(key):
            continue
        # A mode or dtype says what it is; other values need their key's last part.
        label = "" if key in ("model.backprop", "model.dtype") else key.rsplit(".", 1)[-1]
        name += f"-{label}{_name_text(value)}"
    return name


def _name_text(value: object) -> str:
    """A value as short as it reads exactly: 0.001, 1000, 0.0010000001; a list's items
    joined by + (the answer lists names joined by commas)."""
    if isinstance(value, list):
        return "+".join(map(_name_text, value))
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


@functools.cache
def _training_defaults() -> dict[str, object]:
    return flatten(OmegaConf.structured(TrainAppConfig), TRAINING_KEYS)


def data_hash(cfg: DictConfig) -> str:
    """The hash of the exact tensors training is fed (tag env.data)."""
    return _data_hash(tuple(cfg.data.features), bool(cfg.data.normalize), cfg.model.dtype)


@functools.cache
def _data_hash(features: tuple[int, ...], normalize: bool, dtype: str) -> str:
    return provenance.data_hash(*load_iris2(list(features), normalize, getattr(torch, dtype)))


def train_model(cfg: DictConfig, on_epoch: Callable[[int], object] | None = None) -> History:
    """Data, model and training from the config alone: no I/O, no tracking. A job the
    launcher trained with others of its shape takes its History from them (fnnlab.population:
    the same numbers); any other trains as a population of one."""
    history = population.take(cfg)
    if history is None:
        (history,) = population.fit_configs([cfg], on_epoch)
    return history


def summarize(history: History, cfg: DictConfig) -> dict[str, float]:
    """Summary metrics: final values, best and tail loss, the deviation from the published
    curve. A diverged run has none of final/*, best/* and tail/loss: its last finite values
    would sort it among the good runs in MLflow's tables and grouped charts."""
    losses = history.metrics["loss"]
    summary: dict[str, float] = {"epochs_run": history.epochs_run}
    if len(losses) and history.diverged_at is None:
        summary |= {f"final/{k}": v for k, v in history.final().items()}
        best = int(np.argmin(losses))
        summary["best/loss"], summary["best/epoch"] = float(losses[best]), best
        summary["tail/loss"] = run_outcome(losses, kind="tail_loss")
    if cfg.reference:
        summary["reference/max_abs_dev"] = reference.max_abs_deviation(losses)
    return summary


def end_tags(history: History, cfg: DictConfig) -> dict[str, str]:
    """What happened in training, as tags the MLflow UI can filter and group on."""
    diverged = history.diverged_at is not None
    thresholds = RegimeThresholds(**OmegaConf.to_container(cfg.regime))
    tags = {
        Tag.DIVERGED: str(diverged).lower(),
        Tag.REGIME: classify_regime(history.metrics["loss"], diverged, thresholds),
    }
    if history.diverged_at is not None:
        tags[Tag.DIVERGED_AT] = str(history.diverged_at)
    if history.saturated_at is not None:
        tags[Tag.SATURATED_AT] = str(history.saturated_at)
    return tags


def write_files(
    history: History, cfg: DictConfig, art: Path, name: str, hydra_dir: Path | None
) -> list[Path]:
    """The run's config files (Hydra's from hydra_dir, its hydra.output_subdir), weights
    and plots (titled with its name), in its artifact folder; returns the files written
    (the folder may hold an earlier run's too, when an output folder is used again)."""
    files = [art / "config.yaml", art / "weights.pt"]
    files[0].write_text(to_yaml(cfg, resolve=True))
    torch.save({"w1": history.w1, "w2": history.w2}, files[1])
    # Hydra's own files only: output_subdir=. is the output folder itself, artifacts/ and all.
    written = [hydra_dir / n for n in HYDRA_FILES if hydra_dir and (hydra_dir / n).is_file()]
    if written:
        (art / "hydra").mkdir(exist_ok=True)
    for path in written:
        files.append(art / "hydra" / path.name)
        shutil.copyfile(path, files[-1])
    diff = provenance.diff_artifact()
    if diff is not None:  # a dirty tree: what the commit alone does not say
        files.append(art / provenance.DIFF_ARTIFACT)
        files[-1].write_bytes(diff)
    if cfg.tracking.plots:
        published = reference.published_losses() if cfg.reference else None
        plots.draw_run(plots.Curves.of(history), art, name, published)
        files += [art / f for f in plots.RUN_FILES]
    return files


def _end_with_error(
    store: Store, run_id: str, name: str, params: dict[str, object], exc: BaseException
) -> None:
    """End a run FAILED, or KILLED when interrupted, with the error and its traceback."""
    # One line in the log; the tag has all of it.
    log.error("run %s (%s) ended %s: %s", name, run_id, status_after(exc), first_line(exc))
    error = f"{type(exc).__name__}: {exc}"
    trace = traceback.format_exc()[-4000:]
    # Params too, so a run that failed early still says what it was (re-logging a param
    # with the same value is allowed when the failure came after them).
    end_after_error(store, run_id, exc, params, {Tag.ERROR: error, Tag.TRACEBACK: trace})


def run(
    cfg: DictConfig,
    output_dir: Path,
    *,
    store: Store | None = None,
    parent_run_id: str | None = None,
    sweep_tags: dict[str, str] | None = None,
    on_epoch: Callable[[int], object] | None = None,
    claim: str | None = None,
    name: str | None = None,
    hydra_dir: Path | None = None,
) -> JobResult | Claimed:
    """Validate, train, and record one run. Raises ConfigValueError before any run exists.

    With `claim` (a sweep's resume_match: code or config), the job first claims its
    configuration (fnnlab.claims): when another invocation has it, there is no run of this
    job, and the other's run is counted in this job's sweep. `name`: the run's, when not
    run_name(cfg). `hydra_dir`: where Hydra wrote this job's config files (they go into
    the run's artifacts under hydra/), None when it wrote none."""
    check_values(cfg)
    if store is None:
        store = open_store_once(cfg.tracking.uri, cfg.tracking.experiment)
    name = name or run_name(cfg)
    population.one_thread()  # before env.torch_threads records it
    leased = time.time()  # the lease's time, in the run's first write
    tags = {
        Tag.ROLE: ROLE_JOB,
        Tag.FINGERPRINT: fingerprint(cfg),
        **provenance.env_tags(data_hash(cfg)),
        **process_tags(),
        **claims.lease_tags(),
        **(sweep_tags or {}),
    }
    params = flatten(cfg)
    if claim is None:
        run_id = start_run(store, name, tags, parent_run_id)
    else:
        how, run_id, other = claims.claim(
            store,
            tags[Tag.FINGERPRINT],
            tags[Tag.CODE],
            claim,
            lambda: start_run(store, name, tags, parent_run_id),
        )
        if other is not None:
            if parent_run_id and Tag.SWEEP_ID in tags:
                claims.use_run(store, other, parent_run_id, tags[Tag.SWEEP_ID])
            return Claimed(how, run_id, other.info.run_name, store.experiment_id)
    lease = claims.LeaseRenewal(store, run_id, on_epoch, leased)
    try:
        history = train_model(cfg, lease)
        summary = summarize(history, cfg)
        art = output_dir / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        files = write_files(history, cfg, art, name, hydra_dir)
        # Their hashes with the run's values, in the same call: fnnlab-replay names a file
        # changed or written again since.
        digest = provenance.files_digest(
            {f.relative_to(art).as_posix(): f.read_bytes() for f in files}
        )
        with lease.kept():
            log_values(
                store,
                run_id,
                params=params,
                series=history.metrics,
                summary=summary,
                tags=end_tags(history, cfg) | claims.lease_tags() | {Tag.FILES: digest},
                every=cfg.tracking.log_every,
            )
            upload_artifacts(store, run_id, art, files)
    except BaseException as exc:
        _end_with_error(store, run_id, name, params, exc)
        raise
    # Ended FINISHED after another invocation marked it KILLED and trained the configuration
    # again, it would be a second finished run of it. MLflow has no conditional write: the
    # FINISHED can still land after the other's KILLED, and is then undone.
    taken = lease.taken()
    if taken is None:
        end_run(store, run_id, FINISHED)
        taken = lease.taken(ended=True)
        if taken == KILLED:
            end_run(store, run_id, KILLED)
    if taken is not None:
        how = "deleted" if taken == "deleted" else f"ended {taken}"
        raise claims.RunTaken(
            f"run {name} ({run_id}) was {how} by another invocation while this one stood "
            f"still past its lease: it stays so, with its values, and that invocation trains "
            "the configuration again"
        )
    return JobResult(
        run_id=run_id,
        run_name=name,
        experiment_id=store.experiment_id,
        history=history,
        summary=summary,
    )
