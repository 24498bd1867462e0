"""Invalid requests against a real `kiln server`: each one must be an HTTP 400 a person can act on.

Every case asserts the status (400, never a 500), the error type (`ClientException`: the only client
error the Batch model knows) and the part of the message that says what to fix; real AWS texts are
quoted where they are known (the Batch API reference, https://docs.aws.amazon.com/batch/latest/APIReference/). Malformed or
mistyped input goes over raw HTTP, because botocore would refuse to send it; everything botocore lets
through goes through boto3, as a user's request would.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import KilnServer, start_server
from tests.support import make_queue, register_shell, submit, unique

CLIENT_EXCEPTION = "ClientException"
ACCOUNT = "arn:aws:batch:us-east-1:123456789012"
GHOST_JOB_ID = "00000000-0000-4000-8000-000000000000"


@dataclass(frozen=True)
class World:
    """The resources the invalid requests refer to, made once per module."""

    queue: str  # ENABLED, on an ENABLED CE
    definition: str  # name:revision, ACTIVE, deprecated vcpus/memory keys
    rr_definition: str  # name:revision, ACTIVE, resourceRequirements VCPU/MEMORY
    inactive: str  # name:revision, deregistered
    disabled_queue: str
    parked_queue: str  # ENABLED, but its only CE is DISABLED: jobs stay RUNNABLE
    parked_ce: str  # DISABLED and still attached to parked_queue
    spare_ces: tuple[str, ...]  # four ENABLED CEs attached to no queue
    array_job: str  # an array parent of size 2 in parked_queue


def _ce(batch: Any, **resources: Any) -> str:
    name = unique("ce")
    batch.create_compute_environment(
        computeEnvironmentName=name,
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": 2, **resources},
    )
    return name


@pytest.fixture(scope="module")
def world(batch: Any) -> World:
    queue = make_queue(batch)
    container = {"image": "host", "command": ["true"]}
    rr_definition = unique("jd")
    requirements = [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]
    revision = batch.register_job_definition(
        jobDefinitionName=rr_definition,
        type="container",
        containerProperties={**container, "resourceRequirements": requirements},
    )["revision"]
    inactive = register_shell(batch, "true")
    batch.deregister_job_definition(jobDefinition=inactive)
    disabled_queue = make_queue(batch)
    batch.update_job_queue(jobQueue=disabled_queue, state="DISABLED")
    parked_ce = _ce(batch)
    parked_queue = unique("q")
    batch.create_job_queue(
        jobQueueName=parked_queue, priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": parked_ce}]
    )
    batch.update_compute_environment(computeEnvironment=parked_ce, state="DISABLED")
    definition = register_shell(batch, "true")
    return World(
        queue=queue,
        definition=definition,
        rr_definition=f"{rr_definition}:{revision}",
        inactive=inactive,
        disabled_queue=disabled_queue,
        parked_queue=parked_queue,
        parked_ce=parked_ce,
        spare_ces=tuple(_ce(batch) for _ in range(4)),
        array_job=submit(batch, parked_queue, definition, arrayProperties={"size": 2}),
    )


# -------------------------------------------------------------------------------------------- helpers


def assert_rejected(response: httpx.Response, fragment: str, code: str = CLIENT_EXCEPTION) -> None:
    """The AWS REST-JSON error form: 400, `x-amzn-ErrorType`, `{"__type", "message"}`, no internals."""
    assert "Traceback" not in response.text
    assert response.status_code == 400, response.text
    assert response.headers["x-amzn-ErrorType"] == code
    body = response.json()
    assert body["__type"] == code
    assert fragment in body["message"], body["message"]


@contextmanager
def rejected(batch: Any, fragment: str) -> Iterator[None]:
    """A boto3 call inside must raise ClientException (HTTP 400) whose message holds `fragment`."""
    with pytest.raises(batch.exceptions.ClientException) as info:
        yield
    response = info.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["Error"]["Code"] == CLIENT_EXCEPTION
    assert "Traceback" not in response["Error"]["Message"]
    assert fragment in response["Error"]["Message"], response["Error"]["Message"]


Fragment = str | Callable[[World], str]  # the expected message part, or how to build it from the world


def expected(fragment: Fragment, w: World) -> str:
    return fragment(w) if callable(fragment) else fragment


def token(position: Any) -> str:
    """A nextToken that decodes fine but was never issued by the server."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def submit_body(w: World, **extra: Any) -> dict[str, Any]:
    return {"jobName": "job", "jobQueue": w.queue, "jobDefinition": w.definition, **extra}


