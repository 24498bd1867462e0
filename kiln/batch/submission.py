"""SubmitJob: validate, resolve the definition and overrides, and commit the job (and its array
children and dependencies) in one transaction. Nothing runs here: the scheduler picks it up."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

from kiln.batch import consumables, fargate, multinode
from kiln.batch.definitions import check_scheduling_priority, check_timeout, resolve_active
from kiln.batch.environments import EKS_QUEUE_TYPE, get_job_queue
from kiln.batch.names import check_job_name
from kiln.batch.scheduling_policies import MAX_SHARE_IDENTIFIERS, check_share_identifier
from kiln.batch.tags import check_tags
from kiln.context import Context
from kiln.engine import containers, ecs_tasks, eks_pods
from kiln.engine.lifecycle import FINISHED, Status
from kiln.engine.retry import check_retry_strategy
from kiln.errors import ValidationError
from kiln.store.records import Dependency, Document, Job, JobShare

MIN_ARRAY_SIZE = 2
MAX_ARRAY_SIZE = 10_000
MAX_DEPENDENCIES = 20
MAX_TAGS_COMBINED = 50
# The definition shapes of several containers, each resolved with SubmitJob's `<shape>Override`.
MULTI_CONTAINER_SHAPES: dict[str, Callable[[Document, Document | None, dict[str, str]], Document]] = {
    "ecsProperties": ecs_tasks.resolve,
    "eksProperties": eks_pods.resolve,
}


def _array_size(params: dict[str, Any]) -> int | None:
    size = (params.get("arrayProperties") or {}).get("size")
    if size is None:
        return None
    if not MIN_ARRAY_SIZE <= size <= MAX_ARRAY_SIZE:
        raise ValidationError(
            f"arrayProperties.size must be between {MIN_ARRAY_SIZE} and {MAX_ARRAY_SIZE} (got {size})"
        )
    return int(size)


def _dependencies(ctx: Context, params: dict[str, Any], size: int | None) -> list[dict[str, Any]]:
    """Validated dependsOn entries; unknown job ids are a 400, as AWS does."""
    entries = params.get("dependsOn") or []
    if len(entries) > MAX_DEPENDENCIES:
        raise ValidationError(f"A job can depend on at most {MAX_DEPENDENCIES} jobs (got {len(entries)})")
    for entry in entries:
        job_id, kind = entry.get("jobId"), entry.get("type")
        if job_id is None:
            if kind != "SEQUENTIAL" or size is None:
                raise ValidationError(
                    "A dependsOn entry without jobId is only valid as type SEQUENTIAL on an array job"
                )
            continue
        target = ctx.repo.jobs.get(job_id)
        if target is None:
            raise ValidationError(f"Dependency job {job_id} does not exist")
        if kind == "N_TO_N" and (size is None or target.array_size != size):
            raise ValidationError(
                f"N_TO_N dependency on {job_id} needs two array jobs of the same size "
                f"(this job: {size}, dependency: {target.array_size})"
            )
    return list(entries)


def _dependency_records(job_id: str, size: int | None, entries: list[dict[str, Any]]) -> list[Dependency]:
    """Job-level dependencies on the job itself; N_TO_N and SEQUENTIAL become child-level edges."""
    edges: list[Dependency] = []
    for entry in entries:
        target, kind = entry.get("jobId"), entry.get("type")
        if kind == "N_TO_N" and size is not None:
            edges += [Dependency(job_id=f"{job_id}:{i}", depends_on=f"{target}:{i}", type=kind) for i in range(size)]
        elif target is None and size is not None:
            edges += [
                Dependency(job_id=f"{job_id}:{i}", depends_on=f"{job_id}:{i - 1}", type=kind) for i in range(1, size)
            ]
        elif target is not None:
            edges.append(Dependency(job_id=job_id, depends_on=target, type=kind))
    return edges


def _share_identifier(ctx: Context, params: dict[str, Any], queue: dict[str, Any]) -> str | None:
    """Mandatory on a fair-share queue, forbidden elsewhere; a queue has at most 500 active shares."""
    share = params.get("shareIdentifier")
    if not queue.get("schedulingPolicyArn"):
        if share is not None:
            raise ValidationError(f"shareIdentifier is only valid on a job queue with a fair-share scheduling policy; "
                                  f"{queue['jobQueueName']} has none")  # fmt: skip
        return None
    if share is None:
        raise ValidationError(
            f"JobQueue {queue['jobQueueName']} has a fair-share scheduling policy: shareIdentifier is required"
        )
    check_share_identifier(share, "shareIdentifier")
    active = ctx.repo.shares.active_identifiers(queue["jobQueueArn"], FINISHED)
    if share not in active and len(active) >= MAX_SHARE_IDENTIFIERS:
        raise ValidationError(
            f"JobQueue {queue['jobQueueName']} already has {MAX_SHARE_IDENTIFIERS} active share identifiers; "
            f"jobs with a new one ({share}) are refused until some finish"
        )
    return str(share)


def _resolved_run(
    params: dict[str, Any], definition: dict[str, Any], platform: str, parameters: dict[str, str]
) -> tuple[dict[str, Any], multinode.ResolvedNodes | None]:
    """What the job runs: one container, or (multinode) the node ranges and each node's container."""
    if definition["type"] == "multinode":
        if params.get("containerOverrides"):
            raise ValidationError(
                "containerOverrides is not valid for a multi-node parallel job; override node ranges through "
                "nodeOverrides.nodePropertyOverrides"
            )
        nodes = multinode.resolve(definition["nodeProperties"], params.get("nodeOverrides"), parameters)
        return {"nodeProperties": nodes.node_properties}, nodes
    if params.get("nodeOverrides"):
        raise ValidationError("nodeOverrides is only valid for a job definition of type multinode")
    for shape, resolve in MULTI_CONTAINER_SHAPES.items():
        if definition.get(shape):
            if params.get("containerOverrides"):
                raise ValidationError(f"containerOverrides is not valid for a job definition with {shape}; override "
                                      f"its containers by name through {shape}Override")  # fmt: skip
            return {shape: resolve(definition[shape], params.get(f"{shape}Override"), parameters)}, None
    if platform == fargate.FARGATE:
        fargate.check_overrides(params.get("containerOverrides"))
    container = containers.apply_overrides(definition["containerProperties"], params.get("containerOverrides"))
    containers.check_container(container, where="container")
    if platform == fargate.FARGATE:
        fargate.check_resources(container)
    container["command"] = containers.substitute(container.get("command") or [], parameters)
    return {"container": container}, None


