"""Where the scene pack goes and where the frames and the video come from.

- A local output folder the server's jobs can see (a server on this machine): the pack is copied
  into `OUTPUT/packs/`, the jobs write frames and the video into OUTPUT.
- A local output folder the jobs cannot see (a server elsewhere): the server's relay, as
  `kiln render --relay` uses it (kiln/cli/render_relay.py): the output becomes the area
  `kiln://out-<hash of this machine and folder>`, the pack is uploaded there, and the frames and
  video are copied back into the local folder as they land.
- An `s3://` output: the jobs write there. The pack goes into the relay of a Kiln server, or into
  `OUTPUT/packs/` on S3 itself (AWS Batch: signed with the same key).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import socket
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from .batch_api import Connection, KilnError, api_error, send

RELAY_PATH = "/kiln/v1/relay"
UPLOAD_TIMEOUT_SECONDS = 600.0


def is_loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def relay_info(connection: Connection) -> dict[str, object] | None:
    """The server's relay description (`filesReachJobs`), or None for a server without one (AWS)."""
    if (urlsplit(connection.endpoint).hostname or "").endswith(".amazonaws.com"):
        return None  # AWS Batch: no relay, and an unknown path there answers 403, not 404
    url = connection.endpoint + RELAY_PATH
    request = urllib.request.Request(url, headers=connection.signed_headers("GET", url, {}, b""), method="GET")
    status, body, error_type = send(request, 30.0, connection)
    if status in (401, 403):
        raise api_error(connection, "the relay", status, body, error_type)
    if status != 200:
        return None
    try:
        return dict(json.loads(body))
    except ValueError:
        return None


def relay_area(local_output: Path) -> str:
    """The area `kiln render` uses for the same folder on the same machine (so either resumes the other)."""
    digest = hashlib.sha256(f"{socket.gethostname()}:{local_output}".encode()).hexdigest()
    return f"out-{digest[:32]}"


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kiln-write-test-"):
            pass
    except OSError as error:
        raise KilnError(
            f"the output folder {folder} is not writable ({error.strerror or error}): pick another output in the Kiln panel"
        ) from None


def put_local(archive: Path, folder: Path) -> Path:
    """Copy the pack into `folder` unless it is there already (content-addressed: same name, same bytes)."""
    target = folder / archive.name
    if target.is_file() and target.stat().st_size == archive.stat().st_size:
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, partial = tempfile.mkstemp(dir=folder, prefix=f".{archive.name}.")
        os.close(descriptor)
        try:
            shutil.copyfile(archive, partial)
            os.chmod(partial, 0o644)
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
    except OSError as error:
        raise KilnError(f"cannot write the scene pack into {folder}: {error.strerror or error}") from None
    return target


@dataclass
class Relay:
    """Files of one area of a Kiln server's relay, read and written over its HTTP routes."""

    connection: Connection
    area: str

    @property
    def uri(self) -> str:
        return f"kiln://{self.area}"

    def _url(self, path: str) -> str:
        return f"{self.connection.endpoint}{RELAY_PATH}/{self.area}/{quote(path.strip('/'))}"

    def listing(self, path: str) -> dict[str, int]:
        """name -> size of the files in a folder of the area ({} when the folder is not there yet)."""
        url = self._url(path) + "?list"
        request = urllib.request.Request(url, headers=self.connection.signed_headers("GET", url, {}, b""))
        status, body, error_type = send(request, 30.0, self.connection)
        if status == 404:
            return {}
        if status != 200:
            raise api_error(self.connection, "listing the relay", status, body, error_type)
        entries = json.loads(body).get("entries", [])
        return {str(item["name"]): int(item.get("size", 0)) for item in entries if item.get("type") == "file"}

    def put(self, local: Path, path: str) -> None:
        url = self._url(path)
        size = local.stat().st_size
        headers = self.connection.signed_headers(
            "PUT", url, {"Content-Type": "application/octet-stream", "Content-Length": str(size)}, None
        )
        with local.open("rb") as body:
            request = urllib.request.Request(url, data=body, headers=headers, method="PUT")
            status, answer, error_type = send(request, UPLOAD_TIMEOUT_SECONDS, self.connection)
        if status >= 300:
            raise api_error(self.connection, "uploading the scene pack", status, answer, error_type)

    def get(self, path: str, target: Path) -> None:
        url = self._url(path)
        request = urllib.request.Request(url, headers=self.connection.signed_headers("GET", url, {}, b""))
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            try:
                with (
                    urllib.request.urlopen(request, timeout=UPLOAD_TIMEOUT_SECONDS) as response,
                    open(descriptor, "wb") as out,
                ):
                    shutil.copyfileobj(response, out, 1 << 20)
            except urllib.error.HTTPError as error:
                with error:
                    raise api_error(
                        self.connection,
                        f"fetching {path}",
                        error.code,
                        error.read(),
                        error.headers.get("x-amzn-ErrorType", ""),
                    ) from None
            os.chmod(partial, 0o644)
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)


@dataclass
class Mirror:
    """Copies finished frames and the video from a relay area into the local output folder."""

    relay: Relay
    local: Path
    copied: dict[str, int] = field(default_factory=dict)

    def sync(self) -> None:
        for name, size in self.relay.listing("frames").items():
            self._copy(f"frames/{name}", size)
        video = self.relay.listing("").get("output.mp4")
        if video is not None:
            self._copy("output.mp4", video)

    def _copy(self, path: str, size: int) -> None:
        if size <= 0 or self.copied.get(path) == size:
            return
        self.relay.get(path, self.local / path)
        self.copied[path] = size


def put_s3(connection: Connection, archive: Path, uri: str, endpoint_url: str = "") -> None:
    """PUT the pack to `s3://bucket/key`, signed for S3 with the add-on's key (AWS Batch with an S3 output)."""
    from . import sigv4

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if endpoint_url:
        url = f"{endpoint_url.rstrip('/')}/{bucket}/{quote(key)}"
    else:
        region = connection.region.strip() or "us-east-1"
        url = f"https://{bucket}.s3.{region}.amazonaws.com/{quote(key)}"
    if not connection.signs:
        raise KilnError("an s3:// output on AWS needs the access key in the Kiln add-on's preferences")
    size = archive.stat().st_size
    headers = sigv4.sign(
        "PUT",
        url,
        {"Content-Type": "application/zip", "Content-Length": str(size)},
        None,
        access_key_id=connection.access_key_id.strip(),
        secret_access_key=connection.secret_access_key.strip(),
        region=connection.region.strip() or "us-east-1",
        service="s3",
        session_token=connection.session_token,
    )
    with archive.open("rb") as body:
        request = urllib.request.Request(url, data=body, headers=headers, method="PUT")
        status, answer, _ = send(request, UPLOAD_TIMEOUT_SECONDS, connection)
    if status >= 300:
        raise KilnError(
            f"uploading the scene pack to {uri} failed (HTTP {status}): {answer[:300].decode('utf-8', 'replace')}"
        )
