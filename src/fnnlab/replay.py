"""Replay: retrain a logged run from what the store holds and compare, bit for bit.

A run's config is rebuilt from its own `config.yaml` artifact (the resolved config it ran
with), never from Hydra's output folders, so runs from other machines or a tracking server
replay the same way. It is retrained with today's code, and every per-epoch metric at every
stored step, the epoch it stopped at and the final weights are compared exactly with what
was stored. When something differs, the first epoch and metric that differ, the largest
difference and what changed in the environment since (fnnlab.provenance) say why.
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from fnnlab import provenance
from fnnlab.aggregate import read_curves
from fnnlab.config import ConfigValueError, TrainAppConfig, check_values
from fnnlab.errortext import reason
from fnnlab.job import data_hash, train_model
from fnnlab.names import FINISHED, METRICS, ROLE_JOB, Tag
from fnnlab.tracking import Store, log_values, logged_steps, search_all


class NotReplayable(Exception):
    """A run that cannot be replayed (it did not finish, or its config cannot be rebuilt)."""


@dataclass
class Replay:
    """What one replay found."""

    run: Run
    identical: bool
    first_diff: str = ""  # "epoch 17 grad_norm/w1" when not identical
    largest: float = 0.0  # the largest |stored - now| over every compared value
    env: list[str] = field(default_factory=list)  # what changed since the run was made
    cfg: DictConfig | None = None  # the rebuilt config it was retrained with

    @property
    def name(self) -> str:
        return self.run.info.run_name

    @property
    def status(self) -> str:
        return "identical" if self.identical else "differs"

    def line(self) -> str:
        head = f"{self.name} ({self.run.info.run_id}): "
        if self.identical:
            return head + "identical"
        changed = "; ".join(self.env) if self.env else "no recorded difference in environment"
        return (
            f"{head}differs at {self.first_diff}, largest difference {self.largest:.3g}; "
            f"since then: {changed}"
        )


def rebuild_config(store: Store, run: Run) -> DictConfig:
    """The run's resolved config from its config.yaml artifact, checked as a new run's is."""
    rid = run.info.run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = store.client.download_artifacts(rid, "config.yaml", tmp)
            stored = yaml.safe_load(Path(path).read_text())
    except (MlflowException, OSError) as exc:
        raise NotReplayable(f"run {rid}: its config.yaml artifact cannot be read ({exc})") from None
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainAppConfig), stored)
        check_values(cfg)
    except Exception as exc:
        why = reason(exc)
        raise NotReplayable(f"run {rid}: its config cannot be rebuilt today ({why})") from None
    return cfg


def _stored_weights(store: Store, run: Run) -> dict[str, torch.Tensor] | None:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = store.client.download_artifacts(run.info.run_id, "weights.pt", tmp)
            return torch.load(path)
    except (MlflowException, OSError):
        return None


def replay_run(store: Store, run: Run) -> Replay:
    """Retrain the run and compare everything it stored (see the module docstring)."""
    if run.info.status != FINISHED:
        raise NotReplayable(
            f"run {run.info.run_id} ({run.info.run_name}) is {run.info.status}: only FINISHED "
            "runs have a complete record to compare with"
        )
    cfg = rebuild_config(store, run)
    history = train_model(cfg)
    tags, metrics = run.data.tags, run.data.metrics
    now_env = provenance.env_tags(data_hash(cfg))
    stored_env = {k: v for k, v in tags.items() if k.startswith("env.")}
    result = Replay(run=run, identical=True, env=provenance.env_diff(stored_env, now_env), cfg=cfg)
    diffs: list[tuple[int, int, str, float]] = []  # (epoch, metric order, metric, |diff|)

    ran = history.epochs_run
    stored_ran = int(metrics.get("epochs_run", -1))
    if stored_ran != ran:
        diffs.append((min(ran, stored_ran), -1, f"epochs run {stored_ran} -> {ran}", math.inf))
    stored_at = tags.get(Tag.DIVERGED_AT)
    now_at = None if history.diverged_at is None else str(history.diverged_at)
    if stored_at != now_at:
        where = int(min(x for x in (stored_at, now_at, ran) if x is not None))
        diffs.append((where, -1, f"diverged_at {stored_at} -> {now_at}", math.inf))

    curves = read_curves(store.uri, store.client, [run.info.run_id])
    every = int(cfg.tracking.log_every)
    expected = list(logged_steps(ran, every))
    for order, key in enumerate(METRICS):
        stored = curves[curves["key"] == key].sort_values("step")
        steps, values = stored["step"].to_numpy(), stored["value"].to_numpy()
        now = history.metrics[key]
        if list(steps) != expected:
            missing = sorted(set(expected) ^ set(steps.tolist()))
            diffs.append((missing[0] if missing else 0, order, f"{key} (steps)", math.inf))
            common = [s for s in steps if s < len(now)]
            steps, values = np.array(common), values[: len(common)]
        if len(steps):
            ours = now[steps]
            delta = np.abs(ours - values)
            bad = np.nonzero(ours != values)[0]
            if len(bad):
                diffs.append((int(steps[bad[0]]), order, key, float(np.nanmax(delta))))

    weights = _stored_weights(store, run)
    if weights is None or not (
        torch.equal(weights["w1"], history.w1) and torch.equal(weights["w2"], history.w2)
    ):
        what = "weights.pt missing" if weights is None else "final weights"
        diffs.append((ran, len(METRICS), what, _weight_diff(weights, history)))

    if diffs:
        epoch, _, what, _ = min(diffs, key=lambda d: (d[0], d[1]))
        result.identical = False
        result.first_diff = f"epoch {epoch} {what}"
        result.largest = max(d[3] for d in diffs)
    return result


def _weight_diff(weights: dict | None, history) -> float:
    if weights is None:
        return math.inf
    try:
        return float(
            max(
                (weights["w1"].double() - history.w1.double()).abs().max(),
                (weights["w2"].double() - history.w2.double()).abs().max(),
            )
        )
    except RuntimeError:  # other shapes
        return math.inf


def record(store: Store, replay: Replay) -> None:
    """The replayed run's tags: replay.status, replay.at and, if it differs, replay.first_diff."""
    tags = {
        "replay.status": replay.status,
        "replay.at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if not replay.identical:
        tags["replay.first_diff"] = replay.first_diff
    log_values(store, replay.run.info.run_id, tags=tags)


def sweep_runs(store: Store, parent: Run, sample: int | None, seed: int) -> tuple[list, list]:
    """A sweep's FINISHED jobs (or `sample` of them, chosen at random with `seed`), and its
    other jobs (failed, killed, running), which cannot be replayed."""
    query = f"tags.{Tag.ROLE} = '{ROLE_JOB}' and tags.`{Tag.PARENT}` = '{parent.info.run_id}'"
    runs = sorted(search_all(store, query), key=lambda r: r.info.start_time or 0)
    finished = [r for r in runs if r.info.status == FINISHED]
    if sample is not None and sample < len(finished):
        finished = random.Random(seed).sample(finished, sample)
    return finished, [r for r in runs if r.info.status != FINISHED]


def log_replay(store: Store, replay: Replay, cfg: DictConfig, output_dir: Path) -> str:
    """The replay as a new run of the same config, tagged replay.of=<run id>."""
    from fnnlab.job import run

    tags = {"replay.of": replay.run.info.run_id, "replay.status": replay.status}
    return run(cfg, output_dir, store=store, sweep_tags=tags).run_id


def find_run(store: Store, run_id: str) -> Run:
    try:
        run = store.client.get_run(run_id)
    except MlflowException:
        raise ConfigValueError("replay.run", run_id, "no such run in this store") from None
    if run.data.tags.get(Tag.ROLE) != ROLE_JOB:
        raise ConfigValueError("replay.run", run_id, "not a training run (a sweep's parent?)")
    return run
