"""A page on another site, in a real Chromium, tries to drive the default (loopback, no auth) server.

The first page lives on another origin (a second port of 127.0.0.1) and sends what a browser sends
without a preflight: text/plain fetches and a form post. The second is a DNS-rebinding page: its
name resolves to 127.0.0.1, so its requests are "same-origin" to the browser and only the `Host`
header gives them away. Neither may create anything.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Playwright, Route

from tests.conftest import KilnServer
from tests.support import unique
from tests.ui.conftest import launch_chromium

ATTACK_SCRIPT = """
async function attack(base, name, contentType, mode) {
  const send = (operation, payload) => fetch(`${base}/v1/${operation}`, {
    method: "POST", mode, credentials: "include", headers: {"Content-Type": contentType},
    body: JSON.stringify(payload),
  }).then(r => r.status, e => `blocked: ${e}`);
  const results = [];
  results.push(await send("createcomputeenvironment", {computeEnvironmentName: name, type: "UNMANAGED"}));
  results.push(await send("createjobqueue", {jobQueueName: name, priority: 1,
    computeEnvironmentOrder: [{order: 1, computeEnvironment: name}]}));
  results.push(await send("registerjobdefinition", {jobDefinitionName: name, type: "container",
    containerProperties: {image: "host", command: ["sh", "-c", "echo pwned"], vcpus: 1, memory: 64}}));
  results.push(await send("submitjob", {jobName: name, jobQueue: name, jobDefinition: name}));
  return results;
}
"""


def attack_page(base: str, name: str, content_type: str, mode: str) -> str:
    return f"""<!doctype html><html><body>
<form id="f" method="POST" action="{base}/v1/createcomputeenvironment" enctype="text/plain" target="sink">
  <input name='{{"computeEnvironmentName": "{name}-form", "type": "UNMANAGED", "x": "' value='"}}'>
</form><iframe name="sink"></iframe>
<script>{ATTACK_SCRIPT}
window.results = null;
attack({json.dumps(base)}, {json.dumps(name)}, {json.dumps(content_type)}, {json.dumps(mode)})
  .then(r => {{ window.results = r; document.getElementById("f").submit(); }});
</script></body></html>"""


def assert_nothing_created(batch: Any, name: str) -> None:
    for ce in (name, f"{name}-form"):
        assert batch.describe_compute_environments(computeEnvironments=[ce])["computeEnvironments"] == []
    assert batch.describe_job_queues(jobQueues=[name])["jobQueues"] == []
    assert batch.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"] == []


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain web server on another port of 127.0.0.1: another origin, the same site."""
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


def test_a_page_on_another_origin_cannot_drive_the_server(
    browser: Browser, ui_server: KilnServer, ui_batch: Any, other_origin: tuple[str, Path]
) -> None:
    origin, folder = other_origin
    name = unique("cross-site")
    (folder / "attack.html").write_text(attack_page(ui_server.endpoint, name, "text/plain", "no-cors"))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{origin}/attack.html")
        page.wait_for_function("window.results !== null", timeout=30_000)
        page.wait_for_timeout(500)  # the form post, after the fetches
    finally:
        context.close()
    assert_nothing_created(ui_batch, name)


@pytest.fixture(scope="module")
def rebinding_browser(playwright: Playwright) -> Iterator[Browser]:
    """Chromium in which `evil.example` resolves to 127.0.0.1, as after a DNS-rebinding attack."""
    # Local-network-access checks off: Chromium 156 would also stop a public page calling loopback,
    # but other browsers do not, and the server must not rely on it.
    launched = launch_chromium(
        playwright,
        "--host-resolver-rules=MAP evil.example 127.0.0.1",
        "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights",
    )
    yield launched
    launched.close()


def test_a_dns_rebinding_page_cannot_drive_the_server(
    rebinding_browser: Browser, ui_server: KilnServer, ui_batch: Any
) -> None:
    evil = f"http://evil.example:{ui_server.port}"
    name = unique("rebound")
    html = attack_page(evil, name, "application/json", "cors")
    context = rebinding_browser.new_context()
    try:
        page = context.new_page()

        def serve_attack(route: Route) -> None:  # the page the attacker served before rebinding
            route.fulfill(status=200, content_type="text/html", body=html)

        page.route(f"{evil}/attack.html", serve_attack)
        page.goto(f"{evil}/attack.html")
        page.wait_for_function("window.results !== null", timeout=30_000)
        results = page.evaluate("window.results")
        page.wait_for_timeout(500)
        # Same-origin to the browser, so each request reached the server, which refused its Host.
        assert results == [400, 400, 400, 400], results
        dashboard = page.goto(f"{evil}/ui/")
        assert dashboard is not None and dashboard.status == 400
    finally:
        context.close()
    assert_nothing_created(ui_batch, name)
