"""The repository's queries give the same answers on SQLite and PostgreSQL (`database_url` runs each
test once per store): documents, chunked batches, keyset pages, escaping, bounds and numeric types."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kiln.store.database import Database
from kiln.store.repository import Repository

QUEUE = "arn:aws:batch:us-east-1:123456789012:job-queue/q"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


def job(job_id: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": job_id, "name": f"job-{job_id}", "queue_arn": QUEUE, "definition_arn": "arn:def:1",
        "status": "SUBMITTED", "created_at": 1_000, "vcpus": 1.0, "memory_mib": 128, "spec": {"n": job_id},
    }  # fmt: skip
    row.update(extra)
    return row


def test_documents_round_trip_nested_json_and_unicode(db: Database) -> None:
    doc = {"a": [1, 2.5, None, True], "nested": {"ü": "雪", "empty": {}}, "big": 2**53}
    with db.begin() as connection:
        Repository(connection).insert_named(
            "queue",
            {
                "name": "q",
                "arn": QUEUE,
                "state": "ENABLED",
                "status": "VALID",
                "priority": 1,
                "created_at": 5,
                "doc": doc,
            },
        )
    with db.read() as connection:
        row = Repository(connection).get_named("queue", "q")
    assert row is not None
    assert row["doc"] == doc
    assert row["priority"] == 1 and row["created_at"] == 5


def test_definition_revisions_and_newest_active(db: Database) -> None:
    with db.begin() as connection:
        repo = Repository(connection)
        assert repo.latest_revision("d") == 0
        for revision, status in ((1, "ACTIVE"), (2, "ACTIVE"), (3, "INACTIVE")):
            repo.insert_definition({"name": "d", "revision": revision, "arn": f"arn:d:{revision}", "status": status,
                                    "created_at": revision, "doc": {"revision": revision}})  # fmt: skip
    with db.read() as connection:
        repo = Repository(connection)
        assert repo.latest_revision("d") == 3
        newest = repo.get_definition("d", None)
        assert newest is not None and newest["revision"] == 2
        listed = repo.list_definitions(None, None, [("d", 1), ("d", 3)], 0, 10)
        assert [row["revision"] for row in listed] == [1, 3]


def test_thousands_of_jobs_in_chunks_and_status_counts(db: Database) -> None:
    parent = job("p", array_size=1200, status="PENDING")
    kids = [job(f"p:{i}", parent_id="p", array_index=i, status="RUNNABLE" if i % 3 else "SUCCEEDED")
            for i in range(1200)]  # fmt: skip
    with db.begin() as connection:
        Repository(connection).insert_jobs([parent])
        Repository(connection).insert_jobs(kids)
    with db.read() as connection:
        repo = Repository(connection)
        assert len(repo.get_jobs([k["id"] for k in kids])) == 1200
        assert repo.status_counts(["p"]) == {"p": {"RUNNABLE": 800, "SUCCEEDED": 400}}
        assert [k["array_index"] for k in repo.children("p", ["SUCCEEDED"])][:3] == [0, 3, 6]
        assert repo.has_unfinished_children("p", ["SUCCEEDED", "FAILED"]) is True
    with db.begin() as connection:
        changed = Repository(connection).update_jobs([k["id"] for k in kids], ["RUNNABLE"], {"status": "FAILED"})
    assert len(changed) == 800
    with db.read() as connection:
        assert Repository(connection).status_counts(["p"]) == {"p": {"FAILED": 800, "SUCCEEDED": 400}}


def test_keyset_pages_newest_first_without_gaps_or_repeats(db: Database) -> None:
    rows = [job(f"j{i:03d}", created_at=1_000 + i // 4) for i in range(50)]  # ties on created_at
    with db.begin() as connection:
        Repository(connection).insert_jobs(rows)
    seen: list[str] = []
    after: tuple[Any, ...] | None = None
    with db.read() as connection:
        repo = Repository(connection)
        while True:
            page = repo.list_jobs(queue_arn=QUEUE, parent_id=None, statuses=None, limit=7, after=after)
            if not page:
                break
            seen += [row["id"] for row in page]
            after = (page[-1]["created_at"], page[-1]["id"])
    expected = sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    assert seen == [r["id"] for r in expected]


def test_name_filters_are_case_insensitive_and_escape_wildcards(db: Database) -> None:
    names = {"a": "Render_100%", "b": "renderX100done", "c": "RENDER_100%-final", "d": "other"}
    with db.begin() as connection:
        Repository(connection).insert_jobs([job(k, name=v) for k, v in names.items()])
    with db.read() as connection:
        repo = Repository(connection)

        def ids(**filters: Any) -> set[str]:
            return {r["id"] for r in repo.list_jobs(queue_arn=QUEUE, parent_id=None, statuses=None, limit=100,
                                                   **filters)}  # fmt: skip

        assert ids(name_prefix="render_100%") == {"a", "c"}  # `_` and `%` match only themselves
        assert ids(name_exact="render_100%") == {"a"}
        assert ids(name_prefix="RENDER") == {"a", "b", "c"}


def test_candidates_accept_an_unbounded_memory_limit_and_keep_fifo_order(db: Database) -> None:
    rows = [job(f"r{i}", status="RUNNABLE", runnable_at=100 - i, memory_mib=64 * (i + 1)) for i in range(5)]
    with db.begin() as connection:
        Repository(connection).insert_jobs(rows)
    with db.read() as connection:
        repo = Repository(connection)
        everything = repo.runnable_candidates(QUEUE, "RUNNABLE", 10, float("inf"), 2**62)
        fitting = repo.runnable_candidates(QUEUE, "RUNNABLE", 10, 1.0, 200)
    assert [r["id"] for r in everything] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r["id"] for r in fitting] == ["r2", "r1", "r0"]


def test_executemany_updates_only_jobs_still_in_the_expected_status(db: Database) -> None:
    with db.begin() as connection:
        Repository(connection).insert_jobs([job("x", status="RUNNABLE"), job("y", status="FAILED")])
    with db.begin() as connection:
        Repository(connection).update_jobs_each(
            [{"_id": "x", "status": "STARTING", "attempt_count": 1}, {"_id": "y", "status": "STARTING",
                                                                      "attempt_count": 1}], ["RUNNABLE"]
        )  # fmt: skip
    with db.read() as connection:
        assert Repository(connection).statuses_of(["x", "y"]) == {"x": "STARTING", "y": "FAILED"}


def test_attempts_usage_and_purge_cascade(db: Database) -> None:
    with db.begin() as connection:
        repo = Repository(connection)
        repo.insert_jobs([job("p", status="SUCCEEDED", stopped_at=10, array_size=2)])
        repo.insert_jobs([job(f"p:{i}", parent_id="p", array_index=i, status="SUCCEEDED") for i in range(2)])
        repo.insert_dependencies([{"job_id": "p:1", "depends_on": "p:0", "type": "SEQUENTIAL"}])
        repo.insert_attempts([
            {"task_id": f"t{i}", "job_id": f"p:{i}", "number": 1, "compute_environment": "ce",
             "log_stream": f"s{i}", "vcpus": 1.5, "memory_mib": 64, "gpus": 0, "active": i == 0}
            for i in range(2)
        ])  # fmt: skip
    with db.read() as connection:
        repo = Repository(connection)
        assert repo.active_usage() == [
            {"task_id": "t0", "compute_environment": "ce", "vcpus": 1.5, "memory_mib": 64, "gpus": 0}
        ]
        assert repo.active_usage_by_environment() == {"ce": (1.5, 64, 0)}  # only the active attempt
        assert repo.purge_candidates(11, ["SUCCEEDED", "FAILED"]) == ["p"]
        assert sorted(repo.log_streams_of(repo.child_ids(["p"]))) == ["s0", "s1"]
    with db.begin() as connection:
        Repository(connection).purge_jobs(["p"])
    with db.read() as connection:
        repo = Repository(connection)
        assert repo.get_jobs(["p", "p:0", "p:1"]) == []
        assert repo.get_attempts(["t0", "t1"]) == []
        assert repo.dependencies_of(["p:1"]) == {"p:1": []}


def test_share_usage_is_plain_numbers(db: Database) -> None:
    with db.begin() as connection:
        repo = Repository(connection)
        repo.insert_jobs([job("s", status="RUNNING")])
        repo.insert_job_shares([{"job_id": "s", "queue_arn": QUEUE, "share_identifier": "A",
                                 "scheduling_priority": 0}])  # fmt: skip
        repo.insert_attempts([{"task_id": "ts", "job_id": "s", "number": 1, "compute_environment": "ce",
                               "log_stream": "l", "vcpus": 2.0, "memory_mib": 64, "gpus": 0, "active": True,
                               "started_at": 1_000}])  # fmt: skip
    with db.read() as connection:
        usage = Repository(connection).share_usage(QUEUE, 11_000, 60_000, 1.0)
    assert usage == [{"share_identifier": "A", "usage": pytest.approx(20.0), "running": 1}]
    assert type(usage[0]["usage"]) is float and type(usage[0]["running"]) is int


def test_two_servers_read_modify_write_never_loses_an_update(fresh_postgres_url: str) -> None:
    """Two Database objects on one PostgreSQL database stand for two servers: their write
    transactions read a counter and write it back incremented; none may be lost."""
    servers = [Database(fresh_postgres_url), Database(fresh_postgres_url)]
    with servers[0].begin() as connection:
        Repository(connection).insert_jobs([job("counter")])
    rounds = 40

    def increment(database: Database) -> None:
        for _ in range(rounds):
            with database.begin() as connection:
                repo = Repository(connection)
                current = repo.get_job("counter")
                assert current is not None
                repo.update_job_fields("counter", {"attempt_count": current["attempt_count"] + 1})

    threads = [threading.Thread(target=increment, args=(server,)) for server in servers for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    with servers[1].read() as connection:
        final = Repository(connection).get_job("counter")
    for server in servers:
        server.close()
    assert final is not None and final["attempt_count"] == 4 * rounds


def test_active_usage_is_summed_per_environment(db: Database) -> None:
    with db.begin() as connection:
        repo = Repository(connection)
        repo.insert_jobs([job(f"j{i}", status="RUNNING") for i in range(4)])
        repo.insert_attempts([
            {"task_id": f"t{i}", "job_id": f"j{i}", "number": 1, "compute_environment": ce,
             "log_stream": f"s{i}", "vcpus": vcpus, "memory_mib": 100 * (i + 1), "gpus": i % 2, "active": active}
            for i, (ce, vcpus, active) in enumerate([("a", 1.0, True), ("a", 0.5, True), ("b", 2.0, True),
                                                     ("b", 8.0, False)])
        ])  # fmt: skip
    with db.read() as connection:
        assert Repository(connection).active_usage_by_environment() == {"a": (1.5, 300, 1), "b": (2.0, 300, 0)}


def test_terminated_active_attempts_are_found_by_a_join(db: Database) -> None:
    with db.begin() as connection:
        repo = Repository(connection)
        repo.insert_jobs([job("a", status="RUNNING", is_terminated=True, spec={"stopReason": "user asked"}),
                          job("b", status="RUNNING", is_terminated=False),
                          job("c", status="FAILED", is_terminated=True)])  # fmt: skip
        repo.insert_attempts([
            {"task_id": f"t{name}", "job_id": name, "number": 1, "compute_environment": "ce",
             "log_stream": f"s{name}", "vcpus": 1.0, "memory_mib": 64, "gpus": 0, "active": name != "c"}
            for name in "abc"
        ])  # fmt: skip
    with db.read() as connection:
        assert Repository(connection).terminated_active_attempts() == [
            {"task_id": "ta", "spec": {"stopReason": "user asked"}}
        ]
