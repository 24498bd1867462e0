"""Consumable resources: Create/Describe/Update/Delete/ListConsumableResources,
ListJobsByConsumableResource, and the `consumableResourceProperties` of definitions and jobs.

A resource is a name and a total; what jobs hold is never stored but summed from their active
attempts (`kiln.store.consumables`), and the scheduler (`kiln.engine.consumables`) starts a job only
while each resource it names has enough available. As on AWS, a resource may be deleted while jobs
use it, and one created again under the same name is the same resource to the jobs that name it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kiln import pagination
from kiln.arns import name_from_reference
from kiln.batch.names import check_resource_name
from kiln.batch.tags import check_tags
from kiln.context import Context
from kiln.engine import consumables
from kiln.engine.lifecycle import Status
from kiln.errors import ConflictError, NotFoundError, ValidationError
from kiln.store.consumables import NameMatch
from kiln.store.records import ConsumableResource, Document, JobConsumable

KIND = "consumable-resource"
MAX_LIST = 100
OPERATIONS = ("SET", "ADD", "REMOVE")
# An UpdateConsumableResource clientToken makes a repeat of the same request a no-op this long.
CLIENT_TOKEN_MS = 8 * 3600 * 1000
RESOURCE_FILTERS = ("CONSUMABLE_RESOURCE_NAME",)
JOB_FILTERS = ("JOB_STATUS", "JOB_NAME")
MULTINODE = "Kiln does not support consumable resources on multi-node parallel jobs"

Requirements = list[tuple[str, int]]  # (resource name, quantity), in the order given


# -- the resources -------------------------------------------------------------------------------
def _check_quantity(value: int, field: str) -> None:
    if value < 0:
        raise ValidationError(f"{field} must be a non-negative number (got {value})")
    if value > pagination.MAX_POSITION:
        raise ValidationError(f"{field} must be at most {pagination.MAX_POSITION} (got {value})")


def get_resource(ctx: Context, reference: str) -> ConsumableResource:
    """A resource by name or ARN; a missing one is a 400, as for the other Batch resources."""
    resource = ctx.repo.consumables.get(name_from_reference(reference, KIND))
    if resource is None:
        raise NotFoundError(f"Consumable resource {reference} does not exist")
    return resource


def create_consumable_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name = params["consumableResourceName"]
    check_resource_name(name, "consumableResourceName")
    if ctx.repo.consumables.get(name) is not None:
        raise ConflictError(f"Object already exists: consumable resource {name}")
    total = params.get("totalQuantity", 0)
    _check_quantity(total, "totalQuantity")
    kind = params.get("resourceType") or consumables.REPLENISHABLE
    if kind not in consumables.RESOURCE_TYPES:
        raise ValidationError(f"resourceType must be one of {', '.join(consumables.RESOURCE_TYPES)} (got {kind!r})")
    check_tags(params.get("tags"))
    arn = ctx.arns.consumable_resource(name)
    doc: Document = {"tags": params.get("tags") or {}}
    ctx.repo.consumables.insert(ConsumableResource(name, arn, kind, total, ctx.now, doc))
    return {"consumableResourceName": name, "consumableResourceArn": arn}


def _quantities(resource: ConsumableResource, in_use: dict[str, int]) -> dict[str, int]:
    held = in_use.get(resource.name, 0)
    return {
        "totalQuantity": resource.total_quantity,
        "inUseQuantity": held,
        "availableQuantity": consumables.available(resource.resource_type, resource.total_quantity, held),
    }


def describe_consumable_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    resource = get_resource(ctx, params["consumableResource"])
    return {
        "consumableResourceName": resource.name,
        "consumableResourceArn": resource.arn,
        **_quantities(resource, ctx.repo.consumables.in_use()),
        "resourceType": resource.resource_type,
        "createdAt": resource.created_at,
        "tags": resource.doc.get("tags") or {},
    }


def _new_total(resource: ConsumableResource, operation: str, quantity: int) -> int:
    if operation == "SET":
        return quantity
    if operation == "ADD":
        total = resource.total_quantity + quantity
        _check_quantity(total, "totalQuantity after ADD")
        return total
    if quantity > resource.total_quantity:
        raise ValidationError(
            f"Cannot REMOVE {quantity} from consumable resource {resource.name}: its totalQuantity is "
            f"{resource.total_quantity}"
        )
    return resource.total_quantity - quantity


def _recent_tokens(doc: Document, now: int) -> dict[str, Any]:
    return {
        token: seen for token, seen in (doc.get("clientTokens") or {}).items() if now - seen["at"] < CLIENT_TOKEN_MS
    }


def update_consumable_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """SET, ADD or REMOVE `quantity` on the total. The same clientToken with the same request
    within 8 hours is answered without changing anything again; with another request it is refused."""
    resource = get_resource(ctx, params["consumableResource"])
    operation = params.get("operation") or "SET"
    if operation not in OPERATIONS:
        raise ValidationError(f"operation must be one of {', '.join(OPERATIONS)} (got {operation!r})")
    if params.get("quantity") is None:
        raise ValidationError("UpdateConsumableResource needs a quantity")
    quantity = params["quantity"]
    _check_quantity(quantity, "quantity")
    answer = {"consumableResourceName": resource.name, "consumableResourceArn": resource.arn}
    token = params.get("clientToken")
    tokens = _recent_tokens(resource.doc, ctx.now)
    request = hashlib.sha256(json.dumps([operation, quantity]).encode()).hexdigest()
    if token is not None and token in tokens:
        if tokens[token]["request"] != request:
            raise ValidationError(f"clientToken {token} was already used for a different update of {resource.name}")
        return {**answer, "totalQuantity": resource.total_quantity}
    total = _new_total(resource, operation, quantity)
    if token is not None:
        tokens[token] = {"request": request, "at": ctx.now}
    ctx.repo.consumables.update(
        resource.name, {"total_quantity": total, "doc": {**resource.doc, "clientTokens": tokens}}
    )
    return {**answer, "totalQuantity": total}


def delete_consumable_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Allowed while jobs use it, as on AWS: running jobs keep going; waiting ones wait until a
    resource of that name exists again (their statusReason says so)."""
    resource = get_resource(ctx, params["consumableResource"])
    ctx.repo.consumables.delete(resource.name)
    return {}


