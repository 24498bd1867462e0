"""A render pipeline seen in the dashboard: thumbnails as frames land, the MP4 playable in the page.

The pipeline is submitted exactly as `kiln render` submits it (kiln.cli.render_pipeline, boto3),
at a tiny size: Pottery (read where it lies, never copied) at 10 %, or, without it, the sample
scene built in code. The same module checks the render endpoints' guards and HTTP Range support.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from kiln.cli.render_pipeline import RenderPlan, SubmittedPipeline, ensure_definition, ensure_queue, submit_pipeline
from tests.conftest import KilnServer
from tests.render.conftest import POTTERY_CANDIDATES, run_bpy
from tests.support import make_queue, register_shell, submit, wait_for

from .conftest import open_ui

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def scene_file(tmp_path: Path) -> Path:
    for candidate in POTTERY_CANDIDATES:
        if candidate.is_file():
            return candidate
    path = tmp_path / "sample.blend"
    run_bpy(
        "from pathlib import Path\nfrom kiln.render.sample_scene import write_sample_scene\n"
        "write_sample_scene(Path(path))\n",
        path=str(path),
    )
    return path


@pytest.fixture(scope="module")
def pipeline(
    ui_server: KilnServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SubmittedPipeline, Path]]:
    """Frames 1-3, two per job: an array of 2 render jobs and a stitch job."""
    batch = ui_server.client()
    work = tmp_path_factory.mktemp("ui-render")
    output = work / "out"
    plan = RenderPlan(str(scene_file(work)), str(output), range(1, 4), 2, frames_flag_given=True,
                      resolution_percent=10, samples=4)  # fmt: skip
    ensure_queue(batch, "ui-render", max_vcpus=2)
    definition, _ = ensure_definition(batch)
    submitted = submit_pipeline(batch, plan, queue="ui-render", definition=definition, memory_mib=1024)
    yield submitted, output
    batch.terminate_job(jobId=submitted.render_id, reason="test over")
    batch.terminate_job(jobId=submitted.stitch_id, reason="test over")


def test_thumbnails_appear_and_the_video_loads(page: Page, ui_server: KilnServer, pipeline: tuple[Any, Path]) -> None:
    submitted, _ = pipeline
    open_ui(page, ui_server, f"#/jobs/{submitted.render_id}")
    expect(page.locator("#array-grid")).to_be_visible()
    tiles = page.locator(".thumb")
    expect(tiles).to_have_count(3, timeout=60_000)  # placeholders for the frames scene.json announces
    images = page.locator(".thumb img")
    expect(images).to_have_count(3, timeout=120_000)
    page.wait_for_function(
        "[...document.querySelectorAll('.thumb img')].every((img) => img.complete && img.naturalWidth > 0)",
        timeout=20_000,
    )
    assert page.locator(".thumb img").first.get_attribute("alt") == "frame 1"
    # The stitch job's page plays the video once output.mp4 exists.
    open_ui(page, ui_server, f"#/jobs/{submitted.stitch_id}")
    page.wait_for_selector("#render-video", timeout=120_000)
    page.wait_for_function("document.getElementById('render-video').readyState >= 1", timeout=30_000)
    duration = page.evaluate("document.getElementById('render-video').duration")
    assert 0 < duration < 2  # 3 frames at the scene's frame rate
    assert page.locator(".thumb img").count() == 3


def test_frames_and_video_are_served_from_the_jobs_own_output(
    ui_server: KilnServer, pipeline: tuple[SubmittedPipeline, Path]
) -> None:
    submitted, output = pipeline
    batch = ui_server.client()
    wait_for(batch, submitted.stitch_id, timeout=240)
    base = f"{ui_server.endpoint}/kiln/v1/renders"
    listing = httpx.get(f"{base}/{submitted.render_id}").json()
    assert [frame["name"] for frame in listing["frames"]] == ["0001.png", "0002.png", "0003.png"]
    assert listing["expected"]["first"] == 1 and listing["expected"]["last"] == 3
    assert listing["videoSize"] == (output / "output.mp4").stat().st_size
    frame = httpx.get(f"{base}/{submitted.render_id}:1/frames/0003.png")  # a child reads the same output
    assert frame.status_code == 200 and frame.content.startswith(PNG_SIGNATURE)
    assert frame.content == (output / "frames" / "0003.png").read_bytes()
    ranged = httpx.get(f"{base}/{submitted.stitch_id}/video", headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 0-99/{listing['videoSize']}"
    assert ranged.content == (output / "output.mp4").read_bytes()[:100]
    for name in ("scene.json", "..%2F..%2Fkiln.db", "0001.png.partial", "x.png"):
        refused = httpx.get(f"{base}/{submitted.render_id}/frames/{name}")
        assert refused.status_code in (400, 404), name
        if refused.status_code == 400:
            assert refused.json()["__type"] == "ClientException"


def test_render_endpoints_refuse_jobs_that_are_not_render_jobs(ui_server: KilnServer, ui_batch: Any) -> None:
    queue = make_queue(ui_batch)
    job = submit(ui_batch, queue, register_shell(ui_batch, "echo -o /etc", memory=16))
    wait_for(ui_batch, job)
    for path in (f"renders/{job}", f"renders/{job}/frames/0001.png", f"renders/{job}/video", "renders/nope"):
        answer = httpx.get(f"{ui_server.endpoint}/kiln/v1/{path}")
        assert answer.status_code == 400, path
        assert answer.json()["__type"] == "ClientException"
    assert "not a kiln/render" in httpx.get(f"{ui_server.endpoint}/kiln/v1/renders/{job}").json()["message"]
