"""Placement on the real engine: host and CE capacity, queue priority, RUNNABLE diagnostics, no
head-of-line blocking, memory accounting, and multi-node parallel gangs (AWS Batch behaviour).

Jobs that must hold their place wait for a file the test creates (`GO`), so what runs when is
decided by the test, never by a race; the scheduler is ticked by hand between observations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .harness import TICK_PAUSE_SECONDS, Engine, engine

JOB_REQUIREMENT = (
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - All compute environments have no connected "
    "instances that meet the job requirements."
)
MAX_RESOURCE = (
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - All compute environments have a maxVcpu "
    "setting that is smaller than the job requirements."
)
ESSENTIAL = "Essential container in task exited"
MAIN_NODE_STOPPED = "Stopped: the main node (#0) of its multi-node parallel job exited"
# Longer than one diagnosis period (scheduler.SWEEP_SECONDS = 1 s): a settled state has seen a sweep.
SETTLE_SECONDS = 1.3


def wait_for_file(go: Path) -> str:
    """A script that ends (exit 0) only once `go` exists."""
    return f"while [ ! -f {go} ]; do sleep 0.05; done"


def tick_until(
    kiln: Engine, job_ids: Iterable[str], done: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 15.0
) -> dict[str, dict[str, Any]]:
    """Tick until `done(DescribeJobs by id)` holds; fails with the jobs' states after `timeout`."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        kiln.scheduler.tick()
        jobs = kiln.jobs(ids)
        if done(jobs):
            return jobs
        if time.monotonic() > deadline:
            shown = {job_id: (job["status"], job.get("statusReason")) for job_id, job in jobs.items()}
            raise AssertionError(f"condition not reached after {timeout} s: {shown}")
        time.sleep(TICK_PAUSE_SECONDS)


