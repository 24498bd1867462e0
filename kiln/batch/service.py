"""The domain's front door: one call per AWS Batch operation, each in its own transaction.

The API layer calls `call(operation, params)` with already shape-validated parameters; this module
decides which operations write (and so wake the scheduler) and which only read.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from kiln.arns import Arns
from kiln.batch import (
    consumables,
    definitions,
    environments,
    jobs,
    queue_snapshot,
    quota_shares,
    resource_tags,
    scheduling_policies,
    submission,
)
from kiln.clock import now_ms
from kiln.config import Settings
from kiln.context import Context
from kiln.logs import job_log as logs
from kiln.store.database import Database
from kiln.store.repository import Repository

Operation = Callable[[Context, dict[str, Any]], dict[str, Any]]


def _cancel(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    jobs.cancel(ctx, [params["jobId"]], params["reason"])
    return {}


def _terminate(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    jobs.terminate(ctx, [params["jobId"]], params["reason"])
    return {}


WRITES: dict[str, Operation] = {
    "CreateComputeEnvironment": environments.create_compute_environment,
    "UpdateComputeEnvironment": environments.update_compute_environment,
    "DeleteComputeEnvironment": environments.delete_compute_environment,
    "CreateJobQueue": environments.create_job_queue,
    "UpdateJobQueue": environments.update_job_queue,
    "DeleteJobQueue": jobs.delete_job_queue,
    "RegisterJobDefinition": definitions.register_job_definition,
    "DeregisterJobDefinition": definitions.deregister_job_definition,
    "SubmitJob": submission.submit_job,
    "CancelJob": _cancel,
    "TerminateJob": _terminate,
    "CancelJobs": partial(jobs.bulk, action="cancel"),
    "TerminateJobs": partial(jobs.bulk, action="terminate"),
    "CreateSchedulingPolicy": scheduling_policies.create_scheduling_policy,
    "UpdateSchedulingPolicy": scheduling_policies.update_scheduling_policy,
    "DeleteSchedulingPolicy": scheduling_policies.delete_scheduling_policy,
    "TagResource": resource_tags.tag_resource,
    "UntagResource": resource_tags.untag_resource,
    "CreateConsumableResource": consumables.create_consumable_resource,
    "UpdateConsumableResource": consumables.update_consumable_resource,
    "DeleteConsumableResource": consumables.delete_consumable_resource,
}
READS: dict[str, Operation] = {
    "DescribeComputeEnvironments": environments.describe_compute_environments,
    "DescribeJobQueues": environments.describe_job_queues,
    "DescribeJobDefinitions": definitions.describe_job_definitions,
    "DescribeJobs": jobs.describe_jobs,
    "ListJobs": jobs.list_jobs,
    "DescribeSchedulingPolicies": scheduling_policies.describe_scheduling_policies,
    "ListSchedulingPolicies": scheduling_policies.list_scheduling_policies,
    "ListTagsForResource": resource_tags.list_tags_for_resource,
    "GetJobQueueSnapshot": queue_snapshot.get_job_queue_snapshot,
    # No Kiln queue can hold a quota share (quota_shares.py): these only read, whatever their names say.
    "CreateQuotaShare": quota_shares.create_quota_share,
    "ListQuotaShares": quota_shares.list_quota_shares,
    "DescribeQuotaShare": quota_shares.describe_quota_share,
    "UpdateQuotaShare": quota_shares.update_quota_share,
    "DeleteQuotaShare": quota_shares.delete_quota_share,
    "DescribeConsumableResource": consumables.describe_consumable_resource,
    "ListConsumableResources": consumables.list_consumable_resources,
    "ListJobsByConsumableResource": consumables.list_jobs_by_consumable_resource,
}


class BatchService:
    """Implements the AWS Batch operations Kiln supports over one database."""

    def __init__(self, db: Database, settings: Settings, on_change: Callable[[], None] | None = None) -> None:
        self.db = db
        self.settings = settings
        self.arns = Arns(settings.region, settings.account_id)
        self.on_change = on_change or (lambda: None)

    def implements(self, operation: str) -> bool:
        return operation in WRITES or operation in READS

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if operation in READS:
            with self.db.read() as connection:
                return READS[operation](self._context(Repository(connection)), params)
        with self.db.begin() as connection:
            result = WRITES[operation](self._context(Repository(connection)), params)
        self.on_change()  # committed: let the scheduler see it now rather than next tick
        return result

    def _context(self, repo: Repository) -> Context:
        return Context(repo=repo, arns=self.arns, settings=self.settings, now=now_ms())

    def log_location(self, job_id: str, attempt: int | None, container: str | None = None) -> logs.LogLocation:
        with self.db.read() as connection:
            return logs.locate(self._context(Repository(connection)), job_id, attempt, container)
