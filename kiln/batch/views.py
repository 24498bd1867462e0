"""Turning stored jobs into the JobDetail and JobSummary shapes clients read back."""

from __future__ import annotations

from typing import Any

from kiln.context import Context
from kiln.engine import ecs_tasks, eks_pods, multi_container
from kiln.engine.lifecycle import Status
from kiln.store.records import ArraySummary, Attempt, Document, Job
from kiln.task_results import read_results


def _task_arn(ctx: Context, task_id: str) -> str:
    return f"arn:aws:ecs:{ctx.arns.region}:{ctx.arns.account_id}:task/kiln/{task_id}"


def _container_results(ctx: Context, spec: Document, attempt: Attempt) -> list[dict[str, Any]]:
    """An `ecsProperties` attempt's containers: name, log stream (once started), and the exit code
    and reason the runner reported (kiln/task_results.py). Without its report (the attempt never
    started, or the runner was killed, e.g. for memory), the essential containers show the attempt's
    exit code and reason; with it, the attempt's reason where the runner gave none (an OOM kill)."""
    task = ecs_tasks.task_of(spec["ecsProperties"])
    definition = spec["jobDefinitionName"]
    reported = None
    if attempt.stopped_at is not None and attempt.started_at is not None:
        reported = read_results(ctx.settings.log_file(attempt.log_stream))
    found = []
    for container in task["containers"]:
        name = container["name"]
        result: dict[str, Any] = {"exitCode": None, "reason": None}
        essential = container.get("essential", True)
        if reported is not None and isinstance(reported.get(name), dict):
            result = {"exitCode": reported[name].get("exitCode"), "reason": reported[name].get("reason")}
            if result["reason"] is None and essential:  # what the executor saw applies to them (e.g. OOM)
                result["reason"] = attempt.reason
        elif attempt.stopped_at is not None and essential:
            result = {"exitCode": attempt.exit_code, "reason": attempt.reason}
        stream = ecs_tasks.stream_name(definition, name, attempt.task_id) if attempt.started_at else None
        found.append({"name": name, **result, "logStreamName": stream})
    return found


def _task_detail(ctx: Context, spec: Document, attempt: Attempt | None) -> dict[str, Any]:
    """`ecsProperties` as DescribeJobs shows it: the task with each container's state."""
    task = ecs_tasks.task_of(spec["ecsProperties"])
    results = {} if attempt is None else {item["name"]: item for item in _container_results(ctx, spec, attempt)}
    listed = []
    for container in task["containers"]:
        shown = dict(container)
        state = results.get(container["name"])
        if state is not None:
            shown.update(exitCode=state["exitCode"], reason=state["reason"], logStreamName=state["logStreamName"])
        listed.append(shown)
    task["containers"] = listed
    if attempt is not None:
        task.update(taskArn=_task_arn(ctx, attempt.task_id), containerInstanceArn=_instance_arn(ctx, attempt))
    return {"taskProperties": [task]}


def _instance_arn(ctx: Context, attempt: Attempt) -> str:
    return f"arn:aws:ecs:{ctx.arns.region}:{ctx.arns.account_id}:container-instance/kiln/{attempt.compute_environment}"


def _pod_results(ctx: Context, spec: Document, attempt: Attempt) -> dict[str, dict[str, Any]]:
    """An `eksProperties` attempt's containers (init containers included), by name: the exit code
    and reason the runner reported. Without its report (the attempt never started, or the runner
    was killed), every container shows the attempt's exit code and reason; with it, a failed
    container shows the attempt's reason where the runner gave none (an OOM kill)."""
    reported = None
    if attempt.stopped_at is not None and attempt.started_at is not None:
        reported = read_results(ctx.settings.log_file(attempt.log_stream))
    found = {}
    for name in multi_container.container_names(spec) or []:
        result: dict[str, Any] = {"exitCode": None, "reason": None}
        if reported is not None and isinstance(reported.get(name), dict):
            result = {"exitCode": reported[name].get("exitCode"), "reason": reported[name].get("reason")}
            if result["reason"] is None and result["exitCode"] not in (None, 0):
                result["reason"] = attempt.reason
        elif attempt.stopped_at is not None:
            result = {"exitCode": attempt.exit_code, "reason": attempt.reason}
        found[name] = result
    return found