def _name_matches(values: list[str]) -> list[NameMatch]:
    """AWS's name filter values: case-insensitive, a trailing `*` makes a prefix."""
    return [(value[:-1].lower(), True) if value.endswith("*") else (value.lower(), False) for value in values]


def _filters(filters: list[Document], allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """Filter name -> its values; unknown names and empty value lists are refused."""
    found: dict[str, list[str]] = {}
    for entry in filters:
        name, values = entry.get("name"), entry.get("values") or []
        if name not in allowed:
            raise ValidationError(f"Invalid filter name {name!r}: must be one of {', '.join(allowed)}")
        if not values:
            raise ValidationError(f"Filter {name} needs at least one value")
        found.setdefault(name, []).extend(values)
    return found


def list_consumable_resources(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    limit = pagination.page_size(params.get("maxResults"), default=MAX_LIST, maximum=MAX_LIST)
    offset = pagination.offset_of(params.get("nextToken"))
    _filters(params.get("filters") or [], RESOURCE_FILTERS)
    filters = [_name_matches(entry.get("values") or []) for entry in params.get("filters") or []]
    found = ctx.repo.consumables.page(offset, limit + 1, filters)
    token = pagination.encode_token(offset + limit) if len(found) > limit else None
    in_use = ctx.repo.consumables.in_use()
    summaries = [
        {
            "consumableResourceArn": resource.arn,
            "consumableResourceName": resource.name,
            "totalQuantity": resource.total_quantity,
            "inUseQuantity": in_use.get(resource.name, 0),
            "resourceType": resource.resource_type,
        }
        for resource in found[:limit]
    ]
    return {"consumableResources": summaries, "nextToken": token}


def list_jobs_by_consumable_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Top-level jobs (array parents stand for their children) that need the resource, newest first."""
    resource = get_resource(ctx, params["consumableResource"])
    limit = pagination.page_size(params.get("maxResults"), default=MAX_LIST, maximum=MAX_LIST)
    after = pagination.keyset_of(params.get("nextToken"), (int, str))
    filters = _filters(params.get("filters") or [], JOB_FILTERS)
    statuses = filters.get("JOB_STATUS")
    for status in statuses or []:
        if status not in Status.__members__:
            raise ValidationError(f"JOB_STATUS filter value {status!r} is not a job status")
    names = _name_matches(filters["JOB_NAME"]) if "JOB_NAME" in filters else None
    found = ctx.repo.consumables.jobs_needing(
        resource.name,
        limit=limit + 1,
        after=None if after is None else (int(after[0]), str(after[1])),
        statuses=statuses,
        names=names,
    )
    page = found[:limit]
    token = pagination.encode_token([page[-1][0].created_at, page[-1][0].id]) if len(found) > limit else None
    summaries = [
        {
            "jobArn": ctx.arns.job(job.id),
            "jobQueueArn": job.queue_arn,
            "jobName": job.name,
            "jobDefinitionArn": job.definition_arn,
            "shareIdentifier": job.spec.get("shareIdentifier"),
            "jobStatus": job.status,
            "quantity": quantity,
            "statusReason": job.status_reason,
            "startedAt": job.started_at,
            "createdAt": job.created_at,
            "consumableResourceProperties": job.spec.get("consumableResourceProperties") or {},
        }
        for job, quantity in page
    ]
    return {"jobs": summaries, "nextToken": token}


# -- what definitions and jobs need -------------------------------------------------------------
def requirements(ctx: Context, properties: Document | None, field: str) -> Requirements:
    """A `ConsumableResourceProperties` checked: each entry names an existing resource (name or
    ARN) once, with a quantity of at least 1. Returns (resource name, quantity) pairs."""
    found: Requirements = []
    for index, entry in enumerate((properties or {}).get("consumableResourceList") or []):
        where = f"{field}.consumableResourceList[{index}]"
        reference, quantity = entry.get("consumableResource"), entry.get("quantity")
        if not reference:
            raise ValidationError(f"{where}.consumableResource is required")
        if quantity is None or quantity < 1:
            raise ValidationError(f"{where}.quantity must be at least 1 (got {quantity})")
        name = get_resource(ctx, reference).name
        if any(name == seen for seen, _ in found):
            raise ValidationError(f"{field} names consumable resource {name} more than once")
        found.append((name, int(quantity)))
    return found


def check_definition(ctx: Context, params: Document) -> None:
    """RegisterJobDefinition: the resources named exist; multi-node parallel definitions name none."""
    ranges = (params.get("nodeProperties") or {}).get("nodeRangeProperties") or []
    if params["type"] == "multinode" and (
        params.get("consumableResourceProperties") or any(r.get("consumableResourceProperties") for r in ranges)
    ):
        raise ValidationError(MULTINODE)
    requirements(ctx, params.get("consumableResourceProperties"), "consumableResourceProperties")


def resolve_for_job(ctx: Context, params: Document, definition: Document) -> tuple[Document | None, Requirements]:
    """SubmitJob: the job's consumableResourceProperties (the definition's, with the override's
    quantity for each resource it names and its other resources added) and its requirements."""
    override = params.get("consumableResourcePropertiesOverride")
    node_overrides = (params.get("nodeOverrides") or {}).get("nodePropertyOverrides") or []
    if definition["type"] == "multinode":
        if override or any(o.get("consumableResourcePropertiesOverride") for o in node_overrides):
            raise ValidationError(MULTINODE)
        return None, []
    wanted = requirements(ctx, override, "consumableResourcePropertiesOverride")
    base = (definition.get("consumableResourceProperties") or {}).get("consumableResourceList") or []
    overridden = {name for name, _ in wanted}
    entries: list[Document] = []
    # The definition's entries keep the names they were registered with (a resource deleted since
    # is still needed: the job waits until it exists again).
    kept: Requirements = []
    for entry in base:
        if not entry.get("consumableResource") or (entry.get("quantity") or 0) < 1:
            # Registered before Kiln checked these (it used to ignore them): say which definition.
            raise ValidationError(
                f"Job definition {definition['jobDefinitionArn']} has a consumableResourceProperties entry without "
                f"a consumableResource or with a quantity below 1: {entry}; register a corrected revision"
            )
        name = name_from_reference(entry["consumableResource"], KIND)
        if name not in overridden:
            kept.append((name, int(entry["quantity"])))
            entries.append(entry)
    entries += (override or {}).get("consumableResourceList") or []
    needs = kept + wanted
    if not needs:
        return None, []
    return {"consumableResourceList": [dict(entry) for entry in entries]}, needs


def job_needs(job_id: str, needs: Requirements) -> list[JobConsumable]:
    return [JobConsumable(job_id=job_id, resource_name=name, quantity=quantity) for name, quantity in needs]