def definition_body(**container: Any) -> dict[str, Any]:
    return {
        "jobDefinitionName": unique("jd"),
        "type": "container",
        "containerProperties": {"image": "host", **container},
    }


# ------------------------------------------------------------------------- raw HTTP: malformed input

Body = Callable[[World], Any]
RAW_CASES = [
    pytest.param("submitjob", lambda w: b'{"jobName": "a", ', "Malformed JSON body", id="malformed-json"),
    pytest.param("submitjob", lambda w: b'{"jobName": NaN}', "Malformed JSON body: NaN is not valid JSON", id="nan"),
    pytest.param("describejobs", lambda w: b"[]", "Request body must be a JSON object, got an array", id="array-body"),
    pytest.param(
        "describejobs",
        lambda w: b'{"jobs": ' + b"[" * 40 + b"]" * 40 + b"}",
        "Malformed JSON body: objects and arrays are nested deeper than 32 levels",
        id="deep-nesting",
    ),
    pytest.param(
        "describejobs",
        lambda w: b"[" * 100_000 + b"]" * 100_000,
        "Malformed JSON body: objects and arrays are nested deeper than 32 levels",
        id="nesting-past-the-parser",
    ),
    pytest.param(
        "submitjob",
        lambda w: b'{"jobName": "caf\xe9"}',
        "Malformed JSON body: not UTF-8 (byte 0xe9 at offset 16)",
        id="latin-1-body",
    ),
    pytest.param(
        "describejobs",
        lambda w: '{"jobs": []}'.encode("utf-16"),
        "Malformed JSON body: not UTF-8",
        id="utf-16-body",
    ),
    pytest.param(
        "describejobs",
        lambda w: b'{"jobs": ["\\ud800"]}',
        "Malformed JSON body: a string holds an unpaired UTF-16 surrogate escape",
        id="lone-surrogate",
    ),
    pytest.param(
        "submitjob",
        lambda w: {"jobQueue": w.queue, "jobDefinition": w.definition},
        'Missing required parameter in input: "jobName"',
        id="missing-jobName",
    ),
    pytest.param(
        "submitjob",
        lambda w: {"jobName": "a", "jobDefinition": w.definition},
        'Missing required parameter in input: "jobQueue"',
        id="missing-jobQueue",
    ),
    pytest.param(
        "canceljob",
        lambda w: {"jobId": GHOST_JOB_ID},
        'Missing required parameter in input: "reason"',
        id="missing-reason",
    ),
    pytest.param(
        "submitjob",
        lambda w: submit_body(w, bogus=1),
        'Unknown parameter in input: "bogus", must be one of: jobName',
        id="unknown-member",
    ),
    pytest.param(
        "submitjob",
        lambda w: submit_body(w, arrayProperties={"size": "3"}),
        "Invalid type for parameter arrayProperties.size, value: 3, type: string, valid types: integer",
        id="array-size-string",
    ),
    pytest.param(
        "submitjob",
        lambda w: submit_body(w, arrayProperties={"size": True}),
        "Invalid type for parameter arrayProperties.size, value: true, type: boolean, valid types: integer",
        id="array-size-boolean",
    ),
    pytest.param(
        "submitjob",
        lambda w: submit_body(w, arrayProperties={"size": 2**31}),
        "Invalid value 2147483648 for arrayProperties.size: must be a 32-bit integer",
        id="array-size-beyond-int32",
    ),
    pytest.param(
        "submitjob",
        lambda w: submit_body(w, containerOverrides={"memory": 10**30}),
        f"Invalid value {10**30} for containerOverrides.memory: must be a 32-bit integer",
        id="memory-override-beyond-int32",
    ),
    pytest.param(
        "createjobqueue",
        lambda w: {"jobQueueName": unique("q"), "priority": "1", "computeEnvironmentOrder": []},
        "Invalid type for parameter priority, value: 1, type: string, valid types: integer",
        id="priority-string",
    ),
    pytest.param(
        "registerjobdefinition",
        lambda w: definition_body(vcpus="1", memory=64),
        "Invalid type for parameter containerProperties.vcpus, value: 1, type: string, valid types: integer",
        id="vcpus-string",
    ),
    pytest.param(
        "listjobs",
        lambda w: {"jobQueue": w.queue, "jobStatus": "BOGUS"},
        "Invalid value BOGUS for jobStatus: must be one of SUBMITTED, PENDING, RUNNABLE",
        id="enum-jobStatus",
    ),
    pytest.param(
        "createcomputeenvironment",
        lambda w: {"computeEnvironmentName": unique("ce"), "type": "BOGUS"},
        "Invalid value BOGUS for type: must be one of MANAGED, UNMANAGED",
        id="enum-ce-type",
    ),
    pytest.param(
        "submitjob",
        lambda w: submit_body(w, dependsOn=[{"jobId": GHOST_JOB_ID, "type": "BOGUS"}]),
        "Invalid value BOGUS for dependsOn[0].type: must be one of N_TO_N, SEQUENTIAL",
        id="enum-dependsOn-type",
    ),
]


