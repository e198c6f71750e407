"""Who trains a configuration when several invocations share a store, and who is still alive.

MLflow has no lock that works alike on SQLite and through a tracking server's REST API, but
its writes and reads are ordered, and that is enough: a claim is the run itself, written and
then read back.

- A job creates its run (RUNNING, tagged with its config fingerprint), then looks for other
  runs of the same configuration. Alone, it marks its run claimed (tag fnnlab.claimed) and
  trains. Of jobs that create at once, the one that reads last sees the others, so at most
  one sees itself alone, and a claimed run is never given up.
- A job that finds a FINISHED run of its configuration (made by the same code, or by any
  with resume_match=config) deletes its own run and reuses that one. One that finds a
  claimed RUNNING run deletes its own and leaves the configuration to it: its sweep waits
  for that run at its end, and trains the configuration itself if the holder dies. One that
  finds only unclaimed runs (others deciding at the same moment) deletes its own and tries
  again after a random pause. One interrupted while deciding ends its run KILLED, like any
  interrupted job; one whose store fails deletes it.
- A holder is alive, on this host, while the process recorded on its run (fnnlab.pid,
  checked with its start time) lives. On another host it cannot be checked: the run holds a
  lease (tag fnnlab.lease_until, epoch seconds) that the job renews while it works; once it
  has run out, the holder is dead. Runs of dead holders are marked KILLED. Runs without a
  lease were made by an fnnlab without claims and hold nothing.

A deleted run is out of every search and of the MLflow UI's default view (MLflow's garbage
collection purges it later). A sweep's parent run is made unique the same way.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fnnlab.names import FINISHED, KILLED, RUNNING, Tag
from fnnlab.tracking import (
    Store,
    end_after_error,
    end_run,
    log_values,
    retry_locked,
    search_all,
    used_by_tag,
)

log = logging.getLogger(__name__)

# How long a holder on another host counts as alive without renewing its lease.
LEASE_S = 60.0
# Tries of a contested claim, and the longest random pause between two.
TRIES, PAUSE_S = 8, 0.3


def lease_tags() -> dict[str, str]:
    return {Tag.LEASE_UNTIL: f"{time.time() + LEASE_S:.0f}"}


class RunTaken(RuntimeError):
    """A job's run was ended by another invocation before the job could end it."""


