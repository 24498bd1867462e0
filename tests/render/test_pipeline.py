"""`kiln render` end to end through a real `kiln server`: the workshop's Pottery scene, tiny frames.

`kiln render` runs as a subprocess against a private server; the command finds moto's S3 server
through `AWS_ENDPOINT_URL_S3` in its environment, and the render jobs through their definition's
role (`--job-role-arn`), which the server's `[job_roles]` maps to the same variables, as AWS hands
a job its role: jobs do not inherit the server's environment. `file://` and `s3://` outputs go
through the same server. Pottery is read where it lies (shared/data), never copied. The jobs run as
root (`JOBS_AS_ROOT`: the interpreter and the temp dirs are root's here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import FAST_FLAGS, JOBS_AS_ROOT, KilnServer, free_port, start_server

from .conftest import run_bpy
from .images import psnr, read_png, video_frames
from .test_packing import BLUE, GREEN, MAGENTA, RED, build_project, colours

BUCKET = "kiln-pipeline-test"
ROLE = "arn:aws:iam::123456789012:role/kiln-render-test"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "kiln-test",
    "AWS_SECRET_ACCESS_KEY": "kiln-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# 108x135 px, 4 samples: about a second a frame on one core.
RESOLUTION_PERCENT, SAMPLES = 10, 4
TINY = ["--resolution-percent", str(RESOLUTION_PERCENT), "--samples", str(SAMPLES)]
SUBMITTED = re.compile(r"submitted \S+ \((?P<render>[0-9a-f-]+)[:)].*? and \S+ \((?P<stitch>[0-9a-f-]+)\)")


@dataclass(frozen=True)
class Rendered:
    returncode: int
    stdout: str
    stderr: str

    def job_ids(self) -> tuple[str, str]:
        match = SUBMITTED.search(self.stdout)
        assert match, self.stdout
        return match["render"], match["stitch"]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, **_s3_credentials()).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def s3_env(s3_endpoint: str) -> dict[str, str]:
    return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL_S3": s3_endpoint}


@pytest.fixture(scope="module")
def render_server(tmp_path_factory: pytest.TempPathFactory, s3_env: dict[str, str]) -> Iterator[KilnServer]:
    root = tmp_path_factory.mktemp("kiln-render")
    (root / "data").mkdir(mode=0o700)
    variables = "\n".join(f'{name} = "{value}"' for name, value in s3_env.items())
    (root / "data" / "kiln.toml").write_text(f'[job_roles."{ROLE}"]\n{variables}\n')
    server = start_server(root, [*FAST_FLAGS, *JOBS_AS_ROOT])
    yield server
    server.stop()


def _s3_credentials() -> dict[str, str]:
    return {"region_name": "us-east-1", "aws_access_key_id": "kiln-test", "aws_secret_access_key": "kiln-test"}


def kiln_render(server: KilnServer, env: dict[str, str], *args: str) -> Rendered:
    command = [sys.executable, "-m", "kiln", "render", *args, "--job-role-arn", ROLE, "--endpoint-url", server.endpoint]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=240, check=False)
    return Rendered(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def file_render(
    render_server: KilnServer, s3_env: dict[str, str], pottery: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Rendered]:
    """Pottery frames 1-3, 2 frames per job (an array of 2), into a file:// URI."""
    output = tmp_path_factory.mktemp("pottery") / "out"
    run = kiln_render(render_server, s3_env, str(pottery), "-o", output.as_uri(), "--frames", "1-3",
                      "--frames-per-job", "2", *TINY)  # fmt: skip
    return output, run


def test_file_output_has_every_frame_and_an_mp4_of_as_many(
    file_render: tuple[Path, Rendered], render_server: KilnServer
) -> None:
    output, run = file_render
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "an array of 2 jobs, 2 frames each, frames 1-3" in run.stdout
    assert f"video:  {output.as_uri()}/output.mp4" in run.stdout
    assert f"render jobs: {render_server.endpoint}/ui/#/jobs/{run.job_ids()[0]}" in run.stdout
    assert sorted(path.name for path in (output / "frames").glob("*.png")) == ["0001.png", "0002.png", "0003.png"]
    frames, _ = video_frames(output / "output.mp4")
    assert len(frames) == 3
    render_id, stitch_id = run.job_ids()
    render, stitch = render_server.client().describe_jobs(jobs=[render_id, stitch_id])["jobs"]
    assert render["arrayProperties"]["size"] == 2
    assert render["jobDefinition"].endswith(":job-definition/kiln-render:1")
    assert stitch["dependsOn"] == [{"jobId": render_id}]


