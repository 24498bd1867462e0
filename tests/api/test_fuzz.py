"""Fuzzing a real `kiln server` with requests generated from botocore's `batch` service model.

About 4,000 requests in all, different ones on every run: well-shaped inputs with wrong values (names of real and missing
resources, out-of-range numbers, huge strings), the same with one member given a wrong type, a
required member dropped or an unknown one added, random and non-UTF-8 bytes, deeply nested and
non-object JSON, oversized bodies, unknown paths and methods; some of them through boto3 with its
validation off. Every answer must be a 200 or an AWS-form 400, never a 5xx, and afterwards the
server must be healthy and its store consistent (every listed job describable, SQLite's integrity
and foreign-key checks clean).

Requests go over one keep-alive HTTP connection for speed. The server is given no capacity
(`host_vcpus = 0`), so no generated command ever runs on this machine.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.model import Shape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.api.shapes import service_model
from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.support import make_queue, register_shell, submit

# Implemented operations are drawn far more often than the rest, which all answer "not implemented".
IMPLEMENTED_WEIGHT = 6
MAX_DEPTH = 6
COUNTS: dict[str, int] = {}  # requests sent, by kind
ACCEPTED: dict[str, int] = {}  # of which answered 200
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@dataclass
class Target:
    server: KilnServer
    http: httpx.Client
    names: list[str] = field(default_factory=list)  # real names, ARNs and job ids the fuzz may hit
    implemented: frozenset[str] = frozenset()  # operations that answer other than "not implemented"

    def send(self, kind: str, method: str, path: str, body: bytes, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, content=body, **kwargs)
        COUNTS[kind] = COUNTS.get(kind, 0) + 1
        if response.status_code == 200:
            ACCEPTED[kind] = ACCEPTED.get(kind, 0) + 1
        assert_clean(response, f"{method} {path} {body[:300]!r}")
        return response


def assert_clean(response: httpx.Response, what: str) -> None:
    """200, or AWS's error form with a 400 and a message a person can read: never a 5xx."""
    assert response.status_code in (200, 400), f"{response.status_code} for {what}: {response.text[:500]}"
    if response.status_code == 400:
        assert response.headers["x-amzn-ErrorType"] == "ClientException", what
        document = response.json()
        assert document["__type"] == "ClientException"
        assert document["message"] and "Traceback" not in document["message"], what


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "data").mkdir()
    (root / "data" / "kiln.toml").write_text("[server]\nhost_vcpus = 0\n")
    server = start_server(root, FAST_FLAGS)
    batch = server.client()
    queue = make_queue(batch)
    definition = register_shell(batch, "true")
    job = submit(batch, queue, definition)
    array = submit(batch, queue, definition, arrayProperties={"size": 2})
    queue_arn = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["jobQueueArn"]
    ce = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["computeEnvironmentOrder"][0]
    names = [queue, queue_arn, ce["computeEnvironment"], definition, definition.split(":")[0], job, array, f"{array}:1"]
    with httpx.Client(base_url=server.endpoint, timeout=30, headers={"Content-Type": "application/json"}) as http:
        target = Target(server, http, names)
        target.implemented = frozenset(op for op in OPERATIONS if "does not implement" not in probe(target, op))
        yield target
    server.stop()


def probe(target: Target, operation: str) -> str:
    method, path, query, body = to_http(operation, {})
    return target.send("probe", method, path, body, params=query).text


# ----------------------------------------------------------------------------- strategies from the model

OPERATIONS = tuple(service_model().operation_names)

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
huge_strings = st.builds(lambda char, count: char * count, st.characters(), st.integers(1_000, 40_000))


