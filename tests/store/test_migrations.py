"""The Alembic migrations build exactly the schema that `kiln.store.schema` declares, on SQLite and
on PostgreSQL (`database_url` runs each test once per store)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from kiln.errors import ValidationError
from kiln.store import migrate
from kiln.store.database import Database
from kiln.store.schema import metadata


def _differences(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "render_as_batch": True})
        return list(compare_metadata(context, metadata))


def _head() -> str:
    head = ScriptDirectory.from_config(migrate.alembic_config(create_engine("sqlite://"))).get_current_head()
    assert head is not None
    return head


def _version(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one())


def _schema(engine: Engine) -> dict[str, Any]:
    """Every table's columns, indexes, unique and foreign keys, as the database reports them."""
    inspector = inspect(engine)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)),
            sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
            sorted((tuple(f["constrained_columns"]), f["referred_table"]) for f in inspector.get_foreign_keys(table)),
        )
        for table in sorted(inspector.get_table_names())
    }


def test_fresh_database_matches_the_declared_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    migrate.upgrade(engine)
    assert _differences(engine) == []
    assert set(inspect(engine).get_table_names()) == {*metadata.tables, "alembic_version"}
    assert _version(engine) == _head()
    engine.dispose()


def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    engine = create_engine(database_url)
    migrate.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job_queues (name, arn, state, status, priority, created_at, doc) "
                "VALUES ('q', 'arn:q', 'ENABLED', 'VALID', 1, 0, '{}')"
            )
        )
    schema_before = _schema(engine)
    assert len(schema_before) == len(metadata.tables) + 1
    migrate.upgrade(engine)
    assert _schema(engine) == schema_before
    assert _version(engine) == _head()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM job_queues")).scalars().all() == ["q"]
    assert _differences(engine) == []
    engine.dispose()


def test_jobs_from_before_0006_get_their_latest_recorded_time_as_their_last_status_change(database_url: str) -> None:
    engine = create_engine(database_url)
    config = migrate.alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
        columns = "id, name, queue_arn, definition_arn, status, created_at, runnable_at, started_at, stopped_at, "
        columns += "attempt_count, vcpus, memory_mib, gpus, is_cancelled, is_terminated, spec"
        for job_id, times in {"done": "1, 2, 3, 4", "running": "1, 2, 3, NULL", "new": "1, NULL, NULL, NULL"}.items():
            connection.execute(
                text(
                    f"INSERT INTO jobs ({columns}) VALUES ('{job_id}', 'n', 'q', 'd', 'X', {times}, 0, 1, 64, 0, "
                    "false, false, '{}')"
                )
            )
    migrate.upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, status_changed_at FROM jobs ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [("done", 4), ("new", 1), ("running", 3)]
    engine.dispose()


def test_0007_adds_consumable_resources_and_keeps_existing_jobs(database_url: str) -> None:
    """Jobs from before 0007 need no consumable resource; the new tables start empty and work."""
    engine = create_engine(database_url)
    config = migrate.alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
        columns = "id, name, queue_arn, definition_arn, status, created_at, attempt_count, vcpus, memory_mib, gpus, "
        columns += "is_cancelled, is_terminated, spec"
        connection.execute(text(f"INSERT INTO jobs ({columns}) VALUES ('old', 'n', 'q', 'd', 'X', 1, 0, 1, 64, 0, "
                                "false, false, '{}')"))  # fmt: skip
    migrate.upgrade(engine)
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM job_consumables")).scalar_one() == 0
        connection.execute(text("INSERT INTO consumable_resources VALUES ('r', 'arn:r', 'REPLENISHABLE', 3, 1, '{}')"))
        connection.execute(text("INSERT INTO job_consumables VALUES ('old', 'r', 2)"))
        assert connection.execute(text("SELECT quantity FROM job_consumables")).scalar_one() == 2
    assert _version(engine) == _head()
    engine.dispose()


def test_0008_moves_the_parent_status_index_to_one_that_holds_the_last_change(database_url: str) -> None:
    """Up to 0008 and back down: the index changes, the jobs stay."""
    engine = create_engine(database_url)
    config = migrate.alembic_config(engine)

    def parent_indexes() -> dict[str, list[str | None]]:
        found = inspect(engine).get_indexes("jobs")
        return {
            name: index["column_names"]
            for index in found
            if (name := index["name"] or "").startswith("ix_jobs_parent_s")
        }

    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0007")
        columns = "id, name, queue_arn, definition_arn, status, created_at, attempt_count, vcpus, memory_mib, gpus, "
        columns += "is_cancelled, is_terminated, spec, parent_id, status_changed_at"
        for job_id, parent in (("p", "NULL"), ("p:0", "'p'")):
            connection.execute(text(f"INSERT INTO jobs ({columns}) VALUES ('{job_id}', 'n', 'q', 'd', 'SUCCEEDED', 1, 0, "
                                    f"1, 64, 0, false, false, '{{}}', {parent}, 7)"))  # fmt: skip
    assert parent_indexes() == {"ix_jobs_parent_status": ["parent_id", "status"]}
    migrate.upgrade(engine)
    assert parent_indexes() == {"ix_jobs_parent_status_changed": ["parent_id", "status", "status_changed_at"]}
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0007")
        assert connection.execute(text("SELECT status_changed_at FROM jobs WHERE id = 'p:0'")).scalar_one() == 7
    assert parent_indexes() == {"ix_jobs_parent_status": ["parent_id", "status"]}
    engine.dispose()


def test_database_runs_migrations_on_open_and_reopen(database_url: str) -> None:
    first = Database(database_url)
    first.close()
    second = Database(database_url)
    try:
        assert _differences(second.engine) == []
        assert _version(second.engine) == _head()
    finally:
        second.close()


def test_servers_opening_one_empty_postgresql_database_together_all_succeed(fresh_postgres_url: str) -> None:
    """Three processes open a new PostgreSQL database at once: one migrates, the others wait for it
    and find the schema at head. (One SQLite file has one server: the data-dir lock sees to it.)"""
    code = "import sys; from kiln.store.database import Database; Database(sys.argv[1]).close()"
    processes = [
        subprocess.Popen([sys.executable, "-c", code, fresh_postgres_url], stderr=subprocess.PIPE) for _ in range(3)
    ]
    outcomes = [(process.wait(timeout=120), process.stderr.read() if process.stderr else b"") for process in processes]
    assert outcomes == [(0, b"")] * 3
    engine = create_engine(fresh_postgres_url)
    assert _version(engine) == _head()
    assert _differences(engine) == []
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "cannot parse the database URL"),
        ("mysql://u@127.0.0.1/k", "unsupported database URL mysql://u@127.0.0.1/k"),
        ("postgresql+nosuchdriver://u@127.0.0.1/k", "cannot use the database URL"),
    ],
)
def test_unusable_database_url_is_a_clear_error(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Database(url)


def test_unreachable_postgresql_is_a_clear_error_without_the_password() -> None:
    from kiln.cli.embedded_server import free_port

    url = f"postgresql+psycopg://kiln:s3cret@127.0.0.1:{free_port()}/kiln"
    with pytest.raises(ValidationError, match="cannot open the database") as raised:
        Database(url)
    assert "s3cret" not in raised.value.message
