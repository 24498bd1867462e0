"""Read-only views the dashboard needs and the Batch API cannot answer in one cheap call.

DescribeJobs carries an array's status counts but not which child is in which state, and nothing
in the Batch API reports the capacity attempts hold; both come from one SQL query each here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.config import Settings
from kiln.engine.lifecycle import Status
from kiln.errors import NotFoundError, ValidationError
from kiln.store.database import Database
from kiln.store.repository import Repository


class DashboardReads:
    """Queries over their own read transaction, like `BatchService`'s READS."""

    def __init__(self, db: Database, settings: Settings, host_gpus: Callable[[], int] = lambda: 0) -> None:
        self.db = db
        self.settings = settings
        self.host_gpus = host_gpus  # the executor's GPU count (it finds them; settings may not say)

    def array_children(self, parent_id: str) -> dict[str, Any]:
        """`{"size": N, "children": [[index, status], ...]}` for an array parent."""
        with self.db.read() as connection:
            repo = Repository(connection)
            parent = repo.jobs.get(parent_id)
            if parent is None:
                raise NotFoundError(f"Job {parent_id} not found.")
            if parent.array_size is None:
                raise ValidationError(f"Job {parent_id} is not an array job")
            children = repo.jobs.child_statuses(parent_id)
        return {"size": parent.array_size, "children": [[index, status] for index, status in children]}

    def capacity_in_use(self) -> dict[str, Any]:
        """Per compute environment, the resources held by running attempts; plus the host's total."""
        with self.db.read() as connection:
            usage = Repository(connection).attempts.usage_by_environment()
        return {
            "host": {
                "vcpus": self.settings.host_vcpus,
                "memoryMiB": self.settings.host_memory_mib,
                "gpus": self.host_gpus(),
            },
            "computeEnvironments": [
                {
                    "computeEnvironmentName": held.compute_environment,
                    "runningAttempts": held.attempts,
                    "vcpus": held.vcpus,
                    "memoryMiB": held.memory_mib,
                    "gpus": held.gpus,
                }
                for held in sorted(usage.values(), key=lambda held: held.compute_environment)
            ],
        }

    def job_counts(self) -> dict[str, Any]:
        """`{"queues": {queueArn: {status: count}}}` over top-level jobs, every status listed."""
        with self.db.read() as connection:
            rows = Repository(connection).jobs.top_level_status_counts()
        queues: dict[str, dict[str, int]] = {}
        for queue, status, count in rows:
            queues.setdefault(queue, {s.value: 0 for s in Status})[status] = count
        return {"queues": queues}
