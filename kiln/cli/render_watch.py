"""Watch a submitted render pipeline: a progress bar of frames, the jobs' states, failures as they happen.

Frames are counted where the worker publishes them (`OUTPUT/frames/NNNN.png`, through fsspec), so
the bar moves frame by frame even with many frames per job. When that listing is not possible from
here (an `s3://` output without credentials on this side), the array's `statusSummary` times the
frames per job is the estimate. Watching only reads: interrupting it leaves the jobs alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from kiln.cli.render_pipeline import RenderPlan, SubmittedPipeline
from kiln.cli.render_relay import RelayMirror

POLL_SECONDS = 0.5
STITCH_POLL_SECONDS = 0.1  # the stitch job is short: its end is noticed sooner
DEPENDENT_GRACE_SECONDS = 5.0
SERVER_GONE_SECONDS = 30.0  # API errors for this long in a row mean the server is gone
TERMINAL = ("SUCCEEDED", "FAILED")
STATE_ORDER = ("SUCCEEDED", "RUNNING", "STARTING", "RUNNABLE", "PENDING", "SUBMITTED", "FAILED")
STATE_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "RUNNING": "cyan", "STARTING": "cyan", "RUNNABLE": "yellow"}


class ServerGoneError(RuntimeError):
    """The server stopped answering while the jobs were being watched."""


@dataclass(frozen=True)
class Outcome:
    """How the pipeline ended: `failed` is the job to blame (a failed array child, not its parent)."""

    succeeded: bool
    render: dict[str, Any]
    stitch: dict[str, Any]
    failed: dict[str, Any] | None
    frames: FrameCount
    elapsed_seconds: float


@dataclass(frozen=True)
class FrameCount:
    """What the watcher knows of the frames, kept apart so that no line claims what it did not see:
    `seen` are in the output folder as listed from here (None: it cannot be listed, `listing_error`
    says why), `reported` are implied by render jobs that succeeded. On a cluster whose nodes share
    no disk with this machine, jobs may report frames that are not where the user looks."""

    seen: int | None
    reported: int
    listing_error: str | None = None

    @property
    def shown(self) -> int:
        """What the progress bar counts: frames seen, or what the jobs report when nothing can be seen."""
        return self.reported if self.seen is None else self.seen

    @property
    def unit(self) -> str:
        return "frames" if self.seen is not None else "frames (as the jobs report: the output cannot be listed)"


@dataclass
class FrameCounter:
    """Frames of the plan published in the output; gives up listing after the first storage error."""

    plan: RenderPlan
    listing_error: str | None = None
    wanted: frozenset[int] = field(init=False)
    folder: str = ""  # where frames are counted: the plan's frames, or the local copy of the relay's

    def __post_init__(self) -> None:
        self.wanted = frozenset(self.plan.frames)
        self.folder = self.folder or self.plan.frames_uri

    def count(self, render: dict[str, Any]) -> FrameCount:
        reported = estimate_from_jobs(render, self.plan)
        if self.listing_error is None:
            try:
                from kiln.render.uris import list_files

                names = list_files(self.folder)
            except Exception as error:  # any storage failure (credentials, network): stop listing
                self.listing_error = str(error) or type(error).__name__
            else:
                return FrameCount(len(published_frames(names) & self.wanted), reported)
        return FrameCount(None, reported, self.listing_error)


def published_frames(names: Iterable[str]) -> set[int]:
    """Frame numbers of `NNNN.png` names (`-0001.png` is frame -1); other files are ignored."""
    frames = set()
    for name in names:
        stem, dot, suffix = name.rpartition(".")
        if dot and suffix == "png" and stem.lstrip("-").isdigit():
            frames.add(int(stem))
    return frames


def estimate_from_jobs(render: dict[str, Any], plan: RenderPlan) -> int:
    """Frames implied by finished render jobs (a lower bound: the last slice may be shorter)."""
    summary = render.get("arrayProperties", {}).get("statusSummary")
    if summary is None:
        return plan.frame_count if render["status"] == "SUCCEEDED" else 0
    return min(plan.frame_count, int(summary.get("SUCCEEDED", 0)) * plan.frames_per_job)


def describe_states(render: dict[str, Any], stitch: dict[str, Any]) -> Text:
    """`render: 2 RUNNING · 5 SUCCEEDED · 17 RUNNABLE   stitch: PENDING`, coloured."""
    line = Text("render: ", style="bold")
    summary = render.get("arrayProperties", {}).get("statusSummary")
    if summary is None:
        line.append(render["status"], style=STATE_STYLE.get(render["status"], ""))
    else:
        parts = [(state, int(summary.get(state, 0))) for state in STATE_ORDER if int(summary.get(state, 0))]
        for position, (state, count) in enumerate(parts):
            line.append(" · " if position else "")
            line.append(f"{count} {state}", style=STATE_STYLE.get(state, ""))
    line.append("   stitch: ", style="bold")
    line.append(stitch["status"], style=STATE_STYLE.get(stitch["status"], ""))
    reason = _waiting_reason(render) or _waiting_reason(stitch)
    if reason:
        line.append(f"\n{reason}", style="yellow")
    return line


def _waiting_reason(job: dict[str, Any]) -> str:
    """A RUNNABLE job's diagnostic (`MISCONFIGURATION:...`): it will never start as things are."""
    reason = str(job.get("statusReason") or "")
    return reason if job["status"] == "RUNNABLE" and reason.startswith("MISCONFIGURATION") else ""


