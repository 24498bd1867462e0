"""The repository's queries give the same answers on SQLite and PostgreSQL (`database_url` runs each
test once per store): documents, chunked batches, keyset pages, escaping, bounds and numeric types;
and the records they return mirror their tables column for column."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any

import pytest
from sqlalchemy import Table, select

from kiln.store.database import Database
from kiln.store.queries import records
from kiln.store.records import (
    ArraySummary,
    Attempt,
    Candidate,
    ComputeEnvironment,
    ConsumableResource,
    Dependency,
    EnvironmentUsage,
    Job,
    JobConsumable,
    JobDefinition,
    JobQueue,
    JobShare,
    SchedulingPolicy,
    ShareUsage,
    Waiting,
)
from kiln.store.repository import Repository
from kiln.store.schema import (
    attempts,
    compute_environments,
    consumable_resources,
    job_consumables,
    job_definitions,
    job_dependencies,
    job_queues,
    job_shares,
    jobs,
    scheduling_policies,
)

QUEUE = "arn:aws:batch:us-east-1:123456789012:job-queue/q"
# Each record that is a full row of a table, with its table: the store builds these positionally.
MIRRORS: list[tuple[type[Any], Table]] = [
    (Job, jobs),
    (Attempt, attempts),
    (ComputeEnvironment, compute_environments),
    (JobQueue, job_queues),
    (JobDefinition, job_definitions),
    (SchedulingPolicy, scheduling_policies),
    (JobShare, job_shares),
    (Dependency, job_dependencies),
    (ConsumableResource, consumable_resources),
    (JobConsumable, job_consumables),
]


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


def job(job_id: str, **extra: Any) -> Job:
    base = Job.new(job_id, f"job-{job_id}", QUEUE, "arn:def:1", "SUBMITTED", 1_000, vcpus=1.0, memory_mib=128,
                   spec={"n": job_id})  # fmt: skip
    return replace(base, **extra)


def attempt(task_id: str, job_id: str, **extra: Any) -> Attempt:
    base = Attempt(task_id=task_id, job_id=job_id, number=1, compute_environment="ce", log_stream=f"s-{task_id}",
                   vcpus=1.0, memory_mib=64, gpus=0)  # fmt: skip
    return replace(base, **extra)


@pytest.mark.parametrize(("record", "table"), MIRRORS, ids=[table.name for _, table in MIRRORS])
def test_records_mirror_their_tables_column_for_column(db: Database, record: type[Any], table: Table) -> None:
    """A full row becomes a record positionally, so a record's fields are its table's columns, same
    names, same order; and a full SELECT returns exactly those keys (the store's fast path)."""
    names = [f.name for f in fields(record)]
    assert names == [column.name for column in table.columns]
    with db.read() as connection:
        assert list(connection.execute(select(table).limit(0)).keys()) == names


def test_records_are_built_by_name_when_columns_come_in_another_order(db: Database) -> None:
    stored = job("x", status="RUNNABLE", status_reason="CAPACITY:x", runnable_at=7, array_size=3, gpus=2)
    with db.begin() as connection:
        Repository(connection).jobs.insert([stored])
    with db.read() as connection:
        in_order = records(connection.execute(select(jobs)), Job)
        shuffled = records(connection.execute(select(*reversed(list(jobs.columns)))), Job)
        waiting_columns = (jobs.c.status_reason, jobs.c.runnable_at, jobs.c.queue_arn, jobs.c.id)
        waiting = records(connection.execute(select(*waiting_columns)), Waiting)
        # Fewer columns than the record, in another order: the others keep their defaults.
        candidate_columns = (jobs.c.gpus, jobs.c.num_nodes, jobs.c.id, jobs.c.status_reason, jobs.c.memory_mib,
                             jobs.c.vcpus, jobs.c.queue_arn, jobs.c.parent_id)  # fmt: skip
        candidates = records(connection.execute(select(*candidate_columns)), Candidate)
    assert in_order == [stored]
    assert shuffled == [stored]
    assert waiting == [Waiting(id="x", queue_arn=QUEUE, runnable_at=7, status_reason="CAPACITY:x")]
    assert candidates == [Candidate(id="x", queue_arn=QUEUE, parent_id=None, vcpus=1.0, memory_mib=128, gpus=2,
                                    status_reason="CAPACITY:x", num_nodes=None)]  # fmt: skip


def test_documents_round_trip_nested_json_and_unicode(db: Database) -> None:
    doc = {"a": [1, 2.5, None, True], "nested": {"ü": "雪", "empty": {}}, "big": 2**53}
    queue = JobQueue(name="q", arn=QUEUE, state="ENABLED", status="VALID", priority=1, created_at=5, doc=doc)
    with db.begin() as connection:
        Repository(connection).queues.insert(queue)
    with db.read() as connection:
        row = Repository(connection).queues.get("q")
    assert row is not None
    assert row.doc == doc
    assert row.priority == 1 and row.created_at == 5
    assert row == queue


def test_definition_revisions_and_newest_active(db: Database) -> None:
    with db.begin() as connection:
        repo = Repository(connection)
        assert repo.definitions.latest_revision("d") == 0
        for revision, status in ((1, "ACTIVE"), (2, "ACTIVE"), (3, "INACTIVE")):
            repo.definitions.insert(JobDefinition(id=None, name="d", revision=revision, arn=f"arn:d:{revision}",
                                                  status=status, created_at=revision, doc={"revision": revision}))  # fmt: skip
    with db.read() as connection:
        repo = Repository(connection)
        assert repo.definitions.latest_revision("d") == 3
        newest = repo.definitions.get("d", None)
        assert newest is not None and newest.revision == 2
        listed = repo.definitions.page(None, None, [("d", 1), ("d", 3)], 0, 10)
        assert [row.revision for row in listed] == [1, 3]


def test_definition_update_sets_the_document_and_optionally_the_status(db: Database) -> None:
    """`definitions.update` replaces the old set_definition_status (doc and status) and
    update_definition_doc (doc only): each changes only the definition with that ARN."""
    with db.begin() as connection:
        repo = Repository(connection)
        for revision in (1, 2):
            repo.definitions.insert(JobDefinition(id=None, name="d", revision=revision, arn=f"arn:d:{revision}",
                                                  status="ACTIVE", created_at=revision, doc={"tags": {}}))  # fmt: skip
    with db.begin() as connection:
        Repository(connection).definitions.update("arn:d:1", doc={"tags": {"k": "v"}})
    with db.read() as connection:
        repo = Repository(connection)
        first, second = repo.definitions.get_by_arn("arn:d:1"), repo.definitions.get_by_arn("arn:d:2")
        assert first is not None and (first.status, first.doc) == ("ACTIVE", {"tags": {"k": "v"}})
        assert second is not None and (second.status, second.doc) == ("ACTIVE", {"tags": {}})
    with db.begin() as connection:
        Repository(connection).definitions.update("arn:d:2", doc={"status": "INACTIVE"}, status="INACTIVE")
    with db.read() as connection:
        repo = Repository(connection)
        first, second = repo.definitions.get_by_arn("arn:d:1"), repo.definitions.get_by_arn("arn:d:2")
        assert first is not None and (first.status, first.doc) == ("ACTIVE", {"tags": {"k": "v"}})
        assert second is not None and (second.status, second.doc) == ("INACTIVE", {"status": "INACTIVE"})
        newest = repo.definitions.get("d", None)
        assert newest is not None and newest.revision == 1  # the newest ACTIVE one


def test_thousands_of_jobs_in_chunks_and_status_counts(db: Database) -> None:
    parent = job("p", array_size=1200, status="PENDING")
    kids = [job(f"p:{i}", parent_id="p", array_index=i, status="RUNNABLE" if i % 3 else "SUCCEEDED")
            for i in range(1200)]  # fmt: skip
    with db.begin() as connection:
        Repository(connection).jobs.insert([parent])
        Repository(connection).jobs.insert(kids)
    with db.read() as connection:
        repo = Repository(connection)
        assert len(repo.jobs.get_many([k.id for k in kids])) == 1200
        assert repo.jobs.status_counts(["p"]) == {"p": {"RUNNABLE": 800, "SUCCEEDED": 400}}
        assert [k.array_index for k in repo.jobs.children("p", ["SUCCEEDED"])][:3] == [0, 3, 6]
        assert repo.jobs.has_unfinished_children("p", ["SUCCEEDED", "FAILED"]) is True
    with db.begin() as connection:
        changed = Repository(connection).jobs.update([k.id for k in kids], ["RUNNABLE"], {"status": "FAILED"})
    assert len(changed) == 800
    with db.read() as connection:
        assert Repository(connection).jobs.status_counts(["p"]) == {"p": {"FAILED": 800, "SUCCEEDED": 400}}


def test_an_array_summary_counts_children_by_status_and_keeps_their_latest_change(db: Database) -> None:
    kids = [
        job("p:0", parent_id="p", array_index=0, status="RUNNABLE", status_changed_at=10),
        job("p:1", parent_id="p", array_index=1, status="RUNNABLE", status_changed_at=30),
        job("p:2", parent_id="p", array_index=2, status="SUCCEEDED", status_changed_at=20),
    ]
    with db.begin() as connection:
        Repository(connection).jobs.insert(
            [job("p", array_size=3, status="PENDING"), job("empty", array_size=2), *kids]
        )
    with db.read() as connection:
        summaries = Repository(connection).jobs.array_summaries(["p", "empty"])
    assert summaries == {"p": ArraySummary({"RUNNABLE": 2, "SUCCEEDED": 1}, 30), "empty": ArraySummary({}, None)}


def test_keyset_pages_newest_first_without_gaps_or_repeats(db: Database) -> None:
    rows = [job(f"j{i:03d}", created_at=1_000 + i // 4) for i in range(50)]  # ties on created_at
    with db.begin() as connection:
        Repository(connection).jobs.insert(rows)
    seen: list[str] = []
    after: tuple[Any, ...] | None = None
    with db.read() as connection:
        repo = Repository(connection)
        while True:
            page = repo.jobs.page(queue_arn=QUEUE, parent_id=None, statuses=None, limit=7, after=after)
            if not page:
                break
            seen += [row.id for row in page]
            after = (page[-1].created_at, page[-1].id)
    expected = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)
    assert seen == [r.id for r in expected]


def test_name_filters_are_case_insensitive_and_escape_wildcards(db: Database) -> None:
    names = {"a": "Render_100%", "b": "renderX100done", "c": "RENDER_100%-final", "d": "other"}
    with db.begin() as connection:
        Repository(connection).jobs.insert([job(k, name=v) for k, v in names.items()])
    with db.read() as connection:
        repo = Repository(connection)

        def ids(**filters: Any) -> set[str]:
            return {r.id for r in repo.jobs.page(queue_arn=QUEUE, parent_id=None, statuses=None, limit=100,
                                                 **filters)}  # fmt: skip

        assert ids(name_prefix="render_100%") == {"a", "c"}  # `_` and `%` match only themselves
        assert ids(name_exact="render_100%") == {"a"}
        assert ids(name_prefix="RENDER") == {"a", "b", "c"}


def test_candidates_accept_an_unbounded_memory_limit_and_keep_fifo_order(db: Database) -> None:
    rows = [job(f"r{i}", status="RUNNABLE", runnable_at=100 - i, memory_mib=64 * (i + 1)) for i in range(5)]
    with db.begin() as connection:
        Repository(connection).jobs.insert(rows)
    with db.read() as connection:
        repo = Repository(connection)
        everything = repo.jobs.candidates(QUEUE, "RUNNABLE", 10, float("inf"), 2**62)
        fitting = repo.jobs.candidates(QUEUE, "RUNNABLE", 10, 1.0, 200)
    assert [r.id for r in everything] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r.id for r in fitting] == ["r2", "r1", "r0"]


def test_executemany_updates_only_jobs_still_in_the_expected_status(db: Database) -> None:
    with db.begin() as connection:
        Repository(connection).jobs.insert([job("x", status="RUNNABLE"), job("y", status="FAILED")])
    with db.begin() as connection:
        Repository(connection).jobs.update_each(
            [{"_id": "x", "status": "STARTING", "attempt_count": 1}, {"_id": "y", "status": "STARTING",
                                                                      "attempt_count": 1}], ["RUNNABLE"]
        )  # fmt: skip
    with db.read() as connection:
        assert Repository(connection).jobs.statuses_of(["x", "y"]) == {"x": "STARTING", "y": "FAILED"}


def test_attempts_usage_and_purge_cascade(db: Database) -> None:
    tries = [attempt(f"t{i}", f"p:{i}", log_stream=f"s{i}", vcpus=1.5, active=i == 0) for i in range(2)]
    with db.begin() as connection:
        repo = Repository(connection)
        repo.jobs.insert([job("p", status="SUCCEEDED", stopped_at=10, array_size=2)])
        repo.jobs.insert([job(f"p:{i}", parent_id="p", array_index=i, status="SUCCEEDED") for i in range(2)])
        repo.jobs.insert_dependencies([Dependency(job_id="p:1", depends_on="p:0", type="SEQUENTIAL")])
        repo.attempts.insert(tries)
    with db.read() as connection:
        repo = Repository(connection)
        assert repo.attempts.active() == [tries[0]]  # only the active attempt, every column as stored
        assert repo.attempts.usage_by_environment() == {"ce": EnvironmentUsage("ce", 1.5, 64, 0, 1)}
        assert repo.jobs.dependencies_of(["p:1"]) == {"p:1": [Dependency("p:1", "p:0", "SEQUENTIAL")]}
        assert repo.jobs.expired(11, ["SUCCEEDED", "FAILED"]) == ["p"]
        assert sorted(repo.attempts.log_streams_of(repo.jobs.child_ids(["p"]))) == ["s0", "s1"]
    with db.begin() as connection:
        Repository(connection).jobs.purge(["p"])
    with db.read() as connection:
        repo = Repository(connection)
        assert repo.jobs.get_many(["p", "p:0", "p:1"]) == []
        assert repo.attempts.get_many(["t0", "t1"]) == []
        assert repo.jobs.dependencies_of(["p:1"]) == {"p:1": []}


def test_share_usage_is_plain_numbers(db: Database) -> None:
    with db.begin() as connection:
        repo = Repository(connection)
        repo.jobs.insert([job("s", status="RUNNING")])
        repo.shares.insert([JobShare(job_id="s", queue_arn=QUEUE, share_identifier="A", scheduling_priority=0)])
        repo.attempts.insert([attempt("ts", "s", log_stream="l", vcpus=2.0, started_at=1_000)])
    with db.read() as connection:
        usage = Repository(connection).shares.usage(QUEUE, 11_000, 60_000, 1.0)
    assert [(u.share_identifier, u.usage, u.running) for u in usage] == [("A", pytest.approx(20.0), 1)]
    assert type(usage[0]) is ShareUsage
    assert type(usage[0].usage) is float and type(usage[0].running) is int


def test_two_servers_read_modify_write_never_loses_an_update(fresh_postgres_url: str) -> None:
    """Two Database objects on one PostgreSQL database stand for two servers: their write
    transactions read a counter and write it back incremented; none may be lost."""
    servers = [Database(fresh_postgres_url), Database(fresh_postgres_url)]
    with servers[0].begin() as connection:
        Repository(connection).jobs.insert([job("counter")])
    rounds = 40

    def increment(database: Database) -> None:
        for _ in range(rounds):
            with database.begin() as connection:
                repo = Repository(connection)
                current = repo.jobs.get("counter")
                assert current is not None
                repo.jobs.update_fields("counter", {"attempt_count": current.attempt_count + 1})

    threads = [threading.Thread(target=increment, args=(server,)) for server in servers for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    with servers[1].read() as connection:
        final = Repository(connection).jobs.get("counter")
    for server in servers:
        server.close()
    assert final is not None and final.attempt_count == 4 * rounds


def test_active_usage_is_summed_per_environment(db: Database) -> None:
    with db.begin() as connection:
        repo = Repository(connection)
        repo.jobs.insert([job(f"j{i}", status="RUNNING") for i in range(4)])
        repo.attempts.insert([
            attempt(f"t{i}", f"j{i}", compute_environment=ce, log_stream=f"s{i}", vcpus=vcpus,
                    memory_mib=100 * (i + 1), gpus=i % 2, active=active)
            for i, (ce, vcpus, active) in enumerate([("a", 1.0, True), ("a", 0.5, True), ("b", 2.0, True),
                                                     ("b", 8.0, False)])
        ])  # fmt: skip
    with db.read() as connection:
        usage = Repository(connection).attempts.usage_by_environment()
    assert usage == {"a": EnvironmentUsage("a", 1.5, 300, 1, 2), "b": EnvironmentUsage("b", 2.0, 300, 0, 1)}
    for held in usage.values():  # plain numbers on both stores (PostgreSQL sums as NUMERIC)
        assert type(held.vcpus) is float
        assert type(held.memory_mib) is int and type(held.gpus) is int and type(held.attempts) is int


def test_terminated_active_attempts_are_found_by_a_join(db: Database) -> None:
    with db.begin() as connection:
        repo = Repository(connection)
        repo.jobs.insert([job("a", status="RUNNING", is_terminated=True, spec={"stopReason": "user asked"}),
                          job("b", status="RUNNING", is_terminated=False),
                          job("c", status="FAILED", is_terminated=True)])  # fmt: skip
        repo.attempts.insert([attempt(f"t{name}", name, log_stream=f"s{name}", active=name != "c") for name in "abc"])
    with db.read() as connection:
        assert Repository(connection).attempts.terminated_active() == [("ta", {"stopReason": "user asked"})]


def test_consumables_in_use_are_summed_from_active_attempts_and_totals_lowered_in_sql(db: Database) -> None:
    """An array parent's needs count once per active child attempt; inactive attempts and jobs
    that need nothing count for nothing; `lower_totals` subtracts without reading first."""
    with db.begin() as connection:
        repo = Repository(connection)
        repo.consumables.insert(ConsumableResource("r", "arn:r", "REPLENISHABLE", 5, 1, {}))
        repo.consumables.insert(ConsumableResource("n", "arn:n", "NON_REPLENISHABLE", 5, 1, {}))
        repo.jobs.insert([job("p", array_size=3), job("p:0", parent_id="p", array_index=0),
                          job("p:1", parent_id="p", array_index=1), job("solo"), job("plain")])  # fmt: skip
        repo.consumables.insert_needs([JobConsumable("p", "r", 2), JobConsumable("solo", "r", 1),
                                       JobConsumable("solo", "n", 3)])  # fmt: skip
        repo.attempts.insert([attempt("a0", "p:0"), attempt("a1", "p:1", active=False), attempt("s", "solo"),
                              attempt("x", "plain")])  # fmt: skip
        repo.consumables.lower_totals({"n": 3})
    with db.read() as connection:
        repo = Repository(connection)
        assert repo.consumables.in_use() == {"r": 3, "n": 3}
        assert repo.consumables.get("n") == ConsumableResource("n", "arn:n", "NON_REPLENISHABLE", 2, 1, {})
        assert sorted(repo.consumables.needs_of(["p", "solo", "plain"])) == ["p", "solo"]
        listed = repo.consumables.jobs_needing("r", limit=10)
        assert [(found.id, quantity) for found, quantity in listed] == [("solo", 1), ("p", 2)]