def test_a_pipeline_frame_equals_a_plain_blender_render(
    file_render: tuple[Path, Rendered], pottery: Path, tmp_path: Path
) -> None:
    """Same pixels as one bpy process with the same settings, though the job rendered on 1 thread."""
    output, run = file_render
    assert run.returncode == 0, run.stderr
    reference = tmp_path / "reference.png"
    run_bpy(
        """
        import bpy
        bpy.ops.wm.open_mainfile(filepath=blend)
        scene = bpy.context.scene
        scene.render.resolution_percentage = percent
        scene.cycles.samples = samples
        scene.render.image_settings.file_format = "PNG"
        scene.frame_set(2)
        scene.render.filepath = target
        bpy.ops.render.render(write_still=True)
        """,
        blend=str(pottery),
        target=str(reference),
        percent=RESOLUTION_PERCENT,
        samples=SAMPLES,
    )
    assert psnr(read_png(output / "frames" / "0002.png"), read_png(reference)) >= 50


def test_the_same_command_again_renders_only_missing_frames(
    file_render: tuple[Path, Rendered], render_server: KilnServer, s3_env: dict[str, str], pottery: Path
) -> None:
    output, first = file_render
    assert first.returncode == 0, first.stderr
    kept = output / "frames" / "0001.png"
    os.utime(kept, (1_000_000_000, 1_000_000_000))
    (output / "frames" / "0003.png").unlink()
    again = kiln_render(render_server, s3_env, str(pottery), "-o", output.as_uri(), "--frames", "1-3",
                        "--frames-per-job", "2", *TINY)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert kept.stat().st_mtime == 1_000_000_000
    assert (output / "frames" / "0003.png").is_file()
    render_id, _ = again.job_ids()
    log = httpx.get(f"{render_server.endpoint}/kiln/v1/logs/{render_id}:0", timeout=10).json()["text"]
    assert "frame 1 skipped" in log and "frame 2 skipped" in log


def test_s3_output_through_the_server(
    render_server: KilnServer, s3_env: dict[str, str], s3_endpoint: str, pottery: Path, tmp_path: Path
) -> None:
    """3 frames per job: a single render job (AWS rejects an array of size 1), output on S3."""
    run = kiln_render(render_server, s3_env, str(pottery), "-o", f"s3://{BUCKET}/pottery", "--frames", "1-3",
                      "--frames-per-job", "3", *TINY)  # fmt: skip
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "one job, frames 1-3" in run.stdout
    assert f"video:  s3://{BUCKET}/pottery/output.mp4" in run.stdout
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_s3_credentials())
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="pottery/")
    keys = sorted(item["Key"] for item in listing.get("Contents", []))
    assert [key for key in keys if key.endswith(".png")] == [f"pottery/frames/000{n}.png" for n in (1, 2, 3)]
    s3.download_file(BUCKET, "pottery/output.mp4", str(tmp_path / "output.mp4"))
    frames, _ = video_frames(tmp_path / "output.mp4")
    assert len(frames) == 3
    render_id, _ = run.job_ids()
    render: dict[str, Any] = render_server.client().describe_jobs(jobs=[render_id])["jobs"][0]
    assert "arrayProperties" not in render or "size" not in render["arrayProperties"]


PACKED = re.compile(r"packed scene\.blend and 4 files it uses, [0-9.]+ MiB, (?P<how>into|already in) (?P<uri>\S+)")


