"""Job retention: finished top-level jobs older than `retention_days` go, with their children,
attempts, dependency rows and log files (AWS keeps jobs for a limited time too)."""

from __future__ import annotations

import logging

from kiln.config import Settings
from kiln.engine.lifecycle import FINISHED
from kiln.store.database import Database
from kiln.store.repository import Repository

log = logging.getLogger(__name__)
CHECK_SECONDS = 60.0  # at most this often (or a quarter of the retention, if shorter)


class Retention:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db, self.settings = db, settings
        self._last_check = 0.0

    def purge_expired(self, now_ms: int) -> None:
        """Purge what expired, unless the last check was too recent (the scheduler calls it every tick)."""
        retention_ms = int(self.settings.retention_days * 86_400_000)
        if now_ms / 1000 - self._last_check < min(CHECK_SECONDS, retention_ms / 4000):
            return
        self._last_check = now_ms / 1000
        cutoff = now_ms - retention_ms
        with self.db.begin() as connection:
            repo = Repository(connection)
            ids = repo.jobs.expired(cutoff, FINISHED)
            streams = repo.attempts.log_streams_of(ids + repo.jobs.child_ids(ids))
            repo.jobs.purge(ids)
        for stream in streams:
            self.settings.log_file(stream).unlink(missing_ok=True)
        if ids:
            log.info("purged %d jobs finished before the retention window", len(ids))
