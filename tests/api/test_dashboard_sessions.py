"""Dashboard sessions on a real `kiln server --auth sigv4`: sign-in, the cookie, and what stays closed.

Keys come from the real `kiln keys create`; requests go over real HTTP (httpx, or a raw socket where
a path must reach the server exactly as written, `..` and percent-escapes included). The browser's
side of the same promises is tests/ui/test_dashboard_auth.py.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.access_keys import KeyFile
from kiln.errors import AuthenticationError, MissingAuthenticationTokenError
from kiln.web.routes import FAILED_SIGN_IN_DELAY_SECONDS
from kiln.web.sessions import SessionStore
from tests.api.test_sigv4 import client
from tests.conftest import FAST_FLAGS, Key, KilnServer, create_key, kiln, start_server
from tests.support import make_queue, register_shell, submit, wait_for

MISSING_TOKEN = "MissingAuthenticationTokenException"


def sign_in(server: KilnServer, key_id: str, secret: str, **headers: str) -> httpx.Response:
    body = {"accessKeyId": key_id, "secretAccessKey": secret}
    return httpx.post(f"{server.endpoint}/ui/session", json=body, headers=headers, timeout=10)


def session_token(server: KilnServer, key: Key) -> str:
    response = sign_in(server, key.access_key_id, key.secret)
    assert response.status_code == 200, response.text
    return str(response.cookies["kiln_session"])


def with_session(
    server: KilnServer, token: str, method: str, path: str, body: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    """What the dashboard's own page sends: the cookie, and (on a POST) its own Origin."""
    sent = {"Cookie": f"kiln_session={token}", "Origin": server.endpoint, **headers}
    sent = {name: value for name, value in sent.items() if value}  # "" drops a header
    return httpx.request(method, f"{server.endpoint}{path}", json=body, headers=sent, timeout=10)


