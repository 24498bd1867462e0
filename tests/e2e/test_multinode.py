"""Multi-node parallel jobs really run as gangs on the local executor (https://docs.aws.amazon.com/batch/latest/userguide/multi-node-parallel-jobs.html).

The nodes of a job are real processes that meet over TCP at the main node's address
(`AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS`, 127.0.0.1 on one host); a gang starts whole or
not at all; the main node's end ends the job and stops the others; retries restart the gang.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import pytest

from kiln.cli.embedded_server import free_port
from tests.conftest import FAST_FLAGS, JOBS_AS_ROOT, KilnServer, start_server
from tests.support import make_queue, submit, unique, wait_for

INSUFFICIENT = (
    "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - All compute environments have insufficient capacity to service the job."
)
ESSENTIAL = "Essential container in task exited"

# The main node accepts one connection per other node, reads its index, answers and exits 0 only
# once every other node was heard from (and has hung up); the others connect to the main node's address (bounded
# retries while it starts listening) and exit 0 after the answer.
NODE_PROGRAM = r"""
import os, socket, sys, time
port = int(sys.argv[1])
index = int(os.environ["AWS_BATCH_JOB_NODE_INDEX"])
count = int(os.environ["AWS_BATCH_JOB_NUM_NODES"])
main = int(os.environ["AWS_BATCH_JOB_MAIN_NODE_INDEX"])
print("env", index, count, main, os.environ.get("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS", "-"),
      os.environ["AWS_BATCH_JOB_ID"], flush=True)
if index == main:
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(60)
    heard = set()
    while len(heard) < count - 1:
        conn, _ = server.accept()
        with conn:
            heard.add(int(conn.recv(64).decode()))
            conn.sendall(b"ack")
            conn.recv(64)  # EOF: that node is done
    print("heard from", sorted(heard), flush=True)
    time.sleep(1)  # the job ends with the main node: let the others exit on their own first
