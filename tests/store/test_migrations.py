"""The Alembic migrations build exactly the schema that `kiln.store.schema` declares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from kiln.store import migrate
from kiln.store.database import Database
from kiln.store.schema import metadata


def _engine(tmp_path: Path) -> Engine:
    return create_engine(f"sqlite:///{tmp_path}/migrated.db", future=True)


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


def test_fresh_database_matches_the_declared_schema(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    migrate.upgrade(engine)
    assert _differences(engine) == []
    assert set(inspect(engine).get_table_names()) == {*metadata.tables, "alembic_version"}
    assert _version(engine) == _head()
    engine.dispose()


def test_upgrade_twice_is_a_no_op(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    migrate.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job_queues (name, arn, state, status, priority, created_at, doc) "
                "VALUES ('q', 'arn:q', 'ENABLED', 'VALID', 1, 0, '{}')"
            )
        )
    schema_before = _schema_sql(engine)
    migrate.upgrade(engine)
    assert _schema_sql(engine) == schema_before
    assert _version(engine) == _head()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM job_queues")).scalars().all() == ["q"]
    assert _differences(engine) == []
    engine.dispose()


def test_database_runs_migrations_on_open_and_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    first = Database(url)
    first.close()
    second = Database(url)
    try:
        assert _differences(second.engine) == []
        assert _version(second.engine) == _head()
    finally:
        second.close()


def _schema_sql(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT type, name, COALESCE(sql, '') FROM sqlite_master ORDER BY type, name"))
        return [(row[0], row[1], row[2]) for row in rows]