def _resolved_spec(
    ctx: Context, params: dict[str, Any], definition: dict[str, Any], queue: dict[str, Any]
) -> tuple[dict[str, Any], multinode.ResolvedNodes | None]:
    parameters = {**(definition.get("parameters") or {}), **(params.get("parameters") or {})}
    platform = fargate.platform_of(definition.get("platformCapabilities"))
    run, nodes = _resolved_run(params, definition, platform, parameters)
    retry = params.get("retryStrategy") or definition.get("retryStrategy")
    check_retry_strategy(retry)
    timeout = params.get("timeout") or definition.get("timeout")
    check_timeout(ctx, timeout)
    check_scheduling_priority(params.get("schedulingPriorityOverride"), "schedulingPriorityOverride")
    share = _share_identifier(ctx, params, queue)
    check_tags(params.get("tags"))
    propagate = params.get("propagateTags", definition.get("propagateTags", False))
    tags = {**(definition.get("tags") or {}), **(params.get("tags") or {})} if propagate else params.get("tags") or {}
    if len(tags) > MAX_TAGS_COMBINED:
        raise ValidationError(f"propagateTags would give the job more than {MAX_TAGS_COMBINED} tags")
    spec = {
        "jobDefinitionName": definition["jobDefinitionName"],
        **run,
        "parameters": parameters,
        "retryStrategy": retry,
        "timeout": timeout,
        "tags": tags,
        "propagateTags": bool(propagate),
        "platformCapabilities": [platform],
        "schedulingPriority": params.get("schedulingPriorityOverride", definition.get("schedulingPriority")),
        "dependsOn": params.get("dependsOn") or [],
        "shareIdentifier": share,
    }
    return spec, nodes


def _check_multinode_queue(ctx: Context, params: dict[str, Any], queue: dict[str, Any]) -> None:
    """AWS runs MNP jobs neither as arrays nor on Spot capacity."""
    if params.get("arrayProperties"):
        raise ValidationError("Array jobs are not supported for multi-node parallel job definitions")
    for item in queue["computeEnvironmentOrder"]:
        name = item["computeEnvironment"].rsplit("/", 1)[-1]
        environment = ctx.repo.environments.get(name)
        kind = ((environment.doc if environment else {}).get("computeResources") or {}).get("type")
        if kind in ("SPOT", "FARGATE_SPOT"):
            raise ValidationError(
                f"Multi-node parallel jobs aren't supported on compute environments that use Spot Instances: "
                f"JobQueue {queue['jobQueueName']} uses {name} ({kind})"
            )


def _check_orchestration(queue: dict[str, Any], definition: dict[str, Any]) -> None:
    """An `eksProperties` job runs only on a queue of EKS compute environments, and every other job
    only on one of ECS compute environments (AWS refuses the submission rather than leaving the job
    RUNNABLE)."""
    eks_queue = queue.get("jobQueueType") == EKS_QUEUE_TYPE
    if definition.get("eksProperties") and not eks_queue:
        raise ValidationError(
            f"JobQueue {queue['jobQueueName']} is attached to Amazon ECS compute environments, which can not run "
            f"job definition {definition['jobDefinitionName']} with eksProperties; submit it to a job queue of "
            "Amazon EKS compute environments (created with eksConfiguration)"
        )
    if eks_queue and not definition.get("eksProperties"):
        raise ValidationError(
            f"JobQueue {queue['jobQueueName']} is attached to Amazon EKS compute environments, which run only job "
            f"definitions with eksProperties; job definition {definition['jobDefinitionName']} has none"
        )


