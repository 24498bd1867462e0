"""What only the Ray executor does, through a real `kiln server --executor ray` and boto3 on a real
three-node Ray cluster: logs streaming back from the node, spreading over nodes, jobs no node can
fit, and losing a node mid-attempt. The shared scenarios (success, exit codes, retries, OOM,
timeouts, terminate, arrays, dependencies) run on Ray in tests/e2e (the `ray` runtime).

The node-loss test kills a worker node and starts a replacement, so it runs last in this module.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.conftest import KilnServer
from tests.ray_cluster import RayCluster
from tests.support import make_queue, register_shell, submit, unique, wait_for

HOST_LOST = re.compile(r"^Host EC2 \(instance ([0-9a-f]{56})\) terminated\.$")
NODE_IN_PATH = re.compile(r"kiln-ray/[0-9a-f]{10}-([0-9a-f]{12})/work/")
JOB_REQUIREMENT = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"


def _node_prefix(log: str) -> str:
    """The node an attempt ran on, from its workdir (`pwd`): the agent's dir names the node."""
    match = NODE_IN_PATH.search(log)
    assert match, log
    return match.group(1)


def test_log_streams_back_while_the_attempt_runs(batch: Any, server: KilnServer) -> None:
    queue = make_queue(batch, max_vcpus=2)
    job_id = submit(batch, queue, register_shell(batch, "echo first; sleep 4; echo second"))
    wait_for(batch, job_id, {"RUNNING"}, timeout=60)
    running_log = server.wait_for_log(job_id, "first\n", timeout=30)
    assert batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNING"
    assert "second" not in running_log
    job = wait_for(batch, job_id, timeout=60)
    assert job["status"] == "SUCCEEDED", job
    assert server.job_log(job_id) == "first\nsecond\n"


def test_ecs_task_runs_on_one_node_and_each_containers_log_comes_back(batch: Any, server: KilnServer) -> None:
    """An ecsProperties job: the node's local engine runs its containers as processes of one
    attempt (tests/e2e/test_ecs_tasks.py); each container's log streams back to its own stream."""
    name = unique("ecs")
    limits = [{"type": "VCPU", "value": "0.5"}, {"type": "MEMORY", "value": "64"}]
    containers = [
        {"name": "init", "image": "host", "essential": False, "resourceRequirements": limits,
         "command": ["sh", "-c", "echo init done"]},
        {"name": "main", "image": "host", "resourceRequirements": limits, "command": ["sh", "-c", "echo main ran"],
         "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]},
    ]  # fmt: skip
    batch.register_job_definition(
        jobDefinitionName=name, type="container", ecsProperties={"taskProperties": [{"containers": containers}]}
    )
    job_id = submit(batch, make_queue(batch, max_vcpus=2), name)
    assert wait_for(batch, job_id, timeout=60)["status"] == "SUCCEEDED", server.job_log(job_id)
    task = batch.describe_jobs(jobs=[job_id])["jobs"][0]["ecsProperties"]["taskProperties"][0]
    logs = boto3.client("logs", endpoint_url=server.endpoint, region_name="us-east-1")
    for container, text in (("init", "init done"), ("main", "main ran")):
        [found] = [c for c in task["containers"] if c["name"] == container]
        assert found["exitCode"] == 0
        events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=found["logStreamName"])["events"]
        assert [event["message"] for event in events] == [text]


def test_eks_pod_runs_on_one_node_with_its_volume_and_logs(batch: Any, server: KilnServer) -> None:
    """An eksProperties job: the node's local engine runs the pod (init container first, its
    emptyDir shared through each container's mount) and each container's log comes back."""
    name = unique("eks")
    small = {"requests": {"cpu": "0.5", "memory": "64Mi"}}
    mount = [{"name": "scratch", "mountPath": "/scratch"}]
    pod = {
        "initContainers": [{"name": "init", "image": "host", "resources": small, "volumeMounts": mount,
                            "command": ["sh", "-c", "echo from init > scratch/note"]}],
        "containers": [{"name": "main", "image": "host", "resources": small, "volumeMounts": mount,
                        "command": ["cat", "scratch/note"]}],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }  # fmt: skip
    batch.register_job_definition(jobDefinitionName=name, type="container", eksProperties={"podProperties": pod})
    job_id = submit(batch, make_queue(batch, max_vcpus=2, eks=True), name)
    assert wait_for(batch, job_id, timeout=60)["status"] == "SUCCEEDED", server.job_log(job_id)
    job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    task_id = job["eksProperties"]["podProperties"]["podName"].removeprefix("aws-batch.")
    logs = boto3.client("logs", endpoint_url=server.endpoint, region_name="us-east-1")
    events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=f"{name}/main/{task_id}")["events"]
    assert [event["message"] for event in events] == ["from init"]


