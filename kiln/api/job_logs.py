"""Kiln's own log endpoint (`kiln logs` reads it): a byte range of one attempt's output.

The CloudWatch Logs API (`aws logs get-log-events`) serves the same files as events
(`cloudwatch_logs.py`, `kiln.logs.service`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kiln.errors import ValidationError

MAX_CHUNK = 1024 * 1024
# The largest integer a JSON number keeps exactly (JavaScript's MAX_SAFE_INTEGER): far beyond any log
# or attempt count, and small enough that seek() and arithmetic never overflow into a 500.
MAX_INT_PARAM = 2**53 - 1
_ASCII_DIGITS = re.compile(r"[0-9]{1,16}")


class LogSource(Protocol):
    def log_location(self, job_id: str, attempt: int | None, container: str | None = None) -> Any: ...


def _int_param(request: Request, name: str) -> int | None:
    """A non-negative integer query parameter; ASCII digits only (`str.isdigit` also takes '²')."""
    value = request.query_params.get(name)
    if value is None:
        return None
    if not _ASCII_DIGITS.fullmatch(value) or int(value) > MAX_INT_PARAM:
        raise ValidationError(f"{name} must be an integer from 0 to {MAX_INT_PARAM}, not {value[:40]!r}")
    return int(value)


def same_file(descriptor: int, path: Path) -> bool:
    """Whether `path` still names the file open as `descriptor`. The attempt supervisor recycles a
    log left empty as a later attempt's (kiln/executors/log_files.py): bytes read through a
    descriptor opened just before are then another attempt's, and the stream's path never returns."""
    try:
        named, held = os.stat(path), os.fstat(descriptor)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def log_routes(source: LogSource) -> list[Route]:
    async def read_log(request: Request) -> Response:
        """Errors propagate to the app's middleware, which maps them like any API error."""
        offset = _int_param(request, "offset") or 0
        attempt = _int_param(request, "attempt")
        container = request.query_params.get("container")  # an ecsProperties or eksProperties job's container, by name
        location = await run_in_threadpool(source.log_location, request.path_params["job_id"], attempt, container)
        data = b""
        if location.path.exists():
            with location.path.open("rb") as handle:
                # Past the end there is nothing more yet (lseek refuses offsets past the file system's limit).
                if offset < os.fstat(handle.fileno()).st_size:
                    handle.seek(offset)
                    data = handle.read(MAX_CHUNK)
                if data and not same_file(handle.fileno(), location.path):
                    data = b""  # an empty log recycled for another attempt meanwhile (its bytes are not ours)
        body = {
            "logStreamName": location.stream,
            "text": data.decode("utf-8", errors="replace"),
            "nextOffset": offset + len(data),
            "finished": location.finished and len(data) < MAX_CHUNK,
        }
        return JSONResponse(body)

    return [Route("/kiln/v1/logs/{job_id:path}", read_log, methods=["GET"])]
