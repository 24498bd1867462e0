"""Engine creation and transactions.

SQLite runs in WAL mode: readers never block the writer, and with `synchronous=NORMAL` a commit
survives a killed process; `synchronous=FULL` (the `fsync` setting) also survives power loss.
One process-wide lock serialises SQLite writers so threads queue instead of failing with
"database is locked".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

from kiln.store import migrate


def _sqlite_pragmas(fsync: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return on_connect


class Database:
    """Owns the engine; hands out write transactions (`begin`) and read connections (`read`)."""

    def __init__(self, url: str, *, fsync: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine: Engine = create_engine(url, future=True, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas(fsync))
        self._write_lock = threading.RLock()
        migrate.upgrade(self.engine)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction, committed when the block exits without an exception."""
        with self._write_lock, self.engine.begin() as connection:
            yield connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only view; under WAL it never waits for the writer."""
        with self.engine.connect() as connection:
            yield connection

    def close(self) -> None:
        self.engine.dispose()
