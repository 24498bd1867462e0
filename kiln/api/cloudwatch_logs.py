"""The CloudWatch Logs API (JSON 1.1) on Kiln's endpoint, so `aws logs get-log-events` works unchanged.

The `logs` client POSTs to the endpoint's root with `X-Amz-Target: Logs_20140328.<Operation>`; the
app hands such requests here (see `app.TargetRouter`). This module knows the wire only: the target,
the body, botocore's `logs` model for validation and output shapes, and the service's error codes
(`errors.LOGS`). Which events a stream holds is the domain's business (`kiln.logs.service`).
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from kiln.api.app import read_body
from kiln.api.errors import LOGS, error_response
from kiln.api.shapes import operation_model, parse_request, serialize_output, service_model
from kiln.errors import ClientError

SERVICE = "logs"
TARGET_PREFIX: str = service_model(SERVICE).metadata["targetPrefix"]  # Logs_20140328
MAX_BODY_BYTES = 1024 * 1024


class LogsService(Protocol):
    """What the endpoint needs from the domain: run one Logs operation, and say which ones exist."""

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]: ...

    def implements(self, operation: str) -> bool: ...


class LogsEndpoint:
    """An ASGI endpoint for every `Logs_20140328.*` target; errors come back in the Logs dialect."""

    def __init__(self, service: LogsService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except Exception as exc:  # mapped in the one place errors are mapped, in this service's dialect
            response = error_response(exc, scope.get("state", {}).get("request_id"), LOGS)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        operation = _operation(request.headers)
        if request.method != "POST":
            raise ClientError(f"Method {request.method} is not allowed for {operation}; use POST")
        operation_model(operation, SERVICE)  # an unknown name is refused before anything is read
        if not self.service.implements(operation):
            raise ClientError(f"Kiln does not implement {operation}")
        body = await read_body(request, MAX_BODY_BYTES)
        params = parse_request(operation, body, service=SERVICE)
        result = await run_in_threadpool(self.service.call, operation, params)
        return JSONResponse(serialize_output(operation, result, SERVICE), media_type=LOGS.media_type)


def _operation(headers: Headers) -> str:
    target = headers.get("x-amz-target", "")
    prefix, _, operation = target.partition(".")
    if prefix != TARGET_PREFIX or not operation:
        raise ClientError(f"Unknown X-Amz-Target {target!r}: expected {TARGET_PREFIX}.<Operation>")
    return operation