class LeaseRenewal:
    """fit()'s on_epoch that renews a run's lease a third of the way through it, so a long
    training keeps its claim; calls `then` (an epoch bar, say) as well. `leased`: when the
    lease the run was made with was taken (epoch s)."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        then: Callable[[int], object] | None = None,
        leased: float | None = None,
    ):
        self.store, self.run_id, self.then = store, run_id, then
        self.due = time.monotonic() + LEASE_S / 3
        # When the lease in the store was taken, by the wall clock, which goes on while the
        # process is stopped; and whether it went unrenewed for half a lease since (renewed
        # every third of one): as long as another host whose clock is up to half a lease
        # ahead of ours takes to find it run out.
        self.leased = time.time() if leased is None else leased
        self.lapsed = False

    def __call__(self, n: int) -> None:
        if time.monotonic() >= self.due:
            self.renew()
        if self.then is not None:
            self.then(n)

    def renew(self) -> None:
        now = time.time()
        self.lapsed |= now - self.leased >= LEASE_S / 2
        log_values(self.store, self.run_id, tags=lease_tags())
        self.leased = max(self.leased, now)  # once the store has it
        self.due = time.monotonic() + LEASE_S / 3

    @contextmanager
    def kept(self) -> Iterator[None]:
        """The lease renewed from another thread while the block runs: writing a run's
        values and files to a slow store can outlast a lease renewed only between epochs,
        and another host would then train the configuration again (helper-66)."""
        done = threading.Event()

        def renew() -> None:
            # When the renewal is due, as between epochs: not a full third of a lease after
            # the block began, which left the lease unrenewed for up to two thirds of one.
            while not done.wait(max(0.0, self.due - time.monotonic())):
                try:
                    self.renew()
                except Exception:  # the store fails: the block's own writes say so
                    return

        thread = threading.Thread(target=renew, name=f"lease {self.run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def taken(self, ended: bool = False) -> str | None:
        """How another invocation ended the run ("KILLED", as mark_dead does, or "deleted")
        while this process stood still (suspended, or cut off from the store) past its
        lease, or None. `ended`: this process has just ended it FINISHED, which may have
        landed after the other's KILLED (mark_dead's error tag then tells). Only a lease
        that went unrenewed for half a lease can have been found run out (by a host whose
        clock is less than that ahead): else no store read."""
        if not (self.lapsed or time.time() - self.leased >= LEASE_S / 2):
            return None
        run = self.store.client.get_run(self.run_id)
        if run.info.lifecycle_stage != "active":
            return "deleted"
        if ended:
            return KILLED if run.data.tags.get(Tag.ERROR, "").startswith(DEAD) else None
        return None if run.info.status == RUNNING else run.info.status


# --- is a run's process alive --------------------------------------------------------------


def _process_start(pid: int) -> float | None:
    """When process pid started (epoch seconds), from /proc; None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration):
        return None
    # Field 22, starttime in clock ticks after boot; the fields after ')' start at field 3.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def process_alive(pid: int, since: float) -> bool:
    """Is the process that started a run at `since` (epoch s) still running on this host?

    A pid can be reused: a process that started after the run did cannot be its owner.
    """
    if pid <= 0 or pid == os.getpid():
        return False
    if Path("/proc/self/stat").exists():
        started = _process_start(pid)
        return started is not None and started <= since + 2  # /proc start times are coarse
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def holder_alive(run: Run, remote_after: float) -> tuple[bool, str]:
    """Whether the process that made a RUNNING run still works on it, and if not, why.

    remote_after: for a run of another host without a lease (made by an older fnnlab), how
    long after its start it counts as dead."""
    tags, started, now = run.data.tags, run.info.start_time / 1000, time.time()
    host = socket.gethostname()
    if tags.get(Tag.HOST) == host:
        pid = tags.get(Tag.PID, "0")
        return process_alive(int(pid), started), f"process {pid} on {host} is gone"
    lease = tags.get(Tag.LEASE_UNTIL)
    if lease is not None:
        return now <= float(lease), f"its lease on {tags.get(Tag.HOST)} ran out"
    return now - started <= remote_after, (
        f"RUNNING on {tags.get(Tag.HOST)} for more than {remote_after:.0f} s"
    )


# The start of the error tag of a run marked KILLED by mark_dead.
DEAD = "found RUNNING after its process ended"


def mark_dead(store: Store, run: Run, why: str) -> None:
    """End a run whose process is gone KILLED, saying why (unless it ended meanwhile, or was
    deleted: a claim's candidate its invocation gave up)."""
    if not is_running(store, run.info.run_id):
        return
    log.warning("run %s (%s): %s; marking it KILLED", run.info.run_name, run.info.run_id, why)
    try:
        log_values(store, run.info.run_id, tags={Tag.ERROR: f"{DEAD}: {why}"})
        end_run(store, run.info.run_id, KILLED)
    except MlflowException:
        # Deleted since the look: a store does not write to a deleted run (helper-67).
        if is_running(store, run.info.run_id):
            raise


def is_running(store: Store, run_id: str) -> bool:
    """The run is RUNNING and not deleted (MLflow keeps a deleted run's status)."""
    info = store.client.get_run(run_id).info
    return info.status == RUNNING and info.lifecycle_stage == "active"


# --- claims ---------------------------------------------------------------------------------

DONE, HELD, PENDING = "done", "held", "pending"


def _look(
    store: Store,
    query: str,
    kind: Callable[[Run], str | None],
    mine: str | None,
    remote_after: float,
) -> tuple[str | None, Run | None]:
    """The best other run `query` finds, by kind(run): done, else held (the earliest), else
    pending; (None, None) when there is none. A held or pending run whose holder is dead is
    marked KILLED and left out."""
    best: dict[str, Run] = {}
    for run in search_all(store, query, ["attributes.start_time ASC"]):
        how = kind(run) if run.info.run_id != mine else None
        if how in (HELD, PENDING):
            alive, why = holder_alive(run, remote_after)
            if not alive:
                mark_dead(store, run, why)
                continue
        if how is not None:
            best.setdefault(how, run)
    for how in (DONE, HELD, PENDING):
        if how in best:
            return how, best[how]
    return None, None


