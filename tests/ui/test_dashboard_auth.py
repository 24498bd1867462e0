"""The dashboard on a real `kiln server --auth sigv4`, in real Chromium: sign in, act, sign out, and
what a page from elsewhere cannot do with the session.

Keys come from the real `kiln keys create`; a signed boto3 client checks what happened to jobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, ViewportSize, expect

from tests.api.test_sigv4 import client
from tests.conftest import Key, KilnServer
from tests.support import make_queue, register_shell, submit, wait_for

from .conftest import VIEWPORT


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies); a JavaScript error on any of its pages fails the test."""
    fresh = browser.new_context(viewport=ViewportSize(width=VIEWPORT["width"], height=VIEWPORT["height"]))
    errors: list[str] = []
    fresh.on("page", lambda tab: tab.on("pageerror", lambda error: errors.append(f"{tab.url}: {error}")))
    yield fresh
    fresh.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def sign_in(page: Page, key: Key, secret: str | None = None) -> None:
    form = page.locator("#sign-in")
    expect(form).to_be_visible()
    form.locator("input[name=accessKeyId]").fill(key.access_key_id)
    form.locator("input[name=secretAccessKey]").fill(key.secret if secret is None else secret)
    form.locator("button[type=submit]").click()


def fetch_status(page: Page, path: str, body: dict[str, Any]) -> int:
    """The status of a same-origin POST the page itself makes."""
    script = """([path, body]) => fetch(path, {method: "POST", credentials: "same-origin",
        headers: {"content-type": "application/json"}, body: JSON.stringify(body)}).then((r) => r.status)"""
    return int(page.evaluate(script, [path, body]))


