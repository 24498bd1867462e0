"""The server's file relay (`kiln://AREA/PATH`) on a real `kiln server --auth sigv4`: who may use it.

A job reaches only the areas its own command names, with the token its attempt was handed, and only
while it runs; a signed caller reaches any area (as it may submit any job); nothing else does: no
unsigned client, no browser page on another site, no path out of the relay folder. The client side
is Kiln's own fsspec file system (`kiln/render/relay_fs.py`), signing as `kiln render` does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from kiln.cli.client import relay_signer
from kiln.render import relay_fs, uris
from tests.conftest import FAST_FLAGS, JOBS_AS_ROOT, Key, KilnServer, create_key, start_server
from tests.support import make_queue, submit, unique, wait_for

# What the job does with its token: its own area, another one, a forged token, a path out.
JOB_SCRIPT = """
import os, urllib.request, urllib.error
url, token = os.environ["KILN_RELAY_URL"], os.environ["KILN_RELAY_TOKEN"]
def call(method, path, data=None, token=token):
    request = urllib.request.Request(url + "/kiln/v1/relay/" + path, data=data, method=method,
                                     headers={"X-Kiln-Job-Token": token})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
print("token", token)
print("put-own", call("PUT", "area-a/dir/x.txt", b"hello")[0])
print("get-own", *call("GET", "area-a/dir/x.txt"))
print("list-own", *call("GET", "area-a/dir?list"))
print("put-other", *call("PUT", "area-b/x.txt", b"evil"))
print("forged", call("GET", "area-a/dir/x.txt", token=token[:-6] + "000000")[0])
print("out", call("GET", "area-a/%2e%2e/%2e%2e/kiln.db")[0])
"""


@pytest.fixture(scope="module")
def relay_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KilnServer, Key]]:
    root = tmp_path_factory.mktemp("relay")
    key = create_key(root / "data")
    server = start_server(root, [*FAST_FLAGS, *JOBS_AS_ROOT, "--auth", "sigv4"])
    yield server, key
    server.close()


def _batch(server: KilnServer, key: Key) -> Any:
    return boto3.client("batch", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=key.access_key_id, aws_secret_access_key=key.secret)  # fmt: skip


@pytest.fixture
def signed_as(relay_server: tuple[KilnServer, Key], monkeypatch: pytest.MonkeyPatch) -> Iterator[KilnServer]:
    """kiln:// through the server, signed with the server's key, as `kiln render` does."""
    server, key = relay_server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key.secret)
    relay_fs.configure(server.endpoint, relay_signer)
    yield server
    relay_fs.configure("", None)


def test_a_job_reaches_only_the_areas_its_command_names_and_only_while_it_runs(
    relay_server: tuple[KilnServer, Key], signed_as: KilnServer
) -> None:
    server, key = relay_server
    batch = _batch(server, key)
    container = {"image": "host", "vcpus": 1, "memory": 256,
                 "command": [sys.executable, "-c", JOB_SCRIPT, "kiln://area-a/dir"]}  # fmt: skip
    definition = batch.register_job_definition(jobDefinitionName=unique("jd"), type="container",
                                               containerProperties=container)["jobDefinitionArn"]  # fmt: skip
    job_id = submit(batch, make_queue(batch), definition)
    job = wait_for(batch, job_id, timeout=60)
    assert job["status"] == "SUCCEEDED", job
    log = signed_log(server, key, job_id)
    said = dict(line.split(" ", 1) for line in log.splitlines())
    assert said["put-own"] == "200"
    assert said["get-own"] == "200 hello"
    assert said["list-own"].startswith("200 ") and '"name": "x.txt"' in said["list-own"].replace('":"', '": "')
    assert said["put-other"].startswith("403 ") and "names no kiln://area-b" in said["put-other"]
    assert said["forged"] == "403"
    assert said["out"] == "400"
    token = said["token"]
    assert token.startswith(f"{job_id}.")
    assert token not in str(batch.describe_jobs(jobs=[job_id]))  # handed to the attempt only

    # Once the job has ended, its token opens nothing.
    late = httpx.get(f"{server.endpoint}/kiln/v1/relay/area-a/dir/x.txt", headers={"X-Kiln-Job-Token": token})
    assert late.status_code == 403 and "is SUCCEEDED" in late.json()["message"], late.text
    # The signed caller (kiln render's side) reads what the job wrote; nothing reached area-b.
    assert uris.read_bytes("kiln://area-a/dir/x.txt") == b"hello"
    assert uris.list_files("kiln://area-a/dir") == {"x.txt": 5}
    assert uris.list_files("kiln://area-b") == {}


def signed_log(server: KilnServer, key: Key, job_id: str) -> str:
    request = httpx.Request("GET", f"{server.endpoint}/kiln/v1/logs/{job_id}")
    headers = relay_signer("GET", str(request.url), {}, False)
    return str(httpx.get(str(request.url), headers=headers, timeout=10).json()["text"])


def test_a_signed_upload_streams_and_is_published_whole(signed_as: KilnServer, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB: larger than any API body may be
    local = tmp_path / "pack.zip"
    local.write_bytes(data)
    uris.upload_atomic(local, "kiln://area-c/packs/pack.zip")
    copy = tmp_path / "copy.zip"
    uris.download("kiln://area-c/packs/pack.zip", copy)
    assert copy.read_bytes() == data
    assert uris.list_files("kiln://area-c/packs") == {"pack.zip": len(data)}  # no partial file shown
    with pytest.raises(Exception, match="no such file"):
        uris.read_bytes("kiln://area-c/packs/missing.zip")


def test_nobody_else_reaches_the_relay(signed_as: KilnServer) -> None:
    server = signed_as
    uris.write_bytes_atomic(b"secret frames", "kiln://area-d/x.txt")
    url = f"{server.endpoint}/kiln/v1/relay/area-d/x.txt"
    # No signature, no token.
    unsigned = httpx.get(url)
    assert unsigned.status_code == 403 and unsigned.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert httpx.put(url, content=b"x").status_code == 403
    # A page on another site: refused at the door, before anything is read.
    headers = relay_signer("PUT", url, {"Content-Type": "text/plain"}, True)
    cross = httpx.put(
        url, content=b"x", headers={**headers, "Content-Type": "text/plain", "Origin": "http://evil.example"}
    )
    assert cross.status_code == 403 and "Cross-origin" in cross.json()["message"]
    # An unsigned payload is only for relay uploads: on the Batch API it is a signature mismatch.
    api = f"{server.endpoint}/v1/describejobqueues"
    api_headers = relay_signer("POST", api, {"Content-Type": "application/json"}, True)
    refused = httpx.post(api, content=b"{}", headers={**api_headers, "Content-Type": "application/json"})
    assert refused.status_code == 403
    # Names that could leave the relay folder, or hide a file, are refused.
    for path in ("area-d/.hidden", "..%2F..%2Fkiln.db", "area-d/a%2F..%2F..%2F..%2Fkiln.db"):
        target = f"{server.endpoint}/kiln/v1/relay/{path}"
        response = httpx.get(target, headers=relay_signer("GET", target, {}, False))
        assert response.status_code in (400, 404), (path, response.status_code, response.text)
        assert b"SQLite" not in response.content
    assert uris.read_bytes("kiln://area-d/x.txt") == b"secret frames"