def _pod_place(ctx: Context, spec: Document, attempt: Attempt) -> dict[str, Any]:
    """Where a pod ran, as AWS names it: the pod (`aws-batch.<task id>`), the node (the host of the
    server that placed it), the cluster and namespace of its compute environment (the pod's own
    namespace first)."""
    environment = ctx.repo.environments.get(attempt.compute_environment)
    eks = (environment.doc if environment is not None else {}).get("eksConfiguration") or {}
    metadata = eks_pods.pod_of(spec["eksProperties"]).get("metadata") or {}
    return {
        "eksClusterArn": eks.get("eksClusterArn"),
        "podName": eks_pods.pod_name(attempt.task_id),
        "podNamespace": metadata.get("namespace") or eks.get("kubernetesNamespace"),
        "nodeName": (attempt.placed_by or "").split(":", 1)[0] or None,
    }


def _eks_attempt(ctx: Context, spec: Document, attempt: Attempt) -> dict[str, Any]:
    """One `eksAttempts` entry (EksAttemptDetail)."""
    results = _pod_results(ctx, spec, attempt)
    pod = eks_pods.pod_of(spec["eksProperties"])

    def listed(key: str) -> list[dict[str, Any]]:
        return [{"name": c["name"], **results.get(c["name"], {})} for c in pod.get(key) or []]

    return {"containers": listed("containers"), "initContainers": listed("initContainers"),
            **_pod_place(ctx, spec, attempt), "startedAt": attempt.started_at, "stoppedAt": attempt.stopped_at,
            "statusReason": attempt.status_reason}  # fmt: skip


def _pod_detail(ctx: Context, spec: Document, attempt: Attempt | None) -> dict[str, Any]:
    """`eksProperties` as DescribeJobs shows it: the pod with each container's exit code and reason
    (once its attempt ended), and the current attempt's pod and node names once it started."""
    pod = eks_pods.pod_of(spec["eksProperties"])
    results = {} if attempt is None else _pod_results(ctx, spec, attempt)
    for key in ("initContainers", "containers"):
        if pod.get(key):
            pod[key] = [{**container, **results.get(container["name"], {})} for container in pod[key]]
    if attempt is not None and attempt.started_at is not None:
        place = _pod_place(ctx, spec, attempt)
        pod.update(podName=place["podName"], nodeName=place["nodeName"])
    return {"podProperties": pod}


def attempt_detail(ctx: Context, attempt: Attempt, spec: Document | None = None) -> dict[str, Any]:
    if spec is not None and "ecsProperties" in spec:
        task = {
            "taskArn": _task_arn(ctx, attempt.task_id),
            "containerInstanceArn": _instance_arn(ctx, attempt),
            "containers": _container_results(ctx, spec, attempt),
        }
        return {"taskProperties": [task], "startedAt": attempt.started_at, "stoppedAt": attempt.stopped_at,
                "statusReason": attempt.status_reason}  # fmt: skip
    container = {
        "exitCode": attempt.exit_code,
        "reason": attempt.reason,
        "logStreamName": attempt.log_stream,
        "taskArn": _task_arn(ctx, attempt.task_id),
        "containerInstanceArn": _instance_arn(ctx, attempt),
    }
    return {
        "container": container,
        "startedAt": attempt.started_at,
        "stoppedAt": attempt.stopped_at,
        "statusReason": attempt.status_reason,
    }


