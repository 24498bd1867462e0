"""AWS Batch's Fargate rules as pure checks (https://docs.aws.amazon.com/batch/latest/userguide/fargate.html).

A job definition with `platformCapabilities: ["FARGATE"]` may say less than an EC2 one: resources
only as a valid VCPU/MEMORY pair in `resourceRequirements`, no GPUs, no host-level knobs; it needs
an execution role and may carry `networkConfiguration` / `fargatePlatformConfiguration`, which EC2
definitions must not. Fargate compute environments likewise refuse every instance-related field.
Kiln runs Fargate jobs on the same executors as EC2 ones; these rules only keep a definition that
works here from failing on AWS. Texts seen from real AWS are used verbatim where known; the others
follow AWS's `<field> is not applicable for Fargate.` pattern.
"""

from __future__ import annotations

from typing import Any

from kiln.errors import ValidationError

EC2 = "EC2"
FARGATE = "FARGATE"
PLATFORMS = (EC2, FARGATE)
FARGATE_CE_TYPES = frozenset({"FARGATE", "FARGATE_SPOT"})
FARGATE_QUEUE_TYPE = "ECS_FARGATE"
EC2_QUEUE_TYPE = "ECS"
DEFAULT_PLATFORM_VERSION = "LATEST"
PLATFORM_VERSIONS = ("LATEST", "1.4.0", "1.3.0")
ASSIGN_PUBLIC_IP = ("ENABLED", "DISABLED")
LOG_DRIVERS = ("awslogs", "splunk")
MIN_EPHEMERAL_GIB, MAX_EPHEMERAL_GIB = 21, 200
OPERATING_SYSTEMS = (
    "LINUX", "WINDOWS_SERVER_2019_CORE", "WINDOWS_SERVER_2019_FULL", "WINDOWS_SERVER_2022_CORE",
    "WINDOWS_SERVER_2022_FULL",
)  # fmt: skip
CPU_ARCHITECTURES = ("X86_64", "ARM64")
MAX_FARGATE_SUBNETS = 16
# Container fields with no meaning on Fargate (`privileged` is allowed when false).
NOT_APPLICABLE = ("ulimits", "instanceType")
NOT_APPLICABLE_LINUX = ("devices", "maxSwap", "sharedMemorySize", "swappiness", "tmpfs")
# computeResources fields a FARGATE / FARGATE_SPOT compute environment must omit.
NOT_APPLICABLE_CE = (
    "allocationStrategy", "minvCpus", "desiredvCpus", "instanceTypes", "imageId", "ec2KeyPair",
    "instanceRole", "tags", "placementGroup", "bidPercentage", "spotIamFleetRole", "launchTemplate",
    "ec2Configuration", "scalingPolicy",
)  # fmt: skip
EC2_ONLY_FORBIDDEN = ("networkConfiguration", "fargatePlatformConfiguration")


def _steps(first: int, last: int, step: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1, step))


# The supported VCPU -> MEMORY (MiB) pairs, from the ResourceRequirement reference.
MEMORY_BY_VCPU: dict[float, tuple[int, ...]] = {
    0.25: (512, 1024, 2048),
    0.5: _steps(1024, 4096, 1024),
    1: _steps(2048, 8192, 1024),
    2: _steps(4096, 16384, 1024),
    4: _steps(8192, 30720, 1024),
    8: _steps(16384, 61440, 4096),
    16: _steps(32768, 122880, 8192),
    32: (61440, 122880, 249856),
}


def _given(value: Any) -> bool:
    """Present with content: an empty list or map counts as absent, `0` and `false` do not."""
    return value is not None and value != [] and value != {}


def _error(detail: str) -> ValidationError:
    return ValidationError(f"Error executing request, Exception : {detail}")


def not_applicable(field: str) -> ValidationError:
    return _error(f"{field} is not applicable for Fargate.")


def platform_of(capabilities: list[str] | None) -> str:
    """`EC2` or `FARGATE`; absent or empty means EC2, as on AWS."""
    if not capabilities:
        return EC2
    unknown = [value for value in capabilities if value not in PLATFORMS]
    if unknown:
        raise _error(
            f"platformCapabilities value {unknown[0]} is not supported; Kiln runs EC2 and FARGATE "
            "(it runs no Amazon ECS Managed Instances)"
        )
    if len(set(capabilities)) > 1:
        raise _error("platformCapabilities must be either EC2 or FARGATE, not both")
    return capabilities[0]


def is_fargate_ce(ce_doc: dict[str, Any]) -> bool:
    return (ce_doc.get("computeResources") or {}).get("type") in FARGATE_CE_TYPES


def _requirement(container: dict[str, Any], kind: str) -> str | None:
    for item in container.get("resourceRequirements") or []:
        if item.get("type") == kind:
            return str(item.get("value"))
    return None


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _shown(number: float) -> str:
    return str(int(number)) if number == int(number) else f"{number:g}"


def check_resource_pair(vcpu_text: str, memory_text: str) -> None:
    """VCPU and MEMORY must be one of Fargate's supported combinations."""
    vcpus, memory = _as_number(vcpu_text), _as_number(memory_text)
    if vcpus is None or memory is None:
        raise _error(f"Fargate resource requirements ({vcpu_text} vCPU, {memory_text} MiB) not valid.")
    if memory not in MEMORY_BY_VCPU.get(vcpus, ()):
        raise _error(f"Fargate resource requirements ({vcpus:.2f} vCPU, {_shown(memory)} MiB) not valid.")


