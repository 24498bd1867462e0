"""Fargate's rules as pure functions (https://docs.aws.amazon.com/batch/latest/userguide/fargate.html): the vCPU/memory table, definition and
override checks, queue compatibility, and Fargate compute environments."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.batch import fargate
from kiln.errors import ValidationError

PREFIX = "Error executing request, Exception : "
ROLE = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"


def pair(vcpu: str, memory: str) -> list[dict[str, str]]:
    return [{"type": "VCPU", "value": vcpu}, {"type": "MEMORY", "value": memory}]


def container(**extra: Any) -> dict[str, Any]:
    return {"image": "busybox", "executionRoleArn": ROLE, "resourceRequirements": pair("0.25", "512"), **extra}


# Every supported pair, written out independently of the module's step ranges.
EXPECTED_PAIRS = {
    0.25: [512, 1024, 2048],
    0.5: [1024, 2048, 3072, 4096],
    1: [2048, 3072, 4096, 5120, 6144, 7168, 8192],
    2: [4096 + 1024 * i for i in range(13)],
    4: [8192 + 1024 * i for i in range(23)],
    8: [16384 + 4096 * i for i in range(12)],
    16: [32768 + 8192 * i for i in range(12)],
    32: [61440, 122880, 249856],
}


def test_table_matches_the_documented_pairs() -> None:
    assert {vcpu: list(memories) for vcpu, memories in fargate.MEMORY_BY_VCPU.items()} == EXPECTED_PAIRS
    assert fargate.MEMORY_BY_VCPU[4][-1] == 30720
    assert fargate.MEMORY_BY_VCPU[8][-1] == 61440
    assert fargate.MEMORY_BY_VCPU[16][-1] == 122880


@pytest.mark.parametrize(("vcpu", "memory"), [(str(v), str(m)) for v, ms in EXPECTED_PAIRS.items() for m in ms])
def test_every_supported_pair_passes(vcpu: str, memory: str) -> None:
    fargate.check_resource_pair(vcpu, memory)


@pytest.mark.parametrize(
    ("vcpu", "memory", "shown"),
    [
        ("1", "4000", "(1.00 vCPU, 4000 MiB)"),  # the text AWS answered for exactly this request
        ("2", "1024", "(2.00 vCPU, 1024 MiB)"),
        ("0.5", "1", "(0.50 vCPU, 1 MiB)"),
        ("0.25", "4096", "(0.25 vCPU, 4096 MiB)"),
        ("3", "8192", "(3.00 vCPU, 8192 MiB)"),
        ("4", "31744", "(4.00 vCPU, 31744 MiB)"),
        ("8", "18432", "(8.00 vCPU, 18432 MiB)"),  # in 4's 1024 steps, not in 8's 4096 steps
        ("0.25", "512.5", "(0.25 vCPU, 512.5 MiB)"),
        ("lots", "512", "(lots vCPU, 512 MiB)"),
    ],
)
def test_unsupported_pairs_name_both_values(vcpu: str, memory: str, shown: str) -> None:
    with pytest.raises(ValidationError) as caught:
        fargate.check_resource_pair(vcpu, memory)
    assert caught.value.message == f"{PREFIX}Fargate resource requirements {shown} not valid."


def test_value_spellings_that_mean_the_same_number_pass() -> None:
    fargate.check_resource_pair("0.250", "512")
    fargate.check_resource_pair("1.0", "2048.0")


def test_platform_of() -> None:
    assert fargate.platform_of(None) == "EC2"
    assert fargate.platform_of([]) == "EC2"
    assert fargate.platform_of(["FARGATE"]) == "FARGATE"
    assert fargate.platform_of(["EC2"]) == "EC2"
    with pytest.raises(ValidationError, match="either EC2 or FARGATE, not both"):
        fargate.platform_of(["EC2", "FARGATE"])
    with pytest.raises(ValidationError, match="platformCapabilities value LAMBDA is not supported"):
        fargate.platform_of(["LAMBDA"])


def test_a_complete_definition_passes() -> None:
    fargate.check_definition(
        "container",
        container(
            privileged=False,
            networkConfiguration={"assignPublicIp": "ENABLED"},
            fargatePlatformConfiguration={"platformVersion": "1.4.0"},
            ephemeralStorage={"sizeInGiB": 21},
            runtimePlatform={"operatingSystemFamily": "LINUX", "cpuArchitecture": "ARM64"},
            logConfiguration={"logDriver": "awslogs"},
            ulimits=[],
            linuxParameters={"initProcessEnabled": True, "devices": []},
        ),
    )


@pytest.mark.parametrize(
    ("job_type", "changes", "message"),
    [
        ("multinode", {}, "Fargate job definitions must be of type container"),
        ("container", {"executionRoleArn": None}, "executionRoleArn is required"),
        ("container", {"vcpus": 1}, "vcpus is not applicable for Fargate. Use resource requirements instead."),
        ("container", {"memory": 512}, "memory is not applicable for Fargate. Use resource requirements instead."),
        ("container", {"resourceRequirements": [*pair("1", "2048"), {"type": "GPU", "value": "1"}]},
         "GPU is not applicable for Fargate."),
        ("container", {"resourceRequirements": [{"type": "MEMORY", "value": "512"}]}, "vCPU is not provided."),
        ("container", {"resourceRequirements": [{"type": "VCPU", "value": "1"}]}, "Memory is not provided."),
        ("container", {"resourceRequirements": pair("1", "1024")},
         "Fargate resource requirements (1.00 vCPU, 1024 MiB) not valid."),
        ("container", {"privileged": True},
         "Fargate requires that the 'privileged' setting be 'false' at the container level."),
        ("container", {"ulimits": [{"name": "nofile", "softLimit": 1, "hardLimit": 1}]},
         "ulimits is not applicable for Fargate."),
        ("container", {"instanceType": "m5.large"}, "instanceType is not applicable for Fargate."),
        ("container", {"linuxParameters": {"sharedMemorySize": 64}}, "sharedMemorySize is not applicable for Fargate."),
        ("container", {"linuxParameters": {"swappiness": 0}}, "swappiness is not applicable for Fargate."),
        ("container", {"logConfiguration": {"logDriver": "syslog"}}, "logDriver syslog is not supported for Fargate"),
        ("container", {"networkConfiguration": {"assignPublicIp": "YES"}},
         "assignPublicIp must be ENABLED or DISABLED (got YES)"),
        ("container", {"fargatePlatformConfiguration": {"platformVersion": "9.9.9"}},
         "platformVersion 9.9.9 is not supported"),
        ("container", {"ephemeralStorage": {"sizeInGiB": 20}}, "sizeInGiB must be between 21 and 200 (got 20)"),
        ("container", {"ephemeralStorage": {"sizeInGiB": 201}}, "sizeInGiB must be between 21 and 200 (got 201)"),
        ("container", {"runtimePlatform": {"cpuArchitecture": "MIPS"}}, "cpuArchitecture MIPS is not supported"),
        ("container", {"runtimePlatform": {"operatingSystemFamily": "BEOS"}}, "operatingSystemFamily BEOS"),
    ],
)  # fmt: skip
def test_definition_rules(job_type: str, changes: dict[str, Any], message: str) -> None:
    body = {key: value for key, value in container(**changes).items() if value is not None}
    with pytest.raises(ValidationError) as caught:
        fargate.check_definition(job_type, body)
    assert caught.value.message.startswith(PREFIX)
    assert message in caught.value.message


def test_ec2_definitions_must_omit_fargate_structures() -> None:
    fargate.check_ec2_container({"image": "busybox", "vcpus": 1, "memory": 4})
    for key, value in (("networkConfiguration", {"assignPublicIp": "ENABLED"}),
                       ("fargatePlatformConfiguration", {"platformVersion": "LATEST"})):  # fmt: skip
        with pytest.raises(ValidationError, match=f"{key} is not applicable for EC2"):
            fargate.check_ec2_container({"image": "busybox", key: value})


def test_defaults_fill_platform_version_only_when_absent() -> None:
    filled = fargate.with_defaults(container())
    assert filled["fargatePlatformConfiguration"] == {"platformVersion": "LATEST"}
    assert "networkConfiguration" not in filled
    kept = fargate.with_defaults(container(fargatePlatformConfiguration={"platformVersion": "1.3.0"}))
    assert kept["fargatePlatformConfiguration"] == {"platformVersion": "1.3.0"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vcpus": 1}, "vcpus is not applicable for Fargate. Use resource requirements instead."),
        ({"memory": 2048}, "memory is not applicable for Fargate. Use resource requirements instead."),
        ({"instanceType": "m5.large"}, "instanceType is not applicable for Fargate."),
        ({"resourceRequirements": [{"type": "GPU", "value": "1"}]}, "GPU is not applicable for Fargate."),
    ],
)
def test_override_rules(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        fargate.check_overrides(overrides)
    assert caught.value.message == PREFIX + message


def test_harmless_overrides_pass() -> None:
    fargate.check_overrides(None)
    fargate.check_overrides({"command": ["true"], "resourceRequirements": pair("1", "2048")})


def test_queue_platform_must_match() -> None:
    fargate.check_queue("FARGATE", "ECS_FARGATE")
    fargate.check_queue("EC2", "ECS")
    fargate.check_queue("EC2", None)
    for platform, queue_type in (("FARGATE", "ECS"), ("EC2", "ECS_FARGATE")):
        with pytest.raises(ValidationError) as caught:
            fargate.check_queue(platform, queue_type)
        assert caught.value.message == (
            f"Job Queue is attached to Compute Environment that can not run Jobs with capability {platform}"
        )


def fargate_resources(**extra: Any) -> dict[str, Any]:
    return {"type": "FARGATE", "maxvCpus": 4, "subnets": ["subnet-1"], "securityGroupIds": ["sg-1"], **extra}


def test_fargate_compute_resources() -> None:
    fargate.check_compute_resources(fargate_resources())
    fargate.check_compute_resources(fargate_resources(tags={}, instanceTypes=[]))  # empty counts as absent
    for key in fargate.NOT_APPLICABLE_CE:
        value: Any = 0 if key in {"minvCpus", "desiredvCpus", "bidPercentage"} else ["x"]
        with pytest.raises(ValidationError) as caught:
            fargate.check_compute_resources(fargate_resources(**{key: value}))
        assert caught.value.message == f"{PREFIX}{key} is not applicable for Fargate."
    with pytest.raises(ValidationError, match="subnets are required"):
        fargate.check_compute_resources(fargate_resources(subnets=[]))
    with pytest.raises(ValidationError, match="securityGroupIds are required"):
        fargate.check_compute_resources(fargate_resources(securityGroupIds=[]))
    with pytest.raises(ValidationError, match="at most 16 subnets"):
        fargate.check_compute_resources(fargate_resources(subnets=[f"subnet-{i}" for i in range(17)]))
