"""Screenshots of the dashboard's main pages for the docs (docs/img/*.png).

    python examples/screenshots.py [--out docs/img] [--scene path/to/scene.blend]

Starts a private `kiln server` (its own data dir under a temporary folder), fills it the way a
small render farm looks (a finished render pipeline, a 1,000-child array part way through, a
running job printing a log, a failed job), and photographs the pages with Debian's headless
Chromium through Playwright. The scene defaults to the workshop's Pottery in shared/data when it
is there, else the sample scene built in code. About two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from playwright.sync_api import Page, ViewportSize, sync_playwright

from kiln.cli.embedded_server import start_embedded_server
from kiln.cli.render_pipeline import RenderPlan, ensure_definition, ensure_queue, submit_pipeline

REPO = Path(__file__).resolve().parents[1]
POTTERY = Path("/work/shared/data/pottery.blend")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise SystemExit(f"gave up waiting for {what} after {timeout:.0f} s")


def status_of(batch: Any, job_id: str) -> str:
    return str(batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"])


def sample_scene(folder: Path) -> Path:
    path = folder / "sample.blend"
    subprocess.run([sys.executable, "-m", "kiln", "sample-scene", str(path), "--frames", "8"], check=True)
    return path


def shell_definition(batch: Any, name: str, script: str) -> str:
    container = {"image": "host", "command": ["sh", "-c", script],
                 "resourceRequirements": [{"type": "VCPU", "value": "0.25"}, {"type": "MEMORY", "value": "64"}],
                 "environment": [{"name": "FARM", "value": "kiln-demo"}]}  # fmt: skip
    revision = batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties=container)
    return f"{name}:{revision['revision']}"


def populate(batch: Any, work: Path, scene: Path) -> dict[str, str]:
    """Jobs worth looking at; returns the ids the screenshots open."""
    ensure_queue(batch, "kiln-render", max_vcpus=2)
    definition, _ = ensure_definition(batch)
    plan = RenderPlan(str(scene), str(work / "render"), range(1, 9), 2, frames_flag_given=True,
                      resolution_percent=20, samples=8)  # fmt: skip
    pipeline = submit_pipeline(batch, plan, queue="kiln-render", definition=definition, memory_mib=1024)
    print("rendering 8 frames of", scene.name, "...", flush=True)
    wait_until(lambda: status_of(batch, pipeline.stitch_id) in ("SUCCEEDED", "FAILED"), 600, "the render pipeline")

    batch.create_compute_environment(computeEnvironmentName="shell-ce", type="MANAGED",
                                     computeResources={"type": "EC2", "instanceRole": "ecsInstanceRole", "maxvCpus": 2})  # fmt: skip
    wait_until(lambda: batch.describe_compute_environments(computeEnvironments=["shell-ce"])["computeEnvironments"]
               [0]["status"] == "VALID", 30, "the compute environment")  # fmt: skip
    batch.create_job_queue(jobQueueName="shell", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "shell-ce"}])  # fmt: skip
    wait_until(lambda: batch.describe_job_queues(jobQueues=["shell"])["jobQueues"][0]["status"] == "VALID", 30, "queue")
    gate = work / "gate"
    gate.mkdir()
    for index in range(1000):  # children 0..419 may finish (a few of them fail); the rest wait
        if index < 420:
            (gate / str(index)).write_text("3" if index % 97 == 13 else "0")
    waiter = shell_definition(batch, "wait-for-gate", f"for i in $(seq 1 900); do [ -e {gate}/$AWS_BATCH_JOB_ARRAY_INDEX ] "
                              f"&& exit $(cat {gate}/$AWS_BATCH_JOB_ARRAY_INDEX); sleep 0.2; done; exit 1")  # fmt: skip
    failing = shell_definition(
        batch, "fetch-assets", "echo fetching s3://assets/pottery.tar; echo 'error: 403 Forbidden' >&2; exit 3"
    )
    batch.submit_job(jobName="fetch-assets", jobQueue="shell", jobDefinition=failing, retryStrategy={"attempts": 2})
    ticker = shell_definition(
        batch,
        "encoder",
        'for i in $(seq 1 900); do echo "[encode] segment $i/900 done ($((i * 7 % 100)) fps)"; sleep 0.5; done',
    )
    encoder = batch.submit_job(jobName="encode-preview", jobQueue="shell", jobDefinition=ticker)["jobId"]
    array = batch.submit_job(jobName="frames-qc", jobQueue="shell", jobDefinition=waiter, arrayProperties={"size": 1000},
                             retryStrategy={"attempts": 1})["jobId"]  # fmt: skip
    print("waiting for the array to make progress ...", flush=True)
    wait_until(lambda: batch.describe_jobs(jobs=[array])["jobs"][0]["arrayProperties"]["statusSummary"]["SUCCEEDED"]
               >= 380, 300, "the array")  # fmt: skip
    return {"render": pipeline.render_id, "stitch": pipeline.stitch_id, "array": array, "encoder": encoder}


def shoot(
    page: Page, endpoint: str, route: str, path: Path, ready: str, scroll_to: str | None = None, full_page: bool = False
) -> None:
    page.goto(f"{endpoint}/ui/{route}")
    page.wait_for_selector(ready, timeout=60_000)
    page.wait_for_timeout(2500)  # a couple of refreshes: counters and logs settle
    if scroll_to:
        page.evaluate(f"document.querySelector({scroll_to!r}).scrollIntoView({{block: 'start'}})")
        page.evaluate("window.scrollBy(0, -60)")  # below the sticky top bar
    page.screenshot(path=str(path), full_page=full_page)
    print("wrote", path.relative_to(REPO) if path.is_relative_to(REPO) else path, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--scene", type=Path, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-screenshots-") as scratch:
        work = Path(scratch)
        scene = args.scene or (POTTERY if POTTERY.is_file() else sample_scene(work))
        server = start_embedded_server(work / "data")
        try:
            batch = boto3.client("batch", endpoint_url=server.endpoint, region_name="us-east-1",
                                 aws_access_key_id="kiln", aws_secret_access_key="kiln")  # fmt: skip
            jobs = populate(batch, work, scene)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                shoot(page, server.endpoint, "#/", args.out / "overview.png", ".card")
                shoot(page, server.endpoint, "#/jobs", args.out / "jobs.png", "tr[data-job]")
                shoot(
                    page, server.endpoint, f"#/jobs/{jobs['encoder']}", args.out / "job-log.png", "pre.log:not(:empty)"
                )
                shoot(page, server.endpoint, f"#/jobs/{jobs['array']}", args.out / "array.png", "#array-grid",
                      scroll_to="#array-grid")  # fmt: skip
                shoot(page, server.endpoint, f"#/jobs/{jobs['render']}", args.out / "render.png", "#render-video",
                      full_page=True)  # fmt: skip
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
