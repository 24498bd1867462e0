"""A `kiln server --executor ray` killed (SIGKILL) or stopped (SIGTERM) and restarted on the same data
dir takes its Ray attempts back: they run on under the detached node agents, their logs go on
streaming and their real exits are recorded once, with no host-lost retry. Real server, real boto3,
the real local Ray cluster of tests/ray_cluster.py.

Each job waits for a file the test creates, so what happens while no server runs, and after the
restart, is decided by the test, not by timing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.ray_cluster import RayCluster
from tests.support import make_queue, register_shell, submit, wait_for

ESSENTIAL = "Essential container in task exited"
PID = re.compile(r"^pid=(\d+)$", re.MULTILINE)
NODE_IN_PATH = re.compile(r"kiln-ray/[0-9a-f]{10}-([0-9a-f]{12})/work/")
HOST_LOST_PREFIX = "Host EC2 (instance "
# Retries are allowed, so a restart that lost the attempt would show as a second attempt.
RETRY_ONCE = {"attempts": 2}


def _server(ray_cluster: RayCluster, root: Path) -> KilnServer:
    root.mkdir(parents=True, exist_ok=True)
    return start_server(root, [*FAST_FLAGS, "--executor", "ray", "--ray-address", ray_cluster.address])


def _gated(gate: Path, after: str = "echo after; exit 0") -> str:
    """Print the shell's pid and a line, wait for `gate` to exist, then run `after`."""
    return f'echo "pid=$$"; echo before; while [ ! -e {gate} ]; do sleep 0.1; done; {after}'


def _groups(ray_cluster: RayCluster) -> dict[str, str]:
    """Kiln's placement groups (`kiln-<tag>-...` in Kiln's Ray namespace) that are not removed, by
    name, with their state."""
    table = ray_cluster.placement_groups()
    return {name: state for name, state in table.items() if name.startswith("kiln-") and state != "REMOVED"}


def _wait_groups(ray_cluster: RayCluster, among: set[str], expected: set[str], timeout: float = 10) -> None:
    """Until exactly `expected` of the groups named `among` are left (not removed)."""
    deadline = time.monotonic() + timeout
    while (left := set(_groups(ray_cluster)) & among) != expected:
        assert time.monotonic() < deadline, (left, expected)
        time.sleep(0.5)


def _task_id(attempt_or_job: dict[str, Any]) -> str:
    """The attempt id (of a job: of its current attempt), the end of its task ARN."""
    return str(attempt_or_job["container"]["taskArn"].rsplit("/", 1)[-1])


def _start_gated_job(
    server: KilnServer, gate: Path, after: str = "echo after; exit 0", retries: dict[str, int] = RETRY_ONCE
) -> tuple[str, int]:
    """Submit a gated job and wait until it runs on a node; returns its id and its shell's pid."""
    batch = server.client()
    queue = make_queue(batch, max_vcpus=2)
    job_id = submit(batch, queue, register_shell(batch, _gated(gate, after), retryStrategy=retries))
    wait_for(batch, job_id, {"RUNNING"}, timeout=90)
    match = PID.search(server.wait_for_log(job_id, "before\n"))
    assert match, server.job_log(job_id)
    return job_id, int(match.group(1))


def _wait_adopted(server: KilnServer, timeout: float = 60) -> None:
    """Until the restarted server has reconciled its attempts (its log says so)."""
    log = server.data_dir.parent / f"server-{server.port}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "adopted 1 Ray attempt(s); 0 never started, 0 lost" in log.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"the server did not adopt its attempt: {log.read_text()[-3000:]}")


def _only_attempt(job: dict[str, Any]) -> dict[str, Any]:
    assert len(job["attempts"]) == 1, job["attempts"]
    return dict(job["attempts"][0])


def _finish_after_restart(server: KilnServer, job_id: str, pid: int, gate: Path) -> None:
    """The restarted server has the job RUNNING again and streams what it prints from now on."""
    batch = server.client()
    assert batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNING"
    gate.touch()
    log = server.wait_for_log(job_id, "after\n")
    job = wait_for(batch, job_id, timeout=60)
    assert job["status"] == "SUCCEEDED", job
    attempt = _only_attempt(job)
    assert attempt["statusReason"] == ESSENTIAL
    assert attempt["container"]["exitCode"] == 0
    # Every line once: nothing lost and nothing sent twice across the restart.
    assert server.job_log(job_id) == f"pid={pid}\nbefore\nafter\n", log


