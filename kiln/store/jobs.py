"""The jobs aggregate: jobs and their dependency edges.

The store names no job state: callers pass the statuses a query is about (`kiln.engine.lifecycle`
owns them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, func, literal, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from kiln.store.queries import Queries, Values, bound_values, chunks, integer_bound, records, same_keys
from kiln.store.records import ArraySummary, Candidate, Dependency, Job, JobCount, Waiting
from kiln.store.schema import attempts, job_dependencies, job_shares, jobs

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
_CANDIDATE_COLUMNS = (jobs.c.id, jobs.c.queue_arn, jobs.c.parent_id, jobs.c.vcpus, jobs.c.memory_mib, jobs.c.gpus,
                      jobs.c.status_reason, jobs.c.num_nodes)  # fmt: skip


class JobStore(Queries):
    # -- writes --------------------------------------------------------------------------------
    def insert(self, records_: Sequence[Job]) -> None:
        self._insert(jobs, records_)

    def insert_dependencies(self, edges: Sequence[Dependency]) -> None:
        self._insert(job_dependencies, edges)

    def update(self, ids: Sequence[str], from_statuses: Sequence[str] | None, values: Values) -> list[str]:
        """Update jobs still in one of `from_statuses`; returns the ids actually changed."""
        changed: list[str] = []
        for chunk in chunks(ids):
            condition: ColumnElement[bool] = jobs.c.id.in_(list(chunk))
            if from_statuses is not None:
                condition = and_(condition, jobs.c.status.in_(list(from_statuses)))
            selected = [r[0] for r in self.connection.execute(select(jobs.c.id).where(condition))]
            if selected:
                self.connection.execute(update(jobs).where(jobs.c.id.in_(selected)).values(**values))
            changed += selected
        return changed

    def update_each(self, rows: Sequence[Values], from_statuses: Sequence[str]) -> None:
        """One executemany: each row has `_id` plus the same value keys; only jobs still in
        `from_statuses` change (a late or duplicate decision changes nothing)."""
        for group in same_keys(rows):
            statement = (
                update(jobs)
                .where(jobs.c.id == bindparam("_id"), jobs.c.status.in_([literal(s) for s in from_statuses]))
                .values(**bound_values(group[0], "_id"))
            )
            self.connection.execute(statement, list(group))

    def update_fields(self, job_id: str, values: Values) -> None:
        """Non-status fields (spec, flags, counters); status goes through `update`."""
        self.connection.execute(update(jobs).where(jobs.c.id == job_id).values(**values))

    def purge(self, ids: Sequence[str]) -> None:
        """Delete jobs with their children, attempts and dependency rows."""
        for chunk in chunks(ids):
            children = select(jobs.c.id).where(jobs.c.parent_id.in_(list(chunk)))
            for table_filter in (attempts.c.job_id.in_(children), attempts.c.job_id.in_(list(chunk))):
                self.connection.execute(delete(attempts).where(table_filter))
            self.connection.execute(delete(job_dependencies).where(job_dependencies.c.job_id.in_(children)))
            self.connection.execute(delete(job_dependencies).where(job_dependencies.c.job_id.in_(list(chunk))))
            self.connection.execute(delete(jobs).where(jobs.c.parent_id.in_(list(chunk))))
            self.connection.execute(delete(jobs).where(jobs.c.id.in_(list(chunk))))

    # -- reads ---------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        return self._first(select(jobs).where(jobs.c.id == job_id), Job)

    def get_many(self, ids: Sequence[str]) -> list[Job]:
        return self._all_among(select(jobs), jobs.c.id, ids, Job)

    def children(self, parent_id: str, statuses: Sequence[str] | None = None) -> list[Job]:
        """An array's children in index order, or a multi-node job's nodes in node order."""
        query = select(jobs).where(jobs.c.parent_id == parent_id).order_by(jobs.c.array_index, jobs.c.node_index)
        if statuses is not None:
            query = query.where(jobs.c.status.in_(list(statuses)))
        return self._all(query, Job)

    def child_ids(self, parent_ids: Sequence[str]) -> list[str]:
        return self._column_among(jobs.c.id, jobs.c.parent_id, parent_ids)

    def child_statuses(self, parent_id: str) -> list[tuple[int, str]]:
        """(array index, status) of every child of an array, in index order: two columns, one query."""
        query = select(jobs.c.array_index, jobs.c.status).where(jobs.c.parent_id == parent_id)
        return [
            (int(index), str(status)) for index, status in self.connection.execute(query.order_by(jobs.c.array_index))
        ]

    def has_unfinished_children(self, parent_id: str, finished: Sequence[str]) -> bool:
        """Whether a child of `parent_id` is in none of the `finished` statuses."""
        query = select(jobs.c.id).where(jobs.c.parent_id == parent_id, jobs.c.status.notin_(list(finished)))
        return self.connection.execute(query.limit(1)).first() is not None

    def status_counts(self, parent_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per array parent: child status -> count (the parent's statusSummary)."""
        return {parent_id: summary.counts for parent_id, summary in self.array_summaries(parent_ids).items()}

    def array_summaries(self, parent_ids: Sequence[str]) -> dict[str, ArraySummary]:
        """Per array parent: its children's counts by status and latest status change, in one
        query answered by `ix_jobs_parent_status_changed` alone."""
        summaries = {parent_id: ArraySummary({}) for parent_id in parent_ids}
        for chunk in chunks(parent_ids):
            query = (
                select(jobs.c.parent_id, jobs.c.status, func.count(), func.max(jobs.c.status_changed_at))
                .where(jobs.c.parent_id.in_(list(chunk)))
                .group_by(jobs.c.parent_id, jobs.c.status)
            )
            for parent_id, status, count, changed_at in self.connection.execute(query):
                summary = summaries[parent_id]
                summary.counts[status] = int(count)
                if changed_at is not None and (summary.changed_at is None or changed_at > summary.changed_at):
                    summary.changed_at = int(changed_at)
        return summaries

    def statuses_of(self, job_ids: Sequence[str]) -> dict[str, str]:
        result: dict[str, str] = {}
        for chunk in chunks(job_ids):
            query = select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(list(chunk)))
            result.update({row[0]: row[1] for row in self.connection.execute(query)})
        return result

    def page(
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
    ) -> list[Job]:
        """Top-level jobs of a queue newest first, or children of an array (`nodes`: of a
        multi-node parallel job) in index order (ListJobs)."""
        query = select(jobs)
        if share_identifier is not None:
            query = query.join_from(jobs, job_shares, job_shares.c.job_id == jobs.c.id)
            query = query.where(job_shares.c.share_identifier == share_identifier)
        if parent_id is not None:
            index = jobs.c.node_index if nodes else jobs.c.array_index
            query = query.where(jobs.c.parent_id == parent_id).order_by(index)
            if after is not None:
                query = query.where(index > integer_bound(after[0]))
        else:
            query = newest_first(query.where(jobs.c.queue_arn == queue_arn, jobs.c.parent_id.is_(None)), after)
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
        return self._all(query.limit(limit), Job)

    def with_status(self, statuses: Sequence[str], limit: int | None = None, *, top_level: bool = False) -> list[Job]:
        """Jobs in `statuses`, oldest first; `top_level` skips array children."""
        query = select(jobs).where(jobs.c.status.in_(list(statuses)))
        if top_level:
            query = query.where(jobs.c.parent_id.is_(None))
        query = query.order_by(jobs.c.runnable_at, jobs.c.created_at)
        if limit is not None:
            query = query.limit(limit)
        return self._all(query, Job)

    def candidates(
        self, queue_arn: str, status: str, limit: int, max_vcpus: float, max_memory_mib: int
    ) -> list[Candidate]:
        """A queue's jobs in `status` (the waiting one) that could fit the free capacity, in the
        order they entered it (FIFO), without their specs."""
        query = (
            select(*_CANDIDATE_COLUMNS)
            .where(
                jobs.c.queue_arn == queue_arn,
                jobs.c.status == status,
                jobs.c.vcpus <= max_vcpus,
                jobs.c.memory_mib <= integer_bound(max_memory_mib),
            )
            # Released together (same runnable_at): submit order first, then children in index order.
            .order_by(jobs.c.runnable_at, jobs.c.created_at, jobs.c.array_index, jobs.c.id)
            .limit(limit)
        )
        return self._all(query, Candidate)

    def diagnosed_waiting(self, queue_arn: str, status: str, cutoff_ms: int, limit: int) -> list[Waiting]:
        """A queue's jobs in `status` (the waiting one) since `cutoff_ms` or earlier with a diagnostic
        statusReason (jobs merely waiting for capacity have none), longest waiting first."""
        query = (
            select(jobs.c.id, jobs.c.queue_arn, jobs.c.runnable_at, jobs.c.status_reason)
            .where(
                jobs.c.queue_arn == queue_arn,
                jobs.c.status == status,
                jobs.c.runnable_at <= cutoff_ms,
                jobs.c.status_reason.is_not(None),
            )
            .order_by(jobs.c.runnable_at, jobs.c.id)
            .limit(limit)
        )
        return self._all(query, Waiting)

    def expired(self, cutoff_ms: int, finished: Sequence[str]) -> list[str]:
        """Top-level jobs in a `finished` status that stopped before `cutoff_ms` (retention expired)."""
        query = select(jobs.c.id).where(
            jobs.c.stopped_at < cutoff_ms,
            jobs.c.parent_id.is_(None),
            jobs.c.status.in_(list(finished)),
        )
        return [row[0] for row in self.connection.execute(query)]

    # -- dependencies --------------------------------------------------------------------------
    def dependencies_of(self, job_ids: Sequence[str]) -> dict[str, list[Dependency]]:
        result: dict[str, list[Dependency]] = {job_id: [] for job_id in job_ids}
        for edge in self._all_among(select(job_dependencies), job_dependencies.c.job_id, job_ids, Dependency):
            result[edge.job_id].append(edge)
        return result

    def has_dependents(self, job_ids: Sequence[str]) -> bool:
        """Does any job wait for one of these? (Only then are PENDING jobs worth a look.)"""
        for chunk in chunks(job_ids):
            query = select(job_dependencies.c.job_id).where(job_dependencies.c.depends_on.in_(list(chunk))).limit(1)
            if self.connection.execute(query).first() is not None:
                return True
        return False

    # -- multi-node parallel jobs (kiln/engine/lifecycle/gangs.py) -----------------------------
    def multinode(self, statuses: Sequence[str], ids: Sequence[str] | None = None) -> list[Job]:
        """MNP jobs (not their nodes) in `statuses`, all of them or those among `ids`."""
        query = select(jobs).where(jobs.c.status.in_(list(statuses)), jobs.c.num_nodes.is_not(None))
        return self._all(query, Job) if ids is None else self._all_among(query, jobs.c.id, ids, Job)

    def stranded_nodes(self, waiting: str, ended: Sequence[str]) -> list[tuple[str, str | None]]:
        """Node jobs still `waiting` whose MNP job is in an `ended` status without them (cancelled,
        a dependency failed, a time limit): the node's id and the job's statusReason."""
        result = self.connection.execute(_STRANDED_NODES, {"waiting": waiting, "ended": list(ended)})
        return [(str(job_id), reason) for job_id, reason in result]

    # -- reports (/metrics, the dashboard) -----------------------------------------------------
    def counts(self) -> list[JobCount]:
        """Jobs per queue, status and kind (array child or not): one GROUP BY, for /metrics."""
        child = jobs.c.parent_id.is_not(None).label("child")
        query = select(jobs.c.queue_arn, jobs.c.status, child, func.count().label("count"))
        return records(self.connection.execute(query.group_by(jobs.c.queue_arn, jobs.c.status, child)), JobCount)

    def top_level_status_counts(self) -> list[tuple[str, str, int]]:
        """(queue ARN, status, count) of top-level jobs (array children are counted by their parent)."""
        query = (
            select(jobs.c.queue_arn, jobs.c.status, func.count())
            .where(jobs.c.parent_id.is_(None))
            .group_by(jobs.c.queue_arn, jobs.c.status)
        )
        return [(str(queue), str(status), int(count)) for queue, status, count in self.connection.execute(query)]


def newest_first(query: Select[Any], after: tuple[int, str] | None) -> Select[Any]:
    """Jobs newest first (created_at, then id, both descending), from after the keyset position `after`."""
    query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
    if after is None:
        return query
    created, job_id = after
    return query.where(or_(jobs.c.created_at < created, and_(jobs.c.created_at == created, jobs.c.id < job_id)))
