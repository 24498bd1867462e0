"""GPUs on the local executor, through a real server with a configured count (`--gpus 2`).

The host has no GPU, so the devices are numbered 0..N-1; what is checked is Kiln's part: whole GPUs
are reserved, each attempt's own process sees only its devices in `CUDA_VISIBLE_DEVICES` and
`NVIDIA_VISIBLE_DEVICES`, a job waits RUNNABLE until a device is free, a job larger than the host
says so, and a server restart keeps the devices of the attempts it adopts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kiln.executors.gpu_devices import parse_nvidia_smi, visible_devices_environment
from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.support import make_queue, submit, unique, wait_for

JOB_REQUIREMENT = (
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - All compute environments have no connected "
    "instances that meet the job requirements."
)
HOST_VCPUS = 8  # more vCPUs than the jobs need together: only GPUs can make one wait

# Writes what the job's own process sees, then holds its GPU until the test releases it (at most 60 s).
HOLD_SCRIPT = (
    'echo "cuda=$CUDA_VISIBLE_DEVICES nvidia=$NVIDIA_VISIBLE_DEVICES order=$CUDA_DEVICE_ORDER"; '
    'echo "$CUDA_VISIBLE_DEVICES|$NVIDIA_VISIBLE_DEVICES" > "$KILN_TEST_DIR/$AWS_BATCH_JOB_ID.env"; '
    'i=0; while [ ! -e "$KILN_TEST_DIR/release-$AWS_BATCH_JOB_ID" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done'
)


def gpu_server(tmp_path: Path, gpus: int) -> KilnServer:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "kiln.toml").write_text(f"[server]\nhost_vcpus = {HOST_VCPUS}\n")
    return start_server(tmp_path, [*FAST_FLAGS, "--gpus", str(gpus)])


def register_holder(batch: Any, directory: Path, gpus: int) -> str:
    resources = [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]
    if gpus:
        resources.append({"type": "GPU", "value": str(gpus)})
    name = unique("jd")
    revision = batch.register_job_definition(
        jobDefinitionName=name,
        type="container",
        containerProperties={
            "image": "host",
            "command": ["sh", "-c", HOLD_SCRIPT],
            "resourceRequirements": resources,
            "environment": [{"name": "KILN_TEST_DIR", "value": str(directory)}],
        },
    )["revision"]
    return f"{name}:{revision}"


def seen_devices(directory: Path, job_id: str, timeout: float = 30) -> tuple[str, str]:
    """(CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES) as the job's process wrote them."""
    path = directory / f"{job_id}.env"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            cuda, nvidia = text.strip().split("|")
            return cuda, nvidia
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} wrote no {path.name} in {timeout} s")


def release(batch: Any, directory: Path, job_id: str) -> dict[str, Any]:
    (directory / f"release-{job_id}").touch()
    return wait_for(batch, job_id)


def stays_runnable(batch: Any, job_id: str, seconds: float) -> dict[str, Any]:
    """The job becomes RUNNABLE and stays so for `seconds` (polled); returned as last seen."""
    wait_for(batch, job_id, {"RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"})
    deadline = time.monotonic() + seconds
    while True:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        assert job["status"] == "RUNNABLE", job
        if time.monotonic() >= deadline:
            return dict(job)
        time.sleep(0.1)


def metrics(server: KilnServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.endpoint}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@dataclass
class TwoGpuHolders:
    """A server with 2 GPUs whose two 1-GPU jobs are running, and what each of them was given."""

    server: KilnServer
    batch: Any
    queue: str
    one_gpu: str  # the 1-GPU job definition
    first: str
    second: str
    devices: dict[str, tuple[str, str]]  # job -> (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES)


def two_gpu_holders(tmp_path: Path, job_tmp: Path) -> TwoGpuHolders:
    server = gpu_server(tmp_path, gpus=2)
    batch = server.client()
    queue = make_queue(batch, max_vcpus=HOST_VCPUS)
    one_gpu = register_holder(batch, job_tmp, gpus=1)
    first, second = submit(batch, queue, one_gpu), submit(batch, queue, one_gpu)
    wait_for(batch, first, {"RUNNING"})
    wait_for(batch, second, {"RUNNING"})
    devices = {job: seen_devices(job_tmp, job) for job in (first, second)}
    return TwoGpuHolders(server, batch, queue, one_gpu, first, second, devices)


