"""The overview's capacity card shows GPUs held against the host's, on a server with `--gpus 2`."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, expect

from tests.conftest import FAST_FLAGS, start_server
from tests.support import make_queue, submit, unique, wait_for

from .conftest import VIEWPORT, open_ui


def test_the_capacity_card_shows_gpus_in_use(browser: Browser, tmp_path: Path) -> None:
    server = start_server(tmp_path, [*FAST_FLAGS, "--gpus", "2"])
    batch = server.client()
    queue = make_queue(batch, max_vcpus=2)
    name = unique("gpu")
    batch.register_job_definition(
        jobDefinitionName=name,
        type="container",
        containerProperties={
            "image": "host",
            "command": ["sleep", "30"],
            "resourceRequirements": [
                {"type": "VCPU", "value": "1"},
                {"type": "MEMORY", "value": "32"},
                {"type": "GPU", "value": "1"},
            ],
        },
    )
    job = submit(batch, queue, name)
    context = browser.new_context(viewport=VIEWPORT)
    errors: list[str] = []
    try:
        wait_for(batch, job, {"RUNNING"})
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        open_ui(page, server)
        environment = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["computeEnvironmentOrder"][0]
        card = page.locator(f"[data-ce='{environment['computeEnvironment'].rsplit('/', 1)[-1]}']")
        expect(card).to_contain_text("GPUs")
        expect(card).to_contain_text("1 of 2 (host)")
    finally:
        context.close()
        batch.terminate_job(jobId=job, reason="test over")
    assert not errors, f"JavaScript errors on the page: {errors}"
