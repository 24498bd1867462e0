"""The dashboard in a real browser: live log, cancel from the page, a 1,000-child array grid."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.conftest import KilnServer
from tests.support import make_queue, register_shell, submit, unique, wait_for

from .conftest import open_ui

# The colours the grid paints (kiln/web/static/app.js STATUS_COLOURS).
RUNNING_COLOUR, SUCCEEDED_COLOUR, RUNNABLE_COLOUR = "#2f6fdf", "#2e9e5b", "#e0a526"
CELL_COLOUR_JS = """(index) => {
  const canvas = document.getElementById("array-grid");
  const {cell, gap, columns, ratio} = canvas.dataset;
  const step = Number(cell) + Number(gap);
  const x = Math.floor(((index % columns) * step + cell / 2) * ratio);
  const y = Math.floor((Math.floor(index / columns) * step + cell / 2) * ratio);
  const [r, g, b] = canvas.getContext("2d").getImageData(x, y, 1, 1).data;
  return "#" + [r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("");
}"""


GRID_READY_JS = """() => {
  const canvas = document.getElementById("array-grid");
  return canvas !== null && Number(canvas.dataset.columns) > 0 && Number(canvas.dataset.ratio) > 0;
}"""


def cell_colour(page: Page, index: int) -> str:
    page.wait_for_function(GRID_READY_JS, timeout=10_000)  # visible before its first paint sets the geometry
    return str(page.evaluate(CELL_COLOUR_JS, index))


def wait_cell(page: Page, index: int, colour: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = cell_colour(page, index)
        if seen == colour:
            return
        time.sleep(0.2)
    raise AssertionError(f"cell {index} is {seen}, not {colour}, after {timeout} s")


def test_the_overview_lists_queues_and_capacity_in_use(page: Page, ui_server: KilnServer, ui_batch: Any) -> None:
    queue = make_queue(ui_batch, max_vcpus=2)
    definition = register_shell(ui_batch, "sleep 30", memory=96)
    job = submit(ui_batch, queue, definition)
    try:
        wait_for(ui_batch, job, {"RUNNING"})
        open_ui(page, ui_server)
        expect(page.locator("td", has_text=queue)).to_be_visible()
        environment = ui_batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["computeEnvironmentOrder"][0]
        card = page.locator(f"[data-ce='{environment['computeEnvironment'].rsplit('/', 1)[-1]}']")
        expect(card).to_contain_text("1 of 2")  # vCPUs held by the one running attempt, of maxvCpus
        expect(card).to_contain_text("96 MiB of")
        expect(card).to_contain_text("1 running attempt")
    finally:
        ui_batch.terminate_job(jobId=job, reason="test over")


def test_the_live_log_shows_lines_while_the_job_runs(page: Page, ui_server: KilnServer, ui_batch: Any) -> None:
    queue = make_queue(ui_batch)
    definition = register_shell(ui_batch, "for i in $(seq 1 300); do echo line-$i; sleep 0.2; done", memory=32)
    job = submit(ui_batch, queue, definition)
    try:
        open_ui(page, ui_server, f"#/jobs/{job}")
        log = page.locator("pre.log")
        expect(log).to_contain_text("line-3", timeout=20_000)
        expect(log).to_contain_text("line-12", timeout=20_000)  # more lines arrive without a reload
        assert ui_batch.describe_jobs(jobs=[job])["jobs"][0]["status"] == "RUNNING"
        text = log.inner_text()
        assert text.index("line-3\n") < text.index("line-12\n")
        assert "tailing" in page.locator(".log-bar").inner_text()
    finally:
        ui_batch.terminate_job(jobId=job, reason="test over")


def test_cancel_from_the_page_cancels_the_job(page: Page, ui_server: KilnServer, ui_batch: Any) -> None:
    queue = make_queue(ui_batch)
    blocker = submit(ui_batch, queue, register_shell(ui_batch, "sleep 60", memory=32))
    waiting = submit(ui_batch, queue, register_shell(ui_batch, "true", memory=32), dependsOn=[{"jobId": blocker}])
    try:
        wait_for(ui_batch, waiting, {"PENDING"})
        open_ui(page, ui_server, f"#/jobs/{waiting}")
        expect(page.locator("h1 .badge")).to_have_text("PENDING")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("[data-action=cancel]").click()
        expect(page.locator("h1 .badge")).to_have_text("FAILED", timeout=10_000)
        job = ui_batch.describe_jobs(jobs=[waiting])["jobs"][0]
        assert job["status"] == "FAILED"
        assert job["isCancelled"] is True
        assert job["statusReason"] == "Cancelled from the Kiln dashboard"
        assert ui_batch.describe_jobs(jobs=[blocker])["jobs"][0]["status"] == "RUNNING"  # only that job
    finally:
        ui_batch.terminate_job(jobId=blocker, reason="test over")


def test_retry_as_new_submits_the_same_resolved_job(page: Page, ui_server: KilnServer, ui_batch: Any) -> None:
    queue = make_queue(ui_batch)
    container = {"image": "host", "command": ["sh", "-c", 'echo "$0"', "Ref::word"],
                 "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "32"}]}  # fmt: skip
    name = unique("retry")
    ui_batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties=container,
                                     parameters={"word": "default"})  # fmt: skip
    definition = f"{name}:1"
    first = submit(ui_batch, queue, definition, parameters={"word": "again"}, retryStrategy={"attempts": 2})
    wait_for(ui_batch, first)
    open_ui(page, ui_server, f"#/jobs/{first}")
    expect(page.locator("pre.log")).to_contain_text("again")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("[data-action=retry]").click()
    page.wait_for_function(f"!location.hash.includes('{first}')")
    second = page.evaluate("decodeURIComponent(location.hash.split('/')[2])")
    assert second != first
    jobs = {job["jobId"]: job for job in ui_batch.describe_jobs(jobs=[first, second])["jobs"]}
    assert jobs[second]["jobQueue"] == jobs[first]["jobQueue"]
    assert jobs[second]["jobDefinition"] == jobs[first]["jobDefinition"]
    assert jobs[second]["container"]["command"] == ["sh", "-c", 'echo "$0"', "again"]  # after Ref:: substitution
    assert jobs[second]["retryStrategy"]["attempts"] == 2
    wait_for(ui_batch, second)
    expect(page.locator("pre.log")).to_contain_text("again", timeout=10_000)


def test_retry_as_new_resubmits_a_multi_container_job_by_container(
    page: Page, ui_server: KilnServer, ui_batch: Any
) -> None:
    """An ecsProperties job's page lists its containers, and "Retry as new job" overrides them by
    name (containerOverrides would be refused for such a definition)."""
    queue = make_queue(ui_batch)
    limits = [{"type": "VCPU", "value": "0.5"}, {"type": "MEMORY", "value": "32"}]
    containers = [
        {"name": "helper", "image": "host", "essential": False, "command": ["true"], "resourceRequirements": limits},
        {"name": "main", "image": "host", "command": ["echo", "Ref::word"], "resourceRequirements": limits},
    ]
    name = unique("retry-ecs")
    ui_batch.register_job_definition(jobDefinitionName=name, type="container", parameters={"word": "default"},
                                     ecsProperties={"taskProperties": [{"containers": containers}]})  # fmt: skip
    first = submit(ui_batch, queue, f"{name}:1", parameters={"word": "again"})
    wait_for(ui_batch, first)
    open_ui(page, ui_server, f"#/jobs/{first}")
    expect(page.locator("body")).to_contain_text("main (essential)")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("[data-action=retry]").click()
    page.wait_for_function(f"!location.hash.includes('{first}')")
    second = page.evaluate("decodeURIComponent(location.hash.split('/')[2])")
    job = ui_batch.describe_jobs(jobs=[second])["jobs"][0]
    commands = {c["name"]: c["command"] for c in job["ecsProperties"]["taskProperties"][0]["containers"]}
    assert commands == {"helper": ["true"], "main": ["echo", "again"]}  # the first job's, after Ref::
    assert wait_for(ui_batch, second)["status"] == "SUCCEEDED"


def test_retry_as_new_resubmits_a_pod_by_container(page: Page, ui_server: KilnServer, ui_batch: Any) -> None:
    """An eksProperties job's page lists its init containers and containers with their exit codes
    and its attempts from eksAttempts; "Retry as new job" overrides them by name."""
    queue = make_queue(ui_batch, eks=True)
    small = {"requests": {"cpu": "0.25", "memory": "32Mi"}}
    pod = {
        "initContainers": [{"name": "setup", "image": "host", "command": ["true"], "resources": small}],
        "containers": [{"name": "main", "image": "host", "command": ["sh", "-c", "exit 3"], "resources": small}],
    }
    name = unique("retry-eks")
    ui_batch.register_job_definition(jobDefinitionName=name, type="container", eksProperties={"podProperties": pod})
    first = submit(ui_batch, queue, f"{name}:1")
    assert wait_for(ui_batch, first)["status"] == "FAILED"
    open_ui(page, ui_server, f"#/jobs/{first}")
    expect(page.locator("body")).to_contain_text("setup (init)")
    expect(page.locator("body")).to_contain_text("exit 3")
    attempt = page.locator("h2:text-is('Attempts') + .panel tbody tr").first  # from eksAttempts
    expect(attempt.locator("td").nth(4)).to_have_text("3")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("[data-action=retry]").click()
    page.wait_for_function(f"!location.hash.includes('{first}')")
    second = page.evaluate("decodeURIComponent(location.hash.split('/')[2])")
    job = ui_batch.describe_jobs(jobs=[second])["jobs"][0]
    containers = job["eksProperties"]["podProperties"]
    assert [c["name"] for c in containers["initContainers"] + containers["containers"]] == ["setup", "main"]
    assert wait_for(ui_batch, second)["status"] == "FAILED"


def test_an_array_of_1000_renders_every_cell_and_repaints_when_a_child_finishes(
    page: Page, ui_server: KilnServer, ui_batch: Any, tmp_path: Path
) -> None:
    """Each child waits (bounded) for a file named after its index; creating one finishes that child."""
    queue = make_queue(ui_batch, max_vcpus=1)
    script = (
        f"for i in $(seq 1 300); do [ -e {tmp_path}/$AWS_BATCH_JOB_ARRAY_INDEX ] && exit 0; sleep 0.2; done; exit 1"
    )
    definition = register_shell(ui_batch, script, memory=16)
    overrides = {"resourceRequirements": [{"type": "VCPU", "value": "0.25"}, {"type": "MEMORY", "value": "16"}]}
    parent = submit(ui_batch, queue, definition, arrayProperties={"size": 1000}, containerOverrides=overrides)
    try:
        wait_for(ui_batch, f"{parent}:3", {"RUNNING"})
        open_ui(page, ui_server, f"#/jobs/{parent}")
        expect(page.locator("#array-grid")).to_be_visible()
        wait_cell(page, 3, RUNNING_COLOUR)
        wait_cell(page, 999, RUNNABLE_COLOUR)  # the last of 1,000 cells is drawn too
        counts = {
            item.get_attribute("data-status"): int(item.inner_text().split()[-1])
            for item in page.locator(".legend-item").all()
        }
        assert sum(counts.values()) == 1000
        assert counts["RUNNING"] == 4  # 0.25 vCPU each on a 1-vCPU environment
        (tmp_path / "3").touch()
        wait_for(ui_batch, f"{parent}:3", {"SUCCEEDED"})
        wait_cell(page, 3, SUCCEEDED_COLOUR, timeout=10)
        assert cell_colour(page, 2) == RUNNING_COLOUR
        page.locator("#array-grid").click(position={"x": 2, "y": 2})  # the first cell opens child 0
        expect(page).to_have_url(f"{ui_server.endpoint}/ui/#/jobs/{parent}%3A0")
        expect(page.locator("h1 .badge")).to_have_text("RUNNING")
    finally:
        ui_batch.terminate_job(jobId=parent, reason="test over")