def settle(kiln: Engine, job_ids: Iterable[str], seconds: float = SETTLE_SECONDS) -> dict[str, dict[str, Any]]:
    """Keep ticking for `seconds` (at least one diagnosis sweep); the jobs' DescribeJobs afterwards."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        kiln.scheduler.tick()
        time.sleep(TICK_PAUSE_SECONDS)
    return kiln.jobs(job_ids)


def count_in(jobs: dict[str, dict[str, Any]], statuses: set[str]) -> int:
    return sum(job["status"] in statuses for job in jobs.values())


def test_host_vcpus_bound_how_many_jobs_run_at_once(tmp_path: Path) -> None:
    """Host of 2 vCPUs: of four 1-vCPU jobs exactly two run, two wait RUNNABLE; all end SUCCEEDED."""
    go = tmp_path / "GO"
    with engine(tmp_path / "data", host_vcpus=2) as kiln:
        kiln.queue(max_vcpus=4)
        hold = kiln.definition("hold", wait_for_file(go))
        ids = [kiln.submit(hold) for _ in range(4)]
        tick_until(kiln, ids, lambda jobs: count_in(jobs, {"RUNNING"}) == 2)
        jobs = settle(kiln, ids)
        assert sorted(job["status"] for job in jobs.values()) == ["RUNNABLE", "RUNNABLE", "RUNNING", "RUNNING"]
        waiting = [job for job in jobs.values() if job["status"] == "RUNNABLE"]
        assert [job.get("statusReason") for job in waiting] == [None, None]  # waiting for room is no misconfiguration
        assert all(job["attempts"] == [] for job in waiting)
        go.touch()
        done = kiln.run_until(ids)
    assert [done[job_id]["status"] for job_id in ids] == ["SUCCEEDED"] * 4
    assert [len(done[job_id]["attempts"]) for job_id in ids] == [1] * 4


def test_compute_environment_max_vcpus_bounds_its_queue_below_the_host(tmp_path: Path) -> None:
    """A CE of maxvCpus 1 runs one 1-vCPU job at a time though the host has 2 vCPUs free."""
    go = tmp_path / "GO"
    with engine(tmp_path / "data", host_vcpus=2) as kiln:
        kiln.queue(max_vcpus=1)
        hold = kiln.definition("hold", wait_for_file(go))
        first, second = kiln.submit(hold), kiln.submit(hold)
        tick_until(kiln, [first], lambda jobs: jobs[first]["status"] == "RUNNING")
        jobs = settle(kiln, [first, second])
        assert (jobs[first]["status"], jobs[second]["status"]) == ("RUNNING", "RUNNABLE")
        assert jobs[second].get("statusReason") is None
        go.touch()
        done = kiln.run_until([first, second])
    assert [done[first]["status"], done[second]["status"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert done[second]["startedAt"] >= done[first]["stoppedAt"]


def test_higher_priority_queue_is_served_first_when_a_slot_frees(tmp_path: Path) -> None:
    """Two queues on two CEs sharing 1 vCPU: the high-priority job starts before an older low-priority one."""
    go, order = tmp_path / "GO", tmp_path / "order"
    with engine(tmp_path / "data", host_vcpus=1) as kiln:
        low, high = kiln.queue("low", max_vcpus=4, priority=1), kiln.queue("high", max_vcpus=4, priority=10)
        blocker = kiln.submit(kiln.definition("blocker", f"{wait_for_file(go)}; echo blocker >> {order}"), low)
        kiln.run_until([blocker], {"RUNNING"})
        older = kiln.submit(kiln.definition("older-low", f"echo low >> {order}"), low)
        kiln.run_until([older], {"RUNNABLE"})
        newer = kiln.submit(kiln.definition("newer-high", f"echo high >> {order}"), high)
        jobs = settle(kiln, [blocker, older, newer])
        assert [jobs[j]["status"] for j in (blocker, older, newer)] == ["RUNNING", "RUNNABLE", "RUNNABLE"]
        go.touch()
        done = kiln.run_until([blocker, older, newer])
    assert [done[j]["status"] for j in (blocker, older, newer)] == ["SUCCEEDED"] * 3
    assert order.read_text().split() == ["blocker", "high", "low"]
    assert done[older]["startedAt"] >= done[newer]["stoppedAt"]


def test_jobs_that_can_never_fit_get_aws_misconfiguration_reasons(tmp_path: Path) -> None:
    """Too big for the host: JOB_RESOURCE_REQUIREMENT; too big for every CE cap: COMPUTE_ENVIRONMENT_MAX_RESOURCE."""
    with engine(tmp_path / "data", host_vcpus=4, host_memory_mib=1024) as kiln:
        roomy, capped = kiln.queue("roomy", max_vcpus=16), kiln.queue("capped", max_vcpus=1)
        over_host = kiln.submit(kiln.definition("over-host", "exit 0", vcpus=6), roomy)
        over_memory = kiln.submit(kiln.definition("over-memory", "exit 0", memory=2048), roomy)
        over_cap = kiln.submit(kiln.definition("over-cap", "exit 0", vcpus=2), capped)
        ids = [over_host, over_memory, over_cap]
        # Diagnoses are refreshed once a second (SWEEP_SECONDS): allow several sweeps.
        tick_until(kiln, ids, lambda jobs: all(job.get("statusReason") for job in jobs.values()), timeout=5.0)
        jobs = settle(kiln, ids)
        fits = kiln.submit(kiln.definition("fits", "exit 0"), capped)  # the capped queue itself still works
        finished = kiln.run_until([fits])
    assert [jobs[j]["status"] for j in ids] == ["RUNNABLE"] * 3
    assert jobs[over_host]["statusReason"] == JOB_REQUIREMENT
    assert jobs[over_memory]["statusReason"] == JOB_REQUIREMENT
    assert jobs[over_cap]["statusReason"] == MAX_RESOURCE
    assert all(jobs[j]["attempts"] == [] for j in ids)
    assert finished[fits]["status"] == "SUCCEEDED"


def test_a_waiting_big_job_does_not_block_a_smaller_later_one(tmp_path: Path) -> None:
    """Host 2 vCPUs, 1 held: a 2-vCPU job waits while a 1-vCPU job submitted after it is placed."""
    go = tmp_path / "GO"
    with engine(tmp_path / "data", host_vcpus=2) as kiln:
        kiln.queue(max_vcpus=4)
        holder = kiln.submit(kiln.definition("holder", wait_for_file(go)))
        kiln.run_until([holder], {"RUNNING"})
        big = kiln.submit(kiln.definition("big", "exit 0", vcpus=2))
        kiln.run_until([big], {"RUNNABLE"})
        small = kiln.submit(kiln.definition("small", wait_for_file(go)))
        kiln.run_until([small], {"RUNNING"})
        jobs = settle(kiln, [holder, big, small])
        assert [jobs[j]["status"] for j in (holder, big, small)] == ["RUNNING", "RUNNABLE", "RUNNING"]
        assert jobs[big].get("statusReason") is None  # it fits the host, only not now
        go.touch()
        done = kiln.run_until([holder, big, small])
    assert [done[j]["status"] for j in (holder, big, small)] == ["SUCCEEDED"] * 3
    assert done[big]["startedAt"] >= max(done[holder]["stoppedAt"], done[small]["stoppedAt"])


def test_host_memory_bounds_how_many_jobs_run_at_once(tmp_path: Path) -> None:
    """Host of 256 MiB: two 200-MiB jobs never run together; the second starts after the first ends."""
    go = tmp_path / "GO"
    with engine(tmp_path / "data", host_vcpus=2, host_memory_mib=256) as kiln:
        kiln.queue(max_vcpus=4)
        hold = kiln.definition("hold", wait_for_file(go), memory=200)
        first, second = kiln.submit(hold), kiln.submit(hold)
        kiln.run_until([first], {"RUNNING"})
        jobs = settle(kiln, [first, second])
        assert (jobs[first]["status"], jobs[second]["status"]) == ("RUNNING", "RUNNABLE")
        assert jobs[second].get("statusReason") is None and jobs[second]["attempts"] == []
        go.touch()
        done = kiln.run_until([first, second])
    assert [done[first]["status"], done[second]["status"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert done[second]["startedAt"] >= done[first]["stoppedAt"]


def register_two_nodes(kiln: Engine, name: str, files: Path, main_then: str, other_then: str) -> str:
    """A 2-node MNP definition (main node 0, one range `0:`): each node writes `<index> <main index>`
    to `files/node-<index>`, then the main node runs `main_then`, the other `other_then`."""
    node = "$AWS_BATCH_JOB_NODE_INDEX"
    script = (
        f'echo "{node} $AWS_BATCH_JOB_MAIN_NODE_INDEX" > {files}/tmp-{node} && '
        f"mv {files}/tmp-{node} {files}/node-{node}; "  # whole file or none: the main node waits for it
        f'if [ "{node}" = "$AWS_BATCH_JOB_MAIN_NODE_INDEX" ]; then {main_then}; else {other_then}; fi'
    )
    container = {"image": "host", "vcpus": 1, "memory": 64, "command": ["sh", "-c", script]}
    kiln.call(
        "RegisterJobDefinition", jobDefinitionName=name, type="multinode",
        nodeProperties={"numNodes": 2, "mainNode": 0,
                        "nodeRangeProperties": [{"targetNodes": "0:", "container": container}]},
    )  # fmt: skip
    return name


def test_multinode_job_runs_every_node_and_succeeds_with_its_main_node(tmp_path: Path) -> None:
    """Both nodes `<id>#0`, `<id>#1` run with their node variables; main node exit 0 -> job SUCCEEDED."""
    files = tmp_path / "files"
    files.mkdir()
    with engine(tmp_path / "data", host_vcpus=2) as kiln:
        kiln.queue(max_vcpus=2)
        # The main node ends only once node 1 has written its file (its end ends the job).
        main = f"{wait_for_file(files / 'node-1')}; exit 0"
        definition = register_two_nodes(kiln, "mnp-ok", files, main, "exit 0")
        job_id = kiln.submit(definition)
        nodes = [f"{job_id}#0", f"{job_id}#1"]
        done = kiln.run_until([job_id, *nodes])
    assert done[job_id]["status"] == "SUCCEEDED"
    assert done[job_id]["statusReason"] == ESSENTIAL
    assert [done[n]["status"] for n in nodes] == ["SUCCEEDED", "SUCCEEDED"]
    assert [done[n]["nodeDetails"] for n in nodes] == [
        {"nodeIndex": 0, "isMainNode": True},
        {"nodeIndex": 1, "isMainNode": False},
    ]
    assert [done[n]["attempts"][-1]["container"]["exitCode"] for n in nodes] == [0, 0]
    assert (files / "node-0").read_text() == "0 0\n"
    assert (files / "node-1").read_text() == "1 0\n"


def test_multinode_job_fails_when_its_main_node_fails_and_stops_the_others(tmp_path: Path) -> None:
    """Main node exit 1 -> job FAILED with exit code 1; the still-running node is stopped (FAILED)."""
    files, never = tmp_path / "files", tmp_path / "never"
    files.mkdir()
    with engine(tmp_path / "data", host_vcpus=2) as kiln:
        kiln.queue(max_vcpus=2)
        main = f"{wait_for_file(files / 'node-1')}; exit 1"
        definition = register_two_nodes(kiln, "mnp-bad", files, main, wait_for_file(never))
        job_id = kiln.submit(definition)
        nodes = [f"{job_id}#0", f"{job_id}#1"]
        done = kiln.run_until([job_id, *nodes])
    assert done[job_id]["status"] == "FAILED"
    assert done[job_id]["statusReason"] == ESSENTIAL
    assert [a["container"]["exitCode"] for a in done[job_id]["attempts"]] == [1]
    assert [done[n]["status"] for n in nodes] == ["FAILED", "FAILED"]
    assert done[nodes[0]]["attempts"][-1]["container"]["exitCode"] == 1
    assert done[nodes[1]]["statusReason"] == MAIN_NODE_STOPPED
    assert (files / "node-0").read_text() == "0 0\n"
    assert (files / "node-1").read_text() == "1 0\n"


def test_multinode_gang_waits_whole_while_it_does_not_fit(tmp_path: Path) -> None:
    """2-node gang with 1 of 2 vCPUs held: no node starts (nodes SUBMITTED), the job waits with CAPACITY."""
    go, files = tmp_path / "GO", tmp_path / "files"
    files.mkdir()
    with engine(tmp_path / "data", host_vcpus=2) as kiln:
        kiln.queue(max_vcpus=2)
        holder = kiln.submit(kiln.definition("holder", wait_for_file(go)))
        kiln.run_until([holder], {"RUNNING"})
        main = f"{wait_for_file(files / 'node-1')}; exit 0"
        job_id = kiln.submit(register_two_nodes(kiln, "mnp-wait", files, main, "exit 0"))
        nodes = [f"{job_id}#0", f"{job_id}#1"]
        tick_until(kiln, [job_id], lambda jobs: jobs[job_id].get("statusReason") is not None, timeout=5.0)
        jobs = settle(kiln, [job_id, *nodes])
        assert jobs[job_id]["status"] == "RUNNABLE"
        assert jobs[job_id]["statusReason"] == (
            "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - All compute environments have insufficient capacity "
            "to service the job."
        )
        assert [jobs[n]["status"] for n in nodes] == ["SUBMITTED", "SUBMITTED"]
        assert list(files.iterdir()) == []  # no node has started
        go.touch()
        done = kiln.run_until([holder, job_id, *nodes])
    assert [done[j]["status"] for j in (holder, job_id, *nodes)] == ["SUCCEEDED"] * 4
