"""What every part of the store shares: the connection it queries over, and turning result rows
into records. SQLite caps bound parameters per statement, so long id lists go in chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.engine import Connection, Result

from kiln.store.records import field_names, values_of

R = TypeVar("R")
Values = Mapping[str, Any]  # column -> value for an UPDATE
# SQLite caps bound parameters per statement; stay well below it.
CHUNK = 500
_INT32_MAX = 2**31 - 1


def records(result: Result[Any], record: Callable[..., R]) -> list[R]:
    """Rows as records. Positional when the columns are the record's fields in order (a full row:
    the fast path, no dict per row), by name otherwise."""
    keys = tuple(result.keys())
    if keys == field_names(record):  # type: ignore[arg-type]
        return [record(*row) for row in result]
    return [record(**dict(zip(keys, row, strict=True))) for row in result]


def chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def integer_bound(value: int) -> int:
    """A bound compared with an INTEGER column: PostgreSQL binds it as a 32-bit integer (SQLite has
    no such limit), so "no limit" (a huge number) is clamped to the largest one."""
    return min(value, _INT32_MAX)


def same_keys(rows: Sequence[Values]) -> list[list[Values]]:
    """executemany needs one statement shape per batch: group rows by their set of keys."""
    groups: dict[tuple[str, ...], list[Values]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


def bound_values(row: Values, key: str) -> dict[str, Any]:
    """SET clauses of an executemany UPDATE: every column of `row` but the `key` it is matched on."""
    return {name: bindparam(name) for name in row if name != key}


class Queries:
    """Queries over one connection, inside the transaction the caller got from `Database`."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def _first(self, query: Any, record: type[R]) -> R | None:
        found = records(self.connection.execute(query.limit(1)), record)
        return found[0] if found else None

    def _all(self, query: Any, record: type[R]) -> list[R]:
        return records(self.connection.execute(query), record)

    def _insert(self, table: Table, rows: Sequence[Any]) -> None:
        """Records as multi-row INSERTs, a chunk per statement: an array of 10,000 children is a few."""
        for chunk in chunks(rows):
            self.connection.execute(insert(table), [values_of(row) for row in chunk])

    def _all_among(self, query: Any, column: Any, ids: Sequence[str], record: type[R]) -> list[R]:
        """`query` restricted to rows whose `column` is one of `ids`, a chunk of ids per statement."""
        found: list[R] = []
        for chunk in chunks(ids):
            found += self._all(query.where(column.in_(list(chunk))), record)
        return found

    def _column_among(self, selected: Any, column: Any, ids: Sequence[str]) -> list[Any]:
        """One column (`selected`) of the rows whose `column` is one of `ids`, in chunks."""
        found: list[Any] = []
        for chunk in chunks(ids):
            found += [row[0] for row in self.connection.execute(select(selected).where(column.in_(list(chunk))))]
        return found
