"""The supervisor's wire format: every spec and event survives the trip through JSON unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from kiln.executors.base import (
    AttemptEvent,
    AttemptExited,
    AttemptRunning,
    AttemptSpec,
    GangMember,
    TaskContainer,
    TaskMount,
    VolumeMount,
)
from kiln.executors.supervisor_wire import event_from_wire, event_to_wire, spec_from_wire, spec_to_wire


def _through_json(wire: dict[str, object]) -> dict[str, object]:
    return json.loads(json.dumps(wire))


def test_a_full_spec_comes_back_equal() -> None:
    spec = AttemptSpec(
        attempt_id="a1", job_id="j:3", image="host", command=["sh", "-c", "echo hi"],
        environment={"AWS_BATCH_JOB_ARRAY_INDEX": "3"}, vcpus=0.5, memory_mib=64,
        log_path=Path("/data/logs/a1.log"), workdir=Path("/data/work/a1"), gpus=1, timeout_seconds=60,
        cpu_hard_cap=True, volumes=(VolumeMount("/scratch", "/tmp/scratch", read_only=True),),
        start_after="a0", gang=GangMember("j/1", 1, 3, 0),
    )  # fmt: skip
    assert spec_from_wire(_through_json(spec_to_wire(spec))) == spec


def test_a_plain_spec_comes_back_equal() -> None:
    spec = AttemptSpec("a2", "j", "host", ["true"], {}, 1.0, 16, Path("/l.log"), Path("/w"))
    assert spec_from_wire(_through_json(spec_to_wire(spec))) == spec


def test_a_task_spec_comes_back_equal() -> None:
    """An `ecsProperties` attempt: its containers, their logs, dependencies and stop timeouts."""
    task = (
        TaskContainer("sidecar", "host", ["serve"], {"A": "1"}, Path("/data/logs/d/sidecar/a3.log"), essential=False),
        TaskContainer("main", "host", ["work"], {}, Path("/data/logs/d/main/a3.log"),
                      depends_on=(("sidecar", "START"),), stop_timeout=30),
    )  # fmt: skip
    spec = AttemptSpec("a3", "j", "host", ["work"], {}, 1.5, 96, Path("/data/logs/d/default/a3.log"), Path("/w"),
                       task=task)  # fmt: skip
    assert spec_from_wire(_through_json(spec_to_wire(spec))) == spec


def test_a_pod_spec_comes_back_equal() -> None:
    """An `eksProperties` attempt: entrypoints, volume mounts and the pod's rules."""
    mounts = (TaskMount("/data", "scratch"), TaskMount("/in", "scenes", "/srv/scenes", "a/b", read_only=True))
    task = (
        TaskContainer("init", "host", [], {}, Path("/l/init.log"), essential=False, entrypoint=["sh", "-c", "x"],
                      mounts=mounts),
        TaskContainer("main", "host", ["arg"], {}, Path("/l/main.log"), essential=False,
                      depends_on=(("init", "SUCCESS"),)),
    )  # fmt: skip
    spec = AttemptSpec("a4", "j", "host", ["arg"], {}, 1.0, 64, Path("/l/a4.log"), Path("/w"), task=task, pod=True)
    assert spec_from_wire(_through_json(spec_to_wire(spec))) == spec


def test_events_come_back_equal() -> None:
    events: list[AttemptEvent] = [
        AttemptRunning("a1", 1_700_000_000_000, host="node-1"),
        AttemptExited("a1", 1_700_000_000_005, 137, "Essential container in task exited",
                      "OutOfMemoryError: Container killed due to memory usage", oom=True),
    ]  # fmt: skip
    assert [event_from_wire(_through_json(event_to_wire(event))) for event in events] == events
