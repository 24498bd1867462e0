"""The AWS Batch API (REST-JSON) over `urllib`, signed with `sigv4` when a key is set.

Every failure an artist can meet becomes a `KilnError` whose message says what happened and what
to do; the operators show it in Blender's report instead of a traceback.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import sigv4

TIMEOUT_SECONDS = 30.0
# The Batch operations the add-on calls and their REST paths (botocore's model: POST /v1/<name>).
PATHS = {
    "CreateComputeEnvironment": "/v1/createcomputeenvironment",
    "CreateJobQueue": "/v1/createjobqueue",
    "DescribeComputeEnvironments": "/v1/describecomputeenvironments",
    "DescribeJobDefinitions": "/v1/describejobdefinitions",
    "DescribeJobQueues": "/v1/describejobqueues",
    "DescribeJobs": "/v1/describejobs",
    "ListJobs": "/v1/listjobs",
    "RegisterJobDefinition": "/v1/registerjobdefinition",
    "SubmitJob": "/v1/submitjob",
    "TerminateJob": "/v1/terminatejob",
}
AUTH_REFUSALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "AccessDeniedException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
    }
)


class KilnError(Exception):
    """A failure to show the artist as it is: the message is the whole explanation."""


class NotReachableError(KilnError):
    """No server answered at the URL."""


class AuthRefusedError(KilnError):
    """The server refused the request's credentials (or their absence)."""


class ApiError(KilnError):
    """The server answered with an AWS error (`code`), for a reason other than credentials."""

    def __init__(self, message: str, code: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Connection:
    """Where the server is and how to sign for it (no key: requests go unsigned)."""

    server_url: str
    access_key_id: str = ""
    secret_access_key: str = ""
    region: str = "us-east-1"
    session_token: str = ""

    @property
    def endpoint(self) -> str:
        return self.server_url.strip().rstrip("/")

    @property
    def signs(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    def signed_headers(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, service: str = "batch"
    ) -> dict[str, str]:
        if not self.signs:
            if body is None:
                return {**headers, "X-Amz-Content-SHA256": sigv4.UNSIGNED_PAYLOAD}
            return dict(headers)
        return sigv4.sign(
            method,
            url,
            headers,
            body,
            access_key_id=self.access_key_id.strip(),
            secret_access_key=self.secret_access_key.strip(),
            region=self.region.strip() or "us-east-1",
            service=service,
            session_token=self.session_token,
        )


class BatchClient:
    """`call("SubmitJob", {...})` returns the decoded answer or raises a `KilnError`."""

    def __init__(self, connection: Connection, timeout: float = TIMEOUT_SECONDS) -> None:
        scheme = urlsplit(connection.endpoint).scheme
        if scheme not in ("http", "https") or not urlsplit(connection.endpoint).netloc:
            raise KilnError(
                f"the server URL {connection.server_url!r} is not an http:// or https:// address "
                "(set it in the Kiln add-on's preferences)"
            )
        self.connection = connection
        self.timeout = timeout

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        url = self.connection.endpoint + PATHS[operation]
        body = json.dumps(params).encode()
        headers = self.connection.signed_headers("POST", url, {"Content-Type": "application/json"}, body)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        status, answer, error_type = send(request, self.timeout, self.connection)
        if status >= 400:
            raise api_error(self.connection, operation, status, answer, error_type)
        return dict(json.loads(answer or b"{}"))


def send(request: urllib.request.Request, timeout: float, connection: Connection) -> tuple[int, bytes, str]:
    """(status, body, x-amzn-ErrorType) of one request; a network failure is a NotReachableError."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), ""
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read(), error.headers.get("x-amzn-ErrorType", "")
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise NotReachableError(
            f"the Kiln server at {connection.endpoint} is not reachable ({reason}): is `kiln server` running "
            "there, and is the server URL in the Kiln add-on's preferences right?"
        ) from None


def api_error(connection: Connection, operation: str, status: int, body: bytes, error_type: str) -> KilnError:
    """The artist's message for an error answer: credentials refusals get their own."""
    try:
        decoded = json.loads(body or b"{}")
    except ValueError:
        decoded = {}
    if not isinstance(decoded, dict):
        decoded = {}
    code = (error_type or str(decoded.get("__type", "")) or "").split(":")[0].rpartition("#")[2]
    message = str(decoded.get("message") or decoded.get("Message") or body[:200].decode("utf-8", "replace"))
    if code in AUTH_REFUSALS or status in (401, 403):
        if not connection.signs:
            hint = "this server needs an access key: set the access key ID and secret in the Kiln add-on's preferences"
        else:
            hint = (
                f"check the access key ID {connection.access_key_id.strip()!r} and its secret in the Kiln add-on's "
                f"preferences (`kiln keys create` on the server makes a key), and the region "
                f"{connection.region.strip() or 'us-east-1'!r}"
            )
        return AuthRefusedError(f"the Kiln server at {connection.endpoint} refused the access key: {message} ({hint})")
    if status == 404 and not code:
        return ApiError(
            f"{connection.endpoint} answered 404 to {operation}: it does not look like a Kiln or AWS Batch endpoint",
            "NotFound",
            status,
        )
    return ApiError(f"{operation} failed: {message or code or f'HTTP {status}'}", code or f"HTTP{status}", status)
