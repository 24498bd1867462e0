"""Kiln's render image (`kiln/render:latest`, docker/render.Dockerfile) as the product users push to ECR.

The image is built before pytest by `make render-image` into a Docker data root cached on this
machine (tests/render_image.py); these tests start a dockerd on it and skip, saying why, only
where that image could not be built (no root, no Docker). They cover what AWS Batch relies on:
the workshop's definition renders and stitches on Kiln's Docker executor, the frames equal the
local executor's pixel for pixel, the worker runs as a non-root user, takes credentials only from
the standard places (environment, the ECS/Batch container endpoint), and a SIGTERM mid-slice (what
ECS sends when a Spot instance is reclaimed) ends the container at once, keeping the frames already
written, so that the retried attempt renders only the missing ones.

Pottery is bind-mounted read-only where it lies (a `volumes`/`mountPoints` pair), never copied; the
output folders are given to the image's user (uid 1000), as a user of the image must do for a
host folder it writes into.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.docker_daemon import DockerDaemon
from tests.render_image import RENDER_IMAGE, Unavailable, render_engine

from .conftest import THREADS, run_worker
from .images import psnr, read_png, video_frames

WORKSHOP_COMMAND = ["Ref::action", "-i", "Ref::inputUri", "-o", "Ref::outputUri", "-f", "Ref::framesPerJob"]
IMAGE_USER = (1000, 1000)  # the image's `kiln` user and group
TINY = ["--resolution-percent", "10", "--samples", "4"]  # Pottery at 108x135


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerDaemon]:
    """The render image's daemon (tests/render_image.py), with a `kiln/render:latest` of this tree."""
    with contextlib.ExitStack() as stack:
        try:
            daemon = stack.enter_context(render_engine())
        except Unavailable as exc:
            pytest.skip(str(exc))
        yield daemon


def _output_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    os.chown(path, *IMAGE_USER)
    return path


def _definition(scene_dir: Path, output: Path) -> dict[str, Any]:
    """The workshop's definition on the render image, with the scene and output dirs mounted."""
    return {
        "image": "kiln/render",
        "command": WORKSHOP_COMMAND,
        "resourceRequirements": [{"type": "VCPU", "value": str(THREADS)}, {"type": "MEMORY", "value": "2048"}],
        "volumes": [
            {"name": "scenes", "host": {"sourcePath": str(scene_dir)}},
            {"name": "output", "host": {"sourcePath": str(output)}},
        ],
        "mountPoints": [
            {"sourceVolume": "scenes", "containerPath": str(scene_dir), "readOnly": True},
            {"sourceVolume": "output", "containerPath": str(output)},
        ],
    }


