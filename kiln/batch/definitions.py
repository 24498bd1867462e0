"""Job definitions: revisions, ACTIVE/INACTIVE, and resolving a user's reference to one revision."""

from __future__ import annotations

import json
import re
from typing import Any

from kiln import pagination
from kiln.arns import parse_arn
from kiln.batch import consumables, fargate, multinode
from kiln.batch.names import check_resource_name
from kiln.batch.tags import check_tags
from kiln.context import Context
from kiln.engine import ecs_tasks, eks_pods
from kiln.engine.containers import check_container
from kiln.engine.retry import check_retry_strategy
from kiln.errors import NotFoundError, ValidationError
from kiln.store.records import JobDefinition

MAX_DESCRIBE = 100
MAX_DEFINITION_BYTES = 24 * 1024
_NAME_REVISION = re.compile(r"^(?P<name>[A-Za-z0-9_-]{1,128}):(?P<revision>\d+)$")
_BARE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
RUN_SHAPES = ("containerProperties", "ecsProperties", "eksProperties")  # a container definition gives one


def check_timeout(ctx: Context, timeout: dict[str, Any] | None) -> None:
    if timeout is None or timeout.get("attemptDurationSeconds") is None:
        return
    seconds = timeout["attemptDurationSeconds"]
    floor = ctx.settings.min_timeout_seconds
    if seconds < floor:
        raise ValidationError(f"timeout.attemptDurationSeconds must be at least {floor} seconds (got {seconds})")


def check_scheduling_priority(value: int | None, field: str) -> None:
    if value is not None and not 0 <= value <= 9999:
        raise ValidationError(f"{field} must be between 0 and 9999 (got {value})")


def _check_platform(params: dict[str, Any]) -> str:
    """The definition's platform (EC2 or FARGATE), after that platform's rules (kiln.batch.fargate)."""
    platform = fargate.platform_of(params.get("platformCapabilities"))
    if params.get("ecsProperties"):
        ecs_tasks.check_ecs_properties(params["ecsProperties"], platform)
    elif params.get("eksProperties"):
        eks_pods.check_eks_properties(params["eksProperties"], platform)
    elif platform == fargate.FARGATE:
        fargate.check_definition(params["type"], params.get("containerProperties"))
    else:
        fargate.check_ec2_container(params.get("containerProperties"))
        for entry in (params.get("nodeProperties") or {}).get("nodeRangeProperties") or []:
            fargate.check_ec2_container(entry.get("container"))
    return platform


def _check_body(ctx: Context, params: dict[str, Any]) -> str:
    check_resource_name(params["jobDefinitionName"], "jobDefinitionName")
    size = len(json.dumps(params, separators=(",", ":")).encode())
    if size > MAX_DEFINITION_BYTES:
        raise ValidationError(
            f"A job definition can be at most {MAX_DEFINITION_BYTES} bytes (24 KiB); this one is {size}"
        )
    given = [key for key in RUN_SHAPES if params.get(key)]
    if params["type"] == "container":
        if params.get("nodeProperties"):
            raise ValidationError("nodeProperties is only valid for type multinode")
        if len(given) > 1:
            raise ValidationError(f"A job definition gives one of {', '.join(RUN_SHAPES)}, not {' and '.join(given)}")
        if not given:
            raise ValidationError(
                "A container job definition needs containerProperties, ecsProperties or eksProperties"
            )
        if given == ["containerProperties"]:
            check_container(params["containerProperties"])
    elif others := [key for key in given if key != "containerProperties"]:
        raise ValidationError(f"{others[0]} is only valid for type container; Kiln's multinode job definitions "
                              "give each node range a container in nodeProperties")  # fmt: skip
    elif not params.get("nodeProperties"):
        raise ValidationError("A multinode job definition needs nodeProperties")
    elif params.get("containerProperties"):
        raise ValidationError("containerProperties is only valid for type container; a multinode job definition "
                              "gives each node range its container in nodeProperties")  # fmt: skip
    platform = _check_platform(params)
    if params["type"] == "multinode":
        multinode.check_node_properties(params["nodeProperties"])
    check_retry_strategy(params.get("retryStrategy"))
    check_timeout(ctx, params.get("timeout"))
    check_scheduling_priority(params.get("schedulingPriority"), "schedulingPriority")
    check_tags(params.get("tags"))
    consumables.check_definition(ctx, params)
    for key, value in (params.get("parameters") or {}).items():
        if not isinstance(value, str):
            raise ValidationError(f"parameters.{key} must be a string")
    return platform


