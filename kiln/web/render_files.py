"""A render job's output as the dashboard shows it: frame files as they land, and the final MP4.

The only storage locations read are the ones a `kiln/render` job names in its own command (`-o`
of `render`, `-i`/`-o` of `stitch`), so the dashboard can never be pointed at an arbitrary path.
A job's command is still its submitter's input, so only the storage the render worker writes to
is read (absolute local paths, `file://`, `s3://`): never `http(s)://` or another fsspec protocol,
which would make the server fetch whatever host a job names; `kiln://` is the server's own relay
folder (`in_relay`), read as a local path. Only `<out>/frames/NNNN.png` and
`<out>/output.mp4` are served, and local files are opened without following a symbolic link
below the declared folder, so a job cannot make the dashboard serve the server's own files.
Storage goes through the render workload's fsspec helpers; they need the `render` extra, so
they are imported when first used and a server without it answers with a plain error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from kiln.errors import NotFoundError, ValidationError
from kiln.executors.images import RENDER_IMAGE
from kiln.private_files import make_private_dir
from kiln.relay_access import RELAY_SCHEME

VIDEO_FILE = "output.mp4"
FRAMES_FOLDER = "frames"  # kiln.render.frame_store's, named here so the checks need no fsspec
_FRAME_NAME = re.compile(r"-?[0-9]{1,12}\.png")  # fullmatch: no '/', '..', '%2F' or trailing newline
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_LOCAL_SCHEMES = ("file", "local")
_S3_SCHEMES = ("s3", "s3a")
# No symbolic link is followed, and a FIFO a job left in place of a frame does not block the open.
_NO_LINKS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


@dataclass(frozen=True)
class RenderOutput:
    """Where a render job's frames are read from and where its video is (or will be)."""

    frames_from: str
    video_in: str


def _argument(command: list[str], short: str, long: str) -> str | None:
    for position, word in enumerate(command[:-1]):
        if word in (short, long):
            return command[position + 1]
    return None


def render_output(container: dict[str, Any]) -> RenderOutput | None:
    """The output of a job running Kiln's render image, from its resolved command; None for other jobs."""
    image = str(container.get("image") or "")
    command = [str(word) for word in container.get("command") or []]
    if image.removesuffix(":latest") != RENDER_IMAGE or not command or command[0] not in ("render", "stitch"):
        return None
    output = _argument(command, "-o", "--output")
    source = output if command[0] == "render" else _argument(command, "-i", "--input")
    if output is None or source is None:
        return None
    return RenderOutput(frames_from=source, video_in=output)


def in_relay(output: RenderOutput, local_uri: Callable[[str], str]) -> RenderOutput:
    """`output` with its `kiln://` locations replaced by the server's own folders for them."""

    def local(uri: str) -> str:
        return local_uri(uri) if uri.startswith(RELAY_SCHEME) else uri

    return RenderOutput(frames_from=local(output.frames_from), video_in=local(output.video_in))


def local_folder(uri: str) -> Path | None:
    """The local folder `uri` names, or None for S3; any other storage is refused (400).

    A relative path is refused too: the worker resolves it in the job's own working directory,
    which is not the server's.
    """
    if "::" in uri:  # fsspec chains protocols ('simplecache::http://...'), even after a plain path
        raise ValidationError(f"{uri!r}: the dashboard reads no chained (::) storage URIs")
    scheme = _SCHEME.match(uri)
    protocol = scheme.group(1).lower() if scheme else "file"
    if protocol in _S3_SCHEMES:
        return None
    if protocol not in _LOCAL_SCHEMES:
        raise ValidationError(
            f"{uri!r}: the dashboard serves render output only from local paths, file:// and s3://, not {protocol}://"
        )
    path = Path(uri[scheme.end() :] if scheme else uri)
    if not path.is_absolute():
        raise ValidationError(f"{uri!r}: the dashboard serves render output only from absolute local paths")
    return path


def check_output(output: RenderOutput) -> RenderOutput:
    """`output` when both of its locations are storage the dashboard may read; else a 400."""
    local_folder(output.frames_from)
    local_folder(output.video_in)
    return output


