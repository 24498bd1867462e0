"""What the server answers, read raw off the wire, against botocore's output shapes for each read.

boto3 parses a response through the model and drops what the model does not know, so a client
test cannot see an unknown member or a wrong type: these requests go over plain HTTP and every
answer is checked with botocore's own validator (unknown members, missing required ones, types)
plus the enums, for jobs in every state Kiln produces (plain, array parent and child, multi-node,
dependent, failed, cancelled, consumable-resource, an eksProperties pod) and for every read operation.

One deviation is allowed: `startedAt`, required by the model, is absent from a job that has not
started (AWS omits it too) and from array parents (their children run; whether AWS shows a start
for the parent is not verified).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from botocore.model import Shape
from botocore.validate import ParamValidator

from kiln.api.shapes import service_model
from tests.conftest import KilnServer
from tests.support import make_queue, register_shell, submit, unique, wait_for

AWS_OMITS = 'Missing required parameter in {where}: "startedAt"'


def _enum_errors(shape: Shape, value: Any, where: str) -> list[str]:
    """botocore's validator checks no enums: these are checked here, at every depth."""
    errors = []
    if shape.type_name == "string" and shape.enum and value not in shape.enum:
        errors.append(f"{where}: {value!r} is not one of {shape.enum}")
    elif shape.type_name == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                errors += _enum_errors(member, value[name], f"{where}.{name}")
    elif shape.type_name == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            errors += _enum_errors(shape.member, item, f"{where}[{index}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            errors += _enum_errors(shape.value, item, f"{where}.{key}")
    return errors


def checked(server: KilnServer, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """The raw answer to `operation`, after checking it against the model's output shape."""
    model = service_model().operation_model(operation)
    path = model.http["requestUri"].split("{")[0]
    response = httpx.post(f"{server.endpoint}{path}", json=params, timeout=30)
    assert response.status_code == 200, (operation, response.text)
    answer: dict[str, Any] = response.json()
    report = ParamValidator().validate(answer, model.output_shape)
    errors = [line for line in report.generate_report().splitlines() if line and not _aws_omits(line, answer)]
    errors += _enum_errors(model.output_shape, answer, operation)
    assert errors == [], f"{operation}: {errors}"
    return answer


def _aws_omits(line: str, answer: dict[str, Any]) -> bool:
    """`startedAt` missing from a job that never ran itself: one that has not started (AWS omits
    it as well), or an array parent, whose children are what runs (Kiln shows no start for it)."""
    for index, job in enumerate(answer.get("jobs") or []):
        if line == AWS_OMITS.format(where=f"jobs[{index}]") and "startedAt" not in job:
            parent = "size" in (job.get("arrayProperties") or {})
            never_ran = not any(attempt.get("startedAt") for attempt in job.get("attempts") or [])
            return parent or (never_ran and job.get("status") != "SUCCEEDED")
    return False


def test_every_read_answers_in_the_models_shapes(kiln_server: KilnServer, batch: Any) -> None:
    queue = make_queue(batch)
    queue_arn = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["jobQueueArn"]
    resource = unique("licence")
    batch.create_consumable_resource(consumableResourceName=resource, totalQuantity=2)
    ok = register_shell(batch, "echo ok", retryStrategy={"attempts": 2}, timeout={"attemptDurationSeconds": 60},
                        consumableResourceProperties={"consumableResourceList": [
                            {"consumableResource": resource, "quantity": 1}]})  # fmt: skip
    failing = register_shell(batch, "exit 3")
    plain = submit(batch, queue, ok)
    array = submit(batch, queue, ok, arrayProperties={"size": 2})
    dependent = submit(batch, queue, ok, dependsOn=[{"jobId": array, "type": "N_TO_N"}], arrayProperties={"size": 2})
    failed = submit(batch, queue, failing)
    nodes = {"numNodes": 2, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0:", "container": {
        "image": "host", "vcpus": 1, "memory": 64, "command": ["true"]}}]}  # fmt: skip
    multinode = batch.register_job_definition(jobDefinitionName=unique("mnp"), type="multinode",
                                              nodeProperties=nodes)["jobDefinitionArn"]  # fmt: skip
    gang = submit(batch, queue, multinode)
    blocked = submit(batch, queue, ok, dependsOn=[{"jobId": failed}])
    eks_queue = make_queue(batch, eks=True)  # an eksProperties job: its pod and eksAttempts
    small = {"requests": {"cpu": "0.25", "memory": "16Mi"}}
    pod = {
        "initContainers": [{"name": "init", "image": "host", "command": ["true"], "resources": small}],
        "containers": [{"name": "main", "image": "host", "command": ["sh", "-c", "exit 2"], "resources": small}],
    }
    eks_definition = batch.register_job_definition(
        jobDefinitionName=unique("eks"), type="container", eksProperties={"podProperties": pod}
    )["jobDefinitionArn"]
    pod_job = submit(batch, eks_queue, eks_definition)
    for job_id in (plain, array, dependent, failed, gang, blocked, pod_job):
        wait_for(batch, job_id, timeout=60)
    parked = make_queue(batch, max_vcpus=0)  # nothing ever runs there: RUNNABLE, then cancelled
    waiting = submit(batch, parked, ok)
    cancelled = submit(batch, parked, ok)
    wait_for(batch, cancelled, {"RUNNABLE"}, timeout=30)
    batch.cancel_job(jobId=cancelled, reason="shape test")
    wait_for(batch, cancelled, timeout=30)

    ids = [
        plain,
        array,
        f"{array}:0",
        dependent,
        f"{dependent}:1",
        failed,
        gang,
        f"{gang}#0",
        blocked,
        cancelled,
        waiting,
        pod_job,
    ]
    described = checked(kiln_server, "DescribeJobs", {"jobs": ids})["jobs"]
    assert {job["jobId"] for job in described} == set(ids)
    for status in ("SUCCEEDED", "FAILED", "RUNNING"):
        checked(kiln_server, "ListJobs", {"jobQueue": queue, "jobStatus": status})
    checked(kiln_server, "ListJobs", {"arrayJobId": array, "jobStatus": "SUCCEEDED"})
    checked(kiln_server, "ListJobs", {"multiNodeJobId": gang, "jobStatus": "SUCCEEDED"})
    checked(kiln_server, "ListJobs", {"jobQueue": queue, "filters": [{"name": "JOB_NAME", "values": ["job*"]}]})
    assert described[-1]["eksAttempts"][0]["containers"][0]["exitCode"] == 2
    checked(kiln_server, "DescribeJobQueues", {"jobQueues": [queue, eks_queue]})
    checked(kiln_server, "DescribeComputeEnvironments", {})
    checked(kiln_server, "DescribeJobDefinitions", {"jobDefinitions": [ok, multinode, eks_definition]})
    checked(kiln_server, "GetJobQueueSnapshot", {"jobQueue": queue_arn})
    assert checked(kiln_server, "GetJobQueueSnapshot", {"jobQueue": parked})["frontOfQueue"]["jobs"]
    checked(kiln_server, "DescribeConsumableResource", {"consumableResource": resource})
    checked(kiln_server, "ListConsumableResources", {})
    checked(kiln_server, "ListJobsByConsumableResource", {"consumableResource": resource})
    checked(kiln_server, "ListSchedulingPolicies", {})
    checked(kiln_server, "ListQuotaShares", {"jobQueue": queue})


def test_the_user_guide_lists_every_operation_of_the_model() -> None:
    """The support table names each of the model's operations, so a new one cannot go unmentioned."""
    guide = (Path(__file__).parents[2] / "docs" / "user-guide.md").read_text()
    table = guide[guide.index("## Supported operations") : guide.index("Notes on their behaviour:")]
    missing = [op for op in service_model().operation_names if f"`{op}`" not in table]
    assert missing == []
