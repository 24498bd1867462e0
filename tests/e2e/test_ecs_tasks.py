"""`ecsProperties` jobs really run: on the local executor, several containers as processes of one
attempt, sharing the host's network, each with its own log stream, started in `dependsOn` order,
the job's result following its essential containers; on the Docker executor, as containers of one
task on the host network (the last test). DescribeJobs is checked against botocore's
output shape from the raw response (boto3 itself drops members the model does not know)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from kiln.cli.embedded_server import free_port
from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.docker_daemon import DockerDaemon
from tests.support import make_queue, submit, unique, wait_for

PYTHON = sys.executable
SERVE = (
    "import http.server, sys\n"
    "class Handler(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = b'hello from the sidecar'\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "server = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), Handler)\n"
    "print('sidecar serving', flush=True)\n"
    "server.serve_forever()\n"
)
FETCH = (
    "import sys, time, urllib.request\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        print(urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/', timeout=2).read().decode())\n"
    "        break\n"
    "    except OSError:\n"
    "        time.sleep(0.05)\n"
    "else:\n"
    "    sys.exit(7)\n"
)


OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
START_SIDECAR = {"containerName": "sidecar", "condition": "START"}


@pytest.fixture(scope="module")
def queue(batch: Any) -> str:
    return make_queue(batch, max_vcpus=2)


@pytest.fixture(scope="module")
def logs(kiln_server: KilnServer) -> Any:
    return boto3.client("logs", endpoint_url=kiln_server.endpoint, region_name="us-east-1")


def container(name: str, command: list[str], *, essential: bool = True, **extra: Any) -> dict[str, Any]:
    requirements = [{"type": "VCPU", "value": "0.5"}, {"type": "MEMORY", "value": "64"}]
    return {"name": name, "image": "host", "command": command, "essential": essential,
            "resourceRequirements": requirements, **extra}  # fmt: skip


def register(batch: Any, *containers: dict[str, Any]) -> str:
    name = unique("ecs")
    batch.register_job_definition(
        jobDefinitionName=name, type="container", ecsProperties={"taskProperties": [{"containers": list(containers)}]}
    )
    return name


def raw_describe(batch: Any, job_id: str) -> dict[str, Any]:
    """DescribeJobs' JSON as the server sent it."""
    seen: list[bytes] = []

    def keep(http_response: Any, **_: Any) -> None:
        seen.append(http_response.content)

    batch.meta.events.register("after-call.batch.DescribeJobs", lambda **kwargs: keep(kwargs["http_response"]))
    try:
        batch.describe_jobs(jobs=[job_id])
    finally:
        batch.meta.events.unregister("after-call.batch.DescribeJobs")
    return dict(json.loads(seen[-1]))


def assert_fits(value: Any, shape: Any, where: str = "") -> None:
    """Every member of `value` is one the botocore shape knows, with the right type (null allowed)."""
    if value is None:
        return
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(value, dict), where
        unknown = set(value) - set(shape.members)
        assert not unknown, f"{where}: members not in {shape.name}: {unknown}"
        for key, item in value.items():
            assert_fits(item, shape.members[key], f"{where}.{key}")
    elif kind == "list":
        assert isinstance(value, list), where
        for index, item in enumerate(value):
            assert_fits(item, shape.member, f"{where}[{index}]")
    elif kind == "map":
        assert isinstance(value, dict), where
    elif kind in ("integer", "long"):
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "boolean":
        assert isinstance(value, bool), where
    elif kind == "string":
        assert isinstance(value, str), where
        if shape.enum:
            assert value in shape.enum, where


def describe_checked(batch: Any, job_id: str) -> dict[str, Any]:
    raw = raw_describe(batch, job_id)
    output = batch.meta.service_model.operation_model("DescribeJobs").output_shape
    assert_fits(raw, output)
    return dict(raw["jobs"][0])


def by_name(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in task["containers"]}


def events(logs: Any, stream: str) -> str:
    found = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream, startFromHead=True)
    return "\n".join(event["message"] for event in found["events"])


