"""The render pipeline as Batch requests, as `kiln render` submits it (kiln/cli/render_pipeline.py).

The add-on runs inside Blender without Kiln installed, so the job shapes are written here again:
a render job over the frames (an array of ceil(frames / framesPerJob) children when more than
one), then a stitch job that depends on it, both on the workshop's job definition
(`Ref::action -i Ref::inputUri -o Ref::outputUri -f Ref::framesPerJob`) with the command
overridden. A unit test checks these commands and requests against `kiln render`'s own.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from .batch_api import BatchClient, KilnError

DEFINITION_NAME = "kiln-render"
DEFAULT_QUEUE = "kiln-render"
RENDER_IMAGE = "kiln/render"
WORKSHOP_COMMAND = ["Ref::action", "-i", "Ref::inputUri", "-o", "Ref::outputUri", "-f", "Ref::framesPerJob"]
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MIB = 2048
RETRY_ATTEMPTS = 3
MAX_ARRAY_SIZE = 10_000
VIDEO_NAME = "output.mp4"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Plan:
    """What to render and where (RenderPlan's fields, as the add-on fills them)."""

    scene_uri: str  # the artist's file: names the jobs
    output_uri: str
    frames: range
    frames_per_job: int
    frames_given: bool  # a range other than the scene's: passed as --frame-start/--frame-end
    resolution_percent: int | None = None
    samples: int | None = None
    pack_uri: str | None = None

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    @property
    def slices(self) -> int:
        return math.ceil(self.frame_count / self.frames_per_job)

    @property
    def frames_uri(self) -> str:
        return f"{self.output_uri.rstrip('/')}/frames"

    @property
    def packs_uri(self) -> str:
        return f"{self.output_uri.rstrip('/')}/packs"

    @property
    def video_uri(self) -> str:
        return f"{self.output_uri.rstrip('/')}/{VIDEO_NAME}"

    def render_command(self) -> list[str]:
        command = ["render", "-i", self.pack_uri or self.scene_uri, "-o", self.output_uri]
        command += ["-f", str(self.frames_per_job), "-t", str(self.frame_count)]
        if self.frames_given:
            command += ["--frame-start", str(self.frames.start), "--frame-end", str(self.frames[-1])]
        if self.resolution_percent is not None:
            command += ["--resolution-percent", str(self.resolution_percent)]
        if self.samples is not None:
            command += ["--samples", str(self.samples)]
        return command

    def stitch_command(self) -> list[str]:
        return ["stitch", "-i", self.output_uri, "-o", self.output_uri]

    def check(self) -> None:
        if self.frame_count < 1:
            raise KilnError(f"the frame range {self.frames.start}-{self.frames.stop - 1} has no frames")
        if self.slices > MAX_ARRAY_SIZE:
            needed = math.ceil(self.frame_count / MAX_ARRAY_SIZE)
            raise KilnError(
                f"{self.frame_count} frames at {self.frames_per_job} per job need {self.slices} jobs, but an "
                f"array holds at most {MAX_ARRAY_SIZE:,}: set Frames per Job to {needed} or more"
            )


@dataclass(frozen=True)
class Submitted:
    render_id: str
    stitch_id: str
    slices: int


def job_base_name(scene_uri: str) -> str:
    stem = scene_uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gz").removesuffix(".blend")
    safe = _NAME_UNSAFE.sub("-", stem).strip("-_")[:100]
    return safe or "scene"


def render_definition(name: str = DEFINITION_NAME) -> dict[str, Any]:
    resources = [{"type": "VCPU", "value": str(DEFAULT_VCPUS)}, {"type": "MEMORY", "value": str(DEFAULT_MEMORY_MIB)}]
    return {
        "jobDefinitionName": name,
        "type": "container",
        "containerProperties": {"image": RENDER_IMAGE, "command": WORKSHOP_COMMAND, "resourceRequirements": resources},
        "retryStrategy": {"attempts": RETRY_ATTEMPTS},
        "platformCapabilities": ["EC2"],
    }


def ensure_definition(batch: BatchClient, name: str) -> str:
    """`name:revision` of the newest ACTIVE revision that runs the workshop's command.

    On Kiln, the default `kiln-render` is registered (image kiln/render) when none exists, as
    `kiln render` does; a definition named by the artist (the workshop's, on AWS) must exist.
    """
    found = batch.call("DescribeJobDefinitions", {"jobDefinitionName": name, "status": "ACTIVE"})["jobDefinitions"]
    fitting = [item for item in found if item.get("containerProperties", {}).get("command") == WORKSHOP_COMMAND]
    if fitting:
        newest = max(fitting, key=lambda item: int(item["revision"]))
        return f"{name}:{newest['revision']}"
    if name != DEFINITION_NAME:
        what = (
            "has no ACTIVE revision"
            if not found
            else "does not run the workshop's command " + " ".join(WORKSHOP_COMMAND)
        )
        raise KilnError(
            f"the job definition {name} {what}: register it, or leave the job definition at {DEFINITION_NAME}"
        )
    registered = batch.call("RegisterJobDefinition", render_definition(name))
    return f"{name}:{registered['revision']}"


def ensure_queue(batch: BatchClient, queue: str) -> bool:
    """Check that `queue` exists and is ENABLED; the default queue is created when missing, as
    `kiln render` creates it (with a compute environment `<queue>-ce`). Returns whether it was created."""
    existing = batch.call("DescribeJobQueues", {"jobQueues": [queue]})["jobQueues"]
    if existing:
        state = existing[0].get("state")
        if state != "ENABLED":
            raise KilnError(f"the job queue {queue} is {state}: enable it, or pick another job queue in the Kiln panel")
        return False
    if queue != DEFAULT_QUEUE:
        names = sorted(item["jobQueueName"] for item in batch.call("DescribeJobQueues", {})["jobQueues"])
        known = f"the server has {', '.join(names)}" if names else "the server has none"
        raise KilnError(
            f"the job queue {queue} does not exist on {batch.connection.endpoint} ({known}): pick one in the Kiln "
            f"panel, or use {DEFAULT_QUEUE}, which the add-on creates when missing"
        )
    environment = f"{queue}-ce"[:128]
    found = batch.call("DescribeComputeEnvironments", {"computeEnvironments": [environment]})["computeEnvironments"]
    if not found:
        batch.call(
            "CreateComputeEnvironment",
            {
                "computeEnvironmentName": environment,
                "type": "MANAGED",
                "computeResources": {"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": os.cpu_count() or 1},
            },
        )
    _wait_valid(batch, "DescribeComputeEnvironments", {"computeEnvironments": [environment]}, "computeEnvironments")
    batch.call(
        "CreateJobQueue",
        {
            "jobQueueName": queue,
            "priority": 1,
            "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": environment}],
        },
    )
    _wait_valid(batch, "DescribeJobQueues", {"jobQueues": [queue]}, "jobQueues")
    return True


