"""The render workshop's flow, driven by the real AWS CLI (awscli from pip) against `kiln server`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import KilnServer
from tests.support import unique

# The workshop's job definition, exactly as written, with ${IMAGE} set to Kiln's built-in `host`.
REFERENCE_DEFINITION = """
{"jobDefinitionName": "RenderingJobDefinition", "type": "container",
 "containerProperties": {"image": "${IMAGE}", "vcpus": 1, "memory": 8000,
   "command": ["Ref::action", "-i", "Ref::inputUri", "-o", "Ref::outputUri", "-f", "Ref::framesPerJob"]},
 "retryStrategy": {"attempts": 3}, "platformCapabilities": ["EC2"]}
"""


def aws(server: KilnServer, *args: str) -> Any:
    executable = Path(sys.executable).with_name("aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "kiln",
        "AWS_SECRET_ACCESS_KEY": "kiln",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    command = [str(executable), "batch", *args, "--endpoint-url", server.endpoint, "--output", "json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout) if result.stdout.strip() else {}


def test_workshop_flow_with_aws_cli(kiln_server: KilnServer, tmp_path: Path) -> None:
    ce, queue = unique("RenderingCE"), unique("RenderingQueue")
    created = aws(
        kiln_server, "create-compute-environment", "--compute-environment-name", ce, "--type", "MANAGED",
        "--compute-resources", "type=EC2,maxvCpus=2,minvCpus=0,subnets=subnet-1,securityGroupIds=sg-1,instanceRole=ecsInstanceRole",
    )  # fmt: skip
    assert created["computeEnvironmentArn"].endswith(f":compute-environment/{ce}")
    aws(kiln_server, "create-job-queue", "--job-queue-name", queue, "--priority", "1",
        "--compute-environment-order", f"order=1,computeEnvironment={ce}")  # fmt: skip
    definition_file = tmp_path / "job-definition.json"
    definition_file.write_text(REFERENCE_DEFINITION.replace("${IMAGE}", "host"))
    registered = aws(kiln_server, "register-job-definition", "--cli-input-json", f"file://{definition_file}")
    assert registered["jobDefinitionName"] == "RenderingJobDefinition"
    submitted = aws(
        kiln_server, "submit-job", "--job-name", "render-test", "--job-queue", queue,
        "--job-definition", "RenderingJobDefinition",
        "--parameters", "action=echo,inputUri=s3://bucket/pottery.blend,outputUri=s3://bucket/out,framesPerJob=2",
        "--container-overrides", json.dumps({"environment": [{"name": "STAGE", "value": "cli-test"}]}),
    )  # fmt: skip
    job_id = submitted["jobId"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = aws(kiln_server, "describe-jobs", "--jobs", job_id)["jobs"][0]
        if job["status"] in ("SUCCEEDED", "FAILED"):
            break
        time.sleep(0.3)
    assert job["status"] == "SUCCEEDED", job
    assert job["container"]["command"] == [
        "echo",
        "-i",
        "s3://bucket/pottery.blend",
        "-o",
        "s3://bucket/out",
        "-f",
        "2",
    ]
    assert {"name": "STAGE", "value": "cli-test"} in job["container"]["environment"]
    assert job["retryStrategy"] == {"attempts": 3}
    stream = job["container"]["logStreamName"]
    assert stream.startswith("RenderingJobDefinition/default/")
    log = httpx.get(f"{kiln_server.endpoint}/kiln/v1/logs/{job_id}", timeout=10).json()
    assert log["logStreamName"] == stream
    assert log["text"].strip() == "-i s3://bucket/pottery.blend -o s3://bucket/out -f 2"
    listed = aws(kiln_server, "list-jobs", "--job-queue", queue, "--job-status", "SUCCEEDED")
    assert [summary["jobId"] for summary in listed["jobSummaryList"]] == [job_id]


def test_aws_cli_reports_client_errors(kiln_server: KilnServer) -> None:
    executable = Path(sys.executable).with_name("aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "kiln",
        "AWS_SECRET_ACCESS_KEY": "kiln",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    result = subprocess.run(
        [str(executable), "batch", "submit-job", "--job-name", "x", "--job-queue", "no-such-queue",
         "--job-definition", "nothing", "--endpoint-url", kiln_server.endpoint],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 255
    assert (
        "An error occurred (ClientException) when calling the SubmitJob operation: JobQueue no-such-queue not found."
        in result.stderr
    )
