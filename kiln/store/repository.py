"""All SQL lives here. The domain calls these methods inside a transaction it got from `Database`.

Rows come back as plain dicts so the domain never touches SQLAlchemy objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, func, insert, literal, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from kiln.store.schema import (
    attempts,
    compute_environments,
    job_definitions,
    job_dependencies,
    job_queues,
    job_shares,
    jobs,
    scheduling_policies,
)

Row = dict[str, Any]  # a row as the store returns it, until typed records (Job, Attempt, ...) replace it
Usage = tuple[float, int, int]  # vCPUs, MiB of memory, GPUs
# SQLite caps bound parameters per statement; stay well below it.
_CHUNK = 500
_INT32_MAX = 2**31 - 1

# Statements a scheduler sweep runs (after every API change), built once: building a join or an
# alias is most of such a query's cost when it finds nothing, as it usually does.
_PARENT = jobs.alias("parent")
_STRANDED_NODES = (
    select(jobs.c.id, _PARENT.c.status_reason)
    .join_from(jobs, _PARENT, _PARENT.c.id == jobs.c.parent_id)
    .where(
        jobs.c.status == bindparam("waiting"),
        jobs.c.node_index.is_not(None),
        _PARENT.c.status.in_(bindparam("ended", expanding=True)),
    )
)
_TERMINATED_ACTIVE_ATTEMPTS = (
    select(attempts.c.task_id, jobs.c.spec)
    .join_from(attempts, jobs, jobs.c.id == attempts.c.job_id)
    .where(attempts.c.active.is_(True), jobs.c.is_terminated.is_(True))
)


def _rows(result: Any) -> list[Row]:
    # zip with the keys read once: `dict(row._mapping)` builds a key view per row (measured 3x slower).
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def _same_keys(rows: Sequence[Row]) -> list[list[Row]]:
    """executemany needs one statement shape per batch: group rows by their set of keys."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


