"""The CloudWatch Logs API on a real `kiln server`, through the AWS CLI and boto3's `logs` client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from kiln.api.job_logs import same_file
from tests.conftest import KilnServer
from tests.support import make_queue, register_shell, submit, unique, wait_for

GROUP = "/aws/batch/job"
TWENTY_FIVE = [f"line {i:02d} of the job" for i in range(1, 26)]


@pytest.fixture(scope="module")
def logs(kiln_server: KilnServer) -> Any:
    return boto3.client("logs", endpoint_url=kiln_server.endpoint, region_name="us-east-1")


@pytest.fixture(scope="module")
def queue(batch: Any) -> str:
    return make_queue(batch, max_vcpus=4)


@pytest.fixture(scope="module")
def printed(batch: Any, queue: str) -> dict[str, Any]:
    """A finished job that printed 25 numbered lines on stdout, an empty line, and one on stderr.

    It first sleeps: line times are spread between the attempt's start and the log's last write,
    and a job this small can otherwise start and finish within one millisecond.
    """
    script = 'sleep 0.2; for i in $(seq -w 1 25); do echo "line $i of the job"; done; echo; echo "ERROR on stderr" >&2'
    job = wait_for(batch, submit(batch, queue, register_shell(batch, script)))
    assert job["status"] == "SUCCEEDED", job
    return job


def aws_logs(server: KilnServer, *args: str) -> Any:
    executable = Path(sys.executable).with_name("aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "kiln",
        "AWS_SECRET_ACCESS_KEY": "kiln",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    command = [str(executable), "logs", *args, "--endpoint-url", server.endpoint, "--output", "json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def error_of(call: Any, **params: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    response = caught.value.response
    return response["Error"]["Code"], response["Error"]["Message"], response["ResponseMetadata"]["HTTPStatusCode"]


def read_all(logs: Any, stream: str, limit: int) -> list[str]:
    """Every message, following nextForwardToken from the head until it repeats (bounded)."""
    params: dict[str, Any] = {"logGroupName": GROUP, "logStreamName": stream, "limit": limit, "startFromHead": True}
    messages: list[str] = []
    for _ in range(100):
        page = logs.get_log_events(**params)
        messages += [event["message"] for event in page["events"]]
        if page["nextForwardToken"] == params.get("nextToken"):
            return messages
        params["nextToken"] = page["nextForwardToken"]
    raise AssertionError("nextForwardToken never repeated")


def test_aws_cli_get_log_events_pages_through_a_job_in_order(kiln_server: KilnServer, printed: dict[str, Any]) -> None:
    stream = printed["container"]["logStreamName"]
    base = ["get-log-events", "--log-group-name", GROUP, "--log-stream-name", stream, "--limit", "10"]
    pages: list[list[str]] = []
    token: str | None = None
    for _ in range(10):
        page = aws_logs(kiln_server, *base, "--start-from-head", *(["--next-token", token] if token else []))
        pages.append([event["message"] for event in page["events"]])
        if page["nextForwardToken"] == token:
            break
        token = page["nextForwardToken"]
    assert [len(page) for page in pages] == [10, 10, 6, 0]  # the empty line is no event, as on CloudWatch
    assert [message for page in pages for message in page] == [*TWENTY_FIVE, "ERROR on stderr"]
    for event in aws_logs(kiln_server, *base, "--start-from-head")["events"]:
        assert event["timestamp"] >= printed["startedAt"] - 1000 and event["ingestionTime"] >= event["timestamp"]
    # Without --start-from-head the newest events come first, as on CloudWatch.
    tail = aws_logs(
        kiln_server, "get-log-events", "--log-group-name", GROUP, "--log-stream-name", stream, "--limit", "3"
    )
    assert [event["message"] for event in tail["events"]] == [*TWENTY_FIVE[-2:], "ERROR on stderr"]


def test_backward_tokens_walk_from_the_tail_to_the_head(logs: Any, printed: dict[str, Any]) -> None:
    stream = printed["container"]["logStreamName"]
    page = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, limit=7)
    seen = [event["message"] for event in page["events"]]
    for _ in range(10):
        page = logs.get_log_events(
            logGroupName=GROUP, logStreamName=stream, limit=7, nextToken=page["nextBackwardToken"]
        )
        if not page["events"]:
            break
        seen = [event["message"] for event in page["events"]] + seen
    assert seen == [*TWENTY_FIVE, "ERROR on stderr"]
    # Forward from a backward page's position: the events after it.
    middle = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, limit=5, startFromHead=True)
    after = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, limit=2, nextToken=middle["nextForwardToken"])
    assert [event["message"] for event in after["events"]] == TWENTY_FIVE[5:7]
    # Paging with any page size gives the same lines.
    assert read_all(logs, stream, 4) == [*TWENTY_FIVE, "ERROR on stderr"]
    # The group may be named by its ARN too.
    arn = f"arn:aws:logs:us-east-1:123456789012:log-group:{GROUP}"
    by_arn = logs.get_log_events(logGroupIdentifier=arn, logStreamName=stream, startFromHead=True, limit=1)
    assert [event["message"] for event in by_arn["events"]] == TWENTY_FIVE[:1]


def test_time_range_selects_events_by_timestamp(logs: Any, printed: dict[str, Any]) -> None:
    stream = printed["container"]["logStreamName"]
    events = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True)["events"]
    times = [event["timestamp"] for event in events]
    assert times == sorted(times)
    start, end = times[5], times[20]
    expected = [event["message"] for event in events if start <= event["timestamp"] < end]
    window = logs.get_log_events(
        logGroupName=GROUP, logStreamName=stream, startFromHead=True, startTime=start, endTime=end
    )
    assert [event["message"] for event in window["events"]] == expected and expected
    later = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startTime=times[-1] + 1)
    assert later["events"] == []


def test_a_running_job_shows_whole_lines_and_the_token_follows_it(batch: Any, logs: Any, queue: str) -> None:
    script = "echo first; echo second; printf 'unterminated'; sleep 60"
    job_id = submit(batch, queue, register_shell(batch, script))
    running = wait_for(batch, job_id, {"RUNNING"})
    stream = running["container"]["logStreamName"]
    deadline = time.monotonic() + 30
    page: dict[str, Any] = {"events": []}
    while len(page["events"]) < 2 and time.monotonic() < deadline:
        page = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True)
        time.sleep(0.1)
    assert [event["message"] for event in page["events"]] == ["first", "second"]  # not the unfinished line
    batch.terminate_job(jobId=job_id, reason="test over")
    assert wait_for(batch, job_id)["status"] == "FAILED"
    rest = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, nextToken=page["nextForwardToken"])
    assert [event["message"] for event in rest["events"]] == ["unterminated"]


def test_describe_log_streams_lists_attempts_with_prefix_order_and_paging(
    batch: Any, logs: Any, queue: str, kiln_server: KilnServer
) -> None:
    definition = register_shell(batch, "echo hello from $AWS_BATCH_JOB_ID")
    jobs = [wait_for(batch, submit(batch, queue, definition)) for _ in range(3)]  # one after another
    names = [job["container"]["logStreamName"] for job in jobs]
    prefix = f"{definition.split(':')[0]}/default/"
    listed = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=prefix)["logStreams"]
    assert [stream["logStreamName"] for stream in listed] == sorted(names)
    for stream in listed:
        assert stream["storedBytes"] == len(f"hello from {jobs[names.index(stream['logStreamName'])]['jobId']}\n")
        assert stream["creationTime"] <= stream["firstEventTimestamp"] <= stream["lastEventTimestamp"]
        assert stream["arn"].endswith(f":log-group:{GROUP}:log-stream:{stream['logStreamName']}")
    descending = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=prefix, descending=True)
    assert [stream["logStreamName"] for stream in descending["logStreams"]] == sorted(names, reverse=True)
    paged = [
        stream["logStreamName"]
        for page in logs.get_paginator("describe_log_streams").paginate(
            logGroupName=GROUP, logStreamNamePrefix=prefix, PaginationConfig={"PageSize": 1}
        )
        for stream in page["logStreams"]
    ]
    assert paged == sorted(names)
    newest = logs.describe_log_streams(logGroupName=GROUP, orderBy="LastEventTime", descending=True, limit=1)
    assert newest["logStreams"][0]["logStreamName"] == names[-1] and "nextToken" in newest
    cli = aws_logs(kiln_server, "describe-log-streams", "--log-group-name", GROUP, "--log-stream-name-prefix", prefix)
    assert [stream["logStreamName"] for stream in cli["logStreams"]] == sorted(names)


def test_filter_log_events_across_array_children(batch: Any, logs: Any, queue: str, kiln_server: KilnServer) -> None:
    script = (
        'echo "child $AWS_BATCH_JOB_ARRAY_INDEX says hello"; echo "noise"; echo "WARN child $AWS_BATCH_JOB_ARRAY_INDEX"'
    )
    definition = register_shell(batch, script)
    parent = submit(batch, queue, definition, arrayProperties={"size": 3})
    assert wait_for(batch, parent)["status"] == "SUCCEEDED"
    children = batch.describe_jobs(jobs=[f"{parent}:{i}" for i in range(3)])["jobs"]
    streams = {child["arrayProperties"]["index"]: child["container"]["logStreamName"] for child in children}
    prefix = f"{definition.split(':')[0]}/default/"

    def messages(**params: Any) -> list[str]:
        pages = logs.get_paginator("filter_log_events").paginate(logGroupName=GROUP, **params)
        return sorted(event["message"] for page in pages for event in page["events"])

    assert messages(logStreamNamePrefix=prefix, filterPattern="says") == [f"child {i} says hello" for i in range(3)]
    assert messages(logStreamNamePrefix=prefix, filterPattern="?WARN ?noise") == sorted(
        ["noise"] * 3 + [f"WARN child {i}" for i in range(3)]
    )
    assert messages(logStreamNamePrefix=prefix, filterPattern="child -WARN") == [
        f"child {i} says hello" for i in range(3)
    ]
    assert messages(logStreamNamePrefix=prefix, filterPattern='"child 1 says"') == ["child 1 says hello"]
    assert messages(logStreamNamePrefix=prefix, filterPattern="warn") == []  # terms are case-sensitive
    assert messages(logStreamNames=[streams[2]]) == sorted(["child 2 says hello", "noise", "WARN child 2"])
    # One event per page: every event exactly once, each with its stream, through many tokens.
    pages = list(
        logs.get_paginator("filter_log_events").paginate(
            logGroupName=GROUP, logStreamNamePrefix=prefix, PaginationConfig={"PageSize": 1}
        )
    )
    events = [event for page in pages for event in page["events"]]
    assert len(pages) >= 9 and len(events) == 9 and len({event["eventId"] for event in events}) == 9
    assert {event["logStreamName"] for event in events} == set(streams.values())
    cli = aws_logs(kiln_server, "filter-log-events", "--log-group-name", GROUP, "--log-stream-name-prefix", prefix,
                   "--filter-pattern", "WARN")  # fmt: skip
    assert sorted(event["message"] for event in cli["events"]) == [f"WARN child {i}" for i in range(3)]


def test_describe_log_groups_shows_the_batch_group(logs: Any) -> None:
    groups = logs.describe_log_groups()["logGroups"]
    assert [group["logGroupName"] for group in groups] == [GROUP]
    assert groups[0]["arn"] == f"arn:aws:logs:us-east-1:123456789012:log-group:{GROUP}:*"
    assert logs.describe_log_groups(logGroupNamePrefix="/aws/batch")["logGroups"][0]["logGroupName"] == GROUP
    assert logs.describe_log_groups(logGroupNamePrefix="/aws/lambda")["logGroups"] == []


def test_errors_have_the_cloudwatch_form(
    batch: Any, logs: Any, queue: str, printed: dict[str, Any], kiln_server: KilnServer
) -> None:
    stream = printed["container"]["logStreamName"]
    missing_group = error_of(logs.get_log_events, logGroupName="/aws/lambda/x", logStreamName=stream)
    assert missing_group == ("ResourceNotFoundException", "The specified log group does not exist.", 400)
    missing_stream = error_of(logs.get_log_events, logGroupName=GROUP, logStreamName=f"jd/default/{unique('task')}")
    assert missing_stream == ("ResourceNotFoundException", "The specified log stream does not exist.", 400)
    renamed = stream.replace("/default/", "/other/")  # right task id, wrong name
    assert error_of(logs.get_log_events, logGroupName=GROUP, logStreamName=renamed)[0] == "ResourceNotFoundException"
    assert error_of(logs.describe_log_streams, logGroupName="/nope")[0] == "ResourceNotFoundException"
    assert error_of(logs.filter_log_events, logGroupName="/nope")[0] == "ResourceNotFoundException"
    code, message, status = error_of(logs.get_log_events, logGroupName=GROUP, logStreamName=stream, nextToken="f/123")
    assert (code, status) == ("InvalidParameterException", 400) and "nextToken" in message
    foreign = wait_for(batch, submit(batch, queue, register_shell(batch, "echo other")))["container"]["logStreamName"]
    token = logs.get_log_events(logGroupName=GROUP, logStreamName=foreign, startFromHead=True)["nextForwardToken"]
    assert error_of(logs.get_log_events, logGroupName=GROUP, logStreamName=stream, nextToken=token)[0] == (
        "InvalidParameterException"
    )
    code, message, _ = error_of(
        logs.describe_log_streams, logGroupName=GROUP, orderBy="LastEventTime", logStreamNamePrefix="x"
    )
    assert (code, message) == ("InvalidParameterException", "Cannot order by LastEventTime with a logStreamNamePrefix.")
    code, message, _ = error_of(logs.filter_log_events, logGroupName=GROUP, filterPattern="{ $.level = 1 }")
    assert code == "InvalidParameterException" and "plain-term" in message
    assert error_of(logs.get_log_events, logStreamName=stream)[0] == "InvalidParameterException"  # no group
    assert error_of(logs.put_retention_policy, logGroupName=GROUP, retentionInDays=1)[1] == (
        "Kiln does not implement PutRetentionPolicy"
    )
    # What botocore would catch client-side is checked by the server too (limit below 1).
    raw = httpx.post(
        kiln_server.endpoint,
        content=json.dumps({"logGroupName": GROUP, "logStreamName": stream, "limit": 0}),
        headers={"X-Amz-Target": "Logs_20140328.GetLogEvents", "Content-Type": "application/x-amz-json-1.1"},
    )
    assert raw.status_code == 400 and raw.json()["__type"] == "InvalidParameterException"
    assert raw.headers["content-type"] == "application/x-amz-json-1.1" and "x-amzn-requestid" in raw.headers
    json_type = {"Content-Type": "application/x-amz-json-1.1"}  # what CloudWatch clients send
    for body in (b"{not json", b"[]"):
        broken = httpx.post(
            kiln_server.endpoint, content=body, headers={"X-Amz-Target": "Logs_20140328.GetLogEvents", **json_type}
        )
        assert broken.status_code == 400 and broken.json()["__type"] == "InvalidParameterException"
    unknown = httpx.post(
        kiln_server.endpoint, content=b"{}", headers={"X-Amz-Target": "Logs_20140328.NoSuchThing", **json_type}
    )
    assert unknown.status_code == 400 and "NoSuchThing" in unknown.json()["message"]
    elsewhere = httpx.post(
        kiln_server.endpoint, content=b"{}", headers={"X-Amz-Target": "DynamoDB_20120810.ListTables", **json_type}
    )
    assert elsewhere.status_code == 400 and "DynamoDB_20120810" in elsewhere.json()["message"]


def test_silent_jobs_have_empty_streams_and_never_show_each_others_output(batch: Any, logs: Any, queue: str) -> None:
    """The supervisor recycles a log left empty as a later attempt's file: a silent job's stream
    stays listed and empty, and the job that took its file over shows only its own lines."""
    silent = [wait_for(batch, submit(batch, queue, register_shell(batch, "true"))) for _ in range(2)]
    talker = wait_for(batch, submit(batch, queue, register_shell(batch, "echo mine")))
    for job in silent:
        assert job["status"] == "SUCCEEDED", job
        stream = job["container"]["logStreamName"]
        assert logs.get_log_events(logGroupName=GROUP, logStreamName=stream)["events"] == []
        listed = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=stream)["logStreams"]
        assert [s["logStreamName"] for s in listed] == [stream]
    stream = talker["container"]["logStreamName"]
    events = logs.get_log_events(logGroupName=GROUP, logStreamName=stream)["events"]
    assert [event["message"] for event in events] == ["mine"]


def test_kiln_logs_reader_drops_bytes_of_a_file_recycled_under_it(tmp_path: Path) -> None:
    """`kiln logs`' reader holds a descriptor: if the log it opened was recycled for another attempt
    meanwhile (its path is gone), what it read is not this attempt's."""
    log = tmp_path / "a.log"
    log.write_text("")
    with log.open("rb") as handle:
        assert same_file(handle.fileno(), log)
        log.rename(tmp_path / "other-attempt.log")
        assert not same_file(handle.fileno(), log)
