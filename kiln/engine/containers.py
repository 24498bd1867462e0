"""Resolving what a job runs: definition + submit overrides -> one container description.

Pure functions: no I/O, so the rules (override precedence, deprecated keys, Ref:: substitution,
resource limits) are tested directly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from kiln.errors import ValidationError
from kiln.executors.base import VolumeMount

MIN_MEMORY_MIB = 4
MAX_RESOURCE_VALUE = 2**31 - 1  # the model's `vcpus`/`memory` are 32-bit integers; the strings get the same cap
RESERVED_ENV_PREFIX = "AWS_BATCH"
DEPRECATED_KEY_CONFLICT = (
    "This value was submitted in a deprecated key and may conflict with the value provided "
    "by the job definition's resource requirements."
)
REF_PREFIX = "Ref::"


def _error(detail: str) -> ValidationError:
    return ValidationError(f"Error executing request, Exception : {detail}")


@dataclass(frozen=True)
class Resources:
    vcpus: float
    memory_mib: int
    gpus: int


def _requirement(container: dict[str, Any], kind: str) -> str | None:
    for item in container.get("resourceRequirements") or []:
        if item.get("type") == kind:
            return str(item.get("value"))
    return None


def _number(value: str, kind: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):  # also "nan" and "inf", which float() accepts
        raise _error(f"resourceRequirements {kind} value {value!r} is not a number")
    if abs(number) > MAX_RESOURCE_VALUE:
        raise _error(f"resourceRequirements {kind} value {value!r} is out of range (at most {MAX_RESOURCE_VALUE}).")
    return number


def requirement(container: dict[str, Any], kind: str) -> float | None:
    """The container's `kind` (VCPU, MEMORY, GPU) resource requirement as a number, if given."""
    text = _requirement(container, kind)
    return None if text is None else _number(text, kind)


def resources_of(container: dict[str, Any]) -> Resources:
    """vCPU, memory (MiB) and GPU count, from resourceRequirements or the deprecated keys."""
    vcpu_text = _requirement(container, "VCPU")
    memory_text = _requirement(container, "MEMORY")
    gpu_text = _requirement(container, "GPU")
    vcpus = _number(vcpu_text, "VCPU") if vcpu_text is not None else container.get("vcpus")
    memory = _number(memory_text, "MEMORY") if memory_text is not None else container.get("memory")
    if vcpus is None:
        raise _error("vCPU is not provided.")
    if memory is None:
        raise _error("Memory is not provided.")
    if vcpus <= 0:
        raise _error(f"vCPU must be greater than 0 (got {vcpus:g}).")
    if memory < MIN_MEMORY_MIB:
        raise _error(f"Memory must be at least {MIN_MEMORY_MIB} MiB (got {memory:g}).")
    gpus = _number(gpu_text, "GPU") if gpu_text is not None else 0
    if gpus < 0 or gpus != int(gpus):
        raise _error(f"resourceRequirements GPU must be a whole number of GPUs, 0 or more (got {gpu_text}).")
    return Resources(vcpus=float(vcpus), memory_mib=int(memory), gpus=int(gpus))


def check_container(container: dict[str, Any], *, where: str = "containerProperties") -> None:
    """Rules every container description must satisfy, at register and at submit."""
    if not container.get("image"):
        raise _error(f"{where}.image is required.")
    for kind in ("VCPU", "MEMORY"):
        key = "vcpus" if kind == "VCPU" else "memory"
        if container.get(key) is not None and _requirement(container, kind) is not None:
            raise _error(f"{where}: {key} and resourceRequirements {kind} cannot both be set.")
    check_command(container.get("command"))
    check_environment(container.get("environment"))
    resources_of(container)


def check_command(command: list[str] | None) -> None:
    if command is not None and any(part == "" for part in command):
        raise _error("Command field cannot have empty strings")


def check_environment(environment: list[dict[str, str]] | None) -> None:
    for item in environment or []:
        name = item.get("name") or ""
        if not name:
            raise _error("Environment variable names cannot be empty")
        if name.startswith(RESERVED_ENV_PREFIX):
            raise _error(f"Environment variable {name}: names starting with {RESERVED_ENV_PREFIX} are reserved")


def apply_overrides(container: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The definition's container with SubmitJob's containerOverrides applied, AWS's way."""
    result = copy.deepcopy(container)
    if not overrides:
        return result
    if overrides.get("command") is not None:
        check_command(overrides["command"])
        result["command"] = list(overrides["command"])
    if overrides.get("environment"):
        check_environment(overrides["environment"])
        merged = {item["name"]: item.get("value", "") for item in result.get("environment") or []}
        merged.update({item["name"]: item.get("value", "") for item in overrides["environment"]})
        result["environment"] = [{"name": k, "value": v} for k, v in merged.items()]
    for key, kind in (("vcpus", "VCPU"), ("memory", "MEMORY")):
        if overrides.get(key) is not None:
            if _requirement(container, kind) is not None:
                raise ValidationError(DEPRECATED_KEY_CONFLICT)
            result[key] = overrides[key]
    if overrides.get("resourceRequirements"):
        by_type = {item["type"]: item for item in result.get("resourceRequirements") or []}
        for item in overrides["resourceRequirements"]:
            by_type[item["type"]] = dict(item)
            result.pop({"VCPU": "vcpus", "MEMORY": "memory"}.get(item["type"], ""), None)
        result["resourceRequirements"] = list(by_type.values())
    if overrides.get("instanceType"):
        result["instanceType"] = overrides["instanceType"]
    return result


def substitute(command: list[str], parameters: dict[str, str]) -> list[str]:
    """Replace whole `Ref::name` elements by their parameter; unknown placeholders stay verbatim."""
    return [parameters.get(part[len(REF_PREFIX) :], part) if part.startswith(REF_PREFIX) else part for part in command]


def environment_of(container: dict[str, Any], batch_variables: dict[str, str]) -> dict[str, str]:
    """Definition/override environment, then AWS_BATCH_* variables, which always win."""
    env = {item["name"]: item.get("value", "") for item in container.get("environment") or []}
    env.update(batch_variables)
    return env


def volume_mounts(container: dict[str, Any]) -> tuple[VolumeMount, ...]:
    """`mountPoints` joined with their `volumes` (by `sourceVolume` = name); a mount point naming
    no volume is skipped, as it has nothing to mount."""
    volumes = {item.get("name"): item for item in container.get("volumes") or []}
    mounts = []
    for point in container.get("mountPoints") or []:
        volume = volumes.get(point.get("sourceVolume"))
        if volume is None or not point.get("containerPath"):
            continue
        source = (volume.get("host") or {}).get("sourcePath") or None
        mounts.append(VolumeMount(point["containerPath"], source, bool(point.get("readOnly", False))))
    return tuple(mounts)
