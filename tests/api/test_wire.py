"""The HTTP surface as boto3 sees it: error form, request ids, payload caps, routing.

The domain service is replaced by a small recording double of the service interface; the HTTP app,
the uvicorn server and the boto3 client are real.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kiln.api.app import SUBMIT_JOB_MAX_BYTES, create_app
from kiln.api.errors import error_response
from kiln.errors import ClientError, KilnError, NotFoundError, ValidationError
from tests.support import uvicorn_in_thread

with warnings.catch_warnings():  # Starlette prefers httpx2, which the lock file does not carry
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

QUEUE_ARN = "arn:aws:batch:us-east-1:123456789012:job-queue/q"
DEFINITION_ARN = "arn:aws:batch:us-east-1:123456789012:job-definition/blender:3"
SUBMIT = {"jobName": "render", "jobQueue": "q", "jobDefinition": "blender"}


class RecordingService:
    """A service double: records calls, returns canned results, raises chosen errors."""

    def __init__(
        self,
        results: dict[str, dict[str, Any]] | None = None,
        failures: dict[str, Exception] | None = None,
        missing: frozenset[str] = frozenset({"CreateQuotaShare"}),
    ) -> None:
        self.results = results or {}
        self.failures = failures or {}
        self.missing = missing
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def implements(self, operation: str) -> bool:
        return operation not in self.missing

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((operation, params))
        if operation in self.failures:
            raise self.failures[operation]
        return self.results.get(operation, {})


@pytest.fixture
def service() -> RecordingService:
    return RecordingService()


@pytest.fixture
def client(service: RecordingService) -> TestClient:
    return TestClient(create_app(service))


def assert_aws_error(response: Any, status: int, code: str, message: str) -> None:
    assert response.status_code == status
    assert response.headers["x-amzn-ErrorType"] == code
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"__type": code, "message": message}
    assert response.headers["x-amzn-RequestId"]


def padded_submit(size: int) -> bytes:
    """A valid SubmitJob body of exactly `size` bytes."""
    base = json.dumps({**SUBMIT, "parameters": {"pad": ""}})
    return json.dumps({**SUBMIT, "parameters": {"pad": "x" * (size - len(base))}}).encode()


# -------------------------------------------------------------------------------------- plain HTTP


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-amzn-RequestId"]


def test_success_is_json_with_a_fresh_request_id(client: TestClient, service: RecordingService) -> None:
    service.results["DescribeJobs"] = {"jobs": [{"jobName": "a", "jobId": "j1", "statusReason": None}]}
    first = client.post("/v1/describejobs", json={"jobs": ["j1"]})
    second = client.post("/v1/describejobs", json={"jobs": ["j1"]})
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {"jobs": [{"jobName": "a", "jobId": "j1"}]}
    assert first.headers["x-amzn-RequestId"] != second.headers["x-amzn-RequestId"]
    assert service.calls[0] == ("DescribeJobs", {"jobs": ["j1"]})


def test_domain_client_error_keeps_its_message(client: TestClient, service: RecordingService) -> None:
    service.failures["SubmitJob"] = NotFoundError("JobQueue q not found.")
    response = client.post("/v1/submitjob", json=SUBMIT)
    assert_aws_error(response, 400, "ClientException", "JobQueue q not found.")


def test_any_kiln_error_uses_its_own_status_and_code(client: TestClient, service: RecordingService) -> None:
    class Throttled(KilnError):
        aws_code = "ThrottlingException"
        http_status = 429

    service.failures["ListJobs"] = Throttled("Too many requests")
    assert_aws_error(client.post("/v1/listjobs", json={}), 429, "ThrottlingException", "Too many requests")


def test_unexpected_exception_is_a_500_without_its_details(
    client: TestClient, service: RecordingService, caplog: pytest.LogCaptureFixture
) -> None:
    service.failures["ListJobs"] = RuntimeError("secret database password in here")
    with caplog.at_level(logging.ERROR, logger="kiln.api.errors"):
        response = client.post("/v1/listjobs", json={})
    assert response.status_code == 500
    assert response.headers["x-amzn-ErrorType"] == "ServerException"
    request_id = response.headers["x-amzn-RequestId"]
    message = response.json()["message"]
    assert response.json()["__type"] == "ServerException"
    assert request_id in message
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "secret database password" in caplog.text  # the traceback stays in the server log


def test_validation_failure_is_a_400_naming_the_member(client: TestClient) -> None:
    response = client.post("/v1/submitjob", json={**SUBMIT, "arrayProperties": {"size": "3"}})
    assert response.status_code == 400
    assert "arrayProperties.size" in response.json()["message"]
    malformed = client.post("/v1/submitjob", content=b"{nope")
    assert malformed.json()["message"].startswith("Malformed JSON body: ")


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("POST", "/v1/foo", "Unknown operation POST /v1/foo"),
        ("GET", "/nowhere", "Unknown operation GET /nowhere"),
        ("GET", "/v1/submitjob", "Method GET is not allowed for /v1/submitjob; use POST"),
        ("PATCH", "/v1/describejobs", "Method PATCH is not allowed for /v1/describejobs; use POST"),
        ("POST", "/v1/createquotashare", "Kiln does not implement CreateQuotaShare"),
    ],
)
def test_unroutable_requests_are_client_errors(client: TestClient, method: str, path: str, message: str) -> None:
    assert_aws_error(client.request(method, path, content=b"{}"), 400, "ClientException", message)


def test_submit_job_payload_cap_is_30_kib(client: TestClient, service: RecordingService) -> None:
    at_limit = client.post("/v1/submitjob", content=padded_submit(SUBMIT_JOB_MAX_BYTES))
    assert at_limit.status_code == 200
    over = client.post("/v1/submitjob", content=padded_submit(SUBMIT_JOB_MAX_BYTES + 1))
    assert_aws_error(over, 400, "ClientException", "Request payload size exceeds the limit of 30720 bytes")
    assert len(service.calls) == 1


def test_cap_applies_to_streamed_bodies_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield padded_submit(SUBMIT_JOB_MAX_BYTES + 100)

    response = client.post("/v1/submitjob", content=chunks())
    assert response.json()["message"] == "Request payload size exceeds the limit of 30720 bytes"


def test_general_cap_for_other_operations(service: RecordingService) -> None:
    client = TestClient(create_app(service, max_body_bytes=1000))
    small = client.post("/v1/describejobs", json={"jobs": ["j" * 900]})
    assert small.status_code == 200
    big = client.post("/v1/describejobs", json={"jobs": ["j" * 1000]})
    assert_aws_error(big, 400, "ClientException", "Request payload size exceeds the limit of 1000 bytes")


def test_tag_routes_decode_the_arn_and_repeated_query(client: TestClient, service: RecordingService) -> None:
    encoded = "arn%3Aaws%3Abatch%3Aus-east-1%3A123456789012%3Ajob-definition%2Fblender%3A3"
    assert client.delete(f"/v1/tags/{encoded}?tagKeys=a&tagKeys=b").status_code == 200
    assert client.post(f"/v1/tags/{encoded}", json={"tags": {"a": "1"}}).status_code == 200
    assert service.calls == [
        ("UntagResource", {"resourceArn": DEFINITION_ARN, "tagKeys": ["a", "b"]}),
        ("TagResource", {"resourceArn": DEFINITION_ARN, "tags": {"a": "1"}}),
    ]


def test_endpoint_path_prefix_is_accepted(client: TestClient, service: RecordingService) -> None:
    assert client.post("/kiln/v1/describejobs", json={"jobs": []}).status_code == 200
    assert service.calls == [("DescribeJobs", {"jobs": []})]


def test_extra_routes_get_request_ids_and_the_same_error_form(service: RecordingService) -> None:
    async def logs(request: Request) -> JSONResponse:
        if request.path_params["job_id"] == "missing":
            raise ValidationError("Job missing has no logs")
        return JSONResponse({"lines": []})

    app = create_app(service, extra_routes=[Route("/logs/{job_id}", logs)])
    client = TestClient(app)
    ok = client.get("/logs/j1")
    assert ok.json() == {"lines": []}
    assert ok.headers["x-amzn-RequestId"]
    assert_aws_error(client.get("/logs/missing"), 400, "ClientException", "Job missing has no logs")
    assert isinstance(app, Starlette) and app.state.service is service


def test_routes_that_map_errors_themselves_keep_one_request_id(service: RecordingService) -> None:
    async def explicit(request: Request) -> Response:
        return error_response(RuntimeError("boom"), request.state.request_id)

    async def bare(request: Request) -> Response:
        return error_response(RuntimeError("boom"))

    app = create_app(service, extra_routes=[Route("/explicit", explicit), Route("/bare", bare)])
    client = TestClient(app)
    for path in ("/explicit", "/bare"):
        response = client.get(path)
        assert response.status_code == 500
        assert response.headers["x-amzn-RequestId"] in response.json()["message"]


# ------------------------------------------------------------------------------- real boto3 client


@contextmanager
def running_server(app: Starlette) -> Iterator[str]:
    """uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    with uvicorn_in_thread(app) as server:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def batch_client(endpoint_url: str) -> Any:
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    return session.client("batch", endpoint_url=endpoint_url, config=Config(retries={"max_attempts": 1}))


