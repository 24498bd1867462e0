"""Routes of the dashboard: the single-page app under `/ui/` and its read-only JSON endpoints.

The pages themselves talk to the ordinary Batch API (`/v1/describejobs`, `/v1/canceljob`, ...) and
the log endpoint; the endpoints here answer only what the Batch API cannot answer cheaply: every
child's status of a 10,000-child array in one response, the capacity attempts hold, and a render
job's frames and video. Errors are raised as Kiln errors and mapped by the app's middleware.

Under `--auth sigv4` the dashboard also answers `/ui/session`: sign in with an access key (which sets
the session cookie), who am I, sign out. Only the static files and the sign-in itself are reachable
unsigned (`open_routes`); everything else needs a signature or a session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from kiln.errors import AuthenticationError, NotFoundError, ValidationError
from kiln.web import render_files
from kiln.web.relay import RelayStore
from kiln.web.sessions import SessionStore

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SESSION_PATH = "/ui/session"
# A sign-in body holds two short strings; anything larger is not one.
_SIGN_IN_MAX_BYTES = 4096
# A refused sign-in answers after this pause: it slows a guessing script to a crawl per connection
# (a 240-bit secret cannot be guessed anyway) without letting anyone lock a key out.
FAILED_SIGN_IN_DELAY_SECONDS = 0.5
# Frames never change once published (uploads are atomic); pages poll the listing, not the files.
_FRAME_CACHE = "public, max-age=3600, immutable"


class OpenFileResponse(FileResponse):
    """A FileResponse (HTTP Range included) over a file opened beforehand, closed once answered.

    Starlette opens by path; `/proc/self/fd/N` reopens exactly the file behind the descriptor, so a
    job cannot swap a link in between the dashboard's checks and the read.
    """

    def __init__(self, fd: int, media_type: str, headers: dict[str, str]) -> None:
        super().__init__(f"/proc/self/fd/{fd}", media_type=media_type, headers=headers, stat_result=os.fstat(fd))
        self.fd = fd

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self.fd)


class BatchCalls(Protocol):
    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]: ...


class DashboardData(Protocol):
    def array_children(self, parent_id: str) -> dict[str, Any]: ...

    def capacity_in_use(self) -> dict[str, Any]: ...

    def job_counts(self) -> dict[str, Any]: ...


def open_routes() -> frozenset[tuple[str, str]]:
    """(method, decoded path) pairs that need no signature under `--auth sigv4`: the sign-in page's
    static files (no data in them) and the sign-in itself. Exact paths, so nothing else matches."""
    paths = ["/ui", "/ui/", *(f"/ui/{file.name}" for file in STATIC_DIR.iterdir() if file.is_file())]
    return frozenset({(method, path) for path in paths for method in ("GET", "HEAD")} | {("POST", SESSION_PATH)})


def dashboard_routes(
    service: BatchCalls,
    reads: DashboardData,
    cache_dir: Path,
    sessions: SessionStore | None = None,
    relay: RelayStore | None = None,
) -> list[BaseRoute]:
    """Routes to pass as `create_app(extra_routes=...)`; `cache_dir` holds copies of remote videos.

    `sessions` (under `--auth sigv4` only) adds the sign-in at `/ui/session`; `relay` is where the
    server keeps `kiln://` files, which a render job may name as its output.
    """

    def describe(job_id: str) -> dict[str, Any]:
        found = service.call("DescribeJobs", {"jobs": [job_id]})["jobs"]
        if not found:
            raise NotFoundError(f"Job {job_id} not found.")
        return dict(found[0])

    def output_of(job_id: str) -> render_files.RenderOutput:
        output = render_files.render_output(describe(job_id).get("container") or {})
        if output is None:
            raise ValidationError(f"Job {job_id} is not a {render_files.RENDER_IMAGE} render or stitch job")
        return render_files.in_relay(output, relay.local_uri) if relay is not None else output

    async def index_redirect(request: Request) -> Response:
        return RedirectResponse(url="/ui/", status_code=307)

    async def array_children(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reads.array_children, request.path_params["job_id"]))

    async def capacity(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reads.capacity_in_use))

    async def job_counts(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reads.job_counts))

    async def render_listing(request: Request) -> Response:
        job_id = request.path_params["job_id"]

        def answer() -> dict[str, Any]:
            output = output_of(job_id)
            return {"jobId": job_id, "framesUri": output.frames_from, "videoUri": output.video_in,
                    **render_files.listing(output)}  # fmt: skip

        return JSONResponse(await run_in_threadpool(answer))

    async def render_frame(request: Request) -> Response:
        job_id, name = request.path_params["job_id"], request.path_params["name"]
        data = await run_in_threadpool(lambda: render_files.frame_bytes(output_of(job_id), name))
        return Response(data, media_type="image/png", headers={"cache-control": _FRAME_CACHE})

    async def render_video(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        fd = await run_in_threadpool(lambda: render_files.video_file(output_of(job_id), cache_dir))
        return OpenFileResponse(fd, media_type="video/mp4", headers={"cache-control": "no-cache"})

    return [
        Route("/ui", index_redirect, methods=["GET"]),
        *(session_routes(sessions) if sessions is not None else []),  # before the mount, which takes all /ui/*
        Mount("/ui", app=StaticFiles(directory=STATIC_DIR, html=True), name="ui"),
        Route("/kiln/v1/arrays/{job_id}/children", array_children, methods=["GET"]),
        Route("/kiln/v1/capacity", capacity, methods=["GET"]),
        Route("/kiln/v1/job-counts", job_counts, methods=["GET"]),
        Route("/kiln/v1/renders/{job_id}", render_listing, methods=["GET"]),
        Route("/kiln/v1/renders/{job_id}/frames/{name}", render_frame, methods=["GET"]),
        Route("/kiln/v1/renders/{job_id}/video", render_video, methods=["GET"]),
    ]


def session_routes(sessions: SessionStore) -> list[BaseRoute]:
    """`POST` signs in, `GET` says who is signed in, `DELETE` signs out (`SigV4Middleware` has
    already authenticated `GET` and `DELETE`; `POST` is open and checks the key pair itself)."""

    async def sign_in(request: Request) -> Response:
        check_sign_in_request(request.headers)
        key_id, secret = await sign_in_fields(request)
        try:
            token, session = sessions.sign_in(key_id, secret)
        except AuthenticationError:
            client = request.client.host if request.client else "?"
            logger.warning("dashboard sign-in refused for access key id %r from %s", key_id[:40], client)
            await asyncio.sleep(FAILED_SIGN_IN_DELAY_SECONDS)
            raise
        lifetime = int((session.expires_at - session.created_at).total_seconds())
        response = JSONResponse(session_document(session))
        response.set_cookie(sessions.cookie, token, max_age=lifetime, path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")  # fmt: skip
        return response

    async def who_am_i(request: Request) -> Response:
        session = getattr(request.state, "session", None)
        if session is None:  # a signed request (boto3, curl with SigV4): no session, but a key
            return JSONResponse({"accessKeyId": request.state.access_key_id})
        return JSONResponse(session_document(session))

    async def sign_out(request: Request) -> Response:
        token = request.cookies.get(sessions.cookie)
        if token:
            sessions.sign_out(token)
        response = JSONResponse({})
        response.delete_cookie(sessions.cookie, path="/", httponly=True, samesite="strict")
        return response

    return [
        Route(SESSION_PATH, sign_in, methods=["POST"]),
        Route(SESSION_PATH, who_am_i, methods=["GET"]),
        Route(SESSION_PATH, sign_out, methods=["DELETE"]),
    ]


def check_sign_in_request(headers: Headers) -> None:
    """Only the dashboard's own page may sign in: a JSON body (a cross-site form cannot send one, and a
    cross-origin script must ask first, which Kiln never grants) and, from a browser, its own Origin.

    This stops a page elsewhere from signing the browser in under the page's key (login CSRF).
    """
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ValidationError("Sign in with a JSON body: Content-Type must be application/json")
    origin, host = headers.get("origin"), headers.get("host", "")
    if origin is not None and origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
        raise AuthenticationError("Sign-in refused: it must come from the dashboard's own page")


async def sign_in_fields(request: Request) -> tuple[str, str]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _SIGN_IN_MAX_BYTES:
            raise ValidationError(f"A sign-in body is at most {_SIGN_IN_MAX_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise ValidationError('Malformed JSON body: expected {"accessKeyId": ..., "secretAccessKey": ...}') from None
    fields = [document.get(name) if isinstance(document, dict) else None for name in ("accessKeyId", "secretAccessKey")]
    if not all(isinstance(value, str) and value for value in fields):
        raise ValidationError("Sign in with a JSON object holding the strings accessKeyId and secretAccessKey")
    return str(fields[0]), str(fields[1])


def session_document(session: Any) -> dict[str, Any]:
    return {"accessKeyId": session.access_key_id, "expiresAt": session.expires_at.timestamp()}