def finished(batch: Any, server: KilnServer, job_id: str) -> dict[str, Any]:
    """The job once it ended, with the runner's own log (the attempt's stream) when a test fails."""
    job = wait_for(batch, job_id, timeout=60)
    job["runnerLog"] = server.job_log(job_id)
    return job


def test_sidecar_on_localhost_and_essential_main_succeed(
    batch: Any, queue: str, logs: Any, kiln_server: KilnServer
) -> None:
    port = str(free_port())
    definition = register(
        batch,
        container("sidecar", [PYTHON, "-c", SERVE, port], essential=False),
        container("main", [PYTHON, "-c", FETCH, "Ref::port"], dependsOn=[START_SIDECAR]),
    )
    job_id = submit(batch, queue, definition, parameters={"port": port})
    done = finished(batch, kiln_server, job_id)
    assert done["status"] == "SUCCEEDED", done
    job = describe_checked(batch, job_id)
    assert "container" not in job
    task = job["ecsProperties"]["taskProperties"][0]
    assert task["taskArn"].endswith(job["attempts"][0]["taskProperties"][0]["taskArn"].rsplit("/", 1)[-1])
    containers = by_name(task)
    assert containers["main"]["command"][-1] == port  # Ref:: substituted
    assert containers["main"]["exitCode"] == 0
    assert containers["sidecar"]["exitCode"] == 143  # stopped with SIGTERM once the essential one exited
    task_id = task["taskArn"].rsplit("/", 1)[-1]
    assert containers["main"]["logStreamName"] == f"{definition}/main/{task_id}"
    assert "hello from the sidecar" in events(logs, containers["main"]["logStreamName"])
    assert "sidecar serving" in events(logs, containers["sidecar"]["logStreamName"])
    # `kiln logs --container` reads a container's stream; without it, the attempt's (the runner's).
    cli = {"AWS_ENDPOINT_URL_BATCH": kiln_server.endpoint}
    main_log = subprocess.run([PYTHON, "-m", "kiln", "logs", job_id, "--container", "main"], capture_output=True,
                              text=True, env={**os.environ, **cli}, timeout=60, check=False)  # fmt: skip
    assert main_log.returncode == 0 and main_log.stdout.strip() == "hello from the sidecar", main_log
    assert "container main exited with code 0" in kiln_server.job_log(job_id)
    unknown = httpx.get(f"{kiln_server.endpoint}/kiln/v1/logs/{job_id}", params={"container": "ghost"}, timeout=10)
    assert unknown.status_code == 400 and "has no container ghost (containers: sidecar, main)" in unknown.text
    attempt = by_name(job["attempts"][0]["taskProperties"][0])
    assert attempt["main"]["exitCode"] == 0 and attempt["main"]["logStreamName"] == containers["main"]["logStreamName"]
    assert job["attempts"][0]["statusReason"] == "Essential container in task exited"


def test_failing_essential_container_fails_the_job_and_stops_the_others(batch: Any, queue: str) -> None:
    definition = register(
        batch,
        container("sleeper", ["sleep", "60"], essential=False),
        container("main", ["sh", "-c", "echo failing; exit 3"]),
    )
    job_id = submit(batch, queue, definition)
    job = wait_for(batch, job_id, timeout=30)
    assert job["status"] == "FAILED"
    assert job["stoppedAt"] - job["startedAt"] < 20_000  # the sleeper did not keep the task alive
    containers = by_name(describe_checked(batch, job_id)["ecsProperties"]["taskProperties"][0])
    assert containers["main"]["exitCode"] == 3
    assert containers["sleeper"]["exitCode"] == 143


