"""After a restart (or on taking the lease over from another server): account for every attempt a
previous server process placed and the store still holds as active.

The executor says which it still knows (`Executor.adopt`): adopted ones carry on, never-started
ones are started now as the same attempt, and the rest fail as a lost host (AWS's text), so each
job is retried per its strategy instead of hanging.
"""

from __future__ import annotations

import logging

from kiln.clock import now_ms
from kiln.engine.attempts import AttemptBuilder
from kiln.engine.lifecycle import progress
from kiln.executors.base import HOST_TERMINATED, AttemptExited, Executor
from kiln.store.database import Database
from kiln.store.repository import Repository

log = logging.getLogger(__name__)


def reconcile_lost_attempts(
    db: Database, executor: Executor, builder: AttemptBuilder, placer: str, host_id: str
) -> None:
    """`placer` is this server's mark on the attempts it places (`attempts.placed_by`)."""
    reason = HOST_TERMINATED.format(host=host_id)
    with db.begin() as connection:
        repo = Repository(connection)
        attempts = repo.attempts.active()
        jobs = {j.id: j for j in repo.jobs.get_many([a.job_id for a in attempts])}
        specs = builder.specs(repo, list(jobs.values()))
        # Only this server's executor can know its own attempts; after a takeover on a shared
        # PostgreSQL database, those the previous leader placed are lost with its host.
        ours = [a.task_id for a in attempts if a.placed_by in (None, placer)]
        adoption = executor.adopt(ours)
        exits, relaunch = [], []
        for attempt in attempts:
            job = jobs.get(attempt.job_id)
            if job is None or attempt.task_id in adoption.known:
                continue
            if attempt.task_id in adoption.never_started:
                relaunch.append(builder.attempt_spec(job, specs[job.id], attempt.task_id, attempt.number,
                                                     attempt.compute_environment, attempt.log_stream))  # fmt: skip
                continue
            event = AttemptExited(attempt.task_id, now_ms(), None, reason, started=attempt.started_at is not None)
            exits.append(progress.Exit(job, attempt, event, specs[job.id].get("retryStrategy")))
        progress.record_exits(repo, exits)
    for attempt_spec in relaunch:
        executor.start(attempt_spec)
    if relaunch:
        log.info("started %d attempts placed just before the previous server stopped", len(relaunch))