class _PipelineProgress(Progress):
    """A frames bar with the jobs' states on the line below it."""

    states: Text = Text("")

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self.states


def watch(
    batch: Any, jobs: SubmittedPipeline, plan: RenderPlan, console: Console, mirror: RelayMirror | None = None
) -> Outcome:
    """Poll until the pipeline ends; KeyboardInterrupt propagates (the caller explains what keeps running).

    With a `mirror`, the frames the jobs put in the relay are copied back on each poll, and what is
    counted is the local copy: what this machine has, not what the server holds.
    """
    started = time.monotonic()
    counter = FrameCounter(plan, folder=str(mirror.local / "frames")) if mirror else FrameCounter(plan)
    reporter = ChildFailureReporter(batch, jobs, console)
    progress = _new_progress(console)
    with progress:
        task: TaskID = progress.add_task("rendering", total=plan.frame_count, unit="frames")
        render_failed_at: float | None = None
        while True:
            render, stitch = _describe_both(batch, jobs)
            if mirror is not None:
                _copy_back(mirror, console)
            frames = counter.count(render)
            progress.states = describe_states(render, stitch)
            progress.update(task, completed=frames.shown, description=_phase(render, stitch), unit=frames.unit)
            reporter.report_new_failures(render)
            if stitch["status"] in TERMINAL:
                break
            if render["status"] == "FAILED":
                # give the server a moment to fail the stitch job as a dependent, so the report can say so
                render_failed_at = render_failed_at or time.monotonic()
                if time.monotonic() - render_failed_at >= DEPENDENT_GRACE_SECONDS:
                    break
            time.sleep(STITCH_POLL_SECONDS if render["status"] == "SUCCEEDED" else POLL_SECONDS)
    failed = _blame(batch, render, stitch)
    return Outcome(failed is None, render, stitch, failed, frames, time.monotonic() - started)


def _copy_back(mirror: RelayMirror, console: Console) -> None:
    """One pass of the mirror; a failed pass is said and retried on the next poll."""
    try:
        mirror.sync()
    except Exception as error:  # storage or network: the jobs go on, the next pass catches up
        console.print(f"[yellow]warning:[/yellow] copying from {mirror.area_uri} failed: {escape(str(error))}")


def _new_progress(console: Console) -> _PipelineProgress:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
    )
    return _PipelineProgress(*columns, TimeElapsedColumn(), console=console)