def _integer_bound(value: int) -> int:
    """A bound compared with an INTEGER column: PostgreSQL binds it as a 32-bit integer (SQLite has
    no such limit), so "no limit" (a huge number) is clamped to the largest one."""
    return min(value, _INT32_MAX)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class Repository:
    """Queries over one connection (one transaction)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # -- documents: compute environments and job queues share one shape ----------------------
    def _table(self, kind: str) -> Table:
        return {"ce": compute_environments, "queue": job_queues}[kind]

    def get_named(self, kind: str, name: str) -> Row | None:
        table = self._table(kind)
        return self._one(select(table).where(table.c.name == name))

    def list_named(self, kind: str, names: Sequence[str] | None, offset: int, limit: int) -> list[Row]:
        table = self._table(kind)
        query = select(table).order_by(table.c.created_at, table.c.name)
        if names is not None:
            query = query.where(table.c.name.in_(list(names)))
        return _rows(self.connection.execute(query.offset(offset).limit(limit)))

    def count_named(self, kind: str) -> int:
        return int(self.connection.execute(select(func.count()).select_from(self._table(kind))).scalar_one())

    def insert_named(self, kind: str, row: Row) -> None:
        self.connection.execute(insert(self._table(kind)).values(**row))

    def update_named(self, kind: str, name: str, values: Row) -> None:
        table = self._table(kind)
        self.connection.execute(update(table).where(table.c.name == name).values(**values))

    def delete_named(self, kind: str, name: str) -> None:
        table = self._table(kind)
        self.connection.execute(delete(table).where(table.c.name == name))

    def _one(self, query: Any) -> Row | None:
        row = self.connection.execute(query).first()
        return None if row is None else dict(row._mapping)

    # -- job definitions -----------------------------------------------------------------------
    def latest_revision(self, name: str) -> int:
        query = select(func.max(job_definitions.c.revision)).where(job_definitions.c.name == name)
        return int(self.connection.execute(query).scalar_one() or 0)

    def insert_definition(self, row: Row) -> None:
        self.connection.execute(insert(job_definitions).values(**row))

    def get_definition(self, name: str, revision: int | None) -> Row | None:
        """A given revision, or (revision None) the newest ACTIVE one."""
        query = select(job_definitions).where(job_definitions.c.name == name)
        if revision is None:
            query = query.where(job_definitions.c.status == "ACTIVE").order_by(job_definitions.c.revision.desc())
        else:
            query = query.where(job_definitions.c.revision == revision)
        return self._one(query.limit(1))

    def get_definition_by_arn(self, arn: str) -> Row | None:
        return self._one(select(job_definitions).where(job_definitions.c.arn == arn))

    def list_definitions(
        self,
        name: str | None,
        status: str | None,
        refs: Sequence[tuple[str, int]] | None,
        offset: int,
        limit: int,
    ) -> list[Row]:
        table = job_definitions
        query = select(table).order_by(table.c.name, table.c.revision)
        if name is not None:
            query = query.where(table.c.name == name)
        if status is not None:
            query = query.where(table.c.status == status)
        if refs is not None:
            if not refs:
                return []
            query = query.where(or_(*(and_(table.c.name == n, table.c.revision == r) for n, r in refs)))
        return _rows(self.connection.execute(query.offset(offset).limit(limit)))

    def set_definition_status(self, arn: str, status: str, doc: Row) -> None:
        table = job_definitions
        self.connection.execute(update(table).where(table.c.arn == arn).values(status=status, doc=doc))

    def update_definition_doc(self, arn: str, doc: Row) -> None:
        self.connection.execute(update(job_definitions).where(job_definitions.c.arn == arn).values(doc=doc))

    # -- jobs ----------------------------------------------------------------------------------
    def insert_jobs(self, rows: Sequence[Row]) -> None:
        """One multi-row INSERT per chunk: an array of 10,000 children is a few statements."""
        for chunk in _chunks(list(rows)):
            self.connection.execute(insert(jobs), list(chunk))

    def insert_dependencies(self, rows: Sequence[Row]) -> None:
        if rows:
            self.connection.execute(insert(job_dependencies), list(rows))

    def get_jobs(self, ids: Sequence[str]) -> list[Row]:
        found: list[Row] = []
        for chunk in _chunks(list(ids)):
            found += _rows(self.connection.execute(select(jobs).where(jobs.c.id.in_(list(chunk)))))
        return found

    def get_job(self, job_id: str) -> Row | None:
        return self._one(select(jobs).where(jobs.c.id == job_id))

    def children(self, parent_id: str, statuses: Sequence[str] | None = None) -> list[Row]:
        query = select(jobs).where(jobs.c.parent_id == parent_id).order_by(jobs.c.array_index)
        if statuses is not None:
            query = query.where(jobs.c.status.in_(list(statuses)))
        return _rows(self.connection.execute(query))

    def status_counts(self, parent_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per array parent: child status -> count (the parent's statusSummary)."""
        summary: dict[str, dict[str, int]] = {pid: {} for pid in parent_ids}
        for chunk in _chunks(list(parent_ids)):
            query = (
                select(jobs.c.parent_id, jobs.c.status, func.count())
                .where(jobs.c.parent_id.in_(list(chunk)))
                .group_by(jobs.c.parent_id, jobs.c.status)
            )
            for parent_id, status, count in self.connection.execute(query):
                summary[parent_id][status] = int(count)
        return summary

    def list_jobs(
        self,
        *,
        queue_arn: str | None,
        parent_id: str | None,
        statuses: Sequence[str] | None,
        limit: int,
        after: tuple[Any, ...] | None = None,
        name_prefix: str | None = None,
        name_exact: str | None = None,
        definition_arns: Sequence[str] | None = None,
        created_before: int | None = None,
        created_after: int | None = None,
        share_identifier: str | None = None,
        nodes: bool = False,
    ) -> list[Row]:
        """Top-level jobs of a queue newest first, or children of an array (`nodes`: of a
        multi-node parallel job) in index order."""
        query = select(jobs)
        if share_identifier is not None:
            query = query.join_from(jobs, job_shares, job_shares.c.job_id == jobs.c.id)
            query = query.where(job_shares.c.share_identifier == share_identifier)
        if parent_id is not None:
            index = jobs.c.node_index if nodes else jobs.c.array_index
            query = query.where(jobs.c.parent_id == parent_id).order_by(index)
            if after is not None:
                query = query.where(index > _integer_bound(after[0]))
        else:
            query = query.where(jobs.c.queue_arn == queue_arn, jobs.c.parent_id.is_(None))
            query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            if after is not None:
                created, job_id = after
                query = query.where(
                    or_(jobs.c.created_at < created, and_(jobs.c.created_at == created, jobs.c.id < job_id))
                )
        if statuses is not None:
            query = query.where(jobs.c.status.in_(list(statuses)))
        # The JOB_NAME filter is case-insensitive (botocore model docs), on every database.
        if name_exact is not None:
            query = query.where(func.lower(jobs.c.name) == name_exact.lower())
        if name_prefix is not None:
            query = query.where(func.lower(jobs.c.name).startswith(name_prefix.lower(), autoescape=True))
        if definition_arns is not None:
            query = query.where(jobs.c.definition_arn.in_(list(definition_arns)))
        if created_before is not None:
            query = query.where(jobs.c.created_at < created_before)
        if created_after is not None:
            query = query.where(jobs.c.created_at > created_after)
        return _rows(self.connection.execute(query.limit(limit)))

    def jobs_with_status(
        self, statuses: Sequence[str], limit: int | None = None, *, top_level: bool = False
    ) -> list[Row]:
        """Jobs in `statuses`, oldest first; `top_level` skips array children."""
        query = select(jobs).where(jobs.c.status.in_(list(statuses)))
        if top_level:
            query = query.where(jobs.c.parent_id.is_(None))
        query = query.order_by(jobs.c.runnable_at, jobs.c.created_at)
        if limit is not None:
            query = query.limit(limit)
        return _rows(self.connection.execute(query))

    def update_jobs(self, ids: Sequence[str], from_statuses: Sequence[str] | None, values: Row) -> list[str]:
        """Update jobs still in one of `from_statuses`; returns the ids actually changed."""
        changed: list[str] = []
        for chunk in _chunks(list(ids)):
            condition: ColumnElement[bool] = jobs.c.id.in_(list(chunk))
            if from_statuses is not None:
                condition = and_(condition, jobs.c.status.in_(list(from_statuses)))
            selected = [r[0] for r in self.connection.execute(select(jobs.c.id).where(condition))]
            if selected:
                self.connection.execute(update(jobs).where(jobs.c.id.in_(selected)).values(**values))
            changed += selected
        return changed

    def update_jobs_each(self, rows: Sequence[Row], from_statuses: Sequence[str]) -> None:
        """One executemany: each row has `_id` plus the same value keys; only jobs still in
        `from_statuses` change (a late or duplicate decision changes nothing)."""
        for group in _same_keys(rows):
            values: dict[str, Any] = {key: bindparam(key) for key in group[0] if key != "_id"}
            statement = (
                update(jobs)
                .where(jobs.c.id == bindparam("_id"), jobs.c.status.in_([literal(s) for s in from_statuses]))
                .values(**values)
            )
            self.connection.execute(statement, list(group))

    def runnable_candidates(
        self, queue_arn: str, status: str, limit: int, max_vcpus: float, max_memory_mib: int
    ) -> list[Row]:
        """A queue's jobs in `status` (the waiting one) that could fit the free capacity, in the
        order they entered it (FIFO), without their specs."""
        columns = (jobs.c.id, jobs.c.queue_arn, jobs.c.parent_id, jobs.c.vcpus, jobs.c.memory_mib, jobs.c.gpus,
                   jobs.c.status_reason, jobs.c.num_nodes)  # fmt: skip
        query = (
            select(*columns)
            .where(
                jobs.c.queue_arn == queue_arn,
                jobs.c.status == status,
                jobs.c.vcpus <= max_vcpus,
                jobs.c.memory_mib <= _integer_bound(max_memory_mib),
            )
            # Released together (same runnable_at): submit order first, then children in index order.
            .order_by(jobs.c.runnable_at, jobs.c.created_at, jobs.c.array_index, jobs.c.id)
            .limit(limit)
        )
        return _rows(self.connection.execute(query))

    def has_unfinished_children(self, parent_id: str, finished: Sequence[str]) -> bool:
        """Whether a child of `parent_id` is in none of the `finished` statuses."""
        query = select(jobs.c.id).where(jobs.c.parent_id == parent_id, jobs.c.status.notin_(list(finished)))
        return self.connection.execute(query.limit(1)).first() is not None

    def update_job_fields(self, job_id: str, values: Row) -> None:
        """Non-status fields (spec, flags, counters); status goes through `update_jobs`."""
        self.connection.execute(update(jobs).where(jobs.c.id == job_id).values(**values))

    def dependencies_of(self, job_ids: Sequence[str]) -> dict[str, list[Row]]:
        result: dict[str, list[Row]] = {job_id: [] for job_id in job_ids}
        for chunk in _chunks(list(job_ids)):
            query = select(job_dependencies).where(job_dependencies.c.job_id.in_(list(chunk)))
            for row in _rows(self.connection.execute(query)):
                result[row["job_id"]].append(row)
        return result

    def has_dependents(self, job_ids: Sequence[str]) -> bool:
        """Does any job wait for one of these? (Only then are PENDING jobs worth a look.)"""
        for chunk in _chunks(list(job_ids)):
            query = select(job_dependencies.c.job_id).where(job_dependencies.c.depends_on.in_(list(chunk))).limit(1)
            if self.connection.execute(query).first() is not None:
                return True
        return False

    def statuses_of(self, job_ids: Sequence[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        for chunk in _chunks(list(job_ids)):
            query = select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(list(chunk)))
            result.update({row[0]: row[1] for row in self.connection.execute(query)})
        return result

    def purge_candidates(self, cutoff_ms: int, finished: Sequence[str]) -> list[str]:
        """Top-level jobs in a `finished` status that stopped before `cutoff_ms` (retention expired)."""
        query = select(jobs.c.id).where(
            jobs.c.stopped_at < cutoff_ms,
            jobs.c.parent_id.is_(None),
            jobs.c.status.in_(list(finished)),
        )
        return [row[0] for row in self.connection.execute(query)]

    def child_ids(self, parent_ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        for chunk in _chunks(list(parent_ids)):
            query = select(jobs.c.id).where(jobs.c.parent_id.in_(list(chunk)))
            found += [row[0] for row in self.connection.execute(query)]
        return found

    def purge_jobs(self, ids: Sequence[str]) -> None:
        """Delete jobs with their children, attempts and dependency rows."""
        for chunk in _chunks(list(ids)):
            children = select(jobs.c.id).where(jobs.c.parent_id.in_(list(chunk)))
            for table_filter in (attempts.c.job_id.in_(children), attempts.c.job_id.in_(list(chunk))):
                self.connection.execute(delete(attempts).where(table_filter))
            self.connection.execute(delete(job_dependencies).where(job_dependencies.c.job_id.in_(children)))
            self.connection.execute(delete(job_dependencies).where(job_dependencies.c.job_id.in_(list(chunk))))
            self.connection.execute(delete(jobs).where(jobs.c.parent_id.in_(list(chunk))))
            self.connection.execute(delete(jobs).where(jobs.c.id.in_(list(chunk))))

    # -- attempts ------------------------------------------------------------------------------
    def insert_attempt(self, row: Row) -> None:
        self.connection.execute(insert(attempts).values(**row))

    def update_attempt(self, task_id: str, values: Row) -> None:
        self.connection.execute(update(attempts).where(attempts.c.task_id == task_id).values(**values))

    def get_attempts(self, task_ids: Sequence[str]) -> list[Row]:
        found: list[Row] = []
        for chunk in _chunks(list(task_ids)):
            found += _rows(self.connection.execute(select(attempts).where(attempts.c.task_id.in_(list(chunk)))))
        return found

    def insert_attempts(self, rows: Sequence[Row]) -> None:
        if rows:
            self.connection.execute(insert(attempts), list(rows))

    def update_attempts_each(self, rows: Sequence[Row]) -> None:
        """One executemany per set of keys: each row has `_task_id` plus the values to set."""
        for group in _same_keys(rows):
            values: dict[str, Any] = {key: bindparam(key) for key in group[0] if key != "_task_id"}
            statement = update(attempts).where(attempts.c.task_id == bindparam("_task_id")).values(**values)
            self.connection.execute(statement, list(group))

    def active_usage(self) -> list[Row]:
        """Resources held by running attempts, per attempt (capacity accounting)."""
        columns = (
            attempts.c.task_id,
            attempts.c.compute_environment,
            attempts.c.vcpus,
            attempts.c.memory_mib,
            attempts.c.gpus,
        )
        return _rows(self.connection.execute(select(*columns).where(attempts.c.active.is_(True))))

    def active_usage_by_environment(self) -> dict[str, Usage]:
        """Resources held by running attempts, summed per compute environment (one aggregate row
        each, not a row per attempt: the scheduler asks on every tick)."""
        query = (
            select(
                attempts.c.compute_environment,
                func.sum(attempts.c.vcpus),
                func.sum(attempts.c.memory_mib),
                func.sum(attempts.c.gpus),
            )
            .where(attempts.c.active.is_(True))
            .group_by(attempts.c.compute_environment)
        )
        return {env: (float(vcpus or 0), int(memory or 0), int(gpus or 0))
                for env, vcpus, memory, gpus in self.connection.execute(query)}  # fmt: skip

    def get_attempt(self, task_id: str) -> Row | None:
        return self._one(select(attempts).where(attempts.c.task_id == task_id))

    def attempts_of(self, job_ids: Sequence[str]) -> dict[str, list[Row]]:
        result: dict[str, list[Row]] = {job_id: [] for job_id in job_ids}
        for chunk in _chunks(list(job_ids)):
            query = select(attempts).where(attempts.c.job_id.in_(list(chunk))).order_by(attempts.c.number)
            for row in _rows(self.connection.execute(query)):
                result[row["job_id"]].append(row)
        return result

    def terminated_active_attempts(self) -> list[Row]:
        """Attempts still active whose job a user terminated: `task_id` and the job's `spec` (its
        stopReason). A join, so a sweep reads no row per active attempt, only the few to signal."""
        return _rows(self.connection.execute(_TERMINATED_ACTIVE_ATTEMPTS))

    def active_attempts(self) -> list[Row]:
        return _rows(self.connection.execute(select(attempts).where(attempts.c.active.is_(True))))

    def log_streams_of(self, job_ids: Sequence[str]) -> list[str]:
        streams: list[str] = []
        for chunk in _chunks(list(job_ids)):
            query = select(attempts.c.log_stream).where(attempts.c.job_id.in_(list(chunk)))
            streams += [row[0] for row in self.connection.execute(query)]
        return streams

    # -- job-state time limits and fair share (kiln/engine/time_limits.py, scheduling_policies.py,
    #    share_queue.py); appended here, below the scheduler's queries ----------------------------
    def diagnosed_runnable_since(self, queue_arn: str, status: str, cutoff_ms: int, limit: int) -> list[Row]:
        """A queue's jobs in `status` (the waiting one) since `cutoff_ms` or earlier with a diagnostic
        statusReason (jobs merely waiting for capacity have none), longest waiting first."""
        query = (
            select(jobs.c.id, jobs.c.runnable_at, jobs.c.status_reason)
            .where(
                jobs.c.queue_arn == queue_arn,
                jobs.c.status == status,
                jobs.c.runnable_at <= cutoff_ms,
                jobs.c.status_reason.is_not(None),
            )
            .order_by(jobs.c.runnable_at, jobs.c.id)
            .limit(limit)
        )
        return _rows(self.connection.execute(query))

    def get_scheduling_policy(self, *, name: str | None = None, arn: str | None = None) -> Row | None:
        table = scheduling_policies
        return self._one(select(table).where(table.c.name == name if arn is None else table.c.arn == arn))

    def list_scheduling_policies(self, arns: Sequence[str] | None, offset: int, limit: int) -> list[Row]:
        table = scheduling_policies
        query = select(table).order_by(table.c.created_at, table.c.name)
        if arns is not None:
            query = query.where(table.c.arn.in_(list(arns)))
        return _rows(self.connection.execute(query.offset(offset).limit(limit)))

    def insert_scheduling_policy(self, row: Row) -> None:
        self.connection.execute(insert(scheduling_policies).values(**row))

    def update_scheduling_policy(self, name: str, doc: Row) -> None:
        table = scheduling_policies
        self.connection.execute(update(table).where(table.c.name == name).values(doc=doc))

    def delete_scheduling_policy(self, name: str) -> None:
        self.connection.execute(delete(scheduling_policies).where(scheduling_policies.c.name == name))

    def insert_job_shares(self, rows: Sequence[Row]) -> None:
        for chunk in _chunks(list(rows)):
            self.connection.execute(insert(job_shares), list(chunk))

    def active_share_identifiers(self, queue_arn: str, finished: Sequence[str]) -> list[str]:
        """Share identifiers of a queue's top-level jobs in none of the `finished` statuses (AWS caps
        them at 500)."""
        query = (
            select(job_shares.c.share_identifier)
            .distinct()
            .join_from(job_shares, jobs, jobs.c.id == job_shares.c.job_id)
            .where(
                job_shares.c.queue_arn == queue_arn,
                jobs.c.parent_id.is_(None),
                jobs.c.status.notin_(list(finished)),
            )
        )
        return [row[0] for row in self.connection.execute(query)]

    def share_candidates(
        self, queue_arn: str, status: str, per_share: int, max_vcpus: float, max_memory_mib: int
    ) -> list[Row]:
        """A fair-share queue's RUNNABLE jobs that could fit, at most `per_share` of each share (its
        highest scheduling priority first), returned in RUNNABLE (FIFO) order with share and priority."""
        rank = (
            func.row_number()
            .over(
                partition_by=job_shares.c.share_identifier,
                # created_at: jobs made RUNNABLE by the same sweep share runnable_at; submit order decides
                order_by=(job_shares.c.scheduling_priority.desc(), jobs.c.runnable_at, jobs.c.created_at, jobs.c.id),
            )
            .label("share_rank")
        )
        columns = (jobs.c.id, jobs.c.queue_arn, jobs.c.vcpus, jobs.c.memory_mib, jobs.c.gpus, jobs.c.status_reason,
                   jobs.c.num_nodes, jobs.c.runnable_at, jobs.c.created_at, job_shares.c.share_identifier,
                   job_shares.c.scheduling_priority)  # fmt: skip
        ranked = (
            select(*columns, rank)
            .join_from(jobs, job_shares, job_shares.c.job_id == jobs.c.id)
            .where(
                jobs.c.queue_arn == queue_arn,
                jobs.c.status == status,
                jobs.c.vcpus <= max_vcpus,
                jobs.c.memory_mib <= _integer_bound(max_memory_mib),
            )
            .subquery()
        )
        query = (
            select(*(ranked.c[c.name] for c in columns))
            .where(ranked.c.share_rank <= per_share)
            .order_by(ranked.c.runnable_at, ranked.c.created_at, ranked.c.id)
        )
        return _rows(self.connection.execute(query))

    def share_usage(self, queue_arn: str, now_ms: int, window_ms: int, min_charge_seconds: float) -> list[Row]:
        """Per share of a fair-share queue: decayed vCPU-seconds (`usage`) and attempts holding
        capacity (`running`). The same formula as `kiln.engine.fair_share.decayed_usage`, summed in
        SQL so that a queue with thousands of recent attempts costs one row per share."""
        from sqlalchemy import Float, Integer, case, cast  # local: keeps the module's import line untouched

        active = attempts.c.active.is_(True)
        end = case((active, now_ms), (attempts.c.stopped_at.is_(None), now_ms), else_=attempts.c.stopped_at)
        ran = case(
            (attempts.c.started_at.is_(None), 0.0),
            (end < attempts.c.started_at, 0.0),
            else_=(end - attempts.c.started_at) / 1000.0,
        )
        charge = attempts.c.vcpus * case((ran > min_charge_seconds, ran), else_=min_charge_seconds)
        left = 1.0 - (now_ms - end) / float(window_ms)
        fade = case((active, 1.0), (left <= 0.0, 0.0), (left >= 1.0, 1.0), else_=left)
        query = (
            select(
                job_shares.c.share_identifier,
                # PostgreSQL sums these as NUMERIC (Decimal); both stores return plain numbers.
                cast(func.sum(charge * fade), Float).label("usage"),
                cast(func.sum(case((active, 1), else_=0)), Integer).label("running"),
            )
            .join_from(job_shares, attempts, attempts.c.job_id == job_shares.c.job_id)
            .where(job_shares.c.queue_arn == queue_arn, or_(active, attempts.c.stopped_at >= now_ms - window_ms))
            .group_by(job_shares.c.share_identifier)
        )
        return _rows(self.connection.execute(query))

    # -- attempts as CloudWatch log streams (kiln/logs/service.py) and /metrics
    #    (kiln/engine/store_metrics.py); appended here ----------------------------------------------
    def attempt_streams(
        self,
        *,
        limit: int,
        prefix: str | None = None,
        names: Sequence[str] | None = None,
        after: str | None = None,
        descending: bool = False,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[Row]:
        """Started attempts as log streams, by stream name (keyset: names after `after`); `since_ms`
        and `until_ms` keep those that ran during that window."""
        name = attempts.c.log_stream
        query = select(attempts.c.task_id, name, attempts.c.started_at, attempts.c.stopped_at)
        query = query.where(attempts.c.started_at.is_not(None))
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
        query = query.order_by(name.desc() if descending else name).limit(limit)
        return _rows(self.connection.execute(query))

    def attempt_streams_by_stop(self, *, limit: int, after: tuple[int, str] | None, descending: bool) -> list[Row]:
        """Started attempts as log streams by when they stopped (running ones count as latest), then
        name; the key is returned as `last`."""
        from sqlalchemy import case  # local: keeps the module's import line untouched

        name = attempts.c.log_stream
        last = case((attempts.c.stopped_at.is_(None), 2**62), else_=attempts.c.stopped_at)
        query = select(attempts.c.task_id, name, attempts.c.started_at, attempts.c.stopped_at, last.label("last"))
        query = query.where(attempts.c.started_at.is_not(None))
        if after is not None:
            time, after_name = after
            if descending:
                query = query.where(or_(last < time, and_(last == time, name < after_name)))
            else:
                query = query.where(or_(last > time, and_(last == time, name > after_name)))
        order = (last.desc(), name.desc()) if descending else (last, name)
        return _rows(self.connection.execute(query.order_by(*order).limit(limit)))

    def job_counts(self) -> list[Row]:
        """Jobs per queue, status and kind (array child or not): one GROUP BY, for /metrics."""
        child = jobs.c.parent_id.is_not(None).label("child")
        query = select(jobs.c.queue_arn, jobs.c.status, child, func.count().label("count"))
        return _rows(self.connection.execute(query.group_by(jobs.c.queue_arn, jobs.c.status, child)))

    def usage_by_environment(self) -> list[Row]:
        """Resources held by running attempts, summed per compute environment, for /metrics."""
        query = select(
            attempts.c.compute_environment,
            func.sum(attempts.c.vcpus).label("vcpus"),
            func.sum(attempts.c.memory_mib).label("memory_mib"),
            func.sum(attempts.c.gpus).label("gpus"),
            func.count().label("attempts"),
        ).where(attempts.c.active.is_(True))
        return _rows(self.connection.execute(query.group_by(attempts.c.compute_environment)))

    # -- dashboard reads (kiln/batch/dashboard.py); appended here --------------------------------
    def child_statuses(self, parent_id: str) -> list[tuple[int, str]]:
        """(array index, status) of every child of an array, in index order: two columns, one query."""
        query = select(jobs.c.array_index, jobs.c.status).where(jobs.c.parent_id == parent_id)
        return [
            (int(index), str(status)) for index, status in self.connection.execute(query.order_by(jobs.c.array_index))
        ]

    def top_level_status_counts(self) -> list[tuple[str, str, int]]:
        """(queue ARN, status, count) of top-level jobs (array children are counted by their parent)."""
        query = (
            select(jobs.c.queue_arn, jobs.c.status, func.count())
            .where(jobs.c.parent_id.is_(None))
            .group_by(jobs.c.queue_arn, jobs.c.status)
        )
        return [(str(queue), str(status), int(count)) for queue, status, count in self.connection.execute(query)]

    # -- multi-node parallel jobs (kiln/engine/lifecycle/gangs.py); appended here --------------------------
    def multinode_jobs(self, statuses: Sequence[str], ids: Sequence[str] | None = None) -> list[Row]:
        """MNP jobs (not their nodes) in `statuses`, all of them or those among `ids`."""
        query = select(jobs).where(jobs.c.status.in_(list(statuses)), jobs.c.num_nodes.is_not(None))
        if ids is None:
            return _rows(self.connection.execute(query))
        found: list[Row] = []
        for chunk in _chunks(list(ids)):
            found += _rows(self.connection.execute(query.where(jobs.c.id.in_(list(chunk)))))
        return found

    def stranded_nodes(self, waiting: str, ended: Sequence[str]) -> list[Row]:
        """Node jobs still `waiting` whose MNP job is in an `ended` status without them (cancelled,
        a dependency failed, a time limit): `id` and the job's `status_reason`."""
        return _rows(self.connection.execute(_STRANDED_NODES, {"waiting": waiting, "ended": list(ended)}))
