"""A store that is broken, or breaks under a sweep: found at once, said in one line.

- first_use: a process's first use of a store goes through here. MLflow creates or upgrades
  a database's schema on that first use, unguarded: two processes doing it at once crash,
  and can leave the store unusable for good (a half-done migration). So first uses take
  turns: a file lock beside an SQLite file, an advisory lock on a PostgreSQL database (a
  tracking server migrates its own database when it starts). An SQLite store that cannot be
  read or written (corrupt, unreadable, a read-only file or folder) is refused first, in
  one line: MLflow would retry for about 100 s and log every try.
- StoreFaults: jobs of a sweep that failed, one after another, because the store did (its
  database or server unusable), not because of training. After a few of them the sweep
  stops (StoreFailed) instead of failing every job left; what it left RUNNING is marked
  KILLED by the next invocation, as after a kill.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import requests
import sqlalchemy

from fnnlab.config import ConfigValueError, masked_uri
from fnnlab.errortext import first_line

PERMISSIONS = "check the permissions of the file and its folder"
# How long the write probe waits for another process's write to end: a store that busy is
# writable, and MLflow waits out the lock itself.
PROBE_BUSY_S = 2.0
# A PostgreSQL server that does not answer within this is refused, not waited for.
CONNECT_TIMEOUT_S = 10
# The advisory lock of fnnlab's schema creation (a key of PostgreSQL's bigint lock space).
PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"fnnlab.schema").digest()[:8], "big", signed=True)


class StoreUnusable(ConfigValueError):
    """tracking.uri names a store that cannot be used: one line, exit 2, nothing written."""


def _refuse(uri: str, why: str) -> StoreUnusable:
    return StoreUnusable("tracking.uri", masked_uri(uri), why)


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


@contextlib.contextmanager
def first_use(uri: str, db: Path | None, write: bool = True) -> Iterator[None]:
    """Hold the store's schema lock, after checking an SQLite store can be used.

    db is the SQLite file of uri (None for other stores). write=False for commands that only
    read: then a missing folder is not created, and a folder nobody can write (where no
    schema can be created either) is read without the lock.
    """
    if db is not None:
        with _file_lock(uri, db, write):
            check_sqlite(uri, db, write)
            yield
    elif uri.startswith("postgresql"):
        with _advisory_lock(uri):
            yield
    else:
        yield


@contextlib.contextmanager
def _file_lock(uri: str, db: Path, write: bool) -> Iterator[None]:
    fd = None
    try:
        if write:
            db.parent.mkdir(parents=True, exist_ok=True)
        # Read-only: a lock file another user created (and may not let us write) locks too.
        fd = os.open(lock_path(db), os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as exc:
        if write:
            raise _refuse(uri, f"cannot write {exc.filename}: {exc.strerror}") from None
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file closes
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _advisory_lock(uri: str) -> Iterator[None]:
    # Closing the connection ends the lock too, should the process die holding it.
    try:
        driver = sqlalchemy.engine.make_url(uri).drivername
        # libpq's setting (psycopg2, psycopg: the default); other drivers wait as they do.
        libpq = driver == "postgresql" or "psycopg" in driver
        args = {"connect_timeout": CONNECT_TIMEOUT_S} if libpq else {}
        pool = sqlalchemy.pool.NullPool
        engine = sqlalchemy.create_engine(uri, poolclass=pool, connect_args=args)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:  # a bad URI, no driver
        raise _refuse(uri, first_line(exc)) from None
    try:
        try:
            conn = engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise _refuse(uri, f"cannot connect: {first_line(cause)}") from None
        with conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
    finally:
        engine.dispose()


def check_sqlite(uri: str, db: Path, write: bool = True) -> None:
    """Raise StoreUnusable unless the SQLite file can be read (its schema) and, with write,
    written (a write transaction, rolled back). A missing file needs a folder it can be
    created in (a nameless temporary file probes it); MLflow creates it."""
    if not db.exists():
        if write:
            try:
                tempfile.TemporaryFile(dir=db.parent).close()
            except OSError as exc:
                why = f"cannot create {db} ({exc.strerror}): {PERMISSIONS}"
                raise _refuse(uri, why) from None
        return
    mode = "rw" if write else "ro"  # rw opens a write-protected file read-only
    try:
        conn = sqlite3.connect(
            f"file:{quote(str(db.resolve()))}?mode={mode}",
            uri=True,
            timeout=PROBE_BUSY_S,
            isolation_level=None,
        )
    except sqlite3.Error as exc:
        raise _refuse(uri, f"cannot open {db} ({exc}): {PERMISSIONS}") from None
    try:
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                why = f"{db} is not a usable SQLite database ({exc}): corrupt, or another file"
            else:
                why = f"cannot read {db} ({exc}): {PERMISSIONS}"
            raise _refuse(uri, why) from None
        if write:
            try:
                # Takes the write lock and changes a page; the rollback leaves the file as it was.
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("CREATE TABLE fnnlab_write_probe (x)")
                conn.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    why = f"cannot write {db} ({exc}): it or its folder is read-only"
                    raise _refuse(uri, why) from None
    finally:
        conn.close()


# --- faults under a sweep ---------------------------------------------------------------------

# Errors that say the store's database or server is unusable: not a training error, not a
# bug (an SQL error, a constraint), not an error the store answered with (a bad value).
_FAULTS = (
    StoreUnusable,
    sqlite3.OperationalError,  # read-only, disk I/O error, locked too long, cannot open
    sqlalchemy.exc.OperationalError,  # the same, and a database server that went away
    sqlalchemy.exc.InterfaceError,  # a connection already closed
    requests.exceptions.ConnectionError,  # a tracking server that went away
    requests.exceptions.Timeout,
    requests.exceptions.RetryError,  # a tracking server answering 5xx after every retry
)
# Exactly these, not their subclasses (IntegrityError, ProgrammingError ...): a corrupt file.
_CORRUPT = (sqlite3.DatabaseError, sqlalchemy.exc.DatabaseError)


def is_store_fault(exc: BaseException) -> bool:
    """Whether exc, or an error it was raised from or while handling, is a store fault
    (MLflow raises its own MlflowException from the database's or the HTTP client's)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _FAULTS) or type(e) in _CORRUPT:
            return True
        todo += [e.__cause__, e.__context__]
    return False


