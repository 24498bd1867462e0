"""Storage for the render workload: every input and output is an fsspec URI.

Plain paths, `file://`, `s3://` and `kiln://` (files the Kiln server keeps for jobs that share no
disk with their submitter, `relay_fs.py`) all work the same way (architecture habit 8). S3-compatible
servers (MinIO, moto, a local test server) are reached through the standard AWS variables
`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, so a job definition written for AWS runs unchanged.

Writes are atomic because frame-level resume trusts that an existing frame is a finished frame:
on a local file system a file is written under a hidden temporary name and renamed into place;
object stores (S3) only publish an object once its upload completes, so it is uploaded directly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from fsspec import AbstractFileSystem, register_implementation
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import get_protocol

from kiln.render.errors import RenderError
from kiln.render.relay_fs import PROTOCOL as RELAY_PROTOCOL
from kiln.render.relay_fs import RelayFileSystem

_S3_PROTOCOLS = ("s3", "s3a")
register_implementation(RELAY_PROTOCOL, RelayFileSystem, clobber=True)  # kiln://: the server's relay
_LOCAL_PROTOCOLS = ("file", "local")


def s3_endpoint() -> str | None:
    """The S3 endpoint the AWS SDKs would use: the S3-specific variable first, then the general one."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec file system that holds `uri`, and the path inside it."""
    options: dict[str, Any] = {}
    if get_protocol(uri) in _S3_PROTOCOLS:
        endpoint = s3_endpoint()
        if endpoint:
            options["endpoint_url"] = endpoint
    try:
        fs, path = url_to_fs(uri, **options)
    except (ImportError, ValueError) as error:
        raise RenderError(f"cannot use {uri}: {error}") from None
    return fs, path


def join(uri: str, *parts: str) -> str:
    """`uri` with path parts appended, whatever its protocol (`s3://b/out` + `frames` -> `s3://b/out/frames`)."""
    return "/".join([uri.rstrip("/"), *parts])


def local_path(uri: str, cwd: str | None = None) -> Path | None:
    """The local file that `uri` names (a plain path or `file://`), relative ones taken from `cwd`
    (default: this process's); None for any other protocol."""
    if get_protocol(uri) not in _LOCAL_PROTOCOLS:
        return None
    path = uri.split("://", 1)[1] if "://" in uri else uri
    return Path(cwd or os.getcwd(), path)


def open_input(uri: str) -> BinaryIO:
    """A readable binary file for `uri`; a missing or unreadable input is a `RenderError`."""
    fs, path = filesystem(uri)
    try:
        return fs.open(path, "rb")
    except (OSError, ValueError) as error:
        raise RenderError(f"cannot read {uri}: {_reason(error)}") from None


def download(uri: str, local: Path) -> None:
    """Copy `uri` to the local file `local` (Blender can only open local files)."""
    fs, path = filesystem(uri)
    try:
        if fs.isdir(path):
            raise RenderError(f"cannot read {uri}: it is a directory")
        fs.get_file(path, str(local))
    except (OSError, ValueError) as error:
        raise RenderError(f"cannot read {uri}: {_reason(error)}") from None


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        return bytes(fs.cat_file(path))
    except (OSError, ValueError) as error:
        raise RenderError(f"cannot read {uri}: {_reason(error)}") from None


def list_files(directory_uri: str) -> dict[str, int]:
    """File name -> size for the files directly inside `directory_uri` (empty when it does not exist).

    The listing cache is dropped first: other jobs write into the same folder concurrently.
    """
    fs, path = filesystem(directory_uri)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise RenderError(f"cannot list {directory_uri}: {_reason(error)}") from None
    return {
        entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0)
        for entry in entries
        if entry.get("type") == "file"
    }


def upload_atomic(local: Path, uri: str) -> None:
    """Publish the finished local file `local` at `uri` so that readers never see it half written."""
    fs, path = filesystem(uri)
    try:
        if isinstance(fs, LocalFileSystem):
            _replace_local(local, Path(path))
        else:
            fs.put_file(str(local), path)
    except OSError as error:
        raise RenderError(f"cannot write {uri}: {_reason(error)}") from None


def write_bytes_atomic(data: bytes, uri: str) -> None:
    """Publish `data` at `uri` atomically (same guarantee as `upload_atomic`)."""
    with tempfile.TemporaryDirectory(prefix="kiln-upload-") as scratch:
        local = Path(scratch) / "data"
        local.write_bytes(data)
        upload_atomic(local, uri)


def _replace_local(source: Path, destination: Path) -> None:
    """Copy next to the destination under a hidden name, then rename: a rename is atomic."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)


def _reason(error: BaseException) -> str:
    """A short reason: `FileNotFoundError` says 'no such file' rather than echoing a path repr."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "it is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
