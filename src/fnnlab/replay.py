"""Replay: retrain a logged run from what the store holds and compare, bit for bit.

A run's config is rebuilt from its own `config.yaml` artifact (the resolved config it ran
with), never from Hydra's output folders, so runs from other machines or a tracking server
replay the same way. It is retrained with today's code, and what the run stored is compared
exactly with what the job would store now: every per-epoch value at every stored step and
its latest value, the summary metrics (each value of their history too), the tags that say
what happened in training, the params and the fingerprint tag (against the rebuilt config)
and the final weights, shape and dtype included. When something differs, every difference
is named (a metric with the epoch it first differs at and how many of its values differ, a
summary metric, a tag, a param, the weights), with the largest difference and what changed
in the environment since (fnnlab.provenance).

A sweep's answer (the tables, metrics and tags its end or fnnlab-aggregate stored on the
parent run) is checked the same way: made again from the runs the store holds, with the
options recorded with it, and compared exactly (check_answer).
"""

from __future__ import annotations

import io
import math
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from fnnlab import provenance
from fnnlab.aggregate import history_keys, read_curves
from fnnlab.config import (
    TRAINING_KEYS,
    ConfigValueError,
    TrainAppConfig,
    check_values,
    fingerprint,
    flatten,
)
from fnnlab.errortext import reason
from fnnlab.job import data_hash, end_tags, summarize, train_model
from fnnlab.names import FINISHED, METRICS, ROLE_JOB, RUNNING, Tag
from fnnlab.tracking import (
    MAX_TAG_VALUE,
    Store,
    connect,
    deleted_in_store,
    log_values,
    logged_steps,
    one_run_per_config,
    open_store,
)
from fnnlab.tracking import sweep_runs as all_sweep_runs


class NotReplayable(Exception):
    """A run that cannot be replayed (it did not finish, or its config cannot be rebuilt)."""


class Diff(NamedTuple):
    """One thing the run stored that differs from what its job would store now."""

    epoch: int  # where it first differs
    order: int  # among the differences of one epoch
    what: str  # "grad_norm/w1", "final/loss 0.1 -> 0.0123", "param optim.lr ..."
    largest: float  # the largest |stored - now| (inf for what is not a number, and for NaN)
    count: str = ""  # of a curve: "1 of 30 values"

    def text(self) -> str:
        """As "epoch 17 grad_norm/w1 (1 of 30 values, largest 8.6e-13)"."""
        where = f"epoch {self.epoch} {self.what}"
        return f"{where} ({self.count}, largest {self.largest:.3g})" if self.count else where


# Differences named on a run's line after the first; the tag replay.diffs has them all.
SHOWN_DIFFS = 4


@dataclass
class Replay:
    """What one replay found."""

    run: Run
    diffs: list[Diff] = field(default_factory=list)  # in order of epoch; none when identical
    env: list[str] = field(default_factory=list)  # what changed since the run was made
    cfg: DictConfig | None = None  # the rebuilt config it was retrained with
    # The rebuilt config trains the run its params say: no param differs, and a fingerprint
    # that differs has keys added since to explain it.
    same_config: bool = True
    # No tag files (a run made before it, or the tag deleted): its files not all checked.
    unhashed: bool = False

    @property
    def identical(self) -> bool:
        return not self.diffs

    @property
    def first_diff(self) -> str:
        """Where it first differs, as "epoch 17 grad_norm/w1"; empty when identical."""
        return f"epoch {self.diffs[0].epoch} {self.diffs[0].what}" if self.diffs else ""

    @property
    def largest(self) -> float:
        """The largest |stored - now| over every compared value."""
        return max((d.largest for d in self.diffs), default=0.0)

    @property
    def name(self) -> str:
        return self.run.info.run_name

    @property
    def status(self) -> str:
        return "identical" if self.identical else "differs"

    def line(self) -> str:
        head = f"{self.name} ({self.run.info.run_id}): "
        if self.unhashed:  # its config.yaml and weights.pt are compared all the same
            note = f" (files but config.yaml and weights.pt not checked: no tag {Tag.FILES})"
        else:
            note = ""
        if self.identical:
            return f"{head}identical{note}"
        changed = "; ".join(self.env) if self.env else "no recorded difference in environment"
        first, *rest = self.diffs
        also = ""
        if rest:
            named = ", ".join(d.text() for d in rest[:SHOWN_DIFFS])
            unnamed = len(rest) - SHOWN_DIFFS
            also = f"; also {named}" + (
                f" and {unnamed} more (tag replay.diffs)" if unnamed > 0 else ""
            )
        return (
            f"{head}differs at {first.text()}, largest difference {self.largest:.3g}{also}; "
            f"since then: {changed}{note}"
        )

    def diff_lines(self) -> list[str]:
        return [d.text() for d in self.diffs]


# A line of replay.diffs is cut to this: one long param value leaves room for the others.
MAX_DIFF_LINE = 500


def cut_lines(lines: list[str]) -> str:
    """Lines as one tag value (replay.diffs): each line cut to MAX_DIFF_LINE, and beyond
    fnnlab's tag limit (MAX_TAG_VALUE) the lines that fit and "...", a line of its own."""
    lines = [
        line if len(line) <= MAX_DIFF_LINE else line[: MAX_DIFF_LINE - 3] + "..." for line in lines
    ]
    text = "\n".join(lines)
    while len(text) > MAX_TAG_VALUE:
        lines.pop()
        text = "\n".join([*lines, "..."])
    return text


