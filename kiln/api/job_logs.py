"""Kiln's own log endpoint (`kiln logs` reads it): a byte range of one attempt's output.

CloudWatch Logs compatibility (`aws logs get-log-events`) is a separate, later API.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kiln.errors import ValidationError

MAX_CHUNK = 1024 * 1024


class LogSource(Protocol):
    def log_location(self, job_id: str, attempt: int | None) -> Any: ...


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise ValidationError(f"{name} must be a non-negative integer")
    return int(value)


def log_routes(source: LogSource) -> list[Route]:
    async def read_log(request: Request) -> Response:
        """Errors propagate to the app's middleware, which maps them like any API error."""
        offset = _int_param(request, "offset") or 0
        attempt = _int_param(request, "attempt")
        location = await run_in_threadpool(source.log_location, request.path_params["job_id"], attempt)
        data = b""
        if location.path.exists():
            with location.path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read(MAX_CHUNK)
        body = {
            "logStreamName": location.stream,
            "text": data.decode("utf-8", errors="replace"),
            "nextOffset": offset + len(data),
            "finished": location.finished and len(data) < MAX_CHUNK,
        }
        return JSONResponse(body)

    return [Route("/kiln/v1/logs/{job_id:path}", read_log, methods=["GET"])]
