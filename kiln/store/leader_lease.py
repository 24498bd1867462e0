"""Scheduler leadership: of the servers sharing one database, exactly one places jobs.

On PostgreSQL the lease is a session-level advisory lock (`pg_try_advisory_lock`) held on a
connection of its own, outside the pool. PostgreSQL releases it when that session ends, so a leader
that dies (SIGKILL, host loss, lost connection) loses the lease as soon as its connection closes; a
standby tries to take it every `retry_seconds`. A leader re-checks its connection every
`check_seconds` and steps down the moment the check fails: with the connection gone, so is the lock.

The lease decides who schedules; it is not what keeps a job from being placed twice. Every write
transaction takes the database's write lock (`kiln.store.database`), and a placement moves a job
only from RUNNABLE, so even two servers ticking at once during a hand-over place each job once.

On SQLite the lease is always held: the data dir's file lock already allows one server per database.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# Advisory lock key of the scheduler lease ("kiln" + "ld"); one per database.
LEASE_KEY = 0x6B696C6E6C64
CHECK_SECONDS = 1.0
RETRY_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 10
DEAD_PEER_SECONDS = 11


def _dead_peer_limits(engine: Engine) -> dict[str, Any]:
    """Bound how long a silent network keeps the lease alive, on both ends of its connection: the
    client notices within about DEAD_PEER_SECONDS (and steps down), and so does the server, which
    then ends the session and frees the lock for a standby (PostgreSQL 12+; ignored on unix sockets)."""
    idle, interval, count = 5, 2, 3
    limits: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS, "keepalives": 1, "keepalives_idle": idle,
        "keepalives_interval": interval, "keepalives_count": count, "tcp_user_timeout": DEAD_PEER_SECONDS * 1000,
    }  # fmt: skip
    if "options" not in engine.url.query:  # never override the user's own server options
        limits["options"] = (
            f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} -c tcp_keepalives_count={count} "
            f"-c tcp_user_timeout={DEAD_PEER_SECONDS * 1000}"
        )
    return limits


class LeaderLease(Protocol):
    def held(self) -> bool:
        """Whether this server may schedule now (cheap: called before every scheduler tick)."""
        ...

    def release(self) -> None:
        """Give the lease up (server shutdown) so a standby takes over at once."""
        ...


class AlwaysHeld:
    """The lease of a database only one server can open (SQLite)."""

    def held(self) -> bool:
        return True

    def release(self) -> None:
        return None


class AdvisoryLockLease:
    """A PostgreSQL session advisory lock on a dedicated connection; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        *,
        check_seconds: float = CHECK_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Its own engine without a pool: closing the connection must end the session (and so the lock),
        # not park it in a pool still holding the lease.
        self._engine = create_engine(engine.url, poolclass=NullPool, connect_args=_dead_peer_limits(engine))
        self.check_seconds, self.retry_seconds, self._clock = check_seconds, retry_seconds, clock
        self._connection: Connection | None = None
        self._held = self._released = False
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def held(self) -> bool:
        with self._lock:
            if self._released:
                return False
            interval = self.check_seconds if self._held else self.retry_seconds
            if self._clock() - self._checked_at < interval:
                return self._held
            self._checked_at = self._clock()
            try:
                self._check()
            except SQLAlchemyError as exc:
                if self._held:
                    log.warning("scheduler lease lost (%s); this server stops scheduling", exc.__class__.__name__)
                self._disconnect()
            return self._held

    def _check(self) -> None:
        if self._connection is None:
            self._connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if self._held:
            self._connection.execute(select(1)).scalar_one()  # the session lives, so the lock is ours
            return
        self._held = bool(self._connection.execute(select(func.pg_try_advisory_lock(LEASE_KEY))).scalar_one())
        if self._held:
            log.info("scheduler lease acquired: this server schedules jobs")

    def _disconnect(self) -> None:
        self._held = False
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):  # already broken: closing it is all we want
                self._connection.close()
            self._connection = None

    def release(self) -> None:
        """Give the lease up for good (server shutdown): a released lease is never taken again."""
        with self._lock:
            self._released = True
            self._disconnect()
        self._engine.dispose()


def for_engine(engine: Engine) -> LeaderLease:
    """The lease that fits the database: an advisory lock on PostgreSQL, always held on SQLite."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLockLease(engine)
    return AlwaysHeld()
