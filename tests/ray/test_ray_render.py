"""`kiln render` on the Ray executor, losing a worker node mid-render: Issue 6's render scenario.

A real `kiln server --executor ray` on the session's three-node Ray cluster renders Pottery (6 tiny
frames, one frame per array child) into a directory every local node sees. Once a render child runs
on a worker node, that node is lost (every process on it killed at once). The lost attempt must fail with
AWS's `Host EC2 (instance <node id>) terminated.` and be retried by the render definition's
`retryStrategy` (attempts 3, kiln/cli/render_pipeline.py), and the pipeline must still finish with
every frame and an MP4 of exactly as many frames.

Which node a render runs on is read from the running process itself: its working directory is the
node agent's `kiln-ray/<tag>-<node id prefix>/work/...` (kiln/executors/ray_node.py). The test
starts a replacement node afterwards so the rest of the session keeps three nodes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import JOBS_AS_ROOT, KilnServer
from tests.ray_cluster import RayCluster
from tests.render.conftest import POTTERY_CANDIDATES
from tests.render.images import video_frames

FRAMES = 6
# The render image runs this interpreter, under /root (0700) on the test machines; frames go to /tmp.
SERVER_FLAGS = JOBS_AS_ROOT
FRESH_SECONDS = 0.5  # a render process younger than this has seconds of work left (importing bpy alone takes more)
HOST_LOST = re.compile(r"^Host EC2 \(instance ([0-9a-f]{56})\) terminated\.$")
SUBMITTED = re.compile(r"submitted \S+ \((?P<render>[0-9a-f-]+)[:)].*? and \S+ \((?P<stitch>[0-9a-f-]+)\)")
NODE_IN_PATH = re.compile(r"kiln-ray/[0-9a-f]{10}-([0-9a-f]{12})/work/")
# 2048 MiB per render job = a whole node's memory (tests/ray_cluster.py): one render per node, so the
# two that run at once (CE maxvCpus 2) are on two different nodes, at least one of them a worker.
TINY = ["--resolution-percent", "10", "--samples", "1", "--memory", "2048"]


@pytest.fixture(scope="module")
def pottery() -> Path:
    for candidate in POTTERY_CANDIDATES:
        if candidate.is_file():
            return candidate
    pytest.skip("pottery.blend not found (set KILN_POTTERY_BLEND or provide shared/data/pottery.blend)")


def _age_seconds(proc: Path) -> float:
    """How long ago the process `proc` (a /proc/<pid> entry) started."""
    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time, ticks after boot
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - started


def _render_nodes(node_prefixes: set[str]) -> set[str]:
    """Node-id prefixes (of `node_prefixes`) on which a `python -m kiln.render render` process started
    less than FRESH_SECONDS ago: it is still importing Blender, so killing its node now lands mid-render
    (a render caught near its end could finish and report before the node's death is noticed)."""
    found: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"kiln.render" not in argv or b"render" not in argv:
                continue
            cwd = os.readlink(entry / "cwd")
            if _age_seconds(entry) > FRESH_SECONDS:
                continue
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours
            continue
        match = NODE_IN_PATH.search(cwd + "/")
        if match and match.group(1) in node_prefixes:
            found.add(match.group(1))
    return found


def _wait_for_render_on_a_worker(workers: dict[str, str], render: subprocess.Popen[str], timeout: float) -> str:
    """The name of a worker node that runs a render child now (bounded)."""
    by_prefix = {node_id[:12]: name for name, node_id in workers.items()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if render.poll() is not None:
            break
        running = _render_nodes(set(by_prefix))
        if running:
            return by_prefix[sorted(running)[0]]
        time.sleep(0.02)
    raise AssertionError(f"no render child ran on a worker node {sorted(workers)} within {timeout} s")


def test_losing_a_worker_node_mid_render_still_gives_every_frame_and_the_mp4(
    server: KilnServer, ray_cluster: RayCluster, pottery: Path, tmp_path: Path
) -> None:
    output = tmp_path / "pottery"  # /tmp: every node of the local cluster sees it
    names = ray_cluster.node_ids()
    workers = {name: node_id for name, node_id in names.items() if name != "head"}
    assert len(workers) >= 2, names
    command = [sys.executable, "-m", "kiln", "render", str(pottery), "-o", output.as_uri(), "--frames", f"1-{FRAMES}",
               "--frames-per-job", "1", *TINY, "--endpoint-url", server.endpoint]  # fmt: skip
    render = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    replacement = f"r{len(ray_cluster.nodes)}"
    try:
        victim_name = _wait_for_render_on_a_worker(workers, render, timeout=120)
        victim = workers[victim_name]
        ray_cluster.nodes[victim_name].kill()
        stdout, stderr = render.communicate(timeout=300)
    finally:
        if render.poll() is None:
            render.kill()
            render.wait(timeout=30)
        ray_cluster.start_node(replacement)  # the rest of the session keeps three nodes
        ray_cluster.wait_for_nodes(3)
    assert render.returncode == 0, (stdout, stderr)

    assert sorted(path.name for path in (output / "frames").glob("*.png")) == [
        f"{frame:04d}.png" for frame in range(1, FRAMES + 1)
    ]
    frames, _ = video_frames(output / "output.mp4")
    assert len(frames) == FRAMES

    match = SUBMITTED.search(stdout)
    assert match, stdout
    batch = server.client()
    children: list[dict[str, Any]] = batch.describe_jobs(jobs=[f"{match['render']}:{i}" for i in range(FRAMES)])["jobs"]
    assert {child["status"] for child in children} == {"SUCCEEDED"}, children
    lost = [
        child
        for child in children
        if any(HOST_LOST.match(attempt["statusReason"] or "") for attempt in child["attempts"])
    ]
    assert lost, [[attempt["statusReason"] for attempt in child["attempts"]] for child in children]
    for child in lost:
        first, *rest = child["attempts"]
        reason = HOST_LOST.match(first["statusReason"])
        assert reason and reason.group(1) == victim, first
        assert rest and rest[-1]["container"]["exitCode"] == 0, child["attempts"]
    stitch = batch.describe_jobs(jobs=[match["stitch"]])["jobs"][0]
    assert stitch["status"] == "SUCCEEDED", stitch
