"""`kiln render` through the server's relay, for jobs that cannot see this machine's files.

When the server's jobs run where this machine's disk is not (a Ray cluster without a shared
filesystem, or a server on another machine), a local `-o` folder is out of their reach. The
render then goes through the server: the output becomes a relay area (`kiln://AREA`, named after
this machine and the folder, so running the same command again finds the frames already
rendered and renders only the missing ones), the scene's pack is put there, and the frames and
the video are copied back into the local folder as they land (`RelayMirror`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kiln.cli.client import relay_signer, sign_request
from kiln.cli.embedded_server import is_loopback

VIDEO_FILE = "output.mp4"
FRAMES_FOLDER = "frames"


def files_reach_jobs(endpoint: str) -> bool:
    """Whether the server's jobs see this machine's files: only a server on this machine says so
    for its own; a server that predates the relay (no answer) is taken at its word of old (yes)."""
    try:
        request = sign_request(httpx.Request("GET", endpoint.rstrip("/") + "/kiln/v1/relay"))
        with httpx.Client(timeout=10) as client:
            response = client.send(request)
    except httpx.HTTPError:
        return True
    if response.status_code != 200:
        return True
    reach = bool(response.json().get("filesReachJobs", True))
    return reach and is_loopback(endpoint)


def relay_area(local_output: Path) -> str:
    """The area of a local output folder: the same folder on the same machine is the same area."""
    digest = hashlib.sha256(f"{socket.gethostname()}:{local_output}".encode()).hexdigest()
    return f"out-{digest[:32]}"


def use_relay(endpoint: str) -> None:
    """Reach `kiln://` files through the server at `endpoint`, signing like any API call."""
    from kiln.render import relay_fs

    relay_fs.configure(endpoint, relay_signer)


@dataclass
class RelayMirror:
    """Copies finished frames, the scene description and the video from the area to `local`."""

    area_uri: str
    local: Path
    copied: dict[str, int] = field(default_factory=dict)  # relay path -> size copied

    def sync(self) -> None:
        """Copy what is new; a frame is copied once (published frames never change), the video
        again whenever its size changes."""
        from kiln.render import uris

        frames = uris.join(self.area_uri, FRAMES_FOLDER)
        for name, size in uris.list_files(frames).items():
            self._copy(uris.join(frames, name), Path(FRAMES_FOLDER, name), size)
        video = uris.list_files(self.area_uri).get(VIDEO_FILE)
        if video is not None:
            self._copy(uris.join(self.area_uri, VIDEO_FILE), Path(VIDEO_FILE), video)

    def _copy(self, uri: str, relative: Path, size: int) -> None:
        from kiln.render import uris

        key = str(relative)
        if size <= 0 or self.copied.get(key) == size:
            return
        target = self.local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")  # as uris names its own
        try:
            uris.download(uri, partial)
            os.replace(partial, target)  # a frame present is a finished frame, here as in the relay
        finally:
            partial.unlink(missing_ok=True)
        self.copied[key] = size