@cache
def values_of(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of the model's type for `shape`, with wrong values (not wrong types) mixed in."""
    kind = shape.type_name
    if kind == "structure" and not shape.is_document_type:
        if depth > MAX_DEPTH:
            return st.just({})
        required = {name: values_of(shape.members[name], depth + 1) for name in shape.required_members}
        optional = {
            name: values_of(member, depth + 1) for name, member in shape.members.items() if name not in required
        }
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "list":
        return st.lists(values_of(shape.member, depth + 1), max_size=3)
    if kind == "map":
        return st.dictionaries(values_of(shape.key, depth + 1), values_of(shape.value, depth + 1), max_size=3)
    if kind == "string":
        enum = st.sampled_from(shape.enum) if shape.enum else st.nothing()
        return (
            enum | st.text(max_size=40) | st.sampled_from(("", "x" * 129, "Ref::a", "arn:aws:batch:x")) | huge_strings
        )
    if kind in ("integer", "long"):
        return st.integers(-(2**31), 2**31) | st.sampled_from((0, -1, 1, 2**31 - 1, 2**63 - 1, 2**64, 10_001))
    if kind in ("float", "double"):
        return st.floats(allow_nan=False) | st.integers(-(10**6), 10**6)
    if kind == "boolean":
        return st.booleans()
    if kind == "timestamp":
        return st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    return json_values  # documents, blobs


@st.composite
def mutated(draw: st.DrawFn, params: Any, names: list[str]) -> Any:
    """`params` with one change somewhere: a wrong type, a dropped or extra member, a real name."""
    if not isinstance(params, dict) or not params:
        return params
    path: list[str | int] = []
    node: Any = params
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    parent: Any = params
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(("wrong_type", "drop", "extra", "real_name")))
    if not path:
        if action == "drop":
            params.pop(draw(st.sampled_from(sorted(params))))
        elif action == "extra":
            params[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        return params
    last = path[-1]
    if action == "wrong_type":
        parent[last] = draw(json_values)
    elif action == "drop" and isinstance(parent, dict):
        parent.pop(last)
    elif action == "extra" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    else:
        parent[last] = draw(st.sampled_from(names))
    return params


def to_http(operation: str, params: Any) -> tuple[str, str, dict[str, Any], bytes]:
    """(method, path, query, body) as the model binds members: URI labels, query string, JSON body."""
    model = service_model().operation_model(operation)
    method, path, query = model.http["method"], model.http["requestUri"], {}
    if isinstance(params, dict) and model.input_shape is not None:
        params = dict(params)
        for name, member in model.input_shape.members.items():
            location = member.serialization.get("location")
            if location == "uri":
                label = member.serialization.get("name", name)
                path = path.replace(f"{{{label}}}", quote(str(params.pop(name, ""))[:2_000], safe=""))
            elif location == "querystring" and name in params:
                value = params.pop(name)
                query[member.serialization.get("name", name)] = value if isinstance(value, list) else [value]
    body = json.dumps(params).encode() if params or method == "POST" else b""
    # URLs are kept under what HTTP clients and servers accept (8 KiB is common): the body is the fuzz target.
    return method, path, {key: [str(v)[:200] for v in values[:20]] for key, values in query.items()}, body


operations = st.sampled_from(OPERATIONS)


@st.composite
def shaped_request(draw: st.DrawFn, target: Target) -> tuple[str, Any]:
    names = target.names
    implemented = target.implemented
    weights = [op for op in OPERATIONS for _ in range(IMPLEMENTED_WEIGHT if op in implemented else 1)]
    operation = draw(st.sampled_from(weights))
    shape = service_model().operation_model(operation).input_shape
    params = draw(values_of(shape)) if shape is not None else {}
    names_strategy = st.sampled_from(names)
    for member in ("jobQueue", "jobDefinition", "jobId", "computeEnvironment", "resourceArn"):
        if isinstance(params, dict) and member in params and draw(st.booleans()):
            params[member] = draw(names_strategy)
    if draw(st.integers(0, 2)) > 0:
        params = draw(mutated(params, names))
    return operation, params


# ---------------------------------------------------------------------------------------------- tests


def test_shaped_requests(target: Target) -> None:
    @settings(FUZZ, max_examples=2_000)
    @given(request=shaped_request(target))
    def run(request: tuple[str, Any]) -> None:
        method, path, query, body = to_http(*request)
        target.send("shaped", method, path, body, params=query)

    run()


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=64).map(lambda b: b'{"jobName": "' + b + b'"}'),  # non-UTF-8 inside a string
    st.sampled_from([b"\xff\xfe{}", b'{"a": "\xed\xa0\x80"}', b'{"jobs": ["\\ud800"]}', b"\xef\xbb\xbf{}"]),
    st.integers(50, 100_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(50, 5_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(50, 5_000).map(lambda n: b'{"jobs": ' + b"[" * n + b"]" * n + b"}"),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"NaN", b"Infinity", b'{"maxResults": NaN}', b'{"maxResults": 1e999}', b"{,}", b"{"]),
)


def test_raw_and_malformed_bodies(target: Target) -> None:
    @settings(FUZZ, max_examples=1_500)
    @given(operation=operations, body=raw_bodies)
    def run(operation: str, body: bytes) -> None:
        method, path, query, _ = to_http(operation, {})
        target.send("raw", "POST" if method == "GET" else method, path, body, params=query)

    run()


