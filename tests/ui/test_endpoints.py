"""The dashboard's own read-only endpoints and static files, over plain HTTP."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from kiln.executors.images import RENDER_IMAGE as IMAGE
from kiln.web.routes import STATIC_DIR
from tests.conftest import KilnServer
from tests.support import make_queue, register_shell, submit, unique, wait_for

PNG = b"\x89PNG\r\n\x1a\n" + b"frame"


def test_ui_is_served_by_kiln_itself_with_no_outside_assets(ui_server: KilnServer) -> None:
    redirect = httpx.get(f"{ui_server.endpoint}/ui")
    assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
    index = httpx.get(f"{ui_server.endpoint}/ui/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    for asset in re.findall(r'(?:src|href)="([^"#:]+)"', index.text):
        assert httpx.get(f"{ui_server.endpoint}/ui/{asset}").status_code == 200, asset
    for path in STATIC_DIR.iterdir():
        assert not re.search(r"https?://", path.read_text()), f"{path.name} refers to another host"


def test_array_children_come_back_in_index_order_with_their_statuses(ui_server: KilnServer, ui_batch: Any) -> None:
    queue = make_queue(ui_batch)
    definition = register_shell(ui_batch, 'test "$AWS_BATCH_JOB_ARRAY_INDEX" -ne 1', memory=16)
    parent = submit(ui_batch, queue, definition, arrayProperties={"size": 3})
    wait_for(ui_batch, parent)
    answer = httpx.get(f"{ui_server.endpoint}/kiln/v1/arrays/{parent}/children").json()
    assert answer == {"size": 3, "children": [[0, "SUCCEEDED"], [1, "FAILED"], [2, "SUCCEEDED"]]}
    plain = submit(ui_batch, queue, definition)
    for job, message in ((plain, "is not an array job"), ("no-such-job", "not found")):
        refused = httpx.get(f"{ui_server.endpoint}/kiln/v1/arrays/{job}/children")
        assert refused.status_code == 400
        assert refused.json()["__type"] == "ClientException" and message in refused.json()["message"]


def test_job_counts_agree_with_list_jobs(ui_server: KilnServer, ui_batch: Any) -> None:
    queue = make_queue(ui_batch)
    ok, failing = register_shell(ui_batch, "true", memory=16), register_shell(ui_batch, "exit 4", memory=16)
    jobs = [submit(ui_batch, queue, ok), submit(ui_batch, queue, ok), submit(ui_batch, queue, failing)]
    for job in jobs:
        wait_for(ui_batch, job)
    arn = ui_batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["jobQueueArn"]
    counts = httpx.get(f"{ui_server.endpoint}/kiln/v1/job-counts").json()["queues"][arn]
    assert counts["SUCCEEDED"] == 2 and counts["FAILED"] == 1 and sum(counts.values()) == 3


# ------------------------------------------------------------------ render files: what may be read


def render_shaped_job(batch: Any, command: list[str]) -> str:
    """A kiln/render job with `command` that never runs (its dependency fails): only the dashboard
    reads the output it names, so no Blender is needed."""
    name = unique("render")
    container = {"image": IMAGE, "vcpus": 1, "memory": 64, "command": command}
    batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties=container)
    queue = make_queue(batch)
    failing = submit(batch, queue, register_shell(batch, "exit 1", memory=16))
    job = submit(batch, queue, name, dependsOn=[{"jobId": failing}])
    assert wait_for(batch, job)["status"] == "FAILED"
    return job


class _Recorder(BaseHTTPRequestHandler):
    """Answers anything with a PNG and remembers the path: a server the dashboard must never call."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_target() -> Iterator[tuple[str, list[str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()
    server.server_close()