def test_depends_on_order_and_overrides(batch: Any, queue: str, logs: Any) -> None:
    definition = register(
        batch,
        container("init", ["sh", "-c", "sleep 0.3; echo ready > marker"], essential=False),
        container("main", ["sh", "-c", "cat marker; echo main=$WHO"],
                  dependsOn=[{"containerName": "init", "condition": "SUCCESS"}],
                  environment=[{"name": "WHO", "value": "definition"}]),
    )  # fmt: skip
    override = {"taskProperties": [{"containers": [{"name": "main", "environment": [{"name": "WHO",
                                                                                      "value": "override"}]}]}]}  # fmt: skip
    job_id = submit(batch, queue, definition, ecsPropertiesOverride=override)
    assert wait_for(batch, job_id, timeout=30)["status"] == "SUCCEEDED"
    containers = by_name(describe_checked(batch, job_id)["ecsProperties"]["taskProperties"][0])
    assert containers["init"]["exitCode"] == 0
    text = events(logs, containers["main"]["logStreamName"])
    assert "ready" in text  # main started only after init had written the marker and exited 0
    assert "main=override" in text


def test_unmet_success_dependency_never_starts_the_container(batch: Any, queue: str) -> None:
    definition = register(
        batch,
        container("init", ["sh", "-c", "exit 1"], essential=False),
        container("main", ["sh", "-c", "echo should not run"],
                  dependsOn=[{"containerName": "init", "condition": "SUCCESS"}]),
    )  # fmt: skip
    job_id = submit(batch, queue, definition)
    assert wait_for(batch, job_id, timeout=30)["status"] == "FAILED"
    containers = by_name(describe_checked(batch, job_id)["ecsProperties"]["taskProperties"][0])
    assert containers["init"]["exitCode"] == 1
    assert "exitCode" not in containers["main"]  # never ran: no exit code (nulls are left out)
    assert containers["main"]["reason"].startswith("DependencyConditionFailed: container init")


def test_unknown_image_fails_the_start_as_for_one_container(batch: Any, queue: str) -> None:
    definition = register(batch, container("main", ["true"]), container("other", ["true"], image="no/such:image"))
    job_id = submit(batch, queue, definition)
    assert wait_for(batch, job_id, timeout=30)["status"] == "FAILED"
    job = describe_checked(batch, job_id)
    attempt = job["attempts"][0]
    assert attempt["statusReason"] == "Task failed to start"
    other = by_name(attempt["taskProperties"][0])["other"]
    assert other["reason"].startswith("CannotPullContainerError") and "no/such:image" in other["reason"]
    assert "logStreamName" not in other  # it never started


def test_terminate_stops_every_container(batch: Any, queue: str) -> None:
    definition = register(
        batch, container("sidecar", ["sleep", "60"], essential=False), container("main", ["sleep", "60"])
    )
    job_id = submit(batch, queue, definition)
    wait_for(batch, job_id, {"RUNNING"}, timeout=30)
    time.sleep(0.5)  # both containers started
    batch.terminate_job(jobId=job_id, reason="enough")
    job = wait_for(batch, job_id, timeout=30)
    assert job["status"] == "FAILED" and job["statusReason"] == "enough"
    containers = by_name(describe_checked(batch, job_id)["ecsProperties"]["taskProperties"][0])
    assert containers["main"]["exitCode"] == 143 and containers["sidecar"]["exitCode"] == 143


def test_timeout_stops_the_whole_task(batch: Any, queue: str) -> None:
    """The test server's minimum timeout is 1 s; a timed-out job is not retried, as on AWS."""
    definition = register(
        batch, container("sidecar", ["sleep", "60"], essential=False), container("main", ["sleep", "60"])
    )
    job_id = submit(batch, queue, definition, timeout={"attemptDurationSeconds": 1}, retryStrategy={"attempts": 2})
    assert wait_for(batch, job_id, timeout=60)["status"] == "FAILED"
    [attempt] = describe_checked(batch, job_id)["attempts"]
    assert attempt["statusReason"] == "Job attempt duration exceeded timeout"
    assert {c["name"]: c["exitCode"] for c in attempt["taskProperties"][0]["containers"]} == {
        "sidecar": 143,
        "main": 143,
    }


