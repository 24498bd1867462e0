"""Slow and idle clients cannot hold a real `kiln server` (slowloris, half-sent requests, idle floods).

The server gets short deadlines from its kiln.toml (a request head within 1 s, a body within 1.5 s of
its head), so every wait here lasts a few seconds; each one is bounded. Requests go over raw sockets,
because the point is what a client that does not behave like an HTTP library does to the server.
The connection cap is lowered through the fd limit the server inherits; the response-stall limit,
which has no setting, is checked on the same protocol class in a uvicorn inside the test process.
"""

from __future__ import annotations

import http.client
import json
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.api.http_server import MAX_OPEN_CONNECTIONS, ConnectionLimits, http_protocol
from kiln.server import MAX_REQUEST_HEAD_BYTES
from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.support import uvicorn_in_thread

HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
SLACK = 1.5  # for a busy test machine; still well under uvicorn's own 5 s keep-alive timeout
DISCONNECT_LINE = "client disconnected before sending the whole body"


def configured_server(root: Path, head_timeout: float = HEAD_TIMEOUT) -> KilnServer:
    (root / "data").mkdir()
    (root / "data" / "kiln.toml").write_text(
        "[server]\nhost_vcpus = 0\n"
        f"request_head_timeout_seconds = {head_timeout}\nrequest_body_timeout_seconds = {BODY_TIMEOUT}\n"
    )
    return start_server(root, FAST_FLAGS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    server = configured_server(tmp_path_factory.mktemp("slow"))
    yield server
    server.close()


def server_log(server: KilnServer) -> str:
    return (server.data_dir.parent / f"server-{server.port}.log").read_text(errors="replace")


def connect(server: KilnServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def request_head(method: str, path: str, body_length: int | None = None, extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if body_length is not None:
        lines.append(f"Content-Length: {body_length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is open at `deadline`."""
    received = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the server kept the connection open; it sent {bytes(received)[:300]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(5)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def assert_aws_error(status: int, headers: dict[str, str], body: bytes, expected: int, message: str) -> None:
    assert status == expected, (status, body)
    assert headers["x-amzn-errortype"] == "ClientException"
    assert headers["x-amzn-requestid"]
    document = json.loads(body)
    assert document["__type"] == "ClientException"
    assert message in document["message"], document


# ------------------------------------------------------------------------------ request heads


def test_half_sent_heads_are_closed_in_time_while_healthz_stays_fast(server: KilnServer) -> None:
    partial = request_head("POST", "/v1/describejobs", 20)[:-2] + b"X-Padding: " + b"x" * 1000
    with ExitStack() as stack:
        sockets = [stack.enter_context(connect(server)) for _ in range(100)]
        for sock in sockets:
            sock.sendall(partial)
        last_sent = time.monotonic()
        latencies = []
        while time.monotonic() < last_sent + HEAD_TIMEOUT * 0.8:
            started = time.monotonic()
            assert httpx.get(f"{server.endpoint}/healthz", timeout=5).json() == {"status": "ok"}
            latencies.append(time.monotonic() - started)
        assert len(latencies) >= 3 and max(latencies) < 0.5, latencies
        for sock in sockets:
            assert read_until_closed(sock, last_sent + HEAD_TIMEOUT + SLACK) == b""


def test_a_head_sent_a_byte_at_a_time_does_not_extend_the_deadline(server: KilnServer) -> None:
    head = request_head("GET", "/healthz", extra="X-Drip: " + "x" * 1000 + "\r\n")
    with connect(server) as sock:
        opened = time.monotonic()
        for byte in head:
            assert time.monotonic() < opened + HEAD_TIMEOUT + SLACK, "the server kept a dripping head open"
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.1)
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
        else:
            raise AssertionError("the whole head was sent: drip slower or lower the timeout")
        assert time.monotonic() - opened > HEAD_TIMEOUT * 0.8


@pytest.mark.parametrize(
    "then", [b"", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"], ids=["idle", "next-head-half-sent"]
)
def test_a_keep_alive_connection_that_goes_quiet_is_closed(server: KilnServer, then: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(request_head("GET", "/healthz"))
        status, _, body = read_response(sock)
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        finished = time.monotonic()
        sock.sendall(then)
        assert read_until_closed(sock, finished + HEAD_TIMEOUT + SLACK) == b""
        assert time.monotonic() - finished > HEAD_TIMEOUT * 0.8


# ------------------------------------------------------------------------------ request bodies


def test_a_body_that_stops_halfway_is_answered_408_and_closed(server: KilnServer) -> None:
    body = json.dumps({"jobs": ["a" * 80]}).encode()
    with connect(server) as sock:
        sock.sendall(request_head("POST", "/v1/describejobs", len(body)) + body[: len(body) // 2])
        sent = time.monotonic()
        answer = read_until_closed(sock, sent + BODY_TIMEOUT + SLACK)
        assert time.monotonic() - sent > BODY_TIMEOUT * 0.8
    status, headers, payload = parse_answer(answer)
    assert_aws_error(status, headers, payload, 408, "did not arrive within 1.5 seconds")
    assert headers["connection"] == "close"


def test_a_client_that_hangs_up_mid_body_is_an_info_line_not_a_traceback(server: KilnServer) -> None:
    before = server_log(server).count(DISCONNECT_LINE)
    with connect(server) as sock:
        sock.sendall(request_head("POST", "/v1/describejobs", 1000) + b'{"jobs": [')
        time.sleep(0.2)  # the app is now waiting for the rest of the body
    deadline = time.monotonic() + 10
    while server_log(server).count(DISCONNECT_LINE) == before:
        assert time.monotonic() < deadline, f"no {DISCONNECT_LINE!r} in the log:\n{server_log(server)[-3000:]}"
        time.sleep(0.05)
    log = server_log(server)
    assert [line for line in log.splitlines() if DISCONNECT_LINE in line][-1].split()[2] == "INFO"
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


# ------------------------------------------------------------------------------ what still works


def test_complete_requests_still_work_even_when_sent_slowly(server: KilnServer) -> None:
    body = json.dumps({"jobs": ["no-such-job"]}).encode()
    head = request_head("POST", "/v1/describejobs", len(body))
    with connect(server) as sock:
        for _ in range(2):  # two requests on one keep-alive connection, each sent in pieces
            for piece in (head[:20], head[20:], body[:5], body[5:]):
                sock.sendall(piece)
                time.sleep(HEAD_TIMEOUT / 5)
            status, _, answer = read_response(sock)
            assert (status, json.loads(answer)) == (200, {"jobs": []})
            time.sleep(HEAD_TIMEOUT / 2)
    with connect(server) as sock:  # pipelined: both requests in one write, the second closes
        sock.sendall(request_head("GET", "/healthz") + request_head("GET", "/healthz", extra="Connection: close\r\n"))
        assert read_until_closed(sock, time.monotonic() + 5).count(b'{"status":"ok"}') == 2
    assert server.client().describe_jobs(jobs=["no-such-job"])["jobs"] == []


def test_heads_up_to_the_cap_are_served_and_larger_ones_refused_in_aws_form(server: KilnServer) -> None:
    assert MAX_REQUEST_HEAD_BYTES == 64 * 1024
    under = httpx.get(f"{server.endpoint}/healthz", headers={"X-Big": "x" * 60_000}, timeout=10)
    assert under.json() == {"status": "ok"}
    over = httpx.get(f"{server.endpoint}/healthz", headers={"X-Big": "x" * 70_000}, timeout=10)
    message = "Request line and headers exceed the limit of 65536 bytes"
    assert_aws_error(over.status_code, dict(over.headers), over.content, 400, message)
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")  # a header line without a colon
        status, headers, body = parse_answer(read_until_closed(sock, time.monotonic() + 5))
    assert_aws_error(status, headers, body, 400, "Malformed HTTP request")


# ------------------------------------------------------------------------------ open connections


def test_an_idle_flood_cannot_take_the_servers_file_descriptors(tmp_path: Path) -> None:
    """With 128 fds the cap is 64 connections; 150 idle sockets would exhaust an uncapped server.

    The head deadline is long here, so only the cap closes the flood's sockets.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))  # inherited by the server process only
    try:
        server = configured_server(tmp_path, head_timeout=60)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert MAX_OPEN_CONNECTIONS > 64
    try:
        with ExitStack() as stack:
            flood = []
            for _ in range(150):
                flood.append(stack.enter_context(connect(server)))
                time.sleep(0.002)  # accepted in this order
            started = time.monotonic()
            assert httpx.get(f"{server.endpoint}/healthz", timeout=5).json() == {"status": "ok"}
            assert time.monotonic() - started < 1
            deadline = time.monotonic() + 5
            for sock in flood[:80]:  # the longest idle were closed to make room
                assert read_until_closed(sock, deadline) == b""
            for sock in flood[-40:]:  # the newest keep their place until their own deadline
                sock.settimeout(0.05)
                with pytest.raises(TimeoutError):
                    sock.recv(1)
        assert "Traceback" not in server_log(server)
    finally:
        server.close()


# ------------------------------------------------------------------------------ responses


def uvicorn_serving(app: Starlette, limits: ConnectionLimits) -> AbstractContextManager[uvicorn.Server]:
    """The same protocol in a uvicorn in this process, for a limit `kiln server` has no setting for."""
    return uvicorn_in_thread(app, http=http_protocol(limits), ws="none")


def test_a_client_that_reads_none_of_its_response_is_dropped() -> None:
    size = 32 * 1024 * 1024  # far more than the kernel's socket buffers hold

    async def big(request: Request) -> Response:
        return Response(b"x" * size, media_type="application/octet-stream")

    limits = ConnectionLimits(head_timeout=60, body_timeout=60, write_stall_timeout=1.0)
    with uvicorn_serving(Starlette(routes=[Route("/big", big)]), limits) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(1.0 + SLACK)  # reading nothing
            received = len(read_until_closed(sock, time.monotonic() + 10))
        assert 0 < received < size
        deadline = time.monotonic() + 5
        while server.server_state.connections:
            assert time.monotonic() < deadline, "the server still holds the connection"
            time.sleep(0.05)