@pytest.mark.parametrize(("operation", "body", "fragment"), RAW_CASES)
def test_raw_request_rejected(kiln_server: KilnServer, world: World, operation: str, body: Body, fragment: str) -> None:
    payload = body(world)
    url = f"{kiln_server.endpoint}/v1/{operation}"
    if isinstance(payload, bytes):
        response = httpx.post(url, content=payload, headers={"content-type": "application/json"})
    else:
        response = httpx.post(url, json=payload)
    assert_rejected(response, fragment)


ROUTE_CASES = [
    pytest.param("POST", "/v1/nosuchop", {}, "Unknown operation POST /v1/nosuchop", id="unknown-route"),
    pytest.param(
        "GET", "/v1/submitjob", None, "Method GET is not allowed for /v1/submitjob; use POST", id="wrong-method"
    ),
    pytest.param(
        "POST",
        "/v1/describeserviceenvironments",
        {},
        "Kiln does not implement DescribeServiceEnvironments",
        id="unimplemented-operation",
    ),
]


@pytest.mark.parametrize(("method", "path", "payload", "fragment"), ROUTE_CASES)
def test_route_rejected(kiln_server: KilnServer, method: str, path: str, payload: Any, fragment: str) -> None:
    assert_rejected(httpx.request(method, f"{kiln_server.endpoint}{path}", json=payload), fragment)


# ------------------------------------------------------------------------------------ boto3: SubmitJob

