"""The render pipeline as AWS Batch requests: a render array over the frames, then one stitch job.

`kiln render` is a client like any other (architecture: render talks to the server only through
the public API), so everything here is plain boto3 calls a user could make themselves; the pure
parts (frame ranges, array sizing, commands) are separate functions so they are tested without a
server.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.executors.images import RENDER_IMAGE

DEFINITION_NAME = "kiln-render"
DEFAULT_QUEUE = "kiln-render"
# The reference workshop's job definition command: the same definition runs on AWS and on Kiln.
WORKSHOP_COMMAND = ["Ref::action", "-i", "Ref::inputUri", "-o", "Ref::outputUri", "-f", "Ref::framesPerJob"]
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MIB = 2048  # Pottery at 25 % peaks near 500 MiB; raise it for full-size production scenes
RETRY_ATTEMPTS = 3
MAX_ARRAY_SIZE = 10_000  # AWS's limit
_FRAMES = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class PlanError(ValueError):
    """The request cannot become a pipeline (bad range, too many jobs); the message says how to fix it."""


@dataclass(frozen=True)
class RenderPlan:
    """What to render and where: enough to build both jobs' commands."""

    scene_uri: str
    output_uri: str
    frames: range
    frames_per_job: int
    frames_flag_given: bool = False
    resolution_percent: int | None = None
    samples: int | None = None
    pack_uri: str | None = None  # the scene packed with what it uses (kiln.render.packing): what jobs read

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    @property
    def slices(self) -> int:
        """Array children: ceil(frames / framesPerJob), as the workshop sizes its array."""
        return math.ceil(self.frame_count / self.frames_per_job)

    @property
    def frames_uri(self) -> str:
        return f"{self.output_uri.rstrip('/')}/frames"

    @property
    def packs_uri(self) -> str:
        """Where scene packs go unless the user names a store: beside the frames they make."""
        return f"{self.output_uri.rstrip('/')}/packs"

    @property
    def video_uri(self) -> str:
        return f"{self.output_uri.rstrip('/')}/output.mp4"

    def render_command(self) -> list[str]:
        """The worker's `render` command line; `-t` makes a stale frame count fail loudly in the job."""
        scene = self.pack_uri or self.scene_uri
        command = ["render", "-i", scene, "-o", self.output_uri, "-f", str(self.frames_per_job)]
        command += ["-t", str(self.frame_count)]
        if self.frames_flag_given:
            command += ["--frame-start", str(self.frames.start), "--frame-end", str(self.frames[-1])]
        if self.resolution_percent is not None:
            command += ["--resolution-percent", str(self.resolution_percent)]
        if self.samples is not None:
            command += ["--samples", str(self.samples)]
        return command

    def stitch_command(self) -> list[str]:
        return ["stitch", "-i", self.output_uri, "-o", self.output_uri]


def parse_frames(text: str) -> tuple[int, int]:
    """`A-B` or `A` (Blender frame numbers may be negative: `-5--1`)."""
    match = _FRAMES.match(text)
    if not match:
        raise PlanError(f"--frames {text!r} is not a frame range: write A-B (for example 1-24) or one frame")
    first = int(match.group(1))
    last = first if match.group(2) is None else int(match.group(2))
    if last < first:
        raise PlanError(f"--frames {text!r} ends before it starts")
    return first, last


def frames_to_render(scene_frames: range, wanted: tuple[int, int] | None) -> range:
    """The scene's frames, or the part `--frames` asks for, with the scene's frame step."""
    if wanted is None:
        return scene_frames
    first, last = wanted
    scene_first = scene_frames.start
    scene_last = scene_frames[-1] if scene_frames else scene_first
    if not scene_first <= first <= last <= scene_last:
        raise PlanError(f"--frames {first}-{last} is outside the scene's frames {scene_first}-{scene_last}")
    return range(first, last + 1, scene_frames.step)


def check_array_size(plan: RenderPlan) -> None:
    if plan.slices > MAX_ARRAY_SIZE:
        needed = math.ceil(plan.frame_count / MAX_ARRAY_SIZE)
        raise PlanError(
            f"{plan.frame_count} frames at {plan.frames_per_job} per job need {plan.slices} jobs, but an array "
            f"holds at most {MAX_ARRAY_SIZE:,}: use --frames-per-job {needed} or more"
        )


def storage_uri(text: str) -> str:
    """A URI every job can open: URIs stay as they are; a local path becomes absolute.

    Jobs run in their own working directory, so `scene.blend` relative to the user's shell would
    not be found. Absolute plain paths (not `file://`) because they need no percent-encoding.
    """
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def job_base_name(scene_uri: str) -> str:
    """A job-name-safe stem of the scene's file name (AWS allows letters, digits, `-` and `_`)."""
    stem = scene_uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gz").removesuffix(".blend")
    safe = _NAME_UNSAFE.sub("-", stem).strip("-_")[:100]
    return safe or "scene"


def render_definition(name: str = DEFINITION_NAME, job_role_arn: str | None = None) -> dict[str, Any]:
    """The workshop's job definition, on Kiln's render image and with modest default resources
    (and the role whose credentials its jobs get, e.g. for S3, when one is given)."""
    resources = [{"type": "VCPU", "value": str(DEFAULT_VCPUS)}, {"type": "MEMORY", "value": str(DEFAULT_MEMORY_MIB)}]
    container: dict[str, Any] = {"image": RENDER_IMAGE, "command": WORKSHOP_COMMAND, "resourceRequirements": resources}
    if job_role_arn:
        container["jobRoleArn"] = job_role_arn
    return {
        "jobDefinitionName": name,
        "type": "container",
        "containerProperties": container,
        "retryStrategy": {"attempts": RETRY_ATTEMPTS},
        "platformCapabilities": ["EC2"],
    }


