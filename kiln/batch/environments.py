"""Compute environments and job queues: create, describe, update, delete (https://docs.aws.amazon.com/batch/latest/userguide/compute_environments.html,
https://docs.aws.amazon.com/batch/latest/userguide/job_queues.html).

On Kiln a compute environment's capacity is this host's (or, later, a cluster's), capped by
`maxvCpus` for MANAGED environments. Resources become VALID at once: there is nothing to provision.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from kiln import pagination
from kiln.arns import name_from_reference
from kiln.batch import fargate
from kiln.batch.names import check_resource_name
from kiln.batch.tags import check_tags
from kiln.context import Context
from kiln.engine import eks_pods
from kiln.errors import ConflictError, NotFoundError, ValidationError
from kiln.store.records import ComputeEnvironment, JobQueue
from kiln.store.resources import NamedStore

CE_HEALTHY = "ComputeEnvironment Healthy"
QUEUE_HEALTHY = "JobQueue Healthy"
MAX_CES_PER_QUEUE = 3
MAX_DESCRIBE = 100
MAX_STATE_TIME_LIMIT_SECONDS = 86_400
EC2_CE_TYPES = frozenset({"EC2", "SPOT"})
# What AWS takes in instanceTypes: its own choices, a family (`c5`, `m6i`, `g4dn`, `u-6tb1`) or a
# size of one (`c5.large`, `p4d.24xlarge`, `mac2.metal`); a family name always holds a digit.
_INSTANCE_TYPE = re.compile(r"optimal|default_x86_64|default_arm64|[a-z][a-z0-9-]*[0-9][a-z0-9-]*(\.[a-z0-9-]+)?")


EKS = "EKS"  # the orchestration type of a compute environment with eksConfiguration, and its queues' type
EKS_QUEUE_TYPE = EKS
ACCESS_ENTRY_STATES = ("ENABLED", "DISABLED", "INHERIT_FROM_CLUSTER")
_EKS_CLUSTER_ARN = re.compile(r"arn:aws[a-z-]*:eks:[a-z0-9-]+:\d{12}:cluster/[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def _family(ce_doc: dict[str, Any]) -> str:
    if ce_doc.get("containerOrchestrationType") == EKS:
        return EKS
    return fargate.FARGATE if fargate.is_fargate_ce(ce_doc) else fargate.EC2


def _check_compute_resources(ce_type: str, resources: dict[str, Any] | None) -> None:
    if ce_type == "UNMANAGED":
        if resources:
            raise ValidationError("computeResources can only be set for a MANAGED compute environment")
        return
    if not resources:
        raise ValidationError("A MANAGED compute environment needs computeResources (type and maxvCpus)")
    max_v, min_v = resources["maxvCpus"], resources.get("minvCpus", 0)
    desired = resources.get("desiredvCpus")
    if max_v < 0 or min_v < 0:
        raise ValidationError("computeResources vCPU counts cannot be negative")
    if min_v > max_v or (desired is not None and not min_v <= desired <= max_v):
        raise ValidationError("computeResources must satisfy minvCpus <= desiredvCpus <= maxvCpus")
    if resources["type"] in fargate.FARGATE_CE_TYPES:
        fargate.check_compute_resources(resources)
    for instance_type in resources.get("instanceTypes") or []:
        if not _INSTANCE_TYPE.fullmatch(instance_type):
            raise ValidationError(
                f"instanceTypes: {instance_type[:60]!r} is not an EC2 instance type; use optimal, default_x86_64, "
                "default_arm64, a family such as c5 or a size such as c5.large"
            )


def _check_instance_role(resources: dict[str, Any] | None) -> None:
    """AWS requires the ECS instance profile of a MANAGED EC2/SPOT environment; Kiln launches no
    instances, but an environment it accepts must be one AWS accepts too."""
    if resources and resources.get("type") in EC2_CE_TYPES and not resources.get("instanceRole"):
        raise ValidationError(
            f"computeResources.instanceRole is required for {resources['type']} compute resources: the ECS instance "
            "profile of the instances (e.g. ecsInstanceRole or arn:aws:iam::<account>:instance-profile/ecsInstanceRole)"
        )


def create_compute_environment(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name = params["computeEnvironmentName"]
    check_resource_name(name, "computeEnvironmentName")
    if ctx.repo.environments.get(name) is not None:
        raise ConflictError(f"Object already exists: compute environment {name}")
    _check_compute_resources(params["type"], params.get("computeResources"))
    _check_instance_role(params.get("computeResources"))
    if params["type"] == "MANAGED" and params.get("unmanagedvCpus") is not None:
        raise ValidationError("unmanagedvCpus can only be set for an UNMANAGED compute environment")
    eks = params.get("eksConfiguration")
    if eks is not None:
        _check_eks_configuration(eks, params.get("computeResources"))
    check_tags(params.get("tags"))
    arn = ctx.arns.compute_environment(name)
    state = params.get("state", "ENABLED")
    doc = {
        "computeEnvironmentName": name,
        "computeEnvironmentArn": arn,
        "tags": params.get("tags") or {},
        "type": params["type"],
        "state": state,
        "status": "VALID",
        "statusReason": CE_HEALTHY,
        "computeResources": params.get("computeResources"),
        "serviceRole": params.get("serviceRole"),
        "unmanagedvCpus": params.get("unmanagedvCpus"),
        "uuid": str(uuid.uuid4()),
        "containerOrchestrationType": "ECS" if eks is None else EKS,
    }
    if eks is None:  # an EKS environment has a cluster of its own, named in eksConfiguration
        doc["ecsClusterArn"] = f"arn:aws:ecs:{ctx.arns.region}:{ctx.arns.account_id}:cluster/kiln-{name}"
    else:
        doc["eksConfiguration"] = {key: value for key, value in eks.items() if value is not None}
    if params.get("context") is not None:
        doc["context"] = params["context"]
    ctx.repo.environments.insert(
        ComputeEnvironment(name=name, arn=arn, state=state, status="VALID", created_at=ctx.now, doc=doc)
    )
    return {"computeEnvironmentName": name, "computeEnvironmentArn": arn}


def _check_eks_configuration(eks: dict[str, Any], resources: dict[str, Any] | None) -> None:
    """AWS's rules for an EKS compute environment. The cluster is a label on Kiln: its executor runs
    the pods' containers (kiln/engine/eks_pods.py), but a definition that works here must work on AWS."""
    arn = str(eks.get("eksClusterArn") or "")
    if not _EKS_CLUSTER_ARN.fullmatch(arn):
        raise ValidationError(f"eksConfiguration.eksClusterArn {arn[:120]!r} is not an Amazon EKS cluster ARN, e.g. "
                              "arn:aws:eks:us-east-1:123456789012:cluster/ClusterForBatch")  # fmt: skip
    eks_pods.check_namespace(str(eks.get("kubernetesNamespace") or ""), "eksConfiguration.kubernetesNamespace")
    _check_access_entry(eks.get("accessEntry"))
    if resources and resources.get("type") in fargate.FARGATE_CE_TYPES:
        raise ValidationError(f"computeResources.type {resources['type']} is not supported with eksConfiguration: "
                              "AWS Batch runs Amazon EKS jobs on EC2 or SPOT compute resources")  # fmt: skip