class StoreFailed(BaseException):
    """The store failed the last few jobs of a sweep in a row: the sweep stops, exit 1. A
    BaseException, as SweepRefused is: Hydra reports an Exception raised in a callback as a
    warning and carries on with the sweep."""


class StoreFaults:
    """Jobs in a row, in this process, that failed because the store did."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        # Set once a sweep stopped on the store (fnnlab.cli): what it would still write is
        # left to the next invocation; its clean-up must not wait on a dead store.
        self.stopped = False

    def job_ended(self, error: BaseException | None, limit: int, uri: str) -> None:
        """Count a job's end; raise StoreFailed at `limit` store faults in a row."""
        if error is None or not is_store_fault(error):
            self.count = 0
            return
        self.count += 1
        if self.count >= limit:
            raise StoreFailed(
                f"tracking.uri={masked_uri(uri)}: the store failed {self.count} jobs in a row, "
                f"so the sweep stopped ({first_line(_root(error))}); once the store works again, "
                "rerun the same command: it marks the runs left RUNNING KILLED and resumes"
            )


# Per process: a worker counts its own jobs (launchers may unpickle callbacks for every job).
FAULTS = StoreFaults()


def _root(exc: BaseException) -> BaseException:
    """The error at the bottom of the chain: what the database or the network said, not the
    layers that wrapped it (MLflow's, SQLAlchemy's, the HTTP client's)."""
    seen = {id(exc)}
    while (below := exc.__cause__ or exc.__context__) is not None and id(below) not in seen:
        seen.add(id(below))
        exc = below
    return exc
