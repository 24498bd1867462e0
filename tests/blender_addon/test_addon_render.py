"""The add-on end to end: installed into real Blender (the bpy wheel) from the zip, against a real
`kiln server --auth sigv4`, signing with a key from `kiln keys create`.

The submit operator renders the sample scene (3 of its frames, 2 per job: an array of 2 and a
stitch job) with `wait=True`; its frames must equal those of `kiln render` with the same settings
on the same server, and its MP4 must hold every frame.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import numpy as np

from tests.conftest import Key, KilnServer
from tests.render.images import read_png, video_frames
from tests.render.test_packing import BLUE, GREEN, RED, build_project, colours

from .conftest import run_blender

FRAMES = ["0001.png", "0002.png", "0003.png"]
RESOLUTION_PERCENT, SAMPLES = 20, 2

SUBMIT = """
import os
bpy.ops.wm.open_mainfile(filepath=scene)
prefs = bpy.context.preferences.addons["kiln_blender"].preferences
prefs.server_url, prefs.access_key_id, prefs.secret_access_key = endpoint, key_id, secret
settings = bpy.context.scene.kiln
settings.job_queue = "kiln-render"
settings.frames_per_job = 2
settings.use_scene_range = False
settings.frame_start, settings.frame_end = 1, 3
settings.resolution_percent, settings.samples = resolution, samples
settings.output = output
bpy.context.scene.frame_current = 2  # an unsaved change: the copy carries it, the artist's file does not
answer = bpy.ops.kiln.submit(wait=True)
result = {
    "answer": sorted(answer),
    "progress": settings.progress,
    "state": settings.state,
    "render": settings.last_job_id,
    "stitch": settings.last_stitch_job_id,
    "result": settings.result,
    "dashboard": settings.dashboard_url,
    "frames_done": settings.frames_done,
    "is_dirty": bpy.data.is_dirty,
    "leftovers": sorted(name for name in os.listdir(os.path.dirname(scene)) if name.startswith(".kiln")),
}
"""


def test_submit_renders_the_same_frames_as_kiln_render_and_a_whole_mp4(
    secured: tuple[KilnServer, Key], addon_zip: Path, sample_scene: Path, tmp_path: Path
) -> None:
    server, key = secured
    client = _client(server, key)
    before = sample_scene.read_bytes()
    output = tmp_path / "from-blender"
    run = run_blender(
        SUBMIT,
        tmp_path / "home",
        addon_zip=str(addon_zip),
        scene=str(sample_scene),
        endpoint=server.endpoint,
        key_id=key.access_key_id,
        secret=key.secret,
        output=str(output),
        resolution=RESOLUTION_PERCENT,
        samples=SAMPLES,
    )
    result = run.result
    assert result["answer"] == ["FINISHED"], run.stdout + run.stderr
    assert result["state"] == "SUCCEEDED"
    assert result["progress"] == 100.0
    assert result["frames_done"] == 3
    assert result["result"] == str(output / "output.mp4")
    assert result["dashboard"] == f"{server.endpoint}/ui/#/jobs/{result['render']}"
    assert result["leftovers"] == []  # the temporary copy is gone
    assert sample_scene.read_bytes() == before  # the artist's file was never written
    assert sorted(path.name for path in (output / "frames").glob("*.png")) == FRAMES
    frames, _ = video_frames(output / "output.mp4")
    assert len(frames) == 3

    render, stitch = client.describe_jobs(jobs=[result["render"], result["stitch"]])["jobs"]
    assert render["arrayProperties"]["size"] == 2
    assert stitch["dependsOn"] == [{"jobId": render["jobId"]}]
    command = render["container"]["command"]
    pack = command[command.index("-i") + 1]
    assert Path(pack).parent == output / "packs" and Path(pack).suffix == ".zip"

    # The same frames with `kiln render`, on the same server.
    reference = tmp_path / "from-cli"
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "render", str(sample_scene), "-o", str(reference), "--frames", "1-3",
         "--frames-per-job", "2", "--resolution-percent", str(RESOLUTION_PERCENT), "--samples", str(SAMPLES),
         "--endpoint-url", server.endpoint],
        capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (cli_render,) = client.describe_jobs(jobs=[_submitted_render_id(done.stdout)])["jobs"]
    assert _without_paths(cli_render["container"]["command"]) == _without_paths(command)
    for name in FRAMES:
        assert np.array_equal(read_png(output / "frames" / name), read_png(reference / "frames" / name)), name


def _submitted_render_id(stdout: str) -> str:
    marker = stdout.split("submitted ", 1)[1]
    return marker.split("(", 1)[1].split(":", 1)[0].split(")", 1)[0]


def _without_paths(command: list[str]) -> list[str]:
    """The command with its -i and -o values blanked (the two renders read and write different places)."""
    blanked = list(command)
    for flag in ("-i", "-o"):
        blanked[blanked.index(flag) + 1] = "..."
    return blanked


RELAY = """
import os, sys, time
bpy.ops.wm.open_mainfile(filepath=scene)
prefs = bpy.context.preferences.addons["kiln_blender"].preferences
prefs.server_url, prefs.access_key_id, prefs.secret_access_key = endpoint, key_id, secret
prefs.relay = "ALWAYS"  # what a server elsewhere gets automatically
settings = bpy.context.scene.kiln
settings.output = output
answer = bpy.ops.kiln.submit()  # wait=False: followed below by the function the UI's timer calls
os.rename(project, hidden)  # the originals are gone: the jobs have only the pack
ui = sys.modules["kiln_blender.ui"]
progress = []
deadline = time.monotonic() + 150
while time.monotonic() < deadline:
    again = ui._poll_timer(bpy.context.scene.name)
    progress.append(settings.progress)
    if again is None:
        break
    time.sleep(0.2)
os.rename(hidden, project)
result = {
    "answer": sorted(answer),
    "state": settings.state,
    "message": settings.message,
    "progress": progress,
    "render": settings.last_job_id,
    "result": settings.result,
}
"""


def test_through_the_relay_the_jobs_have_only_the_pack_and_the_frames_come_back(
    secured: tuple[KilnServer, Key], addon_zip: Path, tmp_path: Path
) -> None:
    """A scene with a relative texture, an absolute one and a linked library (test_packing's), its
    pack and frames sent through the server's relay, the originals hidden once it is submitted:
    every texture still renders, and the frame and the video land in the local output folder."""
    server, key = secured
    project = build_project(tmp_path / "source")
    output = tmp_path / "out"
    run = run_blender(
        RELAY,
        tmp_path / "home",
        addon_zip=str(addon_zip),
        scene=str(project.scene),
        project=str(project.root),
        hidden=str(tmp_path / "hidden"),
        endpoint=server.endpoint,
        key_id=key.access_key_id,
        secret=key.secret,
        output=str(output),
    )
    result = run.result
    assert result["answer"] == ["FINISHED"], run.stdout + run.stderr
    assert result["state"] == "SUCCEEDED", result["message"]
    assert result["progress"][-1] == 100.0
    assert result["result"] == str(output / "output.mp4")
    assert colours(read_png(output / "frames" / "0001.png")) == [RED, GREEN, BLUE]
    frames, _ = video_frames(output / "output.mp4")
    assert len(frames) == 1
    command = _client(server, key).describe_jobs(jobs=[result["render"]])["jobs"][0]["container"]["command"]
    assert command[command.index("-i") + 1].startswith("kiln://out-")
    assert command[command.index("-o") + 1].startswith("kiln://out-")


def _client(server: KilnServer, key: Key) -> Any:
    return boto3.client(
        "batch",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret,
    )
