"""What `/metrics` reads from the store at scrape time: job counts and capacity in use.

Two grouped queries (jobs by queue, status and kind; active attempts by compute environment) plus the
queue and environment names, so every queue shows every status and every environment shows, at zero
when idle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.engine.lifecycle import Status
from kiln.executors.base import Capacity
from kiln.observability.metrics import EnvironmentUsage, StoreSnapshot
from kiln.store.database import Database
from kiln.store.repository import Repository

MAX_LISTED = 10_000


def snapshot(db: Database, capacity: Callable[[], Capacity]) -> StoreSnapshot:
    with db.read() as connection:
        repo = Repository(connection)
        counts = repo.job_counts()
        usage = {row["compute_environment"]: row for row in repo.usage_by_environment()}
        queues = [row["name"] for row in repo.list_named("queue", None, 0, MAX_LISTED)]
        environments = [row["name"] for row in repo.list_named("ce", None, 0, MAX_LISTED)]
    zeros = {(queue, status.value): 0 for queue in queues for status in Status}
    jobs, children = dict(zeros), dict(zeros)
    for row in counts:
        key = (row["queue_arn"].rsplit("/", 1)[-1], row["status"])
        target = children if row["child"] else jobs
        target[key] = target.get(key, 0) + row["count"]
    host = capacity()
    return StoreSnapshot(
        jobs=jobs,
        array_children=children,
        environments=[_usage(name, usage.get(name)) for name in sorted(set(environments) | set(usage))],
        host_vcpus=host.vcpus,
        host_memory_mib=host.memory_mib,
        host_gpus=host.gpus,
    )


def _usage(name: str, row: dict[str, Any] | None) -> EnvironmentUsage:
    if row is None:
        return EnvironmentUsage(name)
    return EnvironmentUsage(
        name, float(row["vcpus"] or 0), int(row["memory_mib"] or 0), int(row["gpus"] or 0), int(row["attempts"] or 0)
    )