def _claim(
    store: Store,
    query: str,
    kind: Callable[[Run], str | None],
    create: Callable[[], str],
    remote_after: float,
    look_first: bool,
    tries: int = TRIES,
) -> tuple[str, str, Run | None]:
    """('mine', the run `create` made and marked claimed, None), or (done | held | pending,
    run id, run) of the run that has the claim instead, this job's own run deleted."""
    how, other = None, None
    for attempt in range(tries):
        if attempt:
            time.sleep(random.uniform(0, PAUSE_S))
        if attempt or look_first:
            how, other = _look(store, query, kind, None, remote_after)
            if how in (DONE, HELD):
                return how, other.info.run_id, other
            if how == PENDING:
                continue
        mine = create()
        try:
            how, other = _look(store, query, kind, mine, remote_after)
            if how is None:
                log_values(store, mine, tags={Tag.CLAIMED: "true"})
                return "mine", mine, None
        except (KeyboardInterrupt, SystemExit) as exc:
            # Recorded like any interrupted job (its claim may have landed already).
            end_after_error(
                store, mine, exc, tags={Tag.ERROR: f"{type(exc).__name__}: while claiming"}
            )
            raise
        except BaseException:
            retry_locked(store.client.delete_run, mine)  # the store failed: out of view
            raise
        retry_locked(store.client.delete_run, mine)  # lost: nothing of this job stays in view
        if how in (DONE, HELD):
            return how, other.info.run_id, other
    # Still undecided: report the other run; the sweep waits for it and retries if it goes.
    return (how or PENDING), other.info.run_id, other


def claim(
    store: Store,
    fingerprint: str,
    code: str,
    match: str,
    create: Callable[[], str],
    remote_after: float = 86400.0,
) -> tuple[str, str, Run | None]:
    """Claim a configuration for a job (see the module docstring): ('mine', its new run,
    None), or (done | held | pending, run id, run) of another invocation's run."""

    def kind(run: Run) -> str | None:
        if match == "code" and run.data.tags.get(Tag.CODE) != code:
            return None  # made by other code: it does not count (resume_match=code)
        if run.info.status == FINISHED:
            return DONE
        if run.info.status != RUNNING or Tag.LEASE_UNTIL not in run.data.tags:
            return None  # ended unfinished, or made by an fnnlab without claims
        return HELD if run.data.tags.get(Tag.CLAIMED) == "true" else PENDING

    # One tag in the filter: a job's run is the only kind with a fingerprint.
    query = f"tags.{Tag.FINGERPRINT} = '{fingerprint}'"
    return _claim(store, query, kind, create, remote_after, look_first=False)


def unique_run(
    store: Store, query: str, create: Callable[[], str], remote_after: float = 86400.0
) -> tuple[str, bool]:
    """The one run `query` finds (a sweep's parent), created with `create` if there is none,
    however many invocations ask at once: (run id, created here)."""

    def kind(run: Run) -> str | None:
        if run.data.tags.get(Tag.CLAIMED) == "true" or Tag.LEASE_UNTIL not in run.data.tags:
            return DONE  # the parent (made by an fnnlab without claims if it has no lease)
        # One that another invocation is deciding on now; or that lost, or whose maker died
        # deciding: never the parent.
        return PENDING if run.info.status == RUNNING else None

    # Undecided parents settle within a few store calls; this many tries is a store failing.
    how, run_id, _ = _claim(store, query, kind, create, remote_after, look_first=True, tries=50)
    if how == PENDING:
        raise RuntimeError(f"no parent run settled for {query}")
    return run_id, how == "mine"


def use_run(store: Store, run: Run, parent_run_id: str, sid: str) -> None:
    """Count another sweep's run (or one of an earlier version of this sweep) in this one."""
    if run.data.tags.get(Tag.PARENT) == parent_run_id:
        return
    try:
        log_values(store, run.info.run_id, tags={used_by_tag(sid): parent_run_id})
    except MlflowException:
        # An unclaimed run deleted meanwhile: the sweep tries the configuration again.
        log.info("run %s is gone; not counted in sweep %s", run.info.run_id, sid)