def test_a_sigkilled_server_readopts_its_running_ray_attempt(
    ray_cluster: RayCluster, tmp_path: Path, job_tmp: Path
) -> None:
    before = set(_groups(ray_cluster))
    server = _server(ray_cluster, tmp_path)
    gate = job_tmp / "go"
    job_id, pid = _start_gated_job(server, gate)
    (slot,) = set(_groups(ray_cluster)) - before  # the attempt's slot: the one group the server holds
    server.stop(kill=True)
    assert psutil.pid_exists(pid)  # the attempt did not die with the server
    server.start()
    # Its slot outlived the server that created it: its resources stayed reserved.
    assert _groups(ray_cluster).get(slot) == "CREATED"
    _finish_after_restart(server, job_id, pid, gate)
    # ... and is removed once the exit is recorded and nothing else took it.
    _wait_groups(ray_cluster, {slot}, set())
    server.stop()


def test_a_ray_attempt_that_ends_while_no_server_runs_keeps_its_real_exit(
    ray_cluster: RayCluster, tmp_path: Path, job_tmp: Path
) -> None:
    server = _server(ray_cluster, tmp_path)
    gate, ended = job_tmp / "go", job_tmp / "ended"
    # No retry: exit 7 fails the job at once, and a lost attempt would fail it with another reason.
    job_id, pid = _start_gated_job(server, gate, after=f"echo ending; touch {ended}; exit 7", retries={"attempts": 1})
    server.stop(kill=True)
    gate.touch()
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ended.exists() and not psutil.pid_exists(pid)
    time.sleep(0.5)  # the agent reaps it and holds the exit
    restarted_at = time.time() * 1000
    server.start()
    batch = server.client()
    job = wait_for(batch, job_id, timeout=60)
    assert job["status"] == "FAILED", job
    attempt = _only_attempt(job)
    assert attempt["statusReason"] == ESSENTIAL
    assert attempt["container"]["exitCode"] == 7
    assert attempt["startedAt"] < attempt["stoppedAt"] < restarted_at  # when it really ended
    assert server.job_log(job_id) == f"pid={pid}\nbefore\nending\n"
    server.stop()


def test_sigterm_leaves_a_ray_attempt_running_for_the_next_server(
    ray_cluster: RayCluster, tmp_path: Path, job_tmp: Path
) -> None:
    server = _server(ray_cluster, tmp_path)
    gate = job_tmp / "go"
    job_id, pid = _start_gated_job(server, gate)
    server.stop()  # SIGTERM: graceful
    assert psutil.pid_exists(pid)
    server.start()
    _finish_after_restart(server, job_id, pid, gate)
    server.stop()


def test_servers_of_two_data_dirs_on_one_cluster_adopt_only_their_own(
    ray_cluster: RayCluster, tmp_path: Path, job_tmp: Path
) -> None:
    """B's restart stops what its own agents run unclaimed and removes its unclaimed groups: A's
    attempt, on A's agents with A's groups, must not be touched, and the other way round."""
    first, second = _server(ray_cluster, tmp_path / "a"), _server(ray_cluster, tmp_path / "b")
    gates = job_tmp / "go-a", job_tmp / "go-b"
    job_a, pid_a = _start_gated_job(first, gates[0])
    job_b, pid_b = _start_gated_job(second, gates[1])
    first.stop(kill=True)
    second.stop(kill=True)
    second.start()  # B adopts while A is down: A's attempt is not B's
    _wait_adopted(second)
    time.sleep(1)  # anything B's agents were told to stop would be gone by now (SIGTERM ends `sh`)
    assert psutil.pid_exists(pid_a) and psutil.pid_exists(pid_b)
    first.start()
    _finish_after_restart(first, job_a, pid_a, gates[0])
    _finish_after_restart(second, job_b, pid_b, gates[1])
    first.stop()
    second.stop()


