"""The consumable resources aggregate: the resources, what each job needs of them, and what the
active attempts hold (summed on read, never stored, so it survives any crash as it is)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from kiln.store.jobs import newest_first
from kiln.store.queries import Queries, Values
from kiln.store.records import ConsumableResource, Job, JobConsumable, values_of
from kiln.store.schema import attempts, consumable_resources, job_consumables, jobs

# The attempt's job, or (an array child) its parent, carries the needs.
_IN_USE = (
    select(job_consumables.c.resource_name, func.sum(job_consumables.c.quantity))
    .select_from(
        attempts.join(jobs, jobs.c.id == attempts.c.job_id).join(
            job_consumables, job_consumables.c.job_id == func.coalesce(jobs.c.parent_id, jobs.c.id)
        )
    )
    .where(attempts.c.active.is_(True))
    .group_by(job_consumables.c.resource_name)
)
_LOWER_TOTAL = (
    update(consumable_resources)
    .where(consumable_resources.c.name == bindparam("_name"))
    .values(total_quantity=consumable_resources.c.total_quantity - bindparam("_quantity"))
)

NameMatch = tuple[str, bool]  # (lower-case name or prefix, is a prefix)


def _name_matches(column: Any, matches: Sequence[NameMatch]) -> ColumnElement[bool]:
    """Case-insensitive: equal to one of the names or starting with one of the prefixes."""
    lowered = func.lower(column)
    return or_(*(lowered.startswith(v, autoescape=True) if prefix else lowered == v for v, prefix in matches))


class ConsumableStore(Queries):
    # -- the resources -------------------------------------------------------------------------
    def get(self, name: str) -> ConsumableResource | None:
        query = select(consumable_resources).where(consumable_resources.c.name == name)
        return self._first(query, ConsumableResource)

    def get_many(self, names: Sequence[str]) -> list[ConsumableResource]:
        return self._all_among(select(consumable_resources), consumable_resources.c.name, names, ConsumableResource)

    def page(self, offset: int, limit: int, filters: Sequence[Sequence[NameMatch]] = ()) -> list[ConsumableResource]:
        """Oldest first; each filter is a set of name matches of which one must hold."""
        table = consumable_resources
        query = select(table).order_by(table.c.created_at, table.c.name)
        for matches in filters:
            query = query.where(_name_matches(table.c.name, matches))
        return self._all(query.offset(offset).limit(limit), ConsumableResource)

    def insert(self, resource: ConsumableResource) -> None:
        self.connection.execute(insert(consumable_resources).values(**values_of(resource)))

    def update(self, name: str, values: Values) -> None:
        table = consumable_resources
        self.connection.execute(update(table).where(table.c.name == name).values(**values))

    def delete(self, name: str) -> None:
        self.connection.execute(delete(consumable_resources).where(consumable_resources.c.name == name))

    def lower_totals(self, amounts: Mapping[str, int]) -> None:
        """Take `amounts` off the totals, in SQL (no read-modify-write): what NON_REPLENISHABLE
        resources lose when an attempt that needs them is placed."""
        if amounts:
            rows = [{"_name": name, "_quantity": quantity} for name, quantity in amounts.items()]
            self.connection.execute(_LOWER_TOTAL, rows)

    def in_use(self) -> dict[str, int]:
        """Per resource name, the quantities the active attempts' jobs need (one row per resource)."""
        return {str(name): int(total or 0) for name, total in self.connection.execute(_IN_USE)}

    # -- what jobs need ------------------------------------------------------------------------
    def insert_needs(self, needs: Sequence[JobConsumable]) -> None:
        self._insert(job_consumables, needs)

    def needs_of(self, job_ids: Sequence[str]) -> dict[str, list[JobConsumable]]:
        """Each of `job_ids` that needs something (top-level jobs or array parents), with its needs."""
        found: dict[str, list[JobConsumable]] = {}
        query = select(job_consumables).order_by(job_consumables.c.resource_name)
        for need in self._all_among(query, job_consumables.c.job_id, sorted(set(job_ids)), JobConsumable):
            found.setdefault(need.job_id, []).append(need)
        return found

    def jobs_needing(
        self,
        resource_name: str,
        *,
        limit: int,
        after: tuple[int, str] | None = None,
        statuses: Sequence[str] | None = None,
        names: Sequence[NameMatch] | None = None,
    ) -> list[tuple[Job, int]]:
        """Top-level jobs that need `resource_name`, newest first, with the quantity each needs."""
        query = (
            select(jobs, job_consumables.c.quantity)
            .join_from(jobs, job_consumables, job_consumables.c.job_id == jobs.c.id)
            .where(job_consumables.c.resource_name == resource_name)
        )
        query = newest_first(query, after)
        if statuses is not None:
            query = query.where(jobs.c.status.in_(list(statuses)))
        if names is not None:
            query = query.where(_name_matches(jobs.c.name, names))
        width = len(jobs.c)
        return [(Job(*row[:width]), int(row[width])) for row in self.connection.execute(query.limit(limit))]
