"""`GET /metrics`: one server's Prometheus registry in the text exposition format."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def metrics_routes(registry: CollectorRegistry) -> list[Route]:
    async def metrics(request: Request) -> Response:
        """Collecting reads the store, so it runs in a worker thread like every domain call."""
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics, methods=["GET"])]
