"""`kiln://AREA/PATH`: files kept by the Kiln server's relay, as an fsspec file system.

Jobs on nodes that share no disk with the submitting machine read the scene pack and write frames
and the video through the server (kiln/web/relay.py on the server side). A job finds the server
in `KILN_RELAY_URL` and proves which job it is with `KILN_RELAY_TOKEN`, both handed to its
attempt by the server; the submitter (`kiln render`) instead sets a signer with `configure`.
Standard library HTTP only: the render image carries nothing else for it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from fsspec import AbstractFileSystem

PROTOCOL = "kiln"
URL_VARIABLE = "KILN_RELAY_URL"
TOKEN_VARIABLE = "KILN_RELAY_TOKEN"
TOKEN_HEADER = "X-Kiln-Job-Token"
ROUTE = "/kiln/v1/relay/"
TIMEOUT_SECONDS = 60.0
_CHUNK = 1 << 20
# (method, url, headers, streamed body?) -> headers to add: how the submitter signs its requests.
Signer = Callable[[str, str, dict[str, str], bool], dict[str, str]]


@dataclass
class _Endpoint:
    url: str | None = None
    signer: Signer | None = None


_configured = _Endpoint()


def configure(url: str, signer: Signer | None) -> None:
    """Use the server at `url` with `signer` (the submitter's side); jobs use their variables."""
    _configured.url = url.rstrip("/")
    _configured.signer = signer


class RelayFileSystem(AbstractFileSystem):
    """Enough of fsspec for the render workload: list, read, download, upload."""

    protocol = PROTOCOL
    cachable = False

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(item) for item in path]
        return str(path).removeprefix(f"{PROTOCOL}://").strip("/")

    def _url(self, path: str) -> str:
        base = _configured.url or os.environ.get(URL_VARIABLE)
        if not base:
            raise OSError(f"{PROTOCOL}:// files need a Kiln server: {URL_VARIABLE} is not set")
        return base.rstrip("/") + ROUTE + urllib.parse.quote(self._strip_protocol(path))

    def _request(self, method: str, path: str, query: str = "", body: BinaryIO | None = None,
                 length: int | None = None) -> Any:  # fmt: skip
        url = self._url(path) + query
        headers: dict[str, str] = {}
        if length is not None:
            headers["Content-Length"] = str(length)
            headers["Content-Type"] = "application/octet-stream"
        if _configured.signer is not None:
            headers.update(_configured.signer(method, url, dict(headers), body is not None))
        elif os.environ.get(TOKEN_VARIABLE):
            headers[TOKEN_HEADER] = os.environ[TOKEN_VARIABLE]
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
        except urllib.error.HTTPError as error:
            raise _os_error(error, path) from None
        except urllib.error.URLError as error:
            raise OSError(f"cannot reach the Kiln server at {url.split(ROUTE)[0]}: {error.reason}") from None

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        with self._request("GET", path, "?list") as response:
            entries = json.load(response)["entries"]
        listed = [
            {"name": f"{path}/{entry['name']}", "size": entry["size"], "type": entry["type"]} for entry in entries
        ]
        return listed if detail else [entry["name"] for entry in listed]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        parent = path.rpartition("/")[0]
        if parent:
            for entry in self.ls(parent):
                if entry["name"] == path:
                    return dict(entry)
        elif path:
            self.ls(path)  # an area that exists
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        with self._request("GET", path) as response:
            data: bytes = response.read()
        return data[start:end]

    def get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:
        with self._request("GET", rpath) as response, open(lpath, "wb") as target:
            shutil.copyfileobj(response, target, _CHUNK)

    def put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        with open(lpath, "rb") as source:
            self._request("PUT", rpath, body=source, length=os.fstat(source.fileno()).st_size).close()

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> BinaryIO:
        if mode != "rb":
            raise NotImplementedError(f"{PROTOCOL}:// files are written whole (put_file), not opened for writing")
        return io.BytesIO(self.cat_file(path))

    def invalidate_cache(self, path: str | None = None) -> None:
        """Nothing is cached: every listing asks the server."""


def _os_error(error: urllib.error.HTTPError, path: str) -> OSError:
    """The server's refusal as the OSError fsspec callers expect (404: FileNotFoundError)."""
    try:
        message = json.loads(error.read()).get("message") or error.reason
    except (ValueError, AttributeError):
        message = error.reason
    if error.code == 404:
        return FileNotFoundError(2, str(message), path)
    return OSError(f"the Kiln server answered {error.code} for {PROTOCOL}://{path}: {message}")
