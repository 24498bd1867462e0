"""`kiln render` and `kiln sample-scene` as a person runs them: arguments, embedded server, Ctrl-C.

The pure parts (frame ranges, array sizing, commands) are checked directly; everything else runs
`python -m kiln ...` in a subprocess against a real server, on the code-built sample scene at 25 %
(80x45), so a whole pipeline takes a few seconds. Pottery runs are in tests/render/test_pipeline.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from kiln.cli.embedded_server import answers
from kiln.cli.render_command import frame_lines
from kiln.cli.render_pipeline import (
    PlanError,
    RenderPlan,
    check_array_size,
    frames_to_render,
    job_base_name,
    parse_frames,
    render_definition,
    storage_uri,
)
from kiln.cli.render_watch import FrameCount, FrameCounter, estimate_from_jobs, failure_line, published_frames
from kiln.render.blend_header import read_scene_info
from tests.conftest import FAST_FLAGS, JOBS_AS_ROOT, KilnServer, free_port, start_server
from tests.support import unique, wait_for

SMALL = ["--resolution-percent", "25"]
ENV = {**os.environ, "COLUMNS": "250"}


def kiln(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=ENV, timeout=timeout, check=False
    )


def start_kiln(*args: str) -> subprocess.Popen[str]:
    """`kiln ARGS` that gets Ctrl-C (SIGINT) like a foreground command, even when the test run itself
    was started in the background (which makes SIGINT ignored, and children inherit that)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kiln", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(process: subprocess.Popen[str], timeout: float = 30) -> str:
    """The rest of the output (read through the same buffered file `read_until` used) once it exits."""
    assert process.stdout is not None
    process.wait(timeout=timeout)
    return process.stdout.read()


