"""Quota shares: answered as AWS answers an account whose queues have no quota management.

A quota share is a virtual queue inside a *quota-management* job queue, and on AWS only a
`SAGEMAKER_TRAINING` queue with a quota-share scheduling policy is one; its jobs come through
SubmitServiceJob (https://docs.aws.amazon.com/batch/latest/userguide/create-quota-shares.html).
Kiln runs no service environments and refuses such queues, so no Kiln queue can hold a quota
share: CreateQuotaShare names the queue and says why, ListQuotaShares of a queue is empty, and an
ARN given to Describe/Update/DeleteQuotaShare is one that does not exist. Input is still checked,
so a mistake in a request is reported as such first.
"""

from __future__ import annotations

from typing import Any

from kiln.batch.environments import get_job_queue
from kiln.batch.names import check_resource_name
from kiln.batch.tags import check_tags
from kiln.context import Context
from kiln.errors import NotFoundError, ValidationError

NO_QUOTA_MANAGEMENT = (
    "Job queue {queue} does not have quota management: quota shares belong to SAGEMAKER_TRAINING job queues "
    "with a quota-share scheduling policy, whose jobs are service jobs, and Kiln runs no service environments"
)


def create_quota_share(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    check_resource_name(params["quotaShareName"], "quotaShareName")
    check_tags(params.get("tags"))
    if not params["capacityLimits"]:
        raise ValidationError("capacityLimits must list at least one capacity limit")
    queue = get_job_queue(ctx, params["jobQueue"])
    raise ValidationError(NO_QUOTA_MANAGEMENT.format(queue=queue["jobQueueName"]))


def list_quota_shares(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    get_job_queue(ctx, params["jobQueue"])  # an unknown queue is an error, a known one has none
    return {"quotaShares": []}


def describe_quota_share(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    raise NotFoundError(f"Quota share {params['quotaShareArn'][:300]} not found.")


update_quota_share = delete_quota_share = describe_quota_share
