"""What a user sees while training: a line per sweep job that ends in the sweep's process,
the sweep's closing line, and an epoch bar for a single run that takes long enough to
need one."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from fnnlab import links

if TYPE_CHECKING:
    from fnnlab.job import Claimed, JobResult

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

    def __init__(self, total: int | None, out: TextIO | None = None) -> None:
        self.total = total  # None: the sweeper chooses its jobs as it goes
        self.out = out
        self.done = self.finished = self.failed = self.diverged = 0
        self.started = time.monotonic()
        self.first_job: float | None = None  # when the first job started: the pace is from it

    def skip(self, jobs: int) -> None:
        """Jobs the sweeper skipped (a FINISHED run has their configuration): not run, not
        counted, else the lines say a job of more than run and the time left is too long."""
        if self.total is not None:
            self.total = max(self.total - jobs, 0)

    def job_started(self) -> None:
        if self.first_job is None:
            self.first_job = time.monotonic()

    def job_ended(self, completed: bool, diverged: bool) -> None:
        self.done += 1
        self.finished += completed
        self.failed += not completed
        self.diverged += completed and diverged
        since = self.first_job if self.first_job is not None else self.started
        print(self.line(time.monotonic() - since), file=self.out or sys.stdout, flush=True)

    def line(self, elapsed: float) -> str:
        of = f" of {self.total}" if self.total else ""
        left = ""
        if self.total and self.done:
            left = f", about {_duration(elapsed / self.done * max(self.total - self.done, 0))} left"
        return (
            f"[sweep] job {self.done}{of}: {self.finished} finished, "
            f"{self.failed} failed, {self.diverged} diverged; {_duration(elapsed)} elapsed{left}"
        )

    def summary(self, counts: Counter, sweep_id: str, parent_run_id: str) -> str:
        """The sweep's closing line: its configurations as the store holds them."""
        elapsed = _duration(time.monotonic() - self.started)
        running = f", {counts['running']} still running" if counts["running"] else ""
        reused = f", {counts['reused']} reused from outside this sweep" if counts["reused"] else ""
        return (
            f"[sweep] {sweep_id} done in {elapsed}: {counts['finished']} finished "
            f"({counts['diverged']} diverged{reused}), {counts['failed']} failed{running}; "
            f"parent run {parent_run_id}"
        )


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


def run_line(result: JobResult, base: str) -> str:
    """The line each run ends with: name, final loss and accuracy, and its page in the UI.
    A diverged run's values are the last before it diverged: the line says so, since alone
    they read as where the run ended."""
    final = result.history.final()
    at = result.history.diverged_at
    return (
        f"{result.run_name}: loss {final.get('loss', float('nan')):.6f} "
        f"accuracy {final.get('accuracy', float('nan')):.3f}"
        f"{f' (the last before it diverged at epoch {at})' if at is not None else ''} "
        f"{links.run_url(base, result.experiment_id, result.run_id)}"
    )


def claimed_line(claimed: Claimed, base: str) -> str:
    """The line of a sweep job whose configuration another invocation has (fnnlab.claims)."""
    how = "finished" if claimed.how == "done" else "is training it"
    return (
        f"{claimed.run_name}: another invocation {how}; this sweep uses its run "
        f"{links.run_url(base, claimed.experiment_id, claimed.run_id)}"
    )