def read_until(process: subprocess.Popen[str], marker: str, timeout: float = 60) -> str:
    """Lines of `process` up to the one containing `marker` (Rich flushes each print)."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} not printed: {seen}")


@pytest.fixture(scope="module")
def kiln_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """A shared server whose render jobs run as root: the render image runs this interpreter, under
    /root (0700) on the test machines, and writes into pytest's private temp dirs."""
    server = start_server(tmp_path_factory.mktemp("kiln"), [*FAST_FLAGS, *JOBS_AS_ROOT])
    yield server
    server.close()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-frame sample scene written by `kiln sample-scene` (the command under test)."""
    path = tmp_path_factory.mktemp("scene") / "sample.blend"
    written = kiln("sample-scene", str(path), "--frames", "6")
    assert written.returncode == 0, written.stderr
    assert f"wrote a 6-frame sample scene (frames 1-6) to {path}" in written.stdout
    return path


def test_sample_scene_has_the_frames_asked_for(sample: Path) -> None:
    info = read_scene_info(sample)
    assert (info.frame_start, info.frame_end, info.fps) == (1, 6, 24)


# --- pure parts -------------------------------------------------------------------------------


def test_frame_ranges() -> None:
    assert parse_frames("1-24") == (1, 24)
    assert parse_frames(" 7 ") == (7, 7)
    assert parse_frames("-5--1") == (-5, -1)
    for wrong in ("", "a-b", "1-", "1..3", "5-2"):
        with pytest.raises(PlanError):
            parse_frames(wrong)
    assert frames_to_render(range(1, 251), None) == range(1, 251)
    assert frames_to_render(range(1, 251, 2), (3, 9)) == range(3, 10, 2)
    with pytest.raises(PlanError, match="outside the scene's frames 1-250"):
        frames_to_render(range(1, 251), (0, 3))


def test_the_array_is_sized_like_the_workshop_and_only_an_array_above_one() -> None:
    plan = RenderPlan("/s.blend", "s3://b/out", range(1, 25), frames_per_job=5)
    assert plan.slices == 5
    assert plan.render_command() == ["render", "-i", "/s.blend", "-o", "s3://b/out", "-f", "5", "-t", "24"]
    assert plan.stitch_command() == ["stitch", "-i", "s3://b/out", "-o", "s3://b/out"]
    assert (plan.frames_uri, plan.video_uri) == ("s3://b/out/frames", "s3://b/out/output.mp4")
    tuned = RenderPlan("/s.blend", "/o", range(3, 6), 3, frames_flag_given=True, resolution_percent=10, samples=4)
    assert tuned.slices == 1
    assert tuned.render_command()[9:] == ["--frame-start", "3", "--frame-end", "5", "--resolution-percent", "10",
                                          "--samples", "4"]  # fmt: skip
    with pytest.raises(PlanError, match="use --frames-per-job 2 or more"):
        check_array_size(RenderPlan("/s.blend", "/o", range(20_000), 1))


def test_local_paths_become_absolute_and_uris_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage_uri("scene.blend") == str(tmp_path / "scene.blend")
    assert storage_uri("s3://bucket/scene.blend") == "s3://bucket/scene.blend"
    assert storage_uri("file:///data/scene.blend") == "file:///data/scene.blend"
    assert job_base_name("s3://b/My Scene v2.blend") == "My-Scene-v2"
    assert job_base_name("/x/.blend") == "scene"


def test_progress_never_claims_frames_it_did_not_see(tmp_path: Path) -> None:
    """Jobs on other machines may report frames that are not where the user looks (a cluster whose
    nodes share no disk with the submitter): the count says what was listed, the report says both."""
    plan = RenderPlan(str(tmp_path / "scene.blend"), str(tmp_path / "out"), range(1, 5), 1)
    all_succeeded = {"status": "SUCCEEDED", "arrayProperties": {"size": 4, "statusSummary": {"SUCCEEDED": 4}}}
    counter = FrameCounter(plan)
    assert counter.count(all_succeeded) == FrameCount(seen=0, reported=4)  # the folder does not even exist
    frames = tmp_path / "out" / "frames"
    frames.mkdir(parents=True)
    (frames / "0002.png").write_bytes(b"png")
    (frames / "0009.png").write_bytes(b"png")  # not a frame of this plan
    counted = counter.count(all_succeeded)
    assert (counted.seen, counted.reported, counted.shown, counted.unit) == (1, 4, 1, "frames")
    lines = frame_lines(counted, plan)
    assert lines[0] == f"  1 of 4 frames are in {frames}/"
    assert "report 4 frames done, but only 1 are in" in lines[1] and "s3://" in lines[1]
    assert lines[2] == "  the same command again renders only the missing ones"
    assert frame_lines(FrameCount(0, 0), plan) == [f"  0 of 4 frames are in {frames}/"]


def test_an_output_that_cannot_be_listed_is_said_so(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    plan = RenderPlan(str(tmp_path / "scene.blend"), str(blocker), range(1, 3), 1)  # frames under a file
    counter = FrameCounter(plan)
    counted = counter.count({"status": "RUNNING", "arrayProperties": {"size": 2, "statusSummary": {"SUCCEEDED": 1}}})
    assert (counted.seen, counted.reported, counted.shown) == (None, 1, 1)
    assert counted.listing_error and "cannot list" in counted.listing_error
    assert "as the jobs report" in counted.unit
    [line] = frame_lines(counted, plan)
    assert line.startswith(f"  {blocker}/frames/ cannot be listed from here (")
    assert line.endswith("the render jobs report 1 of 2 frames done")


def test_the_definition_is_the_workshops_on_the_render_image() -> None:
    definition = render_definition()
    assert definition["containerProperties"]["image"] == "kiln/render"
    assert definition["containerProperties"]["command"] == [
        "Ref::action", "-i", "Ref::inputUri", "-o", "Ref::outputUri", "-f", "Ref::framesPerJob",
    ]  # fmt: skip
    assert definition["retryStrategy"] == {"attempts": 3}
    assert "jobRoleArn" not in definition["containerProperties"]
    role = "arn:aws:iam::123456789012:role/render"
    assert render_definition(job_role_arn=role)["containerProperties"]["jobRoleArn"] == role  # --job-role-arn


def test_progress_counts_published_frames_and_finished_jobs() -> None:
    assert published_frames(["0001.png", "-0002.png", "scene.json", ".0003.png.partial-ab", "12.png"]) == {1, -2, 12}
    plan = RenderPlan("/s.blend", "/o", range(1, 11), 4)
    array = {"status": "RUNNING", "arrayProperties": {"size": 3, "statusSummary": {"SUCCEEDED": 3}}}
    assert estimate_from_jobs(array, plan) == 10
    assert estimate_from_jobs({"status": "RUNNING"}, plan) == 0
    child = {"jobId": "abc:2", "jobName": "s-render", "statusReason": "Essential container in task exited",
             "arrayProperties": {"index": 2}, "attempts": [{"container": {"exitCode": 137, "reason": "OutOfMemoryError: x"}}]}  # fmt: skip
    assert failure_line(child) == (
        "s-render[2] (abc:2): Essential container in task exited — OutOfMemoryError: x (exit code 137), after 1 attempt"
    )


# --- the command ------------------------------------------------------------------------------


def test_mistakes_fail_before_anything_is_submitted(sample: Path, tmp_path: Path) -> None:
    nowhere = ["--endpoint-url", "http://192.0.2.1:9"]  # no server is asked: the plan fails first
    cases = {
        ("--frames", "4-2"): "ends before it starts",
        ("--frames", "1-99"): "--frames 1-99 is outside the scene's frames 1-6",
    }
    for extra, message in cases.items():
        run = kiln("render", str(sample), "-o", str(tmp_path / "out"), *extra, *nowhere)
        assert run.returncode == 2, run
        assert message in run.stderr
    missing = kiln("render", str(tmp_path / "absent.blend"), "-o", str(tmp_path / "out"), *nowhere)
    assert missing.returncode == 2
    assert "absent.blend: no such file" in missing.stderr
    unreachable = kiln("render", str(sample), "-o", str(tmp_path / "out"), *nowhere)
    assert unreachable.returncode == 1
    assert "no Kiln server answers at http://192.0.2.1:9" in unreachable.stderr
    assert "Traceback" not in missing.stderr + unreachable.stderr


def test_without_a_server_an_embedded_one_renders_and_stops(sample: Path, tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    output = tmp_path / "out"
    run = kiln("render", str(sample), "-o", str(output), "--frames", "1-3", "--frames-per-job", "2", *SMALL,
               "--endpoint-url", nobody, "--data-dir", str(tmp_path / "data"))  # fmt: skip
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert f"no Kiln server answers at {nobody}: starting an embedded one" in run.stdout
    assert "created job queue kiln-render" in run.stdout
    assert "registered job definition kiln-render:1 (image kiln/render)" in run.stdout
    assert f"video:  {output}/output.mp4" in run.stdout
    assert f"frames: {output}/frames/" in run.stdout
    assert (output / "output.mp4").stat().st_size > 0
    embedded = re.search(r"embedded Kiln server on (\S+)", run.stdout)
    assert embedded and not answers(embedded[1])  # stopped at the end
    assert (tmp_path / "data" / "kiln.db").is_file()


def test_ctrl_c_stops_watching_and_the_jobs_carry_on(sample: Path, tmp_path: Path, kiln_server: KilnServer) -> None:
    queue = unique("render-q")
    process = start_kiln("render", str(sample), "-o", str(tmp_path / "out"), "--queue", queue, *SMALL,
                         "--endpoint-url", kiln_server.endpoint)  # fmt: skip
    submitted = read_until(process, "render jobs: ")
    process.send_signal(signal.SIGINT)
    rest = finish(process)
    assert process.returncode == 130, submitted + rest
    assert "stopped watching; the jobs keep running" in rest
    stitch_id = re.findall(r"\(([0-9a-f-]{36})\)", submitted)[-1]
    render_id = re.findall(r"\(([0-9a-f-]{36}):", submitted)[0]
    assert f"dashboard: {kiln_server.endpoint}/ui/#/jobs/{stitch_id}\n" in submitted  # the pipeline's page
    assert f"render jobs: {kiln_server.endpoint}/ui/#/jobs/{render_id}\n" in submitted  # the array's page
    assert f"kiln describe {stitch_id} --endpoint-url {kiln_server.endpoint}" in rest
    assert "aws batch terminate-job" in rest
    assert wait_for(kiln_server.client(), stitch_id, timeout=120)["status"] == "SUCCEEDED"
    assert (tmp_path / "out" / "output.mp4").is_file()


def test_ctrl_c_without_a_terminal_leaves_the_embedded_server_running(sample: Path, tmp_path: Path) -> None:
    """Nobody can be asked whether to stop it, so it (and the jobs) keep running; it says how to stop it."""
    process = start_kiln("render", str(sample), "-o", str(tmp_path / "out"), *SMALL, "--embedded",
                         "--data-dir", str(tmp_path / "data"))  # fmt: skip
    started = read_until(process, "submitted ")
    process.send_signal(signal.SIGINT)
    rest = finish(process)
    assert process.returncode == 130, started + rest
    endpoint = re.search(r"embedded Kiln server on (\S+)", started)
    pid = re.search(r"stop it with: kill (\d+)", rest)
    assert endpoint and pid, rest
    try:
        batch: Any = boto3.client("batch", endpoint_url=endpoint[1], region_name="us-east-1")
        stitch_id = re.findall(r"\(([0-9a-f-]{36})\)", started)[-1]
        assert wait_for(batch, stitch_id, timeout=120)["status"] == "SUCCEEDED"
    finally:
        os.kill(int(pid[1]), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while answers(endpoint[1]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not answers(endpoint[1])


def test_an_embedded_server_never_shares_a_data_dir(sample: Path, tmp_path: Path, kiln_server: KilnServer) -> None:
    """A running server holds its data dir; the embedded one says so and how to reach the running one."""
    nobody = f"http://127.0.0.1:{free_port()}"
    run = kiln("render", str(sample), "-o", str(tmp_path / "out"), "--endpoint-url", nobody,
               "--data-dir", str(kiln_server.data_dir))  # fmt: skip
    assert run.returncode == 1, run
    error = " ".join(run.stderr.split())
    assert (
        f"could not start an embedded Kiln server: another kiln server is already using the data dir {kiln_server.data_dir}"
        in error
    )
    assert "use that server's --endpoint-url, or another --data-dir" in error
