"""Every Batch operation Kiln implements, driven through boto3 against a real `kiln server`
(the five scheduling-policy operations are in tests/e2e/test_fair_share.py).

Each test asserts the response shapes and semantics a real AWS client relies on
(https://docs.aws.amazon.com/batch/latest/APIReference/). Jobs that never need to run
sit in "parked" queues whose only compute environment is DISABLED, so they stay RUNNABLE and leave
the host's two cores to the few tests that run something.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import make_queue, poll, register_shell, submit, unique, wait_for

REGION_ACCOUNT = "arn:aws:batch:us-east-1:123456789012"
ESSENTIAL = "Essential container in task exited"
MAX_RESOURCE_PREFIX = "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE"


def arn(kind: str, rest: str) -> str:
    return f"{REGION_ACCOUNT}:{kind}/{rest}"


def now_ms() -> int:
    return int(time.time() * 1000)


def describe_one(batch: Any, job_id: str) -> dict[str, Any]:
    jobs = batch.describe_jobs(jobs=[job_id])["jobs"]
    assert len(jobs) == 1, jobs
    return dict(jobs[0])


def make_ce(batch: Any, *, max_vcpus: int = 2, **extra: Any) -> str:
    name = unique("ce")
    batch.create_compute_environment(
        computeEnvironmentName=name,
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": max_vcpus},
        **extra,
    )
    return name


def make_parked_queue(batch: Any) -> str:
    """A queue whose only compute environment is DISABLED: its jobs stay RUNNABLE."""
    ce = make_ce(batch)
    batch.update_compute_environment(computeEnvironment=ce, state="DISABLED")
    queue = unique("parked")
    batch.create_job_queue(
        jobQueueName=queue, priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}]
    )
    return queue


def list_all(batch: Any, **params: Any) -> list[dict[str, Any]]:
    """ListJobs following nextToken by hand until it is absent."""
    found: list[dict[str, Any]] = []
    token = None
    for _ in range(1000):
        page = batch.list_jobs(**params, **({"nextToken": token} if token else {}))
        found += page["jobSummaryList"]
        token = page.get("nextToken")
        if not token:
            return found
    raise AssertionError("ListJobs never stopped returning nextToken")


def ids_of(summaries: list[dict[str, Any]]) -> list[str]:
    return [summary["jobId"] for summary in summaries]


@pytest.fixture(scope="module")
def parked(batch: Any) -> str:
    return make_parked_queue(batch)


@pytest.fixture(scope="module")
def runner(batch: Any) -> str:
    """A queue whose jobs really run (one MANAGED CE, maxvCpus 2)."""
    return make_queue(batch, max_vcpus=2)


# ------------------------------------------------------------------------------- compute environments


def test_compute_environment_create_describe_update_delete(batch: Any) -> None:
    managed, unmanaged = unique("ce-managed"), unique("ce-unmanaged")
    created = batch.create_compute_environment(
        computeEnvironmentName=managed,
        type="MANAGED",
        computeResources={
            "type": "EC2",
            "instanceRole": "ecsInstanceRole",
            "maxvCpus": 4,
            "minvCpus": 0,
            "instanceTypes": ["optimal", "c5", "m6i.8xlarge", "u-6tb1.metal", "default_arm64"],
        },
        tags={"team": "render"},
    )
    assert created["computeEnvironmentName"] == managed
    assert created["computeEnvironmentArn"] == arn("compute-environment", managed)
    created = batch.create_compute_environment(
        computeEnvironmentName=unmanaged,
        type="UNMANAGED",
        serviceRole="arn:aws:iam::123456789012:role/AWSBatchServiceRole",
        unmanagedvCpus=2,
    )
    assert created["computeEnvironmentArn"] == arn("compute-environment", unmanaged)
    with pytest.raises(batch.exceptions.ClientException):  # names are unique
        batch.create_compute_environment(
            computeEnvironmentName=managed,
            type="MANAGED",
            computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": 1},
        )

    by_name = batch.describe_compute_environments(computeEnvironments=[managed])["computeEnvironments"]
    assert len(by_name) == 1
    detail = by_name[0]
    assert detail["computeEnvironmentName"] == managed
    assert detail["computeEnvironmentArn"] == arn("compute-environment", managed)
    assert detail["type"] == "MANAGED"
    assert detail["state"] == "ENABLED"
    assert detail["status"] == "VALID"
    assert detail["statusReason"] == "ComputeEnvironment Healthy"
    assert detail["computeResources"]["type"] == "EC2"
    assert detail["computeResources"]["maxvCpus"] == 4
    assert detail["tags"] == {"team": "render"}
    assert detail["ecsClusterArn"].startswith("arn:aws:ecs:us-east-1:123456789012:cluster/")

    by_arn = batch.describe_compute_environments(computeEnvironments=[arn("compute-environment", unmanaged)])
    [detail] = by_arn["computeEnvironments"]
    assert detail["computeEnvironmentName"] == unmanaged
    assert detail["type"] == "UNMANAGED"
    assert detail["unmanagedvCpus"] == 2
    assert detail["status"] == "VALID"
    assert detail["statusReason"] == "ComputeEnvironment Healthy"

    everything = batch.describe_compute_environments()["computeEnvironments"]
    names = [ce["computeEnvironmentName"] for ce in everything]
    assert managed in names
    assert unmanaged in names
    unknown = batch.describe_compute_environments(computeEnvironments=[unique("no-such-ce")])
    assert unknown["computeEnvironments"] == []
    with pytest.raises(batch.exceptions.ClientException, match="cannot both be set"):
        batch.describe_compute_environments(computeEnvironments=[managed], maxResults=1)

    updated = batch.update_compute_environment(
        computeEnvironment=managed, state="DISABLED", computeResources={"maxvCpus": 8}
    )
    assert updated["computeEnvironmentName"] == managed
    assert updated["computeEnvironmentArn"] == arn("compute-environment", managed)
    [detail] = batch.describe_compute_environments(computeEnvironments=[managed])["computeEnvironments"]
    assert detail["state"] == "DISABLED"
    assert detail["computeResources"]["maxvCpus"] == 8
    assert detail["computeResources"]["type"] == "EC2"  # an update keeps what it does not name
    assert detail["status"] == "VALID"
    batch.update_compute_environment(computeEnvironment=arn("compute-environment", unmanaged), unmanagedvCpus=6)
    [detail] = batch.describe_compute_environments(computeEnvironments=[unmanaged])["computeEnvironments"]
    assert detail["unmanagedvCpus"] == 6

    # Deleting needs DISABLED and no queue attached.
    queue = unique("q")
    batch.create_job_queue(
        jobQueueName=queue, priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": managed}]
    )
    with pytest.raises(batch.exceptions.ClientException):
        batch.delete_compute_environment(computeEnvironment=unmanaged)  # still ENABLED
    with pytest.raises(batch.exceptions.ClientException):
        batch.delete_compute_environment(computeEnvironment=managed)  # still attached to `queue`
    # Detach it by pointing the queue elsewhere; the queue itself stays.
    other = make_ce(batch)
    batch.update_job_queue(jobQueue=queue, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": other}])
    assert batch.delete_compute_environment(computeEnvironment=managed)["ResponseMetadata"]["HTTPStatusCode"] == 200
    batch.update_compute_environment(computeEnvironment=unmanaged, state="DISABLED")
    batch.delete_compute_environment(computeEnvironment=arn("compute-environment", unmanaged))
    gone = batch.describe_compute_environments(computeEnvironments=[managed, unmanaged])
    assert gone["computeEnvironments"] == []


def test_context_and_update_policy_are_described(batch: Any) -> None:
    name = unique("ce-context")
    batch.create_compute_environment(
        computeEnvironmentName=name, type="MANAGED", computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": 2},
        context="render-farm",
    )  # fmt: skip
    [detail] = batch.describe_compute_environments(computeEnvironments=[name])["computeEnvironments"]
    assert detail["context"] == "render-farm"
    assert "updatePolicy" not in detail
    batch.update_compute_environment(
        computeEnvironment=name, context="night-shift",
        updatePolicy={"terminateJobsOnUpdate": False, "jobExecutionTimeoutMinutes": 30},
    )  # fmt: skip
    [detail] = batch.describe_compute_environments(computeEnvironments=[name])["computeEnvironments"]
    assert detail["context"] == "night-shift"
    assert detail["updatePolicy"] == {"terminateJobsOnUpdate": False, "jobExecutionTimeoutMinutes": 30}
    # An ECS environment has no EKS configuration to update (EKS ones: tests/api/test_eks_requests.py).
    with pytest.raises(batch.exceptions.ClientException, match=r"containerOrchestrationType is EKS; .* is ECS"):
        batch.update_compute_environment(
            computeEnvironment=name, eksConfiguration={"accessEntry": {"desiredState": "ENABLED"}}
        )
    assert batch.describe_compute_environments(computeEnvironments=[name])["computeEnvironments"][0]["context"] == (
        "night-shift"
    )


def test_compute_environment_pagination(batch: Any) -> None:
    created = [make_ce(batch) for _ in range(5)]
    first = batch.describe_compute_environments(maxResults=2)
    assert len(first["computeEnvironments"]) == 2
    assert first["nextToken"]

    pages = list(batch.get_paginator("describe_compute_environments").paginate(PaginationConfig={"PageSize": 2}))
    assert all(len(page["computeEnvironments"]) <= 2 for page in pages)
    assert "nextToken" not in pages[-1]
    names = [ce["computeEnvironmentName"] for page in pages for ce in page["computeEnvironments"]]
    assert len(names) == len(set(names))  # nothing seen twice
    assert set(created) <= set(names)
    assert len(names) == len(batch.describe_compute_environments()["computeEnvironments"])


# ---------------------------------------------------------------------------------------- job queues


def test_job_queue_create_describe_update_delete(batch: Any) -> None:
    ce_a, ce_b = make_ce(batch), make_ce(batch)
    queue = unique("q")
    created = batch.create_job_queue(
        jobQueueName=queue,
        priority=10,
        computeEnvironmentOrder=[
            {"order": 2, "computeEnvironment": arn("compute-environment", ce_b)},
            {"order": 1, "computeEnvironment": ce_a},
        ],
        tags={"team": "render"},
    )
    assert created["jobQueueName"] == queue
    assert created["jobQueueArn"] == arn("job-queue", queue)
    with pytest.raises(batch.exceptions.ClientException):  # names are unique
        batch.create_job_queue(
            jobQueueName=queue, priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce_a}]
        )

    [detail] = batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
    assert detail["jobQueueName"] == queue
    assert detail["jobQueueArn"] == arn("job-queue", queue)
    assert detail["state"] == "ENABLED"
    assert detail["status"] == "VALID"
    assert detail["statusReason"] == "JobQueue Healthy"
    assert detail["priority"] == 10
    assert detail["tags"] == {"team": "render"}
    order = sorted(detail["computeEnvironmentOrder"], key=lambda item: item["order"])
    assert order == [
        {"order": 1, "computeEnvironment": arn("compute-environment", ce_a)},
        {"order": 2, "computeEnvironment": arn("compute-environment", ce_b)},
    ]
    [by_arn] = batch.describe_job_queues(jobQueues=[arn("job-queue", queue)])["jobQueues"]
    assert by_arn["jobQueueName"] == queue
    assert queue in [q["jobQueueName"] for q in batch.describe_job_queues()["jobQueues"]]
    assert batch.describe_job_queues(jobQueues=[unique("no-such-queue")])["jobQueues"] == []
    with pytest.raises(batch.exceptions.ClientException, match="cannot both be set"):
        batch.describe_job_queues(jobQueues=[queue], maxResults=1)

    updated = batch.update_job_queue(
        jobQueue=arn("job-queue", queue),
        priority=7,
        state="DISABLED",
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce_b}],
    )
    assert updated == {**updated, "jobQueueName": queue, "jobQueueArn": arn("job-queue", queue)}
    [detail] = batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
    assert detail["priority"] == 7
    assert detail["state"] == "DISABLED"
    assert detail["computeEnvironmentOrder"] == [{"order": 1, "computeEnvironment": arn("compute-environment", ce_b)}]
    definition = register_shell(batch, "true")
    with pytest.raises(batch.exceptions.ClientException):
        submit(batch, queue, definition)  # a DISABLED queue takes no new jobs

    batch.update_job_queue(jobQueue=queue, state="ENABLED")
    with pytest.raises(batch.exceptions.ClientException):
        batch.delete_job_queue(jobQueue=queue)  # must be DISABLED first
    batch.update_job_queue(jobQueue=queue, state="DISABLED")
    assert batch.delete_job_queue(jobQueue=queue)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert batch.describe_job_queues(jobQueues=[queue])["jobQueues"] == []


def test_job_queue_pagination(batch: Any) -> None:
    ce = make_ce(batch)
    created = []
    for _ in range(5):
        name = unique("q")
        batch.create_job_queue(
            jobQueueName=name, priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}]
        )
        created.append(name)
    first = batch.describe_job_queues(maxResults=2)
    assert len(first["jobQueues"]) == 2
    assert first["nextToken"]
    pages = list(batch.get_paginator("describe_job_queues").paginate(PaginationConfig={"PageSize": 2}))
    assert all(len(page["jobQueues"]) <= 2 for page in pages)
    names = [q["jobQueueName"] for page in pages for q in page["jobQueues"]]
    assert len(names) == len(set(names))
    assert set(created) <= set(names)


# ----------------------------------------------------------------------------------- job definitions


def _register(batch: Any, name: str, **extra: Any) -> dict[str, Any]:
    container = {"image": "host", "vcpus": 1, "memory": 64, "command": ["echo", "Ref::word"]}
    return dict(
        batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties=container, **extra)
    )


def test_job_definition_revisions_describe_deregister(batch: Any, parked: str) -> None:
    name = unique("jd")
    results = [_register(batch, name, parameters={"word": f"rev{i}"}) for i in (1, 2, 3)]
    assert [r["revision"] for r in results] == [1, 2, 3]
    for revision, result in enumerate(results, start=1):
        assert result["jobDefinitionName"] == name
        assert result["jobDefinitionArn"] == arn("job-definition", f"{name}:{revision}")

    all_revisions = batch.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"]
    assert sorted(d["revision"] for d in all_revisions) == [1, 2, 3]
    for definition in all_revisions:
        assert definition["jobDefinitionName"] == name
        assert definition["jobDefinitionArn"] == arn("job-definition", f"{name}:{definition['revision']}")
        assert definition["status"] == "ACTIVE"
        assert definition["type"] == "container"
        assert definition["containerProperties"]["image"] == "host"
        assert definition["containerProperties"]["command"] == ["echo", "Ref::word"]
        assert definition["parameters"] == {"word": f"rev{definition['revision']}"}

    [by_revision] = batch.describe_job_definitions(jobDefinitions=[f"{name}:2"])["jobDefinitions"]
    assert by_revision["revision"] == 2
    [by_arn] = batch.describe_job_definitions(jobDefinitions=[arn("job-definition", f"{name}:3")])["jobDefinitions"]
    assert by_arn["revision"] == 3
    assert batch.describe_job_definitions(jobDefinitions=[name])["jobDefinitions"] == []

    batch.deregister_job_definition(jobDefinition=f"{name}:3")
    active = batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")["jobDefinitions"]
    inactive = batch.describe_job_definitions(jobDefinitionName=name, status="INACTIVE")["jobDefinitions"]
    assert sorted(d["revision"] for d in active) == [1, 2]
    assert [(d["revision"], d["status"]) for d in inactive] == [(3, "INACTIVE")]
    assert len(batch.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"]) == 3

    # A bare name means the newest ACTIVE revision; an INACTIVE one cannot be used.
    job_id = submit(batch, parked, name)
    detail = describe_one(batch, job_id)
    assert detail["jobDefinition"] == arn("job-definition", f"{name}:2")
    assert detail["container"]["command"] == ["echo", "rev2"]
    with pytest.raises(batch.exceptions.ClientException, match="ACTIVE"):
        submit(batch, parked, f"{name}:3")
    batch.deregister_job_definition(jobDefinition=arn("job-definition", f"{name}:2"))
    detail = describe_one(batch, submit(batch, parked, name))
    assert detail["jobDefinition"] == arn("job-definition", f"{name}:1")
    detail = describe_one(batch, submit(batch, parked, arn("job-definition", f"{name}:1")))
    assert detail["jobDefinition"] == arn("job-definition", f"{name}:1")

    with pytest.raises(batch.exceptions.ClientException):
        batch.deregister_job_definition(jobDefinition=f"{name}:99")
    # Registering again continues the numbering.
    assert _register(batch, name)["revision"] == 4


def test_job_definition_pagination(batch: Any) -> None:
    name = unique("jd")
    for _ in range(5):
        _register(batch, name)
    batch.deregister_job_definition(jobDefinition=f"{name}:5")
    first = batch.describe_job_definitions(jobDefinitionName=name, maxResults=2)
    assert len(first["jobDefinitions"]) == 2
    assert first["nextToken"]
    paginator = batch.get_paginator("describe_job_definitions")
    pages = list(paginator.paginate(jobDefinitionName=name, PaginationConfig={"PageSize": 2}))
    assert [len(page["jobDefinitions"]) for page in pages] == [2, 2, 1]
    assert sorted(d["revision"] for page in pages for d in page["jobDefinitions"]) == [1, 2, 3, 4, 5]
    pages = list(paginator.paginate(jobDefinitionName=name, status="ACTIVE", PaginationConfig={"PageSize": 3}))
    assert sorted(d["revision"] for page in pages for d in page["jobDefinitions"]) == [1, 2, 3, 4]
    with pytest.raises(batch.exceptions.ClientException, match="cannot both be set"):
        batch.describe_job_definitions(jobDefinitions=[f"{name}:1"], maxResults=1)


# ------------------------------------------------------------------------------ SubmitJob/DescribeJobs


def test_submit_and_describe_job_shape(batch: Any, parked: str) -> None:
    name = unique("jd")
    batch.register_job_definition(
        jobDefinitionName=name,
        type="container",
        parameters={"greeting": "hello", "who": "world"},
        containerProperties={
            "image": "host",
            "vcpus": 1,
            "memory": 64,
            "command": ["echo", "Ref::greeting", "Ref::who"],
            "environment": [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}],
        },
        tags={"owner": "definition", "shared": "from-definition"},
        propagateTags=True,
    )
    job_name = unique("job")
    before = now_ms()
    response = batch.submit_job(
        jobName=job_name,
        jobQueue=parked,
        jobDefinition=name,
        parameters={"who": "kiln"},
        containerOverrides={
            "environment": [{"name": "A", "value": "override"}, {"name": "B", "value": "2"}],
            "resourceRequirements": [{"type": "MEMORY", "value": "256"}],
        },
        tags={"shared": "from-job", "job": "yes"},
    )
    job_id = response["jobId"]
    assert str(uuid.UUID(job_id)) == job_id  # a lowercase UUID
    assert response["jobArn"] == arn("job", job_id)
    assert response["jobName"] == job_name

    detail = describe_one(batch, job_id)
    assert detail["jobId"] == job_id
    assert detail["jobArn"] == arn("job", job_id)
    assert detail["jobName"] == job_name
    assert isinstance(detail["createdAt"], int)
    assert before - 1000 <= detail["createdAt"] <= now_ms() + 1000
    assert detail["status"] in {"SUBMITTED", "PENDING", "RUNNABLE"}
    assert detail["jobQueue"] == arn("job-queue", parked)
    assert detail["jobDefinition"] == arn("job-definition", f"{name}:1")
    assert detail["parameters"] == {"greeting": "hello", "who": "kiln"}
    container = detail["container"]
    assert container["image"] == "host"
    assert container["command"] == ["echo", "hello", "kiln"]
    assert {item["name"]: item["value"] for item in container["environment"]} == {"A": "override", "B": "2", "C": "3"}
    assert {"type": "MEMORY", "value": "256"} in container["resourceRequirements"]
    assert detail["tags"] == {"owner": "definition", "shared": "from-job", "job": "yes"}
    assert detail["propagateTags"] is True
    assert detail["platformCapabilities"] == ["EC2"]
    assert container["vcpus"] == 1
    assert "startedAt" not in detail
    assert "stoppedAt" not in detail
    assert detail["attempts"] == []
    assert batch.list_tags_for_resource(resourceArn=arn("job", job_id))["tags"] == detail["tags"]

    # Overrides: the command is replaced (and still substituted); propagateTags=False keeps only the job's tags.
    other = batch.submit_job(
        jobName=unique("job"),
        jobQueue=arn("job-queue", parked),
        jobDefinition=arn("job-definition", f"{name}:1"),
        containerOverrides={"command": ["printf", "%s", "Ref::greeting"]},
        propagateTags=False,
        tags={"job": "only"},
    )["jobId"]
    detail = describe_one(batch, other)
    assert detail["jobQueue"] == arn("job-queue", parked)
    assert detail["container"]["command"] == ["printf", "%s", "hello"]
    assert detail["parameters"] == {"greeting": "hello", "who": "world"}
    assert detail["tags"] == {"job": "only"}
    assert detail["propagateTags"] is False

    # Unknown ids are simply missing; duplicates are described once.
    assert batch.describe_jobs(jobs=[str(uuid.uuid4())])["jobs"] == []
    described = batch.describe_jobs(jobs=[job_id, other, job_id, str(uuid.uuid4()), other])["jobs"]
    assert sorted(j["jobId"] for j in described) == sorted([job_id, other])
    with pytest.raises(batch.exceptions.ClientException, match="Maximum number of jobs supported is  100"):
        batch.describe_jobs(jobs=[str(uuid.uuid4()) for _ in range(101)])


def test_submit_rejects_unknown_queue_and_definition(batch: Any, parked: str) -> None:
    definition = register_shell(batch, "true")
    with pytest.raises(batch.exceptions.ClientException, match="not found"):
        submit(batch, unique("no-such-queue"), definition)
    with pytest.raises(batch.exceptions.ClientException, match="does not exist or is not in ACTIVE status"):
        submit(batch, parked, unique("no-such-definition"))


def test_array_job_children_list_and_cancel(batch: Any) -> None:
    queue = make_parked_queue(batch)
    definition = register_shell(batch, "true")
    parent = submit(batch, queue, definition, arrayProperties={"size": 3})
    children = [f"{parent}:{i}" for i in range(3)]
    for child in children:
        wait_for(batch, child, {"RUNNABLE"}, timeout=30)
    detail = wait_for(batch, parent, {"PENDING"}, timeout=30)
    assert detail["arrayProperties"]["size"] == 3
    assert detail["arrayProperties"]["statusSummary"].get("RUNNABLE") == 3
    assert "index" not in detail["arrayProperties"]

    described = {job["jobId"]: job for job in batch.describe_jobs(jobs=children)["jobs"]}
    assert set(described) == set(children)
    for index, child in enumerate(children):
        job = described[child]
        assert job["jobArn"] == arn("job", child)
        assert job["arrayProperties"]["index"] == index
        assert "size" not in job["arrayProperties"]
        assert job["jobQueue"] == arn("job-queue", queue)
        assert job["jobDefinition"] == arn("job-definition", definition)
        assert job["status"] == "RUNNABLE"

    with pytest.raises(batch.exceptions.ClientException):
        batch.tag_resource(resourceArn=arn("job", children[0]), tags={"a": "1"})  # children are not taggable
    with pytest.raises(batch.exceptions.ClientException):
        batch.list_jobs(jobQueue=queue, arrayJobId=parent)  # exactly one of jobQueue / arrayJobId

    listed = batch.list_jobs(arrayJobId=parent, jobStatus="RUNNABLE")["jobSummaryList"]
    assert ids_of(listed) == children  # index order
    assert [s["arrayProperties"]["index"] for s in listed] == [0, 1, 2]
    assert ids_of(list_all(batch, arrayJobId=parent, jobStatus="RUNNABLE", maxResults=2)) == children
    assert batch.list_jobs(arrayJobId=parent)["jobSummaryList"] == []  # default jobStatus is RUNNING
    # The parent itself is listed in its queue (as PENDING); its children are not.
    in_queue = ids_of(list_all(batch, jobQueue=queue, jobStatus="PENDING"))
    assert in_queue == [parent]
    assert ids_of(list_all(batch, jobQueue=queue, jobStatus="RUNNABLE")) == []

    batch.cancel_job(jobId=parent, reason="array no longer needed")
    for child in children:
        job = wait_for(batch, child, {"FAILED"}, timeout=30)
        assert job["statusReason"] == "array no longer needed"
        assert job["isCancelled"] is True
    detail = wait_for(batch, parent, {"FAILED"}, timeout=30)
    assert detail["arrayProperties"]["statusSummary"].get("FAILED") == 3
    # Which reason the parent shows is not documented: the caller's or the child-failure text.
    assert detail["statusReason"] in {"array no longer needed", "Array Child Job failed"}


# ------------------------------------------------------------------------------------------- ListJobs


def test_list_jobs_filters(batch: Any) -> None:
    queue = make_parked_queue(batch)
    prefix = unique("f")
    def_a, def_b = register_shell(batch, "true"), register_shell(batch, "true")
    name_a = def_a.split(":")[0]
    ids, names = [], [f"{prefix}-alpha-1", f"{prefix}-alpha-2", f"{prefix}-beta-1"]
    for job_name, definition in zip(names, [def_a, def_a, def_b], strict=True):
        ids.append(batch.submit_job(jobName=job_name, jobQueue=queue, jobDefinition=definition)["jobId"])
        time.sleep(0.02)  # distinct createdAt values
    jobs = [wait_for(batch, job_id, {"RUNNABLE"}, timeout=30) for job_id in ids]
    created = [job["createdAt"] for job in jobs]
    assert created == sorted(created) and len(set(created)) == 3

    def listed(**params: Any) -> list[str]:
        return ids_of(list_all(batch, jobQueue=queue, **params))

    def by(name: str, value: str, **params: Any) -> list[str]:
        return listed(filters=[{"name": name, "values": [value]}], **params)

    # Without a filter, jobStatus decides (default RUNNING).
    assert listed() == []
    assert sorted(listed(jobStatus="RUNNABLE")) == sorted(ids)
    assert listed(jobStatus="SUCCEEDED") == []
    # A filter makes jobStatus ignored; filtered results are newest first.
    assert by("JOB_NAME", names[0]) == [ids[0]]
    assert by("JOB_NAME", names[0], jobStatus="SUCCEEDED") == [ids[0]]
    assert by("JOB_NAME", f"{prefix}-alpha*") == [ids[1], ids[0]]
    assert by("JOB_NAME", f"{prefix}-*") == [ids[2], ids[1], ids[0]]
    assert by("JOB_NAME", f"{prefix}-alpha") == []  # exact without '*'
    assert by("JOB_NAME", names[0].upper()) == [ids[0]]  # case-insensitive, as the model documents
    assert by("JOB_NAME", f"{prefix}-ALPHA*".upper()) == [ids[1], ids[0]]
    assert by("JOB_DEFINITION", name_a) == [ids[1], ids[0]]
    assert by("JOB_DEFINITION", arn("job-definition", def_b)) == [ids[2]]
    assert by("JOB_DEFINITION", def_b) == [ids[2]]
    assert by("JOB_DEFINITION", name_a[:-2] + "*") == [ids[1], ids[0]]  # prefix of the definition name
    assert by("JOB_DEFINITION", name_a[:-3]) == []  # without '*' the name must match exactly
    assert by("AFTER_CREATED_AT", str((created[0] + created[1]) // 2)) == [ids[2], ids[1]]
    assert by("BEFORE_CREATED_AT", str((created[1] + created[2]) // 2)) == [ids[1], ids[0]]
    assert by("AFTER_CREATED_AT", str(now_ms() + 60_000)) == []

    summaries = list_all(batch, jobQueue=queue, jobStatus="RUNNABLE")
    for summary in summaries:
        assert summary["jobArn"] == arn("job", summary["jobId"])
        assert summary["jobName"] in names
        assert summary["status"] == "RUNNABLE"
        assert isinstance(summary["createdAt"], int)
        assert summary["jobDefinition"].startswith(arn("job-definition", ""))
        assert "isCancelled" not in summary
        assert "isTerminated" not in summary
        assert "arrayProperties" not in summary

    with pytest.raises(batch.exceptions.ClientException):
        batch.list_jobs(jobQueue=queue, filters=[{"name": "BOGUS", "values": ["x"]}])
    with pytest.raises(batch.exceptions.ClientException):
        batch.list_jobs(jobQueue=queue, jobStatus="BOGUS")


def test_list_jobs_pagination(batch: Any) -> None:
    queue = make_parked_queue(batch)
    definition = register_shell(batch, "true")
    prefix = unique("page")
    ids = [
        batch.submit_job(jobName=f"{prefix}-{i}", jobQueue=queue, jobDefinition=definition)["jobId"] for i in range(7)
    ]
    for job_id in ids:
        wait_for(batch, job_id, {"RUNNABLE"}, timeout=30)

    pages, token = [], None
    for _ in range(10):
        page = batch.list_jobs(
            jobQueue=queue, jobStatus="RUNNABLE", maxResults=3, **({"nextToken": token} if token else {})
        )
        pages.append(ids_of(page["jobSummaryList"]))
        token = page.get("nextToken")
        if not token:
            break
    assert token is None
    assert [len(page) for page in pages] == [3, 3, 1]
    seen = [job_id for page in pages for job_id in page]
    assert sorted(seen) == sorted(ids)  # each job exactly once

    paginator = batch.get_paginator("list_jobs")
    boto_pages = list(paginator.paginate(jobQueue=queue, jobStatus="RUNNABLE", PaginationConfig={"PageSize": 3}))
    assert [len(p["jobSummaryList"]) for p in boto_pages] == [3, 3, 1]
    assert sorted(ids_of([s for p in boto_pages for s in p["jobSummaryList"]])) == sorted(ids)

    filtered = list(
        paginator.paginate(
            jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [f"{prefix}-*"]}], PaginationConfig={"PageSize": 2}
        )
    )
    assert [len(p["jobSummaryList"]) for p in filtered] == [2, 2, 2, 1]
    assert ids_of([s for p in filtered for s in p["jobSummaryList"]]) == ids[::-1]  # newest first

    with pytest.raises(batch.exceptions.ClientException):
        batch.list_jobs(jobQueue=queue, jobStatus="RUNNABLE", maxResults=0)
    with pytest.raises(batch.exceptions.ClientException):
        batch.list_jobs(jobQueue=queue, jobStatus="RUNNABLE", nextToken="not-a-token")
    limited = list(
        paginator.paginate(jobQueue=queue, jobStatus="RUNNABLE", PaginationConfig={"PageSize": 2, "MaxItems": 5})
    )
    assert sum(len(p["jobSummaryList"]) for p in limited) == 5


# -------------------------------------------------------------------------------- CancelJob/TerminateJob


def test_cancel_runnable_job_with_max_resource_diagnostic(batch: Any) -> None:
    queue = make_queue(batch, max_vcpus=1)
    definition = register_shell(batch, "true", vcpus=2)
    job_id = submit(batch, queue, definition)

    def diagnosed() -> dict[str, Any] | None:
        job = describe_one(batch, job_id)
        return job if (job.get("statusReason") or "").startswith(MAX_RESOURCE_PREFIX) else None

    job = poll(diagnosed, "the MAX_RESOURCE diagnostic")
    assert job["status"] == "RUNNABLE"
    assert job["statusReason"] == (
        "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - All compute environments have a maxVcpu "
        "setting that is smaller than the job requirements."
    )

    response = batch.cancel_job(jobId=job_id, reason="too big for this queue")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    job = wait_for(batch, job_id, timeout=10)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "too big for this queue"
    assert job["isCancelled"] is True
    assert job["attempts"] == []
    assert isinstance(job["stoppedAt"], int)
    assert "startedAt" not in job
    [summary] = [s for s in list_all(batch, jobQueue=queue, jobStatus="FAILED") if s["jobId"] == job_id]
    assert summary["isCancelled"] is True
    assert "isTerminated" not in summary
    assert summary["statusReason"] == "too big for this queue"
    # Cancelling a finished job changes nothing.
    batch.cancel_job(jobId=job_id, reason="again")
    assert describe_one(batch, job_id)["statusReason"] == "too big for this queue"


def test_terminate_runnable_job_acts_like_cancel(batch: Any, parked: str) -> None:
    job_id = submit(batch, parked, register_shell(batch, "true"))
    wait_for(batch, job_id, {"RUNNABLE"}, timeout=30)
    batch.terminate_job(jobId=job_id, reason="not wanted")
    job = wait_for(batch, job_id, timeout=10)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "not wanted"
    assert job["isTerminated"] is True
    assert job["attempts"] == []
    [summary] = [s for s in list_all(batch, jobQueue=parked, jobStatus="FAILED") if s["jobId"] == job_id]
    assert summary["isTerminated"] is True
    assert "isCancelled" not in summary


def test_cancel_and_terminate_jobs_in_bulk(batch: Any, parked: str) -> None:
    definition = register_shell(batch, "true")
    to_cancel = [submit(batch, parked, definition) for _ in range(2)]
    to_terminate = [submit(batch, parked, definition) for _ in range(2)]
    unknown = str(uuid.uuid4())
    with pytest.raises(batch.exceptions.ClientException):
        batch.cancel_jobs(jobs=[str(uuid.uuid4()) for _ in range(51)], reason="too many")
    with pytest.raises(batch.exceptions.ClientException):
        batch.cancel_job(jobId=to_cancel[0], reason="x" * 1025)

    result = batch.cancel_jobs(jobs=[*to_cancel, unknown], reason="bulk cancel")
    assert sorted(result["successful"]) == sorted([*to_cancel, unknown])
    assert result["errors"] == []
    result = batch.terminate_jobs(jobs=[*to_terminate, unknown], reason="bulk terminate")
    assert sorted(result["successful"]) == sorted([*to_terminate, unknown])
    assert result["errors"] == []

    for job_id in to_cancel:
        job = wait_for(batch, job_id, timeout=10)
        assert (job["status"], job["statusReason"], job["isCancelled"]) == ("FAILED", "bulk cancel", True)
    for job_id in to_terminate:
        job = wait_for(batch, job_id, timeout=10)
        assert (job["status"], job["statusReason"], job["isTerminated"]) == ("FAILED", "bulk terminate", True)


def test_running_jobs_listing_cancel_no_effect_and_terminate(batch: Any, runner: str) -> None:
    done = submit(batch, runner, register_shell(batch, "echo done"))
    wait_for(batch, done, {"SUCCEEDED"}, timeout=30)
    napper = submit(batch, runner, register_shell(batch, "sleep 2"))
    wait_for(batch, napper, {"RUNNING"}, timeout=30)

    # ListJobs without jobStatus lists RUNNING jobs only.
    running = ids_of(list_all(batch, jobQueue=runner))
    assert napper in running
    assert done not in running
    assert done in ids_of(list_all(batch, jobQueue=runner, jobStatus="SUCCEEDED"))
    assert napper not in ids_of(list_all(batch, jobQueue=runner, jobStatus="SUCCEEDED"))

    # CancelJob on a RUNNING job: HTTP 200 and nothing happens.
    response = batch.cancel_job(jobId=napper, reason="too late to cancel")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert describe_one(batch, napper)["status"] == "RUNNING"
    job = wait_for(batch, napper, timeout=30)
    assert job["status"] == "SUCCEEDED"
    assert job["statusReason"] == ESSENTIAL
    assert job["container"]["exitCode"] == 0

    # TerminateJob on a RUNNING job stops it quickly with the caller's reason.
    sleeper = submit(batch, runner, register_shell(batch, "sleep 60"))
    wait_for(batch, sleeper, {"RUNNING"}, timeout=30)
    started = time.monotonic()
    batch.terminate_job(jobId=sleeper, reason="operator stopped it")
    job = wait_for(batch, sleeper, timeout=20)
    assert time.monotonic() - started < 15
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "operator stopped it"
    assert job["isTerminated"] is True
    assert len(job["attempts"]) == 1
    assert job["startedAt"] <= job["stoppedAt"]
    [summary] = [s for s in list_all(batch, jobQueue=runner, jobStatus="FAILED") if s["jobId"] == sleeper]
    assert summary["isTerminated"] is True
    assert "isCancelled" not in summary


# ------------------------------------------------------------------------------------------------ tags


def test_tags_on_job_definition_queue_and_compute_environment(batch: Any, parked: str) -> None:
    ce = make_ce(batch, tags={"created": "ce"})
    queue = unique("q")
    queue_arn = batch.create_job_queue(
        jobQueueName=queue,
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}],
        tags={"created": "queue"},
    )["jobQueueArn"]
    definition_arn = batch.register_job_definition(
        jobDefinitionName=unique("jd"),
        type="container",
        containerProperties={"image": "host", "vcpus": 1, "memory": 64, "command": ["true"]},
        tags={"created": "definition"},
    )["jobDefinitionArn"]
    job_arn = batch.submit_job(
        jobName=unique("job"), jobQueue=parked, jobDefinition=definition_arn, tags={"created": "job"}
    )["jobArn"]
    resources = {
        arn("compute-environment", ce): "ce",
        queue_arn: "queue",
        definition_arn: "definition",
        job_arn: "job",
    }
    for resource_arn, kind in resources.items():
        assert batch.list_tags_for_resource(resourceArn=resource_arn)["tags"] == {"created": kind}
        response = batch.tag_resource(resourceArn=resource_arn, tags={"a": "1", "b": "2"})
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert batch.list_tags_for_resource(resourceArn=resource_arn)["tags"] == {"created": kind, "a": "1", "b": "2"}
        batch.tag_resource(resourceArn=resource_arn, tags={"a": "changed"})
        assert batch.list_tags_for_resource(resourceArn=resource_arn)["tags"]["a"] == "changed"
        response = batch.untag_resource(resourceArn=resource_arn, tagKeys=["a", "created"])
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert batch.list_tags_for_resource(resourceArn=resource_arn)["tags"] == {"b": "2"}

    # The describe operations show the same tags.
    [ce_detail] = batch.describe_compute_environments(computeEnvironments=[ce])["computeEnvironments"]
    assert ce_detail["tags"] == {"b": "2"}
    [queue_detail] = batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
    assert queue_detail["tags"] == {"b": "2"}
    [definition_detail] = batch.describe_job_definitions(jobDefinitions=[definition_arn])["jobDefinitions"]
    assert definition_detail["tags"] == {"b": "2"}
    assert describe_one(batch, job_arn.rsplit("/", 1)[-1])["tags"] == {"b": "2"}

    with pytest.raises(ClientError):
        batch.list_tags_for_resource(resourceArn=arn("job-queue", unique("no-such-queue")))


# ------------------------------------------------------------------------------------ jobs really run


def test_job_runs_to_success_with_attempt_details(batch: Any, runner: str) -> None:
    definition = register_shell(batch, "echo hello from kiln")
    definition_name = definition.split(":")[0]
    job_id = submit(batch, runner, definition)
    job = wait_for(batch, job_id, timeout=30)
    assert job["status"] == "SUCCEEDED"
    assert job["statusReason"] == ESSENTIAL
    assert job["container"]["exitCode"] == 0
    assert len(job["attempts"]) == 1
    attempt = job["attempts"][0]
    stream = attempt["container"]["logStreamName"]
    assert re.fullmatch(rf"{re.escape(definition_name)}/default/[A-Za-z0-9-]+", stream), stream
    assert attempt["container"]["exitCode"] == 0
    assert attempt["statusReason"] == ESSENTIAL
    assert attempt["startedAt"] <= attempt["stoppedAt"]
    assert job["container"]["logStreamName"] == stream
    assert job["createdAt"] <= job["startedAt"] <= job["stoppedAt"]
    assert all(isinstance(job[key], int) for key in ("createdAt", "startedAt", "stoppedAt"))
    assert job["isCancelled"] is False
    assert job["isTerminated"] is False
    [summary] = [s for s in list_all(batch, jobQueue=runner, jobStatus="SUCCEEDED") if s["jobId"] == job_id]
    assert summary["container"]["exitCode"] == 0
    assert summary["startedAt"] == job["startedAt"]
    assert summary["stoppedAt"] == job["stoppedAt"]
    assert "isCancelled" not in summary
    assert "isTerminated" not in summary
    # Cancel/terminate of a finished job: HTTP 200 and no change.
    batch.cancel_job(jobId=job_id, reason="late")
    batch.terminate_job(jobId=job_id, reason="late")
    after = describe_one(batch, job_id)
    assert (after["status"], after["statusReason"], after["isTerminated"]) == ("SUCCEEDED", ESSENTIAL, False)


def test_job_with_nonzero_exit_fails(batch: Any, runner: str) -> None:
    job = wait_for(batch, submit(batch, runner, register_shell(batch, "exit 3")), timeout=30)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == ESSENTIAL
    assert job["container"]["exitCode"] == 3
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [3]
