"""Job retention: finished top-level jobs older than `retention_days` go, with their children,
attempts, dependency rows and log files (AWS keeps jobs for a limited time too)."""

from __future__ import annotations

import logging
from pathlib import Path

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
        siblings: dict[Path, list[Path]] = {}
        for stream in streams:
            # An `ecsProperties` attempt's containers log beside it, `<definition>/<container>/<task>`.
            path = self.settings.log_file(stream)
            path.unlink(missing_ok=True)
            definition_dir = path.parent.parent
            if definition_dir not in siblings:
                siblings[definition_dir] = [d for d in _subdirectories(definition_dir) if d != path.parent]
            for directory in siblings[definition_dir]:
                (directory / path.name).unlink(missing_ok=True)
        if ids:
            log.info("purged %d jobs finished before the retention window", len(ids))


def _subdirectories(directory: Path) -> list[Path]:
    """`directory`'s subdirectories (none if it cannot be read)."""
    try:
        return [entry for entry in directory.iterdir() if entry.is_dir()]
    except OSError:
        return []
