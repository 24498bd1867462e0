"""The consumable-resource operations and `consumableResourceProperties` through boto3 against a real
`kiln server`: CRUD, errors, filters, pagination, tags, and what definitions and jobs store and show.
Jobs here never run (a parked queue); scheduling with resources is tests/e2e/test_consumable_resources.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.test_operations import arn, describe_one, make_parked_queue
from tests.support import register_shell, submit, unique


def _error(call: Any, **params: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"]["Message"]


def _create(batch: Any, total: int = 2, **extra: Any) -> str:
    name = unique("cr")
    batch.create_consumable_resource(consumableResourceName=name, totalQuantity=total, **extra)
    return name


@pytest.fixture(scope="module")
def parked(batch: Any) -> str:
    return make_parked_queue(batch)


def test_create_describe_update_delete(batch: Any) -> None:
    name = unique("cr")
    created = batch.create_consumable_resource(
        consumableResourceName=name, totalQuantity=5, resourceType="NON_REPLENISHABLE", tags={"team": "a"}
    )
    resource_arn = arn("consumable-resource", name)
    assert {k: created[k] for k in ("consumableResourceName", "consumableResourceArn")} == {
        "consumableResourceName": name,
        "consumableResourceArn": resource_arn,
    }
    described = batch.describe_consumable_resource(consumableResource=name)
    assert described["consumableResourceArn"] == resource_arn
    assert (described["totalQuantity"], described["inUseQuantity"], described["availableQuantity"]) == (5, 0, 5)
    assert described["resourceType"] == "NON_REPLENISHABLE"
    assert described["tags"] == {"team": "a"}
    assert described["createdAt"] > 0
    by_arn = batch.describe_consumable_resource(consumableResource=resource_arn)
    assert by_arn["consumableResourceName"] == name

    for operation, quantity, total in (("ADD", 3, 8), ("REMOVE", 2, 6), ("SET", 10, 10), ("REMOVE", 10, 0)):
        answer = batch.update_consumable_resource(consumableResource=name, operation=operation, quantity=quantity)
        assert (answer["consumableResourceName"], answer["totalQuantity"]) == (name, total)
    assert batch.describe_consumable_resource(consumableResource=name)["totalQuantity"] == 0

    batch.delete_consumable_resource(consumableResource=resource_arn)
    status, code, message = _error(batch.describe_consumable_resource, consumableResource=name)
    assert (status, code, message) == (400, "ClientException", f"Consumable resource {name} does not exist")


def test_defaults_are_replenishable_and_zero(batch: Any) -> None:
    name = unique("cr")
    batch.create_consumable_resource(consumableResourceName=name)
    described = batch.describe_consumable_resource(consumableResource=name)
    assert (described["resourceType"], described["totalQuantity"], described["availableQuantity"]) == (
        "REPLENISHABLE", 0, 0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"totalQuantity": -1}, "totalQuantity must be a non-negative number (got -1)"),
        (
            {"resourceType": "SOMETIMES"},
            "resourceType must be one of REPLENISHABLE, NON_REPLENISHABLE (got 'SOMETIMES')",
        ),
        ({"consumableResourceName": "bad name"}, "Provided name bad name is not supported pattern"),
        ({"tags": {"aws:x": "y"}}, "Tag key 'aws:x': the aws: prefix is reserved"),
    ],
)
def test_create_refuses_bad_input(batch: Any, params: dict[str, Any], message: str) -> None:
    request = {"consumableResourceName": unique("cr"), **params}
    status, code, text = _error(batch.create_consumable_resource, **request)
    assert (status, code) == (400, "ClientException")
    assert text.startswith(message), text


def test_duplicate_name_unknown_resource_and_bad_updates_are_client_errors(batch: Any) -> None:
    name = _create(batch, total=3)
    assert _error(batch.create_consumable_resource, consumableResourceName=name) == (
        400, "ClientException", f"Object already exists: consumable resource {name}",
    )  # fmt: skip
    missing = unique("missing")
    for call in (batch.describe_consumable_resource, batch.delete_consumable_resource):
        assert _error(call, consumableResource=missing) == (
            400, "ClientException", f"Consumable resource {missing} does not exist",
        )  # fmt: skip
    assert _error(batch.update_consumable_resource, consumableResource=missing, quantity=1)[2] == (
        f"Consumable resource {missing} does not exist"
    )
    assert _error(batch.update_consumable_resource, consumableResource=name, operation="REMOVE", quantity=4)[2] == (
        f"Cannot REMOVE 4 from consumable resource {name}: its totalQuantity is 3"
    )
    assert _error(batch.update_consumable_resource, consumableResource=name, operation="ADD", quantity=-1)[2] == (
        "quantity must be a non-negative number (got -1)"
    )
    assert _error(batch.update_consumable_resource, consumableResource=name, operation="DOUBLE", quantity=1)[2] == (
        "operation must be one of SET, ADD, REMOVE (got 'DOUBLE')"
    )
    assert _error(batch.describe_consumable_resource, consumableResource=arn("job-queue", name))[2] == (
        f"{arn('job-queue', name)} is not a consumable-resource ARN"
    )
    assert batch.describe_consumable_resource(consumableResource=name)["totalQuantity"] == 3


def test_update_with_a_client_token_happens_once(batch: Any) -> None:
    name = _create(batch, total=1)
    for _ in range(2):
        answer = batch.update_consumable_resource(
            consumableResource=name, operation="ADD", quantity=2, clientToken="t1"
        )
        assert answer["totalQuantity"] == 3
    assert batch.describe_consumable_resource(consumableResource=name)["totalQuantity"] == 3
    status, _, message = _error(
        batch.update_consumable_resource, consumableResource=name, operation="ADD", quantity=5, clientToken="t1"
    )
    assert (status, message) == (400, f"clientToken t1 was already used for a different update of {name}")
    batch.update_consumable_resource(consumableResource=name, operation="ADD", quantity=2, clientToken="t2")
    assert batch.describe_consumable_resource(consumableResource=name)["totalQuantity"] == 5


def test_list_filters_and_pages(batch: Any) -> None:
    prefix = unique("Page")
    names = [f"{prefix}-{i}" for i in range(5)]
    for name in names:
        batch.create_consumable_resource(consumableResourceName=name, totalQuantity=7)
    filters = [{"name": "CONSUMABLE_RESOURCE_NAME", "values": [f"{prefix.lower()}*"]}]
    seen: list[str] = []
    token: str | None = None
    for _ in range(10):
        page = batch.list_consumable_resources(filters=filters, maxResults=2, **({"nextToken": token} if token else {}))
        assert len(page["consumableResources"]) <= 2
        seen += [summary["consumableResourceName"] for summary in page["consumableResources"]]
        token = page.get("nextToken")
        if not token:
            break
    assert seen == names
    exact = batch.list_consumable_resources(
        filters=[{"name": "CONSUMABLE_RESOURCE_NAME", "values": [names[3].upper()]}]
    )
    summary = exact["consumableResources"]
    assert [
        (s["consumableResourceName"], s["totalQuantity"], s["inUseQuantity"], s["resourceType"]) for s in summary
    ] == [(names[3], 7, 0, "REPLENISHABLE")]
    assert summary[0]["consumableResourceArn"] == arn("consumable-resource", names[3])
    assert "nextToken" not in exact
    assert _error(batch.list_consumable_resources, filters=[{"name": "NAME", "values": ["x"]}])[2] == (
        "Invalid filter name 'NAME': must be one of CONSUMABLE_RESOURCE_NAME"
    )
    assert (
        _error(batch.list_consumable_resources, maxResults=101)[2] == "maxResults must be between 1 and 100 (got 101)"
    )
    assert _error(batch.list_consumable_resources, nextToken="garbage")[2].startswith("Invalid nextToken")


def test_tags_like_other_resources(batch: Any) -> None:
    name = _create(batch)
    resource_arn = arn("consumable-resource", name)
    batch.tag_resource(resourceArn=resource_arn, tags={"a": "1", "b": "2"})
    batch.untag_resource(resourceArn=resource_arn, tagKeys=["a"])
    assert batch.list_tags_for_resource(resourceArn=resource_arn)["tags"] == {"b": "2"}
    assert batch.describe_consumable_resource(consumableResource=name)["tags"] == {"b": "2"}
    missing = arn("consumable-resource", unique("missing"))
    assert _error(batch.tag_resource, resourceArn=missing, tags={"a": "1"})[2] == f"Resource {missing} not found"


def test_definitions_must_name_existing_resources_with_a_positive_quantity(batch: Any) -> None:
    name = _create(batch)
    missing = unique("missing")
    cases = [
        ([{"consumableResource": missing, "quantity": 1}], f"Consumable resource {missing} does not exist"),
        ([{"consumableResource": name, "quantity": 0}],
         "consumableResourceProperties.consumableResourceList[0].quantity must be at least 1 (got 0)"),
        ([{"consumableResource": name, "quantity": 1}, {"consumableResource": arn("consumable-resource", name),
                                                          "quantity": 2}],
         f"consumableResourceProperties names consumable resource {name} more than once"),
        ([{"quantity": 1}], "consumableResourceProperties.consumableResourceList[0].consumableResource is required"),
    ]  # fmt: skip
    for entries, message in cases:
        status, code, text = _error(
            batch.register_job_definition,
            jobDefinitionName=unique("jd"),
            type="container",
            containerProperties={"image": "host", "vcpus": 1, "memory": 64, "command": ["true"]},
            consumableResourceProperties={"consumableResourceList": entries},
        )
        assert (status, code, text) == (400, "ClientException", message)


def test_multinode_definitions_are_refused_clearly(batch: Any) -> None:
    name = _create(batch)
    node = {
        "targetNodes": "0:",
        "container": {"image": "host", "vcpus": 1, "memory": 64, "command": ["true"]},
        "consumableResourceProperties": {"consumableResourceList": [{"consumableResource": name, "quantity": 1}]},
    }
    status, _, message = _error(
        batch.register_job_definition, jobDefinitionName=unique("jd"), type="multinode",
        nodeProperties={"numNodes": 2, "mainNode": 0, "nodeRangeProperties": [node]},
    )  # fmt: skip
    assert (status, message) == (400, "Kiln does not support consumable resources on multi-node parallel jobs")


def test_definition_and_job_show_their_resources_and_the_override(batch: Any, parked: str) -> None:
    licence, seat, extra = _create(batch, total=4), _create(batch, total=4), _create(batch, total=4)
    definition = register_shell(
        batch, "true",
        consumableResourceProperties={"consumableResourceList": [
            {"consumableResource": licence, "quantity": 1},
            {"consumableResource": arn("consumable-resource", seat), "quantity": 2},
        ]},
    )  # fmt: skip
    name, revision = definition.split(":")
    described = batch.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"][0]
    assert described["consumableResourceProperties"] == {
        "consumableResourceList": [
            {"consumableResource": licence, "quantity": 1},
            {"consumableResource": arn("consumable-resource", seat), "quantity": 2},
        ]
    }
    plain = describe_one(batch, submit(batch, parked, definition))
    assert plain["consumableResourceProperties"] == described["consumableResourceProperties"]

    override = {"consumableResourceList": [{"consumableResource": seat, "quantity": 3},
                                           {"consumableResource": extra, "quantity": 1}]}  # fmt: skip
    job_id = submit(batch, parked, definition, consumableResourcePropertiesOverride=override)
    assert describe_one(batch, job_id)["consumableResourceProperties"] == {
        "consumableResourceList": [
            {"consumableResource": licence, "quantity": 1},
            {"consumableResource": seat, "quantity": 3},
            {"consumableResource": extra, "quantity": 1},
        ]
    }
    listed = batch.list_jobs_by_consumable_resource(consumableResource=seat)["jobs"]
    assert [(j["jobArn"].rsplit("/", 1)[1], j["quantity"]) for j in listed][:2] == [(job_id, 3), (plain["jobId"], 2)]
    newest = listed[0]
    assert newest["jobStatus"] in {"SUBMITTED", "RUNNABLE"}
    assert newest["jobQueueArn"] == arn("job-queue", parked)
    assert newest["jobDefinitionArn"] == arn("job-definition", f"{name}:{revision}")
    assert newest["consumableResourceProperties"]["consumableResourceList"][1]["quantity"] == 3
    assert [j["quantity"] for j in batch.list_jobs_by_consumable_resource(consumableResource=extra)["jobs"]] == [1]

    missing = unique("missing")
    status, _, message = _error(
        batch.submit_job, jobName="j", jobQueue=parked, jobDefinition=definition,
        consumableResourcePropertiesOverride={"consumableResourceList": [{"consumableResource": missing, "quantity": 1}]},
    )  # fmt: skip
    assert (status, message) == (400, f"Consumable resource {missing} does not exist")


def test_list_jobs_by_consumable_resource_filters_and_pages(batch: Any, parked: str) -> None:
    name = _create(batch, total=1)
    definition = register_shell(
        batch,
        "true",
        consumableResourceProperties={"consumableResourceList": [{"consumableResource": name, "quantity": 1}]},
    )
    ids = [
        batch.submit_job(jobName=f"Render-{i}", jobQueue=parked, jobDefinition=definition)["jobId"] for i in range(3)
    ]
    other = batch.submit_job(jobName="other", jobQueue=parked, jobDefinition=definition)["jobId"]
    seen: list[str] = []
    token: str | None = None
    for _ in range(10):
        page = batch.list_jobs_by_consumable_resource(
            consumableResource=name, maxResults=1, filters=[{"name": "JOB_NAME", "values": ["render-*"]}],
            **({"nextToken": token} if token else {}),
        )  # fmt: skip
        seen += [job["jobName"] for job in page["jobs"]]
        token = page.get("nextToken")
        if not token:
            break
    assert seen == ["Render-2", "Render-1", "Render-0"]
    everything = batch.list_jobs_by_consumable_resource(consumableResource=arn("consumable-resource", name))["jobs"]
    assert {job["jobArn"].rsplit("/", 1)[1] for job in everything} == {*ids, other}
    finished = batch.list_jobs_by_consumable_resource(
        consumableResource=name, filters=[{"name": "JOB_STATUS", "values": ["SUCCEEDED"]}]
    )
    assert finished["jobs"] == []
    assert (
        _error(
            batch.list_jobs_by_consumable_resource,
            consumableResource=name,
            filters=[{"name": "JOB_STATUS", "values": ["DONE"]}],
        )[2]
        == "JOB_STATUS filter value 'DONE' is not a job status"
    )
    missing = unique("missing")
    assert _error(batch.list_jobs_by_consumable_resource, consumableResource=missing)[2] == (
        f"Consumable resource {missing} does not exist"
    )
