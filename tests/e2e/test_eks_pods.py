"""`eksProperties` jobs really run: on the local executor, a pod's init containers one after the
other, then its containers together as processes of one attempt on the host's network, an emptyDir
volume shared through each container's mount, each container with its own log stream; the job
fails when any container fails, and no container's end stops the others (a pod's rules, not an
ECS task's). On the Docker executor, as containers of one task (the last test). DescribeJobs is
checked against botocore's output shape from the raw response."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from kiln.cli.embedded_server import free_port
from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.docker_daemon import DockerDaemon
from tests.e2e.test_ecs_tasks import describe_checked, events
from tests.support import EKS_CLUSTER, make_queue, submit, unique, wait_for

PYTHON = sys.executable
# The sidecar answers one request and exits: a pod ends once every container has (a sidecar that
# serves forever keeps it running, as on Kubernetes).
SERVE_ONCE = (
    "import http.server, sys\n"
    "class Handler(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = b'hello from the sidecar'\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "server = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), Handler)\n"
    "server.timeout = 20\n"
    "print('sidecar serving', flush=True)\n"
    "server.handle_request()\n"
)
FETCH = (
    "import sys, time, urllib.request\n"
    "print(open('data/greeting').read().strip())\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        print(urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/', timeout=2).read().decode())\n"
    "        break\n"
    "    except OSError:\n"
    "        time.sleep(0.05)\n"
    "else:\n"
    "    sys.exit(7)\n"
)
SMALL = {"requests": {"cpu": "0.25", "memory": "64Mi"}, "limits": {"memory": "64Mi"}}
SHARED = [{"name": "shared", "mountPath": "/data"}]


@pytest.fixture(scope="module")
def queue(batch: Any) -> str:
    return make_queue(batch, max_vcpus=2, eks=True)


@pytest.fixture(scope="module")
def logs(kiln_server: KilnServer) -> Any:
    return boto3.client("logs", endpoint_url=kiln_server.endpoint, region_name="us-east-1")


def container(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "host", "command": command, "resources": SMALL, **extra}


def register(batch: Any, *containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (), **pod: Any) -> str:
    name = unique("eks")
    properties = {"containers": list(containers), **pod}
    if init:
        properties["initContainers"] = list(init)
    batch.register_job_definition(jobDefinitionName=name, type="container", eksProperties={"podProperties": properties})
    return name


def by_name(listed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in listed}


def stream(job: dict[str, Any], definition: str, name: str) -> str:
    """A container's log stream: `<definition>/<container>/<task id>`, the task id being the pod's
    name without `aws-batch.`."""
    task_id = job["eksProperties"]["podProperties"]["podName"].removeprefix("aws-batch.")
    return f"{definition}/{name}/{task_id}"


def test_init_container_volume_and_sidecar_on_localhost(
    batch: Any, queue: str, logs: Any, kiln_server: KilnServer
) -> None:
    """The init container writes into the emptyDir (its command's `$(GREETING)` expanded from its
    env); the sidecar serves once on 127.0.0.1; the main container reads the file and calls the
    sidecar. Every container's exit code is in DescribeJobs, and each has its own log stream."""
    port = str(free_port())
    prepare = container("prepare", ["sh", "-c", "echo $(GREETING) > data/greeting"], volumeMounts=SHARED,
                        env=[{"name": "GREETING", "value": "hello from the init container"}])  # fmt: skip
    definition = register(
        batch,
        container("sidecar", [PYTHON, "-c", SERVE_ONCE], args=["Ref::port"]),
        container("main", [PYTHON, "-c", FETCH], args=["Ref::port"], volumeMounts=SHARED),
        init=(prepare,),
        volumes=[{"name": "shared", "emptyDir": {}}],
        metadata={"labels": {"team": "render"}},
    )
    job_id = submit(batch, queue, definition, parameters={"port": port})
    done = wait_for(batch, job_id, timeout=30)
    assert done["status"] == "SUCCEEDED", (kiln_server.job_log(job_id), describe_checked(batch, job_id))
    job = describe_checked(batch, job_id)
    assert "container" not in job and job["attempts"] == []
    pod = job["eksProperties"]["podProperties"]
    assert pod["podName"].startswith("aws-batch.") and pod["nodeName"]
    assert pod["metadata"] == {"labels": {"team": "render"}}
    containers = by_name(pod["containers"])
    assert containers["main"]["args"] == [port]  # Ref:: substituted
    assert containers["main"]["exitCode"] == 0 and containers["sidecar"]["exitCode"] == 0
    assert by_name(pod["initContainers"])["prepare"]["exitCode"] == 0
    [attempt] = job["eksAttempts"]
    assert attempt["podName"] == pod["podName"] and attempt["eksClusterArn"] == EKS_CLUSTER
    assert attempt["podNamespace"] == "kiln-tests"
    assert [(c["name"], c["exitCode"]) for c in attempt["containers"]] == [("sidecar", 0), ("main", 0)]
    assert [(c["name"], c["exitCode"]) for c in attempt["initContainers"]] == [("prepare", 0)]
    assert attempt["startedAt"] <= attempt["stoppedAt"]
    main = events(logs, stream(job, definition, "main"))
    assert main == "hello from the init container\nhello from the sidecar"
    assert "sidecar serving" in events(logs, stream(job, definition, "sidecar"))
    cli = {"AWS_ENDPOINT_URL_BATCH": kiln_server.endpoint}
    shown = subprocess.run([PYTHON, "-m", "kiln", "logs", job_id, "--container", "sidecar"], capture_output=True,
                           text=True, env={**os.environ, **cli}, timeout=60, check=False)  # fmt: skip
    assert shown.returncode == 0 and "sidecar serving" in shown.stdout, shown


