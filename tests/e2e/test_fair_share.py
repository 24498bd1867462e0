"""Scheduling policies and fair-share queues through boto3 against a real server (facts §1a, §1d)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import register_shell, unique, wait_for

PREFIX = "arn:aws:batch:us-east-1:123456789012"


def _policy(batch: Any, shares: dict[str, float] | None = None, **fairshare: Any) -> str:
    distribution = [{"shareIdentifier": s, "weightFactor": w} for s, w in (shares or {}).items()]
    policy = {"shareDistribution": distribution, **fairshare}
    return str(batch.create_scheduling_policy(name=unique("fs"), fairsharePolicy=policy)["arn"])


def _fair_queue(batch: Any, policy_arn: str | None, max_vcpus: int = 1) -> str:
    ce, queue = unique("ce"), unique("q")
    batch.create_compute_environment(
        computeEnvironmentName=ce,
        type="MANAGED",
        computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": max_vcpus},
    )
    extra = {"schedulingPolicyArn": policy_arn} if policy_arn else {}
    batch.create_job_queue(jobQueueName=queue, priority=1, **extra,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])  # fmt: skip
    return queue


def _submit(batch: Any, queue: str, definition: str, share: str | None, **extra: Any) -> str:
    if share is not None:
        extra["shareIdentifier"] = share
    return str(batch.submit_job(jobName=unique("job"), jobQueue=queue, jobDefinition=definition, **extra)["jobId"])


def _rejected(call: Any, fragment: str, **params: Any) -> None:
    with pytest.raises(ClientError) as info:
        call(**params)
    assert info.value.response["Error"]["Code"] == "ClientException"
    assert fragment in info.value.response["Error"]["Message"]


# --------------------------------------------------------------------------------- the five operations


def test_create_describe_list_update_delete(batch: Any) -> None:
    name = unique("policy")
    fairshare = {"shareDecaySeconds": 3600, "computeReservation": 10,
                 "shareDistribution": [{"shareIdentifier": "teamA", "weightFactor": 0.5},
                                       {"shareIdentifier": "render*", "weightFactor": 2.0}]}  # fmt: skip
    created = batch.create_scheduling_policy(name=name, fairsharePolicy=fairshare, tags={"team": "vfx"})
    arn = f"{PREFIX}:scheduling-policy/{name}"
    assert (created["name"], created["arn"]) == (name, arn)
    [detail] = batch.describe_scheduling_policies(arns=[arn, f"{PREFIX}:scheduling-policy/missing"])[
        "schedulingPolicies"
    ]
    assert detail == {"name": name, "arn": arn, "fairsharePolicy": fairshare, "tags": {"team": "vfx"}}
    listed = [
        p["arn"]
        for page in batch.get_paginator("list_scheduling_policies").paginate()
        for p in page["schedulingPolicies"]
    ]
    assert arn in listed
    other = _policy(batch)
    first = batch.list_scheduling_policies(maxResults=1)
    assert len(first["schedulingPolicies"]) == 1
    second = batch.list_scheduling_policies(maxResults=100, nextToken=first["nextToken"])["schedulingPolicies"]
    assert {first["schedulingPolicies"][0]["arn"], *[p["arn"] for p in second]} >= {arn, other}
    batch.update_scheduling_policy(arn=arn, fairsharePolicy={"shareDecaySeconds": 60})
    updated = batch.describe_scheduling_policies(arns=[arn])["schedulingPolicies"][0]
    assert updated["fairsharePolicy"] == {"shareDecaySeconds": 60}
    assert updated["tags"] == {"team": "vfx"}
    batch.tag_resource(resourceArn=arn, tags={"stage": "prod"})
    assert batch.list_tags_for_resource(resourceArn=arn)["tags"] == {"team": "vfx", "stage": "prod"}
    batch.untag_resource(resourceArn=arn, tagKeys=["team"])
    assert batch.list_tags_for_resource(resourceArn=arn)["tags"] == {"stage": "prod"}
    batch.delete_scheduling_policy(arn=arn)
    assert batch.describe_scheduling_policies(arns=[arn])["schedulingPolicies"] == []
    assert arn not in [p["arn"] for p in batch.list_scheduling_policies()["schedulingPolicies"]]
    _rejected(batch.delete_scheduling_policy, "not found", arn=arn)


INVALID_POLICIES = [
    pytest.param({"name": "bad name"}, "is not supported pattern", id="name-space"),
    pytest.param({"name": "x" * 129}, "is not supported pattern", id="name-129"),
    pytest.param({"fairsharePolicy": {"shareDecaySeconds": 604_801}}, "shareDecaySeconds must be between 0 and 604800", id="decay-high"),
    pytest.param({"fairsharePolicy": {"shareDecaySeconds": -1}}, "shareDecaySeconds must be between", id="decay-negative"),
    pytest.param({"fairsharePolicy": {"computeReservation": 100}}, "computeReservation must be between 0 and 99", id="reservation"),
    pytest.param({"fairsharePolicy": {"shareDistribution": [{"shareIdentifier": "a", "weightFactor": 0.00001}]}},
                 "weightFactor of a must be between 0.0001 and 999.9999", id="weight-low"),
    pytest.param({"fairsharePolicy": {"shareDistribution": [{"shareIdentifier": "a", "weightFactor": 1000.0}]}},
                 "weightFactor of a must be between", id="weight-high"),
    pytest.param({"fairsharePolicy": {"shareDistribution": [{"shareIdentifier": f"s{i}"} for i in range(501)]}},
                 "at most 500 share identifiers", id="501-shares"),
    pytest.param({"fairsharePolicy": {"shareDistribution": [{"shareIdentifier": "UserA*"}, {"shareIdentifier": "UserA1"}]}},
                 "overlap", id="overlap"),
    pytest.param({"fairsharePolicy": {"shareDistribution": [{"shareIdentifier": "a"}, {"shareIdentifier": "a"}]}},
                 "overlap", id="duplicate-share"),
    pytest.param({"fairsharePolicy": {"shareDistribution": [{"shareIdentifier": "a b"}]}}, "must be 1-255", id="share-space"),
    pytest.param({"fairsharePolicy": {"shareDistribution": [{"shareIdentifier": "a" * 256}]}}, "must be 1-255", id="share-256"),
    pytest.param({"quotaSharePolicy": {"idleResourceAssignmentStrategy": "FIFO"}}, "quotaSharePolicy is not supported", id="quota"),
    pytest.param({"tags": {"aws:x": "y"}}, "reserved", id="tags"),
]  # fmt: skip


@pytest.mark.parametrize(("params", "fragment"), INVALID_POLICIES)
def test_invalid_policies_are_refused(batch: Any, params: dict[str, Any], fragment: str) -> None:
    _rejected(batch.create_scheduling_policy, fragment, **{"name": unique("p"), **params})


def test_valid_edges_and_duplicate_name(batch: Any) -> None:
    name = unique("edge")
    policy = {"shareDecaySeconds": 604_800, "computeReservation": 99,
              "shareDistribution": [{"shareIdentifier": "a", "weightFactor": 0.0001},
                                    {"shareIdentifier": "b" * 255 + "*", "weightFactor": 999.9999}]}  # fmt: skip
    batch.create_scheduling_policy(name=name, fairsharePolicy=policy)
    _rejected(batch.create_scheduling_policy, "already exists", name=name)
    _rejected(batch.update_scheduling_policy, "computeReservation must be between", arn=f"{PREFIX}:scheduling-policy/{name}",
              fairsharePolicy={"computeReservation": -1})  # fmt: skip


# ---------------------------------------------------------------------------------------- queues


def test_queue_policy_rules(batch: Any) -> None:
    first, second = _policy(batch), _policy(batch)
    queue = _fair_queue(batch, first)
    assert batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["schedulingPolicyArn"] == first
    _rejected(batch.delete_scheduling_policy, f"job queue(s) {queue} use it", arn=first)
    batch.update_job_queue(jobQueue=queue, schedulingPolicyArn=second)  # swapping is allowed
    assert batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["schedulingPolicyArn"] == second
    _rejected(batch.update_job_queue, "can be replaced but not removed", jobQueue=queue, schedulingPolicyArn="")
    batch.delete_scheduling_policy(arn=first)  # no longer used
    fifo = _fair_queue(batch, None)
    assert "schedulingPolicyArn" not in batch.describe_job_queues(jobQueues=[fifo])["jobQueues"][0]
    _rejected(batch.update_job_queue, "cannot be added to it later", jobQueue=fifo, schedulingPolicyArn=second)
    _rejected(_fair_queue, "not found", batch=batch, policy_arn=f"{PREFIX}:scheduling-policy/nope")
    batch.update_job_queue(jobQueue=queue, state="DISABLED")
    batch.delete_job_queue(jobQueue=queue)
    batch.delete_scheduling_policy(arn=second)


def test_submit_share_rules_and_details(batch: Any) -> None:
    queue = _fair_queue(batch, _policy(batch))
    fifo = _fair_queue(batch, None)
    definition = register_shell(batch, "true", schedulingPriority=7)
    _rejected(_submit, "shareIdentifier is required", batch=batch, queue=queue, definition=definition, share=None)
    _rejected(
        _submit,
        "only valid on a job queue with a fair-share",
        batch=batch,
        queue=fifo,
        definition=definition,
        share="a",
    )
    _rejected(_submit, "must be 1-255", batch=batch, queue=queue, definition=definition, share="a b")
    _rejected(_submit, "schedulingPriorityOverride must be between 0 and 9999", batch=batch, queue=queue,
              definition=definition, share="a", schedulingPriorityOverride=10_000)  # fmt: skip
    plain = _submit(batch, queue, definition, "teamA")
    overridden = _submit(batch, queue, definition, "teamB", schedulingPriorityOverride=42)
    array = _submit(batch, queue, definition, "teamA", arrayProperties={"size": 2})
    for job_id in (plain, overridden, array):
        assert wait_for(batch, job_id)["status"] == "SUCCEEDED"
    details = {j["jobId"]: j for j in batch.describe_jobs(jobs=[plain, overridden, array, f"{array}:1"])["jobs"]}
    assert (details[plain]["shareIdentifier"], details[plain]["schedulingPriority"]) == ("teamA", 7)
    assert (details[overridden]["shareIdentifier"], details[overridden]["schedulingPriority"]) == ("teamB", 42)
    assert details[f"{array}:1"]["shareIdentifier"] == "teamA"
    in_a = batch.list_jobs(jobQueue=queue, filters=[{"name": "SHARE_IDENTIFIER", "values": ["teamA"]}])[
        "jobSummaryList"
    ]
    assert [j["jobId"] for j in in_a] == [array, plain]  # newest first, top-level only
    assert {j["shareIdentifier"] for j in in_a} == {"teamA"}
    combined = batch.list_jobs(
        jobQueue=queue, jobStatus="RUNNING", filters=[{"name": "SHARE_IDENTIFIER", "values": ["teamA"]}]
    )
    assert combined["jobSummaryList"] == []  # SHARE_IDENTIFIER combines with jobStatus
    succeeded = batch.list_jobs(
        jobQueue=queue, jobStatus="SUCCEEDED", filters=[{"name": "SHARE_IDENTIFIER", "values": ["teamB"]}]
    )
    assert [j["jobId"] for j in succeeded["jobSummaryList"]] == [overridden]
    pages = batch.get_paginator("list_jobs").paginate(
        jobQueue=queue, filters=[{"name": "SHARE_IDENTIFIER", "values": ["teamA"]}], PaginationConfig={"PageSize": 1}
    )
    assert [j["jobId"] for page in pages for j in page["jobSummaryList"]] == [array, plain]
    children = batch.list_jobs(arrayJobId=array, jobStatus="SUCCEEDED")["jobSummaryList"]
    assert {j["shareIdentifier"] for j in children} == {"teamA"}


# ------------------------------------------------------------------------------------------ scheduling


def _blocked_queue(batch: Any, shares: dict[str, float]) -> tuple[str, str]:
    """A one-vCPU fair-share queue, kept busy for a few seconds so that jobs submitted now are all
    RUNNABLE before the first of them is placed. Returns (queue, blocker job id)."""
    queue = _fair_queue(batch, _policy(batch, shares), max_vcpus=1)
    blocker = _submit(batch, queue, register_shell(batch, "sleep 3"), "blocker")
    wait_for(batch, blocker, {"RUNNING"})
    return queue, blocker


def _start_order(batch: Any, ids: list[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = [
            j for start in range(0, len(ids), 100) for j in batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]
        ]
        if all(j["status"] in {"SUCCEEDED", "FAILED"} for j in jobs):
            assert all(j["status"] == "SUCCEEDED" for j in jobs)
            return sorted(jobs, key=lambda j: j["startedAt"])
        time.sleep(0.2)
    raise AssertionError("fair-share jobs did not finish in 120 s")


def test_lower_weight_share_gets_three_times_the_placements(batch: Any) -> None:
    queue, _ = _blocked_queue(batch, {"light": 1.0, "heavy": 3.0})
    definition = register_shell(batch, "sleep 0.2")
    # The heavy share queues first: FIFO alone would run all of it before any light job.
    heavy = [_submit(batch, queue, definition, "heavy") for _ in range(12)]
    light = [_submit(batch, queue, definition, "light") for _ in range(12)]
    order = _start_order(batch, heavy + light)
    first = Counter(job["shareIdentifier"] for job in order[:12])
    assert 8 <= first["light"] <= 10, [job["shareIdentifier"] for job in order]
    assert first["light"] + first["heavy"] == 12


def test_higher_scheduling_priority_first_within_a_share(batch: Any) -> None:
    queue, _ = _blocked_queue(batch, {})
    definition = register_shell(batch, "true", schedulingPriority=5)
    priorities = [1, None, 3, 9, None, 0]  # None: the definition's 5
    ids = [
        _submit(batch, queue, definition, "only", **({} if p is None else {"schedulingPriorityOverride": p}))
        for p in priorities
    ]
    order = [job["jobId"] for job in _start_order(batch, ids)]
    assert order == [ids[3], ids[1], ids[4], ids[2], ids[0], ids[5]]  # 9, 5, 5 (FIFO), 3, 1, 0
