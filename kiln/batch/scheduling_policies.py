"""Scheduling policies: Create/Describe/List/Update/DeleteSchedulingPolicy (fair share only).

A policy is a stored `SchedulingPolicyDetail` document. Queues point at it by ARN
(`schedulingPolicyArn`); `share_queue` reads it when ordering a queue's jobs. Quota-share policies
(a SageMaker feature) are refused.
"""

from __future__ import annotations

import re
from typing import Any

from kiln import pagination
from kiln.arns import name_from_reference
from kiln.batch.names import check_resource_name
from kiln.batch.tags import check_tags
from kiln.context import Context
from kiln.errors import ConflictError, NotFoundError, ValidationError
from kiln.store.records import SchedulingPolicy

MAX_SHARE_DECAY_SECONDS = 604_800
MAX_COMPUTE_RESERVATION = 99
MIN_WEIGHT_FACTOR = 0.0001
MAX_WEIGHT_FACTOR = 999.9999
MAX_SHARE_IDENTIFIERS = 500
MAX_DESCRIBE = 100
# AWS: "limited to 255 alphanumeric characters, and can be followed by an asterisk". Kiln also
# accepts '-' and '_' (AWS's exact character set is unverified; a stricter check would refuse
# identifiers that may well work on AWS).
SHARE_IDENTIFIER = re.compile(r"^[A-Za-z0-9_-]{1,255}\*?$")


def check_share_identifier(value: str, field: str) -> None:
    if not SHARE_IDENTIFIER.fullmatch(value):
        raise ValidationError(
            f"{field} {value!r} must be 1-255 letters, digits, '-' or '_', optionally followed by '*'"
        )


def _check_fairshare(policy: dict[str, Any] | None) -> None:
    if not policy:
        return
    decay = policy.get("shareDecaySeconds")
    if decay is not None and not 0 <= decay <= MAX_SHARE_DECAY_SECONDS:
        raise ValidationError(f"shareDecaySeconds must be between 0 and {MAX_SHARE_DECAY_SECONDS} (got {decay})")
    reservation = policy.get("computeReservation")
    if reservation is not None and not 0 <= reservation <= MAX_COMPUTE_RESERVATION:
        raise ValidationError(f"computeReservation must be between 0 and {MAX_COMPUTE_RESERVATION} (got {reservation})")
    shares = policy.get("shareDistribution") or []
    if len(shares) > MAX_SHARE_IDENTIFIERS:
        raise ValidationError(f"shareDistribution can list at most {MAX_SHARE_IDENTIFIERS} share identifiers")
    for share in shares:
        check_share_identifier(share["shareIdentifier"], "shareIdentifier")
        weight = share.get("weightFactor")
        if weight is not None and not MIN_WEIGHT_FACTOR <= weight <= MAX_WEIGHT_FACTOR:
            raise ValidationError(
                f"weightFactor of {share['shareIdentifier']} must be between {MIN_WEIGHT_FACTOR} and "
                f"{MAX_WEIGHT_FACTOR} (got {weight})"
            )
    _check_no_overlap([share["shareIdentifier"] for share in shares])


def _check_no_overlap(identifiers: list[str]) -> None:
    """AWS: entries can't overlap (no `UserA*` beside `UserA1`, nor `User*` beside `UserA*`)."""
    for index, first in enumerate(identifiers):
        for second in identifiers[index + 1 :]:
            if _overlap(first, second):
                raise ValidationError(f"shareDistribution entries {first} and {second} overlap")


def _overlap(first: str, second: str) -> bool:
    if first == second:
        return True
    for prefix, other in ((first, second), (second, first)):
        if prefix.endswith("*") and other.rstrip("*").startswith(prefix[:-1]):
            return True
    return False


def _check_body(params: dict[str, Any]) -> None:
    if params.get("quotaSharePolicy") is not None:
        raise ValidationError("Kiln supports fair-share scheduling policies only; quotaSharePolicy is not supported")
    _check_fairshare(params.get("fairsharePolicy"))


def create_scheduling_policy(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name = params["name"]
    check_resource_name(name, "name")
    if ctx.repo.policies.get(name) is not None:
        raise ConflictError(f"Object already exists: scheduling policy {name}")
    _check_body(params)
    check_tags(params.get("tags"))
    arn = ctx.arns.scheduling_policy(name)
    doc = {"name": name, "arn": arn, "fairsharePolicy": params.get("fairsharePolicy") or {},
           "tags": params.get("tags") or {}}  # fmt: skip
    ctx.repo.policies.insert(SchedulingPolicy(name=name, arn=arn, created_at=ctx.now, doc=doc))
    return {"name": name, "arn": arn}


def get_scheduling_policy(ctx: Context, reference: str) -> dict[str, Any]:
    """A policy by ARN (or, leniently, by name); a missing one is a 400 as for queues."""
    policy = ctx.repo.policies.get(name_from_reference(reference, "scheduling-policy"))
    if policy is None:
        raise NotFoundError(f"SchedulingPolicy {reference} not found.")
    return dict(policy.doc)


def describe_scheduling_policies(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Known ARNs in the order asked (unknown ones are left out, as DescribeJobs does)."""
    arns = list(dict.fromkeys(params["arns"]))
    if len(arns) > MAX_DESCRIBE:
        raise ValidationError(f"At most {MAX_DESCRIBE} scheduling policies can be described at once")
    wanted = [ctx.arns.scheduling_policy(name_from_reference(arn, "scheduling-policy")) for arn in arns]
    found = {policy.arn: policy.doc for policy in ctx.repo.policies.page(0, MAX_DESCRIBE, arns=wanted)}
    return {"schedulingPolicies": [found[arn] for arn in wanted if arn in found]}


def list_scheduling_policies(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    limit = pagination.page_size(params.get("maxResults"), default=MAX_DESCRIBE, maximum=MAX_DESCRIBE)
    offset = pagination.offset_of(params.get("nextToken"))
    policies = ctx.repo.policies.page(offset, limit + 1)
    token = pagination.encode_token(offset + limit) if len(policies) > limit else None
    return {"schedulingPolicies": [{"arn": policy.arn} for policy in policies[:limit]], "nextToken": token}


def update_scheduling_policy(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    doc = get_scheduling_policy(ctx, params["arn"])
    _check_body(params)
    if params.get("fairsharePolicy") is not None:
        doc["fairsharePolicy"] = params["fairsharePolicy"]
    ctx.repo.policies.update(doc["name"], {"doc": doc})
    return {}


def queues_using(ctx: Context, arn: str) -> list[str]:
    return [queue.name for queue in ctx.repo.queues.all() if queue.doc.get("schedulingPolicyArn") == arn]


def delete_scheduling_policy(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    doc = get_scheduling_policy(ctx, params["arn"])
    users = queues_using(ctx, doc["arn"])
    if users:
        raise ConflictError(f"Cannot delete scheduling policy {doc['name']}: job queue(s) {', '.join(users)} use it")
    ctx.repo.policies.delete(doc["name"])
    return {}