def test_retry_strategy_retries_a_failing_essential_container(batch: Any, queue: str) -> None:
    definition = register(batch, container("main", ["sh", "-c", "exit 3"]))
    job_id = submit(batch, queue, definition, retryStrategy={"attempts": 2})
    job = wait_for(batch, job_id, timeout=60)
    assert job["status"] == "FAILED" and len(job["attempts"]) == 2
    assert [
        a["taskProperties"][0]["containers"][0]["exitCode"] for a in describe_checked(batch, job_id)["attempts"]
    ] == [3, 3]


def test_one_memory_limit_covers_every_container(batch: Any, queue: str) -> None:
    """64 MiB for the task; each container alone stays under it, together they do not."""
    hold = [PYTHON, "-c", "import time; block = bytearray(40 * 1024 * 1024); time.sleep(30)"]
    limits = [{"type": "VCPU", "value": "0.5"}, {"type": "MEMORY", "value": "32"}]
    definition = register(
        batch,
        {**container("first", hold, essential=False), "resourceRequirements": limits},
        {**container("second", hold), "resourceRequirements": limits},
    )
    job_id = submit(batch, queue, definition)
    assert wait_for(batch, job_id, timeout=60)["status"] == "FAILED"
    attempt = describe_checked(batch, job_id)["attempts"][0]
    second = by_name(attempt["taskProperties"][0])["second"]
    assert second["exitCode"] == 137 and second["reason"] == OOM_REASON, attempt


def test_array_children_run_the_task_each_with_its_index(batch: Any, queue: str, logs: Any) -> None:
    definition = register(batch, container("main", ["sh", "-c", "echo index=$AWS_BATCH_JOB_ARRAY_INDEX"]))
    job_id = submit(batch, queue, definition, arrayProperties={"size": 2})
    assert wait_for(batch, job_id, timeout=30)["status"] == "SUCCEEDED"
    for index in (0, 1):
        child = describe_checked(batch, f"{job_id}:{index}")
        [main] = child["ecsProperties"]["taskProperties"][0]["containers"]
        assert main["exitCode"] == 0
        assert events(logs, main["logStreamName"]) == f"index={index}"


# ------------------------------------------------------------------------- the Docker executor

BUSYBOX_SERVE = "mkdir -p /tmp/www && echo hello from the sidecar > /tmp/www/index.html && echo sidecar serving && "
BUSYBOX_FETCH = "for i in $(seq 1 100); do wget -qO- http://127.0.0.1:$0/ && exit 0; sleep 0.1; done; exit 7"


@pytest.fixture(scope="module")
def docker_server(tmp_path_factory: pytest.TempPathFactory, docker_engine: DockerDaemon) -> Iterator[KilnServer]:
    flags = [*FAST_FLAGS, "--executor", "docker", "--docker-host", docker_engine.url]
    server = start_server(tmp_path_factory.mktemp("kiln-docker"), flags)
    yield server
    server.stop()


