"""Which job may take which warm render process (`kiln.render.zygote.warm`): the pure decisions.

The processes themselves, real cgroups and real renders are in test_zygote.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.render.cli import build_parser
from kiln.render.zygote.warm import WarmKey, WarmPool, warm_key

SCENE = Path("/scenes/pottery.blend")
IDENTITY = (1, 2, 3, 4)
MIB = 1 << 20


@dataclass(eq=False)
class Process:
    key: WarmKey | None
    needed_bytes: int = 100 * MIB


def key(**changes: object) -> WarmKey:
    fields: dict[str, object] = {
        "blend_file": SCENE,
        "identity": IDENTITY,
        "vcpus": "1",
        "resolution_percent": 25,
        "samples": 8,
    }
    return WarmKey(**(fields | changes))  # type: ignore[arg-type]


def render_key(*argv: str, cwd: str = "/work", vcpus: str = "1") -> WarmKey | None:
    arguments = build_parser().parse_args(list(argv))
    return warm_key(arguments, cwd, {"KILN_VCPUS": vcpus}, (SCENE, IDENTITY))


def test_a_render_of_the_scene_opened_ahead_into_a_local_folder_has_a_key() -> None:
    found = render_key(
        "render", "-i", str(SCENE), "-o", "out", "-f", "1", "--resolution-percent", "25", "--samples", "8"
    )
    assert found == key()
    relative = render_key("render", "-i", "pottery.blend", "-o", "file:///out", "-f", "6", cwd="/scenes")
    assert relative == key(resolution_percent=None, samples=None)  # frames per job is not state


@pytest.mark.parametrize(
    "argv",
    [
        ["render", "-i", "/scenes/other.blend", "-o", "out", "-f", "1"],  # not the scene opened ahead
        ["render", "-i", "s3://bucket/pottery.blend", "-o", "out", "-f", "1"],  # fetched by the job
        ["render", "-i", str(SCENE), "-o", "s3://bucket/out", "-f", "1"],  # the job's own credentials
        ["stitch", "-i", "out", "-o", "out"],
    ],
)
def test_other_jobs_have_no_key(argv: list[str]) -> None:
    assert render_key(*argv) is None


def test_nothing_opened_ahead_means_no_key() -> None:
    arguments = build_parser().parse_args(["render", "-i", str(SCENE), "-o", "out", "-f", "1"])
    assert warm_key(arguments, "/", {}, None) is None


def test_a_job_takes_the_latest_process_of_its_key_that_its_memory_limit_admits() -> None:
    pool: WarmPool[Process] = WarmPool(capacity=4, idle_seconds=30)
    big, small, other = Process(key(), 300 * MIB), Process(key(), 100 * MIB), Process(key(samples=16))
    for index, process in enumerate((big, small, other)):
        assert pool.park(process, now=float(index)) == []
    assert pool.take(key(samples=32), 1 << 40) is None
    assert pool.take(key(), 50 * MIB) is None  # would not have held the render started afresh
    assert pool.take(key(), None) is None  # no memory group: nothing to judge by
    assert pool.take(key(), 200 * MIB) is small
    assert pool.take(key(), 200 * MIB) is None
    assert pool.take(key(), 300 * MIB) is big
    assert pool.take(None, 1 << 40) is None
    assert len(pool) == 1


def test_a_process_with_no_measured_need_is_never_taken() -> None:
    pool: WarmPool[Process] = WarmPool(capacity=2, idle_seconds=30)
    pool.park(Process(key(), needed_bytes=0), now=0)
    assert pool.take(key(), 1 << 40) is None


def test_parking_beyond_capacity_dismisses_the_oldest() -> None:
    pool: WarmPool[Process] = WarmPool(capacity=2, idle_seconds=30)
    first, second, third = Process(key()), Process(key()), Process(key())
    assert pool.park(first, now=0) == []
    assert pool.park(second, now=1) == []
    assert pool.park(third, now=2) == [first]
    assert len(pool) == 2


def test_processes_without_a_key_or_with_warmth_off_are_dismissed_at_once() -> None:
    pool: WarmPool[Process] = WarmPool(capacity=2, idle_seconds=30)
    keyless = Process(None)
    assert pool.park(keyless, now=0) == [keyless]
    off: WarmPool[Process] = WarmPool(capacity=2, idle_seconds=0)
    process = Process(key())
    assert off.park(process, now=0) == [process]
    assert len(pool) == len(off) == 0


def test_idle_processes_expire_and_a_rewritten_scene_outdates_its_processes() -> None:
    pool: WarmPool[Process] = WarmPool(capacity=4, idle_seconds=30)
    old, recent, rewritten = Process(key()), Process(key(samples=16)), Process(key(identity=(9, 9, 9, 9)))
    pool.park(old, now=0)
    pool.park(recent, now=20)
    pool.park(rewritten, now=25)
    assert pool.next_expiry() == 30
    assert pool.stale((SCENE, IDENTITY), now=10) == [rewritten]
    assert pool.stale((SCENE, IDENTITY), now=31) == [old]
    assert pool.stale(None, now=49) == []
    assert pool.next_expiry() == 50
    pool.discard(recent)
    assert len(pool) == 0 and pool.next_expiry() is None