Extra = Callable[[World], dict[str, Any]]
NAME_PATTERN = "Job name should match valid pattern"
INACTIVE_OR_MISSING = "does not exist or is not in ACTIVE status"
SUBMIT_CASES = [
    pytest.param(lambda w: {"jobName": "-leading-dash"}, NAME_PATTERN, id="name-leading-dash"),
    pytest.param(lambda w: {"jobName": "a" * 129}, NAME_PATTERN, id="name-129-chars"),
    pytest.param(lambda w: {"jobName": "my job"}, NAME_PATTERN, id="name-with-space"),
    pytest.param(lambda w: {"jobName": ""}, NAME_PATTERN, id="name-empty"),
    pytest.param(lambda w: {"jobQueue": "no-such-queue"}, "JobQueue no-such-queue not found.", id="unknown-queue"),
    pytest.param(
        lambda w: {"jobQueue": w.disabled_queue},
        lambda w: f"JobQueue {w.disabled_queue} is DISABLED; enable it before submitting jobs",
        id="disabled-queue",
    ),
    pytest.param(
        lambda w: {"jobDefinition": "no-such-definition"},
        f"JobDefinition name no-such-definition {INACTIVE_OR_MISSING}",
        id="unknown-definition",
    ),
    pytest.param(
        lambda w: {"jobDefinition": w.inactive},
        lambda w: f"JobDefinition name {w.inactive} {INACTIVE_OR_MISSING}",
        id="inactive-revision",
    ),
    pytest.param(
        lambda w: {"jobDefinition": "render:latest"},
        "Provided name render:latest is not supported pattern[a-zA-Z_0-9-]{1,128}",
        id="bad-definition-reference",
    ),
    pytest.param(
        lambda w: {"arrayProperties": {"size": 1}},
        "arrayProperties.size must be between 2 and 10000 (got 1)",
        id="array-size-1",
    ),
    pytest.param(
        lambda w: {"arrayProperties": {"size": 10_001}},
        "arrayProperties.size must be between 2 and 10000 (got 10001)",
        id="array-size-10001",
    ),
    pytest.param(
        lambda w: {"dependsOn": [{"jobId": w.array_job}] * 21},
        "A job can depend on at most 20 jobs (got 21)",
        id="21-dependencies",
    ),
    pytest.param(
        lambda w: {"dependsOn": [{"jobId": GHOST_JOB_ID}]},
        f"Dependency job {GHOST_JOB_ID} does not exist",
        id="unknown-dependency",
    ),
    pytest.param(
        lambda w: {"retryStrategy": {"attempts": 0}},
        "retryStrategy.attempts must be between 1 and 10 (got 0)",
        id="retry-attempts-0",
    ),
    pytest.param(
        lambda w: {"retryStrategy": {"attempts": 11}},
        "retryStrategy.attempts must be between 1 and 10 (got 11)",
        id="retry-attempts-11",
    ),
    pytest.param(
        lambda w: {"retryStrategy": {"evaluateOnExit": [{"action": "RETRY", "onExitCode": "1"}]}},
        "Error executing request, Exception : RetryAttempts must be provided with retry strategy",
        id="evaluateOnExit-without-attempts",
    ),
    pytest.param(
        lambda w: {"retryStrategy": {"attempts": 2, "evaluateOnExit": [{"action": "EXIT", "onExitCode": "1"}] * 6}},
        "retryStrategy.evaluateOnExit allows at most 5 entries",
        id="6-evaluateOnExit",
    ),
    pytest.param(
        lambda w: {"containerOverrides": {"environment": [{"name": "AWS_BATCH_JOB_ID", "value": "x"}]}},
        "Environment variable AWS_BATCH_JOB_ID: names starting with AWS_BATCH are reserved",
        id="reserved-env-override",
    ),
    pytest.param(
        lambda w: {"containerOverrides": {"command": ["echo", ""]}},
        "Error executing request, Exception : Command field cannot have empty strings",
        id="empty-command-string",
    ),
    pytest.param(
        lambda w: {"jobDefinition": w.rr_definition, "containerOverrides": {"vcpus": 2}},
        "This value was submitted in a deprecated key and may conflict with the value provided by the job "
        "definition's resource requirements.",
        id="deprecated-vcpus-override",
    ),
    pytest.param(
        lambda w: {"containerOverrides": {"resourceRequirements": [{"type": "MEMORY", "value": "1e400"}]}},
        "resourceRequirements MEMORY value '1e400' is not a number",
        id="memory-requirement-infinite",
    ),
    pytest.param(
        lambda w: {"containerOverrides": {"resourceRequirements": [{"type": "GPU", "value": "-1"}]}},
        "resourceRequirements GPU must be a whole number of GPUs, 0 or more (got -1)",
        id="negative-gpu",
    ),
    pytest.param(
        lambda w: {"tags": {f"k{i}": "v" for i in range(51)}},
        "A resource can have at most 50 tags (got 51)",
        id="51-tags",
    ),
    pytest.param(
        lambda w: {"tags": {"aws:owner": "me"}},
        "Tag key 'aws:owner': the aws: prefix is reserved",
        id="aws-tag-prefix",
    ),
    pytest.param(
        lambda w: {"parameters": {"blob": "x" * (31 * 1024)}},
        "Request payload size exceeds the limit of 30720 bytes",
        id="payload-over-30KiB",
    ),
]


@pytest.mark.parametrize(("extra", "fragment"), SUBMIT_CASES)
def test_submit_job_rejected(batch: Any, world: World, extra: Extra, fragment: Fragment) -> None:
    with rejected(batch, expected(fragment, world)):
        batch.submit_job(**submit_body(world, **extra(world)))


# ------------------------------------------------------------------------ boto3: every other operation

