"""The ASGI app that speaks AWS Batch's REST-JSON protocol in front of a Kiln service.

The app knows the wire (routes, payload caps, parsing, error form) and nothing of the domain: it
hands validated parameters to `service.call` in a worker thread, because the domain is synchronous
code that touches the database.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from kiln.api.errors import REQUEST_ID_HEADER, error_response
from kiln.api.shapes import parse_request, route_table, serialize_output
from kiln.errors import ClientError

log = logging.getLogger(__name__)

SUBMIT_JOB_MAX_BYTES = 30 * 1024  # AWS: SubmitJob request payload <= 30 KiB
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# An oversized body is still read (and discarded) up to this size so that the client, which is
# still sending, receives our error instead of a reset connection.
_DRAIN_LIMIT_BYTES = 16 * 1024 * 1024


class BatchService(Protocol):
    """What the app needs from the domain: run one Batch operation, and say which ones exist."""

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]: ...

    def implements(self, operation: str) -> bool: ...


def create_app(
    service: BatchService,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    submit_job_max_bytes: int = SUBMIT_JOB_MAX_BYTES,
    extra_routes: Sequence[BaseRoute] | None = None,
    middleware: Sequence[Middleware] = (),
    lifespan: Lifespan[Starlette] | None = None,
    targets: Mapping[str, ASGIApp] | None = None,
) -> Starlette:
    """The Kiln HTTP app: `/healthz`, `extra_routes` (e.g. logs, UI), then Batch on any `.../v1/...`.

    `targets` maps an `X-Amz-Target` prefix (`Logs_20140328`) to the endpoint of that JSON-protocol
    service, which shares the catch-all route with Batch. `middleware` (e.g. SigV4 authentication)
    runs inside the error-mapping middleware, so what it raises reaches the client in AWS's error form.
    """
    batch = BatchEndpoint(service, max_body_bytes, {"SubmitJob": submit_job_max_bytes})
    endpoint: ASGIApp = TargetRouter(targets, batch) if targets else batch
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        *(extra_routes or []),
        Route("/{path:path}", endpoint),  # an ASGI endpoint: every method, so wrong ones get our error
    ]
    app = Starlette(routes=routes, middleware=[Middleware(RequestContextMiddleware), *middleware], lifespan=lifespan)
    # A path the catch-all's `.*` cannot match (a percent-encoded newline) would get Starlette's
    # plain-text 404; the Batch endpoint answers it in AWS form instead.
    app.router.default = batch
    # ...and one that matches nothing with or without a trailing slash gets that error too, never a
    # 307 to a path that does not exist (the dashboard's `/ui` -> `/ui/` is an explicit route).
    app.router.redirect_slashes = False
    app.state.service = service
    return app


async def healthz(request: Request) -> JSONResponse:
    """Liveness for load balancers and `kiln server` start-up checks; touches nothing."""
    return JSONResponse({"status": "ok"})


class BatchEndpoint:
    """Dispatches every Batch route; errors are raised and mapped by the middleware."""

    def __init__(self, service: BatchService, max_body_bytes: int, limits: dict[str, int]) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        operation, path_params = route_table().resolve(request.method, request.scope["path"])
        if not self.service.implements(operation):
            raise ClientError(f"Kiln does not implement {operation}")
        body = await read_body(request, self.limits.get(operation, self.max_body_bytes))
        query = {key: request.query_params.getlist(key) for key in request.query_params}
        params = parse_request(operation, body, path_params, query)
        result = await run_in_threadpool(self.service.call, operation, params)
        return JSONResponse(serialize_output(operation, result))


class TargetRouter:
    """AWS JSON-protocol clients (CloudWatch Logs) POST to the root with `X-Amz-Target`; Batch never
    sends that header, so one endpoint serves both."""

    def __init__(self, targets: Mapping[str, ASGIApp], fallback: ASGIApp) -> None:
        self.targets = dict(targets)
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = Headers(scope=scope).get("x-amz-target")
        if target is None:
            await self.fallback(scope, receive, send)
            return
        endpoint = self.targets.get(target.partition(".")[0])
        if endpoint is None:
            raise ClientError(f"Unknown X-Amz-Target {target!r}: Kiln serves {', '.join(sorted(self.targets))}")
        await endpoint(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused before parsing when larger than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    body = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        too_big = too_big or received > limit
        if not too_big:
            body += chunk
        elif received > _DRAIN_LIMIT_BYTES:
            break
    if too_big:
        raise ClientError(f"Request payload size exceeds the limit of {limit} bytes")
    return bytes(body)


class RequestContextMiddleware:
    """Gives every HTTP response an `x-amzn-RequestId` and maps any escaped exception to AWS form.

    Sitting outside the router, it also covers `extra_routes`, so the whole server has one error form.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # No one is left to answer, and a client hanging up mid-upload is no fault of the server's.
            log.info("request %s: client disconnected before sending the whole body", request_id)
        except Exception as exc:
            if started:
                raise
            await error_response(exc, request_id)(scope, receive, send)
