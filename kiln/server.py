"""The composition root: settings -> database -> executor -> scheduler -> API app -> uvicorn."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from kiln.api.app import create_app
from kiln.api.job_logs import log_routes
from kiln.batch.scheduler import Scheduler
from kiln.batch.service import BatchService
from kiln.config import Settings
from kiln.errors import ConflictError, ValidationError
from kiln.executors.base import Executor
from kiln.executors.docker import DockerExecutor
from kiln.executors.images import ImageCatalogue
from kiln.executors.local import LocalExecutor
from kiln.render import image as render_image
from kiln.store.database import Database

log = logging.getLogger("kiln")


@dataclass
class Server:
    settings: Settings
    db: Database
    service: BatchService
    scheduler: Scheduler
    app: Starlette


def lock_data_dir(settings: Settings) -> int:
    """One server per data dir: a second one would treat the first one's attempts as lost."""
    fd = os.open(settings.data_dir / "kiln.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConflictError(f"another kiln server is already using the data dir {settings.data_dir}") from None
    return fd  # held (and so locked) until the process exits


def make_executor(settings: Settings) -> Executor:
    """`settings.executor`: the local one by default, Docker only when asked for."""
    if settings.executor == "docker":
        return DockerExecutor.connect(settings)
    if settings.executor != "local":
        raise ValidationError(f"unknown executor {settings.executor!r}: use local or docker")
    catalogue = ImageCatalogue(settings.images)
    catalogue.register(render_image.IMAGE, render_image.entrypoint())  # Kiln's own render worker
    return LocalExecutor(settings, catalogue)


def build_server(settings: Settings) -> Server:
    """Wire every part; nothing runs until the app's lifespan starts the scheduler."""
    for directory in (settings.data_dir, settings.logs_dir, settings.work_dir):
        directory.mkdir(parents=True, exist_ok=True)
    lock_data_dir(settings)
    db = Database(settings.resolved_database_url(), fsync=settings.fsync)
    executor = make_executor(settings)
    service = BatchService(db, settings)
    scheduler = Scheduler(db, executor, settings, service.arns)
    service.on_change = scheduler.notify_change

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        log.info("kiln server ready on http://%s:%d (data dir %s)", settings.host, settings.port, settings.data_dir)
        try:
            yield
        finally:
            scheduler.stop()
            db.close()

    app = create_app(service, extra_routes=log_routes(service), lifespan=lifespan)
    return Server(settings, db, service, scheduler, app)


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = build_server(settings)
    uvicorn.run(server.app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