else:
    address = os.environ["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"]
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = socket.create_connection((address, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with conn:
        conn.sendall(str(index).encode())
        print("main answered", conn.recv(64).decode(), flush=True)
"""


@pytest.fixture(scope="module")
def kiln_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """The host counts as 8 vCPUs (kiln.toml), so CE caps, not this machine's cores, bound the gangs."""
    root = tmp_path_factory.mktemp("kiln-mnp")
    (root / "data").mkdir()
    (root / "data" / "kiln.toml").write_text("[server]\nhost_vcpus = 8\n")
    # Jobs as root: the nodes run this interpreter (under /root, 0700, on the test machines).
    server = start_server(root, [*FAST_FLAGS, *JOBS_AS_ROOT])
    yield server
    server.close()


def node_range(target: str, command: list[str], *, vcpus: int = 1, memory: int = 64) -> dict[str, Any]:
    return {"targetNodes": target, "container": {"image": "host", "vcpus": vcpus, "memory": memory, "command": command}}


def register_multinode(batch: Any, ranges: list[dict[str, Any]], *, num_nodes: int = 3, main: int = 0,
                       **extra: Any) -> str:  # fmt: skip
    name = unique("mnp")
    result = batch.register_job_definition(
        jobDefinitionName=name, type="multinode",
        nodeProperties={"numNodes": num_nodes, "mainNode": main, "nodeRangeProperties": ranges}, **extra,
    )  # fmt: skip
    return f"{name}:{result['revision']}"


def shell_nodes(main_script: str, other_script: str, **extra: Any) -> list[dict[str, Any]]:
    return [node_range("0", ["sh", "-c", main_script], **extra), node_range("1:", ["sh", "-c", other_script], **extra)]


def log_of(server: KilnServer, job_id: str) -> str:
    response = httpx.get(f"{server.endpoint}/kiln/v1/logs/{quote(job_id, safe='')}", timeout=10)  # '#' -> %23
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def describe(batch: Any, *job_ids: str) -> list[dict[str, Any]]:
    return list(batch.describe_jobs(jobs=list(job_ids))["jobs"])


def test_three_nodes_meet_over_tcp_at_the_main_node_address(batch: Any, kiln_server: KilnServer) -> None:
    queue = make_queue(batch, max_vcpus=3)
    command = [sys.executable, "-c", NODE_PROGRAM, "Ref::port"]
    definition = register_multinode(batch, [node_range("0:", command)])
    port = free_port()
    job_id = submit(batch, queue, definition, parameters={"port": str(port)})
    job = wait_for(batch, job_id, timeout=90)
    assert job["status"] == "SUCCEEDED", job
    assert job["statusReason"] == ESSENTIAL
    assert job["nodeProperties"]["numNodes"] == 3 and job["nodeProperties"]["mainNode"] == 0
    assert job["nodeProperties"]["nodeRangeProperties"][0]["container"]["command"][-1] == str(port)
    assert "container" not in job
    assert len(job["attempts"]) == 1 and job["attempts"][0]["container"]["exitCode"] == 0
    assert job["startedAt"] <= job["stoppedAt"]

    nodes = [wait_for(batch, f"{job_id}#{i}") for i in range(3)]
    assert [node["jobId"] for node in nodes] == [f"{job_id}#{i}" for i in range(3)]
    assert [node["status"] for node in nodes] == ["SUCCEEDED"] * 3
    assert [node["nodeDetails"] for node in nodes] == [
        {"nodeIndex": 0, "isMainNode": True}, {"nodeIndex": 1, "isMainNode": False},
        {"nodeIndex": 2, "isMainNode": False},
    ]  # fmt: skip
    assert nodes[0]["attempts"][0]["container"]["logStreamName"] == job["attempts"][0]["container"]["logStreamName"]

    main_log = log_of(kiln_server, f"{job_id}#0")
    assert "heard from [1, 2]" in main_log
    assert f"env 0 3 0 - {job_id}#0" in main_log  # no main address on the main node itself
    assert main_log == log_of(kiln_server, job_id)  # the job's log is its main node's
    for index in (1, 2):
        text = log_of(kiln_server, f"{job_id}#{index}")
        assert f"env {index} 3 0 127.0.0.1 {job_id}#{index}" in text
        assert "main answered ack" in text

    cli = subprocess.run([sys.executable, "-m", "kiln", "logs", f"{job_id}#2", "--endpoint-url", kiln_server.endpoint],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert cli.returncode == 0 and "main answered ack" in cli.stdout, cli

    first = batch.list_jobs(multiNodeJobId=job_id, jobStatus="SUCCEEDED", maxResults=2)
    second = batch.list_jobs(multiNodeJobId=job_id, jobStatus="SUCCEEDED", maxResults=2, nextToken=first["nextToken"])
    listed = first["jobSummaryList"] + second["jobSummaryList"]
    assert "nextToken" not in second
    assert [summary["jobId"] for summary in listed] == [f"{job_id}#{i}" for i in range(3)]
    assert [summary["nodeProperties"] for summary in listed] == [
        {"nodeIndex": i, "isMainNode": i == 0, "numNodes": 3} for i in range(3)
    ]
    (summary,) = [s for s in batch.list_jobs(jobQueue=queue, jobStatus="SUCCEEDED")["jobSummaryList"]]
    assert summary["jobId"] == job_id and summary["nodeProperties"] == {"numNodes": 3}


def test_gang_waits_whole_until_every_node_fits(batch: Any, job_tmp: Path) -> None:
    queue = make_queue(batch, max_vcpus=3)
    release = job_tmp / "release"
    blocker_name = unique("blocker")
    batch.register_job_definition(
        jobDefinitionName=blocker_name, type="container",
        containerProperties={"image": "host", "vcpus": 1, "memory": 32,
                             "command": ["sh", "-c", f"while [ ! -e {release} ]; do sleep 0.1; done"]},
    )  # fmt: skip
    blocker = submit(batch, queue, blocker_name)
    wait_for(batch, blocker, {"RUNNING"})
    definition = register_multinode(batch, shell_nodes("echo main", "echo other"))
    job_id = submit(batch, queue, definition)  # 3 nodes of 1 vCPU; 2 of the CE's 3 vCPUs are free

    def waiting() -> dict[str, Any] | None:
        job = describe(batch, job_id)[0]
        return job if job.get("statusReason") == INSUFFICIENT else None

    job = None
    deadline = time.monotonic() + 20
    while job is None and time.monotonic() < deadline:
        job = waiting()
        time.sleep(0.1)
    assert job is not None, describe(batch, job_id)
    time.sleep(1.5)  # more sweeps: still nothing of the gang starts
    job = describe(batch, job_id)[0]
    assert job["status"] == "RUNNABLE" and job["statusReason"] == INSUFFICIENT
    nodes = describe(batch, *(f"{job_id}#{i}" for i in range(3)))
    assert [node["status"] for node in nodes] == ["SUBMITTED"] * 3
    assert all(node["attempts"] == [] and "startedAt" not in node for node in nodes)
    assert batch.list_jobs(multiNodeJobId=job_id, jobStatus="RUNNING")["jobSummaryList"] == []

    release.touch()
    assert wait_for(batch, blocker)["status"] == "SUCCEEDED"
    job = wait_for(batch, job_id, timeout=60)
    assert job["status"] == "SUCCEEDED", job
    assert [node["status"] for node in describe(batch, *(f"{job_id}#{i}" for i in range(3)))] == ["SUCCEEDED"] * 3


def _sleepers(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", marker]]


def test_main_node_failure_fails_the_job_and_stops_the_others(batch: Any) -> None:
    queue = make_queue(batch, max_vcpus=3)
    marker = "1789"  # `sleep 1789`: the other nodes' processes, found by their command line
    definition = register_multinode(batch, shell_nodes("sleep 1; exit 3", f"sleep {marker}"))
    job_id = submit(batch, queue, definition)
    job = wait_for(batch, job_id, timeout=60)
    assert job["status"] == "FAILED", job
    assert job["statusReason"] == ESSENTIAL
    assert job["attempts"][-1]["container"]["exitCode"] == 3
    others = [wait_for(batch, f"{job_id}#{i}", timeout=30) for i in (1, 2)]
    assert [node["status"] for node in others] == ["FAILED", "FAILED"]
    assert all("main node (#0)" in node["statusReason"] for node in others), others
    assert describe(batch, f"{job_id}#0")[0]["status"] == "FAILED"
    deadline = time.monotonic() + 10
    while _sleepers(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sleepers(marker) == []


def test_retry_restarts_the_whole_gang(batch: Any, kiln_server: KilnServer) -> None:
    queue = make_queue(batch, max_vcpus=3)
    # Attempt 2: the main node outlives the others, which so end on their own (SUCCEEDED), not stopped.
    main = '[ "$AWS_BATCH_JOB_ATTEMPT" = 1 ] && exit 5; sleep 2; echo main attempt $AWS_BATCH_JOB_ATTEMPT'
    other = '[ "$AWS_BATCH_JOB_ATTEMPT" = 1 ] && exec sleep 1790; echo other attempt $AWS_BATCH_JOB_ATTEMPT'
    definition = register_multinode(batch, shell_nodes(main, other), retryStrategy={"attempts": 2})
    job_id = submit(batch, queue, definition)
    job = wait_for(batch, job_id, timeout=90)
    assert job["status"] == "SUCCEEDED", job
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [5, 0]
    nodes = [wait_for(batch, f"{job_id}#{i}") for i in range(3)]
    assert [node["status"] for node in nodes] == ["SUCCEEDED"] * 3
    assert [len(node["attempts"]) for node in nodes] == [2, 2, 2]
    assert nodes[1]["attempts"][0]["statusReason"].startswith("Stopped: the main node (#0)")
    assert "other attempt 2" in log_of(kiln_server, f"{job_id}#2")


def test_terminate_stops_every_node_and_cancel_fails_a_waiting_gang(batch: Any) -> None:
    queue = make_queue(batch, max_vcpus=3)
    definition = register_multinode(batch, shell_nodes("exec sleep 1791", "exec sleep 1791"))
    job_id = submit(batch, queue, definition)
    wait_for(batch, job_id, {"RUNNING"}, timeout=30)
    waiting = submit(batch, queue, definition)  # no room: waits whole
    batch.cancel_job(jobId=waiting, reason="not needed")
    batch.terminate_job(jobId=job_id, reason="enough")
    job = wait_for(batch, job_id, timeout=30)
    assert job["status"] == "FAILED" and job["statusReason"] == "enough" and job["isTerminated"]
    assert [wait_for(batch, f"{job_id}#{i}", timeout=30)["status"] for i in range(3)] == ["FAILED"] * 3
    cancelled = wait_for(batch, waiting, timeout=30)
    assert cancelled["status"] == "FAILED" and cancelled["statusReason"] == "not needed"
    nodes = [wait_for(batch, f"{waiting}#{i}", timeout=30) for i in range(3)]
    assert all(node["statusReason"] == "not needed" and node["attempts"] == [] for node in nodes)
    deadline = time.monotonic() + 10
    while _sleepers("1791") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sleepers("1791") == []
