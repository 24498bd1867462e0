"""Where an attempt's output lives: one file per log stream under the data dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln.context import Context, require_job
from kiln.engine import multi_container
from kiln.engine.attempts import resolved_specs
from kiln.engine.lifecycle import TERMINAL, Status
from kiln.errors import NotFoundError, ValidationError
from kiln.store.records import Attempt, Job


@dataclass(frozen=True)
class LogLocation:
    stream: str
    path: Path
    finished: bool  # no more output will come (attempt over, job terminal or retrying)


def locate(ctx: Context, job_id: str, attempt_number: int | None, container: str | None = None) -> LogLocation:
    """The log of attempt `attempt_number` (1-based; default: the latest) of a job; with
    `container`, that container's of an `ecsProperties` or `eksProperties` job (else the attempt's own)."""
    job = require_job(ctx, job_id)
    if job.num_nodes is not None:  # an MNP job's log is its main node's
        job_id = f"{job_id}#{job.spec['nodeProperties']['mainNode']}"
        job = require_job(ctx, job_id)
    if job.array_size is not None:
        raise ValidationError(f"Job {job_id} is an array parent; ask for a child's log, e.g. {job_id}:0")
    attempts = ctx.repo.attempts.of_jobs([job_id])[job_id]
    if not attempts:
        raise NotFoundError(f"Job {job_id} has not started an attempt yet (status {job.status})")
    if attempt_number is None:
        attempt = attempts[-1]
    elif 1 <= attempt_number <= len(attempts):
        attempt = attempts[attempt_number - 1]
    else:
        raise ValidationError(f"Job {job_id} has {len(attempts)} attempt(s); attempt {attempt_number} does not exist")
    finished = attempt.stopped_at is not None and (
        Status(job.status) in TERMINAL or attempt is not attempts[-1] or job.status == Status.RUNNABLE.value
    )
    stream = attempt.log_stream if container is None else _container_stream(ctx, job, attempt, container)
    return LogLocation(stream, ctx.settings.log_file(stream), finished)


def _container_stream(ctx: Context, job: Job, attempt: Attempt, container: str) -> str:
    spec = resolved_specs(ctx.repo, [job], {})[job.id]
    names = multi_container.container_names(spec)
    if names is None:
        raise ValidationError(f"Job {job.id} has one container (containerProperties); leave out the container name")
    if container not in names:
        raise ValidationError(f"Job {job.id} has no container {container} (containers: {', '.join(names)})")
    return multi_container.stream_name(spec["jobDefinitionName"], container, attempt.task_id)