def _array_child(parent: Job, index: int) -> Job:
    """Child `index` of an array: the parent's name, queue, definition, time and resources, and an
    empty spec (it reads the parent's). Not `dataclasses.replace` (a few times slower): an array has
    up to 10,000 children."""
    return Job.new(f"{parent.id}:{index}", parent.name, parent.queue_arn, parent.definition_arn, parent.status,
                   parent.created_at, vcpus=parent.vcpus, memory_mib=parent.memory_mib, gpus=parent.gpus,
                   parent_id=parent.id, array_index=index)  # fmt: skip


def _node_jobs(parent: Job, nodes: multinode.ResolvedNodes, held: list[containers.Resources]) -> list[Job]:
    """The nodes of an MNP job: each with its own container and the resources `held[i]` it needs."""
    return [
        dataclasses.replace(parent, id=multinode.node_id(parent.id, index), parent_id=parent.id, array_size=None,
                            num_nodes=None, node_index=index, vcpus=resources.vcpus, memory_mib=resources.memory_mib,
                            gpus=resources.gpus, spec={"container": container})
        for index, (container, resources) in enumerate(zip(nodes.containers, held, strict=True))
    ]  # fmt: skip


def submit_job(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    check_job_name(params["jobName"])
    queue = get_job_queue(ctx, params["jobQueue"])
    if queue["state"] != "ENABLED":
        raise ValidationError(f"JobQueue {queue['jobQueueName']} is DISABLED; enable it before submitting jobs")
    definition = resolve_active(ctx, params["jobDefinition"])
    if definition["type"] == "multinode":
        _check_multinode_queue(ctx, params, queue)
    _check_orchestration(queue, definition)
    fargate.check_queue(fargate.platform_of(definition.get("platformCapabilities")), queue.get("jobQueueType"))
    for shape in MULTI_CONTAINER_SHAPES:
        if params.get(f"{shape}Override") and not definition.get(shape):
            raise ValidationError(f"{shape}Override is only valid for a job definition with {shape}")
    size = _array_size(params)
    spec, nodes = _resolved_spec(ctx, params, definition, queue)
    needed, needs = consumables.resolve_for_job(ctx, params, definition)
    if needed is not None:
        spec["consumableResourceProperties"] = needed
    if size is not None:
        spec["arrayProperties"] = {"size": size}
    entries = _dependencies(ctx, params, size)
    job_id = str(uuid.uuid4())
    node_resources: list[containers.Resources] = []
    if "ecsProperties" in spec:  # the task holds what its containers need together
        resources = ecs_tasks.task_resources(ecs_tasks.task_of(spec["ecsProperties"])["containers"])
    elif "eksProperties" in spec:  # as Kubernetes reserves for the pod
        resources = eks_pods.pod_resources(eks_pods.pod_of(spec["eksProperties"]))
    elif nodes is None:
        resources = containers.resources_of(spec["container"])
    else:  # the job holds the whole gang's resources: it is what the scheduler places
        node_resources = [containers.resources_of(container) for container in nodes.containers]
        resources = containers.Resources(sum(r.vcpus for r in node_resources),
                                         sum(r.memory_mib for r in node_resources),
                                         sum(r.gpus for r in node_resources))  # fmt: skip
    parent = Job.new(
        job_id, params["jobName"], queue["jobQueueArn"], definition["jobDefinitionArn"], Status.SUBMITTED.value,
        ctx.now, vcpus=resources.vcpus, memory_mib=resources.memory_mib, gpus=resources.gpus, spec=spec,
        array_size=size, num_nodes=None if nodes is None else nodes.num_nodes,
    )  # fmt: skip
    jobs = [parent]
    jobs += [_array_child(parent, i) for i in range(size or 0)]
    if nodes is not None:
        jobs += _node_jobs(parent, nodes, node_resources)
    ctx.repo.jobs.insert(jobs)
    ctx.repo.jobs.insert_dependencies(_dependency_records(job_id, size, entries))
    ctx.repo.consumables.insert_needs(consumables.job_needs(job_id, needs))  # children use their parent's
    if spec["shareIdentifier"] is not None:
        priority = spec["schedulingPriority"] or 0
        ctx.repo.shares.insert([JobShare(job_id=job.id, queue_arn=parent.queue_arn,
                                         share_identifier=spec["shareIdentifier"], scheduling_priority=priority)
                                for job in jobs])  # fmt: skip
    return {"jobArn": ctx.arns.job(job_id), "jobName": params["jobName"], "jobId": job_id}
