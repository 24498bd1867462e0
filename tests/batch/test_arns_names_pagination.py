"""ARN formats, naming rules and pagination tokens (https://docs.aws.amazon.com/batch/latest/APIReference/)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.arns import Arns, ParsedArn, name_from_reference, parse_arn
from kiln.batch.names import check_job_name, check_resource_name
from kiln.errors import ValidationError
from kiln.pagination import check_exclusive, decode_token, encode_token, offset_of, page_size

ARNS = Arns(region="us-east-1", account_id="123456789012")
PREFIX = "arn:aws:batch:us-east-1:123456789012"
NAME_CHARS = st.sampled_from("abcXYZ019_-")

# -- ARNs -----------------------------------------------------------------------------------------


def test_built_arns_follow_the_aws_formats() -> None:
    assert ARNS.job("876da822-4198-45f2-a252-6cea32512ea8") == f"{PREFIX}:job/876da822-4198-45f2-a252-6cea32512ea8"
    assert ARNS.job_queue("render") == f"{PREFIX}:job-queue/render"
    assert ARNS.compute_environment("local") == f"{PREFIX}:compute-environment/local"
    assert ARNS.job_definition("blender", 3) == f"{PREFIX}:job-definition/blender:3"
    assert ARNS.scheduling_policy("fair") == f"{PREFIX}:scheduling-policy/fair"


def test_parse_arn() -> None:
    assert parse_arn(f"{PREFIX}:job-queue/render") == ParsedArn("job-queue", "render")
    assert parse_arn(f"{PREFIX}:job-definition/blender:3") == ParsedArn("job-definition", "blender:3")
    assert parse_arn(f"{PREFIX}:job/abc:7") == ParsedArn("job", "abc:7")
    assert parse_arn("arn:aws-cn:batch:cn-north-1:123456789012:job-queue/q") == ParsedArn("job-queue", "q")


def test_a_plain_name_is_not_an_arn() -> None:
    assert parse_arn("render") is None
    assert parse_arn("blender:3") is None


@pytest.mark.parametrize(
    "value",
    [
        "arn:aws:s3:::bucket/key",
        "arn:aws:batch:us-east-1:123456789012:job-queue",
        "arn:aws:batch:us-east-1:123456789012:job-queue/",
        "arn:aws:batch:us-east-1:abc:job-queue/q",
        "arn:",
        "arn:aws:batch:us-east-1:123456789012:job-queue/q\n",
    ],
)
def test_malformed_arns_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="is not a valid AWS Batch ARN"):
        parse_arn(value)


@settings(max_examples=50, deadline=None)
@given(name=st.text(NAME_CHARS, min_size=1, max_size=128), revision=st.integers(1, 10_000))
def test_build_then_parse_round_trips(name: str, revision: int) -> None:
    assert parse_arn(ARNS.job_queue(name)) == ParsedArn("job-queue", name)
    assert parse_arn(ARNS.compute_environment(name)) == ParsedArn("compute-environment", name)
    assert parse_arn(ARNS.job_definition(name, revision)) == ParsedArn("job-definition", f"{name}:{revision}")
    assert name_from_reference(ARNS.job_queue(name), "job-queue") == name
    assert name_from_reference(name, "job-queue") == name


def test_reference_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(ValidationError, match="is not a job-queue ARN"):
        name_from_reference(ARNS.compute_environment("local"), "job-queue")


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "Z", "7", "a" * 128, "render-frames_01", "0-_"])
def test_valid_job_names(name: str) -> None:
    check_job_name(name)


@pytest.mark.parametrize("name", ["", "a" * 129, "-leading-dash", "_leading_underscore", "has space", "dot.ted", "é"])
def test_invalid_job_names(name: str) -> None:
    with pytest.raises(ValidationError, match="Job name should match valid pattern") as caught:
        check_job_name(name)
    assert caught.value.message.startswith("Error executing request, Exception : ")


def test_trailing_newline_is_not_a_valid_job_name() -> None:
    # `$` alone would accept a final newline; the whole name must match.
    with pytest.raises(ValidationError):
        check_job_name("job\n")


@pytest.mark.parametrize("name", ["a", "a" * 128, "-leading-dash", "_x", "queue-1_B"])
def test_valid_resource_names(name: str) -> None:
    check_resource_name(name, "job queue")


@pytest.mark.parametrize("name", ["", "a" * 129, "name:latest", "has space", "a/b", "q\n"])
def test_invalid_resource_names(name: str) -> None:
    with pytest.raises(ValidationError, match=r"is not supported pattern\[a-zA-Z_0-9-\]\{1,128\}"):
        check_resource_name(name, "job definition")


def test_resource_name_error_quotes_the_name() -> None:
    with pytest.raises(ValidationError) as caught:
        check_resource_name("name:latest", "job definition")
    assert caught.value.message.startswith("Provided name name:latest is not supported pattern[a-zA-Z_0-9-]{1,128}")


# -- pagination -----------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    position=st.one_of(
        st.integers(min_value=0),
        st.lists(st.one_of(st.integers(), st.text(max_size=20)), max_size=3),
    )
)
def test_token_round_trip(position: Any) -> None:
    token = encode_token(position)
    assert isinstance(token, str)
    assert decode_token(token) == position


def test_no_token_means_the_start() -> None:
    assert decode_token(None) is None
    assert offset_of(None) == 0


def test_offset_tokens() -> None:
    assert offset_of(encode_token(25)) == 25
    assert offset_of(encode_token(0)) == 0


@pytest.mark.parametrize("token", ["not a token", "%%%", "Zm9v", encode_token("x")[:-2] + "@@"])
def test_invalid_token_is_a_client_error(token: str) -> None:
    with pytest.raises(ValidationError, match="Invalid nextToken"):
        offset_of(token)


@pytest.mark.parametrize("position", [-1, "10", [1, 2], None, 1.5])
def test_offset_token_must_hold_a_non_negative_integer(position: Any) -> None:
    token = encode_token(position)
    if position is None:
        assert offset_of(token) == 0
        return
    with pytest.raises(ValidationError, match="Invalid nextToken"):
        offset_of(token)


def test_page_size() -> None:
    assert page_size(None, default=100, maximum=1000) == 100
    assert page_size(1, default=100, maximum=1000) == 1
    assert page_size(1000, default=100, maximum=1000) == 1000
    for bad in (0, -1, 1001):
        with pytest.raises(ValidationError, match="maxResults must be between 1 and 1000"):
            page_size(bad, default=100, maximum=1000)


def test_check_exclusive() -> None:
    check_exclusive(None, 10, "jobDefinitions")
    check_exclusive(["a"], None, "jobDefinitions")
    check_exclusive([], 10, "jobDefinitions")
    with pytest.raises(ValidationError, match="jobDefinitions and MaxResults cannot both be set"):
        check_exclusive(["a"], 10, "jobDefinitions")
