"""The render worker as a container image: `kiln render` on the Docker executor, two Pottery frames.

Needs the image `kiln/render:latest` in the test daemon. Building it (docker/build-render-image.sh:
a debootstrap base, then bpy & co. from the package index, about 4 minutes and 1.6 GB) is too slow
for every test run, so this test runs only where the image was built, and says so when skipped.
Pottery is bind-mounted read-only where it lies (a `volumes`/`mountPoints` pair), never copied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.docker_daemon import DockerDaemon

from .images import read_png, video_frames

RENDER_IMAGE = "kiln/render:latest"
WORKSHOP_COMMAND = ["Ref::action", "-i", "Ref::inputUri", "-o", "Ref::outputUri", "-f", "Ref::framesPerJob"]


@pytest.fixture(scope="module")
def render_image(docker_engine: DockerDaemon) -> str:
    try:
        docker_engine.client.images.get(RENDER_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(
            f"{RENDER_IMAGE} is not in the daemon at {docker_engine.url}: build it with docker/build-render-image.sh"
        )
    return RENDER_IMAGE


def _definition(scene_dir: Path, output: Path) -> dict[str, Any]:
    """The workshop's definition on the render image, with the scene and output dirs mounted."""
    return {
        "image": "kiln/render",
        "command": WORKSHOP_COMMAND,
        "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "2048"}],
        "volumes": [
            {"name": "scenes", "host": {"sourcePath": str(scene_dir)}},
            {"name": "output", "host": {"sourcePath": str(output)}},
        ],
        "mountPoints": [
            {"sourceVolume": "scenes", "containerPath": str(scene_dir), "readOnly": True},
            {"sourceVolume": "output", "containerPath": str(output)},
        ],
    }


def test_pottery_renders_in_the_render_image(
    render_image: str, docker_engine: DockerDaemon, pottery: Path, tmp_path: Path
) -> None:
    server: KilnServer = start_server(
        tmp_path, [*FAST_FLAGS, "--executor", "docker", "--docker-host", docker_engine.url]
    )
    try:
        output = tmp_path / "out"
        output.mkdir()
        batch = server.client()
        # `kiln render` uses an ACTIVE kiln-render revision with the workshop's command as it is.
        batch.register_job_definition(
            jobDefinitionName="kiln-render", type="container", containerProperties=_definition(pottery.parent, output)
        )
        command = [sys.executable, "-m", "kiln", "render", str(pottery), "-o", str(output), "--frames", "1-2",
                   "--resolution-percent", "10", "--samples", "4", "--endpoint-url", server.endpoint]  # fmt: skip
        done = subprocess.run(command, env=os.environ, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "render: 2 SUCCEEDED   stitch: SUCCEEDED" in done.stdout
        frames = sorted((output / "frames").glob("*.png"))
        assert [path.name for path in frames] == ["0001.png", "0002.png"]
        assert read_png(frames[0]).shape == (135, 108, 3)  # Pottery's 1080x1350 at 10 %
        assert len(video_frames(output / "output.mp4")[0]) == 2
        scene = json.loads((output / "frames" / "scene.json").read_text())  # written by the worker in the container
        assert (scene["width"], scene["height"], scene["frame_start"], scene["frame_end"]) == (108, 135, 1, 2)
    finally:
        server.stop()
