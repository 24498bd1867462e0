"""The dashboard's own read-only endpoints and static files, over plain HTTP."""

from __future__ import annotations

import re
from typing import Any

import httpx

from kiln.web.routes import STATIC_DIR
from tests.conftest import KilnServer
from tests.support import make_queue, register_shell, submit, wait_for


def test_ui_is_served_by_kiln_itself_with_no_outside_assets(ui_server: KilnServer) -> None:
    redirect = httpx.get(f"{ui_server.endpoint}/ui")
    assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
    index = httpx.get(f"{ui_server.endpoint}/ui/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    for asset in re.findall(r'(?:src|href)="([^"#:]+)"', index.text):
        assert httpx.get(f"{ui_server.endpoint}/ui/{asset}").status_code == 200, asset
    for path in STATIC_DIR.iterdir():
        assert not re.search(r"https?://", path.read_text()), f"{path.name} refers to another host"


def test_array_children_come_back_in_index_order_with_their_statuses(ui_server: KilnServer, ui_batch: Any) -> None:
    queue = make_queue(ui_batch)
    definition = register_shell(ui_batch, 'test "$AWS_BATCH_JOB_ARRAY_INDEX" -ne 1', memory=16)
    parent = submit(ui_batch, queue, definition, arrayProperties={"size": 3})
    wait_for(ui_batch, parent)
    answer = httpx.get(f"{ui_server.endpoint}/kiln/v1/arrays/{parent}/children").json()
    assert answer == {"size": 3, "children": [[0, "SUCCEEDED"], [1, "FAILED"], [2, "SUCCEEDED"]]}
    plain = submit(ui_batch, queue, definition)
    for job, message in ((plain, "is not an array job"), ("no-such-job", "not found")):
        refused = httpx.get(f"{ui_server.endpoint}/kiln/v1/arrays/{job}/children")
        assert refused.status_code == 400
        assert refused.json()["__type"] == "ClientException" and message in refused.json()["message"]


def test_job_counts_agree_with_list_jobs(ui_server: KilnServer, ui_batch: Any) -> None:
    queue = make_queue(ui_batch)
    ok, failing = register_shell(ui_batch, "true", memory=16), register_shell(ui_batch, "exit 4", memory=16)
    jobs = [submit(ui_batch, queue, ok), submit(ui_batch, queue, ok), submit(ui_batch, queue, failing)]
    for job in jobs:
        wait_for(ui_batch, job)
    arn = ui_batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["jobQueueArn"]
    counts = httpx.get(f"{ui_server.endpoint}/kiln/v1/job-counts").json()["queues"][arn]
    assert counts["SUCCEEDED"] == 2 and counts["FAILED"] == 1 and sum(counts.values()) == 3
