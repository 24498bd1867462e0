"""The supervisor's journal: what it started and how each attempt ended, until the server has it.

Append-only JSON lines (`start`, the wire events, `ack`), written before the server is told, so a
supervisor that dies and is started again still knows every exit the server has not recorded, and
which attempts it had started but never saw end (those are lost). A write reaches the page cache
before the server hears of it, which survives any process crash; the machine crashing takes the
attempts with it anyway. Acknowledged entries are dropped by rewriting the file once it has grown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from kiln.private_files import create_private_file

from .supervisor_wire import JOURNAL_NAME

COMPACT_AFTER_LINES = 50_000


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL_NAME
        self._exits: dict[str, dict[str, Any]] = {}
        self._orphans: list[str] = []
        self._lines = self._load()
        create_private_file(self.path)  # exits and ids are the server's business only
        self._file = self.path.open("a", encoding="utf-8")

    def _load(self) -> int:
        """Replay the file: unacknowledged exits, and attempts started but never seen to end."""
        if not self.path.exists():
            return 0
        started: dict[str, None] = {}
        lines = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            lines += 1
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-write
            kind = entry.get("kind")
            if kind == "start":
                started[entry["attempt_id"]] = None
            elif kind == "exited":
                started.pop(entry["attempt_id"], None)
                self._exits[entry["attempt_id"]] = entry
            elif kind == "ack":
                for attempt_id in entry["ids"]:
                    self._exits.pop(attempt_id, None)
        self._orphans = list(started)
        return lines

    def unacknowledged_exits(self) -> dict[str, dict[str, Any]]:
        return dict(self._exits)

    def orphans(self) -> list[str]:
        """Attempts started by a previous supervisor whose end it never saw."""
        return list(self._orphans)

    def record_starts(self, attempt_ids: list[str]) -> None:
        self.record([], attempt_ids)

    def record(self, exit_lines: list[str], started: list[str]) -> None:
        """Exits (their `wire_line`s) and the attempts about to start, in one write: every start is
        on file before its process exists, every exit before the server hears of it."""
        lines = exit_lines + [
            json.dumps({"kind": "start", "attempt_id": a}, separators=(",", ":")) + "\n" for a in started
        ]
        if lines:
            self._append("".join(lines), len(lines))

    def acknowledge(
        self, ids: list[str], exits: dict[str, dict[str, Any]], live: Callable[[], Collection[str]]
    ) -> None:
        """Note that the server has these exits; rewrite the file when acknowledged lines dominate
        (`live` is asked then only)."""
        self._write([{"kind": "ack", "ids": ids}])
        if self._lines >= COMPACT_AFTER_LINES:
            self._compact(exits, live())

    def _compact(self, exits: dict[str, dict[str, Any]], live: Collection[str]) -> None:
        """Keep only what is still needed: live attempts and exits the server has not collected."""
        temporary = self.path.with_suffix(".tmp")
        create_private_file(temporary)
        entries = [{"kind": "start", "attempt_id": a} for a in live] + list(exits.values())
        temporary.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries), encoding="utf-8")
        self._file.close()
        os.replace(temporary, self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._lines = len(entries)

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if entries:
            self._append("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries), len(entries))

    def _append(self, text: str, lines: int) -> None:
        self._file.write(text)
        self._file.flush()
        self._lines += lines

    def close(self) -> None:
        self._file.close()
