"""Hardening of Kiln's own endpoints against absurd input, on a real `kiln server`.

Integer query parameters beyond any sane value are a 400 ClientException, never a 500; the
credentials file of `--auth sigv4` is checked on every use, not only at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from kiln.api.job_logs import MAX_INT_PARAM
from tests.conftest import Key, KilnServer
from tests.support import make_queue, register_shell, submit, wait_for

ABSURD = ["99999999999999999999999", str(2**63 - 1), str(2**64), str(MAX_INT_PARAM + 1), "1" * 400]
NOT_INTEGERS = ["-1", "1e3", "0x10", " 7", "²", "١٢", "1.0", ""]


@pytest.fixture(scope="module")
def logged_job(kiln_server: KilnServer, batch: Any) -> str:
    job = wait_for(batch, submit(batch, make_queue(batch), register_shell(batch, "echo hello", memory=16)))
    assert job["status"] == "SUCCEEDED"
    return str(job["jobId"])


def get_log(server: KilnServer, job_id: str, **params: str) -> httpx.Response:
    return httpx.get(f"{server.endpoint}/kiln/v1/logs/{job_id}", params=params, timeout=10)


@pytest.mark.parametrize("name", ["offset", "attempt"])
@pytest.mark.parametrize("value", ABSURD + NOT_INTEGERS)
def test_log_integer_parameters_out_of_range_are_a_client_error(
    kiln_server: KilnServer, logged_job: str, name: str, value: str
) -> None:
    answer = get_log(kiln_server, logged_job, **{name: value})
    assert answer.status_code == 400, answer.text
    assert answer.headers["x-amzn-ErrorType"] == "ClientException"
    assert f"{name} must be an integer from 0 to {MAX_INT_PARAM}" in answer.json()["message"]


def test_log_offsets_up_to_the_bound_read_nothing_more(kiln_server: KilnServer, logged_job: str) -> None:
    assert get_log(kiln_server, logged_job, offset="0").json()["text"] == "hello\n"
    for offset in (6, 10**9, MAX_INT_PARAM):
        answer = get_log(kiln_server, logged_job, offset=str(offset))
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == "" and answer.json()["nextOffset"] == offset
    beyond = get_log(kiln_server, logged_job, attempt=str(MAX_INT_PARAM))
    assert beyond.status_code == 400 and "attempt 9007199254740991 does not exist" in beyond.json()["message"]


# ------------------------------------------------------------------ credentials checked on every use


def signed_client(server: KilnServer, key: Key) -> Any:
    """No retries: a 500 must be seen once, not retried with backoff."""
    return boto3.client(
        "batch", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret, config=Config(retries={"total_max_attempts": 1}),
    )  # fmt: skip


def server_log(server: KilnServer) -> str:
    return (server.data_dir.parent / f"server-{server.port}.log").read_text(errors="replace")


def test_a_credentials_file_that_becomes_readable_by_others_stops_every_request(
    secured: tuple[KilnServer, Key],
) -> None:
    server, key = secured
    batch = signed_client(server, key)
    credentials: Path = server.data_dir / "credentials"
    assert batch.describe_job_queues()["jobQueues"] == []
    credentials.chmod(0o644)  # neither inode, size nor mtime change: only the mode tells
    try:
        for _ in range(2):  # refused on every request, not once
            with pytest.raises(ClientError) as refused:
                batch.describe_job_queues()
            error = refused.value.response
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 500
            assert error["Error"]["Code"] == "ServerException"
            assert "credentials file is accessible by other users" in error["Error"]["Message"]
            assert str(credentials) not in error["Error"]["Message"]  # the path is for the log only
        assert f"{credentials} is accessible by other users (mode 644)" in server_log(server)
    finally:
        credentials.chmod(0o600)
    assert batch.describe_job_queues()["jobQueues"] == []  # private again: served again
