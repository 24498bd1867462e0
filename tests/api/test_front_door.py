"""The front door: what a page on another site, or a DNS-rebinding page, can make a browser send is
refused before it reaches the API; what AWS clients send passes. Real server, real sockets."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from kiln.api.front_door import HostNames
from tests.conftest import Key, KilnServer, start_server
from tests.support import make_queue, register_shell, submit, unique, wait_for


def raw_request(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (no client library normalises path or headers)."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def browser_headers(server: KilnServer, **extra: str) -> dict[str, str]:
    return {"Host": f"127.0.0.1:{server.port}", **extra}


def post(server: KilnServer, operation: str, payload: dict[str, Any], **headers: str) -> tuple[int, bytes]:
    return raw_request(
        server.port, "POST", f"/v1/{operation}", browser_headers(server, **headers), json.dumps(payload).encode()
    )


# -- what a cross-site page can send ----------------------------------------------------------------


def test_a_cross_site_simple_request_creates_nothing(kiln_server: KilnServer, batch: Any) -> None:
    """The whole attack a page can mount without a preflight: text/plain bodies, a foreign Origin."""
    name = unique("evil")
    attack: list[tuple[str, dict[str, Any]]] = [
        ("createcomputeenvironment", {"computeEnvironmentName": name, "type": "UNMANAGED"}),
        ("createjobqueue", {"jobQueueName": name, "priority": 1,
                            "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": name}]}),
        ("registerjobdefinition", {"jobDefinitionName": name, "type": "container",
                                   "containerProperties": {"image": "host", "command": ["sh", "-c", "touch /tmp/pwned"],
                                                           "vcpus": 1, "memory": 64}}),
        ("submitjob", {"jobName": name, "jobQueue": name, "jobDefinition": name}),
    ]  # fmt: skip
    for operation, payload in attack:
        for headers in (
            {"Content-Type": "text/plain", "Origin": "http://evil.example"},
            {"Content-Type": "text/plain"},  # a page's Origin can be withheld (Referrer-Policy tricks): still refused
            {"Content-Type": "application/x-www-form-urlencoded", "Origin": "null"},
            {"Content-Type": "multipart/form-data; boundary=x", "Sec-Fetch-Site": "cross-site"},
        ):
            status, body = post(kiln_server, operation, payload, **headers)
            assert status in (400, 403), (operation, headers, body)
    assert batch.describe_compute_environments(computeEnvironments=[name])["computeEnvironments"] == []
    assert batch.describe_job_queues(jobQueues=[name])["jobQueues"] == []
    assert batch.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"] == []


def test_a_foreign_origin_is_refused_even_with_a_json_body(kiln_server: KilnServer) -> None:
    for origin in ("http://evil.example", "http://127.0.0.1:1", f"http://localhost:{kiln_server.port}", "null"):
        status, body = post(
            kiln_server, "describejobqueues", {}, **{"Content-Type": "application/json", "Origin": origin}
        )
        assert status == 403, (origin, body)
        assert json.loads(body)["__type"] == "AccessDeniedException"
    for site in ("cross-site", "same-site"):  # same-site: another port of 127.0.0.1 is another origin's page
        status, _ = post(
            kiln_server, "describejobqueues", {}, **{"Content-Type": "application/json", "Sec-Fetch-Site": site}
        )
        assert status == 403, site


def test_the_servers_own_origin_passes(kiln_server: KilnServer) -> None:
    """What the dashboard sends: a same-origin fetch with a JSON body."""
    headers = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{kiln_server.port}",
               "Sec-Fetch-Site": "same-origin"}  # fmt: skip
    status, body = post(kiln_server, "describejobqueues", {}, **headers)
    assert status == 200, body


def test_a_foreign_host_is_refused_so_dns_rebinding_fails(kiln_server: KilnServer) -> None:
    """After rebinding, the attacker's page is "same-origin": only the Host header gives it away."""
    for host in (
        "evil.example",
        "evil.example:80",
        f"evil.example:{kiln_server.port}",
        "127.0.0.1.evil.example",
        "",
        "a b",
    ):
        headers = {"Host": host, "Content-Type": "application/json", "Origin": f"http://{host}"}
        status, body = raw_request(kiln_server.port, "POST", "/v1/describejobqueues", headers, b"{}")
        assert status == 400, (host, body)
        assert "is not one of this server's names" in json.loads(body)["message"]
    status, _ = raw_request(kiln_server.port, "GET", "/ui/", {"Host": "evil.example"})
    assert status == 400  # the rebound page cannot even load the dashboard
    status, _ = raw_request(kiln_server.port, "GET", f"/kiln/v1/logs/{unique('job')}", {"Host": "evil.example"})
    assert status == 400