def test_a_failing_container_fails_the_pod_and_stops_no_other(batch: Any, queue: str, logs: Any) -> None:
    """A pod is not an ECS task: the failing container ends nothing; the other runs to its end."""
    definition = register(
        batch,
        container("failing", ["sh", "-c", "echo failing; exit 3"]),
        container("slow", ["sh", "-c", "sleep 0.5; echo finished"]),
    )
    job_id = submit(batch, queue, definition)
    assert wait_for(batch, job_id, timeout=30)["status"] == "FAILED"
    job = describe_checked(batch, job_id)
    containers = by_name(job["eksProperties"]["podProperties"]["containers"])
    assert containers["failing"]["exitCode"] == 3 and containers["slow"]["exitCode"] == 0
    assert events(logs, stream(job, definition, "slow")) == "finished"


def test_a_failing_init_container_fails_the_pod_before_its_containers(batch: Any, queue: str) -> None:
    definition = register(
        batch,
        container("main", ["sh", "-c", "echo should not run"]),
        init=(container("first", ["true"]), container("second", ["sh", "-c", "exit 4"]),
              container("third", ["true"])),
    )  # fmt: skip
    job_id = submit(batch, queue, definition)
    assert wait_for(batch, job_id, timeout=30)["status"] == "FAILED"
    [attempt] = describe_checked(batch, job_id)["eksAttempts"]
    init = by_name(attempt["initContainers"])
    assert init["first"]["exitCode"] == 0 and init["second"]["exitCode"] == 4
    assert "exitCode" not in init["third"] and "exitCode" not in attempt["containers"][0]  # never started
    assert attempt["containers"][0]["reason"].startswith("DependencyConditionFailed: container third")


def test_override_changes_a_command_and_merges_env(batch: Any, queue: str, logs: Any) -> None:
    """A lone unnamed container is `default`, overridden without a name; it logs to the attempt's
    own stream (`<definition>/default/<task>`), as a lone ecsProperties container does."""
    unnamed = container("x", ["sh", "-c"], args=["echo definition $WHO $KEPT"],
                        env=[{"name": "WHO", "value": "definition"}, {"name": "KEPT", "value": "kept"}])  # fmt: skip
    del unnamed["name"]
    definition = register(batch, unnamed)
    override = {"podProperties": {"containers": [{"args": ["echo override $WHO $KEPT"],
                                                  "env": [{"name": "WHO", "value": "override"}]}]}}  # fmt: skip
    job_id = submit(batch, queue, definition, eksPropertiesOverride=override)
    assert wait_for(batch, job_id, timeout=30)["status"] == "SUCCEEDED"
    job = describe_checked(batch, job_id)
    assert job["eksProperties"]["podProperties"]["containers"][0]["name"] == "default"
    assert "override override kept" in events(logs, stream(job, definition, "default")).splitlines()


def test_timeout_stops_every_container_of_the_pod(batch: Any, queue: str) -> None:
    """The test server's minimum timeout is 1 s; a timed-out job is not retried, as on AWS."""
    definition = register(batch, container("a", ["sleep", "60"]), container("b", ["sleep", "60"]))
    job_id = submit(batch, queue, definition, timeout={"attemptDurationSeconds": 1}, retryStrategy={"attempts": 2})
    assert wait_for(batch, job_id, timeout=30)["status"] == "FAILED"
    [attempt] = describe_checked(batch, job_id)["eksAttempts"]
    assert attempt["statusReason"] == "Job attempt duration exceeded timeout"
    assert [(c["name"], c["exitCode"]) for c in attempt["containers"]] == [("a", 143), ("b", 143)]


# ------------------------------------------------------------------------- the Docker executor


@pytest.fixture(scope="module")
def docker_server(tmp_path_factory: pytest.TempPathFactory, docker_engine: DockerDaemon) -> Iterator[KilnServer]:
    flags = [*FAST_FLAGS, "--executor", "docker", "--docker-host", docker_engine.url]
    server = start_server(tmp_path_factory.mktemp("kiln-docker-eks"), flags)
    yield server
    server.stop()


def test_docker_runs_the_pod_with_its_volume_mounted(docker_server: KilnServer, docker_engine: DockerDaemon) -> None:
    """On Docker the emptyDir is mounted at its mountPath itself, `command` is the entrypoint and
    `args` the command; nothing of the pod is left behind (containers or volumes)."""
    batch = docker_server.client()
    logs = boto3.client("logs", endpoint_url=docker_server.endpoint, region_name="us-east-1")
    image = docker_engine.image
    mount = [{"name": "shared", "mountPath": "/shared"}]
    prepare = container(
        "prepare", ["sh", "-c"], args=["echo from init > /shared/note"], image=image, volumeMounts=mount
    )
    main = container("main", ["cat"], args=["/shared/note"], image=image, volumeMounts=mount)
    definition = register(batch, main, init=(prepare,), volumes=[{"name": "shared", "emptyDir": {}}])
    job_id = submit(batch, make_queue(batch, max_vcpus=2, eks=True), definition)
    assert wait_for(batch, job_id, timeout=60)["status"] == "SUCCEEDED", docker_server.job_log(job_id)
    job = describe_checked(batch, job_id)
    assert events(logs, stream(job, definition, "main")) == "from init"
    assert docker_engine.client.containers.list(all=True, filters={"label": f"kiln.job-id={job_id}"}) == []
    task_id = job["eksProperties"]["podProperties"]["podName"].removeprefix("aws-batch.")
    assert docker_engine.client.volumes.list(filters={"label": f"kiln.attempt-id={task_id}"}) == []