def _storage() -> tuple[ModuleType, ModuleType]:
    try:
        from kiln.render import frame_store, uris
    except ImportError as error:  # fsspec missing: the server was installed without the render extra
        raise ValidationError(f"Render outputs need Kiln's render extra ({error})") from None
    return frame_store, uris


def listing(output: RenderOutput) -> dict[str, Any]:
    """Finished frames (number and file name), the frame range the jobs were asked for (when known) and the video's size."""
    check_output(output)
    frame_store, uris = _storage()
    try:
        finished = frame_store.finished_frames(output.frames_from)
        scene = frame_store.read_scene(output.frames_from)
        video_size = uris.list_files(output.video_in).get(VIDEO_FILE)
    except Exception as error:  # RenderError and storage errors: show them, do not fail the page
        return {"frames": [], "expected": None, "videoSize": None, "error": str(error)}
    expected = None
    if scene is not None:
        expected = {"first": scene.frame_start, "last": scene.frame_end, "step": scene.frame_step,
                    "width": scene.width, "height": scene.height}  # fmt: skip
    frames = [{"frame": number, "name": finished[number].rsplit("/", 1)[-1]} for number in sorted(finished)]
    return {"frames": frames, "expected": expected, "videoSize": video_size, "error": None}


def open_inside(folder: Path, *names: str) -> int:
    """A read-only descriptor of the regular file `folder/names...`, following no link below `folder`.

    `folder` itself is the job's declared output and may be reached through links; each name below
    it is opened relative to its parent's descriptor, so nothing can be swapped in between a check
    and the read. A link, or anything but a regular file, is refused (400); a missing file is a 404.
    """
    where = "/".join(names)
    try:
        parent = os.open(folder, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    except OSError as error:
        raise NotFoundError(f"{folder} is not there yet ({error.strerror})") from None
    try:
        for name in names[:-1]:
            below = os.open(name, _NO_LINKS | os.O_DIRECTORY, dir_fd=parent)
            os.close(parent)
            parent = below
        fd = os.open(names[-1], _NO_LINKS, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ValidationError(f"{where} in {folder} is a link or not a folder; it is not served") from None
        raise NotFoundError(f"{where} in {folder} is not there yet ({error.strerror})") from None
    finally:
        os.close(parent)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValidationError(f"{where} in {folder} is not a regular file; it is not served")
    return fd


def frame_bytes(output: RenderOutput, name: str) -> bytes:
    """One frame file (`NNNN.png`) of the output; any other name is refused."""
    if not _FRAME_NAME.fullmatch(name):
        raise ValidationError(f"{name[:80]!r} is not a frame file name (NNNN.png)")
    folder = local_folder(check_output(output).frames_from)
    if folder is not None:
        with os.fdopen(open_inside(folder, FRAMES_FOLDER, name), "rb") as handle:
            return handle.read()
    frame_store, uris = _storage()
    try:
        return bytes(uris.read_bytes(uris.join(frame_store.frames_uri(output.frames_from), name)))
    except Exception as error:
        raise NotFoundError(f"Frame {name} is not there yet ({error})") from None


def video_file(output: RenderOutput, cache_dir: Path) -> int:
    """A read-only descriptor of a local file holding the video: the file itself, or a cached copy.

    A local file lets Starlette's FileResponse answer HTTP Range requests, which browsers need
    to seek; the copy (in the private `cache_dir`) is refreshed when the stored video's size changes.
    """
    folder = local_folder(check_output(output).video_in)
    if folder is not None:
        return open_inside(folder, VIDEO_FILE)
    _, uris = _storage()
    uri = uris.join(output.video_in, VIDEO_FILE)
    fs, path = uris.filesystem(uri)
    try:
        size = int(fs.size(path))
    except Exception:
        raise NotFoundError(f"{uri} does not exist yet") from None
    make_private_dir(cache_dir)
    cached = cache_dir / f"{hashlib.sha256(uri.encode()).hexdigest()[:24]}.mp4"
    if not cached.exists() or cached.stat().st_size != size:
        descriptor, partial = tempfile.mkstemp(dir=cache_dir, suffix=".partial")  # 0600, unique per request
        try:
            with fs.open(path, "rb") as source, os.fdopen(descriptor, "wb") as target:
                shutil.copyfileobj(source, target)
            os.replace(partial, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
    return open_inside(cache_dir, cached.name)
