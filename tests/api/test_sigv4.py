"""SigV4 authentication on a real `kiln server --auth sigv4`, with keys made by the real `kiln keys create`.

Correctly signed requests come from boto3, the AWS CLI and `kiln logs`. Each refusal is a request
signed by botocore's own signer and then spoiled in one way (wrong secret, unknown key, body or header
changed after signing, no signature, a timestamp 16 minutes off), sent over plain HTTP so that
nothing re-signs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.config import Settings
from kiln.errors import ValidationError
from kiln.server import check_exposure
from tests.conftest import FAST_FLAGS, Key, KilnServer, create_key, kiln, start_server
from tests.support import make_queue, register_shell, submit, wait_for

MISMATCH = "The request signature we calculated does not match the signature you provided."
UNKNOWN_KEY = "The security token included in the request is invalid."
JSON = {"Content-Type": "application/json"}  # what an AWS SDK sends with a Batch body


def client(server: KilnServer, key: Key, region: str = "us-east-1") -> Any:
    return boto3.client(
        "batch",
        endpoint_url=server.endpoint,
        region_name=region,
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret,
    )


def signed(
    server: KilnServer,
    key: Key,
    body: bytes = b"{}",
    *,
    path: str = "/v1/describejobqueues",
    at: datetime | None = None,
    service: str = "batch",
    region: str = "us-east-1",
    headers: dict[str, str] | None = None,
) -> AWSRequest:
    """A request signed by botocore's SigV4Auth, at `at` (default: now)."""
    request = AWSRequest(method="POST", url=f"{server.endpoint}{path}", data=body)
    request.headers["Content-Type"] = "application/json"
    request.headers["Host"] = f"127.0.0.1:{server.port}"
    for name, value in (headers or {}).items():
        request.headers[name] = value
    signer = SigV4Auth(Credentials(key.access_key_id, key.secret), service, region)
    if at is None:
        signer.add_auth(request)
        return request
    # add_auth always signs "now"; these are its steps with the timestamp chosen by the test.
    request.context["timestamp"] = at.strftime(SIGV4_TIMESTAMP)
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signer._inject_signature_to_request(request, signature)
    return request


def send(request: AWSRequest, *, body: bytes | None = None, **replace_headers: str) -> httpx.Response:
    """Send `request` as signed, or with its body or some headers swapped after signing."""
    headers = {name: value for name, value in request.headers.items() if name.lower() not in {"content-length"}}
    headers.update({name.replace("_", "-"): value for name, value in replace_headers.items()})
    content = request.body if body is None else body
    return httpx.post(request.url, content=content, headers=headers, timeout=30)


