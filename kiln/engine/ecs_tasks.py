"""`ecsProperties` jobs: AWS's multi-container job shape, as pure rules. No I/O.

A definition's `ecsProperties.taskProperties[0].containers[]` lists up to ten containers, each with
a `name`, an `image` and its own command, environment and resources; `essential` ones (the default)
decide the job's result, and `dependsOn` orders their starts. RegisterJobDefinition checks what AWS
checks and refuses what Kiln cannot honour (say, Secrets Manager secrets, FireLens, ECS Exec);
SubmitJob's `ecsPropertiesOverride` overrides containers by name. The job holds the sum of its
containers' resources, and each container logs to a stream of its own,
`<definition>/<container name>/<task id>`, next to the attempt's `<definition>/default/<task id>`.
How the containers run is the executors' business (kiln/executors/task_runner.py).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from kiln.engine import containers
from kiln.engine.containers import Resources
from kiln.errors import ValidationError
from kiln.store.records import Document

MAX_CONTAINERS = 10
CONDITIONS = ("START", "COMPLETE", "SUCCESS")
EXIT_CONDITIONS = ("COMPLETE", "SUCCESS")  # wait for the other container to exit
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
SINGLE_CONTAINER_NAME = "default"  # an unnamed lone container: its stream is the attempt's own
PID_MODES = ("host", "task")
IPC_MODES = ("host", "task", "none")
# Task fields that only apply on Fargate (or Managed Instances) on AWS: an EC2 definition must omit them.
FARGATE_ONLY_TASK = ("networkConfiguration", "platformVersion", "ephemeralStorage", "runtimePlatform")
# Container fields Kiln cannot honour: refused, so that nothing is silently dropped.
UNSUPPORTED_CONTAINER = {
    "secrets": "Kiln reads no Secrets Manager or SSM parameters; pass the values in environment",
    "firelensConfiguration": "Kiln has no FireLens log router; each container logs to its own stream",
}


def _error(detail: str) -> ValidationError:
    return ValidationError(f"Error executing request, Exception : {detail}")


def _given(value: Any) -> bool:
    return value is not None and value != [] and value != {}


def task_of(ecs_properties: Document) -> Document:
    """The one task of an `ecsProperties` (already checked)."""
    return dict(ecs_properties["taskProperties"][0])


def check_ecs_properties(ecs_properties: Document, platform: str) -> None:
    """RegisterJobDefinition's rules for `ecsProperties` on a `container` definition."""
    if platform != "EC2":
        raise _error(f"Kiln runs ecsProperties job definitions on EC2 only (platformCapabilities {platform}); "
                     "use containerProperties for Fargate")  # fmt: skip
    tasks = ecs_properties.get("taskProperties") or []
    if len(tasks) != 1:
        raise _error(f"ecsProperties.taskProperties must have exactly one element (got {len(tasks)}).")
    task = tasks[0]
    _check_task(task)
    listed = task.get("containers") or []
    if not listed:
        raise _error("ecsProperties.taskProperties[0].containers must have at least one container.")
    if len(listed) > MAX_CONTAINERS:
        raise _error(f"A task can have at most {MAX_CONTAINERS} containers (got {len(listed)}).")
    names = _check_names(listed)
    for index, container in enumerate(listed):
        _check_container(container, f"containers[{index}]")
    if not any(container.get("essential", True) for container in listed):
        raise _error("At least one container of the task must be essential.")
    _check_dependencies(listed, names)
    users = {container.get("user") or None for container in listed}
    if len(users) > 1:
        raise _error("Kiln runs every container of a task as one user: the containers' user values must be the "
                     f"same (got {', '.join(sorted(str(user) for user in users))}).")  # fmt: skip
    task_resources(listed)


def _check_task(task: Document) -> None:
    for key in FARGATE_ONLY_TASK:
        if _given(task.get(key)):
            raise _error(f"{key} is not applicable for EC2; it is only valid with platformCapabilities FARGATE.")
    if task.get("networkMode") is not None:
        raise _error("networkMode is only valid for jobs on Amazon ECS Managed Instances, which Kiln does not run; "
                     "an EC2 task uses the host's network (every container shares it).")  # fmt: skip
    if task.get("pidMode") is not None and task["pidMode"] not in PID_MODES:
        raise _error(f"pidMode must be one of {', '.join(PID_MODES)} (got {task['pidMode']}).")
    if task.get("ipcMode") is not None and task["ipcMode"] not in IPC_MODES:
        raise _error(f"ipcMode must be one of {', '.join(IPC_MODES)} (got {task['ipcMode']}).")
    if task.get("enableExecuteCommand"):
        raise _error("enableExecuteCommand is not supported: Kiln has no ECS Exec.")


def _check_names(listed: list[Document]) -> list[str]:
    """Names are unique; every container is named when there are several (dependsOn and overrides
    name them, and each names its log stream)."""
    names: list[str] = []
    for index, container in enumerate(listed):
        name = container.get("name")
        if name is None:
            if len(listed) > 1:
                raise _error(f"containers[{index}].name is required when a task has more than one container.")
            name = SINGLE_CONTAINER_NAME
        elif not _NAME.match(name):
            raise _error(f"containers[{index}].name {name!r} is not valid: up to 255 letters, numbers, hyphens "
                         "and underscores.")  # fmt: skip
        if name in names:
            raise _error(f"Container names must be unique within a task: {name} is used twice.")
        names.append(name)
    return names


