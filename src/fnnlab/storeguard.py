"""A store used by several processes at once: one healthy store.

first_use: a process's first use of a store goes through here. MLflow creates or upgrades a
database's schema on that first use, unguarded: two processes doing it at once crash, and
can leave the store unusable for good (a half-done migration). So first uses take turns: a
file lock beside an SQLite file, an advisory lock on a PostgreSQL database (a tracking
server migrates its own database when it starts).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy

from fnnlab.config import ConfigValueError, masked_uri

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
    """Hold the store's schema lock.

    db is the SQLite file of uri (None for other stores). write=False for commands that only
    read: then a missing folder is not created, and a folder nobody can write (where no
    schema can be created either) is read without the lock.
    """
    if db is not None:
        with _file_lock(uri, db, write):
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
    driver = sqlalchemy.engine.make_url(uri).drivername
    # libpq's setting (psycopg2, the default, or psycopg); other drivers wait as they do.
    libpq = driver == "postgresql" or "psycopg" in driver
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if libpq else {}
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool, connect_args=args)
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


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