Call = Callable[[Any, World], Any]
CASES = [
    # RegisterJobDefinition
    pytest.param(
        lambda b, w: b.register_job_definition(
            **{**definition_body(vcpus=1, memory=64), "jobDefinitionName": "bad name!"}
        ),
        "Provided name bad name! is not supported pattern[a-zA-Z_0-9-]{1,128}",
        id="bad-definition-name",
    ),
    pytest.param(
        lambda b, w: b.register_job_definition(
            **definition_body(vcpus=1, memory=64, environment=[{"name": "AWS_BATCH_CE_NAME", "value": "x"}])
        ),
        "Environment variable AWS_BATCH_CE_NAME: names starting with AWS_BATCH are reserved",
        id="reserved-env-definition",
    ),
    pytest.param(
        lambda b, w: b.register_job_definition(**definition_body(memory=64)),
        "Error executing request, Exception : vCPU is not provided.",
        id="vcpu-missing",
    ),
    pytest.param(
        lambda b, w: b.register_job_definition(**definition_body(vcpus=1, memory=3)),
        "Memory must be at least 4 MiB (got 3)",
        id="memory-below-4",
    ),
    pytest.param(
        lambda b, w: b.register_job_definition(
            **definition_body(vcpus=1, memory=64, resourceRequirements=[{"type": "VCPU", "value": "1"}])
        ),
        "containerProperties: vcpus and resourceRequirements VCPU cannot both be set.",
        id="vcpus-and-VCPU-requirement",
    ),
    pytest.param(
        lambda b, w: b.register_job_definition(**definition_body(vcpus=1, memory=64, command=["x" * 25_000])),
        "A job definition can be at most 24576 bytes (24 KiB)",
        id="definition-over-24KiB",
    ),
    # Describe / List
    pytest.param(
        lambda b, w: b.describe_jobs(jobs=[f"{GHOST_JOB_ID[:-3]}{i:03d}" for i in range(101)]),
        "Error executing request, Exception : Maximum number of jobs supported is  100 .",
        id="describe-101-jobs",
    ),
    pytest.param(
        lambda b, w: b.describe_job_definitions(jobDefinitions=[w.definition], maxResults=5),
        "Error executing request, Exception : JobDefinitions and MaxResults cannot both be set",
        id="definitions-list-and-maxResults",
    ),
    pytest.param(
        lambda b, w: b.describe_compute_environments(computeEnvironments=[w.parked_ce], maxResults=5),
        "Error executing request, Exception : ComputeEnvironments and MaxResults cannot both be set",
        id="ces-list-and-maxResults",
    ),
    pytest.param(
        lambda b, w: b.describe_job_definitions(nextToken=token(10**30)),
        "Invalid nextToken",
        id="definitions-token-beyond-int64",
    ),
    pytest.param(
        lambda b, w: b.list_jobs(jobQueue=w.queue, maxResults=0),
        "maxResults must be between 1 and 1000 (got 0)",
        id="listjobs-maxResults-0",
    ),
    pytest.param(
        lambda b, w: b.list_jobs(jobQueue=w.queue, maxResults=1001),
        "maxResults must be between 1 and 1000 (got 1001)",
        id="listjobs-maxResults-1001",
    ),
    pytest.param(
        lambda b, w: b.list_jobs(jobQueue=w.queue, nextToken="not-a-token!"),
        "Invalid nextToken 'not-a-token!': pass back a token from a previous response",
        id="listjobs-garbage-token",
    ),
    pytest.param(
        lambda b, w: b.list_jobs(jobQueue=w.queue, nextToken=token("abc")),
        "pass back a token from a previous response",
        id="listjobs-token-wrong-shape",
    ),
    pytest.param(
        lambda b, w: b.list_jobs(jobQueue=w.queue, arrayJobId=w.array_job),
        "ListJobs needs exactly one of jobQueue, arrayJobId or multiNodeJobId",
        id="listjobs-queue-and-array",
    ),
    pytest.param(
        lambda b, w: b.list_jobs(),
        "ListJobs needs exactly one of jobQueue, arrayJobId or multiNodeJobId",
        id="listjobs-no-scope",
    ),
    pytest.param(
        lambda b, w: b.list_jobs(
            jobQueue=w.queue,
            filters=[{"name": "JOB_NAME", "values": ["a"]}, {"name": "JOB_DEFINITION", "values": ["b"]}],
        ),
        "ListJobs accepts one filter at a time",
        id="listjobs-two-filters",
    ),
    pytest.param(
        lambda b, w: b.list_jobs(jobQueue=w.queue, filters=[{"name": "BOGUS", "values": ["a"]}]),
        "Invalid filter name 'BOGUS': must be one of JOB_NAME, JOB_DEFINITION",
        id="listjobs-unknown-filter",
    ),
    pytest.param(
        lambda b, w: b.list_jobs(jobQueue=w.queue, filters=[{"name": "BEFORE_CREATED_AT", "values": ["9" * 30]}]),
        "Filter BEFORE_CREATED_AT needs epoch milliseconds",
        id="listjobs-created-at-beyond-int64",
    ),
    # Job queues of SageMaker service environments
    pytest.param(
        lambda b, w: b.create_job_queue(jobQueueName=unique("q"), priority=1, jobQueueType="SAGEMAKER_TRAINING"),
        "jobQueueType SAGEMAKER_TRAINING and serviceEnvironmentOrder (SageMaker training jobs through service "
        "environments) are not implemented by Kiln; create a queue on compute environments instead",
        id="queue-sagemaker-training",
    ),
    pytest.param(
        lambda b, w: b.create_job_queue(
            jobQueueName=unique("q"),
            priority=1,
            serviceEnvironmentOrder=[{"order": 1, "serviceEnvironment": "training"}],
        ),
        "jobQueueType SAGEMAKER_TRAINING and serviceEnvironmentOrder (SageMaker training jobs through service "
        "environments) are not implemented by Kiln; create a queue on compute environments instead",
        id="queue-service-environment-order",
    ),
    # CancelJob(s)
    pytest.param(
        lambda b, w: b.cancel_job(jobId=w.array_job, reason="r" * 1025),
        "reason must be at most 1024 characters",
        id="cancel-reason-1025",
    ),
    pytest.param(
        lambda b, w: b.cancel_job(jobId="", reason="why"),
        "jobId is required and cannot be an empty string",
        id="cancel-empty-job-id",
    ),
    pytest.param(
        lambda b, w: b.terminate_job(jobId=w.array_job, reason=""),
        "reason is required and cannot be an empty string",
        id="terminate-empty-reason",
    ),
    pytest.param(
        lambda b, w: b.terminate_job(jobId="", reason="why"),
        "jobId is required and cannot be an empty string",
        id="terminate-empty-job-id",
    ),
    pytest.param(
        lambda b, w: b.cancel_jobs(jobs=[GHOST_JOB_ID] * 51, reason="too many"),
        "At most 50 jobs can be cancelled at once (got 51)",
        id="cancel-51-jobs",
    ),
    # Compute environments
    pytest.param(
        lambda b, w: b.create_compute_environment(
            computeEnvironmentName=w.spare_ces[0],
            type="MANAGED",
            computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": 2},
        ),
        lambda w: f"Object already exists: compute environment {w.spare_ces[0]}",
        id="ce-duplicate",
    ),
    pytest.param(
        lambda b, w: b.create_compute_environment(computeEnvironmentName=unique("ce"), type="MANAGED"),
        "A MANAGED compute environment needs computeResources",
        id="ce-managed-without-resources",
    ),
    pytest.param(
        lambda b, w: b.create_compute_environment(
            computeEnvironmentName=unique("ce"),
            type="MANAGED",
            computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "minvCpus": 8, "maxvCpus": 4},
        ),
        "computeResources must satisfy minvCpus <= desiredvCpus <= maxvCpus",
        id="ce-min-above-max",
    ),
    pytest.param(
        lambda b, w: b.create_compute_environment(
            computeEnvironmentName=unique("ce"), type="MANAGED", computeResources={"type": "SPOT", "maxvCpus": 4}
        ),
        "computeResources.instanceRole is required for SPOT compute resources",
        id="ce-spot-without-instance-role",
    ),
    pytest.param(
        lambda b, w: b.create_compute_environment(
            computeEnvironmentName=unique("ce"),
            type="MANAGED",
            computeResources={
                "type": "EC2",
                "instanceRole": "ecsInstanceRole",
                "maxvCpus": 4,
                "instanceTypes": ["c5", "unknown"],
            },
        ),
        "instanceTypes: 'unknown' is not an EC2 instance type",
        id="ce-unknown-instance-type",
    ),
    pytest.param(
        lambda b, w: b.update_compute_environment(
            computeEnvironment=w.spare_ces[1], computeResources={"instanceTypes": ["c5.large", "C5 LARGE"]}
        ),
        "instanceTypes: 'C5 LARGE' is not an EC2 instance type",
        id="ce-update-bad-instance-type",
    ),
    pytest.param(
        lambda b, w: b.delete_compute_environment(computeEnvironment=w.spare_ces[0]),
        lambda w: f"Cannot delete compute environment {w.spare_ces[0]}: disable it first",
        id="delete-enabled-ce",
    ),
    pytest.param(
        lambda b, w: b.delete_compute_environment(computeEnvironment=w.parked_ce),
        lambda w: (
            f"Cannot delete compute environment {w.parked_ce}: it is still attached to job queue(s) {w.parked_queue}"
        ),
        id="delete-attached-ce",
    ),
    # Job queues
    pytest.param(
        lambda b, w: b.create_job_queue(
            jobQueueName=unique("q"), priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "ghost"}]
        ),
        "ComputeEnvironment ghost not found.",
        id="queue-unknown-ce",
    ),
    pytest.param(
        lambda b, w: b.create_job_queue(
            jobQueueName=unique("q"),
            priority=1,
            computeEnvironmentOrder=[{"order": i, "computeEnvironment": ce} for i, ce in enumerate(w.spare_ces)],
        ),
        "computeEnvironmentOrder must list 1 to 3 compute environments",
        id="queue-4-ces",
    ),
    pytest.param(
        lambda b, w: b.create_job_queue(
            jobQueueName=unique("q"),
            priority=1001,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": w.spare_ces[0]}],
        ),
        "priority must be between 0 and 1000 (got 1001)",
        id="queue-priority-1001",
    ),
    pytest.param(
        lambda b, w: b.delete_job_queue(jobQueue=w.queue),
        lambda w: f"Cannot delete job queue {w.queue}: disable it first",
        id="delete-enabled-queue",
    ),
    # Tags
    pytest.param(
        lambda b, w: b.tag_resource(resourceArn=f"{ACCOUNT}:job/{w.array_job}:0", tags={"k": "v"}),
        "Array child and multi-node node jobs cannot be tagged; tag the parent job",
        id="tag-array-child",
    ),
    pytest.param(
        lambda b, w: b.tag_resource(
            resourceArn=f"{ACCOUNT}:job-queue/{w.queue}", tags={f"k{i}": "v" for i in range(51)}
        ),
        "A resource can have at most 50 tags (got 51)",
        id="tag-51-on-queue",
    ),
    pytest.param(
        lambda b, w: b.tag_resource(resourceArn=f"{ACCOUNT}:job-queue/{w.queue}", tags={"AWS:team": "x"}),
        "the aws: prefix is reserved",
        id="tag-aws-prefix-on-queue",
    ),
]