def test_array_children_spread_over_every_node(batch: Any, server: KilnServer, ray_cluster: RayCluster) -> None:
    queue = make_queue(batch, max_vcpus=6)
    definition = register_shell(batch, 'sleep 1; echo "child=$AWS_BATCH_JOB_ARRAY_INDEX pwd=$(pwd)"')
    parent = submit(batch, queue, definition, arrayProperties={"size": 20})
    job = wait_for(batch, parent, timeout=120)
    assert job["status"] == "SUCCEEDED", job
    nodes: dict[str, int] = {}
    for index in range(20):
        log = server.job_log(f"{parent}:{index}")
        assert f"child={index} " in log
        node = _node_prefix(log)
        nodes[node] = nodes.get(node, 0) + 1
    # 6 one-vCPU children at a time on three 2-CPU nodes: every node must have taken some.
    live = {node_id[:12] for node_id in ray_cluster.node_ids().values()}
    assert set(nodes) == live, (nodes, live)


def test_a_fast_array_runs_ahead_on_the_nodes_in_reused_slots(batch: Any, server: KilnServer) -> None:
    """Children that end at once are queued on the nodes behind running siblings (start-ahead)
    and run in slots the earlier children held: far fewer placement groups than children."""
    log = server.data_dir.parent / f"server-{server.port}.log"
    slots_before = log.read_text().count("new Ray slot ")
    queue = make_queue(batch, max_vcpus=6)
    parent = submit(batch, queue, register_shell(batch, 'echo "child=$AWS_BATCH_JOB_ARRAY_INDEX"'),
                    arrayProperties={"size": 120})  # fmt: skip
    job = wait_for(batch, parent, timeout=120)
    assert job["status"] == "SUCCEEDED", job
    for index in range(0, 120, 7):
        child = batch.describe_jobs(jobs=[f"{parent}:{index}"])["jobs"][0]
        assert len(child["attempts"]) == 1 and server.job_log(child["jobId"]) == f"child={index}\n"
    metrics = httpx.get(f"{server.endpoint}/metrics", timeout=10).text
    (ahead,) = re.findall(r"^kiln_attempts_placed_ahead_total (\S+)$", metrics, re.MULTILINE)
    assert float(ahead) > 0, "no child was queued ahead on Ray"
    assert log.read_text().count("new Ray slot ") - slots_before <= 30


def test_terminating_a_fast_array_mid_way_leaves_every_record_true(
    batch: Any, server: KilnServer, job_tmp: Path
) -> None:
    """An array terminated while children run and others wait queued on the nodes' agents: every
    child ends, each one recorded SUCCEEDED ran and no other child ran (that an agent drops what it
    holds queued is tests/executors/test_ray_node.py's)."""
    queue = make_queue(batch, max_vcpus=6)
    marks = job_tmp / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # the jobs run as uids lent by a root server
    command = f"sleep 0.05; touch {marks}/$AWS_BATCH_JOB_ARRAY_INDEX"
    parent = submit(batch, queue, register_shell(batch, command), arrayProperties={"size": 2000})
    deadline = time.monotonic() + 90
    while len(list(marks.iterdir())) < 60:
        assert time.monotonic() < deadline, "the array did not get going"
        time.sleep(0.05)
    batch.terminate_job(jobId=parent, reason="stopped by the test")
    job = wait_for(batch, parent, timeout=60)
    assert job["status"] == "FAILED", job
    children = [f"{parent}:{index}" for index in range(2000)]
    deadline = time.monotonic() + 60
    while True:
        ended = [j for i in range(0, 2000, 100) for j in batch.describe_jobs(jobs=children[i : i + 100])["jobs"]]
        if all(j["status"] in ("SUCCEEDED", "FAILED") for j in ended):
            break
        assert time.monotonic() < deadline, [j["status"] for j in ended if j["status"] not in ("SUCCEEDED", "FAILED")]
        time.sleep(0.5)
    time.sleep(1.0)  # anything wrongly started after the stop would have touched its mark by now
    succeeded = {int(j["jobId"].rsplit(":", 1)[1]) for j in ended if j["status"] == "SUCCEEDED"}
    assert {int(mark.name) for mark in marks.iterdir()} == succeeded
    assert 60 <= len(succeeded) < 2000


