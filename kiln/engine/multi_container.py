"""A job that runs several containers: an `ecsProperties` task or an `eksProperties` pod, seen in
the one task shape the attempts, the logs and DescribeJobs share (a pod is translated by
kiln/engine/eks_pods.py). Each container logs to `<definition>/<container name>/<task id>`."""

from __future__ import annotations

from kiln.engine import ecs_tasks, eks_pods
from kiln.store.records import Document

stream_name = ecs_tasks.stream_name


def is_pod(spec: Document) -> bool:
    return "eksProperties" in spec


def task_of(spec: Document) -> Document | None:
    """The job's containers as a task (None: the job runs one container)."""
    if "ecsProperties" in spec:
        return ecs_tasks.task_of(spec["ecsProperties"])
    if "eksProperties" in spec:
        return eks_pods.task_of(spec["eksProperties"])
    return None


def container_names(spec: Document) -> list[str] | None:
    """The names of the job's containers (a pod's init containers first); None for a job of one."""
    if "ecsProperties" in spec:
        return ecs_tasks.container_names(ecs_tasks.task_of(spec["ecsProperties"]))
    if "eksProperties" in spec:
        return eks_pods.container_names(eks_pods.pod_of(spec["eksProperties"]))
    return None


def container_streams(spec: Document, task_id: str) -> list[str]:
    """The log streams of the containers of the job's attempt `task_id` (none for a job of one)."""
    names = container_names(spec) or []
    return [stream_name(spec["jobDefinitionName"], name, task_id) for name in names]