def register_job_definition(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    platform = _check_body(ctx, params)
    name = params["jobDefinitionName"]
    revision = ctx.repo.definitions.latest_revision(name) + 1
    arn = ctx.arns.job_definition(name, revision)
    doc = {key: value for key, value in params.items() if value is not None}
    doc.update(
        jobDefinitionArn=arn,
        revision=revision,
        status="ACTIVE",
        platformCapabilities=[platform],
        containerOrchestrationType="EKS" if params.get("eksProperties") else "ECS",
        parameters=params.get("parameters") or {},
        tags=params.get("tags") or {},
    )
    if platform == fargate.FARGATE:
        doc["containerProperties"] = fargate.with_defaults(doc["containerProperties"])
    ctx.repo.definitions.insert(
        JobDefinition(id=None, name=name, revision=revision, arn=arn, status="ACTIVE", created_at=ctx.now, doc=doc)
    )
    return {"jobDefinitionName": name, "jobDefinitionArn": arn, "revision": revision}


def _split_reference(reference: str) -> tuple[str, int | None]:
    """`name`, `name:revision`, or an ARN with or without `:revision`."""
    parsed = parse_arn(reference)
    if parsed is not None:
        if parsed.kind != "job-definition":
            raise ValidationError(f"{reference} is not a job definition ARN")
        reference = parsed.resource
    match = _NAME_REVISION.match(reference)
    if match:
        return match["name"], int(match["revision"])
    if _BARE_NAME.match(reference):
        return reference, None
    raise ValidationError(f"Provided name {reference} is not supported pattern[a-zA-Z_0-9-]{{1,128}}")


def resolve_active(ctx: Context, reference: str) -> dict[str, Any]:
    """The revision SubmitJob means: the named one, or the newest ACTIVE; must be ACTIVE."""
    name, revision = _split_reference(reference)
    definition = ctx.repo.definitions.get(name, revision)
    if definition is None or definition.status != "ACTIVE":
        raise NotFoundError(f"JobDefinition name {reference} does not exist or is not in ACTIVE status")
    return dict(definition.doc)


def describe_job_definitions(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    listed = params.get("jobDefinitions")
    pagination.check_exclusive(listed, params.get("maxResults"), "JobDefinitions")
    if listed and (params.get("jobDefinitionName") or params.get("status")):
        raise ValidationError("jobDefinitions cannot be combined with jobDefinitionName or status")
    if listed is not None and len(listed) > MAX_DESCRIBE:
        raise ValidationError(f"At most {MAX_DESCRIBE} job definitions can be described at once")
    refs = None
    if listed:
        # A bare name inside `jobDefinitions` matches nothing, as on AWS.
        refs = [(name, rev) for name, rev in map(_split_reference, listed) if rev is not None]
    limit = pagination.page_size(params.get("maxResults"), default=MAX_DESCRIBE, maximum=MAX_DESCRIBE)
    offset = pagination.offset_of(params.get("nextToken"))
    found = ctx.repo.definitions.page(params.get("jobDefinitionName"), params.get("status"), refs, offset, limit + 1)
    token = pagination.encode_token(offset + limit) if len(found) > limit else None
    return {"jobDefinitions": [definition.doc for definition in found[:limit]], "nextToken": token}


def deregister_job_definition(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    reference = params["jobDefinition"]
    name, revision = _split_reference(reference)
    definition = ctx.repo.definitions.get(name, revision)
    if definition is None:
        raise NotFoundError(f"JobDefinition {reference} does not exist")
    ctx.repo.definitions.update(definition.arn, doc={**definition.doc, "status": "INACTIVE"}, status="INACTIVE")
    return {}


def get_definition_by_arn(ctx: Context, arn: str) -> dict[str, Any] | None:
    definition = ctx.repo.definitions.get_by_arn(arn)
    return None if definition is None else dict(definition.doc)