def test_the_scene_travels_packed_with_its_textures_and_library(
    render_server: KilnServer, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """The jobs read the pack, not the .blend: every texture and the linked library are in it, and
    the same command again finds the pack already stored (content-addressed) and uploads nothing."""
    project = build_project(tmp_path / "source")
    output = tmp_path / "out"
    first = kiln_render(render_server, s3_env, str(project.scene), "-o", str(output))
    assert first.returncode == 0, (first.stdout, first.stderr)
    packed = PACKED.search(first.stdout)
    assert packed and packed["how"] == "into", first.stdout
    pack = Path(packed["uri"])
    assert pack.parent == output / "packs" and pack.is_file()
    assert colours(read_png(output / "frames" / "0001.png")) == [RED, GREEN, BLUE]
    render_id, _ = first.job_ids()
    render = render_server.client().describe_jobs(jobs=[render_id])["jobs"][0]
    command = render["container"]["command"]
    assert command[command.index("-i") + 1] == str(pack)
    log = httpx.get(f"{render_server.endpoint}/kiln/v1/logs/{render_id}", timeout=10).json()["text"]
    assert f"scene pack {pack.stem[:12]}" in log

    (output / "frames" / "0001.png").unlink()
    again = kiln_render(render_server, s3_env, str(project.scene), "-o", str(output))
    assert again.returncode == 0, (again.stdout, again.stderr)
    packed_again = PACKED.search(again.stdout)
    assert packed_again and packed_again["how"] == "already in" and packed_again["uri"] == str(pack), again.stdout
    assert colours(read_png(output / "frames" / "0001.png")) == [RED, GREEN, BLUE]


def test_a_local_output_through_the_relay_gets_every_frame_and_the_video(
    render_server: KilnServer, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """`--relay` (what a server whose jobs cannot see this machine's files gets by default): the
    pack goes to a relay area on the server, the jobs read it and write their frames there with
    their own token (never shown by DescribeJobs), and the frames and video land in the local
    folder; the same command again renders nothing and brings back a frame deleted here."""
    project = build_project(tmp_path / "source")
    output = tmp_path / "out"
    first = kiln_render(render_server, s3_env, str(project.scene), "-o", str(output), "--relay")
    assert first.returncode == 0, (first.stdout, first.stderr)
    packed = PACKED.search(first.stdout)
    assert packed and packed["how"] == "into" and packed["uri"].startswith("kiln://out-"), first.stdout
    assert colours(read_png(output / "frames" / "0001.png")) == [RED, GREEN, BLUE]
    frames, _ = video_frames(output / "output.mp4")
    assert len(frames) == 1
    assert f"video:  {output}/output.mp4" in first.stdout
    assert not (output / "packs").exists()  # the pack went to the server, not to this folder
    render_id, stitch_id = first.job_ids()
    render, stitch = render_server.client().describe_jobs(jobs=[render_id, stitch_id])["jobs"]
    area = packed["uri"].split("/packs/")[0]
    command = render["container"]["command"]
    assert command[command.index("-i") + 1] == packed["uri"] and command[command.index("-o") + 1] == area
    for job in (render, stitch):
        assert "KILN_RELAY_TOKEN" not in str(job)
    # The dashboard reads the render from the relay too.
    listing = httpx.get(f"{render_server.endpoint}/kiln/v1/renders/{render_id}", timeout=10).json()
    assert [frame["frame"] for frame in listing["frames"]] == [1], listing

    (output / "frames" / "0001.png").unlink()
    again = kiln_render(render_server, s3_env, str(project.scene), "-o", str(output), "--relay")
    assert again.returncode == 0, (again.stdout, again.stderr)
    packed_again = PACKED.search(again.stdout)
    assert packed_again and packed_again["how"] == "already in" and packed_again["uri"] == packed["uri"]
    assert colours(read_png(output / "frames" / "0001.png")) == [RED, GREEN, BLUE]
    log = httpx.get(f"{render_server.endpoint}/kiln/v1/logs/{again.job_ids()[0]}", timeout=10).json()["text"]
    assert "0 to render, 1 already done" in log, log


def test_a_render_licence_caps_the_render_jobs_running_at_once(
    render_server: KilnServer, s3_env: dict[str, str], pottery: Path, tmp_path: Path
) -> None:
    """`--license NAME` (a consumable resource of total 1): the two render jobs never run at once,
    and both frames arrive; a licence the server does not have is refused before anything runs."""
    batch = render_server.client()
    name = f"blender-{tmp_path.name[-12:]}".replace("_", "-")
    batch.create_consumable_resource(consumableResourceName=name, totalQuantity=1, resourceType="REPLENISHABLE")
    output = tmp_path / "out"
    run = kiln_render(render_server, s3_env, str(pottery), "-o", str(output), "--frames", "1-2",
                      "--frames-per-job", "1", "--license", f"{name}:1", *TINY)  # fmt: skip
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert sorted(path.name for path in (output / "frames").glob("*.png")) == ["0001.png", "0002.png"]
    render_id, _ = run.job_ids()
    children = batch.describe_jobs(jobs=[f"{render_id}:0", f"{render_id}:1"])["jobs"]
    spans = sorted((job["startedAt"], job["stoppedAt"]) for job in children)
    assert spans[0][1] <= spans[1][0], spans  # one after the other
    needs = children[0]["consumableResourceProperties"]["consumableResourceList"]
    assert [(item["consumableResource"].rsplit("/", 1)[-1], item["quantity"]) for item in needs] == [(name, 1)]

    missing = kiln_render(render_server, s3_env, str(pottery), "-o", str(tmp_path / "out2"), "--frames", "1",
                          "--license", "no-such-licence", *TINY)  # fmt: skip
    assert missing.returncode == 1 and "no-such-licence" in missing.stderr, (missing.stdout, missing.stderr)


def test_a_pack_in_an_s3_store_renders_and_a_missing_texture_is_warned_of(
    render_server: KilnServer, s3_env: dict[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    """`--pack-store s3://...`: the jobs fetch the pack from S3. A texture that does not exist is not
    packed, said on stderr, and renders Blender's magenta, never silently."""
    project = build_project(tmp_path / "source")
    project.absolute_texture.unlink()
    store = f"s3://{BUCKET}/packs"
    run = kiln_render(render_server, s3_env, str(project.scene), "-o", str(tmp_path / "out"), "--pack-store", store)
    assert run.returncode == 0, (run.stdout, run.stderr)
    warning = f"warning: the scene uses {project.absolute_texture}, which is not there to pack"
    assert warning in " ".join(run.stderr.split())
    packed = re.search(r"packed scene\.blend and 3 files it uses, [0-9.]+ MiB, into (\S+)", run.stdout)
    assert packed and packed[1].startswith(f"{store}/"), run.stdout
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_s3_credentials())
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="packs/").get("Contents", [])]
    assert keys == [packed[1].removeprefix(f"s3://{BUCKET}/")]
    assert colours(read_png(tmp_path / "out" / "frames" / "0001.png")) == [RED, MAGENTA, BLUE]


def test_a_scene_on_s3_renders_with_the_textures_and_library_beside_it(
    render_server: KilnServer, s3_env: dict[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    """`kiln render s3://.../scene.blend`: what the scene names by relative paths is fetched from
    the bucket and packed with it; the artist's absolute path is not looked up on this machine."""
    project = build_project(tmp_path / "source")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_s3_credentials())
    for path in sorted((tmp_path / "source/project").rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"textured/{path.relative_to(tmp_path / 'source/project').as_posix()}")
    (tmp_path / "source").rename(tmp_path / "artists-disk")  # its absolute texture is not on this machine
    scene = f"s3://{BUCKET}/textured/shots/scene.blend"
    run = kiln_render(render_server, s3_env, scene, "-o", str(tmp_path / "out"))
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert re.search(rf"packed scene\.blend and 3 files it uses, [0-9.]+ MiB, into {tmp_path}/out/packs/", run.stdout)
    warning = f"warning: the scene uses {project.absolute_texture}, which is not there to pack"
    assert warning in " ".join(run.stderr.split())
    assert colours(read_png(tmp_path / "out" / "frames" / "0001.png")) == [RED, MAGENTA, BLUE]


def test_a_render_job_far_below_blenders_memory_fails_out_of_memory(
    render_server: KilnServer, s3_env: dict[str, str], pottery: Path, tmp_path: Path
) -> None:
    run = kiln_render(render_server, s3_env, str(pottery), "-o", str(tmp_path / "out"), "--frames", "1-2",
                      "--memory", "64", *TINY)  # fmt: skip
    assert run.returncode == 1, run.stdout
    render_id, stitch_id = run.job_ids()
    error = " ".join(run.stderr.split())
    assert "the render pipeline failed: pottery-render[0]" in error
    assert "OutOfMemoryError: Container killed due to memory usage" in error
    assert f"kiln logs {render_id}:0 --endpoint-url {render_server.endpoint}" in error
    assert f"the stitch job {stitch_id} did not run (Dependent Job failed)" in error
    child = render_server.client().describe_jobs(jobs=[f"{render_id}:0"])["jobs"][0]
    assert len(child["attempts"]) == 3  # the definition's retryStrategy: every attempt ran out of memory
    assert {attempt["container"]["reason"] for attempt in child["attempts"]} == {
        "OutOfMemoryError: Container killed due to memory usage"
    }
    assert not (tmp_path / "out" / "frames").exists() or not list((tmp_path / "out" / "frames").glob("*.png"))
