"""`ecsProperties` job definitions and `ecsPropertiesOverride` through boto3 on a real `kiln server`:
AWS's rules at registration and submit (each refusal an HTTP 400 ClientException saying what to
fix), what Kiln cannot honour refused precisely, and the shapes DescribeJobDefinitions and
DescribeJobs return (checked member by member against botocore's output shapes from the raw
response). Nothing here runs: tests/e2e/test_ecs_tasks.py runs tasks."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.test_ecs_tasks import assert_fits, describe_checked
from tests.support import make_queue, register_shell, unique

# Either the environment's maxvCpus (2) or the host (2 cores on the test machines) is too small.
TOO_BIG = ("MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE", "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT")


def requirements(vcpus: str | None = "1", memory: str | None = "64") -> list[dict[str, str]]:
    found = []
    if vcpus is not None:
        found.append({"type": "VCPU", "value": vcpus})
    if memory is not None:
        found.append({"type": "MEMORY", "value": memory})
    return found


def two_containers() -> dict[str, Any]:
    """A valid task: a sidecar and an essential main that starts after it."""
    return {
        "taskProperties": [
            {
                "containers": [
                    {"name": "sidecar", "image": "host", "command": ["sleep", "5"], "essential": False,
                     "resourceRequirements": requirements("0.5", "32")},
                    {"name": "main", "image": "host", "command": ["echo", "Ref::greeting"],
                     "dependsOn": [{"containerName": "sidecar", "condition": "START"}],
                     "resourceRequirements": requirements("1", "64"),
                     "environment": [{"name": "A", "value": "1"}]},
                ]
            }
        ]
    }  # fmt: skip


Change = Callable[[dict[str, Any]], None]


def changed(change: Change) -> dict[str, Any]:
    ecs = two_containers()
    change(ecs)
    return ecs


def task(ecs: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = ecs["taskProperties"][0]
    return found


def main(ecs: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = ecs["taskProperties"][0]["containers"][1]
    return found


def set_in(target: Callable[[dict[str, Any]], dict[str, Any]], **values: Any) -> Change:
    return lambda ecs: target(ecs).update(values)


def containers_are(*listed: dict[str, Any]) -> Change:
    return lambda ecs: ecs["taskProperties"][0].update(containers=list(listed))


def plain(name: str | None, **extra: Any) -> dict[str, Any]:
    container = {"image": "host", "command": ["true"], "resourceRequirements": requirements(), **extra}
    if name is not None:
        container["name"] = name
    return container


REGISTER_CASES = [
    pytest.param(lambda e: e["taskProperties"].append(copy.deepcopy(e["taskProperties"][0])),
                 "ecsProperties.taskProperties must have exactly one element (got 2)", id="two-tasks"),
    pytest.param(containers_are(), "containers must have at least one container", id="no-containers"),
    pytest.param(containers_are(*[plain(f"c{i}") for i in range(11)]), "at most 10 containers (got 11)",
                 id="eleven-containers"),
    pytest.param(containers_are(plain("a"), plain(None)),
                 "containers[1].name is required when a task has more than one container", id="unnamed"),
    pytest.param(containers_are(plain("a"), plain("a")), "Container names must be unique within a task: a is used twice",
                 id="duplicate-names"),
    pytest.param(containers_are(plain("a b")), "containers[0].name 'a b' is not valid", id="bad-name"),
    pytest.param(containers_are(plain("a", essential=False), plain("b", essential=False)),
                 "At least one container of the task must be essential.", id="no-essential"),
    pytest.param(set_in(main, dependsOn=[{"containerName": "ghost", "condition": "START"}]),
                 "Container main depends on container ghost, which is not in the task.", id="depends-on-unknown"),
    pytest.param(set_in(main, dependsOn=[{"containerName": "main", "condition": "START"}]),
                 "Container main cannot depend on itself.", id="depends-on-itself"),
    pytest.param(set_in(main, dependsOn=[{"containerName": "sidecar", "condition": "HEALTHY"}]),
                 "dependsOn condition must be one of START, COMPLETE, SUCCESS (got HEALTHY)", id="bad-condition"),
    pytest.param(containers_are(plain("a"), plain("b", dependsOn=[{"containerName": "a", "condition": "SUCCESS"}])),
                 "Container b: the SUCCESS condition cannot be set on an essential container (a).",
                 id="success-on-essential"),
    pytest.param(containers_are(plain("a", dependsOn=[{"containerName": "b", "condition": "START"}]),
                                plain("b", dependsOn=[{"containerName": "a", "condition": "START"}])),
                 "dependsOn forms a cycle: a -> b -> a.", id="cycle"),
    pytest.param(containers_are(plain("a", resourceRequirements=requirements(vcpus=None))),
                 "Error executing request, Exception : vCPU is not provided.", id="no-vcpu"),
    pytest.param(containers_are(plain("a", resourceRequirements=requirements(memory=None))),
                 "Error executing request, Exception : Memory is not provided.", id="no-memory"),
    pytest.param(set_in(main, secrets=[{"name": "TOKEN", "valueFrom": "arn:aws:ssm:us-east-1:1:parameter/t"}]),
                 "containers[1].secrets is not supported: Kiln reads no Secrets Manager", id="secrets"),
    pytest.param(set_in(main, firelensConfiguration={"type": "fluentbit"}),
                 "containers[1].firelensConfiguration is not supported", id="firelens"),
    pytest.param(set_in(main, stopTimeout=500), "containers[1].stopTimeout must be between 0 and 120 seconds",
                 id="stop-timeout"),
    pytest.param(set_in(main, environment=[{"name": "AWS_BATCH_X", "value": "1"}]),
                 "names starting with AWS_BATCH are reserved", id="reserved-env"),
    pytest.param(set_in(main, user="nobody"), "Kiln runs every container of a task as one user", id="two-users"),
    pytest.param(set_in(task, networkMode="host"), "networkMode is only valid for jobs on Amazon ECS Managed Instances",
                 id="network-mode"),
    pytest.param(set_in(task, networkConfiguration={"assignPublicIp": "ENABLED"}),
                 "networkConfiguration is not applicable for EC2", id="network-configuration"),
    pytest.param(set_in(task, platformVersion="LATEST"), "platformVersion is not applicable for EC2",
                 id="platform-version"),
    pytest.param(set_in(task, pidMode="shared"), "pidMode must be one of host, task (got shared)", id="pid-mode"),
    pytest.param(set_in(task, enableExecuteCommand=True), "Kiln has no ECS Exec", id="execute-command"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "fragment"), REGISTER_CASES)
def test_register_rejected(batch: Any, change: Change, fragment: str) -> None:
    with pytest.raises(batch.exceptions.ClientException) as caught:
        batch.register_job_definition(jobDefinitionName=unique("jd"), type="container", ecsProperties=changed(change))
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert fragment in caught.value.response["Error"]["Message"]


OTHER_REGISTER_CASES = [
    pytest.param({"type": "container", "ecsProperties": two_containers(), "platformCapabilities": ["FARGATE"]},
                 "Kiln runs ecsProperties job definitions on EC2 only", id="fargate"),
    pytest.param({"type": "container", "ecsProperties": two_containers(),
                  "containerProperties": plain(None)},
                 "gives one of containerProperties, ecsProperties, eksProperties, not containerProperties and "
                 "ecsProperties", id="both-shapes"),
    pytest.param({"type": "multinode", "ecsProperties": two_containers()},
                 "ecsProperties is only valid for type container", id="multinode-top-level"),
    pytest.param({"type": "multinode", "nodeProperties": {"numNodes": 1, "mainNode": 0, "nodeRangeProperties": [
                     {"targetNodes": "0", "ecsProperties": two_containers()}]}},
                 "nodeRangeProperties[0].ecsProperties is not supported yet", id="node-range-ecs"),
    pytest.param({"type": "container", "ecsProperties": two_containers(),
                  "eksProperties": {"podProperties": {"containers": [{"image": "busybox"}]}}},
                 "not ecsProperties and eksProperties", id="ecs-and-eks"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "fragment"), OTHER_REGISTER_CASES)
def test_register_other_shapes_rejected(batch: Any, body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(batch.exceptions.ClientException) as caught:
        batch.register_job_definition(jobDefinitionName=unique("jd"), **body)
    assert fragment in caught.value.response["Error"]["Message"]


@pytest.fixture(scope="module")
def ecs_definition(batch: Any) -> str:
    name = unique("ecs")
    batch.register_job_definition(
        jobDefinitionName=name, type="container", ecsProperties=two_containers(), parameters={"greeting": "hello"}
    )
    return name


@pytest.fixture(scope="module")
def parked(batch: Any) -> str:
    """A queue whose only CE is DISABLED: its jobs stay RUNNABLE and never run."""
    queue = make_queue(batch)
    ce = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["computeEnvironmentOrder"][0]
    batch.update_compute_environment(computeEnvironment=ce["computeEnvironment"], state="DISABLED")
    return queue


def override(*containers: dict[str, Any], tasks: int = 1) -> dict[str, Any]:
    return {"taskProperties": [{"containers": list(containers)} for _ in range(tasks)]}


SUBMIT_CASES = [
    pytest.param({"ecsPropertiesOverride": override({"name": "ghost", "command": ["true"]})},
                 "ecsPropertiesOverride names container ghost, which is not in the job definition "
                 "(containers: sidecar, main)", id="unknown-container"),
    pytest.param({"ecsPropertiesOverride": override({"name": "main"}, {"name": "main"})},
                 "ecsPropertiesOverride overrides container main twice", id="twice"),
    pytest.param({"ecsPropertiesOverride": override({"command": ["true"]})},
                 "ecsPropertiesOverride containers[0].name is required", id="unnamed"),
    pytest.param({"ecsPropertiesOverride": override({"name": "main"}, tasks=2)},
                 "ecsPropertiesOverride.taskProperties can have at most one element (got 2)", id="two-tasks"),
    pytest.param({"ecsPropertiesOverride": override({"name": "main", "resourceRequirements": [
                     {"type": "MEMORY", "value": "lots"}]})}, "resourceRequirements MEMORY value 'lots' is not a number",
                 id="bad-memory"),
    pytest.param({"containerOverrides": {"command": ["true"]}},
                 "containerOverrides is not valid for a job definition with ecsProperties", id="container-overrides"),
    pytest.param({"eksPropertiesOverride": {"podProperties": {"containers": [{"name": "x"}]}}},
                 "eksPropertiesOverride is only valid for a job definition with eksProperties", id="eks-override"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "fragment"), SUBMIT_CASES)
def test_submit_rejected(batch: Any, parked: str, ecs_definition: str, extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(batch.exceptions.ClientException) as caught:
        batch.submit_job(jobName=unique("job"), jobQueue=parked, jobDefinition=ecs_definition, **extra)
    assert fragment in caught.value.response["Error"]["Message"]


def test_ecs_override_on_a_container_definition_rejected(batch: Any, parked: str) -> None:
    definition = register_shell(batch, "true")
    with pytest.raises(batch.exceptions.ClientException, match="only valid for a job definition with ecsProperties"):
        batch.submit_job(jobName=unique("job"), jobQueue=parked, jobDefinition=definition,
                         ecsPropertiesOverride=override({"name": "main"}))  # fmt: skip


def raw_call(batch: Any, operation: str, **params: Any) -> dict[str, Any]:
    """The operation's JSON as the server sent it, checked against botocore's output shape."""
    seen: list[bytes] = []
    event = f"after-call.batch.{operation}"
    batch.meta.events.register(event, lambda **kwargs: seen.append(kwargs["http_response"].content))
    try:
        getattr(batch, _snake(operation))(**params)
    finally:
        batch.meta.events.unregister(event)
    raw = dict(json.loads(seen[-1]))
    assert_fits(raw, batch.meta.service_model.operation_model(operation).output_shape)
    return raw


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


def test_describe_job_definitions_returns_ecs_properties_as_registered(batch: Any, ecs_definition: str) -> None:
    raw = raw_call(batch, "DescribeJobDefinitions", jobDefinitionName=ecs_definition)
    [definition] = raw["jobDefinitions"]
    assert definition["ecsProperties"] == two_containers()
    assert "containerProperties" not in definition
    assert definition["type"] == "container"
    assert definition["containerOrchestrationType"] == "ECS"
    assert definition["platformCapabilities"] == ["EC2"]


def test_submit_with_overrides_and_describe(batch: Any, parked: str, ecs_definition: str) -> None:
    job_id = batch.submit_job(
        jobName=unique("job"), jobQueue=parked, jobDefinition=ecs_definition, parameters={"greeting": "hi"},
        ecsPropertiesOverride=override(
            {"name": "main", "environment": [{"name": "B", "value": "2"}],
             "resourceRequirements": [{"type": "MEMORY", "value": "128"}]},
            {"name": "sidecar", "command": ["sleep", "1"]},
        ),
    )["jobId"]  # fmt: skip
    job = describe_checked(batch, job_id)
    assert "container" not in job
    [task_detail] = job["ecsProperties"]["taskProperties"]
    listed = {item["name"]: item for item in task_detail["containers"]}
    assert list(listed) == ["sidecar", "main"]
    assert listed["sidecar"]["command"] == ["sleep", "1"]
    assert listed["sidecar"]["essential"] is False
    assert listed["main"]["essential"] is True  # AWS's default, filled in
    assert listed["main"]["command"] == ["echo", "hi"]
    assert {e["name"]: e["value"] for e in listed["main"]["environment"]} == {"A": "1", "B": "2"}
    assert {"type": "MEMORY", "value": "128"} in listed["main"]["resourceRequirements"]
    assert "exitCode" not in listed["main"] and "logStreamName" not in listed["main"]  # not started
    summaries = raw_call(batch, "ListJobs", jobQueue=parked, jobStatus="RUNNABLE")["jobSummaryList"]
    assert job_id in {summary["jobId"] for summary in summaries}


def test_the_job_holds_the_sum_of_its_containers(batch: Any) -> None:
    """Two containers of 1.5 vCPUs each make a 3-vCPU job: more than a 2-vCPU environment (or the
    test machine's 2 cores) has, though each container alone would fit."""
    name = unique("ecs")
    batch.register_job_definition(
        jobDefinitionName=name, type="container",
        ecsProperties={"taskProperties": [{"containers": [
            plain("a", resourceRequirements=requirements("1.5", "32")),
            plain("b", resourceRequirements=requirements("1.5", "32"))]}]},
    )  # fmt: skip
    queue = make_queue(batch, max_vcpus=2)
    job_id = batch.submit_job(jobName=unique("job"), jobQueue=queue, jobDefinition=name)["jobId"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if (job.get("statusReason") or "").startswith(TOO_BIG):
            break
        time.sleep(0.1)
    assert job["status"] == "RUNNABLE" and (job.get("statusReason") or "").startswith(TOO_BIG), job
    batch.cancel_job(jobId=job_id, reason="too big")
