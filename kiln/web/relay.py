"""The server's file relay: `kiln://AREA/PATH` files kept under `<data dir>/relay/`.

On a Ray cluster whose nodes share no disk with the submitting machine, `kiln render` puts the
scene's pack in an area and the jobs write their frames and video there; the submitter mirrors
them back to its local output folder (docs/ray.md). Routes, all under `/kiln/v1/relay`:

- `GET  /kiln/v1/relay`: whether this server's jobs see its own machine's files (`filesReachJobs`);
- `GET  /kiln/v1/relay/AREA/PATH`: a file (HTTP Range works); with `?list`, a folder's entries;
- `PUT  /kiln/v1/relay/AREA/PATH`: a file, streamed to disk and published by a rename, so a reader
  never sees half of it (frame-level resume trusts that a frame present is a finished frame).

Who may: a signed caller (or anyone, on a server without authentication), or a job presenting its
relay token, for the areas its own command names and while it runs (kiln/relay_access.py). Names
are plain (letters, digits, `._-`, no leading dot), so no path leaves the relay folder, and only
the server writes in it, so no link can be planted there.
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln.errors import AuthenticationError, ClientError, NotFoundError, ValidationError
from kiln.private_files import PRIVATE_FILE_MODE, make_private_dir
from kiln.relay_access import AREA_PATTERN, JOB_TOKEN_HEADER, RELAY_PREFIX, RelayKey, areas_named

# One file in the relay at most (a scene pack with its textures is the largest thing sent).
MAX_FILE_BYTES = 64 * 2**30
MAX_DEPTH = 16
_AREA = re.compile(AREA_PATTERN)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_ACTIVE = frozenset({"STARTING", "RUNNING"})


class RelayFileMissing(NotFoundError):
    """A relay file or folder that is not there: a 404, so a client can tell it from a refusal."""

    http_status = 404


class RelayStore:
    """Files of the relay on the server's disk; every path is checked before it is touched."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, area: str, path: str = "") -> Path:
        if not _AREA.fullmatch(area):
            raise ValidationError(f"{area[:80]!r} is not a relay area name ({AREA_PATTERN})")
        parts = [part for part in path.split("/") if part]
        if len(parts) > MAX_DEPTH:
            raise ValidationError(f"relay paths are at most {MAX_DEPTH} names deep")
        for part in parts:
            if not _NAME.fullmatch(part):
                raise ValidationError(
                    f"{part[:80]!r} is not a relay file name: letters, digits and ._- only, not starting with a dot"
                )
        return self.root.joinpath(area, *parts)

    def local_uri(self, uri: str) -> str:
        """The server's own path for a `kiln://AREA/PATH` URI (the dashboard reads renders there)."""
        area, _, path = uri.removeprefix("kiln://").partition("/")
        return str(self.path_of(area, path))

    def listing(self, area: str, path: str) -> list[dict[str, Any]]:
        folder = self.path_of(area, path)
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            raise RelayFileMissing(f"kiln://{area}/{path} is not a folder in the relay") from None
        listed = []
        for entry in entries:
            if entry.name.startswith("."):
                continue  # uploads in flight
            info = entry.stat(follow_symlinks=False)
            kind = "directory" if stat.S_ISDIR(info.st_mode) else "file"
            listed.append({"name": entry.name, "size": info.st_size if kind == "file" else 0, "type": kind})
        return sorted(listed, key=lambda item: str(item["name"]))

    def file(self, area: str, path: str) -> Path:
        target = self.path_of(area, path)
        try:
            mode = target.lstat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise RelayFileMissing(f"kiln://{area}/{path} is not in the relay") from None
        if not stat.S_ISREG(mode):
            raise ValidationError(f"kiln://{area}/{path} is a folder; add ?list to list it")
        return target

    async def receive(self, area: str, path: str, chunks: AsyncIterator[bytes]) -> int:
        """Stream an upload into a hidden file beside its target, then rename it into place."""
        target = self.path_of(area, path)
        if not path.strip("/"):
            raise ValidationError("a relay upload needs a file name after the area")
        if target.is_dir():
            raise ValidationError(f"kiln://{area}/{path} is a folder")
        await run_in_threadpool(self._make_folders, target.parent)
        partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:12]}")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        size = 0
        try:
            with os.fdopen(descriptor, "wb") as handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        raise ClientError(f"a relay file is at most {MAX_FILE_BYTES} bytes")
                    await run_in_threadpool(handle.write, chunk)
            os.replace(partial, target)  # a folder made there meanwhile makes this fail, not vanish
        finally:
            partial.unlink(missing_ok=True)
        return size

    def _make_folders(self, folder: Path) -> None:
        make_private_dir(self.root)
        for below in reversed([folder, *folder.parents][: len(folder.relative_to(self.root).parts)]):
            try:
                below.mkdir(mode=0o700, exist_ok=True)  # private like the rest of the data dir
            except (FileExistsError, NotADirectoryError):
                raise ValidationError(f"{below.relative_to(self.root)} is a file where a folder is needed") from None


def _commands(job: dict[str, Any]) -> list[str]:
    """Every word of a job's commands: its container's, each container's of an ecsProperties task,
    or each container's (command and args, init containers too) of an eksProperties pod."""
    words = list((job.get("container") or {}).get("command") or [])
    for task in (job.get("ecsProperties") or {}).get("taskProperties") or []:
        for container in task.get("containers") or []:
            words += container.get("command") or []
    pod = (job.get("eksProperties") or {}).get("podProperties") or {}
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        words += [*(container.get("command") or []), *(container.get("args") or [])]
    return [str(word) for word in words]


def relay_routes(
    store: RelayStore,
    key: RelayKey,
    describe_job: Callable[[str], dict[str, Any] | None],
    files_reach_jobs: bool,
) -> list[BaseRoute]:
    """The relay's routes; `describe_job` is DescribeJobs of one job (None when there is none)."""

    def authorize(request: Request, area: str) -> None:
        token = request.headers.get(JOB_TOKEN_HEADER)
        if token is None:
            return  # signed, or a server without authentication: the middleware decided
        job_id = key.job_of(token)
        if job_id is None:
            raise AuthenticationError("The relay token is not one this server gave a job")
        job = describe_job(job_id)
        status = (job or {}).get("status")
        if job is None or status not in _ACTIVE:
            raise AuthenticationError(f"Job {job_id} is {status or 'gone'}: its relay token opens nothing now")
        if area not in areas_named(_commands(job)):
            raise AuthenticationError(f"Job {job_id}'s command names no kiln://{area}: its token does not open it")

    async def about(request: Request) -> Response:
        return JSONResponse({"filesReachJobs": files_reach_jobs})

    async def read(request: Request) -> Response:
        area, path = request.path_params["area"], request.path_params.get("path", "")
        await run_in_threadpool(authorize, request, area)
        if "list" in request.query_params:
            return JSONResponse({"entries": await run_in_threadpool(store.listing, area, path)})
        return FileResponse(await run_in_threadpool(store.file, area, path), media_type="application/octet-stream")

    async def write(request: Request) -> Response:
        area, path = request.path_params["area"], request.path_params.get("path", "")
        await run_in_threadpool(authorize, request, area)
        size = await store.receive(area, path, request.stream())
        return JSONResponse({"size": size})

    prefix = RELAY_PREFIX.rstrip("/")
    return [
        Route(prefix, about, methods=["GET"]),
        Route(prefix + "/{area}", read, methods=["GET"]),
        Route(prefix + "/{area}/{path:path}", read, methods=["GET"]),
        Route(prefix + "/{area}/{path:path}", write, methods=["PUT"]),
    ]
