"""What a user sees while training: one line per finished sweep job, and an epoch bar
for a single run that takes long enough to need one.

Sweep progress is counted in the process that runs the sweep. With the basic launcher
jobs end in that process, and the Hydra callback below reports each one as it ends;
with launchers that run jobs elsewhere the sweeper reports them when their batch returns.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tqdm import tqdm

from fnnlab import ui

if TYPE_CHECKING:
    from fnnlab.job import JobResult

# A single run shows its epoch bar only once it has taken this long.
BAR_AFTER_S = 2.0


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class SweepProgress:
    """Counts a sweep's jobs as they end and prints one short line for each."""

    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.total = total
        self.out = out
        self.done = self.finished = self.failed = self.diverged = 0
        self.started = time.monotonic()
        self.pid = os.getpid()

    def job_ended(self, ret: JobReturn) -> None:
        self.done += 1
        if ret.status == JobStatus.COMPLETED:
            self.finished += 1
            value = ret.return_value
            self.diverged += int(isinstance(value, dict) and bool(value.get("diverged")))
        else:
            self.failed += 1
        print(self.line(time.monotonic() - self.started), file=self.out or sys.stdout, flush=True)

    def line(self, elapsed: float) -> str:
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        return (
            f"[sweep] job {self.done} of {self.total}: {self.finished} finished, "
            f"{self.failed} failed, {self.diverged} diverged; "
            f"{_duration(elapsed)} elapsed, about {_duration(left)} left"
        )


# The sweep running in this process, if any: only that process counts and prints.
_active: SweepProgress | None = None


def start(total: int) -> SweepProgress:
    global _active
    _active = SweepProgress(total)
    return _active


def stop() -> None:
    global _active
    _active = None


def after_batch(progress: SweepProgress, done_before: int, results: list[JobReturn]) -> None:
    """Report the jobs of a batch the callback did not see end (they ran in other processes)."""
    for ret in results[progress.done - done_before :]:
        progress.job_ended(ret)


class ProgressCallback(Callback):
    """hydra.callbacks entry (conf/train.yaml): reports each job of a sweep as it ends."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        # A forked worker inherits _active but is not the process that counts.
        if _active is not None and _active.pid == os.getpid():
            _active.job_ended(job_return)


class EpochBar:
    """fit()'s on_epoch for a single run: a tqdm bar over epochs that stays invisible unless
    training outlasts `delay` seconds. Made at the first epoch, so the delay counts training
    time, not start-up."""

    def __init__(self, epochs: int, delay: float = BAR_AFTER_S, file: TextIO | None = None):
        self.epochs, self.delay, self.file = epochs, delay, file
        self.bar: tqdm | None = None

    def __call__(self, n: int) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=self.epochs,
                desc="epochs",
                unit="epoch",
                delay=self.delay,
                leave=False,
                file=self.file or sys.stderr,
            )
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_line(result: JobResult, tracking_uri: str) -> str:
    """The line each run ends with: name, final loss and accuracy, and its page in the UI."""
    final = result.history.final()
    at = result.history.diverged_at
    return (
        f"{result.run_name}: loss {final.get('loss', float('nan')):.6f} "
        f"accuracy {final.get('accuracy', float('nan')):.3f}"
        f"{f' (diverged at epoch {at})' if at is not None else ''} "
        f"{ui.run_url(ui.base_url(tracking_uri), result.experiment_id, result.run_id)}"
    )
