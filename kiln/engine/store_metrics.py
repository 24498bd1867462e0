"""What `/metrics` reads from the store at scrape time: job counts and capacity in use.

Two grouped queries (jobs by queue, status and kind; active attempts by compute environment) plus the
queue and environment names, so every queue shows every status and every environment shows, at zero
when idle.
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.engine.lifecycle import Status
from kiln.executors.base import Capacity
from kiln.observability.metrics import EnvironmentUsage, StoreSnapshot
from kiln.store import records
from kiln.store.database import Database
from kiln.store.repository import Repository

MAX_LISTED = 10_000


def snapshot(db: Database, capacity: Callable[[], Capacity]) -> StoreSnapshot:
    with db.read() as connection:
        repo = Repository(connection)
        counts = repo.jobs.counts()
        usage = repo.attempts.usage_by_environment()
        queues = [queue.name for queue in repo.queues.page(0, MAX_LISTED)]
        environments = [environment.name for environment in repo.environments.page(0, MAX_LISTED)]
    zeros = {(queue, status.value): 0 for queue in queues for status in Status}
    jobs, children = dict(zeros), dict(zeros)
    for group in counts:
        key = (group.queue_arn.rsplit("/", 1)[-1], group.status)
        target = children if group.child else jobs
        target[key] = target.get(key, 0) + group.count
    host = capacity()
    return StoreSnapshot(
        jobs=jobs,
        array_children=children,
        environments=[_usage(name, usage.get(name)) for name in sorted(set(environments) | set(usage))],
        host_vcpus=host.vcpus,
        host_memory_mib=host.memory_mib,
        host_gpus=host.gpus,
    )


def _usage(name: str, held: records.EnvironmentUsage | None) -> EnvironmentUsage:
    if held is None:
        return EnvironmentUsage(name)
    return EnvironmentUsage(name, held.vcpus, held.memory_mib, held.gpus, held.attempts)