def _check_container(container: Document, where: str) -> None:
    if not container.get("image"):
        raise _error(f"{where}.image is required.")
    for key, why in UNSUPPORTED_CONTAINER.items():
        if _given(container.get(key)):
            raise _error(f"{where}.{key} is not supported: {why}.")
    containers.check_command(container.get("command"))
    containers.check_environment(container.get("environment"))
    stop_timeout = container.get("stopTimeout")
    if stop_timeout is not None and not 0 <= stop_timeout <= 120:
        raise _error(f"{where}.stopTimeout must be between 0 and 120 seconds (got {stop_timeout}).")


def _check_dependencies(listed: list[Document], names: list[str]) -> None:
    """dependsOn names another container of the task, with a known condition; COMPLETE and SUCCESS
    only on a non-essential one (an essential one's exit ends the task); no cycles."""
    essential = {name: container.get("essential", True) for name, container in zip(names, listed, strict=True)}
    edges: dict[str, list[str]] = {}
    for name, container in zip(names, listed, strict=True):
        for dependency in container.get("dependsOn") or []:
            target, condition = dependency.get("containerName"), dependency.get("condition")
            if target not in essential:
                raise _error(f"Container {name} depends on container {target}, which is not in the task.")
            if target == name:
                raise _error(f"Container {name} cannot depend on itself.")
            if condition not in CONDITIONS:
                raise _error(f"Container {name}: dependsOn condition must be one of {', '.join(CONDITIONS)} "
                             f"(got {condition}).")  # fmt: skip
            if condition in EXIT_CONDITIONS and essential[target]:
                raise _error(f"Container {name}: the {condition} condition cannot be set on an essential container "
                             f"({target}).")  # fmt: skip
            edges.setdefault(name, []).append(target)
    _check_acyclic(edges)


def _check_acyclic(edges: dict[str, list[str]]) -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name) :], name]
            raise _error(f"dependsOn forms a cycle: {' -> '.join(cycle)}.")
        state[name] = 1
        for target in edges.get(name, []):
            visit(target, [*path, name])
        state[name] = 2

    for name in list(edges):
        visit(name, [])


def _requirement_total(listed: list[Document], kind: str) -> float | None:
    """The sum of the containers' `kind` requirements; None when none gives one."""
    values = [containers.requirement(container, kind) for container in listed]
    given = [value for value in values if value is not None]
    return sum(given) if given else None


def task_resources(listed: list[Document]) -> Resources:
    """What the job holds: the sum of its containers' VCPU, MEMORY and GPU requirements (each may
    give its share; the task must have some vCPU and memory in all)."""
    requirements = []
    for kind in ("VCPU", "MEMORY", "GPU"):
        total = _requirement_total(listed, kind)
        if total is not None:
            requirements.append({"type": kind, "value": f"{total:g}" if kind == "VCPU" else str(int(total))})
    return containers.resources_of({"resourceRequirements": requirements})


def container_names(task: Document) -> list[str]:
    listed = task.get("containers") or []
    return [container.get("name") or SINGLE_CONTAINER_NAME for container in listed]


def resolve(ecs_properties: Document, override: Document | None, parameters: dict[str, str]) -> Document:
    """The job's `ecsProperties`: the definition's, with SubmitJob's `ecsPropertiesOverride` applied
    container by container (command replaced, environment merged, resource requirements replaced
    by type), names filled in and `Ref::` parameters substituted in the commands."""
    task = copy.deepcopy(task_of(ecs_properties))
    listed = task.get("containers") or []
    names = container_names(task)
    by_name = dict(zip(names, listed, strict=True))
    for name, container in by_name.items():
        container["name"] = name
    for name, overrides in _overrides_by_name(override, names).items():
        applied = containers.apply_overrides(by_name[name], overrides)
        by_name[name].clear()
        by_name[name].update(applied)
    for index, container in enumerate(listed):
        containers.check_command(container.get("command"))
        containers.check_environment(container.get("environment"))
        container["command"] = containers.substitute(container.get("command") or [], parameters)
        container.setdefault("essential", True)
        _check_container(container, f"containers[{index}]")
    task_resources(listed)
    return {"taskProperties": [task]}


def _overrides_by_name(override: Document | None, names: list[str]) -> dict[str, Document]:
    """`ecsPropertiesOverride.taskProperties[0].containers`, keyed by the container each names."""
    tasks = (override or {}).get("taskProperties") or []
    if len(tasks) > 1:
        raise _error(f"ecsPropertiesOverride.taskProperties can have at most one element (got {len(tasks)}).")
    found: dict[str, Document] = {}
    for index, entry in enumerate((tasks[0] if tasks else {}).get("containers") or []):
        name = entry.get("name")
        if name is None and len(names) == 1:
            name = names[0]
        if name is None:
            raise _error(f"ecsPropertiesOverride containers[{index}].name is required: the task has several "
                         f"containers ({', '.join(names)}).")  # fmt: skip
        if name not in names:
            raise _error(f"ecsPropertiesOverride names container {name}, which is not in the job definition "
                         f"(containers: {', '.join(names)}).")  # fmt: skip
        if name in found:
            raise _error(f"ecsPropertiesOverride overrides container {name} twice.")
        found[name] = {key: value for key, value in entry.items() if key != "name"}
    return found


def stream_name(definition_name: str, container_name: str, task_id: str) -> str:
    """A container's log stream: `<definition>/<container name>/<task id>` (the attempt's own is
    `<definition>/default/<task id>`, which a lone unnamed container shares)."""
    return f"{definition_name[:200]}/{container_name}/{task_id}"