def _wait_valid(batch: BatchClient, operation: str, params: dict[str, Any], key: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = batch.call(operation, params)[key]
        if found and found[0].get("status") == "VALID":
            return
        time.sleep(0.5)
    raise KilnError("the compute environment or job queue did not become VALID within a minute")


def render_request(plan: Plan, queue: str, definition: str) -> dict[str, Any]:
    request: dict[str, Any] = {
        "jobName": f"{job_base_name(plan.scene_uri)}-render",
        "jobQueue": queue,
        "jobDefinition": definition,
        "containerOverrides": {"command": plan.render_command()},
    }
    if plan.slices > 1:
        request["arrayProperties"] = {"size": plan.slices}
    return request


def stitch_request(plan: Plan, queue: str, definition: str, render_id: str) -> dict[str, Any]:
    return {
        "jobName": f"{job_base_name(plan.scene_uri)}-stitch",
        "jobQueue": queue,
        "jobDefinition": definition,
        "dependsOn": [{"jobId": render_id}],
        "containerOverrides": {"command": plan.stitch_command()},
    }


def submit(batch: BatchClient, plan: Plan, queue: str, definition: str) -> Submitted:
    render = batch.call("SubmitJob", render_request(plan, queue, definition))
    stitch = batch.call("SubmitJob", stitch_request(plan, queue, definition, render["jobId"]))
    return Submitted(render["jobId"], stitch["jobId"], plan.slices)


@dataclass(frozen=True)
class Progress:
    """One look at the pipeline: frames done of the total, failed render jobs, the stitch's state."""

    frames_done: int
    frames_total: int
    failed_jobs: int
    render_status: str
    stitch_status: str
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.stitch_status in ("SUCCEEDED", "FAILED") or (
            self.render_status == "FAILED" and self.stitch_status not in ("RUNNING", "STARTING")
        )

    @property
    def succeeded(self) -> bool:
        return self.stitch_status == "SUCCEEDED"

    @property
    def percent(self) -> float:
        """Frames done as a percentage; 100 only once the video is stitched."""
        if self.succeeded:
            return 100.0
        share = self.frames_done / self.frames_total if self.frames_total else 0.0
        return min(99.0, 100.0 * share)


def look(batch: BatchClient, jobs: Submitted, plan: Plan, frames_seen: int | None) -> Progress:
    """DescribeJobs of both jobs; `frames_seen` counts frames in the output where it can be listed,
    else the array's succeeded children times frames per job stand in."""
    found = {
        job["jobId"]: job for job in batch.call("DescribeJobs", {"jobs": [jobs.render_id, jobs.stitch_id]})["jobs"]
    }
    render, stitch = found.get(jobs.render_id), found.get(jobs.stitch_id)
    if render is None or stitch is None:
        raise KilnError(f"the server no longer knows the jobs {jobs.render_id} and {jobs.stitch_id}")
    summary = render.get("arrayProperties", {}).get("statusSummary")
    if summary is None:
        reported = plan.frame_count if render["status"] == "SUCCEEDED" else 0
        failed = 1 if render["status"] == "FAILED" else 0
    else:
        reported = min(plan.frame_count, int(summary.get("SUCCEEDED", 0)) * plan.frames_per_job)
        failed = int(summary.get("FAILED", 0))
    done = reported if frames_seen is None else max(frames_seen, 0)
    reason = ""
    if render["status"] == "FAILED":
        reason = str(render.get("statusReason") or "a render job failed")
    elif stitch["status"] == "FAILED":
        reason = str(stitch.get("statusReason") or "the stitch job failed")
    return Progress(min(done, plan.frame_count), plan.frame_count, failed, render["status"], stitch["status"], reason)


def cancel(batch: BatchClient, jobs: Submitted, reason: str = "cancelled from Blender") -> None:
    """TerminateJob on both jobs (the array's children go with their parent)."""
    for job_id in (jobs.render_id, jobs.stitch_id):
        batch.call("TerminateJob", {"jobId": job_id, "reason": reason})


def published_frames(names: list[str]) -> set[int]:
    frames = set()
    for name in names:
        stem, dot, suffix = name.rpartition(".")
        if dot and suffix == "png" and stem.lstrip("-").isdigit():
            frames.add(int(stem))
    return frames


def dashboard_url(endpoint: str, job_id: str) -> str:
    return f"{endpoint.rstrip('/')}/ui/#/jobs/{job_id}"