def test_paths_methods_and_headers(target: Target) -> None:
    segments = st.text(st.characters(codec="utf-8", exclude_characters="?#"), max_size=20)

    @settings(FUZZ, max_examples=300)
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
        path=st.one_of(
            st.builds(lambda s: "/v1/" + quote(s, safe="/%"), segments),
            st.builds(lambda s: "/v1/tags/" + quote(s, safe="/%:"), segments),
            st.builds(lambda s: "/kiln/v1/logs/" + quote(s, safe="/%"), segments),
        ),
        content_type=st.sampled_from(["application/json", "text/plain", "application/x-amz-json-1.1", ""]),
        body=st.binary(max_size=64),
    )
    def run(method: str, path: str, content_type: str, body: bytes) -> None:
        target.send("paths", method, path, body, headers={"Content-Type": content_type})

    run()


def test_oversized_bodies(target: Target) -> None:
    """Bodies past the API's caps (30 KiB for SubmitJob, 1 MiB for the rest), declared or streamed."""
    cases = [
        ("/v1/submitjob", 30 * 1024 + 1),
        ("/v1/submitjob", 200_000),
        ("/v1/registerjobdefinition", 1024 * 1024 + 1),
        ("/v1/describejobs", 3 * 1024 * 1024),
    ]
    for path, size in cases:
        body = b'{"jobName": "' + b"a" * size + b'"}'
        response = target.send("oversized", "POST", path, body)
        assert response.status_code == 400
        assert "exceeds the limit" in response.json()["message"]

        def chunks(data: bytes = body) -> Iterator[bytes]:  # no Content-Length: chunked encoding
            for start in range(0, len(data), 65_536):
                yield data[start : start + 65_536]

        streamed = target.http.post(path, content=chunks())
        COUNTS["oversized"] += 1
        assert_clean(streamed, f"chunked {path} of {size} bytes")
        assert streamed.status_code == 400


def test_boto3_without_client_side_validation(target: Target) -> None:
    """What a non-botocore SDK might send: botocore's serializer, its validator switched off."""
    batch = boto3.client(
        "batch",
        endpoint_url=target.server.endpoint,
        region_name="us-east-1",
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )

    @settings(FUZZ, max_examples=200)
    @given(request=shaped_request(target))
    def run(request: tuple[str, Any]) -> None:
        operation, params = request
        method = getattr(batch, _snake(operation))
        COUNTS["boto3"] = COUNTS.get("boto3", 0) + 1
        try:
            method(**params) if isinstance(params, dict) else method()
        except ClientError as exc:
            status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
            assert status == 400, (operation, params, exc.response)
            assert exc.response["Error"]["Code"] == "ClientException"
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError):
            pass  # botocore itself could not serialize this input: nothing was sent

    run()


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


def test_server_healthy_and_store_consistent_afterwards(target: Target) -> None:
    assert {"SubmitJob", "DescribeJobs", "ListJobs", "RegisterJobDefinition"} <= target.implemented
    total = sum(COUNTS.values())
    assert total >= 4_000, COUNTS
    print(f"fuzz: {total} requests {COUNTS}; answered 200: {ACCEPTED}")
    # Well-shaped inputs must get past validation often enough to exercise the domain and the store:
    # 8-10 % of them are accepted (one run: 189 of 2,000), so at least 5 % (a margin for the draw).
    assert ACCEPTED.get("shaped", 0) >= COUNTS["shaped"] // 20, (ACCEPTED, COUNTS)
    assert target.http.get("/healthz").json() == {"status": "ok"}
    batch = target.server.client()
    # (Fuzzed DeleteJobQueue calls with real names may have removed the world's queue: no queue is fine.)
    queues = [q for page in batch.get_paginator("describe_job_queues").paginate() for q in page["jobQueues"]]
    listed: set[str] = set()
    for queue in queues:
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
            pages = batch.get_paginator("list_jobs").paginate(jobQueue=queue["jobQueueArn"], jobStatus=status)
            listed |= {job["jobId"] for page in pages for job in page["jobSummaryList"]}
    # The world's queue, when fuzzed requests left it (they may disable and delete it, which takes
    # its jobs along, as on AWS), still lists the world's jobs.
    if any(queue["jobQueueArn"] in target.names for queue in queues):
        assert set(target.names) & listed, "the fuzz world's jobs are listed"
    ids = sorted(listed)
    for start in range(0, len(ids), 100):
        described = batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]
        assert {job["jobId"] for job in described} == set(ids[start : start + 100])
    for definition in batch.get_paginator("describe_job_definitions").paginate():
        for item in definition["jobDefinitions"]:
            assert item["status"] in ("ACTIVE", "INACTIVE")
    database = Path(target.server.data_dir) / "kiln.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    connection.close()
    started = time.monotonic()
    assert batch.describe_job_queues(jobQueues=[queues[0]["jobQueueName"]])["jobQueues"]
    assert time.monotonic() - started < 10
