"""The resources users create through the API: compute environments, job queues, job definitions
and scheduling policies. Each is its AWS document (a JSON column) beside the few columns that
queries filter on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from sqlalchemy import Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from kiln.store.queries import Queries, Values
from kiln.store.records import ComputeEnvironment, Document, JobDefinition, JobQueue, SchedulingPolicy, values_of
from kiln.store.schema import compute_environments, job_definitions, job_queues, scheduling_policies

Named = TypeVar("Named", ComputeEnvironment, JobQueue, SchedulingPolicy)


class NamedStore(Queries, Generic[Named]):
    """A resource whose name is its key: compute environments, job queues, scheduling policies."""

    def __init__(self, connection: Connection, table: Table, record: type[Named]) -> None:
        super().__init__(connection)
        self.table = table
        self.record: type[Named] = record

    def get(self, name: str) -> Named | None:
        return self._first(select(self.table).where(self.table.c.name == name), self.record)

    def get_by_arn(self, arn: str) -> Named | None:
        return self._first(select(self.table).where(self.table.c.arn == arn), self.record)

    def page(self, offset: int, limit: int, *, names: Sequence[str] | None = None,
             arns: Sequence[str] | None = None) -> list[Named]:  # fmt: skip
        """Oldest first, optionally only those `names` or `arns` (the Describe operations)."""
        table = self.table
        query = select(table).order_by(table.c.created_at, table.c.name)
        if names is not None:
            query = query.where(table.c.name.in_(list(names)))
        if arns is not None:
            query = query.where(table.c.arn.in_(list(arns)))
        return self._all(query.offset(offset).limit(limit), self.record)

    def all(self) -> list[Named]:
        return self._all(select(self.table).order_by(self.table.c.created_at, self.table.c.name), self.record)

    def count(self) -> int:
        return int(self.connection.execute(select(func.count()).select_from(self.table)).scalar_one())

    def insert(self, record: Named) -> None:
        self.connection.execute(insert(self.table).values(**values_of(record)))

    def update(self, name: str, values: Values) -> None:
        self.connection.execute(update(self.table).where(self.table.c.name == name).values(**values))

    def delete(self, name: str) -> None:
        self.connection.execute(delete(self.table).where(self.table.c.name == name))


class DefinitionStore(Queries):
    """Job definitions: revisions of a name, each ACTIVE or INACTIVE."""

    def latest_revision(self, name: str) -> int:
        query = select(func.max(job_definitions.c.revision)).where(job_definitions.c.name == name)
        return int(self.connection.execute(query).scalar_one() or 0)

    def insert(self, definition: JobDefinition) -> None:
        values = values_of(definition)
        if values["id"] is None:
            del values["id"]  # the database numbers it
        self.connection.execute(insert(job_definitions).values(**values))

    def get(self, name: str, revision: int | None) -> JobDefinition | None:
        """A given revision, or (revision None) the newest ACTIVE one."""
        query = select(job_definitions).where(job_definitions.c.name == name)
        if revision is None:
            query = query.where(job_definitions.c.status == "ACTIVE").order_by(job_definitions.c.revision.desc())
        else:
            query = query.where(job_definitions.c.revision == revision)
        return self._first(query, JobDefinition)

    def get_by_arn(self, arn: str) -> JobDefinition | None:
        return self._first(select(job_definitions).where(job_definitions.c.arn == arn), JobDefinition)

    def page(
        self,
        name: str | None,
        status: str | None,
        refs: Sequence[tuple[str, int]] | None,
        offset: int,
        limit: int,
    ) -> list[JobDefinition]:
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
        return self._all(query.offset(offset).limit(limit), JobDefinition)

    def update(self, arn: str, *, doc: Document, status: str | None = None) -> None:
        """A new document (tags, deregistration) and, when given, a new status."""
        values: dict[str, object] = {"doc": doc} if status is None else {"doc": doc, "status": status}
        self.connection.execute(update(job_definitions).where(job_definitions.c.arn == arn).values(**values))


def environments(connection: Connection) -> NamedStore[ComputeEnvironment]:
    return NamedStore(connection, compute_environments, ComputeEnvironment)


def queues(connection: Connection) -> NamedStore[JobQueue]:
    return NamedStore(connection, job_queues, JobQueue)


def policies(connection: Connection) -> NamedStore[SchedulingPolicy]:
    return NamedStore(connection, scheduling_policies, SchedulingPolicy)