def test_render_files_come_from_no_protocol_the_worker_does_not_write(
    ui_server: KilnServer, ui_batch: Any, http_target: tuple[str, list[str]]
) -> None:
    """A job naming `-o http://...` must not make the server fetch that URL (server-side request forgery)."""
    target, seen = http_target
    outputs = {
        f"{target}/out": "not http://",
        f"HTTPS://127.0.0.1:{target.rsplit(':', 1)[1]}/out": "not https://",
        f"simplecache::{target}/out": "chained",
        f"/tmp/x::{target}/out": "chained",
        "memory://out": "not memory://",
        "ftp://127.0.0.1/out": "not ftp://",
        "relative/out": "absolute local paths",
        "file://relative/out": "absolute local paths",
    }
    base = f"{ui_server.endpoint}/kiln/v1/renders"
    for output, message in outputs.items():
        render = render_shaped_job(ui_batch, ["render", "-i", "/nowhere.blend", "-o", output])
        stitch = render_shaped_job(ui_batch, ["stitch", "-i", output, "-o", "/tmp/kiln-never-written"])
        for path in (render, f"{render}/frames/0001.png", f"{render}/video", stitch, f"{stitch}/frames/0001.png"):
            answer = httpx.get(f"{base}/{path}", timeout=30)
            assert answer.status_code == 400, (output, path, answer.text)
            assert answer.json()["__type"] == "ClientException"
            assert message in answer.json()["message"], (output, answer.json())
    assert seen == []


def test_frames_and_video_never_leave_the_jobs_output_folder(
    ui_server: KilnServer, ui_batch: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the server's own secret")
    out = tmp_path / "out"
    (out / "frames").mkdir(parents=True)
    (out / "frames" / "0001.png").write_bytes(PNG)
    (out / "frames" / "0002.png").symlink_to(secret)
    (out / "frames" / "0003.png").symlink_to(ui_server.data_dir / "kiln.db")
    os.mkfifo(out / "frames" / "0004.png")  # would block a plain open() for good
    (out / "frames" / "0005.png").mkdir()
    (out / "output.mp4").symlink_to(secret)
    linked = tmp_path / "linked"  # frames/ itself a link out of the output folder
    linked.mkdir()
    (linked / "frames").symlink_to(out / "frames")
    video = tmp_path / "video"
    video.mkdir()
    (video / "output.mp4").write_bytes(bytes(range(256)) * 4)

    base = f"{ui_server.endpoint}/kiln/v1/renders"
    job = render_shaped_job(ui_batch, ["render", "-i", "/nowhere.blend", "-o", f"file://{out}"])
    served = httpx.get(f"{base}/{job}/frames/0001.png", timeout=10)
    assert served.status_code == 200 and served.content == PNG
    for name in ("0002.png", "0003.png", "0004.png", "0005.png"):
        refused = httpx.get(f"{base}/{job}/frames/{name}", timeout=10)
        assert refused.status_code == 400, (name, refused.text)
        assert refused.json()["__type"] == "ClientException" and "not served" in refused.json()["message"]
    for name in ("..%2F..%2Fsecret.txt", "..%2Fout%2Fframes%2F0001.png", "%2E%2E", "0001.png%0A", "%2Fetc%2Fpasswd",
                 "0001.png%00", "1" * 40 + ".png"):  # fmt: skip
        refused = httpx.get(f"{base}/{job}/frames/{name}", timeout=10)
        assert refused.status_code in (400, 404), name
        assert b"own secret" not in refused.content and b"SQLite" not in refused.content
    stitch = render_shaped_job(ui_batch, ["stitch", "-i", str(out), "-o", str(out)])
    refused = httpx.get(f"{base}/{stitch}/video", timeout=10)
    assert refused.status_code == 400 and "not served" in refused.json()["message"]
    through_link = render_shaped_job(ui_batch, ["render", "-i", "/nowhere.blend", "-o", str(linked)])
    refused = httpx.get(f"{base}/{through_link}/frames/0001.png", timeout=10)
    assert refused.status_code == 400 and "not served" in refused.json()["message"]
    played = render_shaped_job(ui_batch, ["stitch", "-i", str(video), "-o", str(video)])
    ranged = httpx.get(f"{base}/{played}/video", headers={"Range": "bytes=10-19"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == bytes(range(10, 20))
    assert ranged.headers["content-range"] == "bytes 10-19/1024"
    assert httpx.get(f"{base}/{played}/video", timeout=10).content == (video / "output.mp4").read_bytes()
