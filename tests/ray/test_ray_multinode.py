"""Multi-node parallel jobs on the Ray executor, through a real `kiln server --executor ray` and boto3
on the session's real three-node Ray cluster (tests/ray_cluster.py): a gang is one placement group
spread over the Ray nodes, its nodes meet over TCP at the main node's Ray node address, and gangs
the cluster cannot hold are told apart from those it can.

Address used: the nodes are started with `--node-ip-address=127.0.0.1`, but Ray may report this
machine's own routable IP as every node's `NodeManagerAddress` instead (see tests/ray_cluster.py).
The main node listens on exactly the address Ray reports for its node (read here through a
short-lived driver), and the other nodes connect to the address Kiln gives them in
`AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS`: 127.0.0.1 or this machine's own address, so the
traffic never leaves this machine either way.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

from kiln.cli.embedded_server import free_port
from tests.conftest import JOBS_AS_ROOT, KilnServer
from tests.e2e.test_multinode import ESSENTIAL, NODE_PROGRAM, register_multinode
from tests.ray.test_ray_executor import JOB_REQUIREMENT, _node_prefix
from tests.ray_cluster import RayCluster
from tests.support import make_queue, submit, wait_for

LOCAL_BIND = 'socket.create_server(("127.0.0.1", port))'
# The local test's program, with the main node listening on the address given as its 2nd argument
# and every node printing its workdir (which names the Ray node it ran on).
RAY_NODE_PROGRAM = 'print("pwd=" + __import__("os").getcwd(), flush=True)\n' + NODE_PROGRAM.replace(
    LOCAL_BIND, "socket.create_server((sys.argv[2], port))"
)
# The nodes run this interpreter, under /root (0700) on the test machines.
SERVER_FLAGS = JOBS_AS_ROOT
NO_NODE_FITS = "CannotStartContainerError: no live Ray node has 3 CPU"


def node_addresses(cluster: RayCluster) -> dict[str, str]:
    """Ray node id -> its `NodeManagerAddress`, for the live nodes."""
    return {node["id"]: node["address"] for node in cluster.live_nodes()}


def log_of(server: KilnServer, job_id: str, *, missing_ok: bool = False) -> str:
    response = httpx.get(f"{server.endpoint}/kiln/v1/logs/{job_id.replace('#', '%23')}", timeout=10)
    if missing_ok and response.status_code == 404:
        return ""  # no log line yet
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def test_three_nodes_spread_over_the_ray_nodes_meet_at_the_main_node_address(
    batch: Any, server: KilnServer, ray_cluster: RayCluster
) -> None:
    assert LOCAL_BIND in NODE_PROGRAM  # the program really listens where this test says
    addresses = node_addresses(ray_cluster)
    assert len(addresses) == 3, addresses
    (host,) = set(addresses.values())  # every node of the test cluster runs on this machine
    queue = make_queue(batch, max_vcpus=3)
    command = [sys.executable, "-c", RAY_NODE_PROGRAM, "Ref::port", "Ref::host"]
    definition = register_multinode(batch, [{"targetNodes": "0:", "container": {
        "image": "host", "vcpus": 1, "memory": 64, "command": command}}])  # fmt: skip
    job_id = submit(batch, queue, definition, parameters={"port": str(free_port()), "host": host})
    job = wait_for(batch, job_id, timeout=120)
    assert job["status"] == "SUCCEEDED", job
    assert job["statusReason"] == ESSENTIAL
    nodes = [wait_for(batch, f"{job_id}#{i}", timeout=30) for i in range(3)]
    assert [node["status"] for node in nodes] == ["SUCCEEDED"] * 3

    logs = [log_of(server, f"{job_id}#{i}") for i in range(3)]
    assert "heard from [1, 2]" in logs[0]
    assert f"env 0 3 0 - {job_id}#0" in logs[0]  # no main address on the main node itself
    for index in (1, 2):
        assert f"env {index} 3 0 {host} {job_id}#{index}" in logs[index], logs[index]
        assert "main answered ack" in logs[index]
    # SPREAD: with room on every node, each node of the gang runs on a Ray node of its own.
    where = [_node_prefix(log) for log in logs]
    assert len(set(where)) == 3, where
    assert set(where) == {node_id[:12] for node_id in addresses}
    # Each node's attempt ran on its Ray node: the AWS attempt's host is not known, but the main
    # node's address is the address of the Ray node the main node's workdir names.
    (main_node,) = [node_id for node_id in addresses if node_id.startswith(where[0])]
    assert addresses[main_node] == host


def _wait_reason(batch: Any, job_id: str, prefix: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if job.get("statusReason", "").startswith(prefix):
            return job
        time.sleep(0.2)
    raise AssertionError(f"{job_id} never got a reason starting {prefix!r}: {job}")


def test_gang_larger_than_the_cluster_stays_runnable_with_a_reason(batch: Any) -> None:
    """4 nodes of 2 CPUs: 8 CPUs, the cluster has 6 (three 2-CPU nodes). Nothing of it starts."""
    queue = make_queue(batch, max_vcpus=16)
    definition = register_multinode(batch, [{"targetNodes": "0:", "container": {
        "image": "host", "vcpus": 2, "memory": 64, "command": ["true"]}}], num_nodes=4)  # fmt: skip
    job_id = submit(batch, queue, definition)
    job = _wait_reason(batch, job_id, JOB_REQUIREMENT)
    assert job["status"] == "RUNNABLE", job
    time.sleep(1.5)  # more sweeps: still waiting whole
    nodes = batch.describe_jobs(jobs=[f"{job_id}#{i}" for i in range(4)])["jobs"]
    assert [node["status"] for node in nodes] == ["SUBMITTED"] * 4
    assert all(node["attempts"] == [] for node in nodes)
    batch.cancel_job(jobId=job_id, reason="test over")
    assert wait_for(batch, job_id, timeout=30)["status"] == "FAILED"


def test_gang_with_a_node_larger_than_every_ray_node_fails_to_start_whole(batch: Any) -> None:
    """2 nodes of 3 CPUs: 6 CPUs fit the cluster's total, but no 2-CPU node holds one of them, so
    the Ray executor fails every node of the gang at start with a reason that says what is missing."""
    queue = make_queue(batch, max_vcpus=16)
    definition = register_multinode(batch, [{"targetNodes": "0:", "container": {
        "image": "host", "vcpus": 3, "memory": 64, "command": ["true"]}}], num_nodes=2)  # fmt: skip
    job_id = submit(batch, queue, definition)
    job = wait_for(batch, job_id, timeout=60)
    assert job["status"] == "FAILED" and job["statusReason"] == "Task failed to start", job
    assert job["attempts"][-1]["container"]["reason"].startswith(NO_NODE_FITS), job["attempts"]
    nodes = [wait_for(batch, f"{job_id}#{i}", timeout=30) for i in range(2)]
    assert [node["status"] for node in nodes] == ["FAILED", "FAILED"]
    assert all(not node["attempts"] or "startedAt" not in node["attempts"][-1] for node in nodes), nodes


def test_losing_the_ray_node_of_a_gang_node_fails_it_as_host_lost_and_the_gang_rules_decide(
    batch: Any, server: KilnServer, ray_cluster: RayCluster, job_tmp: Path
) -> None:
    """A worker node that runs a node of a 3-node gang is killed. Its attempt fails with AWS's
    host-lost reason. If it ran the main node, the job fails with it and the other nodes are
    stopped; otherwise the others run on and the job takes the main node's result. Which of the
    two happens is Ray's choice of nodes (SPREAD may put the main node on the head, which the test
    cannot kill); both are checked to the end. Kills a node, so it runs last in this module."""
    gate = job_tmp / "go"
    script = f'echo "pwd=$(pwd)"; while [ ! -e {gate} ]; do sleep 0.1; done; echo after'
    queue = make_queue(batch, max_vcpus=3)
    definition = register_multinode(batch, [{"targetNodes": "0:", "container": {
        "image": "host", "vcpus": 1, "memory": 64, "command": ["sh", "-c", script]}}])  # fmt: skip
    job_id = submit(batch, queue, definition)
    wait_for(batch, job_id, {"RUNNING"}, timeout=90)
    where = [_node_prefix(server.wait_for_log(f"{job_id}#{i}", "pwd=")) for i in range(3)]
    names = {node_id[:12]: name for name, node_id in ray_cluster.node_ids().items()}
    on_workers = [i for i in range(3) if names[where[i]] != "head"]
    victim_index = 0 if 0 in on_workers else on_workers[0]
    victim = names[where[victim_index]]
    victim_id = ray_cluster.node_ids()[victim]
    ray_cluster.nodes[victim].kill()
    try:
        lost = wait_for(batch, f"{job_id}#{victim_index}", timeout=30)
        assert lost["status"] == "FAILED", lost
        assert lost["attempts"][-1]["statusReason"] == f"Host EC2 (instance {victim_id}) terminated.", lost
        if victim_index == 0:
            job = wait_for(batch, job_id, timeout=30)
            assert job["status"] == "FAILED" and job["statusReason"] == lost["statusReason"], job
            for index in (1, 2):
                other = wait_for(batch, f"{job_id}#{index}", timeout=30)
                assert other["status"] == "FAILED", other
                assert other["statusReason"].startswith("Stopped: the main node (#0)"), other
        else:
            assert batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNING"
            gate.touch()
            job = wait_for(batch, job_id, timeout=60)
            assert job["status"] == "SUCCEEDED", job
            assert "after" in log_of(server, f"{job_id}#0")
    finally:
        ray_cluster.start_node(f"w{len(ray_cluster.nodes) + 1}")  # the rest of the session keeps three nodes
        ray_cluster.wait_for_nodes(3)
