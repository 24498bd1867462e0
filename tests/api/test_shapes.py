"""Routes and request validation come from botocore's Batch model; these pin that contract."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.model import ShapeResolver

from kiln.api.shapes import (
    parse_request,
    route_table,
    serialize_output,
    service_model,
    validate_input,
)
from kiln.errors import ClientError, ValidationError

QUEUE_ARN = "arn:aws:batch:us-east-1:123456789012:job-queue/q"
ENCODED_QUEUE_ARN = "arn%3Aaws%3Abatch%3Aus-east-1%3A123456789012%3Ajob-queue%2Fq"
SUBMIT = {"jobName": "render", "jobQueue": "q", "jobDefinition": "blender"}


def body(document: str) -> bytes:
    return document.encode()


def submit_with(**extra: Any) -> bytes:
    return json.dumps({**SUBMIT, **extra}).encode()


# ------------------------------------------------------------------------------------------- routes


def test_route_table_covers_every_operation_of_the_model() -> None:
    model = service_model()
    routes = {route.operation: route for route in route_table().routes}
    assert set(routes) == set(model.operation_names)
    for name, route in routes.items():
        http = model.operation_model(name).http
        assert (route.method, route.uri) == (http["method"], http["requestUri"])


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("POST", "/v1/submitjob", "SubmitJob"),
        ("POST", "/v1/describejobs", "DescribeJobs"),
        ("POST", "/v1/registerjobdefinition", "RegisterJobDefinition"),
        ("POST", "/kiln/v1/describejobs", "DescribeJobs"),
        ("post", "/a/b/v1/listjobs", "ListJobs"),
    ],
)
def test_resolve_finds_operation_with_or_without_path_prefix(method: str, path: str, operation: str) -> None:
    assert route_table().resolve(method, path) == (operation, {})


@pytest.mark.parametrize(
    ("method", "operation"),
    [("GET", "ListTagsForResource"), ("POST", "TagResource"), ("DELETE", "UntagResource")],
)
def test_tag_routes_take_a_multi_segment_arn_from_the_path(method: str, operation: str) -> None:
    # The ASGI server hands over the percent-decoded path, so the ARN's '/' splits segments.
    assert route_table().resolve(method, f"/v1/tags/{QUEUE_ARN}") == (operation, {"resourceArn": QUEUE_ARN})


def test_resolve_rejects_unknown_path_and_wrong_method_as_client_errors() -> None:
    with pytest.raises(ClientError, match=r"^Unknown operation POST /v1/foo$"):
        route_table().resolve("POST", "/v1/foo")
    with pytest.raises(ClientError, match=r"^Unknown operation POST /v1/submitjobx$"):
        route_table().resolve("POST", "/v1/submitjobx")
    with pytest.raises(ClientError, match=r"Method GET is not allowed for /v1/submitjob; use POST"):
        route_table().resolve("GET", "/v1/submitjob")
    with pytest.raises(ClientError, match=r"use DELETE, GET, POST"):
        route_table().resolve("PUT", f"/v1/tags/{QUEUE_ARN}")


# ------------------------------------------------------------------------------------------ requests


def test_parse_request_returns_the_json_members() -> None:
    params = parse_request("SubmitJob", submit_with(arrayProperties={"size": 3}))
    assert params == {**SUBMIT, "arrayProperties": {"size": 3}}


def test_empty_body_is_an_empty_input() -> None:
    assert parse_request("ListJobs", b"") == {}
    assert parse_request("ListJobs", b"  \n") == {}


def test_missing_required_member_is_named() -> None:
    with pytest.raises(ValidationError, match=r'Missing required parameter in input: "jobQueue"'):
        parse_request("SubmitJob", body('{"jobName": "a", "jobDefinition": "d"}'))


def test_wrong_type_names_the_member_and_json_types() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_request("SubmitJob", submit_with(arrayProperties={"size": "3"}))
    assert "Invalid type for parameter arrayProperties.size" in caught.value.message
    assert "type: string, valid types: integer" in caught.value.message
    assert "<class" not in caught.value.message


def test_boolean_is_not_a_number() -> None:
    with pytest.raises(ValidationError, match=r"parameter arrayProperties.size, value: true, type: boolean"):
        parse_request("SubmitJob", submit_with(arrayProperties={"size": True}))


def test_float_is_not_an_integer() -> None:
    with pytest.raises(ValidationError, match=r"arrayProperties.size, value: 3.5, type: number"):
        parse_request("SubmitJob", submit_with(arrayProperties={"size": 3.5}))


def test_unknown_member_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(ValidationError, match=r'Unknown parameter in input: "bogus", must be one of: jobName'):
        parse_request("SubmitJob", submit_with(bogus=1))


def test_min_length_from_the_model_is_enforced() -> None:
    with pytest.raises(ValidationError, match=r"Invalid length for parameter tagKeys"):
        parse_request("UntagResource", b"", {"resourceArn": QUEUE_ARN}, {"tagKeys": []})


def test_bad_enum_lists_the_allowed_values() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_request("ListJobs", body('{"jobQueue": "q", "jobStatus": "BOGUS"}'))
    assert caught.value.message == (
        "Invalid value BOGUS for jobStatus: must be one of "
        "SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED, FAILED"
    )


def test_enums_are_checked_inside_lists_and_structures() -> None:
    with pytest.raises(ValidationError, match=r"Invalid value ONE_TO_ONE for dependsOn\[1\]\.type"):
        parse_request("SubmitJob", submit_with(dependsOn=[{"jobId": "a"}, {"jobId": "b", "type": "ONE_TO_ONE"}]))
    overrides = {"resourceRequirements": [{"type": "TPU", "value": "1"}]}
    with pytest.raises(ValidationError, match=r"containerOverrides\.resourceRequirements\[0\]\.type"):
        parse_request("SubmitJob", submit_with(containerOverrides=overrides))


def test_enum_is_case_sensitive_unless_the_model_says_otherwise() -> None:
    with pytest.raises(ValidationError, match=r"Invalid value running for jobStatus"):
        parse_request("ListJobs", body('{"jobQueue": "q", "jobStatus": "running"}'))
    # EvaluateOnExit.action is documented "The values aren't case sensitive."
    lenient = {"attempts": 2, "evaluateOnExit": [{"action": "retry", "onExitCode": "*"}]}
    assert parse_request("SubmitJob", submit_with(retryStrategy=lenient))["retryStrategy"] == lenient
    wrong = {"attempts": 2, "evaluateOnExit": [{"action": "again"}]}
    with pytest.raises(ValidationError, match=r"retryStrategy\.evaluateOnExit\[0\]\.action: must be one of"):
        parse_request("SubmitJob", submit_with(retryStrategy=wrong))


@pytest.mark.parametrize("document", ["{", '{"jobName": }', "NaN", '{"a": Infinity}', "\xff"])
def test_malformed_json_is_a_validation_error(document: str) -> None:
    with pytest.raises(ValidationError, match=r"^Malformed JSON body: "):
        parse_request("SubmitJob", document.encode("latin-1"))


@pytest.mark.parametrize(("document", "kind"), [("[]", "an array"), ('"x"', "a string"), ("3", "a number")])
def test_non_object_json_is_rejected(document: str, kind: str) -> None:
    with pytest.raises(ValidationError, match=f"^Request body must be a JSON object, got {kind}$"):
        parse_request("DescribeJobs", body(document))


def test_null_members_count_as_absent() -> None:
    params = parse_request("SubmitJob", submit_with(arrayProperties=None, timeout={"attemptDurationSeconds": None}))
    assert params == {**SUBMIT, "timeout": {}}


def test_tag_members_come_from_path_and_repeated_query() -> None:
    untag = parse_request("UntagResource", b"", {"resourceArn": QUEUE_ARN}, {"tagKeys": ["a", "b"]})
    assert untag == {"resourceArn": QUEUE_ARN, "tagKeys": ["a", "b"]}
    tag = parse_request("TagResource", body('{"tags": {"team": "vfx"}}'), {"resourceArn": QUEUE_ARN})
    assert tag == {"resourceArn": QUEUE_ARN, "tags": {"team": "vfx"}}
    assert parse_request("ListTagsForResource", b"", {"resourceArn": QUEUE_ARN}) == {"resourceArn": QUEUE_ARN}


def test_untag_without_keys_is_missing_a_required_member() -> None:
    with pytest.raises(ValidationError, match=r'Missing required parameter in input: "tagKeys"'):
        parse_request("UntagResource", b"", {"resourceArn": QUEUE_ARN}, {})


def test_unknown_operation_is_a_client_error() -> None:
    with pytest.raises(ClientError, match="Unknown operation Nope"):
        parse_request("Nope", b"{}")


def test_timestamps_may_arrive_as_epoch_numbers() -> None:
    # Batch inputs have no timestamps today; the validator must still not choke on JSON's numbers.
    resolver = ShapeResolver(
        {"In": {"type": "structure", "members": {"at": {"shape": "Ts"}}}, "Ts": {"type": "timestamp"}}
    )
    shape = resolver.get_shape_by_name("In")
    validate_input({"at": 1_700_000_000_123}, shape)
    validate_input({"at": "2024-01-01T00:00:00Z"}, shape)
    with pytest.raises(ValidationError, match=r"Invalid type for parameter at"):
        validate_input({"at": "yesterday-ish"}, shape)


# ----------------------------------------------------------------------------------------- responses


def test_serialize_output_drops_nulls_and_members_outside_the_shape() -> None:
    result = {
        "jobs": [
            {
                "jobName": "render",
                "jobId": "j1",
                "status": "RUNNING",
                "statusReason": None,
                "createdAt": 1_700_000_000_000,
                "internalRow": 7,
                "container": {"exitCode": None, "environment": [{"name": "A", "value": "1"}]},
                "tags": {"team": "vfx", "gone": None},
            }
        ],
        "debug": "x",
    }
    assert serialize_output("DescribeJobs", result) == {
        "jobs": [
            {
                "jobName": "render",
                "jobId": "j1",
                "status": "RUNNING",
                "createdAt": 1_700_000_000_000,
                "container": {"environment": [{"name": "A", "value": "1"}]},
                "tags": {"team": "vfx"},
            }
        ]
    }


def test_serialize_output_of_empty_results_is_an_empty_object() -> None:
    assert serialize_output("CancelJob", {}) == {}
    assert serialize_output("TagResource", None) == {}
