"""Multi-node parallel definitions and submissions through boto3 against a real `kiln server`:
what is refused (HTTP 400 `ClientException`, AWS's text where known: https://docs.aws.amazon.com/batch/latest/userguide/multi-node-parallel-jobs.html,
Appendix B) and what comes back (DescribeJobDefinitions, DescribeJobs of `<jobId>#<i>`,
ListJobs(multiNodeJobId) pages). Jobs here never run: their queue's only CE is DISABLED.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import unique

CONTAINER = {"image": "host", "vcpus": 1, "memory": 64, "command": ["true"]}


def node_properties(ranges: list[str], *, num_nodes: int = 4, main: int = 0, **container: Any) -> dict[str, Any]:
    return {"numNodes": num_nodes, "mainNode": main,
            "nodeRangeProperties": [{"targetNodes": r, "container": {**CONTAINER, **container}} for r in ranges]}  # fmt: skip


def register(batch: Any, properties: dict[str, Any], **extra: Any) -> str:
    name = unique("mnp")
    result = batch.register_job_definition(jobDefinitionName=name, type="multinode", nodeProperties=properties, **extra)
    return f"{name}:{result['revision']}"


def refused(call: Any, **params: Any) -> str:
    with pytest.raises(Exception) as info:
        call(**params)
    error = info.value.response  # type: ignore[attr-defined]
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400, error
    assert error["Error"]["Code"] == "ClientException", error
    return str(error["Error"]["Message"])


def make_queue(batch: Any, *, kind: str = "EC2", parked: bool = True) -> str:
    ce = unique("ce")
    batch.create_compute_environment(
        computeEnvironmentName=ce,
        type="MANAGED",
        computeResources={"type": kind, "instanceRole": "ecsInstanceRole", "maxvCpus": 8},
    )
    if parked:
        batch.update_compute_environment(computeEnvironment=ce, state="DISABLED")
    queue = unique("q")
    batch.create_job_queue(
        jobQueueName=queue, priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}]
    )
    return queue


@pytest.fixture(scope="module")
def parked(batch: Any) -> str:
    """A queue whose only CE is DISABLED: MNP jobs submitted here wait in RUNNABLE."""
    return make_queue(batch)


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        (node_properties(["0:2", "1:3"]), "Node ranges 0:2 and 1:3 overlap"),
        (node_properties(["0:1", "0:1", "2:"]), "Node ranges 0:1 and 0:1 overlap"),
        (node_properties(["0:1"]), "must account for all nodes (0:3); not covered: node 2, 3"),
        (node_properties([":1", "3"]), "not covered: node 2"),
        (node_properties(["0:"], main=4), "mainNode must be a node index below numNodes (4) (got 4)"),
        (node_properties(["0:"], num_nodes=0), "numNodes must be between 1 and 1000 (got 0)"),
        (node_properties(["0:"], num_nodes=1001), "numNodes must be between 1 and 1000 (got 1001)"),
        (node_properties(["0:4"]), "targetNodes 0:4 goes beyond the last node: numNodes is 4"),
        (node_properties(["a:b"]), "'a:b' is not a node range"),
        (node_properties([":"]), "':' is not a node range"),
        (node_properties(["3:1", "0:"]), "3:1: the range starts after it ends"),
        (node_properties(["0", "1", "2", "3", "0:"]), None),  # 5 ranges, nested in 0: -> valid
        (node_properties(["0", "1", "2", "3", "0:1", "2:"]), "at most 5 node ranges"),
        (node_properties(["0:"], vcpus=None), "vCPU is not provided."),
        (node_properties(["0:"], command=["a", ""]), "Command field cannot have empty strings"),
        ({"numNodes": 2, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0:"}]}, "needs a container"),
        ({"numNodes": 2, "mainNode": 0, "nodeRangeProperties": []}, "needs at least one node range"),
    ],
)
def test_node_properties_rules(batch: Any, properties: dict[str, Any], message: str | None) -> None:
    for entry in properties["nodeRangeProperties"]:
        if "container" in entry:
            entry["container"] = {k: v for k, v in entry["container"].items() if v is not None}
    if message is None:
        register(batch, properties)
        return
    text = refused(batch.register_job_definition, jobDefinitionName=unique("bad"), type="multinode",
                   nodeProperties=properties)  # fmt: skip
    assert message in text, text


def test_multinode_definition_shape_rules(batch: Any) -> None:
    text = refused(batch.register_job_definition, jobDefinitionName=unique("bad"), type="multinode")
    assert "needs nodeProperties" in text
    text = refused(batch.register_job_definition, jobDefinitionName=unique("bad"), type="multinode",
                   nodeProperties=node_properties(["0:"]), containerProperties=CONTAINER)  # fmt: skip
    assert "containerProperties is only valid for type container" in text
    text = refused(batch.register_job_definition, jobDefinitionName=unique("bad"), type="container",
                   containerProperties=CONTAINER, nodeProperties=node_properties(["0:"]))  # fmt: skip
    assert "nodeProperties is only valid for type multinode" in text


def test_describe_job_definitions_returns_node_properties_as_registered(batch: Any) -> None:
    properties = node_properties(["0:3", "1:2"], main=1, environment=[{"name": "X", "value": "1"}])
    reference = register(batch, properties)
    (doc,) = batch.describe_job_definitions(jobDefinitions=[reference])["jobDefinitions"]
    assert doc["type"] == "multinode"
    assert doc["nodeProperties"] == properties
    assert "containerProperties" not in doc


def test_submit_resolves_nodes_and_overrides(batch: Any, parked: str) -> None:
    properties = node_properties(["0", "1:"], num_nodes=3, main=0)
    properties["nodeRangeProperties"][1]["container"]["command"] = ["work", "Ref::size"]
    reference = register(batch, properties, parameters={"size": "small"})
    overrides = {
        "numNodes": 5,
        "nodePropertyOverrides": [
            {"targetNodes": "1:", "containerOverrides": {"environment": [{"name": "ROLE", "value": "worker"}],
                                                          "resourceRequirements": [{"type": "VCPU", "value": "2"}]}},
        ],
    }  # fmt: skip
    job_id = batch.submit_job(jobName=unique("job"), jobQueue=parked, jobDefinition=reference, nodeOverrides=overrides,
                              parameters={"size": "big"})["jobId"]  # fmt: skip
    (job,) = batch.describe_jobs(jobs=[job_id])["jobs"]
    assert job["nodeProperties"]["numNodes"] == 5 and job["nodeProperties"]["mainNode"] == 0
    workers = job["nodeProperties"]["nodeRangeProperties"][1]
    assert workers["targetNodes"] == "1:" and workers["container"]["command"] == ["work", "big"]
    assert {"name": "ROLE", "value": "worker"} in workers["container"]["environment"]

    nodes = batch.describe_jobs(jobs=[f"{job_id}#{i}" for i in range(5)])["jobs"]
    assert [node["jobId"] for node in nodes] == [f"{job_id}#{i}" for i in range(5)]
    assert nodes[0]["container"]["command"] == ["true"] and "environment" not in nodes[0]["container"]
    assert nodes[4]["container"]["command"] == ["work", "big"]
    assert {"type": "VCPU", "value": "2"} in nodes[4]["container"]["resourceRequirements"]
    assert [node["nodeDetails"]["isMainNode"] for node in nodes] == [True, False, False, False, False]
    assert all(node["status"] == "SUBMITTED" and node["jobName"] == job["jobName"] for node in nodes)
    assert batch.describe_jobs(jobs=[f"{job_id}#5"])["jobs"] == []

    pages = list(batch.get_paginator("list_jobs").paginate(multiNodeJobId=job_id, jobStatus="SUBMITTED",
                                                           PaginationConfig={"PageSize": 2}))  # fmt: skip
    assert [len(page["jobSummaryList"]) for page in pages] == [2, 2, 1]
    listed = [summary for page in pages for summary in page["jobSummaryList"]]
    assert [s["nodeProperties"]["nodeIndex"] for s in listed] == [0, 1, 2, 3, 4]
    assert all(s["nodeProperties"]["numNodes"] == 5 for s in listed)
    assert batch.list_jobs(multiNodeJobId=job_id)["jobSummaryList"] == []  # default status: RUNNING


def test_submit_refusals(batch: Any, parked: str) -> None:
    closed = register(batch, node_properties(["0", "1:3"]))
    fixed = register(batch, node_properties(["0:1", "2:3"]))
    open_ended = register(batch, node_properties(["0", "1:"]))

    def submit_error(reference: str, queue: str = parked, **extra: Any) -> str:
        return refused(batch.submit_job, jobName=unique("job"), jobQueue=queue, jobDefinition=reference, **extra)

    text = submit_error(closed, nodeOverrides={"nodePropertyOverrides": [{"targetNodes": "0:0", "containerOverrides": {}},
                                                                         {"targetNodes": "1:2"}]})  # fmt: skip
    assert text == "NodeOverride targets should match job definition. Non matching targets - 1:2"
    assert "open-ended node range" in submit_error(fixed, nodeOverrides={"numNodes": 6})
    assert "must be above the start of the open-ended node range (1)" in submit_error(
        open_ended, nodeOverrides={"numNodes": 1}
    )
    assert "Array jobs are not supported for multi-node parallel" in submit_error(closed, arrayProperties={"size": 2})
    assert "containerOverrides is not valid for a multi-node" in submit_error(
        closed, containerOverrides={"command": ["x"]}
    )
    spot = make_queue(batch, kind="SPOT", parked=False)
    text = submit_error(closed, queue=spot)
    assert text.startswith("Multi-node parallel jobs aren't supported on compute environments that use Spot Instances")
    plain = batch.register_job_definition(
        jobDefinitionName=unique("jd"), type="container", containerProperties=CONTAINER
    )
    text = submit_error(f"{plain['jobDefinitionName']}:1", nodeOverrides={"numNodes": 2})
    assert "nodeOverrides is only valid for a job definition of type multinode" in text


def test_cancel_of_a_node_id_cancels_its_job_and_every_node(batch: Any, parked: str) -> None:
    reference = register(batch, node_properties(["0:"], num_nodes=2))
    job_id = batch.submit_job(jobName=unique("job"), jobQueue=parked, jobDefinition=reference)["jobId"]
    batch.cancel_job(jobId=f"{job_id}#1", reason="changed my mind")
    jobs = batch.describe_jobs(jobs=[job_id, f"{job_id}#0", f"{job_id}#1"])["jobs"]
    assert [job["status"] for job in jobs] == ["FAILED"] * 3
    assert all(job["statusReason"] == "changed my mind" and job["isCancelled"] for job in jobs)
