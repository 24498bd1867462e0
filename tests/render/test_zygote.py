"""The render zygote through the real local executor: real cgroups, real bpy, tiny Pottery renders.

Every job here is a real attempt (the executor's own process start, cgroups, log and kill paths);
the zygote is the real daemon, started on demand by the first job, in a socket folder of this
module's own. What is checked: a forked render gives the same pixels as an in-process one and
logs to the job's log; the job's memory limit, terminate and timeout still reach the forked
render; the render dies with the job's process; jobs render in-process when the zygote cannot
serve. Plus the reason forking is safe at all: after the pools are stopped, a forked bpy child
writes an EXR (which hangs without it) with Blender's worker threads back.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.config import Settings
from kiln.executors.base import OOM_EXIT_CODE, OOM_REASON, TIMEOUT_STATUS_REASON, AttemptExited, AttemptSpec
from kiln.executors.images import RENDER_IMAGE, ImageCatalogue
from kiln.executors.local import LocalExecutor
from kiln.render.zygote.paths import ZygotePaths

from ..executors.helpers import exited, is_gone, wait_for_exit, wait_for_log
from .conftest import run_bpy
from .images import read_png

pytestmark = pytest.mark.timeout(300)

FORKED = r"render process (\d+), forked from the render zygote"
WARM = FORKED + r" and kept warm: its job \d+"
SMALL = ["--resolution-percent", "10", "--samples", "4"]  # 108x135: about a second a frame
_ids = itertools.count()


@dataclass
class Kit:
    executor: LocalExecutor
    folder: Path  # XDG_RUNTIME_DIR of every job: the zygote's socket folder is inside
    work: Path
    blend: Path

    def spec(
        self, *extra: str, environment: dict[str, str] | None = None, blend: Path | None = None, **fields: Any
    ) -> AttemptSpec:
        attempt_id = f"zygote-test-{os.getpid()}-{next(_ids)}"  # unique on a host shared with other servers
        output = self.work / "out" / attempt_id
        scene = str(blend or self.blend)
        return AttemptSpec(
            attempt_id=attempt_id,
            job_id=attempt_id,
            image=RENDER_IMAGE,
            command=["render", "-i", scene, "-o", str(output), "-f", "1", *SMALL, *extra],
            environment={
                "XDG_RUNTIME_DIR": str(self.folder),
                "KILN_RENDER_ZYGOTE": "on",
                "KILN_RENDER_ZYGOTE_IDLE_SECONDS": "120",
            }
            | (environment or {}),
            vcpus=fields.pop("vcpus", 1.0),
            memory_mib=fields.pop("memory_mib", 2048),
            log_path=self.work / "logs" / f"{attempt_id}.log",
            workdir=self.work / "attempts" / attempt_id,
            **fields,
        )

    def run(self, spec: AttemptSpec, timeout: float = 120) -> tuple[AttemptExited, str]:
        self.executor.start(spec)
        event = exited(wait_for_exit(self.executor, spec.attempt_id, timeout=timeout))
        return event, spec.log_path.read_text()

    def run_until_forked(self, *extra: str, **fields: Any) -> tuple[AttemptSpec, AttemptExited, str]:
        """Run the job until it goes through a zygote: with new settings (another zygote key) the
        first job starts that zygote and renders in-process meanwhile. The last try, forked or not."""
        deadline = time.monotonic() + 90
        while True:
            spec = self.spec(*extra, **fields)
            event, log = self.run(spec)
            if "forked from the render zygote" in log or time.monotonic() > deadline:
                return spec, event, log
            time.sleep(0.5)

    def frame(self, spec: AttemptSpec, number: int = 1) -> np.ndarray:
        return read_png(Path(spec.command[4]) / "frames" / f"{number:04d}.png")


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, pottery: Path) -> Iterator[Kit]:
    work = tmp_path_factory.mktemp("zygote")
    # As root on purpose: the zygote moves renders between the executor's cgroups, which only root
    # may do (an unprivileged job user makes it step aside: docs/security.md), and the interpreter
    # lives under /root (0700) on the test machines.
    settings = Settings(data_dir=work / "data", termination_grace_seconds=1.0, host_vcpus=2, job_user="root")
    catalogue = ImageCatalogue.from_settings(settings)
    executor = LocalExecutor(settings, catalogue)
    support = executor.cgroup_support
    if support.tracking_parent is None or support.memory_parent is None:
        executor.shutdown()
        pytest.skip(f"the zygote needs per-attempt cgroups, and this host offers none: {executor.describe()}")
    folder = work / "runtime"
    folder.mkdir(mode=0o700)
    yield Kit(executor, folder, work, pottery)
    executor.shutdown(grace_seconds=0.2)
    for lock in folder.glob("kiln-render-zygote-*/*.lock"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(lock.read_text()), signal.SIGTERM)


@pytest.fixture(scope="module")
def first_job(kit: Kit) -> tuple[AttemptSpec, AttemptExited, str]:
    """The first job finds no zygote: it renders in-process and starts one for the jobs after it."""
    spec = kit.spec()
    event, log = kit.run(spec)
    deadline = time.monotonic() + 90
    while not _serving(kit.folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _serving(kit.folder), f"no zygote started; its log: {_zygote_log(kit.folder)}"
    return spec, event, log


def _serving(folder: Path) -> bool:
    for path in folder.glob("kiln-render-zygote-*/*.sock"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(str(path))
                return True
            except OSError:
                continue
    return False


def _zygote_log(folder: Path) -> str:
    return "\n".join(path.read_text()[-2000:] for path in folder.glob("kiln-render-zygote-*/*.log"))


def test_a_forked_render_gives_the_same_pixels_as_an_in_process_one(
    kit: Kit, first_job: tuple[AttemptSpec, AttemptExited, str]
) -> None:
    first, first_event, first_log = first_job
    assert first_event.exit_code == 0, first_log
    assert "forked from the render zygote" not in first_log
    assert "frame 1 done" in first_log

    # Two threads: Blender's TBB workers must work in the child. Jobs of each size have a zygote of
    # their own (its worker pool is sized as bpy loads): the first 2-vCPU job starts that one.
    forked, event, log = kit.run_until_forked(vcpus=2.0)
    assert event.exit_code == 0, log
    assert "forked from the render zygote" in log, log
    assert "slice 0: frame 1 of frames 1-199" in log and "frame 1 done (1/1" in log  # the job's own log
    assert "pottery.blend was opened ahead by the render zygote" in log
    assert np.array_equal(kit.frame(forked), kit.frame(first))


def test_a_render_process_stays_warm_for_the_next_job_of_the_scene(kit: Kit, first_job: object) -> None:
    """The next job of the same scene and settings is handed to the process that rendered the last
    one (scene and Cycles' session still loaded): same pixels as a fresh render, in its own groups."""
    _, event, log = kit.run_until_forked()
    started = re.search(FORKED, log)
    assert event.exit_code == 0 and started, log
    warm = int(started.group(1))
    assert not is_gone(warm), "a render process that finished cleanly waits for the next job"
    assert "kiln-" not in Path(f"/proc/{warm}/cgroup").read_text(), "it left the finished job's groups"

    second = kit.spec(environment={"AWS_BATCH_JOB_ARRAY_INDEX": "1"})
    event, log = kit.run(second)
    assert event.exit_code == 0, log
    reused = re.search(WARM, log)
    assert reused and int(reused.group(1)) == warm, log
    assert "slice 1: frame 2 of frames 1-199" in log and "frame 2 done (1/1" in log  # the job's own log
    fresh = kit.spec(environment={"AWS_BATCH_JOB_ARRAY_INDEX": "1", "KILN_RENDER_ZYGOTE": "off"})
    event, log = kit.run(fresh)
    assert event.exit_code == 0 and "render zygote" not in log, log
    assert np.array_equal(kit.frame(second, 2), kit.frame(fresh, 2))

    other_settings = kit.spec("--samples", "2")
    event, log = kit.run(other_settings)
    assert event.exit_code == 0 and "forked from the render zygote" in log and "kept warm" not in log, log


def test_stopping_a_job_stops_the_warm_process_serving_it(kit: Kit, first_job: object) -> None:
    event, log = kit.run(kit.spec())  # leaves a warm process for these settings (or reuses one)
    assert event.exit_code == 0 and "forked from the render zygote" in log, log
    spec = kit.spec("-f", "24")  # frames 1-24: long enough to stop it midway
    kit.executor.start(spec)
    child = int(wait_for_log(spec.log_path, WARM, timeout=20).group(1))
    wait_for_log(spec.log_path, "frame 1 done", timeout=30)
    groups = kit.executor.attempt_cgroups(spec.attempt_id)
    assert groups is not None and groups.paths(), "the attempt has its groups"
    assert f"/{groups.paths()[0].name}" in Path(f"/proc/{child}/cgroup").read_text()
    kit.executor.terminate(spec.attempt_id, "stop it")
    event = exited(wait_for_exit(kit.executor, spec.attempt_id, timeout=30))
    assert (event.terminated, event.exit_code) == (True, 143), spec.log_path.read_text()
    assert is_gone(child)


def test_an_idle_warm_process_exits_after_its_time(kit: Kit, first_job: object) -> None:
    _, event, log = kit.run_until_forked(environment={"KILN_RENDER_ZYGOTE_WARM_SECONDS": "1"})
    started = re.search(FORKED, log)
    assert event.exit_code == 0 and started, log
    process = int(started.group(1))
    deadline = time.monotonic() + 15
    while not is_gone(process) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert is_gone(process), "an idle warm process is dismissed after KILN_RENDER_ZYGOTE_WARM_SECONDS"


def test_a_scene_rewritten_between_jobs_is_opened_again(
    kit: Kit, first_job: object, tmp_path: Path, sample_blend: Path
) -> None:
    """The zygote keeps the last scene open for the next job, but only while the file is unchanged."""
    scene = tmp_path / "scene.blend"
    shutil.copyfile(kit.blend, scene)
    pottery = kit.spec(blend=scene)
    event, log = kit.run(pottery)
    assert event.exit_code == 0 and "scene.blend was opened ahead by the render zygote" in log, log
    assert "frame 1 of frames 1-199 from scene 'Scene'" in log

    shutil.copyfile(sample_blend, scene)  # same path, another scene: 12 frames named 'Sample'
    sample = kit.spec(blend=scene)
    event, log = kit.run(sample)
    assert event.exit_code == 0 and "scene.blend was opened ahead by the render zygote" in log, log
    assert "frame 1 of frames 1-12 from scene 'Sample'" in log

    scene.write_text("not a scene")
    broken = kit.spec(blend=scene)
    event, log = kit.run(broken)
    assert event.exit_code == 1 and "forked from the render zygote" in log, log
    assert (
        log.strip().splitlines()[-1]
        == f"kiln-render: error: {scene}: not a .blend file (no BLENDER header, and not gzip or zstd compressed)"
    )


def test_a_scene_over_the_open_ahead_size_is_opened_by_the_job(kit: Kit, first_job: object) -> None:
    """Memory a scene takes in the zygote is not charged to the job: only small files are opened ahead."""
    _, event, log = kit.run_until_forked(environment={"KILN_RENDER_ZYGOTE_OPEN_AHEAD_MAX_MIB": "1"})  # Pottery: 1.5 MiB
    assert event.exit_code == 0 and "forked from the render zygote" in log, log
    assert "opened ahead" not in log and "frame 1 done" in log


def test_jobs_with_a_relative_python_path_share_one_zygote(kit: Kit, first_job: object) -> None:
    """`PYTHONPATH=.` puts each job's own directory on its module path; its jobs still share a
    zygote (the first one starts it), rather than each starting one and rendering in-process."""
    _, event, log = kit.run_until_forked(environment={"PYTHONPATH": "."})
    assert event.exit_code == 0 and "forked from the render zygote" in log, log


def test_the_job_memory_limit_kills_a_forked_render(kit: Kit, first_job: object) -> None:
    spec = kit.spec(memory_mib=64)  # the render child needs about twice that of its own
    event, log = kit.run(spec)
    assert "forked from the render zygote" in log, log
    assert "kept warm" not in log, "a warm process's memory is not all charged to the job: not for this one"
    assert (event.oom, event.exit_code, event.reason) == (True, OOM_EXIT_CODE, OOM_REASON)
    assert _serving(kit.folder), "the zygote itself must survive a job's OOM"


@pytest.mark.parametrize("stop", ["terminate", "timeout"])
def test_stopping_the_job_stops_its_forked_render(kit: Kit, first_job: object, stop: str) -> None:
    spec = kit.spec("--samples", "64", timeout_seconds=3 if stop == "timeout" else None)
    kit.executor.start(spec)
    child = int(wait_for_log(spec.log_path, FORKED, timeout=20).group(1))
    if stop == "terminate":
        kit.executor.terminate(spec.attempt_id, "stop it")
    event = exited(wait_for_exit(kit.executor, spec.attempt_id, timeout=30))
    if stop == "terminate":
        assert (event.terminated, event.status_reason) == (True, "stop it")
    else:
        assert (event.timed_out, event.status_reason) == (True, TIMEOUT_STATUS_REASON)
    assert event.exit_code in (143, 137)  # the render's own SIGTERM death, relayed (or SIGKILL after grace)
    assert is_gone(child)


def test_the_forked_render_dies_with_the_job_process(kit: Kit, first_job: object) -> None:
    """A SIGKILL of only the job's process (what an outside `kill -9` does) takes its render down."""
    spec = kit.spec("--samples", "64")
    kit.executor.start(spec)
    child = int(wait_for_log(spec.log_path, FORKED, timeout=20).group(1))
    groups = kit.executor.attempt_cgroups(spec.attempt_id)
    assert groups is not None
    client = next(pid for pid in groups.pids() if pid != child)
    os.kill(client, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not is_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert is_gone(child)
    assert exited(wait_for_exit(kit.executor, spec.attempt_id)).exit_code == 137


def test_jobs_render_in_process_when_the_zygote_cannot_serve(kit: Kit, tmp_path: Path) -> None:
    unsafe = tmp_path / "runtime"
    (unsafe / f"kiln-render-zygote-{os.getuid()}").mkdir(parents=True, mode=0o777)
    os.chmod(unsafe / f"kiln-render-zygote-{os.getuid()}", 0o777)  # others could hijack the socket
    spec = kit.spec(environment={"XDG_RUNTIME_DIR": str(unsafe)})
    event, log = kit.run(spec)
    assert event.exit_code == 0, log
    assert "forked from the render zygote" not in log and "frame 1 done" in log
    assert list((unsafe / f"kiln-render-zygote-{os.getuid()}").iterdir()) == []  # nothing started there

    switched_off = kit.spec(environment={"KILN_RENDER_ZYGOTE": "off"})
    event, log = kit.run(switched_off)
    assert event.exit_code == 0 and "forked from the render zygote" not in log, log


def test_a_zygote_started_by_a_job_is_not_in_its_cgroups(kit: Kit, first_job: object) -> None:
    lock = next(kit.folder.glob("kiln-render-zygote-*/*.lock"))
    zygote = int(lock.read_text())
    groups = Path(f"/proc/{zygote}/cgroup").read_text()
    assert "kiln-" not in groups, groups
    assert ZygotePaths(lock.parent, lock.stem).socket.is_socket()


def test_a_forked_bpy_child_writes_exr_with_worker_threads_after_the_pools_stop(tmp_path: Path) -> None:
    result = run_bpy(
        """
        import os, time
        from kiln.render.blender_fork import BlenderThreadPools
        from kiln.render.zygote.daemon import warm_up
        import bpy
        warm_up()
        pools = BlenderThreadPools()
        pools.stop()
        pid = os.fork()
        if pid == 0:
            pools.restore()
            scene = bpy.context.scene
            scene.render.engine = "CYCLES"
            scene.render.resolution_x = scene.render.resolution_y = 16
            camera = bpy.data.objects.new("c", bpy.data.cameras.new("c"))
            scene.collection.objects.link(camera)
            scene.camera = camera
            scene.render.threads_mode, scene.render.threads = "FIXED", 2
            scene.render.image_settings.file_format = "OPEN_EXR"
            scene.render.filepath = target
            bpy.ops.render.render(write_still=True)
            os._exit(0 if os.path.isfile(target) else 3)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, 9)
            status = -1
        result = {"status": status, "exr_threads": pools.exr_threads}
        """,
        target=str(tmp_path / "frame.exr"),
    )
    assert result["status"] == 0, "the forked child hung or failed writing an EXR"
    assert result["exr_threads"] > 0