def _check_access_entry(entry: dict[str, Any] | None) -> None:
    if entry is not None and entry.get("desiredState") not in ACCESS_ENTRY_STATES:
        raise ValidationError(f"eksConfiguration.accessEntry.desiredState must be one of "
                              f"{', '.join(ACCESS_ENTRY_STATES)} (got {entry.get('desiredState')})")  # fmt: skip


def _updated_eks(doc: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """UpdateComputeEnvironment's `eksConfiguration` (only its access entry can change), on an EKS
    compute environment only."""
    if doc.get("containerOrchestrationType") != EKS:
        raise ValidationError(f"eksConfiguration can only be updated on a compute environment whose "
                              f"containerOrchestrationType is EKS; {doc['computeEnvironmentName']} is ECS")  # fmt: skip
    eks = dict(doc.get("eksConfiguration") or {})
    if update.get("accessEntry") is not None:
        _check_access_entry(update["accessEntry"])
        eks["accessEntry"] = {"desiredState": update["accessEntry"]["desiredState"]}
    return eks


def get_compute_environment(ctx: Context, reference: str) -> dict[str, Any]:
    environment = ctx.repo.environments.get(name_from_reference(reference, "compute-environment"))
    if environment is None:
        raise NotFoundError(f"ComputeEnvironment {reference} not found.")
    return dict(environment.doc)


def _describe(
    store: NamedStore[ComputeEnvironment] | NamedStore[JobQueue],
    list_name: str,
    listed: list[str] | None,
    params: dict[str, Any],
    arn_kind: str,
) -> tuple[list[dict[str, Any]], str | None]:
    pagination.check_exclusive(listed, params.get("maxResults"), list_name)
    if listed is not None and len(listed) > MAX_DESCRIBE:
        raise ValidationError(f"At most {MAX_DESCRIBE} {list_name} can be described at once")
    names = None if not listed else [name_from_reference(ref, arn_kind) for ref in listed]
    limit = pagination.page_size(params.get("maxResults"), default=MAX_DESCRIBE, maximum=MAX_DESCRIBE)
    offset = pagination.offset_of(params.get("nextToken"))
    found = store.page(offset, limit + 1, names=names)
    token = pagination.encode_token(offset + limit) if len(found) > limit else None
    return [dict(resource.doc) for resource in found[:limit]], token


def describe_compute_environments(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    docs, token = _describe(
        ctx.repo.environments, "ComputeEnvironments", params.get("computeEnvironments"), params, "compute-environment"
    )
    return {"computeEnvironments": docs, "nextToken": token}


def update_compute_environment(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    doc = get_compute_environment(ctx, params["computeEnvironment"])
    if params.get("eksConfiguration") is not None:
        doc["eksConfiguration"] = _updated_eks(doc, params["eksConfiguration"])
    if params.get("unmanagedvCpus") is not None:
        if doc["type"] != "UNMANAGED":
            raise ValidationError("unmanagedvCpus can only be set for an UNMANAGED compute environment")
        doc["unmanagedvCpus"] = params["unmanagedvCpus"]
    if params.get("computeResources"):
        if doc["type"] != "MANAGED":
            raise ValidationError("computeResources can only be updated on a MANAGED compute environment")
        updated = {**(doc.get("computeResources") or {}), **params["computeResources"]}
        _check_compute_resources("MANAGED", updated)
        doc["computeResources"] = updated
    if params.get("updatePolicy"):  # kept and described; Kiln's updates take effect at once anyway
        doc["updatePolicy"] = {**(doc.get("updatePolicy") or {}), **params["updatePolicy"]}
    for key in ("state", "serviceRole", "context"):
        if params.get(key) is not None:
            doc[key] = params[key]
    ctx.repo.environments.update(doc["computeEnvironmentName"], {"state": doc["state"], "doc": doc})
    return {
        "computeEnvironmentName": doc["computeEnvironmentName"],
        "computeEnvironmentArn": doc["computeEnvironmentArn"],
    }


def _queues_using(ctx: Context, ce_arn: str) -> list[str]:
    return [
        queue.name
        for queue in ctx.repo.queues.all()
        if any(item["computeEnvironment"] == ce_arn for item in queue.doc.get("computeEnvironmentOrder") or [])
    ]


def delete_compute_environment(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    doc = get_compute_environment(ctx, params["computeEnvironment"])
    if doc["state"] != "DISABLED":
        raise ConflictError(f"Cannot delete compute environment {doc['computeEnvironmentName']}: disable it first")
    users = _queues_using(ctx, doc["computeEnvironmentArn"])
    if users:
        raise ConflictError(
            f"Cannot delete compute environment {doc['computeEnvironmentName']}: "
            f"it is still attached to job queue(s) {', '.join(users)}"
        )
    ctx.repo.environments.delete(doc["computeEnvironmentName"])
    return {}


SERVICE_QUEUE_TYPE = "SAGEMAKER_TRAINING"


def _resolve_order(ctx: Context, order: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The order with ARNs, sorted, and the queue type its compute environments give it."""
    if not 1 <= len(order) <= MAX_CES_PER_QUEUE:
        raise ValidationError(f"computeEnvironmentOrder must list 1 to {MAX_CES_PER_QUEUE} compute environments")
    if len({item["order"] for item in order}) != len(order):
        raise ValidationError("computeEnvironmentOrder entries must have distinct order values")
    resolved, families = [], set()
    for item in order:
        ce = get_compute_environment(ctx, item["computeEnvironment"])
        if ce["status"] != "VALID":
            raise ValidationError(f"Compute environment {ce['computeEnvironmentName']} is not VALID")
        families.add(_family(ce))
        resolved.append({"order": item["order"], "computeEnvironment": ce["computeEnvironmentArn"]})
    if EKS in families and len(families) > 1:
        raise ValidationError("A job queue cannot mix Amazon EKS and Amazon ECS compute environments: all of its "
                              "compute environments must have eksConfiguration, or none")  # fmt: skip
    if len(families) > 1:
        raise ValidationError("A job queue cannot mix EC2/SPOT and FARGATE/FARGATE_SPOT compute environments")
    queue_type = {fargate.FARGATE: fargate.FARGATE_QUEUE_TYPE, EKS: EKS_QUEUE_TYPE}.get(
        families.pop(), fargate.EC2_QUEUE_TYPE
    )
    return sorted(resolved, key=lambda item: item["order"]), queue_type


def _check_not_a_service_queue(params: dict[str, Any]) -> None:
    """SageMaker training queues take service environments, which Kiln does not run: say so
    rather than complain about their missing compute environments."""
    if params.get("jobQueueType") == SERVICE_QUEUE_TYPE or params.get("serviceEnvironmentOrder"):
        raise ValidationError(
            f"jobQueueType {SERVICE_QUEUE_TYPE} and serviceEnvironmentOrder (SageMaker training jobs through "
            "service environments) are not implemented by Kiln; create a queue on compute environments instead"
        )


def _queue_type(requested: str | None, derived: str) -> str:
    """AWS sets ECS or ECS_FARGATE from the compute environments; a contradicting request is refused."""
    if requested is not None and requested != derived:
        raise ValidationError(
            f"jobQueueType {requested} does not match the job queue's compute environments ({derived})"
        )
    return requested or derived


def _check_time_limit_actions(ctx: Context, actions: list[dict[str, Any]] | None) -> None:
    """AWS's rules; the 600 s floor is `min_state_time_limit_seconds` (lowered only for tests)."""
    floor = ctx.settings.min_state_time_limit_seconds
    for action in actions or []:
        if action["state"] != "RUNNABLE":
            raise ValidationError("jobStateTimeLimitActions.state must be RUNNABLE")
        if not floor <= action["maxTimeSeconds"] <= MAX_STATE_TIME_LIMIT_SECONDS:
            raise ValidationError(
                f"jobStateTimeLimitActions.maxTimeSeconds must be between {floor} and {MAX_STATE_TIME_LIMIT_SECONDS} "
                f"(got {action['maxTimeSeconds']})"
            )
        if not action["reason"].strip():
            raise ValidationError("jobStateTimeLimitActions.reason must not be empty")


def _policy_arn(ctx: Context, reference: str) -> str:
    """The ARN of an existing scheduling policy (a queue with one is a fair-share queue)."""
    if not reference:
        raise ValidationError("schedulingPolicyArn must name a scheduling policy")
    policy = ctx.repo.policies.get(name_from_reference(reference, "scheduling-policy"))
    if policy is None:
        raise NotFoundError(f"SchedulingPolicy {reference} not found.")
    return policy.arn


def _swapped_policy(ctx: Context, queue: dict[str, Any], reference: str) -> str:
    """AWS: a fair-share queue's policy can be replaced but not removed, and a FIFO queue can
    never gain one."""
    if not queue.get("schedulingPolicyArn"):
        raise ValidationError(
            f"JobQueue {queue['jobQueueName']} is a FIFO queue (created without schedulingPolicyArn); "
            "a scheduling policy cannot be added to it later"
        )
    if not reference:
        raise ValidationError(
            f"The scheduling policy of JobQueue {queue['jobQueueName']} can be replaced but not removed"
        )
    return _policy_arn(ctx, reference)


def _check_priority(priority: int) -> None:
    if not 0 <= priority <= 1000:
        raise ValidationError(f"priority must be between 0 and 1000 (got {priority})")


def create_job_queue(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name = params["jobQueueName"]
    check_resource_name(name, "jobQueueName")
    if ctx.repo.queues.get(name) is not None:
        raise ConflictError(f"Object already exists: job queue {name}")
    policy_arn = _policy_arn(ctx, params["schedulingPolicyArn"]) if "schedulingPolicyArn" in params else None
    _check_priority(params["priority"])
    _check_not_a_service_queue(params)
    order, derived_type = _resolve_order(ctx, params.get("computeEnvironmentOrder") or [])
    queue_type = _queue_type(params.get("jobQueueType"), derived_type)
    _check_time_limit_actions(ctx, params.get("jobStateTimeLimitActions"))
    check_tags(params.get("tags"))
    arn = ctx.arns.job_queue(name)
    state = params.get("state", "ENABLED")
    doc = {
        "jobQueueName": name,
        "jobQueueArn": arn,
        "state": state,
        "status": "VALID",
        "statusReason": QUEUE_HEALTHY,
        "priority": params["priority"],
        "computeEnvironmentOrder": order,
        "tags": params.get("tags") or {},
        "jobStateTimeLimitActions": params.get("jobStateTimeLimitActions") or [],
        "jobQueueType": queue_type,
    }
    if policy_arn is not None:
        doc["schedulingPolicyArn"] = policy_arn
    ctx.repo.queues.insert(JobQueue(name=name, arn=arn, state=state, status="VALID", priority=params["priority"],
                                    created_at=ctx.now, doc=doc))  # fmt: skip
    return {"jobQueueName": name, "jobQueueArn": arn}


def get_job_queue(ctx: Context, reference: str) -> dict[str, Any]:
    queue = ctx.repo.queues.get(name_from_reference(reference, "job-queue"))
    if queue is None:
        raise NotFoundError(f"JobQueue {reference} not found.")
    return dict(queue.doc)


def describe_job_queues(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    docs, token = _describe(ctx.repo.queues, "JobQueues", params.get("jobQueues"), params, "job-queue")
    return {"jobQueues": docs, "nextToken": token}


def update_job_queue(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    doc = get_job_queue(ctx, params["jobQueue"])
    _check_not_a_service_queue(params)
    if "schedulingPolicyArn" in params:
        doc["schedulingPolicyArn"] = _swapped_policy(ctx, doc, params["schedulingPolicyArn"])
    if params.get("priority") is not None:
        _check_priority(params["priority"])
        doc["priority"] = params["priority"]
    if params.get("computeEnvironmentOrder") is not None:
        doc["computeEnvironmentOrder"], derived_type = _resolve_order(ctx, params["computeEnvironmentOrder"])
        doc["jobQueueType"] = _queue_type(None, derived_type)
    if params.get("jobStateTimeLimitActions") is not None:
        _check_time_limit_actions(ctx, params["jobStateTimeLimitActions"])
        doc["jobStateTimeLimitActions"] = params["jobStateTimeLimitActions"]
    if params.get("state") is not None:
        doc["state"] = params["state"]
    ctx.repo.queues.update(doc["jobQueueName"], {"state": doc["state"], "priority": doc["priority"], "doc": doc})
    return {"jobQueueName": doc["jobQueueName"], "jobQueueArn": doc["jobQueueArn"]}


def check_queue_deletable(ctx: Context, reference: str) -> dict[str, Any]:
    doc = get_job_queue(ctx, reference)
    if doc["state"] != "DISABLED":
        raise ConflictError(f"Cannot delete job queue {doc['jobQueueName']}: disable it first")
    return doc
