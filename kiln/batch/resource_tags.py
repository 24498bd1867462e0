"""TagResource / UntagResource / ListTagsForResource on any taggable Batch ARN."""

from __future__ import annotations

from typing import Any

from kiln.arns import parse_arn
from kiln.batch.tags import check_tags, merged
from kiln.context import Context
from kiln.errors import NotFoundError, ValidationError
from kiln.store.records import ComputeEnvironment, JobQueue
from kiln.store.resources import NamedStore


def _named(ctx: Context, kind: str) -> NamedStore[ComputeEnvironment] | NamedStore[JobQueue]:
    """The store of a compute environment ("ce") or a job queue ("queue")."""
    return ctx.repo.environments if kind == "ce" else ctx.repo.queues


def _load(ctx: Context, arn: str) -> tuple[str, str, dict[str, Any]]:
    """(kind, key, document holding `tags`) for a taggable ARN."""
    parsed = parse_arn(arn)
    if parsed is None:
        raise ValidationError(f"{arn} is not an ARN")
    if parsed.kind == "job":
        if ":" in parsed.resource or "#" in parsed.resource:
            raise ValidationError("Array child and multi-node node jobs cannot be tagged; tag the parent job")
        job = ctx.repo.jobs.get(parsed.resource)
        if job is None:
            raise NotFoundError(f"Resource {arn} not found")
        return "job", job.id, dict(job.spec)
    if parsed.kind == "job-definition":
        definition = ctx.repo.definitions.get_by_arn(arn)
        if definition is None:
            raise NotFoundError(f"Resource {arn} not found")
        return "definition", arn, dict(definition.doc)
    if parsed.kind == "scheduling-policy":
        policy = ctx.repo.policies.get(parsed.resource)
        if policy is None:
            raise NotFoundError(f"Resource {arn} not found")
        return "policy", parsed.resource, dict(policy.doc)
    if parsed.kind == "consumable-resource":
        consumable = ctx.repo.consumables.get(parsed.resource)
        if consumable is None:
            raise NotFoundError(f"Resource {arn} not found")
        return "consumable", parsed.resource, dict(consumable.doc)
    kinds = {"job-queue": "queue", "compute-environment": "ce"}
    if parsed.kind not in kinds:
        raise ValidationError(f"Resources of type {parsed.kind} cannot be tagged on Kiln")
    resource = _named(ctx, kinds[parsed.kind]).get(parsed.resource)
    if resource is None:
        raise NotFoundError(f"Resource {arn} not found")
    return kinds[parsed.kind], parsed.resource, dict(resource.doc)


def _save(ctx: Context, kind: str, key: str, doc: dict[str, Any]) -> None:
    if kind == "job":
        ctx.repo.jobs.update_fields(key, {"spec": doc})
    elif kind == "definition":
        ctx.repo.definitions.update(key, doc=doc)
    elif kind == "policy":
        ctx.repo.policies.update(key, {"doc": doc})
    elif kind == "consumable":
        ctx.repo.consumables.update(key, {"doc": doc})
    else:
        _named(ctx, kind).update(key, {"doc": doc})


def tag_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    check_tags(params["tags"])
    kind, key, doc = _load(ctx, params["resourceArn"])
    doc["tags"] = merged(doc.get("tags"), params["tags"])
    _save(ctx, kind, key, doc)
    return {}


def untag_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    kind, key, doc = _load(ctx, params["resourceArn"])
    doc["tags"] = {k: v for k, v in (doc.get("tags") or {}).items() if k not in set(params["tagKeys"])}
    _save(ctx, kind, key, doc)
    return {}


def list_tags_for_resource(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    _, _, doc = _load(ctx, params["resourceArn"])
    return {"tags": doc.get("tags") or {}}
