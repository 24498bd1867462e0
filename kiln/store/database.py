"""Engine creation and transactions, on SQLite (the default) or PostgreSQL.

SQLite runs in WAL mode: readers never block the writer, and with `synchronous=NORMAL` a commit
survives a killed process; `synchronous=FULL` (the `fsync` setting) also survives power loss.
One process-wide lock serialises writers so threads queue instead of failing with
"database is locked".

PostgreSQL keeps SQLite's one-writer-at-a-time semantics, across every server sharing the database:
each write transaction first takes a transaction-scoped advisory lock. The domain code reads, decides
and then writes inside one transaction (status transitions, revision numbers, placements), which is
only safe when no other writer commits in between; on SQLite the file lock guarantees that, here the
advisory lock does. Under READ COMMITTED every statement after the lock sees everything committed
before it. Readers are never blocked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from kiln.errors import ValidationError
from kiln.store import migrate

# Advisory lock key serialising write transactions on PostgreSQL ("kiln" + "wr").
WRITE_LOCK_KEY = 0x6B696C6E7772
# Connections per server process: API requests run on a thread pool, the scheduler on its own thread.
POSTGRES_POOL_SIZE = 10
POSTGRES_MAX_OVERFLOW = 20


def _sqlite_pragmas(fsync: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return on_connect


def _engine(url: str) -> Engine:
    """An engine for `url`; a URL Kiln cannot use is a ValidationError saying why (no traceback)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValidationError("cannot parse the database URL: use sqlite:///PATH or postgresql+psycopg://...") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValidationError(f"unsupported database URL {shown}: use sqlite:///PATH or postgresql+psycopg://...")
    try:
        if parsed.get_backend_name() == "sqlite":
            return create_engine(parsed)
        return create_engine(
            parsed, pool_size=POSTGRES_POOL_SIZE, max_overflow=POSTGRES_MAX_OVERFLOW, pool_pre_ping=True
        )
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ValidationError(f"cannot use the database URL {shown}: {exc}") from None


class Database:
    """Owns the engine; hands out write transactions (`begin`) and read connections (`read`)."""

    def __init__(self, url: str, *, fsync: bool = False) -> None:
        self.url = url
        self.engine: Engine = _engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.is_postgresql = self.engine.dialect.name == "postgresql"
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas(fsync))
        self._write_lock = threading.RLock()
        try:
            migrate.upgrade(self.engine)
        except OperationalError as exc:
            self.engine.dispose()
            reason = str(exc.orig).strip() if exc.orig is not None else str(exc)
            shown = self.engine.url.render_as_string(hide_password=True)
            raise ValidationError(f"cannot open the database {shown}: {reason}") from None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction, committed when the block exits without an exception."""
        with self._write_lock, self.engine.begin() as connection:
            if self.is_postgresql:
                connection.execute(select(func.pg_advisory_xact_lock(WRITE_LOCK_KEY)))
            yield connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only view; it never waits for the writer."""
        with self.engine.connect() as connection:
            yield connection

    def close(self) -> None:
        self.engine.dispose()