def rebuild_config(store: Store, run: Run) -> tuple[DictConfig, dict[str, str]]:
    """The run's resolved config from its config.yaml artifact, checked as a new run's is,
    and the values config.yaml itself has, as params (today's config may add keys)."""
    rid = run.info.run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = store.client.download_artifacts(rid, "config.yaml", tmp)
            stored = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (MlflowException, OSError, ImportError, UnicodeDecodeError, yaml.YAMLError) as exc:
        why = reason(exc)
        raise NotReplayable(f"run {rid}: its config.yaml artifact cannot be read ({why})") from None
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainAppConfig), _literal(stored))
        check_values(cfg)
        now = {k: str(v) for k, v in flatten(cfg).items()}  # every value resolves
    except Exception as exc:
        why = reason(exc)
        raise NotReplayable(f"run {rid}: its config cannot be rebuilt today ({why})") from None
    return cfg, {k: now[k] for k in flatten(OmegaConf.create(_literal(stored)))}


def _literal(node: object) -> object:
    """The stored config's values as text: it was written resolved, so a "${" in a value
    (an escaped one in the job's config) is not an interpolation."""
    if isinstance(node, dict):
        return {k: _literal(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_literal(v) for v in node]
    return node.replace("${", "\\${") if isinstance(node, str) else node


NO_WEIGHTS = "weights.pt missing"


def _stored_weights(store: Store, run: Run) -> dict[str, torch.Tensor] | str:
    """The stored final weights, or why there are none to compare."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = store.client.download_artifacts(run.info.run_id, "weights.pt", tmp)
        except (MlflowException, OSError, ImportError):
            return NO_WEIGHTS
        try:
            weights = torch.load(path)  # weights_only: a file cannot run code here
        except Exception as exc:  # not a file torch.save wrote (a folder of that name, say)
            return f"weights.pt unreadable ({type(exc).__name__})"
    if not isinstance(weights, dict) or not all(
        isinstance(w := weights.get(k), torch.Tensor)
        and w.layout == torch.strided
        and w.device.type == "cpu"
        for k in ("w1", "w2")
    ):
        return "weights.pt without the dense CPU tensors w1 and w2"
    return weights


def text_metric(run: Run) -> str | None:
    """A latest metric value of the run that is no number, named (SQLite keeps any text in a
    number's column: there is nothing to compare it with), else None."""
    for key, value in sorted(run.data.metrics.items()):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"its latest value of {key} is no number ({str(value)[:40]!r})"
    return None


def replay_run(store: Store, run: Run) -> Replay:
    """Retrain the run and compare everything it stored (see the module docstring)."""
    if run.info.status != FINISHED:
        raise NotReplayable(
            f"run {run.info.run_id} ({run.info.run_name}) is {run.info.status}: only FINISHED "
            "runs have a complete record to compare with"
        )
    if why := text_metric(run):
        raise NotReplayable(why)
    cfg, written = rebuild_config(store, run)
    history = train_model(cfg)
    now_env = provenance.env_tags(data_hash(cfg))
    stored_env = {k: v for k, v in run.data.tags.items() if k.startswith("env.")}
    params, same_config = _params_diffs(run, cfg, written)
    diffs = [
        *params,
        *_data_diffs(stored_env, now_env),
        *_end_diffs(run, history, cfg),
        *_summary_history_diffs(store, run, history, cfg),
        *_curve_diffs(store, run, history, cfg),
        *_weights_diffs(store, run, history),
        *_files_diffs(store, run, history, cfg),
    ]
    return Replay(
        run=run,
        diffs=sorted(diffs, key=lambda d: (d.epoch, d.order)),
        env=provenance.env_diff(stored_env, now_env) if stored_env else [NO_ENV],
        cfg=cfg,
        same_config=same_config,
        unhashed=Tag.FILES not in run.data.tags,
    )


# What a differing run's line says of its environment when it has no env.* tags.
NO_ENV = "environment not recorded with this run"


def _data_diffs(stored_env: dict[str, str], now_env: dict[str, str]) -> list[Diff]:
    """The tag env.data, the hash of the tensors the run trained on, against the hash of
    those the rebuilt config makes: it differs when the tag was changed, or the data since
    (the line's environment part then names that too)."""
    a, b = stored_env.get("env.data"), now_env["env.data"]
    return [] if a in (None, b) else [Diff(0, -2, f"tag env.data {a}, made now {b}", math.inf)]


def _params_diffs(run: Run, cfg: DictConfig, written: dict[str, str]) -> tuple[list[Diff], bool]:
    """Params that do not say what config.yaml says (either was changed after the run),
    params config.yaml does not have (logged to the run afterwards), and keys config.yaml has
    that the run has no param of (deleted from the store). A key only today's config has
    (`cfg` holds today's defaults, `written` config.yaml's keys) is not a difference: it was
    added since. The fingerprint tag too, against the config's: a resumed sweep finds a
    configuration's runs by it. With them, whether the config trains the run its params say
    (Replay.same_config): no param differs, and a fingerprint that differs has keys added
    since to explain it."""
    stored = run.data.params
    now = {k: str(v) for k, v in flatten(cfg).items()}
    diffs = (
        [
            Diff(0, -2, f"param {k} {stored[k]!r}, config.yaml {written[k]!r}", math.inf)
            for k in sorted(stored.keys() & written.keys())
            if stored[k] != written[k]
        ]
        + [
            Diff(0, -2, f"param {k} {stored[k]!r}, not in config.yaml{_default(k, now)}", math.inf)
            for k in sorted(stored.keys() - written.keys())
        ]
        + [
            Diff(0, -2, f"param {k} not stored, config.yaml {written[k]!r}", math.inf)
            for k in sorted(written.keys() - stored.keys())
        ]
    )
    same = not diffs
    tag, now_tag = run.data.tags.get(Tag.FINGERPRINT), fingerprint(cfg)
    if tag != now_tag:
        # Keys the hash covers that the run's config.yaml lacks: today's config added them.
        # (Not those the run has a param of: config.yaml lost them.)
        added = sorted(
            k
            for k in now.keys() - written.keys() - stored.keys()
            if k.split(".")[0] in TRAINING_KEYS
        )
        why = f" (keys added since the run: {', '.join(added)})" if added else ""
        diffs.insert(0, Diff(0, -2, f"fingerprint {tag}, config.yaml {now_tag}{why}", math.inf))
        same = same and bool(added)
    return diffs, same


def _default(key: str, now: dict[str, str]) -> str:
    """What a key config.yaml lacks was replayed with: today's default, if there is one."""
    return f" (replayed with today's default {now[key]!r})" if key in now else ""


def _end_diffs(run: Run, history, cfg: DictConfig) -> list[Diff]:
    """The summary metrics and the tags of how training went, against what the job would
    log now, at the last epoch; a tag of an epoch (diverged_at, saturated_at) at that epoch,
    epochs_run where the shorter of the two ended."""
    ran = history.epochs_run
    last = max(ran - 1, 0)
    diffs: list[Diff] = []
    tags, now_tags = run.data.tags, end_tags(history, cfg)
    for key in (Tag.DIVERGED_AT, Tag.SATURATED_AT, Tag.DIVERGED, Tag.REGIME):
        a, b = tags.get(key), now_tags.get(key)
        if a != b:
            epochs = [int(x) for x in (a, b) if x is not None and x.isascii() and x.isdigit()]
            diffs.append(Diff(min([*epochs, last]), -1, f"{key} {a} -> {b}", math.inf))
    stored = run.data.metrics
    now = summarize(history, cfg)
    summary_keys = (stored.keys() - set(METRICS)) | now.keys()
    for key in sorted(summary_keys):
        a, b = stored.get(key), now.get(key)
        b = None if b is None else _as_stored(b)
        if a is not None and b is not None and _same(a, b):
            continue
        gap = abs(a - b) if a is not None and b is not None else math.inf
        gap = math.inf if math.isnan(gap) else gap  # a number against a NaN
        if key == "epochs_run":
            shorter = ran if a is None or not math.isfinite(a) else min(ran, int(a))
            where = (max(shorter - 1, 0), -1)
        else:
            where = (last, len(METRICS) + 1)
        was = "no latest value" if a is None else a  # its history may hold one
        diffs.append(Diff(*where, f"{key} {was} -> {b}", gap))
    return diffs


def _summary_history_diffs(store: Store, run: Run, history, cfg: DictConfig) -> list[Diff]:
    """A summary metric is logged once: a value more in its history (which MLflow's UI plots,
    and which _end_diffs, reading the latest values, does not see), or a history that is
    not its latest value (one of MLflow's two tables changed), is a difference."""
    now = summarize(history, cfg)
    # A key only in the history has no latest value, which is all run.data lists.
    in_history = history_keys(store.uri, run.info.run_id) or set()
    keys = tuple(sorted((run.data.metrics.keys() | in_history) - set(METRICS) | now.keys()))
    stored = _stored_rows(store, run, keys)
    where = (max(history.epochs_run - 1, 0), len(METRICS) + 1)
    diffs = []
    for key in keys:
        rows = stored[stored["key"] == key]
        values = rows["value"].tolist()
        latest = run.data.metrics.get(key)
        # Logged at step 0: another step is a changed row, whatever its value (helper-64).
        if moved := sorted({s for s in rows["step"] if s != 0}):
            steps = ", ".join(map(str, moved))
            diffs.append(Diff(*where, f"{key} stored at step {steps}, logged at step 0", math.inf))
        if len(values) > 1:
            b = now.get(key)
            gaps = [abs(v - _as_stored(b)) for v in values] if b is not None else [math.inf]
            gap = max(math.inf if math.isnan(g) else g for g in gaps)
            diffs.append(Diff(*where, f"{key} stored {len(values)} times", gap))
        elif values and latest is not None and not _same(values[0], latest):
            what = f"{key} {values[0]} in its history, {latest} as its latest value"
            diffs.append(Diff(*where, what, abs(values[0] - latest)))
        elif latest is not None and not values and key in now:  # else _end_diffs names it
            diffs.append(Diff(*where, f"{key} {latest} as its latest value, no history", math.inf))
        elif values and latest is None and key not in now:  # else _end_diffs names it
            what = f"{key} {values[0]} in its history, no latest value"
            diffs.append(Diff(*where, what, math.inf))
    return diffs


def _stored_rows(store: Store, run: Run, keys: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Every stored value of the run's `keys`, a step stored twice included. NotReplayable
    when one is no number (SQLite keeps any text in a number's column): there is nothing to
    compare it with, and an earlier replay's status must not stand."""
    try:
        return read_curves(store.uri, store.client, [run.info.run_id], keys, keep_repeats=True)
    except (ValueError, TypeError) as exc:
        raise NotReplayable(f"a stored metric value cannot be read ({reason(exc)})") from None


def _as_stored(value: float) -> float:
    """A value as MLflow stores it: +-inf as the largest float."""
    value = float(value)
    return math.copysign(sys.float_info.max, value) if math.isinf(value) else value


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _curve_diffs(store: Store, run: Run, history, cfg: DictConfig) -> list[Diff]:
    """Every per-epoch value at every stored step, a step stored twice included."""
    diffs: list[Diff] = []
    curves = _stored_rows(store, run)
    expected = list(logged_steps(history.epochs_run, int(cfg.tracking.log_every)))
    for order, key in enumerate(METRICS):
        stored = curves[curves["key"] == key].sort_values("step", kind="stable")
        steps, values = stored["step"].to_numpy(), stored["value"].to_numpy()
        now = history.metrics[key]
        if list(steps) != expected:
            missing = sorted(set(expected) - set(steps.tolist()))
            extra = sorted(set(steps.tolist()) - set(expected))
            repeated = sorted({s for s in steps.tolist() if (steps == s).sum() > 1})
            parts = [
                _steps(missing, "missing"),
                _steps(extra, "extra"),
                _steps(repeated, "stored twice"),
            ]
            what = f"{key} ({'; '.join(p for p in parts if p)})"
            first = min(missing[:1] + extra[:1]) if missing or extra else repeated[0]
            # At epoch 0 for a negative step, which is no epoch (its text names it).
            diffs.append(Diff(max(first, 0), order, what, math.inf))
            # A step outside the run's epochs has no value now (and -1 is not the last).
            keep = (steps >= 0) & (steps < len(now))
            steps, values = steps[keep], values[keep]
        latest = run.data.metrics.get(key)
        at_last = values[steps == expected[-1]] if expected else values[:0]
        if expected and expected[-1] < len(now):
            # The latest value, which MLflow's runs table and charts show, is a table of its
            # own: the last logged epoch's value. Named when it alone differs (a history
            # that differs there is named below).
            last = _as_stored(now[expected[-1]])
            history_same = len(at_last) == 1 and _same(float(at_last[0]), last)
            if history_same and (latest is None or not _same(latest, last)):
                gap = math.inf if latest is None else abs(latest - last)
                what = f"{key} latest value {latest} -> {last}"
                diffs.append(Diff(expected[-1], order, what, math.inf if math.isnan(gap) else gap))
        if len(steps):
            ours = now[steps]
            # A NaN reads back as NaN (MLflow's is_nan) and is the same as a NaN now.
            bad = np.flatnonzero((ours != values) & ~(np.isnan(ours) & np.isnan(values)))
            if len(bad):
                # A number against a NaN is as far apart as can be.
                delta = np.where(
                    np.isnan(ours[bad]) | np.isnan(values[bad]),
                    math.inf,
                    np.abs(ours[bad] - values[bad]),
                )
                count = f"{len(bad)} of {len(steps)} values"
                diffs.append(Diff(int(steps[bad[0]]), order, key, float(delta.max()), count))
    return diffs


def _steps(steps: list[int], how: str) -> str:
    """As "step 10 missing" or "3 steps extra, first -1"; "" for none."""
    if len(steps) > 1:
        return f"{len(steps)} steps {how}, first {steps[0]}"
    return f"step {steps[0]} {how}" if steps else ""


def _weights_diffs(store: Store, run: Run, history) -> list[Diff]:
    weights = _stored_weights(store, run)
    where = (history.epochs_run, len(METRICS))
    if weights == NO_WEIGHTS and "weights.pt" in provenance.read_digest(
        run.data.tags.get(Tag.FILES, "")
    ):
        return []  # _files_diffs names it, as a file the run wrote
    if isinstance(weights, str):
        return [Diff(*where, weights, math.inf)]
    diffs = []
    if more := sorted(set(weights) - {"w1", "w2"}, key=str):
        what = f"weights.pt holds more than w1 and w2: {', '.join(map(str, more))}"
        diffs.append(Diff(*where, what, math.inf))
    pairs = (("w1", history.w1), ("w2", history.w2))
    for key, now in pairs:
        if weights[key].shape != now.shape:
            was, shape = tuple(weights[key].shape), tuple(now.shape)
            return [*diffs, Diff(*where, f"final weights {key} shape {was} -> {shape}", math.inf)]
    for key, now in pairs:
        if weights[key].dtype != now.dtype:
            what = f"final weights {key} dtype {weights[key].dtype} -> {now.dtype}"
            return [*diffs, Diff(*where, what, _weight_diff(weights, history))]
    if all(torch.equal(weights[key], now) for key, now in pairs):
        return diffs
    return [*diffs, Diff(*where, "final weights", _weight_diff(weights, history))]


def _files_written(run: Run, cfg: DictConfig) -> set[str]:
    """The files a run's job uploaded for certain (fnnlab.job.write_files): its config and
    weights, its plots unless tracking.plots=false, the diff of a dirty tree git could make.
    (Hydra's depend on hydra.output_subdir, which the run does not record.)"""
    from fnnlab import plots

    files = {"config.yaml", "weights.pt", *(plots.RUN_FILES if cfg.tracking.plots else ())}
    if "env.git_diff_sha256" in run.data.tags:
        files.add(provenance.DIFF_ARTIFACT)
    return files


def _files_diffs(store: Store, run: Run, history, cfg: DictConfig) -> list[Diff]:
    """Each file the run uploaded against the hash it recorded (tag files): one changed or
    written again since is named (its plots and Hydra's files, which nothing else checks).
    None for a run made before that tag."""
    written = provenance.read_digest(run.data.tags.get(Tag.FILES, ""))
    where = (history.epochs_run, len(METRICS) + 1)
    diffs = []
    # Every run writes these: a tag without one was changed, and would leave it unchecked.
    if Tag.FILES in run.data.tags and (unlisted := _files_written(run, cfg) - written.keys()):
        what = f"tag {Tag.FILES} does not list {', '.join(sorted(unlisted))}: not checked"
        diffs.append(Diff(*where, what, math.inf))
    with tempfile.TemporaryDirectory() as tmp:
        for name, digest in written.items():
            try:
                path = store.client.download_artifacts(run.info.run_id, name, tmp)
                data = Path(path).read_bytes()
            except (MlflowException, OSError, ImportError):
                diffs.append(
                    Diff(*where, f"{name} not stored (the run wrote it: tag files)", math.inf)
                )
                continue
            if provenance.file_hash(data) != digest:
                what = f"{name} is not the file the run wrote (tag files)"
                diffs.append(Diff(*where, what, math.inf))
    return diffs


def _weight_diff(weights: dict, history) -> float:
    try:
        return float(
            max(
                (weights["w1"].double() - history.w1.double()).abs().max(),
                (weights["w2"].double() - history.w2.double()).abs().max(),
            )
        )
    except RuntimeError:  # other shapes
        return math.inf


# Tags of a replay that differed, removed when a later replay is identical.
DIFF_TAGS = ("replay.first_diff", "replay.diffs")
# Why the last replay could not be made, removed when a later one is.
WHY_TAG = "replay.why"


def record(store: Store, replay: Replay) -> None:
    """The replayed run's tags: replay.status, replay.at and, if it differs, replay.first_diff
    and replay.diffs (every difference, one a line)."""
    _record(store, replay.run, replay.first_diff, replay.diff_lines())


def _record(store: Store, run: Run, first: str, lines: list[str]) -> None:
    """replay.status and replay.at; replay.first_diff (`first`) and replay.diffs (`lines`)
    when there are differences, or else removed."""
    tags = {
        "replay.status": "differs" if lines else "identical",
        "replay.at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if lines:
        tags["replay.first_diff"] = cut_lines([first])
        tags["replay.diffs"] = cut_lines(lines)
    log_values(store, run.info.run_id, tags=tags)
    # An earlier replay's difference, or reason, is no longer so.
    for key in (WHY_TAG, *(() if lines else DIFF_TAGS)):
        if key in run.data.tags:
            store.client.delete_tag(run.info.run_id, key)


def record_unchecked(store: Store, run: Run, status: str, why: str) -> None:
    """replay.status `status` ("not replayable", "not checkable"), replay.at and replay.why
    on a run or a sweep's parent that could not be checked: an earlier replay's "identical"
    would stand otherwise. Nothing when the store cannot be written either (the line
    printed says why)."""
    tags = {
        "replay.status": status,
        "replay.at": datetime.now(UTC).isoformat(timespec="seconds"),
        WHY_TAG: cut_lines([why]),
    }
    try:
        log_values(store, run.info.run_id, tags=tags)
        for key in DIFF_TAGS:
            if key in run.data.tags:
                store.client.delete_tag(run.info.run_id, key)
    except MlflowException:
        pass


# --- a sweep's answer ---------------------------------------------------------------


class NotCheckable(Exception):
    """A stored answer that cannot be made again or read (the store failed, or an answer of an
    older fnnlab without the options it was made with)."""


@dataclass
class AnswerCheck:
    """What making a sweep's stored answer again from the store's runs found."""

    parent: Run
    diffs: list[str] = field(default_factory=list)  # a table or value each; none when identical
    defaults: bool = False  # made before alpha and min_effect were recorded: defaults assumed
    unhashed: bool = False  # no tag of its files' hashes: its report and figures unchecked
    note_unhashed: bool = False  # no tag of its description's hash: the description unchecked
    unchecked: list[str] = field(default_factory=list)  # aggregate/* metrics it does not make
    env: list[str] | None = None  # what changed since it was made; None: not recorded with it

    @property
    def identical(self) -> bool:
        return not self.diffs

    @property
    def status(self) -> str:
        return "identical" if self.identical else "differs"

    def line(self) -> str:
        head = f"{answer_head(self.parent)}{self.status}"
        if self.defaults:
            head += " (alpha and min_effect were not recorded with it: their defaults taken)"
        if self.unhashed:
            # An older fnnlab's answer, or the tag was deleted: the tables are still compared.
            head += f" (its report and figures not checked: no {FILES})"
        if self.note_unhashed:
            head += f" (its description not checked: no {NOTE})"
        if self.unchecked:
            what = "metric " if len(self.unchecked) == 1 else "metrics "
            head += f" (not made by the answer, so not checked: {what}"
            head += ", ".join(self.unchecked) + ")"
        if self.identical:
            return head
        first, *rest = self.diffs
        also = f"; and {len(rest)} more (tag replay.diffs)" if rest else ""
        if self.env is None:
            changed = "not recorded with this answer"
        else:
            changed = "; ".join(self.env) or "no recorded difference in environment"
        return f"{head}: {first}{also}; since then: {changed}"


# How a line names the tag of the answer's files and their hashes.
FILES = f"tag {provenance.FILES_TAG}"
NOTE = f"tag {provenance.NOTE_TAG}"


def answer_head(parent: Run) -> str:
    return f"the sweep's answer (parent run {parent.info.run_id}): "


def check_answer(store: Store, parent: Run) -> AnswerCheck | None:
    """The answer the sweep's end (or fnnlab-aggregate) stored on the parent, made again from
    the runs the store holds now, with the options it was made with, and compared exactly:
    its tables (aggregate/*.csv, byte for byte), metrics and tags. First, every file the
    answer wrote (its tables, report and plots) against the hash it recorded: one changed or
    written again since (by hand, or by an fnnlab that records no hashes) is named. None
    when the parent holds no answer; NotCheckable when it cannot be made again or read."""
    from fnnlab import aggregate, report  # pandas, scipy, matplotlib: only here

    pid = parent.info.run_id
    tags = parent.data.tags
    try:
        stored_files = {Path(f.path).name for f in store.client.list_artifacts(pid, "aggregate")}
    except (MlflowException, OSError, ImportError) as exc:
        raise NotCheckable(f"its tables cannot be listed ({reason(exc)})") from None
    if "aggregate.outcome" not in tags:
        if stored_files & {*report.TABLES, *report.REPORTS}:
            raise NotCheckable(
                "it has tables but no aggregate.outcome tag (an older fnnlab's answer, or one "
                "that stopped half-way)"
            )
        return None
    if why := text_metric(parent):
        raise NotCheckable(why)
    options = _answer_options(tags)
    # Stored before its alpha and min_effect were recorded (both, or it is a changed tag).
    defaults = not {"aggregate.alpha", "aggregate.min_effect"} & tags.keys()
    check = AnswerCheck(
        parent,
        defaults=defaults,
        unhashed=provenance.FILES_TAG not in tags,
        note_unhashed=provenance.NOTE_TAG not in tags,
    )
    with tempfile.TemporaryDirectory() as tmp:
        stored_file = _reader(store, pid, tmp)
        # The files first: one changed since is named even when the answer cannot be made.
        written = provenance.read_digest(tags.get(provenance.FILES_TAG, ""))
        files = []
        for name, digest in written.items():
            if name not in stored_files:
                files.append(f"aggregate/{name} not stored (the answer wrote it: {FILES})")
            elif provenance.file_hash(stored_file(name)) != digest:
                files.append(f"aggregate/{name} is not the file the answer wrote ({FILES})")
        # Every answer writes these: a tag without one was changed, and would leave it
        # unchecked without a word.
        unlisted = [n for n in (*report.TABLES, *report.REPORTS) if n not in written]
        if provenance.FILES_TAG in tags and unlisted:
            files.append(f"{FILES} does not list {', '.join(unlisted)}: not checked")
        note = tags.get(Tag.NOTE)
        if provenance.NOTE_TAG in tags and (
            note is None or provenance.file_hash(note.encode()) != tags[provenance.NOTE_TAG]
        ):
            what = "not stored" if note is None else "is not the one the answer wrote"
            files.append(f"the parent's description (tag {Tag.NOTE}) {what} ({NOTE})")
        try:
            experiment = store.client.get_experiment(parent.info.experiment_id).name
            sel = aggregate.select(
                store.uri, experiment, parent_run_id=pid, filter_string=options.pop("filter")
            )
            agg = aggregate.aggregate(sel, **options)
        except Exception as exc:  # the store went away, or its runs changed beyond aggregating
            raise NotCheckable(
                f"it cannot be made again ({reason(exc)}){_and_files(files)}"
            ) from None
        for name, frame in report.tables(agg).items():
            if name not in stored_files:
                if name not in written:
                    check.diffs.append(f"aggregate/{name} not stored")
                continue
            stored = stored_file(name)
            # Line ends as the machine that made it wrote them (a value may hold others).
            end = "\r\n" if stored.split(b"\n", 1)[0].endswith(b"\r") else "\n"
            now = frame.to_csv(index=False, lineterminator=end).encode("utf-8")
            if stored != now:
                check.diffs.append(_table_diff(name, stored, now, agg.config_cols))
    metrics, now_tags = report.parent_values(agg)
    for key, value in metrics.items():
        was = parent.data.metrics.get(key)
        if was is None or not _same(was, _as_stored(value)):
            check.diffs.append(f"metric {key} {was} -> {value}")
    for key, value in now_tags.items():
        if defaults and key in ("aggregate.alpha", "aggregate.min_effect"):
            continue
        was, now_tag = tags.get(key), value[:MAX_TAG_VALUE]  # as log_values stores it
        if was != now_tag:
            check.diffs.append(f"tag {key} {was!r} -> {now_tag!r}")
    if defaults and check.diffs:  # other options may have made it, or fnnlab changed since
        env = provenance.answer_env_diff(tags)
        since = f"; since then: {'; '.join(env)}" if env else ""
        raise NotCheckable(
            "its alpha and min_effect were not recorded, and their defaults do not make it "
            f"again ({check.diffs[0]}){since}{_and_files(files)}"
        )
    check.diffs[:0] = files  # named first: they may be why the answer differs
    # One an older fnnlab's answer made, or logged by hand: nothing checks it, and MLflow
    # cannot delete it, so it is named rather than counted as a difference.
    check.unchecked = sorted(
        k for k in parent.data.metrics.keys() - metrics.keys() if k.startswith("aggregate/")
    )
    check.diffs += _history_diffs(store, parent, tuple(metrics), files)
    if check.diffs:
        check.env = provenance.answer_env_diff(tags)
    return check


# The counts a sweep's end logs on its parent that its runs give again (sweep.sweep_counts);
# sweep/jobs, skipped and code_changed are of the invocation that ended it, which nothing
# stored makes again.
COUNTS = ("finished", "failed", "running", "diverged", "reused")
COUNTS_TAG = "replay.counts"


def count_diffs(store: Store, parent: Run) -> list[str] | None:
    """The parent's counts (sweep/finished, ...) against those its runs give now, and each
    sweep/* metric's latest value against its history; None when it holds none or is still
    RUNNING (its end writes them). A count differs when the runs changed since (deleted, or
    another invocation's that ended later), or the value did."""
    from fnnlab.sweep import sweep_counts

    stored = parent.data.metrics
    if parent.info.status == RUNNING or f"sweep/{COUNTS[0]}" not in stored:
        return None
    if why := text_metric(parent):
        raise NotCheckable(why)
    try:
        now = sweep_counts(store, parent.info.run_id)
    except Exception as exc:  # the store went away
        raise NotCheckable(f"its runs cannot be read ({reason(exc)})") from None
    # The configurations no run was found for then counted as failed: none can be now.
    now["failed"] += int(stored.get("sweep/missing", 0))
    diffs = []
    for key in COUNTS:
        was = stored.get(f"sweep/{key}")
        if was != now[key]:
            shown = "not stored" if was is None else f"{was:g} stored"
            diffs.append(f"sweep/{key} {shown}, {now[key]} from its runs now")
    keys = tuple(sorted(k for k in stored if k.startswith("sweep/")))
    return diffs + _history_diffs(store, parent, keys, [])


def record_counts(store: Store, parent: Run, lines: list[str] | None) -> None:
    """replay.counts on the parent: identical, the counts that differ (one a line), or why
    they could not be checked; None removes an earlier replay's (the sweep runs again).
    Nothing when the store cannot be written (the line printed says how they stand)."""
    try:
        if lines is not None:
            log_values(store, parent.info.run_id, tags={COUNTS_TAG: cut_lines(lines)})
        elif COUNTS_TAG in parent.data.tags:
            store.client.delete_tag(parent.info.run_id, COUNTS_TAG)
    except MlflowException:
        pass


def _history_diffs(store: Store, parent: Run, keys: tuple[str, ...], files: list[str]) -> list[str]:
    """The parent's metrics whose latest value is not in their history (one of MLflow's two
    tables changed), whatever options made the answer: each answer stored adds to it."""
    try:
        history = read_curves(
            store.uri, store.client, [parent.info.run_id], keys, keep_repeats=True
        )
    except Exception as exc:  # the store went away
        raise NotCheckable(
            f"its metrics' history cannot be read ({reason(exc)}){_and_files(files)}"
        ) from None
    diffs = []
    for key in keys:
        was = parent.data.metrics.get(key)
        values = history.loc[history["key"] == key, "value"].tolist()
        if was is not None and not any(_same(v, was) for v in values):
            stored = f"its history holds {_few(list(map(str, values)))}" if values else "no history"
            diffs.append(f"metric {key} {was} as its latest value, {stored}")
    return diffs


def _and_files(files: list[str]) -> str:
    """The answer's files changed since, after why it cannot be checked: "; and <the first>
    (and N more)"."""
    if not files:
        return ""
    more = f" (and {len(files) - 1} more)" if len(files) > 1 else ""
    return f"; and {files[0]}{more}"


def _reader(store: Store, run_id: str, tmp: str) -> Callable[[str], bytes]:
    """The bytes of the run's aggregate/<name>, downloaded once into tmp."""
    got: dict[str, bytes] = {}

    def read(name: str) -> bytes:
        if name not in got:
            try:
                path = store.client.download_artifacts(run_id, f"aggregate/{name}", tmp)
                got[name] = Path(path).read_bytes()
            except (MlflowException, OSError, ImportError) as exc:
                raise NotCheckable(f"aggregate/{name} cannot be read ({reason(exc)})") from None
        return got[name]

    return read


def _answer_options(tags: dict[str, str]) -> dict[str, Any]:
    """aggregate.aggregate's options (and the filter) as the parent's tags recorded them."""
    options: dict[str, Any] = {
        "filter": tags.get("aggregate.filter") or None,
        "outcome": tags["aggregate.outcome"],
    }
    for key, default in (("alpha", "0.05"), ("min_effect", "null")):
        value = tags.get(f"aggregate.{key}", default)
        try:
            options[key] = None if value == "null" else float(value)
        except ValueError:
            raise NotCheckable(f"its tag aggregate.{key}={value!r} is not a number") from None
    return options


def _table_diff(name: str, stored: bytes, now: bytes, config_cols: list[str]) -> str:
    """Where two CSV files of one table differ: how many values, and the first, by row (its
    run, configuration, metric and step) and column."""
    try:
        # index_col=False: a row with a field more than its header is not read as an index.
        a, b = (pd.read_csv(io.BytesIO(data), index_col=False) for data in (stored, now))
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' parser errors are ValueErrors
        return f"{name}: the stored file differs, and is not a table ({type(exc).__name__})"
    if list(a.columns) != list(b.columns):
        gone = [c for c in a.columns if c not in b.columns]
        new = [c for c in b.columns if c not in a.columns]
        return f"{name}: columns {gone or 'none'} stored, {new or 'none'} made now"
    if len(a) != len(b):
        rows = f"{name}: {len(a)} rows stored, {len(b)} made now"
        if "run_id" not in a.columns:
            return rows
        # Which runs: one deleted from the store, or added to the sweep, since.
        gone, new = (sorted(set(x["run_id"]) - set(y["run_id"])) for x, y in ((a, b), (b, a)))
        only = [f"{w} only: {_few(ids)}" for w, ids in (("stored", gone), ("now", new)) if ids]
        return f"{rows} ({'; '.join(only)})" if only else rows
    differ = ~((a == b) | (a.isna() & b.isna()))
    count = int(differ.to_numpy().sum())
    if count == 0:
        return f"{name}: the same values, written differently"
    row, col = np.argwhere(differ.to_numpy())[0]
    ids = [c for c in ("run_name", *config_cols, "key", "step") if c in a.columns]
    where = " ".join(f"{c}={a.iat[row, a.columns.get_loc(c)]}" for c in ids) or f"row {row + 1}"
    column = a.columns[col]
    return (
        f"{name}: {count} of {a.size} values differ, first {where} {column} "
        f"{_cell(a.iat[row, col])} -> {_cell(b.iat[row, col])}"
    )


def _few(ids: list[str]) -> str:
    """At most three of the items (run ids, values), and how many more."""
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    return ", ".join(map(str, ids[:3])) + more


def _cell(value: object) -> str:
    """A table's value on one line: text quoted (a run's error may span lines)."""
    return repr(value) if isinstance(value, str) else str(value)


def record_answer(store: Store, check: AnswerCheck) -> None:
    """The parent's tags, as a replayed run's: replay.status, replay.at and, if it differs,
    replay.first_diff and replay.diffs."""
    _record(store, check.parent, check.diffs[0] if check.diffs else "", check.diffs)


def sweep_runs(store: Store, parent: Run, sample: int | None, seed: int) -> tuple[list, list]:
    """A sweep's FINISHED jobs, the runs of other sweeps it reused included (or `sample` of
    them, chosen at random with `seed`), and its other jobs (failed, killed, running), which
    cannot be replayed: those of configurations without a FINISHED run."""
    runs = all_sweep_runs(store, parent, f"tags.{Tag.ROLE} = '{ROLE_JOB}'")
    runs = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
    finished = [r for r in runs if r.info.status == FINISHED]
    if sample is not None and sample < len(finished):
        finished = random.Random(seed).sample(finished, sample)
    # Not a failed try whose configuration finished when the sweep was run again.
    others = [r for r in one_run_per_config(runs) if r.info.status != FINISHED]
    return finished, others


class NotLogged(Exception):
    """replay.log=true could not log the replay: why, and the FAILED run it left, if any."""


def log_replay(store: Store, replay: Replay, cfg: DictConfig, output_dir: Path) -> str:
    """The replay as a new run of the same config, tagged replay.of=<run id>; NotLogged when
    it cannot be (its folder, the store or its artifact store failed)."""
    from fnnlab.job import run

    # Not replay.status: a replay of this run records its own there.
    of = replay.run.info.run_id
    tags = {Tag.REPLAY_OF: of, "replay.of_status": replay.status}
    # Before the run exists: a folder that cannot be made left a FAILED half-made run.
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NotLogged(reason(exc)) from None
    # The original's name: one made by an earlier fnnlab may be spelled otherwise. Not when
    # its config.yaml trains another run (changed since): runs that compute differently are
    # named apart.
    name = replay.run.info.run_name if replay.same_config else None
    since = int(datetime.now(UTC).timestamp() * 1000)
    try:
        return run(cfg, output_dir, store=store, sweep_tags=tags, name=name).run_id
    except Exception as exc:  # the run, if made, ended FAILED with the error in its tags
        left = _failed_replay_runs(store, of, since)
        ended = f"; its run {left[0]} ended FAILED" if left else ""
        raise NotLogged(f"{reason(exc)}{ended}") from None


def _failed_replay_runs(store: Store, of: str, since_ms: int) -> list[str]:
    """The FAILED replay runs of run `of` started since `since_ms` (none when the store
    cannot say)."""
    query = f"tags.`{Tag.REPLAY_OF}` = '{of}' and attributes.status = 'FAILED'"
    try:
        runs = store.client.search_runs([store.experiment_id], query, max_results=10)
    except Exception:  # the store that failed the run
        return []
    return [r.info.run_id for r in runs if (r.info.start_time or 0) >= since_ms]


def find_run(client: MlflowClient, run_id: str) -> Run:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigValueError("replay.run", run_id, "no such run in this store") from None
    if run.data.tags.get(Tag.ROLE) != ROLE_JOB:
        raise ConfigValueError("replay.run", run_id, "not a training run (a sweep's parent?)")
    return run


def existing_store(uri: str, experiment: str, run_id: str | None) -> tuple[Store, Run | None]:
    """The store to replay in, creating neither a database nor an experiment (a typo would
    leave them behind), and replay.run's run: the store of that run's experiment, whatever
    tracking.experiment says, or of tracking.experiment, which must exist."""
    client, _ = connect(uri, None if run_id is not None else experiment)
    run = None
    if run_id is not None:
        run = find_run(client, run_id)
        exp = client.get_experiment(run.info.experiment_id)
        if exp.lifecycle_stage != "active":
            # Named by the key given: tracking.experiment is not the one used here.
            why = f"its experiment {exp.name} {deleted_in_store(exp)} to replay its runs"
            raise ConfigValueError("replay.run", run_id, why)
        if run.info.lifecycle_stage != "active":
            # Else it was retrained, then its tags could not be written: exit 1, as if it
            # differed.
            raise ConfigValueError(
                "replay.run",
                run_id,
                f"is deleted in this store: restore it (`mlflow runs restore --run-id "
                f"{run_id}` with MLFLOW_TRACKING_URI set to the store) to replay it",
            )
        experiment = exp.name
    return open_store(uri, experiment), run
