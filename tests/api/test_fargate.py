"""Fargate through boto3 against a real `kiln server` (https://docs.aws.amazon.com/batch/latest/userguide/fargate.html).

Definitions with `platformCapabilities: ["FARGATE"]` are validated as AWS validates them and come back
from DescribeJobDefinitions with AWS's defaults; FARGATE compute environments and their queues follow
AWS's rules; a Fargate job runs on the local executor with its fractional vCPU accounted as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import make_queue, register_shell, submit, unique, wait_for

ROLE = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"
PREFIX = "Error executing request, Exception : "


def pair(vcpu: str, memory: str) -> list[dict[str, str]]:
    return [{"type": "VCPU", "value": vcpu}, {"type": "MEMORY", "value": memory}]


def fargate_container(script: str = "true", **extra: Any) -> dict[str, Any]:
    return {
        "image": "host",
        "command": ["sh", "-c", script],
        "executionRoleArn": ROLE,
        "resourceRequirements": pair("0.25", "512"),
        **extra,
    }


def register_fargate(batch: Any, container: dict[str, Any], **extra: Any) -> str:
    name = unique("fjd")
    result = batch.register_job_definition(
        jobDefinitionName=name, type="container", platformCapabilities=["FARGATE"], containerProperties=container,
        **extra,
    )  # fmt: skip
    return f"{name}:{result['revision']}"


def fargate_ce(batch: Any, *, max_vcpus: int = 1, ce_type: str = "FARGATE", **extra: Any) -> str:
    name = unique("fce")
    resources = {"type": ce_type, "maxvCpus": max_vcpus, "subnets": ["subnet-1"], "securityGroupIds": ["sg-1"]}
    batch.create_compute_environment(
        computeEnvironmentName=name, type="MANAGED", computeResources={**resources, **extra}
    )
    return name


def queue_on(batch: Any, *ces: str) -> str:
    name = unique("fq")
    order = [{"order": i + 1, "computeEnvironment": ce} for i, ce in enumerate(ces)]
    batch.create_job_queue(jobQueueName=name, priority=1, computeEnvironmentOrder=order)
    return name


def rejected(call: Any, **params: Any) -> str:
    """The message of the ClientException `call` must raise, after checking it is a 400."""
    with pytest.raises(ClientError) as caught:
        call(**params)
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["Error"]["Code"] == "ClientException"
    return str(response["Error"]["Message"])


def describe_definition(batch: Any, reference: str) -> dict[str, Any]:
    found = batch.describe_job_definitions(jobDefinitions=[reference])["jobDefinitions"]
    assert len(found) == 1
    return dict(found[0])


@pytest.fixture(scope="module")
def fargate_queue(batch: Any) -> str:
    return queue_on(batch, fargate_ce(batch, max_vcpus=1), fargate_ce(batch, ce_type="FARGATE_SPOT"))


def test_minimal_definition_round_trips_with_aws_defaults(batch: Any) -> None:
    reference = register_fargate(batch, fargate_container())
    definition = describe_definition(batch, reference)
    assert definition["platformCapabilities"] == ["FARGATE"]
    assert definition["type"] == "container"
    container = definition["containerProperties"]
    assert container["executionRoleArn"] == ROLE
    assert container["resourceRequirements"] == pair("0.25", "512")
    assert container["fargatePlatformConfiguration"] == {"platformVersion": "LATEST"}
    assert "vcpus" not in container and "memory" not in container
    assert "networkConfiguration" not in container


def test_network_and_platform_configuration_round_trip(batch: Any) -> None:
    container = fargate_container(
        networkConfiguration={"assignPublicIp": "ENABLED"},
        fargatePlatformConfiguration={"platformVersion": "1.4.0"},
        ephemeralStorage={"sizeInGiB": 50},
        runtimePlatform={"operatingSystemFamily": "LINUX", "cpuArchitecture": "X86_64"},
        resourceRequirements=pair("16", "122880"),
        privileged=False,
    )
    stored = describe_definition(batch, register_fargate(batch, container))["containerProperties"]
    assert stored["networkConfiguration"] == {"assignPublicIp": "ENABLED"}
    assert stored["fargatePlatformConfiguration"] == {"platformVersion": "1.4.0"}
    assert stored["ephemeralStorage"] == {"sizeInGiB": 50}
    assert stored["runtimePlatform"] == {"operatingSystemFamily": "LINUX", "cpuArchitecture": "X86_64"}
    assert stored["resourceRequirements"] == pair("16", "122880")


def _without(key: str) -> dict[str, Any]:
    container = fargate_container()
    del container[key]
    return container


@pytest.mark.parametrize(
    ("container", "message"),
    [
        (fargate_container(resourceRequirements=pair("2", "1024")),
         f"{PREFIX}Fargate resource requirements (2.00 vCPU, 1024 MiB) not valid."),
        (fargate_container(resourceRequirements=pair("0.5", "5120")),
         f"{PREFIX}Fargate resource requirements (0.50 vCPU, 5120 MiB) not valid."),
        (fargate_container(resourceRequirements=pair("8", "18432")),
         f"{PREFIX}Fargate resource requirements (8.00 vCPU, 18432 MiB) not valid."),
        ({**_without("resourceRequirements"), "vcpus": 1, "memory": 2048},
         f"{PREFIX}vcpus is not applicable for Fargate. Use resource requirements instead."),
        (fargate_container(resourceRequirements=[{"type": "VCPU", "value": "1"}]), f"{PREFIX}Memory is not provided."),
        (fargate_container(resourceRequirements=[*pair("1", "2048"), {"type": "GPU", "value": "1"}]),
         f"{PREFIX}GPU is not applicable for Fargate."),
        (_without("executionRoleArn"),
         f"{PREFIX}executionRoleArn is required for jobs that run on Fargate resources."),
        (fargate_container(privileged=True),
         f"{PREFIX}Fargate requires that the 'privileged' setting be 'false' at the container level."),
        (fargate_container(ulimits=[{"name": "nofile", "softLimit": 1024, "hardLimit": 1024}]),
         f"{PREFIX}ulimits is not applicable for Fargate."),
        (fargate_container(linuxParameters={"devices": [{"hostPath": "/dev/null"}]}),
         f"{PREFIX}devices is not applicable for Fargate."),
        (fargate_container(networkConfiguration={"assignPublicIp": "MAYBE"}),
         # the enum is checked against the service model before the Fargate rules run
         "Invalid value MAYBE for containerProperties.networkConfiguration.assignPublicIp: "
         "must be one of ENABLED, DISABLED"),
        (fargate_container(fargatePlatformConfiguration={"platformVersion": "2.0.0"}),
         f"{PREFIX}fargatePlatformConfiguration.platformVersion 2.0.0 is not supported; "
         "use one of LATEST, 1.4.0, 1.3.0."),
    ],
)  # fmt: skip
def test_invalid_fargate_definitions_are_400s(batch: Any, container: dict[str, Any], message: str) -> None:
    params = {"jobDefinitionName": unique("bad"), "type": "container", "platformCapabilities": ["FARGATE"]}
    assert rejected(batch.register_job_definition, **params, containerProperties=container) == message


def test_multinode_fargate_is_refused(batch: Any) -> None:
    node_properties = {
        "numNodes": 2,
        "mainNode": 0,
        "nodeRangeProperties": [{"targetNodes": "0:1", "container": fargate_container()}],
    }
    message = rejected(
        batch.register_job_definition, jobDefinitionName=unique("bad"), type="multinode",
        platformCapabilities=["FARGATE"], nodeProperties=node_properties,
    )  # fmt: skip
    assert message.startswith(f"{PREFIX}Fargate job definitions must be of type container")


def test_ec2_definitions_cannot_carry_fargate_structures(batch: Any) -> None:
    container = {"image": "host", "vcpus": 1, "memory": 64, "networkConfiguration": {"assignPublicIp": "ENABLED"}}
    message = rejected(
        batch.register_job_definition, jobDefinitionName=unique("bad"), type="container", containerProperties=container
    )
    assert message.startswith(f"{PREFIX}networkConfiguration is not applicable for EC2")


def test_fargate_job_runs_with_a_quarter_vcpu(batch: Any, fargate_queue: str) -> None:
    # The job succeeds only if its fractional vCPU reached the executor unrounded.
    definition = register_fargate(batch, fargate_container('test "$KILN_VCPUS" = 0.25'))
    detail = wait_for(batch, submit(batch, fargate_queue, definition))
    assert detail["status"] == "SUCCEEDED", detail.get("statusReason")
    assert detail["platformCapabilities"] == ["FARGATE"]
    assert detail["container"]["resourceRequirements"] == pair("0.25", "512")
    assert detail["container"]["fargatePlatformConfiguration"] == {"platformVersion": "LATEST"}
    assert detail["container"]["exitCode"] == 0


def test_four_quarter_vcpu_jobs_share_one_vcpu(batch: Any, fargate_queue: str, job_tmp: Path) -> None:
    """maxvCpus 1 holds four 0.25-vCPU jobs at once: each waits (bounded) until all four have started,
    which only happens if the scheduler counts 0.25, not 1, per job."""
    script = (
        f'touch "{job_tmp}/$AWS_BATCH_JOB_ID"; i=0; '
        f'while [ "$(ls "{job_tmp}" | wc -l)" -lt 4 ]; do i=$((i+1)); [ $i -gt 300 ] && exit 3; sleep 0.1; done'
    )
    definition = register_fargate(batch, fargate_container(script))
    job_ids = [submit(batch, fargate_queue, definition) for _ in range(4)]
    details = [wait_for(batch, job_id, timeout=90) for job_id in job_ids]
    assert [detail["status"] for detail in details] == ["SUCCEEDED"] * 4, [d.get("statusReason") for d in details]


def test_submit_overrides_follow_fargate_rules(batch: Any, fargate_queue: str) -> None:
    definition = register_fargate(batch, fargate_container())
    base = {"jobName": unique("j"), "jobQueue": fargate_queue, "jobDefinition": definition}
    message = rejected(
        batch.submit_job, **base, containerOverrides={"resourceRequirements": [{"type": "MEMORY", "value": "4000"}]}
    )
    assert message == f"{PREFIX}Fargate resource requirements (0.25 vCPU, 4000 MiB) not valid."
    message = rejected(batch.submit_job, **base, containerOverrides={"vcpus": 1})
    assert message == f"{PREFIX}vcpus is not applicable for Fargate. Use resource requirements instead."
    message = rejected(
        batch.submit_job, **base, containerOverrides={"resourceRequirements": [{"type": "GPU", "value": "1"}]}
    )
    assert message == f"{PREFIX}GPU is not applicable for Fargate."

    job_id = batch.submit_job(**base, containerOverrides={"resourceRequirements": pair("0.5", "1024")})["jobId"]
    detail = wait_for(batch, job_id)
    assert detail["status"] == "SUCCEEDED", detail.get("statusReason")
    assert sorted(detail["container"]["resourceRequirements"], key=lambda r: r["type"]) == [
        {"type": "MEMORY", "value": "1024"},
        {"type": "VCPU", "value": "0.5"},
    ]


def test_jobs_run_only_on_queues_of_their_platform(batch: Any, fargate_queue: str) -> None:
    ec2_queue = make_queue(batch)
    fargate_definition = register_fargate(batch, fargate_container())
    message = rejected(batch.submit_job, jobName=unique("j"), jobQueue=ec2_queue, jobDefinition=fargate_definition)
    assert message == "Job Queue is attached to Compute Environment that can not run Jobs with capability FARGATE"
    ec2_definition = register_shell(batch, "true")
    message = rejected(batch.submit_job, jobName=unique("j"), jobQueue=fargate_queue, jobDefinition=ec2_definition)
    assert message == "Job Queue is attached to Compute Environment that can not run Jobs with capability EC2"


def test_queue_type_follows_its_compute_environments(batch: Any, fargate_queue: str) -> None:
    queues = batch.describe_job_queues(jobQueues=[fargate_queue, make_queue(batch)])["jobQueues"]
    assert sorted(queue["jobQueueType"] for queue in queues) == ["ECS", "ECS_FARGATE"]


def test_queues_cannot_mix_fargate_and_ec2(batch: Any) -> None:
    ec2_ce = unique("ce")
    batch.create_compute_environment(
        computeEnvironmentName=ec2_ce,
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": 1},
    )
    for ces in ((ec2_ce, fargate_ce(batch)), (fargate_ce(batch, ce_type="FARGATE_SPOT"), ec2_ce)):
        order = [{"order": i + 1, "computeEnvironment": ce} for i, ce in enumerate(ces)]
        message = rejected(batch.create_job_queue, jobQueueName=unique("q"), priority=1, computeEnvironmentOrder=order)
        assert "cannot mix EC2/SPOT and FARGATE/FARGATE_SPOT compute environments" in message
    queue = queue_on(batch, fargate_ce(batch))
    message = rejected(
        batch.update_job_queue, jobQueue=queue, computeEnvironmentOrder=[
            {"order": 1, "computeEnvironment": fargate_ce(batch)}, {"order": 2, "computeEnvironment": ec2_ce}],
    )  # fmt: skip
    assert "cannot mix EC2/SPOT and FARGATE/FARGATE_SPOT compute environments" in message


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"minvCpus": 0}, f"{PREFIX}minvCpus is not applicable for Fargate."),
        ({"desiredvCpus": 1}, f"{PREFIX}desiredvCpus is not applicable for Fargate."),
        ({"instanceTypes": ["optimal"]}, f"{PREFIX}instanceTypes is not applicable for Fargate."),
        ({"tags": {"team": "render"}}, f"{PREFIX}tags is not applicable for Fargate."),
        ({"instanceRole": "ecsInstanceRole"}, f"{PREFIX}instanceRole is not applicable for Fargate."),
        ({"allocationStrategy": "BEST_FIT"}, f"{PREFIX}allocationStrategy is not applicable for Fargate."),
        ({"subnets": []}, f"{PREFIX}subnets are required for Fargate compute environments."),
        ({"securityGroupIds": []}, f"{PREFIX}securityGroupIds are required for Fargate compute environments."),
    ],
)
def test_invalid_fargate_compute_environments_are_400s(batch: Any, extra: dict[str, Any], message: str) -> None:
    resources = {"type": "FARGATE", "maxvCpus": 4, "subnets": ["subnet-1"], "securityGroupIds": ["sg-1"], **extra}
    assert (
        rejected(
            batch.create_compute_environment,
            computeEnvironmentName=unique("bad"),
            type="MANAGED",
            computeResources=resources,
        )
        == message
    )