def test_gpu_jobs_get_their_own_devices_and_wait_for_a_free_one(tmp_path: Path, job_tmp: Path) -> None:
    held = two_gpu_holders(tmp_path, job_tmp)
    server, batch, queue, one_gpu = held.server, held.batch, held.queue, held.one_gpu
    first, second, devices = held.first, held.second, held.devices
    assert sorted(cuda for cuda, _ in devices.values()) == ["0", "1"]  # never the same device
    assert all(cuda == nvidia for cuda, nvidia in devices.values())

    third = submit(batch, queue, one_gpu)
    cpu_only = submit(batch, queue, register_holder(batch, job_tmp, gpus=0))
    wait_for(batch, cpu_only, {"RUNNING"})  # vCPUs and memory are free: the third waits for a GPU
    assert seen_devices(job_tmp, cpu_only) == ("", "none")  # a job without GPUs sees none
    waiting = stays_runnable(batch, third, 2.0)
    assert waiting.get("statusReason") is None  # it fits the host, it just has to wait

    ce = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["computeEnvironmentOrder"][0]
    ce_name = ce["computeEnvironment"].rsplit("/", 1)[-1]
    sample = metrics(server)
    assert sample[("kiln_host_gpus", ())] == 2
    assert sample[("kiln_compute_environment_gpus_in_use", (("compute_environment", ce_name),))] == 2
    capacity = httpx.get(f"{server.endpoint}/kiln/v1/capacity", timeout=10).json()
    assert capacity["host"]["gpus"] == 2
    assert [c["gpus"] for c in capacity["computeEnvironments"] if c["computeEnvironmentName"] == ce_name] == [2]

    assert release(batch, job_tmp, first)["status"] == "SUCCEEDED"
    wait_for(batch, third, {"RUNNING"})
    assert seen_devices(job_tmp, third) == devices[first]  # the device the first one gave back

    for job in (second, third, cpu_only):
        assert release(batch, job_tmp, job)["status"] == "SUCCEEDED"
    assert metrics(server)[("kiln_compute_environment_gpus_in_use", (("compute_environment", ce_name),))] == 0


def test_a_job_needing_more_gpus_than_the_host_has_says_so(tmp_path: Path, job_tmp: Path) -> None:
    server = gpu_server(tmp_path, gpus=2)
    batch = server.client()
    queue = make_queue(batch, max_vcpus=HOST_VCPUS)
    too_big = submit(batch, queue, register_holder(batch, job_tmp, gpus=3))
    deadline = time.monotonic() + 30
    job = batch.describe_jobs(jobs=[too_big])["jobs"][0]
    while job.get("statusReason") != JOB_REQUIREMENT and time.monotonic() < deadline:
        time.sleep(0.1)
        job = batch.describe_jobs(jobs=[too_big])["jobs"][0]
    assert (job["status"], job.get("statusReason")) == ("RUNNABLE", JOB_REQUIREMENT)
    # A job that fits runs meanwhile: the big one blocks nothing.
    fits = submit(batch, queue, register_holder(batch, job_tmp, gpus=2))
    wait_for(batch, fits, {"RUNNING"})
    assert sorted(seen_devices(job_tmp, fits)[0].split(",")) == ["0", "1"]
    assert release(batch, job_tmp, fits)["status"] == "SUCCEEDED"
    assert stays_runnable(batch, too_big, 1.0)["statusReason"] == JOB_REQUIREMENT
    batch.terminate_job(jobId=too_big, reason="test over")


def test_attempts_adopted_after_a_server_restart_keep_their_devices(tmp_path: Path, job_tmp: Path) -> None:
    held = two_gpu_holders(tmp_path, job_tmp)
    server, queue, one_gpu = held.server, held.queue, held.one_gpu
    first, second, devices = held.first, held.second, held.devices

    server.restart(kill=True)  # SIGKILL: the attempts live on under the supervisor
    batch = server.client()
    third = submit(batch, queue, one_gpu)
    stays_runnable(batch, third, 2.0)  # both devices are still held by the adopted attempts
    assert {batch.describe_jobs(jobs=[job])["jobs"][0]["status"] for job in (first, second)} == {"RUNNING"}

    # Give back device 1: an engine that forgot the adopted attempts' devices would hand out 0 again.
    keeps, frees = sorted((first, second), key=lambda job: devices[job][0])
    assert release(batch, job_tmp, frees)["status"] == "SUCCEEDED"
    wait_for(batch, third, {"RUNNING"})
    assert seen_devices(job_tmp, third) == ("1", "1")  # the freed device, not the one still held
    for job in (keeps, third):
        assert release(batch, job_tmp, job)["status"] == "SUCCEEDED"


def test_nvidia_smi_listing_and_the_attempt_environment() -> None:
    listing = "0, GPU-8a1c2f3e-0000-1111-2222-333344445555\n1, GPU-9b2d3e4f-6666-7777-8888-999900001111\n"
    assert parse_nvidia_smi(listing) == ("0", "1")
    assert parse_nvidia_smi("") == ()
    assert visible_devices_environment(("1", "3"), host_has_gpus=True) == {
        "CUDA_VISIBLE_DEVICES": "1,3",
        "NVIDIA_VISIBLE_DEVICES": "1,3",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    assert visible_devices_environment((), host_has_gpus=True) == {
        "CUDA_VISIBLE_DEVICES": "",
        "NVIDIA_VISIBLE_DEVICES": "none",
    }
    assert visible_devices_environment((), host_has_gpus=False) == {}