def _phase(render: dict[str, Any], stitch: dict[str, Any]) -> str:
    if stitch["status"] == "SUCCEEDED":
        return "done"
    return "stitching" if render["status"] == "SUCCEEDED" else "rendering"


def _describe_both(batch: Any, jobs: SubmittedPipeline) -> tuple[dict[str, Any], dict[str, Any]]:
    """DescribeJobs for both jobs, riding out short API outages (a busy or restarting server)."""
    deadline = time.monotonic() + SERVER_GONE_SECONDS
    while True:
        try:
            found = {job["jobId"]: job for job in batch.describe_jobs(jobs=[jobs.render_id, jobs.stitch_id])["jobs"]}
            return found[jobs.render_id], found[jobs.stitch_id]
        except (BotoCoreError, ClientError, KeyError) as error:
            if time.monotonic() > deadline:
                raise ServerGoneError(f"the server stopped answering while watching the jobs ({error})") from None
            time.sleep(1.0)


@dataclass
class ChildFailureReporter:
    """Prints each array child that failed for good, once, as it happens (the rest keep rendering)."""

    batch: Any
    jobs: SubmittedPipeline
    console: Console
    seen_failed: int = 0
    reported: set[str] = field(default_factory=set)

    def report_new_failures(self, render: dict[str, Any]) -> None:
        summary = render.get("arrayProperties", {}).get("statusSummary")
        failed = int((summary or {}).get("FAILED", 0))
        if summary is None or failed <= self.seen_failed:
            return
        self.seen_failed = failed
        for child in failed_children(self.batch, self.jobs.render_id):
            if child["jobId"] not in self.reported:
                self.reported.add(child["jobId"])
                self.console.print(f"[red]failed:[/red] {escape(failure_line(child))}", soft_wrap=True)


def failed_children(batch: Any, array_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """Full descriptions of (up to `limit`) failed children of an array, lowest index first."""
    ids: list[str] = []
    for page in batch.get_paginator("list_jobs").paginate(arrayJobId=array_id, jobStatus="FAILED"):
        ids += [summary["jobId"] for summary in page["jobSummaryList"]]
    ids = sorted(ids, key=_child_index)[:limit]
    return list(batch.describe_jobs(jobs=ids)["jobs"]) if ids else []


def _child_index(job_id: str) -> int:
    _, _, index = job_id.rpartition(":")
    return int(index) if index.isdigit() else 0


def failure_line(job: dict[str, Any]) -> str:
    """`pottery-render[3] (id): Essential container in task exited — OutOfMemoryError: ... (exit 137), 3 attempts`."""
    index = job.get("arrayProperties", {}).get("index")
    name = job["jobName"] if index is None else f"{job['jobName']}[{index}]"
    reason = job.get("statusReason") or "no reason given"
    container = _last_container(job)
    detail = container.get("reason")
    exit_code = container.get("exitCode")
    attempts = len(job.get("attempts", []))
    text = f"{name} ({job['jobId']}): {reason}"
    if detail:
        text += f" — {detail}"
    if exit_code is not None:
        text += f" (exit code {exit_code})"
    if attempts:
        text += f", after {attempts} attempt{'s' if attempts != 1 else ''}"
    return text


def _last_container(job: dict[str, Any]) -> dict[str, Any]:
    attempts = job.get("attempts") or []
    if attempts and attempts[-1].get("container"):
        return dict(attempts[-1]["container"])
    return dict(job.get("container") or {})


def _blame(batch: Any, render: dict[str, Any], stitch: dict[str, Any]) -> dict[str, Any] | None:
    """The job whose failure explains the outcome: a failed render child, the render job, or the stitch."""
    if render["status"] == "FAILED":
        if "size" in render.get("arrayProperties", {}):
            children = failed_children(batch, render["jobId"], limit=1)
            if children:
                return children[0]
        return render
    if stitch["status"] == "FAILED":
        return stitch
    return None
