"""The composition root: settings -> database -> executor -> scheduler -> API app -> uvicorn."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from uvicorn.main import STARTUP_FAILURE

from kiln.access_keys import KeyFile
from kiln.api.app import create_app
from kiln.api.cloudwatch_logs import TARGET_PREFIX, LogsEndpoint
from kiln.api.front_door import FrontDoorMiddleware, HostNames
from kiln.api.job_logs import log_routes
from kiln.api.metrics import metrics_routes
from kiln.api.sigv4 import SignatureVerifier, SigV4Middleware
from kiln.batch.dashboard import DashboardReads
from kiln.batch.service import BatchService
from kiln.config import Settings
from kiln.engine import store_metrics
from kiln.engine.scheduler import Scheduler
from kiln.errors import ConflictError, ValidationError
from kiln.executors.base import Executor, local_host_id
from kiln.executors.images import ImageCatalogue
from kiln.executors.job_users import JobUsers
from kiln.executors.supervised import SupervisedExecutor
from kiln.logs.service import LogsService
from kiln.observability.metrics import ServerMetrics
from kiln.private_files import PRIVATE_FILE_MODE, create_private_file, make_private_dir
from kiln.store.database import Database
from kiln.web.relay import RelayStore, relay_routes
from kiln.web.routes import dashboard_routes, open_routes
from kiln.web.sessions import SessionStore

log = logging.getLogger("kiln")
# A request line plus headers: AWS caps these too, and SigV4 needs a few KiB. Larger heads are
# refused in AWS's error form (kiln/api/http_server.py); each open connection buffers at most this.
MAX_REQUEST_HEAD_BYTES = 64 * 1024


@dataclass
class Server:
    settings: Settings
    db: Database
    service: BatchService
    scheduler: Scheduler
    app: Starlette


def lock_data_dir(settings: Settings) -> int:
    """One server per data dir: a second one would treat the first one's attempts as lost."""
    fd = os.open(settings.data_dir / "kiln.lock", os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConflictError(f"another kiln server is already using the data dir {settings.data_dir}") from None
    return fd  # held (and so locked) until the process exits


AUTH_MODES = ("none", "sigv4")


def is_loopback_host(host: str) -> bool:
    """Only these addresses keep an unauthenticated server to this machine's own users."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(settings: Settings) -> None:
    """Refuse to serve the API (which runs any command as this user) to the network unauthenticated."""
    if settings.auth not in AUTH_MODES:
        raise ValidationError(f"unknown auth mode {settings.auth!r}; use one of: {', '.join(AUTH_MODES)}")
    if settings.auth == "none" and not settings.insecure and not is_loopback_host(settings.host):
        raise ValidationError(
            f"refusing to listen on {settings.host} without authentication: anyone who can reach it could "
            "run commands as this user. Use --auth sigv4 (create keys with `kiln keys create`), "
            "or --insecure if every machine that can reach the port is trusted"
        )


EXECUTORS = ("local", "docker", "ray")


def check_executor(settings: Settings) -> None:
    """An unknown executor, job users the local executor cannot use, or a Docker daemon that does
    not answer, refuses the start.

    Only a ping: the executor itself is made after the database (the local one starts a supervisor).
    """
    if settings.executor not in EXECUTORS:
        raise ValidationError(f"unknown executor {settings.executor!r}: use local, docker or ray")
    if settings.executor == "local":  # an unknown job user or a bad job_uids; Ray nodes resolve their own
        JobUsers(settings.job_user, settings.allowed_job_users, job_uids=settings.job_uids)
    if settings.executor == "docker":
        from kiln.executors.docker import answering_client

        answering_client(settings, timeout=30).close()


def check_start(settings: Settings) -> None:
    """Every check that can refuse a start, before anything is written: a refused start leaves the
    data dir as it was (no kiln.db created or migrated, no supervisor, no modes changed)."""
    check_exposure(settings)
    if settings.auth == "sigv4":
        keys = KeyFile(settings.data_dir)
        keys.check_private()
        keys.keys()  # a credentials file that is not one refuses now, not at the first request
    check_executor(settings)


def front_door(settings: Settings) -> Middleware:
    """Cross-site and DNS-rebinding requests are refused first, whatever the auth mode."""
    return Middleware(FrontDoorMiddleware, hosts=HostNames.for_server(settings.host, settings.allowed_hosts))


def auth_middleware(settings: Settings, sessions: SessionStore | None = None) -> list[Middleware]:
    """SigV4 on every route but the open ones; `sessions` lets the dashboard's cookie stand in for a signature."""
    if settings.auth != "sigv4":
        return []
    keys = KeyFile(settings.data_dir)
    keys.check_private()
    if not keys.keys():
        log.warning("--auth sigv4: no access keys yet in %s; create one with `kiln keys create`", keys.path)
    verifier = SignatureVerifier(keys, settings.region)
    return [Middleware(SigV4Middleware, verifier=verifier, sessions=sessions, open_routes=open_routes())]


def make_executor(settings: Settings) -> Executor:
    """`settings.executor`: the local one by default, Docker or Ray only when asked for."""
    if settings.executor == "docker":
        from kiln.executors.docker import DockerExecutor  # the Docker SDK (0.3 s of imports) only when used

        return DockerExecutor.connect(settings)
    if settings.executor == "ray":
        from kiln.executors.ray_cluster import RayExecutor  # imports Ray (slow) only when used

        return RayExecutor(settings)
    if settings.executor != "local":
        raise ValidationError(f"unknown executor {settings.executor!r}: use local, docker or ray")
    catalogue = ImageCatalogue.from_settings(settings)
    return SupervisedExecutor(settings, catalogue, local_host_id())


def describe_job(service: BatchService, job_id: str) -> dict[str, Any] | None:
    found = service.call("DescribeJobs", {"jobs": [job_id]})["jobs"]
    return dict(found[0]) if found else None


def build_server(settings: Settings) -> Server:
    """Wire every part; nothing runs until the app's lifespan starts the scheduler."""
    check_start(settings)
    make_private_dir(settings.data_dir)
    lock_data_dir(settings)  # before touching what a running server may own
    make_private_dir(settings.logs_dir)
    if settings.work_dir.is_relative_to(settings.data_dir):  # else jobs run as other users: see prepare_work_root
        make_private_dir(settings.work_dir)
    if settings.database_url is None:
        create_private_file(settings.database_path)
    db = Database(settings.resolved_database_url(), fsync=settings.fsync)
    executor = make_executor(settings)
    service = BatchService(db, settings)
    scheduler = Scheduler(db, executor, settings, service.arns)
    service.on_change = scheduler.notify_change
    metrics = ServerMetrics(lambda: store_metrics.snapshot(db, executor.capacity))
    scheduler.metrics = metrics.scheduler

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()
            db.close()

    sessions = SessionStore(KeyFile(settings.data_dir)) if settings.auth == "sigv4" else None
    reads = DashboardReads(db, settings, lambda: executor.capacity().gpus)
    relay = RelayStore(settings.relay_dir)
    dashboard = dashboard_routes(service, reads, settings.data_dir / "dashboard-cache", sessions, relay)
    relaying = relay_routes(
        relay, scheduler.attempts.relay_key, partial(describe_job, service), settings.files_reach_jobs
    )
    app = create_app(
        service,
        extra_routes=[*log_routes(service), *metrics_routes(metrics.registry), *dashboard, *relaying],
        middleware=[front_door(settings), *auth_middleware(settings, sessions)],
        lifespan=lifespan,
        targets={TARGET_PREFIX: LogsEndpoint(LogsService(db, settings))},
    )
    return Server(settings, db, service, scheduler, app)


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kiln.api.http_server import ConnectionLimits, http_protocol

    limits = ConnectionLimits.within_fd_limit(
        settings.request_head_timeout_seconds, settings.request_body_timeout_seconds
    )
    server = build_server(settings)
    config = uvicorn.Config(
        server.app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
        # h11, pinned (httptools, when installed, would be picked and bypass them), with Kiln's
        # request deadlines and connection cap; no WebSockets (no route uses them).
        http=http_protocol(limits), ws="none", backlog=limits.backlog,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
    )  # fmt: skip
    listening = _ReadyWhenListening(config, settings.data_dir)
    with contextlib.suppress(KeyboardInterrupt):
        listening.run()
    if not listening.started:
        sys.exit(STARTUP_FAILURE)


class _ReadyWhenListening(uvicorn.Server):
    """uvicorn's server that says Kiln is ready once its socket accepts connections: uvicorn runs
    the app's start-up (the scheduler) before it binds, so a line logged there came too early for
    a client that waits for it."""

    def __init__(self, config: uvicorn.Config, data_dir: Path) -> None:
        super().__init__(config)
        self.data_dir = data_dir

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            log.info("kiln server ready on http://%s:%d (data dir %s)", host, port, self.data_dir)