def test_an_attempt_whose_node_died_while_no_server_ran_is_lost_and_retried(
    ray_cluster: RayCluster, tmp_path: Path, job_tmp: Path
) -> None:
    """One 2-vCPU job per node (each node has 2 CPUs); a worker node dies while the server is
    down. Its attempt is not adopted: it fails with the host-lost reason and is retried; the other
    two are adopted and succeed once."""
    server = _server(ray_cluster, tmp_path)
    batch = server.client()
    queue = make_queue(batch, max_vcpus=6)
    gate = job_tmp / "go"
    retry = {"attempts": 2, "evaluateOnExit": [
        {"onStatusReason": "Host EC2*", "action": "RETRY"}, {"onReason": "*", "action": "EXIT"},
    ]}  # fmt: skip
    definition = register_shell(batch, f'echo "pwd=$(pwd)"; {_gated(gate)}', vcpus=2, retryStrategy=retry)
    before = set(_groups(ray_cluster))
    jobs = [submit(batch, queue, definition) for _ in range(3)]
    where = {job_id: NODE_IN_PATH.search(server.wait_for_log(job_id, "before\n")) for job_id in jobs}
    slots = set(_groups(ray_cluster)) - before
    assert len(slots) == 3, slots  # a slot per attempt
    nodes = ray_cluster.node_ids()
    victim = next(name for name in nodes if name != "head")
    (lost_job,) = [j for j, match in where.items() if match and match.group(1) == nodes[victim][:12]]
    server.stop(kill=True)
    ray_cluster.nodes[victim].kill()
    try:
        server.start()
        batch = server.client()
        deadline = time.monotonic() + 60
        job = batch.describe_jobs(jobs=[lost_job])["jobs"][0]
        while not job.get("attempts") and time.monotonic() < deadline:  # reconciled: the first attempt ended
            time.sleep(0.2)
            job = batch.describe_jobs(jobs=[lost_job])["jobs"][0]
        (first,) = job["attempts"]
        assert first["statusReason"].startswith(HOST_LOST_PREFIX), first
        # Nothing of the lost attempt is left reserving Ray resources: only the adopted two slots.
        deadline = time.monotonic() + 10
        while len(left := set(_groups(ray_cluster)) & slots) != 2:
            assert time.monotonic() < deadline, left
            time.sleep(0.5)
        gate.touch()
        for job_id in jobs:
            job = wait_for(batch, job_id, timeout=90)
            assert job["status"] == "SUCCEEDED", job
            assert len(job["attempts"]) == (2 if job_id == lost_job else 1), job["attempts"]
            assert server.job_log(job_id).endswith("before\nafter\n")
        server.stop()
    finally:
        ray_cluster.start_node(f"w{len(ray_cluster.nodes) + 1}")  # the rest of the session keeps three nodes
        ray_cluster.wait_for_nodes(3)


def test_gang_attempts_are_not_readopted_they_are_lost_and_the_gang_is_retried(
    ray_cluster: RayCluster, tmp_path: Path, job_tmp: Path
) -> None:
    """Multi-node parallel attempts on Ray are not taken back by a restarted server (docs/ray.md):
    every node's attempt fails with the host-lost reason, what they ran is stopped, their gang's
    placement group is removed, and the job's retry runs a new gang."""
    server = _server(ray_cluster, tmp_path)
    batch = server.client()
    queue = make_queue(batch, max_vcpus=3)
    gate = job_tmp / "go"
    command = ["sh", "-c", _gated(gate)]
    name = f"mnp-{time.monotonic_ns()}"
    batch.register_job_definition(
        jobDefinitionName=name, type="multinode", retryStrategy=RETRY_ONCE,
        nodeProperties={"numNodes": 3, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0:", "container": {
            "image": "host", "vcpus": 1, "memory": 64, "command": command}}]},
    )  # fmt: skip
    job_id = submit(batch, queue, name)
    wait_for(batch, job_id, {"RUNNING"}, timeout=90)
    node_ids = [f"{job_id}#{i}" for i in range(3)]
    pids = []
    for node_id in node_ids:
        match = PID.search(server.wait_for_log(node_id, "before\n"))
        assert match, server.job_log(node_id)
        pids.append(int(match.group(1)))
    main_task = _task_id(batch.describe_jobs(jobs=[f"{job_id}#0"])["jobs"][0])
    (gang_group,) = [
        name for name in _groups(ray_cluster) if name.endswith(f"-{main_task}")
    ]  # named after the main node
    assert _groups(ray_cluster)[gang_group] == "CREATED"
    server.stop(kill=True)
    assert all(psutil.pid_exists(pid) for pid in pids)
    server.start()
    batch = server.client()
    deadline = time.monotonic() + 60
    nodes = batch.describe_jobs(jobs=[f"{job_id}#{i}" for i in range(3)])["jobs"]
    while not all(node.get("attempts") for node in nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
        nodes = batch.describe_jobs(jobs=[f"{job_id}#{i}" for i in range(3)])["jobs"]
    for node in nodes:
        assert node["attempts"][0]["statusReason"].startswith(HOST_LOST_PREFIX), node["attempts"]
    deadline = time.monotonic() + 15
    while any(psutil.pid_exists(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if psutil.pid_exists(pid)]
        time.sleep(0.2)
    _wait_groups(ray_cluster, {gang_group}, set(), timeout=15)
    gate.touch()
    job = wait_for(batch, job_id, timeout=120)
    assert job["status"] == "SUCCEEDED", job
    assert len(job["attempts"]) == 2 and job["attempts"][0]["statusReason"].startswith(HOST_LOST_PREFIX)
    nodes = [wait_for(batch, f"{job_id}#{i}", timeout=30) for i in range(3)]
    assert [len(node["attempts"]) for node in nodes] == [2, 2, 2]
    assert [node["status"] for node in nodes] == ["SUCCEEDED"] * 3
    server.stop()