def test_boto3_against_a_real_server() -> None:
    job = {
        "jobName": "render",
        "jobId": "j1",
        "jobQueue": QUEUE_ARN,
        "status": "RUNNING",
        "startedAt": 1_700_000_000_000,
        "jobDefinition": DEFINITION_ARN,
        "statusReason": None,
    }
    service = RecordingService(
        results={"DescribeJobs": {"jobs": [job]}, "ListTagsForResource": {"tags": {"team": "vfx"}}},
        failures={"SubmitJob": ClientError("JobQueue q not found.")},
    )
    with running_server(create_app(service)) as url:
        batch = batch_client(url)
        with pytest.raises(batch.exceptions.ClientException) as caught:
            batch.submit_job(**SUBMIT)
        assert caught.value.response["Error"]["Message"] == "JobQueue q not found."
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        with pytest.raises(batch.exceptions.ClientException, match="exceeds the limit of 30720 bytes"):
            batch.submit_job(**SUBMIT, parameters={"pad": "x" * SUBMIT_JOB_MAX_BYTES})

        described = batch.describe_jobs(jobs=["j1"])
        assert described["jobs"] == [{k: v for k, v in job.items() if v is not None}]
        assert described["ResponseMetadata"]["RequestId"]
        batch.tag_resource(resourceArn=QUEUE_ARN, tags={"team": "vfx"})
        batch.untag_resource(resourceArn=QUEUE_ARN, tagKeys=["team", "old"])
        tags = batch.list_tags_for_resource(resourceArn=DEFINITION_ARN)
        assert tags["tags"] == {"team": "vfx"}
        batch_client(f"{url}/kiln/").describe_jobs(jobs=["j2"])

    assert service.calls == [
        ("SubmitJob", SUBMIT),
        ("DescribeJobs", {"jobs": ["j1"]}),
        ("TagResource", {"resourceArn": QUEUE_ARN, "tags": {"team": "vfx"}}),
        ("UntagResource", {"resourceArn": QUEUE_ARN, "tagKeys": ["team", "old"]}),
        ("ListTagsForResource", {"resourceArn": DEFINITION_ARN}),
        ("DescribeJobs", {"jobs": ["j2"]}),
    ]
