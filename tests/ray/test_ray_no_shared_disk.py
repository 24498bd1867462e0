"""`kiln render` on a Ray cluster whose nodes share no disk with the submitter (issue 18).

A cluster of its own: the head has no CPUs, so every job runs on one of two worker nodes, and each
worker runs in a mount namespace of its own with an empty private /tmp (tests/ray_cluster.py), so
it sees none of the files this test, the server and the other node keep there, as a separate
machine would. The project (a scene with a relative texture, a texture at an absolute path and a
linked library with its own texture) lives in this test's /tmp folder. moto's S3 server on
127.0.0.1 is the store every node reaches; the jobs get its credentials through their role.

First, proof that the nodes really cannot see the scene: the .blend read in place (`--no-pack`)
fails on them. Then the packed scene renders across both nodes: frames equal a local render pixel
for pixel, and the MP4 has every frame.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest

from tests.conftest import FAST_FLAGS, JOBS_AS_ROOT, KilnServer, start_server
from tests.ray_cluster import RayCluster, private_tmp_refused, start_cluster
from tests.render.conftest import run_bpy, run_worker
from tests.render.images import read_png, video_frames
from tests.render.test_packing import BLUE, GREEN, RED, build_project, colours
from tests.render.test_pipeline import ROLE, S3_CREDENTIALS, kiln_render

BUCKET = "kiln-no-shared-disk"
FRAMES = 3
CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "kiln-test", "aws_secret_access_key": "kiln-test"}


@pytest.fixture(scope="module")
def separate_nodes() -> Iterator[RayCluster]:
    refused = private_tmp_refused()
    if refused is not None:
        pytest.skip(f"worker nodes cannot get a private /tmp on this machine: {refused}")
    cluster = start_cluster(head_cpus=0, private_tmp=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def s3_env(s3_endpoint: str) -> dict[str, str]:
    """The store (tests/conftest.py's moto server) with this module's bucket."""
    boto3.client("s3", endpoint_url=s3_endpoint, **CREDENTIALS).create_bucket(Bucket=BUCKET)
    return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL_S3": s3_endpoint}


@pytest.fixture(scope="module")
def server(
    separate_nodes: RayCluster, s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KilnServer]:
    root = tmp_path_factory.mktemp("kiln-no-shared-disk")
    (root / "data").mkdir(mode=0o700)
    variables = "\n".join(f'{name} = "{value}"' for name, value in s3_env.items())
    (root / "data" / "kiln.toml").write_text(f'[job_roles."{ROLE}"]\n{variables}\n')
    flags = [*FAST_FLAGS, *JOBS_AS_ROOT, "--executor", "ray", "--ray-address", separate_nodes.address]
    server = start_server(root, flags)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """The textured project at FRAMES frames, and its frames rendered here, the reference."""
    root = tmp_path_factory.mktemp("submitter")
    scene = build_project(root / "source").scene
    run_bpy(
        """
        import bpy
        bpy.ops.wm.open_mainfile(filepath=blend)
        bpy.context.scene.frame_end = frames
        bpy.ops.wm.save_mainfile()
        """,
        blend=str(scene),
        frames=FRAMES,
    )
    done = run_worker("render", "-i", str(scene), "-o", str(root / "reference"), "-f", str(FRAMES))
    assert done.returncode == 0, done.stderr
    reference = [read_png(root / "reference" / "frames" / f"{frame:04d}.png") for frame in range(1, FRAMES + 1)]
    assert all(colours(frame) == [RED, GREEN, BLUE] for frame in reference)
    return scene, reference


def test_the_nodes_cannot_read_the_scene_where_it_lies(
    server: KilnServer, s3_env: dict[str, str], project: tuple[Path, list[np.ndarray]]
) -> None:
    scene, _ = project
    run = kiln_render(server, s3_env, str(scene), "-o", f"s3://{BUCKET}/in-place", "--frames", "1", "--no-pack")
    assert run.returncode == 1, (run.stdout, run.stderr)
    render_id, _ = run.job_ids()
    attempts = server.client().describe_jobs(jobs=[render_id])["jobs"][0]["attempts"]
    assert len(attempts) == 3  # the render definition's retryStrategy: every attempt failed alike
    log = httpx.get(f"{server.endpoint}/kiln/v1/logs/{render_id}", timeout=10).json()["text"]
    assert f"kiln-render: error: cannot read {scene}: no such file" in log


def test_a_packed_scene_renders_across_nodes_that_share_no_disk(
    server: KilnServer, s3_env: dict[str, str], s3_endpoint: str, project: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    scene, reference = project
    run = kiln_render(server, s3_env, str(scene), "-o", f"s3://{BUCKET}/shot", "--pack-store", f"s3://{BUCKET}/packs")
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert f"an array of {FRAMES} jobs" in run.stdout
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **CREDENTIALS)
    for frame, expected in enumerate(reference, start=1):
        local = tmp_path / f"{frame:04d}.png"
        s3.download_file(BUCKET, f"shot/frames/{frame:04d}.png", str(local))
        assert np.array_equal(read_png(local), expected), frame
    s3.download_file(BUCKET, "shot/output.mp4", str(tmp_path / "output.mp4"))
    frames, _ = video_frames(tmp_path / "output.mp4")
    assert len(frames) == FRAMES

    render_id, _ = run.job_ids()
    logs = [
        httpx.get(f"{server.endpoint}/kiln/v1/logs/{render_id}:{index}", timeout=10).json()["text"]
        for index in range(FRAMES)
    ]
    fetched = [log for log in logs if re.search(rf"scene pack [0-9a-f]{{12}} fetched from s3://{BUCKET}/packs/", log)]
    assert fetched, logs  # every node fetched the pack from the store (the others found it in their cache)


def test_a_local_output_comes_back_through_the_server(
    server: KilnServer, s3_env: dict[str, str], project: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    """A plain local `-o` on the submitter, which no node can see: `kiln render` asks the server,
    learns its jobs cannot see this machine's files, and sends the pack and the frames through the
    server's relay; the frames and the MP4 land in the local folder as they finish."""
    scene, reference = project
    output = tmp_path / "shot"
    run = kiln_render(server, s3_env, str(scene), "-o", str(output))
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "the server's jobs cannot see this machine's files" in run.stdout
    for frame, expected in enumerate(reference, start=1):
        assert np.array_equal(read_png(output / "frames" / f"{frame:04d}.png"), expected), frame
    frames, _ = video_frames(output / "output.mp4")
    assert len(frames) == FRAMES
    assert f"video:  {output}/output.mp4" in run.stdout