def test_sign_in_list_terminate_and_sign_out(context: BrowserContext, secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    batch = client(server, key)
    job_id = submit(batch, make_queue(batch), register_shell(batch, "sleep 60", memory=32))
    try:
        wait_for(batch, job_id, {"RUNNING"})
        page = context.new_page()
        page.goto(f"{server.endpoint}/ui/#/jobs")
        sign_in(page, key, secret="not-the-secret")
        expect(page.locator("#sign-in .error")).to_contain_text("Sign-in refused")
        sign_in(page, key)
        expect(page.locator("#account")).to_contain_text(key.access_key_id)
        expect(page.locator(f"tr[data-job='{job_id}']")).to_be_visible()
        [cookie] = [c for c in context.cookies(server.endpoint) if c["name"] == "kiln_session"]
        assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
        assert "kiln_session" not in page.evaluate("document.cookie")  # no script on the page can read it

        page.locator(f"tr[data-job='{job_id}'] a").first.click()
        expect(page.locator("h1 .badge")).to_have_text("RUNNING")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("[data-action=terminate]").click()
        job = wait_for(batch, job_id)
        assert (job["status"], job["statusReason"], job["isTerminated"]) == (
            "FAILED",
            "Terminated from the Kiln dashboard",
            True,
        )

        page.locator("[data-action=sign-out]").click()
        expect(page.locator("#sign-in")).to_be_visible()
        assert fetch_status(page, "/v1/describejobqueues", {}) == 403
        page.reload()  # the cookie is gone from the browser too, not just from the server
        expect(page.locator("#sign-in")).to_be_visible()
    finally:
        batch.terminate_job(jobId=job_id, reason="test over")


ATTACK_PAGE = """<!doctype html>
<html><body>
<iframe name="sink"></iframe>
<form id="form" method="POST" action="{kiln}/v1/terminatejob" target="sink" enctype="text/plain">
  <input name='{{"jobId": "{job}", "reason": "forged by a form' value='"}}'>
</form>
<script>
(async () => {{
  const body = JSON.stringify({{jobId: "{job}", reason: "forged by a script"}});
  const outcomes = [];
  // "no-cors" with text/plain is sent as it is (the page just cannot read the answer); the "cors"
  // ones fail: Kiln sends no CORS headers, and the JSON one would need a preflight Kiln never grants.
  for (const [mode, type] of [["no-cors", "text/plain"], ["cors", "text/plain"], ["cors", "application/json"]]) {{
    try {{
      const response = await fetch("{kiln}/v1/terminatejob",
        {{method: "POST", mode, credentials: "include", headers: {{"Content-Type": type}}, body}});
      outcomes.push(response.type);
    }} catch (error) {{
      outcomes.push("blocked");
    }}
  }}
  document.getElementById("form").submit();
  document.title = "done " + outcomes.join(",");
}})();
</script>
</body></html>
"""


TERMINATE = "/v1/terminatejob"


def posts(requests: list[Request]) -> list[Request]:
    return [request for request in requests if request.method == "POST"]


def wait_until(page: Page, condition: Callable[[], bool], describe: Callable[[], str], timeout: float = 15) -> None:
    """Poll `condition`, letting the page's events arrive in between; bounded in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {describe()}"
        page.wait_for_timeout(100)


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def attacker_site(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A plain `http.server` on another port of 127.0.0.1, serving the files written to the folder."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_page_from_elsewhere_cannot_use_the_session(
    context: BrowserContext, secured: tuple[KilnServer, Key], attacker_site: tuple[Path, int]
) -> None:
    """The same signed-in browser opens an attacker's page that tries to terminate a job with a form
    POST and with scripts. From `localhost` (another site) the SameSite=Strict cookie is not sent;
    from another port of 127.0.0.1 (the same site, another origin) it is sent, and the Origin check
    refuses the request. Either way the job runs on."""
    server, key = secured
    batch = client(server, key)
    job_id = submit(batch, make_queue(batch), register_shell(batch, "sleep 60", memory=32))
    folder, port = attacker_site
    (folder / "attack.html").write_text(ATTACK_PAGE.format(kiln=server.endpoint, job=job_id))
    try:
        wait_for(batch, job_id, {"RUNNING"})
        dashboard = context.new_page()
        dashboard.goto(f"{server.endpoint}/ui/")
        sign_in(dashboard, key)
        expect(dashboard.locator("#account")).to_contain_text(key.access_key_id)

        sent: list[Request] = []
        context.on("request", lambda request: sent.append(request) if TERMINATE in request.url else None)
        for origin, cookie_sent in ((f"http://localhost:{port}", False), (f"http://127.0.0.1:{port}", True)):
            sent.clear()
            attack = context.new_page()
            attack.goto(f"{origin}/attack.html")
            attack.wait_for_function("document.title.startsWith('done')")
            wait_until(attack, lambda: {r.resource_type for r in posts(sent)} >= {"fetch", "document"},
                       lambda: f"{[(r.method, r.resource_type, r.url) for r in sent]}")  # fmt: skip
            # The form's POST: Chromium reports what it sent, so the cookie's presence can be checked.
            form = next(request for request in posts(sent) if request.resource_type == "document")
            headers = form.all_headers()
            assert ("kiln_session=" in headers.get("cookie", "")) is cookie_sent, (origin, headers)
            assert headers.get("origin") == origin, (origin, headers)
            answer = form.response()
            assert answer is not None and answer.status == 403, (origin, answer and answer.status)
            # The "no-cors" script POST reached Kiln too, and was refused.
            script = next(request for request in posts(sent) if request.resource_type == "fetch")
            answer = script.response()
            assert answer is not None and answer.status == 403, (origin, answer and answer.status)
            assert attack.title() == "done opaque,blocked,blocked"  # no script read an answer
            attack.close()

        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        assert job["status"] == "RUNNING" and not job.get("isTerminated"), job
        # The session was live all along: the dashboard's own page may still act with it.
        assert fetch_status(dashboard, "/v1/describejobs", {"jobs": [job_id]}) == 200
    finally:
        batch.terminate_job(jobId=job_id, reason="test over")
