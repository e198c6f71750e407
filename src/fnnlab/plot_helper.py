"""A run's two PNGs, drawn in a helper process while the job writes its metrics.

Drawing the two plots costs a job about as much CPU as writing its metrics, and a
sweep that runs its jobs one after another leaves the second core idle. The fnnlab
launcher therefore starts one helper process per sweep (start()/stop()). A job hands
the helper its curves first and writes its metrics; the PNGs are waited for before
the run's artifacts are uploaded and the run ends, so a FINISHED run is still complete.
That wait is in the next job (fnnlab.job.deferred_ends), so several runs' requests can
be outstanding; the helper answers them in order.

Without a ready helper (a single run, another launcher's worker, the helper still
importing matplotlib, or a helper that died) the job draws the plots itself; the code
and the PNGs are the same either way. The helper reads requests from its stdin and
exits when that closes, so it cannot outlive the process that started it.

Run as `python -m fnnlab.plot_helper` by start(), never by hand.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

# Imported here, not at the first plot: a sweep's workers import this module up front.
from fnnlab import plots

log = logging.getLogger(__name__)

READY = b"ready\n"


class Curves(NamedTuple):
    """What the plots read from a History, without torch (the helper never imports it):
    the values at `steps` (every epoch of a short run; a long run's min and max per slice
    of epochs, see plots.envelope), so a long run costs the plots no more than a short one."""

    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    diverged_at: int | None

    @classmethod
    def of(cls, history: Any) -> Curves:
        steps, metrics = plots.envelope(history.metrics)
        return cls(steps, metrics, history.diverged_at)


def draw(curves: Curves, art: Path, name: str, published: dict[int, float] | None) -> None:
    """The per-run plots, into the run's artifact folder."""
    plots.loss_plot(curves, art / "loss.png", name, published)
    plots.grad_norm_plot(curves, art / "grad_norm.png", name)


class _Helper:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fnnlab.plot_helper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.ready = False
        # Requests sent whose reply is not read yet, oldest first: replies come in order.
        self.waiting: deque[Pending] = deque()

    def read_reply(self) -> None:
        """Read the next reply, which answers the oldest request still waiting."""
        assert self.proc.stdout is not None
        reply = pickle.load(self.proc.stdout)
        pending = self.waiting.popleft()
        pending.helper, pending.error = None, reply

    def is_ready(self, wait: float = 0) -> bool:
        """True once the helper has imported and warmed up; waits at most `wait` seconds."""
        if not self.ready and self.proc.poll() is None:
            out = self.proc.stdout
            assert out is not None
            if select.select([out], [], [], wait)[0]:
                self.ready = out.readline() == READY
        return self.ready and self.proc.poll() is None

    def stop(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_helper: _Helper | None = None


def start() -> None:
    """Start the helper, unless there is no second core to draw on. Returns at once."""
    global _helper
    if _helper is None and (os.cpu_count() or 1) > 1:
        _helper = _Helper()


def stop() -> None:
    global _helper
    helper, _helper = _helper, None
    if helper is not None:
        helper.stop()


class Pending:
    """Plots being drawn for one run. wait() returns once both PNGs exist and raises a
    drawing error as drawing in the job would have; discard() only waits.

    Several runs' plots may be pending at once (fnnlab.job defers a run's end to the next
    job); each wait() reads replies in order until its own has come."""

    def __init__(self, helper: _Helper | None = None, request: tuple = ()) -> None:
        self.helper, self.request = helper, request
        self.error: BaseException | None = None
        self.lost = False  # the helper went away before replying: draw here
        if helper is not None:
            helper.waiting.append(self)

    @property
    def in_helper(self) -> bool:
        """Whether the helper is drawing these plots (else they were drawn already)."""
        return self.helper is not None

    def wait(self, draw_if_lost: bool = True) -> None:
        helper = self.helper
        if helper is not None:
            try:
                while self.helper is not None:
                    helper.read_reply()
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                # The helper is gone (killed with its process group, say): every run
                # still waiting on it draws its own plots.
                _lost(helper, exc)
        if self.lost:
            self.lost = False
            if draw_if_lost:
                draw(*self.request)
        error, self.error = self.error, None
        if error is not None:
            raise error

    def discard(self) -> None:
        """Read the helper's reply, so that no other run gets this one's; draw nothing."""
        try:
            self.wait(draw_if_lost=False)
        except Exception:
            pass


# A sweep that fails between starting the helper and launching its jobs still stops it.
atexit.register(stop)


def begin(curves: Curves, art: Path, name: str, published: dict[int, float] | None) -> Pending:
    """Start drawing a run's plots: in the helper when one is ready, else here and now."""
    request = (curves, art, name, published)
    helper = _helper
    if helper is not None and helper.proc.poll() is not None:
        _lost(helper, RuntimeError(f"exit status {helper.proc.returncode}"))
        helper = None
    if helper is not None and helper.is_ready():
        try:
            assert helper.proc.stdin is not None
            pickle.dump(request, helper.proc.stdin)
            helper.proc.stdin.flush()
            return Pending(helper, request)
        except OSError as exc:
            _lost(helper, exc)
    draw(*request)
    return Pending()


def _lost(helper: _Helper, exc: BaseException) -> None:
    global _helper
    log.warning("plot helper stopped (%s); drawing plots in the job", exc or type(exc).__name__)
    while helper.waiting:
        pending = helper.waiting.popleft()
        pending.helper, pending.lost = None, True
    if _helper is helper:
        _helper = None


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The helper's loop: one reply (None or the exception) per request, until EOF."""
    # Warm up (fonts, the reusable figures) before saying ready, so the first run's
    # plots do not wait on it.
    plots.warm_up()
    replies.write(READY)
    replies.flush()
    while True:
        try:
            request: Any = pickle.load(requests)
        except EOFError:
            return
        try:
            draw(*request)
            reply = pickle.dumps(None)
        except Exception as exc:  # returned to the job, which fails its run with it
            try:
                reply = pickle.dumps(exc)
            except Exception:
                reply = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
        replies.write(reply)
        replies.flush()


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group; the sweep handles it, and this process
    # ends when the sweep closes its stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Replies go to the real stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(sys.stdin.buffer, replies)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the sweep ended (a bad config, say) before this process was done
    # Nothing left to flush: every reply was flushed, and the sweep may be gone.
    os._exit(0)
