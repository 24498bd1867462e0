"""Routes of the dashboard: the single-page app under `/ui/` and its read-only JSON endpoints.

The pages themselves talk to the ordinary Batch API (`/v1/describejobs`, `/v1/canceljob`, ...) and
the log endpoint; the endpoints here answer only what the Batch API cannot answer cheaply: every
child's status of a 10,000-child array in one response, the capacity attempts hold, and a render
job's frames and video. Errors are raised as Kiln errors and mapped by the app's middleware.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from kiln.errors import NotFoundError, ValidationError
from kiln.web import render_files

STATIC_DIR = Path(__file__).parent / "static"
# Frames never change once published (uploads are atomic); pages poll the listing, not the files.
_FRAME_CACHE = "public, max-age=3600, immutable"


class BatchCalls(Protocol):
    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]: ...


class DashboardData(Protocol):
    def array_children(self, parent_id: str) -> dict[str, Any]: ...

    def capacity_in_use(self) -> dict[str, Any]: ...

    def job_counts(self) -> dict[str, Any]: ...


def dashboard_routes(service: BatchCalls, reads: DashboardData, cache_dir: Path) -> list[BaseRoute]:
    """Routes to pass as `create_app(extra_routes=...)`; `cache_dir` holds copies of remote videos."""

    def describe(job_id: str) -> dict[str, Any]:
        found = service.call("DescribeJobs", {"jobs": [job_id]})["jobs"]
        if not found:
            raise NotFoundError(f"Job {job_id} not found.")
        return dict(found[0])

    def output_of(job_id: str) -> render_files.RenderOutput:
        output = render_files.render_output(describe(job_id).get("container") or {})
        if output is None:
            raise ValidationError(f"Job {job_id} is not a {render_files.IMAGE} render or stitch job")
        return output

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
        path = await run_in_threadpool(lambda: render_files.video_file(output_of(job_id), cache_dir))
        return FileResponse(path, media_type="video/mp4", headers={"cache-control": "no-cache"})

    return [
        Route("/ui", index_redirect, methods=["GET"]),
        Mount("/ui", app=StaticFiles(directory=STATIC_DIR, html=True), name="ui"),
        Route("/kiln/v1/arrays/{job_id}/children", array_children, methods=["GET"]),
        Route("/kiln/v1/capacity", capacity, methods=["GET"]),
        Route("/kiln/v1/job-counts", job_counts, methods=["GET"]),
        Route("/kiln/v1/renders/{job_id}", render_listing, methods=["GET"]),
        Route("/kiln/v1/renders/{job_id}/frames/{name}", render_frame, methods=["GET"]),
        Route("/kiln/v1/renders/{job_id}/video", render_video, methods=["GET"]),
    ]
