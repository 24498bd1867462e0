"""Cycles renders on the job's GPU when it was given one, on the CPU otherwise, and says which.

The choice runs against real Blender (the bpy wheel, in its own process). The render on a real
GPU needs one: it runs where nvidia-smi lists a GPU and is skipped, saying so, everywhere else.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from kiln.cli.render_pipeline import DEFAULT_QUEUE
from kiln.executors.gpu_devices import detect_gpus
from kiln.executors.images import RENDER_IMAGE as IMAGE
from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.support import make_queue, unique, wait_for

from .conftest import run_bpy, run_worker

CHOOSE = """
import os
os.environ["CUDA_VISIBLE_DEVICES"] = hidden  # what CUDA itself may see, before Cycles starts it
import bpy
from kiln.render.cycles_device import apply_device, choose_device
preferences = bpy.context.preferences.addons["cycles"].preferences
scene = bpy.context.scene
scene.render.engine = "CYCLES"
choice = choose_device(preferences, job_environment)
apply_device(scene, preferences, choice)
result = {"device": choice.device, "backend": choice.backend, "line": choice.describe(),
          "scene_device": scene.cycles.device, "compute_device_type": preferences.compute_device_type}
"""


def choose(job_environment: dict[str, str], hidden: str = "") -> dict[str, Any]:
    return dict(run_bpy(CHOOSE, job_environment=job_environment, hidden=hidden))


def job_log(server: KilnServer, job: dict[str, Any]) -> str:
    """The job's last attempt's log, through the CloudWatch Logs API."""
    logs = boto3.client("logs", endpoint_url=server.endpoint, region_name="us-east-1")
    stream = job["attempts"][-1]["container"]["logStreamName"]
    events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream, startFromHead=True)["events"]
    return "\n".join(event["message"] for event in events)


def test_a_job_without_gpus_renders_on_the_cpu() -> None:
    for environment in ({}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"}):
        chosen = choose(environment)
        assert (chosen["device"], chosen["scene_device"]) == ("CPU", "CPU"), environment
        assert (
            chosen["line"]
            == "Cycles renders on the CPU; CUDA_VISIBLE_DEVICES is unset or empty: this job was given no GPU"
        )


def test_a_job_given_a_gpu_cycles_cannot_see_falls_back_to_the_cpu() -> None:
    # The job is told device 0, but CUDA is shown none (empty CUDA_VISIBLE_DEVICES in the process).
    chosen = choose({"CUDA_VISIBLE_DEVICES": "0"}, hidden="")
    assert (chosen["device"], chosen["scene_device"], chosen["compute_device_type"]) == ("CPU", "CPU", "NONE")
    assert chosen["line"] == (
        "Cycles renders on the CPU; CUDA_VISIBLE_DEVICES=0 but Cycles found no GPU device (OPTIX/CUDA)"
    )


def test_the_worker_logs_the_device_it_renders_on(sample_blend: Path, tmp_path: Path) -> None:
    run = run_worker(
        "render", "-i", str(sample_blend), "-o", str(tmp_path / "out"), "-f", "1",
        "--frame-end", "1", "--resolution-percent", "10", "--samples", "1",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Cycles renders on the CPU; CUDA_VISIBLE_DEVICES is unset or empty" in run.stdout
    assert (tmp_path / "out" / "frames" / "0001.png").is_file()


def test_a_gpu_job_renders_on_its_gpu(sample_blend: Path, tmp_path: Path) -> None:
    inventory = detect_gpus()
    if not inventory.devices:
        pytest.skip(f"no GPU was found on this machine, so nothing can render on one ({inventory.note})")
    server = start_server(tmp_path)  # no --gpus: the server finds the GPUs with nvidia-smi
    batch = server.client()
    queue = make_queue(batch, max_vcpus=2)
    output = tmp_path / "out"
    name = unique("gpu-render")
    batch.register_job_definition(
        jobDefinitionName=name,
        type="container",
        containerProperties={
            "image": IMAGE,
            "command": ["render", "-i", str(sample_blend), "-o", str(output), "-f", "1", "--frame-end", "1"],
            "resourceRequirements": [
                {"type": "VCPU", "value": "1"},
                {"type": "MEMORY", "value": "4096"},
                {"type": "GPU", "value": "1"},
            ],
        },
    )
    job_id = batch.submit_job(jobName=name, jobQueue=queue, jobDefinition=name)["jobId"]
    job = wait_for(batch, job_id, timeout=300)
    text = job_log(server, job)
    assert job["status"] == "SUCCEEDED", text
    assert "Cycles renders on the GPU (" in text, text
    assert "CUDA_VISIBLE_DEVICES=" + inventory.devices[0] in text, text
    assert (output / "frames" / "0001.png").is_file()


def test_kiln_render_with_gpus_gives_each_render_job_a_device(
    sample_blend: Path, tmp_path: Path, job_tmp: Path
) -> None:
    """`kiln render --gpus 1` on a server with one GPU (configured; the real one where there is
    one): the render job reserves it, is handed device 0, and Cycles uses it or says it cannot.
    Its jobs run as the default job user, so scene and output live where that user reaches them."""
    server = start_server(tmp_path, [*FAST_FLAGS, "--gpus", "1"])
    scene = job_tmp / sample_blend.name
    shutil.copyfile(sample_blend, scene)
    output = job_tmp / "out"
    # As the user guide asks of a folder jobs of another user write into: their group, setgid, 2770
    # (`kiln render` itself writes the scene's pack into it first, so it exists before they run).
    output.mkdir()
    if os.geteuid() == 0:  # else the server is not root and its jobs run as this user
        os.chown(output, -1, pwd.getpwnam("nobody").pw_gid)
        output.chmod(0o2770)
    run = subprocess.run(
        [sys.executable, "-m", "kiln", "render", str(scene), "-o", str(output), "--frames", "1",
         "--gpus", "1", "--resolution-percent", "10", "--samples", "1", "--endpoint-url", server.endpoint],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout, run.stderr)
    batch = server.client()
    listed = batch.list_jobs(jobQueue=DEFAULT_QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
    render_id = next(job["jobId"] for job in listed if job["jobName"].endswith("-render"))
    job = batch.describe_jobs(jobs=[render_id])["jobs"][0]
    assert {"type": "GPU", "value": "1"} in job["container"]["resourceRequirements"]
    text = job_log(server, job)
    if detect_gpus().devices:
        assert "Cycles renders on the GPU (" in text, text
    else:
        assert "Cycles renders on the CPU; CUDA_VISIBLE_DEVICES=0 but Cycles found no GPU device" in text, text
    assert (output / "frames" / "0001.png").is_file()
