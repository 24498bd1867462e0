"""What every API operation (Batch and Logs) gets: a repository inside one transaction, ARNs,
settings, time."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.arns import Arns
from kiln.config import Settings
from kiln.errors import NotFoundError
from kiln.store.records import Job
from kiln.store.repository import Repository


@dataclass
class Context:
    repo: Repository
    arns: Arns
    settings: Settings
    now: int


def require_job(ctx: Context, job_id: str) -> Job:
    """The job's row, or AWS's `Job <id> not found.` (a 400 ClientException)."""
    job = ctx.repo.jobs.get(job_id)
    if job is None:
        raise NotFoundError(f"Job {job_id} not found.")
    return job