def test_pottery_renders_in_the_image_as_on_the_local_executor(
    engine: DockerDaemon, pottery: Path, tmp_path: Path
) -> None:
    server: KilnServer = start_server(tmp_path, [*FAST_FLAGS, "--executor", "docker", "--docker-host", engine.url])
    try:
        output = _output_folder(tmp_path / "out")
        batch = server.client()
        # `kiln render` uses an ACTIVE kiln-render revision with the workshop's command as it is.
        batch.register_job_definition(
            jobDefinitionName="kiln-render", type="container", containerProperties=_definition(pottery.parent, output)
        )
        command = [sys.executable, "-m", "kiln", "render", str(pottery), "-o", str(output), "--frames", "1-2",
                   *TINY, "--endpoint-url", server.endpoint]  # fmt: skip
        done = subprocess.run(command, env=os.environ, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "render: 2 SUCCEEDED   stitch: SUCCEEDED" in done.stdout
    finally:
        server.stop()
    frames = sorted((output / "frames").glob("*.png"))
    assert [path.name for path in frames] == ["0001.png", "0002.png"]
    assert {path.stat().st_uid for path in frames} == {IMAGE_USER[0]}  # written by the image's user
    assert len(video_frames(output / "output.mp4")[0]) == 2
    scene = json.loads((output / "frames" / "scene.json").read_text())  # written by the worker in the container
    assert (scene["width"], scene["height"], scene["frame_start"], scene["frame_end"]) == (108, 135, 1, 2)
    # The same frames from the worker as the local executor runs it (`python -m kiln.render`, same
    # threads): the same pixels (the PNG files differ only in their metadata), but for a last-bit
    # rounding of the image's C library against the host's: on an AMD EPYC host one pixel of
    # 14,580 differed by one level (PSNR 94.5 dB). Any real difference (samples, resolution, colour
    # management) changes thousands of pixels and drops the PSNR below 50 dB.
    local = tmp_path / "local"
    run = run_worker("render", "-i", str(pottery), "-o", str(local), "-f", "2", "--frame-end", "2", *TINY)
    assert run.returncode == 0, run.stderr
    for frame in frames:
        in_image, on_host = read_png(frame), read_png(local / "frames" / frame.name)
        assert in_image.shape == (135, 108, 3)  # Pottery's 1080x1350 at 10 %
        differing = int(np.count_nonzero(np.any(in_image != on_host, axis=2)))
        largest = int(np.max(np.abs(in_image.astype(np.int16) - on_host.astype(np.int16))))
        report = f"{frame.name}: {differing} pixels differ, by up to {largest}, PSNR {psnr(in_image, on_host):.1f} dB"
        assert differing <= 10 and largest <= 2, report


def _render_container(engine: DockerDaemon, pottery: Path, output: Path, frames: int) -> Any:
    """One attempt of a slice, as AWS Batch starts it: the image's entrypoint as PID 1, its user."""
    command = ["render", "-i", str(pottery), "-o", str(output), "-f", str(frames), "--resolution-percent", "5"]
    return engine.client.containers.run(
        RENDER_IMAGE,
        [*command, "--samples", "1"],
        environment={"KILN_VCPUS": str(THREADS)},
        volumes={str(pottery.parent): {"bind": str(pottery.parent), "mode": "ro"}, str(output): {"bind": str(output)}},
        network_mode="host",
        detach=True,
    )


def test_sigterm_mid_slice_keeps_written_frames_and_the_retry_renders_the_rest(
    engine: DockerDaemon, pottery: Path, tmp_path: Path
) -> None:
    output = _output_folder(tmp_path / "out")
    frames = output / "frames"
    slice_size = 12
    attempt = _render_container(engine, pottery, output, slice_size)
    try:
        deadline = time.monotonic() + 120
        while not list(frames.glob("0001.png")):
            assert time.monotonic() < deadline, attempt.logs().decode()
            time.sleep(0.05)
        attempt.kill(signal="SIGTERM")  # as `docker stop` and ECS's Spot draining send it, to PID 1
        sent = time.monotonic()
        status = attempt.wait(timeout=60)["StatusCode"]
        stopped_in = time.monotonic() - sent
        logs = attempt.logs().decode()
    finally:
        attempt.remove(force=True)
    assert status == 143, logs
    assert stopped_in < 3, (stopped_in, logs)  # the frame in flight is abandoned, not finished
    assert "kiln-render: stopped by SIGTERM (exit status 143)" in logs
    kept = {path.name: path.stat().st_mtime_ns for path in frames.glob("*.png")}
    assert "0001.png" in kept and len(kept) < slice_size, logs
    for name in kept:  # whatever is visible is a complete image
        assert read_png(frames / name).shape == (67, 54, 3)

    retry = _render_container(engine, pottery, output, slice_size)
    try:
        status = retry.wait(timeout=240)["StatusCode"]
        logs = retry.logs().decode()
    finally:
        retry.remove(force=True)
    assert status == 0, logs
    assert f"{slice_size - len(kept)} to render, {len(kept)} already done" in logs
    rendered = {int(number) for number in re.findall(r"^frame (\d+) done", logs, re.MULTILINE)}
    assert rendered == set(range(1, slice_size + 1)) - {int(name[:4]) for name in kept}
    assert {name: (frames / name).stat().st_mtime_ns for name in kept} == kept  # kept frames untouched
    assert sorted(path.name for path in frames.glob("*.png")) == [f"{n:04d}.png" for n in range(1, slice_size + 1)]


class _CredentialsEndpoint(BaseHTTPRequestHandler):
    """The ECS/Batch container credentials endpoint, as a job role's credentials come from it."""

    def do_GET(self) -> None:
        if self.path != "/v2/credentials/job-role" or self.headers.get("Authorization") != "kiln-token":
            self.send_error(404)
            return
        body = json.dumps(
            {
                "AccessKeyId": "ASIAKILNJOBROLE",
                "SecretAccessKey": "secret",
                "Token": "session",
                "Expiration": "2099-01-01T00:00:00Z",
                "RoleArn": "arn:aws:iam::123456789012:role/render",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


CREDENTIAL_CHECK = """
import asyncio, botocore.session, aiobotocore.session
plain = botocore.session.get_session().get_credentials()
print("botocore", plain and plain.method, plain and plain.get_frozen_credentials().access_key)
async def for_s3fs():  # s3fs resolves credentials through aiobotocore
    found = await aiobotocore.session.get_session().get_credentials()
    return found and (found.method, (await found.get_frozen_credentials()).access_key)
print("aiobotocore", *(asyncio.run(for_s3fs()) or (None, None)))
"""


def _python_in_image(engine: DockerDaemon, code: str, environment: dict[str, str]) -> str:
    output = engine.client.containers.run(
        RENDER_IMAGE, ["-c", code], entrypoint="python", environment=environment, network_mode="host", remove=True
    )
    return bytes(output).decode()


def test_the_image_runs_as_kiln_and_takes_credentials_only_from_the_job(engine: DockerDaemon) -> None:
    config = engine.client.images.get(RENDER_IMAGE).attrs["Config"]
    assert config["User"] == "1000:1000"
    assert not [variable for variable in config["Env"] if variable.startswith("AWS_")]
    who = engine.client.containers.run(RENDER_IMAGE, ["-c", "whoami; echo $HOME; pwd; touch ~/w ./w && echo ok"],
                                       entrypoint="sh", remove=True)  # fmt: skip
    assert bytes(who).decode().split() == ["kiln", "/home/kiln", "/home/kiln", "ok"]
    found = engine.client.containers.run(RENDER_IMAGE, ["-c", "find / -xdev -name .aws -o -name .boto"],
                                         entrypoint="sh", user="0", remove=True)  # fmt: skip
    assert bytes(found).decode().split() == []  # no credentials or AWS config baked in, for any user

    no_metadata = {"AWS_EC2_METADATA_DISABLED": "true"}  # no instance role to fall back on here
    nothing = _python_in_image(engine, CREDENTIAL_CHECK, no_metadata)
    assert nothing.split() == ["botocore", "None", "None", "aiobotocore", "None", "None"]
    keys = {"AWS_ACCESS_KEY_ID": "AKIAKILNENV", "AWS_SECRET_ACCESS_KEY": "secret", **no_metadata}
    assert "botocore env AKIAKILNENV" in _python_in_image(engine, CREDENTIAL_CHECK, keys)
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), _CredentialsEndpoint)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    try:
        # On ECS/Batch the agent sets AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (host 169.254.170.2);
        # botocore reads the FULL_URI form through the same provider, which can point here.
        role = {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{endpoint.server_port}/v2/credentials/job-role",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "kiln-token",
            **no_metadata,
        }
        resolved = _python_in_image(engine, CREDENTIAL_CHECK, role).splitlines()
    finally:
        endpoint.shutdown()
        endpoint.server_close()
    assert resolved == ["botocore container-role ASIAKILNJOBROLE", "aiobotocore container-role ASIAKILNJOBROLE"]