def test_loopback_names_pass_and_healthz_answers_any_host(kiln_server: KilnServer) -> None:
    for host in (
        f"localhost:{kiln_server.port}",
        f"127.0.0.1:{kiln_server.port}",
        "127.0.0.1",
        f"[::1]:{kiln_server.port}",
    ):
        status, body = raw_request(kiln_server.port, "POST", "/v1/describejobqueues",
                                   {"Host": host, "Content-Type": "application/json"}, b"{}")  # fmt: skip
        assert status == 200, (host, body)
    assert raw_request(kiln_server.port, "GET", "/healthz", {"Host": "lb.internal"})[0] == 200


def test_a_link_from_another_site_opens_the_dashboard(kiln_server: KilnServer) -> None:
    """A navigation from elsewhere may load the (data-free) pages; their API calls are same-origin."""
    headers = browser_headers(kiln_server, **{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    status, body = raw_request(kiln_server.port, "GET", "/ui/", headers)
    assert status == 200 and b"<html" in body.lower()
    status, _ = raw_request(kiln_server.port, "GET", "/kiln/v1/job-counts", headers)
    assert status == 403  # but no data endpoint answers a cross-site request


def test_an_empty_body_needs_no_content_type_but_a_body_does(kiln_server: KilnServer) -> None:
    status, _ = raw_request(kiln_server.port, "GET", "/kiln/v1/job-counts", browser_headers(kiln_server))
    assert status == 200
    status, body = raw_request(kiln_server.port, "POST", "/v1/describejobqueues", browser_headers(kiln_server), b"{}")
    assert status == 400 and "Content-Type" in json.loads(body)["message"]


def test_allowed_hosts_from_kiln_toml(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "kiln.toml").write_text('[server]\nallowed_hosts = ["kiln.studio.lan"]\n')
    server = start_server(tmp_path)
    try:
        ok = {"Host": f"kiln.studio.lan:{server.port}", "Content-Type": "application/json"}
        assert raw_request(server.port, "POST", "/v1/describejobqueues", ok, b"{}")[0] == 200
        other = {**ok, "Host": "other.studio.lan"}
        assert raw_request(server.port, "POST", "/v1/describejobqueues", other, b"{}")[0] == 400
    finally:
        server.close()


def test_aws_clients_pass_unchanged(batch: Any) -> None:
    """boto3 (rest-json) through every kind of call the workshop makes: the door lets it in."""
    queue = make_queue(batch)
    job = wait_for(batch, submit(batch, queue, register_shell(batch, "echo through the door")))
    assert job["status"] == "SUCCEEDED"


# -- the one unsigned route under --auth sigv4 ------------------------------------------------------


def test_only_get_and_head_healthz_are_unsigned(secured: tuple[KilnServer, Key]) -> None:
    server, _ = secured
    logs_target = {"X-Amz-Target": "Logs_20140328.GetLogEvents", "Content-Type": "application/x-amz-json-1.1"}
    body = json.dumps({"logGroupName": "/aws/batch/job", "logStreamName": "any"}).encode()
    for path in ("/healthz", "/%68ealthz", "/%68%65%61%6c%74%68%7a", "/healthz/", "//healthz", "/healthz?x=1"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, answer = raw_request(server.port, method, path, browser_headers(server, **logs_target), body)
            assert status == 403, (method, path, answer)
            assert json.loads(answer)["__type"] == "MissingAuthenticationTokenException"
    for path in ("/metrics", "/kiln/v1/job-counts", "/kiln/v1/logs/x"):
        assert raw_request(server.port, "GET", path, browser_headers(server))[0] == 403, path
    assert raw_request(server.port, "GET", "/healthz", browser_headers(server)) == (200, b'{"status":"ok"}')
    assert raw_request(server.port, "GET", "/%68ealthz", browser_headers(server))[0] == 200
    assert raw_request(server.port, "HEAD", "/healthz", browser_headers(server))[0] == 200


# -- the policy itself ------------------------------------------------------------------------------


def test_host_names_policy() -> None:
    loopback = HostNames.for_server("127.0.0.1", ["kiln.studio.lan"])
    for host in ("127.0.0.1:8642", "localhost", "LOCALHOST:1", "[::1]:8642", "127.9.9.9", "kiln.studio.lan:8642"):
        assert loopback.admits(host), host
    for host in ("evil.example", "10.0.0.5:8642", "[::1", "127.0.0.1:x", "", "kiln.studio.lan.evil.example"):
        assert not loopback.admits(host), host
    wildcard = HostNames.for_server("0.0.0.0")
    assert wildcard.admits("10.0.0.5:8642") and wildcard.admits("[fe80::1]:8642")
    assert not wildcard.admits("kiln.studio.lan")  # a DNS name only when configured
    named = HostNames.for_server("kiln.studio.lan")
    assert named.admits("Kiln.Studio.Lan:8642") and not named.admits("10.0.0.5")