def assert_missing_token(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["__type"] == MISSING_TOKEN, response.text


def raw_request(server: KilnServer, method: str, target: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """One HTTP/1.1 request with `target` sent byte for byte (httpx would normalise `..` away)."""
    body = b"{}" if method not in ("GET", "HEAD") else b""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]  # fmt: skip
    if body:
        lines.append("Content-Type: application/json")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, content = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [(name, value) for name, _, value in (line.partition(": ") for line in header_lines)]
    return httpx.Response(int(status_line.split(" ")[1]), headers=parsed, content=content)


# ---------------------------------------------------------------------------------------- sign-in


def test_sign_in_sets_an_httponly_samesite_strict_cookie(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    response = sign_in(server, key.access_key_id, key.secret)
    assert response.status_code == 200, response.text
    assert response.json()["accessKeyId"] == key.access_key_id
    [cookie] = response.headers.get_list("set-cookie")
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert attributes[0].startswith("kiln_session=") and len(attributes[0]) > len("kiln_session=") + 40
    assert {"httponly", "samesite=strict", "path=/", f"max-age={12 * 3600}"} <= set(attributes)
    assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
    token = response.cookies["kiln_session"]
    assert with_session(server, token, "GET", "/ui/session").json()["accessKeyId"] == key.access_key_id
    # Behind a TLS proxy on this machine (uvicorn trusts X-Forwarded-Proto from loopback) it is Secure.
    behind_tls = sign_in(server, key.access_key_id, key.secret, **{"X-Forwarded-Proto": "https"})
    assert "secure" in [part.strip().lower() for part in behind_tls.headers["set-cookie"].split(";")]


def test_wrong_secret_and_unknown_id_are_refused_alike(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    started = time.monotonic()
    wrong_secret = sign_in(server, key.access_key_id, key.secret[:-1] + ("x" if key.secret[-1] != "x" else "y"))
    unknown_id = sign_in(server, "AKIAIOSFODNN7EXAMPLE", key.secret)
    assert time.monotonic() - started >= 2 * FAILED_SIGN_IN_DELAY_SECONDS  # each refusal pauses first
    for refused in (wrong_secret, unknown_id):
        assert refused.status_code == 403, refused.text
        assert "set-cookie" not in refused.headers
        assert refused.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    assert wrong_secret.json() == unknown_id.json()  # nothing tells which half was wrong


def test_sign_in_needs_a_json_body_from_the_own_origin(secured: tuple[KilnServer, Key]) -> None:
    """What a page elsewhere could send to sign this browser in under the page's own key."""
    server, key = secured
    form = f"accessKeyId={key.access_key_id}&secretAccessKey={key.secret}"
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        response = httpx.post(f"{server.endpoint}/ui/session", content=form, timeout=10,
                              headers={"Content-Type": content_type})  # fmt: skip
        assert response.status_code == 400 and "set-cookie" not in response.headers, response.text
    elsewhere = sign_in(server, key.access_key_id, key.secret, Origin="http://127.0.0.1:1")
    assert elsewhere.status_code == 403 and "set-cookie" not in elsewhere.headers, elsewhere.text
    for body in (b"[]", b'{"accessKeyId": 1}', b"not json", b"{" * 5000):
        response = httpx.post(f"{server.endpoint}/ui/session", content=body, timeout=10,
                              headers={"Content-Type": "application/json"})  # fmt: skip
        assert response.status_code == 400, (body[:20], response.text)


# ---------------------------------------------------------------------------------------- the session


def test_session_authenticates_describe_and_terminate(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    batch = client(server, key)
    job_id = submit(batch, make_queue(batch), register_shell(batch, "sleep 60", memory=32))
    token = session_token(server, key)
    described = with_session(server, token, "POST", "/v1/describejobs", {"jobs": [job_id]})
    assert described.status_code == 200, described.text
    assert [job["jobId"] for job in described.json()["jobs"]] == [job_id]
    capacity = with_session(server, token, "GET", "/kiln/v1/capacity", Origin="")  # a GET needs no Origin
    assert capacity.status_code == 200 and "computeEnvironments" in capacity.json()
    terminated = with_session(server, token, "POST", "/v1/terminatejob", {"jobId": job_id, "reason": "by cookie"})
    assert terminated.status_code == 200, terminated.text
    job = wait_for(batch, job_id)
    assert (job["status"], job["statusReason"], job["isTerminated"]) == ("FAILED", "by cookie", True)


def test_session_state_changes_need_the_own_origin(secured: tuple[KilnServer, Key]) -> None:
    """A page on another port of the same host is same-site, so the browser sends it the cookie:
    the Origin check is what keeps its POST from acting with the session."""
    server, key = secured
    batch = client(server, key)
    job_id = submit(batch, make_queue(batch), register_shell(batch, "sleep 60", memory=32))
    token = session_token(server, key)
    try:
        for origin in ("", "null", "http://127.0.0.1:1", f"http://localhost:{server.port}", "http://[::1"):
            response = with_session(server, token, "POST", "/v1/terminatejob", {"jobId": job_id, "reason": "no"},
                                    Origin=origin)  # fmt: skip
            assert response.status_code == 403, (origin, response.text)
            if not origin:  # what only the session check refuses (a browser always sends an Origin on a POST)
                assert "the dashboard's own origin" in response.json()["message"]
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        assert job["status"] not in ("SUCCEEDED", "FAILED") and not job.get("isTerminated"), job
    finally:
        batch.terminate_job(jobId=job_id, reason="test over")


def test_a_forged_or_missing_session_is_refused(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    token = session_token(server, key)
    for forged in (token[:-1] + ("A" if token[-1] != "A" else "B"), "x", token + token):
        assert_missing_token(with_session(server, forged, "GET", "/kiln/v1/capacity"))
    for cookie in ("kiln_session=" + "é" * 10, "kiln_session", "kiln_session=; other=1", "=" * 50):
        assert_missing_token(raw_request(server, "GET", "/kiln/v1/capacity", {"Cookie": cookie}))
    assert_missing_token(httpx.get(f"{server.endpoint}/ui/session", timeout=10))


def test_sign_out_ends_the_session(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    token, other = session_token(server, key), session_token(server, key)
    signed_out = with_session(server, token, "DELETE", "/ui/session")
    assert signed_out.status_code == 200, signed_out.text
    cleared = [part.strip().lower() for part in signed_out.headers["set-cookie"].split(";")]
    assert cleared[0] in ('kiln_session=""', "kiln_session=") and "max-age=0" in cleared
    assert_missing_token(with_session(server, token, "POST", "/v1/describejobqueues", {}))
    assert with_session(server, other, "POST", "/v1/describejobqueues", {}).status_code == 200  # only that one


def test_a_deleted_keys_sessions_stop_at_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    kept, dropped = create_key(data_dir), create_key(data_dir)
    server = start_server(tmp_path, [*FAST_FLAGS, "--auth", "sigv4"])
    try:
        kept_token, dropped_token = session_token(server, kept), session_token(server, dropped)
        assert with_session(server, dropped_token, "POST", "/v1/describejobqueues", {}).status_code == 200
        result = kiln("keys", "delete", dropped.access_key_id, "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
        assert_missing_token(with_session(server, dropped_token, "POST", "/v1/describejobqueues", {}))
        assert_missing_token(with_session(server, dropped_token, "GET", "/ui/session"))
        assert with_session(server, kept_token, "POST", "/v1/describejobqueues", {}).status_code == 200
        assert sign_in(server, dropped.access_key_id, dropped.secret).status_code == 403
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- what is open


OPEN = [
    ("GET", "/ui"),
    ("GET", "/ui/"),
    ("GET", "/ui/index.html"),
    ("GET", "/ui/app.js"),
    ("HEAD", "/ui/style.css"),
    ("GET", "/%75i/app.js"),  # the same file: paths are compared decoded, as the router sees them
    ("GET", "/ui/%61pp.js"),
]
CLOSED = [
    ("POST", "/v1/describejobqueues"),
    ("GET", "/kiln/v1/capacity"),
    ("GET", "/kiln/v1/logs/some-job"),
    ("GET", "/metrics"),
    ("GET", "/v1/tags/arn:aws:batch:us-east-1:123456789012:job-queue/q"),
    ("POST", "/ui/../v1/describejobqueues"),
    ("POST", "/ui/%2e%2e/v1/describejobqueues"),
    ("POST", "/%75i/../v1/terminatejob"),
    ("POST", "/ui/session/../../v1/describejobqueues"),
    ("POST", "/ui/session%2f..%2f..%2fv1%2fdescribejobqueues"),
    ("POST", "/ui/session/"),
    ("POST", "/ui/session?x=/v1/describejobqueues"),  # the sign-in, not a Batch call (checked below)
    ("POST", "/ui/app.js"),
    ("PUT", "/ui/session"),
    ("GET", "/ui/../kiln/v1/capacity"),
    ("GET", "/ui/..%2fkiln/v1/capacity"),
    ("GET", "/ui/%2e%2e/metrics"),
    ("GET", "/UI/app.js"),
    ("GET", "//ui/app.js"),
    ("GET", "/ui/app.js/"),
    ("GET", "/ui/app.js%00"),
]


def test_only_the_static_files_and_the_sign_in_are_open(secured: tuple[KilnServer, Key]) -> None:
    server, _ = secured
    for method, target in OPEN:
        response = raw_request(server, method, target)
        assert response.status_code in (200, 307), (method, target, response.status_code, response.text)
    assert "showSignIn" in raw_request(server, "GET", "/%75i/app.js").text
    for method, target in CLOSED:
        response = raw_request(server, method, target)
        if target.startswith("/ui/session?"):  # the query is no part of the path: this is the sign-in
            assert response.status_code == 400 and "Sign in with a JSON object" in response.text, response.text
            continue
        assert response.status_code == 403, (method, target, response.status_code, response.text)
        assert response.headers["x-amzn-ErrorType"] == MISSING_TOKEN, (method, target, response.text)


# ---------------------------------------------------------------------------------------- the store itself


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_session_expires_after_its_lifetime(tmp_path: Path) -> None:
    keys, clock = KeyFile(tmp_path), Clock()
    key = keys.create()
    store = SessionStore(keys, lifetime=timedelta(hours=12), clock=clock)
    token, session = store.sign_in(key.access_key_id, key.secret_access_key)
    assert session.expires_at - session.created_at == timedelta(hours=12)
    clock.now += timedelta(hours=11, minutes=59)
    assert store.authenticate(token).access_key_id == key.access_key_id
    clock.now += timedelta(minutes=1)
    with pytest.raises(MissingAuthenticationTokenError):
        store.authenticate(token)
    assert len(store) == 0


def test_the_store_holds_a_bounded_number_of_sessions(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path)
    key = keys.create()
    store = SessionStore(keys, max_sessions=50)
    tokens = [store.sign_in(key.access_key_id, key.secret_access_key)[0] for _ in range(200)]
    assert len(store) == 50
    with pytest.raises(MissingAuthenticationTokenError):
        store.authenticate(tokens[0])  # the oldest made way
    assert store.authenticate(tokens[-1]).access_key_id == key.access_key_id
    with pytest.raises(AuthenticationError):
        store.sign_in(key.access_key_id, "")
    assert len(store) == 50