@pytest.mark.parametrize(("vcpus", "memory"), [(3, 128), (1, 3 * 1024)])
def test_job_larger_than_every_node_stays_runnable_with_a_reason(batch: Any, vcpus: int, memory: int) -> None:
    """The cluster has 6 CPUs and 6 GiB in all, but no node more than 2 CPUs or 2 GiB."""
    queue = make_queue(batch, max_vcpus=8)
    job_id = submit(batch, queue, register_shell(batch, "echo never", vcpus=vcpus, memory=memory))
    deadline = time.monotonic() + 30
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if job.get("statusReason", "").startswith(JOB_REQUIREMENT):
            break
        time.sleep(0.2)
    assert job["status"] == "RUNNABLE", job
    assert job["statusReason"].startswith(JOB_REQUIREMENT), job
    batch.cancel_job(jobId=job_id, reason="test over")
    assert wait_for(batch, job_id, timeout=30)["status"] == "FAILED"


def test_losing_a_node_fails_its_attempt_as_host_terminated_and_the_retry_succeeds(
    batch: Any, server: KilnServer, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    names = ray_cluster.node_ids()
    queue = make_queue(batch, max_vcpus=6)
    # One 2-vCPU job per node; the first attempts sleep, so the lost one is retried on a node
    # freed by another job.
    script = (
        'echo "pwd=$(pwd)"; if [ "$AWS_BATCH_JOB_ATTEMPT" = 1 ]; then sleep 12; fi; echo "done $AWS_BATCH_JOB_ATTEMPT"'
    )
    definition = register_shell(
        batch, script, vcpus=2,
        retryStrategy={"attempts": 2, "evaluateOnExit": [
            {"onStatusReason": "Host EC2*", "action": "RETRY"}, {"onReason": "*", "action": "EXIT"},
        ]},
    )  # fmt: skip
    jobs = [submit(batch, queue, definition) for _ in range(3)]
    where = {job_id: _node_prefix(server.wait_for_log(job_id, "pwd=", timeout=60)) for job_id in jobs}
    victim_name = "w2"
    victim = names[victim_name]
    (lost_job,) = [job_id for job_id, node in where.items() if node == victim[:12]]
    killed_at = time.monotonic()
    ray_cluster.nodes[victim_name].kill()
    try:
        deadline = killed_at + 15
        attempts: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not attempts:
            attempts = batch.describe_jobs(jobs=[lost_job])["jobs"][0].get("attempts", [])
            time.sleep(0.2)
        assert attempts, f"the attempt on the lost node did not fail within 15 s of the kill ({lost_job})"
        match = HOST_LOST.match(attempts[0]["statusReason"])
        assert match and match.group(1) == victim, attempts[0]
        job = wait_for(batch, lost_job, timeout=60)
        assert job["status"] == "SUCCEEDED", (job["statusReason"], job["attempts"])
        assert len(job["attempts"]) == 2
        assert "done 2" in server.job_log(lost_job, attempt=2)
        assert _node_prefix(server.job_log(lost_job, attempt=2)) != victim[:12]
        for other in set(jobs) - {lost_job}:
            assert wait_for(batch, other, timeout=60)["status"] == "SUCCEEDED"
    finally:
        ray_cluster.start_node("w3")  # the rest of the session keeps three nodes
        ray_cluster.wait_for_nodes(3)