def job_detail(
    ctx: Context,
    job: Job,
    spec: Document,
    attempts: list[Attempt],
    summary: ArraySummary | None,
) -> dict[str, Any]:
    """`spec` is the job's resolved specification (an array child's is its parent's; an MNP node's
    its job's with the node's own container); an MNP job's `attempts` are its main node's; an array
    parent's `summary` counts its children by status and says when one last changed."""
    container = dict(spec.get("container") or {})
    current = attempts[-1] if attempts else None
    if current is not None and job.num_nodes is None:
        container.update(
            exitCode=current.exit_code,
            reason=current.reason,
            logStreamName=current.log_stream if current.started_at else None,
            taskArn=_task_arn(ctx, current.task_id),
        )
    detail: dict[str, Any] = {
        "jobArn": ctx.arns.job(job.id),
        "jobName": job.name,
        "jobId": job.id,
        "jobQueue": job.queue_arn,
        "status": job.status,
        "statusReason": job.status_reason,
        "createdAt": job.created_at,
        "startedAt": job.started_at,
        "stoppedAt": job.stopped_at,
        "attempts": [attempt_detail(ctx, a, spec) for a in attempts if a.stopped_at is not None],
        "dependsOn": spec.get("dependsOn") if job.parent_id is None else [],
        "jobDefinition": job.definition_arn,
        "parameters": spec.get("parameters") or {},
        "container": container,
        "retryStrategy": spec.get("retryStrategy"),
        "timeout": spec.get("timeout"),
        "tags": spec.get("tags") or {},
        "propagateTags": spec.get("propagateTags"),
        "platformCapabilities": spec.get("platformCapabilities"),
        "schedulingPriority": spec.get("schedulingPriority"),
        "shareIdentifier": spec.get("shareIdentifier"),
        "consumableResourceProperties": spec.get("consumableResourceProperties"),
        "isCancelled": bool(job.is_cancelled),
        "isTerminated": bool(job.is_terminated),
    }
    if job.array_size is not None:
        counts = summary.counts if summary is not None else {}
        detail["arrayProperties"] = {
            "size": job.array_size,
            # Every status, zeros included, so clients can index any key.
            "statusSummary": {status.value: counts.get(status.value, 0) for status in Status},
            # When a child's status last changed; before any child exists, when the parent was submitted.
            "statusSummaryLastUpdatedAt": (summary and summary.changed_at) or job.created_at,
        }
    elif job.array_index is not None:
        detail["arrayProperties"] = {"index": job.array_index}
    if "ecsProperties" in spec:  # AWS describes the task and its containers instead of one container
        detail["ecsProperties"] = _task_detail(ctx, spec, current)
        del detail["container"]
    elif "eksProperties" in spec:  # ...and a pod's, with its attempts in eksAttempts
        detail["eksProperties"] = _pod_detail(ctx, spec, current)
        detail["eksAttempts"] = [_eks_attempt(ctx, spec, a) for a in attempts if a.stopped_at is not None]
        detail["attempts"] = []
        del detail["container"]
    if job.num_nodes is not None:  # an MNP job: its nodes are described as `<jobId>#<i>`
        detail["nodeProperties"] = spec["nodeProperties"]
        del detail["container"]
    elif job.node_index is not None:
        main = spec["nodeProperties"]["mainNode"]
        detail["nodeDetails"] = {"nodeIndex": job.node_index, "isMainNode": job.node_index == main}
    return detail


def job_summary(ctx: Context, job: Job, last_attempt: Attempt | None, spec: Document) -> dict[str, Any]:
    """`spec` as for `job_detail`; `last_attempt` is an MNP job's main node's."""
    summary: dict[str, Any] = {
        "jobArn": ctx.arns.job(job.id),
        "jobId": job.id,
        "jobName": job.name,
        "createdAt": job.created_at,
        "startedAt": job.started_at,
        "stoppedAt": job.stopped_at,
        "status": job.status,
        "statusReason": job.status_reason,
        "jobDefinition": job.definition_arn,
        "shareIdentifier": spec.get("shareIdentifier"),
    }
    if last_attempt is not None and last_attempt.stopped_at is not None:
        summary["container"] = {"exitCode": last_attempt.exit_code, "reason": last_attempt.reason}
    if job.array_size is not None:
        summary["arrayProperties"] = {"size": job.array_size}
    elif job.array_index is not None:
        summary["arrayProperties"] = {"index": job.array_index}
    if job.num_nodes is not None:
        summary["nodeProperties"] = {"numNodes": job.num_nodes}
    elif job.node_index is not None:
        nodes = spec["nodeProperties"]
        summary["nodeProperties"] = {"nodeIndex": job.node_index, "isMainNode": job.node_index == nodes["mainNode"],
                                     "numNodes": nodes["numNodes"]}  # fmt: skip
    if job.is_cancelled:
        summary["isCancelled"] = True
    if job.is_terminated:
        summary["isTerminated"] = True
    return summary