def test_docker_runs_the_task_as_containers_on_the_host_network(
    docker_server: KilnServer, docker_engine: DockerDaemon
) -> None:
    """The sidecar scenario, a failing essential container and an unmet SUCCESS dependency, each as
    Docker containers of one task; none is left behind."""
    batch = docker_server.client()
    logs = boto3.client("logs", endpoint_url=docker_server.endpoint, region_name="us-east-1")
    queue = make_queue(batch, max_vcpus=2)
    image, port = docker_engine.image, str(free_port())
    serve = container("sidecar", ["sh", "-c", BUSYBOX_SERVE + f"exec httpd -f -p {port} -h /tmp/www"],
                      essential=False, image=image)  # fmt: skip
    fetch = container("main", ["sh", "-c", BUSYBOX_FETCH, port], image=image, dependsOn=[START_SIDECAR])
    served = submit(batch, queue, register(batch, serve, fetch))
    failing = submit(batch, queue, register(batch, container("sleeper", ["sleep", "60"], essential=False, image=image),
                                            container("main", ["sh", "-c", "exit 3"], image=image)))  # fmt: skip
    unmet = submit(batch, queue, register(
        batch, container("init", ["sh", "-c", "exit 1"], essential=False, image=image),
        container("main", ["true"], image=image, dependsOn=[{"containerName": "init", "condition": "SUCCESS"}])))  # fmt: skip

    assert wait_for(batch, served, timeout=60)["status"] == "SUCCEEDED", docker_server.job_log(served)
    containers = by_name(describe_checked(batch, served)["ecsProperties"]["taskProperties"][0])
    # PID 1 of a container ignores SIGTERM unless it handles it: the sidecar got SIGKILL after the grace.
    assert containers["main"]["exitCode"] == 0 and containers["sidecar"]["exitCode"] == 137
    assert events(logs, containers["main"]["logStreamName"]) == "hello from the sidecar"
    assert "sidecar serving" in events(logs, containers["sidecar"]["logStreamName"])

    assert wait_for(batch, failing, timeout=60)["status"] == "FAILED"
    containers = by_name(describe_checked(batch, failing)["ecsProperties"]["taskProperties"][0])
    assert containers["main"]["exitCode"] == 3 and containers["sleeper"]["exitCode"] == 137

    assert wait_for(batch, unmet, timeout=60)["status"] == "FAILED"
    containers = by_name(describe_checked(batch, unmet)["ecsProperties"]["taskProperties"][0])
    assert containers["init"]["exitCode"] == 1 and "exitCode" not in containers["main"]
    assert containers["main"]["reason"].startswith("DependencyConditionFailed: container init")

    sleepers = submit(batch, queue, register(batch, container("a", ["sleep", "60"], essential=False, image=image),
                                             container("b", ["sleep", "60"], image=image)))  # fmt: skip
    wait_for(batch, sleepers, {"RUNNING"}, timeout=60)
    batch.terminate_job(jobId=sleepers, reason="enough")
    job = wait_for(batch, sleepers, timeout=30)
    assert job["status"] == "FAILED" and job["statusReason"] == "enough"

    for job_id in (served, failing, unmet, sleepers):
        assert docker_engine.client.containers.list(all=True, filters={"label": f"kiln.job-id={job_id}"}) == []


def test_a_sigkilled_docker_server_takes_the_task_back(docker_server: KilnServer, docker_engine: DockerDaemon) -> None:
    """Last in the module: it restarts the Docker server. The task runs on without a server and ends
    with one attempt; the container that was running while the server was away logged all of it."""
    batch = docker_server.client()
    logs = boto3.client("logs", endpoint_url=docker_server.endpoint, region_name="us-east-1")
    image = docker_engine.image
    definition = register(batch, container("sidecar", ["sleep", "60"], essential=False, image=image),
                          container("main", ["sh", "-c", "echo before; sleep 4; echo after"], image=image))  # fmt: skip
    job_id = submit(batch, make_queue(batch, max_vcpus=2), definition, retryStrategy={"attempts": 2})
    wait_for(batch, job_id, {"RUNNING"}, timeout=60)
    stream = by_name(describe_checked(batch, job_id)["ecsProperties"]["taskProperties"][0])["main"]["logStreamName"]
    deadline = time.monotonic() + 20
    while "before" not in events(logs, stream) and time.monotonic() < deadline:
        time.sleep(0.1)

    docker_server.stop(kill=True)  # the containers run on without a server
    time.sleep(1)
    docker_server.start()
    batch, logs = (
        docker_server.client(),
        boto3.client("logs", endpoint_url=docker_server.endpoint, region_name="us-east-1"),
    )

    job = wait_for(batch, job_id, timeout=60)
    assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 1, job  # taken back, not retried
    containers = by_name(describe_checked(batch, job_id)["ecsProperties"]["taskProperties"][0])
    assert containers["main"]["exitCode"] == 0 and containers["sidecar"]["exitCode"] == 137
    assert events(logs, stream) == "before\nafter"
    assert docker_engine.client.containers.list(all=True, filters={"label": f"kiln.job-id={job_id}"}) == []
