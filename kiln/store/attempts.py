"""The attempts aggregate: each try of a job, what running ones hold, and attempts seen as
CloudWatch log streams."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, case, func, or_, select, update

from kiln.store.queries import Queries, Values, bound_values, same_keys
from kiln.store.records import Attempt, Document, EnvironmentUsage, Stream
from kiln.store.schema import attempts, job_shares, jobs

_TERMINATED_ACTIVE = (
    select(attempts.c.task_id, jobs.c.spec)
    .join_from(attempts, jobs, jobs.c.id == attempts.c.job_id)
    .where(attempts.c.active.is_(True), jobs.c.is_terminated.is_(True))
)
_USAGE = (
    select(
        attempts.c.compute_environment,
        func.sum(attempts.c.vcpus).label("vcpus"),
        func.sum(attempts.c.memory_mib).label("memory_mib"),
        func.sum(attempts.c.gpus).label("gpus"),
        func.count().label("attempts"),
    )
    .where(attempts.c.active.is_(True))
    .group_by(attempts.c.compute_environment)
)
_STREAM_COLUMNS = (attempts.c.task_id, attempts.c.log_stream, attempts.c.started_at, attempts.c.stopped_at)


class AttemptStore(Queries):
    def insert(self, records_: Sequence[Attempt]) -> None:
        self._insert(attempts, records_)

    def update_each(self, rows: Sequence[Values]) -> None:
        """One executemany per set of keys: each row has `_task_id` plus the values to set."""
        for group in same_keys(rows):
            statement = update(attempts).where(attempts.c.task_id == bindparam("_task_id"))
            self.connection.execute(statement.values(**bound_values(group[0], "_task_id")), list(group))

    def get(self, task_id: str) -> Attempt | None:
        return self._first(select(attempts).where(attempts.c.task_id == task_id), Attempt)

    def get_many(self, task_ids: Sequence[str]) -> list[Attempt]:
        return self._all_among(select(attempts), attempts.c.task_id, task_ids, Attempt)

    def of_jobs(self, job_ids: Sequence[str]) -> dict[str, list[Attempt]]:
        """Each job's attempts, first try first."""
        result: dict[str, list[Attempt]] = {job_id: [] for job_id in job_ids}
        query = select(attempts).order_by(attempts.c.number)  # a job's attempts all come in one chunk
        for attempt in self._all_among(query, attempts.c.job_id, job_ids, Attempt):
            result[attempt.job_id].append(attempt)
        return result

    def active(self) -> list[Attempt]:
        return self._all(select(attempts).where(attempts.c.active.is_(True)), Attempt)

    def terminated_active(self) -> list[tuple[str, Document]]:
        """Attempts still active whose job a user terminated: task id and the job's spec (its
        stopReason). A join, so a sweep reads no row per active attempt, only the few to signal."""
        return [(str(task_id), spec) for task_id, spec in self.connection.execute(_TERMINATED_ACTIVE)]

    def usage_by_environment(self) -> dict[str, EnvironmentUsage]:
        """What running attempts hold, summed per compute environment: one row each, not a row per
        attempt (the scheduler asks on every tick). PostgreSQL sums as NUMERIC: made plain here."""
        return {
            str(env): EnvironmentUsage(str(env), float(vcpus or 0), int(memory or 0), int(gpus or 0), int(count))
            for env, vcpus, memory, gpus, count in self.connection.execute(_USAGE)
        }

    def vcpus_in_use_by_share(self, queue_arn: str) -> dict[str | None, float]:
        """vCPUs the running attempts of a queue's jobs hold, per share identifier (None: jobs of a
        queue without a fair-share policy)."""
        query = (
            select(job_shares.c.share_identifier, func.sum(attempts.c.vcpus))
            .join_from(attempts, jobs, jobs.c.id == attempts.c.job_id)
            .outerjoin(job_shares, job_shares.c.job_id == attempts.c.job_id)
            .where(attempts.c.active.is_(True), jobs.c.queue_arn == queue_arn)
            .group_by(job_shares.c.share_identifier)
        )
        return {share: float(vcpus or 0) for share, vcpus in self.connection.execute(query)}

    def log_streams_of(self, job_ids: Sequence[str]) -> list[str]:
        return self._column_among(attempts.c.log_stream, attempts.c.job_id, job_ids)

    # -- attempts as CloudWatch log streams (kiln/logs/service.py) -----------------------------
    def streams(
        self,
        *,
        limit: int,
        prefix: str | None = None,
        names: Sequence[str] | None = None,
        after: str | None = None,
        descending: bool = False,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[Stream]:
        """Started attempts as log streams, by stream name (keyset: names after `after`); `since_ms`
        and `until_ms` keep those that ran during that window."""
        name = attempts.c.log_stream
        query = select(*_STREAM_COLUMNS).where(attempts.c.started_at.is_not(None))
        if prefix:  # substr, not LIKE: LIKE is case-insensitive on SQLite and `_` is a wildcard
            query = query.where(func.substr(name, 1, len(prefix)) == prefix)
        if names is not None:
            query = query.where(name.in_(list(names)))
        if after is not None:
            query = query.where(name < after if descending else name > after)
        if until_ms is not None:
            query = query.where(attempts.c.started_at < until_ms)
        if since_ms is not None:
            query = query.where(or_(attempts.c.stopped_at.is_(None), attempts.c.stopped_at >= since_ms))
        return self._all(query.order_by(name.desc() if descending else name).limit(limit), Stream)

    def streams_by_stop(self, *, limit: int, after: tuple[int, str] | None, descending: bool) -> list[Stream]:
        """Started attempts as log streams by when they stopped (running ones count as latest), then
        name; the key is returned as `last`."""
        name = attempts.c.log_stream
        last: Any = case((attempts.c.stopped_at.is_(None), 2**62), else_=attempts.c.stopped_at)
        query = select(*_STREAM_COLUMNS, last.label("last")).where(attempts.c.started_at.is_not(None))
        if after is not None:
            time, after_name = after
            if descending:
                query = query.where(or_(last < time, and_(last == time, name < after_name)))
            else:
                query = query.where(or_(last > time, and_(last == time, name > after_name)))
        order = (last.desc(), name.desc()) if descending else (last, name)
        return self._all(query.order_by(*order).limit(limit), Stream)