@pytest.mark.parametrize(("call", "fragment"), CASES)
def test_operation_rejected(batch: Any, world: World, call: Call, fragment: Fragment) -> None:
    with rejected(batch, expected(fragment, world)):
        call(batch, world)


# ------------------------------------------------------------------------- AWS's real 60-second floor


@pytest.fixture(scope="module")
def aws_floor_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """A server with AWS's own limits: no --min-timeout-seconds, so timeouts start at 60 s."""
    server = start_server(Path(tmp_path_factory.mktemp("kiln-aws-floor")), flags=[])
    yield server
    server.stop()


def test_timeout_below_60_seconds_rejected(aws_floor_server: KilnServer) -> None:
    batch = aws_floor_server.client()
    queue = make_queue(batch)
    definition = register_shell(batch, "true")
    with rejected(batch, "timeout.attemptDurationSeconds must be at least 60 seconds (got 59)"):
        register_shell(batch, "true", timeout={"attemptDurationSeconds": 59})
    with rejected(batch, "timeout.attemptDurationSeconds must be at least 60 seconds (got 59)"):
        submit(batch, queue, definition, timeout={"attemptDurationSeconds": 59})
    accepted = register_shell(batch, "true", timeout={"attemptDurationSeconds": 60})
    described = batch.describe_job_definitions(jobDefinitions=[accepted])["jobDefinitions"]
    assert described[0]["timeout"] == {"attemptDurationSeconds": 60}