def assert_refused(response: httpx.Response, code: str, fragment: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["x-amzn-ErrorType"] == code
    document = response.json()
    assert document["__type"] == code
    assert fragment in document["message"], document["message"]


# ---------------------------------------------------------------------------------------- accepted


def test_boto3_with_the_right_key_runs_a_job(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    batch = client(server, key)
    queue = make_queue(batch)
    job_id = submit(batch, queue, register_shell(batch, "echo signed"))
    assert wait_for(batch, job_id)["status"] == "SUCCEEDED"
    assert [job["jobId"] for job in batch.list_jobs(jobQueue=queue, jobStatus="SUCCEEDED")["jobSummaryList"]] == [
        job_id
    ]


def test_signed_paths_and_query_strings_verify(secured: tuple[KilnServer, Key]) -> None:
    """Tag routes put a percent-encoded ARN in the path and UntagResource repeats `tagKeys` in the
    query: the canonical URI (encoded twice) and the sorted query must match botocore's."""
    server, key = secured
    batch = client(server, key)
    queue = make_queue(batch)
    arn = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["jobQueueArn"]
    batch.tag_resource(resourceArn=arn, tags={"team": "render farm", "b": "1", "a": "2/3"})
    batch.untag_resource(resourceArn=arn, tagKeys=["b", "a"])
    assert batch.list_tags_for_resource(resourceArn=arn)["tags"] == {"team": "render farm"}


def test_kiln_logs_signs_its_requests(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    batch = client(server, key)
    job_id = submit(batch, make_queue(batch), register_shell(batch, "echo from the log"))
    assert wait_for(batch, job_id)["status"] == "SUCCEEDED"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret}
    command = [sys.executable, "-m", "kiln", "logs", job_id, "--endpoint-url", server.endpoint]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from the log\n"
    unsigned = httpx.get(f"{server.endpoint}/kiln/v1/logs/{job_id}", timeout=10)
    assert_refused(unsigned, "MissingAuthenticationTokenException", "Missing Authentication Token")


def aws_cli(server: KilnServer, key: Key, *args: str) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).with_name("aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": key.access_key_id,
        "AWS_SECRET_ACCESS_KEY": key.secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("AWS_SESSION_TOKEN", None)
    command = [str(executable), "batch", *args, "--endpoint-url", server.endpoint, "--output", "json"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_aws_cli_with_the_right_key_and_refused_with_a_wrong_one(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    queue = make_queue(client(server, key))
    result = aws_cli(server, key, "describe-job-queues", "--job-queues", queue)
    assert result.returncode == 0, result.stderr
    assert [q["jobQueueName"] for q in json.loads(result.stdout)["jobQueues"]] == [queue]
    refused = aws_cli(server, Key(key.access_key_id, "not-the-secret"), "describe-job-queues")
    assert refused.returncode != 0
    assert "InvalidSignatureException" in refused.stderr


def test_healthz_needs_no_signature(secured: tuple[KilnServer, Key]) -> None:
    server, _ = secured
    assert httpx.get(f"{server.endpoint}/healthz", timeout=10).json() == {"status": "ok"}


def test_logs_service_scope_is_accepted_on_the_same_endpoint(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    response = send(signed(server, key, service="logs"))
    assert response.status_code == 200, response.text
    assert "jobQueues" in response.json()


def test_timestamp_within_fifteen_minutes_is_accepted(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    for minutes in (-14, 14):
        response = send(signed(server, key, at=datetime.now(UTC) + timedelta(minutes=minutes)))
        assert response.status_code == 200, (minutes, response.text)


# ---------------------------------------------------------------------------------------- refused


def test_wrong_secret_is_an_invalid_signature(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    with pytest.raises(ClientError) as info:
        client(server, Key(key.access_key_id, key.secret + "x")).describe_job_queues()
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert MISMATCH in error["Error"]["Message"]


def test_unknown_key_is_an_unrecognized_client(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    with pytest.raises(ClientError) as info:
        client(server, Key("AKIAIOSFODNN7EXAMPLE", key.secret)).describe_job_queues()
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "UnrecognizedClientException"
    assert error["Error"]["Message"] == UNKNOWN_KEY


def test_missing_signature_is_a_missing_token(secured: tuple[KilnServer, Key]) -> None:
    server, _ = secured
    response = httpx.post(f"{server.endpoint}/v1/describejobqueues", content=b"{}", headers=JSON, timeout=10)
    assert_refused(response, "MissingAuthenticationTokenException", "Missing Authentication Token")


def test_tampered_body_is_refused(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    request = signed(server, key, json.dumps({"maxResults": 1}).encode())
    assert send(request).status_code == 200
    assert_refused(send(request, body=json.dumps({"maxResults": 2}).encode()), "InvalidSignatureException", MISMATCH)


def test_body_not_matching_its_declared_hash_is_refused(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    request = signed(server, key, b'{"maxResults": 1}', headers={"X-Amz-Content-SHA256": "0" * 64})
    assert_refused(send(request), "InvalidSignatureException", "x-amz-content-sha256")


def test_tampered_signed_header_is_refused(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    request = signed(server, key, headers={"X-Kiln-Purpose": "read"})
    assert send(request).status_code == 200
    assert_refused(send(request, X_Kiln_Purpose="write"), "InvalidSignatureException", MISMATCH)
    later = (datetime.now(UTC) + timedelta(seconds=1)).strftime(SIGV4_TIMESTAMP)
    assert_refused(send(request, X_Amz_Date=later), "InvalidSignatureException", "")


def test_stale_and_future_timestamps_are_refused(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    stale = send(signed(server, key, at=datetime.now(UTC) - timedelta(minutes=16)))
    assert_refused(stale, "InvalidSignatureException", "Signature expired: ")
    assert "is now earlier than" in stale.json()["message"]
    future = send(signed(server, key, at=datetime.now(UTC) + timedelta(minutes=16)))
    assert_refused(future, "InvalidSignatureException", "Signature not yet current: ")


def test_scope_must_name_this_region_and_a_served_service(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    assert_refused(send(signed(server, key, region="eu-west-1")), "InvalidSignatureException", "region")
    assert_refused(send(signed(server, key, service="s3")), "InvalidSignatureException", "service")


def test_malformed_authorization_header_is_refused(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    for header in ("Bearer abc", "AWS4-HMAC-SHA256 Credential=AKIA/x", "AWS4-HMAC-SHA256 Signature=é"):
        response = httpx.post(
            f"{server.endpoint}/v1/describejobqueues",
            content=b"{}",
            headers=httpx.Headers({"Authorization": header, **JSON}, encoding="latin-1"),
            timeout=10,
        )
        assert response.status_code == 403, response.text
        assert response.headers["x-amzn-ErrorType"] == "IncompleteSignatureException"
    well_formed = f"AWS4-HMAC-SHA256 Credential={key.access_key_id}/20261399/us-east-1/batch/aws4_request, SignedHeaders=host;x-amz-date, Signature={'0' * 64}"
    for date in ("20261399T999999Z", "2026-11-25T10:00:00Z"):
        response = httpx.post(
            f"{server.endpoint}/v1/describejobqueues",
            content=b"{}",
            headers={"Authorization": well_formed, "X-Amz-Date": date, **JSON},
            timeout=10,
        )
        assert_refused(response, "IncompleteSignatureException", "X-Amz-Date")


# What HTTP lets a header value hold: visible ASCII and Latin-1, inner spaces, no edge whitespace.
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=120).map(
    str.strip
)


def test_fuzzed_auth_headers_are_refused_never_a_5xx(secured: tuple[KilnServer, Key]) -> None:
    """Garbled Authorization, X-Amz-Date and Date headers, some around the real key id: always a 403."""
    server, key = secured
    authorization = st.one_of(
        header_text,
        st.builds(
            lambda scope, signed, signature: (
                f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={signed}, Signature={signature}"
            ),
            st.one_of(header_text, st.just(f"{key.access_key_id}/20261125/us-east-1/batch/aws4_request")),
            st.one_of(header_text, st.just("host;x-amz-date")),
            st.one_of(header_text, st.text("0123456789abcdef", min_size=64, max_size=64)),
        ),
    )
    amz_date = st.one_of(st.none(), header_text, st.from_regex(r"[0-9]{8}T[0-9]{6}Z", fullmatch=True))
    http_date = st.one_of(st.none(), header_text, st.just("Mon, 01 Jan 0001 00:00:00 -1200"))

    with httpx.Client(base_url=server.endpoint, timeout=30) as http:

        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(authorization=authorization, amz_date=amz_date, http_date=http_date, body=st.binary(max_size=64))
        def run(authorization: str, amz_date: str | None, http_date: str | None, body: bytes) -> None:
            headers = {b"Authorization": authorization.encode("latin-1"), b"Content-Type": b"application/json"}
            if amz_date is not None:
                headers[b"X-Amz-Date"] = amz_date.encode("latin-1")
            if http_date is not None:
                headers[b"Date"] = http_date.encode("latin-1")
            response = http.post("/v1/describejobqueues", content=body, headers=headers)
            assert response.status_code == 403, response.text
            assert response.json()["__type"].endswith("Exception")

        run()


def test_deleted_key_is_refused_without_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    kept, dropped = create_key(data_dir), create_key(data_dir)
    server = start_server(tmp_path, [*FAST_FLAGS, "--auth", "sigv4"])
    try:
        assert client(server, dropped).describe_job_queues()["jobQueues"] == []
        result = kiln("keys", "delete", dropped.access_key_id, "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
        listed = kiln("keys", "list", "--data-dir", str(data_dir)).stdout
        assert kept.access_key_id in listed and dropped.access_key_id not in listed and kept.secret not in listed
        with pytest.raises(ClientError) as info:
            client(server, dropped).describe_job_queues()
        assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
        assert client(server, kept).describe_job_queues()["jobQueues"] == []
        added = create_key(data_dir)
        assert client(server, added).describe_job_queues()["jobQueues"] == []
    finally:
        server.stop()


# -------------------------------------------------------------------------------- listening safely


def test_non_loopback_host_without_auth_is_refused_at_start(tmp_path: Path) -> None:
    result = kiln("server", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in result.stderr
    assert "--auth sigv4" in result.stderr and "--insecure" in result.stderr
    assert not (tmp_path / "data" / "kiln.db").exists()
    unknown = kiln("server", "--insecure", "--auth", "basic", "--data-dir", str(tmp_path / "data"))
    assert unknown.returncode == 2
    assert "unknown auth mode 'basic'; use one of: none, sigv4" in unknown.stderr


def test_exposure_rules() -> None:
    """Which (host, auth, insecure) combinations may start; starting them would bind beyond 127.0.0.1."""
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        check_exposure(Settings(host=host))
    for host in ("0.0.0.0", "192.168.1.10", "::", "kiln.example.com"):
        with pytest.raises(ValidationError, match="without authentication"):
            check_exposure(Settings(host=host))
        check_exposure(Settings(host=host, auth="sigv4"))
        check_exposure(Settings(host=host, insecure=True))
    with pytest.raises(ValidationError, match="unknown auth mode"):
        check_exposure(Settings(auth="basic"))