def ensure_definition(batch: Any, name: str = DEFINITION_NAME, job_role_arn: str | None = None) -> tuple[str, bool]:
    """`name:revision` of an ACTIVE render definition, registering one when none fits.

    A revision fits when it runs the render image with the workshop's command and the role asked
    for (none: any); its resources and retries may have been tuned by the user and are kept.
    Returns (definition, registered now).
    """
    found = batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")["jobDefinitions"]
    for definition in sorted(found, key=lambda item: int(item["revision"]), reverse=True):
        container = definition.get("containerProperties", {})
        if (
            container.get("image") == RENDER_IMAGE
            and container.get("command") == WORKSHOP_COMMAND
            and (job_role_arn is None or container.get("jobRoleArn") == job_role_arn)
        ):
            return f"{name}:{definition['revision']}", False
    registered = batch.register_job_definition(**render_definition(name, job_role_arn))
    return f"{name}:{registered['revision']}", True


def ensure_queue(batch: Any, queue: str, max_vcpus: int | None = None) -> bool:
    """Make sure `queue` exists and is usable; create it (and a MANAGED CE) when missing.

    Returns whether it was created. The CE is named `<queue>-ce` and may use every core of this
    machine (`maxvCpus` = CPU count), since Kiln's capacity is the host the server runs on.
    """
    existing = batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
    if existing:
        state = existing[0].get("state")
        if state != "ENABLED":
            raise PlanError(f"job queue {queue} is {state}: enable it or pick another with --queue")
        return False
    environment = f"{queue}-ce"[:128]
    if not batch.describe_compute_environments(computeEnvironments=[environment])["computeEnvironments"]:
        batch.create_compute_environment(
            computeEnvironmentName=environment,
            type="MANAGED",
            computeResources={
                "type": "EC2",
                "instanceRole": "ecsInstanceRole",
                "maxvCpus": max_vcpus or os.cpu_count() or 1,
            },
        )
    _wait_valid(lambda: batch.describe_compute_environments(computeEnvironments=[environment])["computeEnvironments"])
    batch.create_job_queue(
        jobQueueName=queue, priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}]
    )
    _wait_valid(lambda: batch.describe_job_queues(jobQueues=[queue])["jobQueues"])
    return True


def _wait_valid(describe: Any, timeout: float = 60.0) -> None:
    """Kiln makes resources VALID at once; AWS says CREATING first, so a client waits (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = describe()
        if found and found[0].get("status") == "VALID":
            return
        time.sleep(0.5)
    raise PlanError("the compute environment or job queue did not become VALID within a minute")


@dataclass(frozen=True)
class SubmittedPipeline:
    """The two jobs `kiln render` submitted."""

    render_id: str
    stitch_id: str
    render_name: str
    stitch_name: str
    slices: int


def resource_overrides(vcpus: float | None, memory_mib: int | None, gpus: int = 0) -> list[dict[str, str]]:
    requirements = []
    if vcpus is not None:
        requirements.append({"type": "VCPU", "value": f"{vcpus:g}"})
    if memory_mib is not None:
        requirements.append({"type": "MEMORY", "value": str(memory_mib)})
    if gpus:
        requirements.append({"type": "GPU", "value": str(gpus)})  # Cycles then renders on them (docs/gpus.md)
    return requirements


def parse_license(text: str) -> tuple[str, int]:
    """`NAME` or `NAME:QUANTITY` of `--license`: a consumable resource each render job takes."""
    name, colon, quantity = text.rpartition(":")
    if not colon or not quantity.isdigit():  # no quantity (a resource ARN holds colons of its own)
        name, quantity = text, "1"
    if not name or int(quantity) < 1:
        raise PlanError(f"--license {text!r}: write NAME or NAME:QUANTITY (a whole number of 1 or more)")
    return name, int(quantity)


def submit_pipeline(
    batch: Any,
    plan: RenderPlan,
    *,
    queue: str,
    definition: str,
    vcpus: float | None = None,
    memory_mib: int | None = None,
    gpus: int = 0,
    licenses: Sequence[tuple[str, int]] = (),
) -> SubmittedPipeline:
    """The render job (an array only when it has more than one slice: AWS rejects size 1), then the
    stitch job, which waits for the whole array (`dependsOn` the parent, no type)."""
    base = job_base_name(plan.scene_uri)
    render_overrides: dict[str, Any] = {"command": plan.render_command()}
    resources = resource_overrides(vcpus, memory_mib, gpus)
    if resources:
        render_overrides["resourceRequirements"] = resources
    render_request: dict[str, Any] = {
        "jobName": f"{base}-render",
        "jobQueue": queue,
        "jobDefinition": definition,
        "containerOverrides": render_overrides,
    }
    if plan.slices > 1:
        render_request["arrayProperties"] = {"size": plan.slices}
    if licenses:  # consumable resources: each render job waits until it can take them (the stitch needs none)
        render_request["consumableResourcePropertiesOverride"] = {
            "consumableResourceList": [{"consumableResource": name, "quantity": count} for name, count in licenses]
        }
    render = batch.submit_job(**render_request)
    stitch = batch.submit_job(
        jobName=f"{base}-stitch",
        jobQueue=queue,
        jobDefinition=definition,
        dependsOn=[{"jobId": render["jobId"]}],
        containerOverrides={"command": plan.stitch_command()},
    )
    return SubmittedPipeline(render["jobId"], stitch["jobId"], render["jobName"], stitch["jobName"], plan.slices)
