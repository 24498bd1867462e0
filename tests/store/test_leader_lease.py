"""The scheduler lease against a real PostgreSQL server: one holder at a time, released on close,
lost with its session (killed backend, killed process), trivially held on SQLite."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine

from kiln.store.leader_lease import AdvisoryLockLease, AlwaysHeld, for_engine
from tests.postgres import PostgresCluster


def lease(url: str) -> AdvisoryLockLease:
    return AdvisoryLockLease(create_engine(url), check_seconds=0, retry_seconds=0)


def wait_until_held(candidate: AdvisoryLockLease, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if candidate.held():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"lease not acquired within {seconds} s")


def test_sqlite_lease_is_always_held(tmp_path: Path) -> None:
    chosen = for_engine(create_engine(f"sqlite:///{tmp_path}/k.db"))
    assert isinstance(chosen, AlwaysHeld)
    assert chosen.held() is True


def test_one_holder_at_a_time_and_release_hands_over(fresh_postgres_url: str) -> None:
    first, second = lease(fresh_postgres_url), lease(fresh_postgres_url)
    assert isinstance(for_engine(create_engine(fresh_postgres_url)), AdvisoryLockLease)
    try:
        assert first.held() is True
        assert second.held() is False
        # A silent network frees the lease within seconds: the server drops the session itself.
        session = first._connection
        assert session is not None
        assert session.exec_driver_sql("SHOW tcp_keepalives_idle").scalar_one() == "5"
        assert session.exec_driver_sql("SHOW tcp_user_timeout").scalar_one() == "11000"
        assert first.held() is True  # re-checking keeps it
        first.release()
        assert first.held() is False  # released for good: a stopping server never leads again
        wait_until_held(second, 5)
        assert first.held() is False
    finally:
        first.release()
        second.release()


def test_lease_is_lost_with_its_session(fresh_postgres_url: str, postgres_cluster: PostgresCluster) -> None:
    """A leader whose connection dies stops leading at its next check; a standby takes over."""
    leader, standby = lease(fresh_postgres_url), lease(fresh_postgres_url)
    database = fresh_postgres_url.rsplit("/", 1)[1]
    try:
        assert leader.held() is True
        assert standby.held() is False
        with postgres_cluster.connect() as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks JOIN pg_database d ON d.oid = pg_locks.database "
                "WHERE locktype = 'advisory' AND granted AND d.datname = %s",
                (database,),
            ).fetchall()
        assert killed == [(True,)]
        assert leader.held() is False
        wait_until_held(standby, 5)
        assert leader.held() is False  # it reconnects, but the lease now belongs to the standby
    finally:
        leader.release()
        standby.release()


def test_a_killed_holder_process_frees_the_lease_at_once(fresh_postgres_url: str) -> None:
    code = (
        "import sys, time; from sqlalchemy import create_engine; "
        "from kiln.store.leader_lease import AdvisoryLockLease; "
        "lease = AdvisoryLockLease(create_engine(sys.argv[1])); "
        "print(lease.held(), flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, fresh_postgres_url], stdout=subprocess.PIPE, text=True)
    standby = lease(fresh_postgres_url)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        assert standby.held() is False
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert wait_until_held(standby, 5) < 5
    finally:
        holder.kill()
        holder.wait(timeout=10)
        standby.release()