def check_resources(container: dict[str, Any]) -> None:
    """Resources only through resourceRequirements, both given, no GPU, a supported pair."""
    for key in ("vcpus", "memory"):
        if container.get(key) is not None:
            raise _error(f"{key} is not applicable for Fargate. Use resource requirements instead.")
    if _requirement(container, "GPU") is not None:
        raise not_applicable("GPU")
    vcpu_text, memory_text = _requirement(container, "VCPU"), _requirement(container, "MEMORY")
    if vcpu_text is None:
        raise _error("vCPU is not provided.")
    if memory_text is None:
        raise _error("Memory is not provided.")
    check_resource_pair(vcpu_text, memory_text)


def _check_host_settings(container: dict[str, Any]) -> None:
    if container.get("privileged"):
        raise _error("Fargate requires that the 'privileged' setting be 'false' at the container level.")
    for key in NOT_APPLICABLE:
        if _given(container.get(key)):
            raise not_applicable(key)
    linux = container.get("linuxParameters") or {}
    for key in NOT_APPLICABLE_LINUX:
        if _given(linux.get(key)):
            raise not_applicable(key)
    driver = (container.get("logConfiguration") or {}).get("logDriver")
    if driver is not None and driver not in LOG_DRIVERS:
        raise _error(f"logDriver {driver} is not supported for Fargate; use awslogs or splunk.")


def _check_platform_settings(container: dict[str, Any]) -> None:
    public_ip = (container.get("networkConfiguration") or {}).get("assignPublicIp")
    if public_ip is not None and public_ip not in ASSIGN_PUBLIC_IP:
        raise _error(f"networkConfiguration.assignPublicIp must be ENABLED or DISABLED (got {public_ip}).")
    version = (container.get("fargatePlatformConfiguration") or {}).get("platformVersion")
    if version is not None and version not in PLATFORM_VERSIONS:
        raise _error(
            f"fargatePlatformConfiguration.platformVersion {version} is not supported; "
            f"use one of {', '.join(PLATFORM_VERSIONS)}."
        )
    storage = container.get("ephemeralStorage")
    if storage is not None:
        size = storage.get("sizeInGiB")
        if size is None or not MIN_EPHEMERAL_GIB <= size <= MAX_EPHEMERAL_GIB:
            raise _error(
                f"ephemeralStorage.sizeInGiB must be between {MIN_EPHEMERAL_GIB} and {MAX_EPHEMERAL_GIB} (got {size})."
            )
    runtime = container.get("runtimePlatform") or {}
    family, architecture = runtime.get("operatingSystemFamily"), runtime.get("cpuArchitecture")
    if family is not None and family not in OPERATING_SYSTEMS:
        raise _error(f"runtimePlatform.operatingSystemFamily {family} is not supported.")
    if architecture is not None and architecture not in CPU_ARCHITECTURES:
        raise _error(f"runtimePlatform.cpuArchitecture {architecture} is not supported; use X86_64 or ARM64.")


def check_definition(job_type: str, container: dict[str, Any] | None) -> None:
    """A FARGATE job definition, as RegisterJobDefinition checks it."""
    if job_type != "container":
        raise _error("Fargate job definitions must be of type container; multinode is not supported on Fargate.")
    container = container or {}
    if not container.get("executionRoleArn"):
        raise _error("executionRoleArn is required for jobs that run on Fargate resources.")
    check_resources(container)
    _check_host_settings(container)
    _check_platform_settings(container)


def check_ec2_container(container: dict[str, Any] | None) -> None:
    """EC2 definitions must omit the Fargate-only structures."""
    for key in EC2_ONLY_FORBIDDEN:
        if _given((container or {}).get(key)):
            raise _error(f"{key} is not applicable for EC2; it is only valid with platformCapabilities FARGATE.")


def with_defaults(container: dict[str, Any]) -> dict[str, Any]:
    """The container as DescribeJobDefinitions returns it: AWS fills platformVersion LATEST."""
    platform = dict(container.get("fargatePlatformConfiguration") or {})
    platform.setdefault("platformVersion", DEFAULT_PLATFORM_VERSION)
    return {**container, "fargatePlatformConfiguration": platform}


def check_overrides(overrides: dict[str, Any] | None) -> None:
    """SubmitJob containerOverrides for a FARGATE definition, before they are applied."""
    overrides = overrides or {}
    for key in ("vcpus", "memory"):
        if overrides.get(key) is not None:
            raise _error(f"{key} is not applicable for Fargate. Use resource requirements instead.")
    if overrides.get("instanceType"):
        raise not_applicable("instanceType")
    if _requirement(overrides, "GPU") is not None:
        raise not_applicable("GPU")


def check_queue(platform: str, queue_type: str | None) -> None:
    """A job runs only on a queue whose compute environments share its platform (AWS refuses the
    submission rather than leaving the job RUNNABLE)."""
    queue_platform = FARGATE if queue_type == FARGATE_QUEUE_TYPE else EC2
    if platform != queue_platform:
        raise ValidationError(
            f"Job Queue is attached to Compute Environment that can not run Jobs with capability {platform}"
        )


def check_compute_resources(resources: dict[str, Any]) -> None:
    """A FARGATE / FARGATE_SPOT compute environment's computeResources."""
    for key in NOT_APPLICABLE_CE:
        if _given(resources.get(key)):
            raise not_applicable(key)
    if not resources.get("subnets"):
        raise _error("subnets are required for Fargate compute environments.")
    if len(resources["subnets"]) > MAX_FARGATE_SUBNETS:
        raise _error(f"A Fargate compute environment can have at most {MAX_FARGATE_SUBNETS} subnets.")
    if not resources.get("securityGroupIds"):
        raise _error("securityGroupIds are required for Fargate compute environments.")
