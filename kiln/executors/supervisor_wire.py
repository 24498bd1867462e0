"""The supervisor's wire format: one JSON object per line over a Unix socket in the data dir.

Specs and events cross a process boundary (the server and the long-lived supervisor that parents
the attempts), so each has one encoder and one decoder here and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import (
    AttemptEvent,
    AttemptExited,
    AttemptRunning,
    AttemptSpec,
    GangMember,
    TaskContainer,
    TaskMount,
    VolumeMount,
)

SOCKET_NAME = "supervisor.sock"
LOCK_NAME = "supervisor.lock"
JOURNAL_NAME = "journal.jsonl"
LOG_NAME = "supervisor.log"

# sun_path holds 108 bytes with its NUL; a data dir deep in a file tree makes a longer socket path.
_SUN_PATH_MAX = 107
_PATH_FIELDS = ("log_path", "workdir")
# Field names read once: `dataclasses.asdict` deep-copies every value, a measurable part of the
# server's cost per attempt when thousands of array children start.
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(AttemptSpec))
_EVENT_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in (AttemptRunning, AttemptExited)}


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for bind/connect of the Unix socket at `path` that fits in sun_path however deep
    `path` lies: past the limit, `/proc/self/fd/<n>/<name>` through an O_PATH descriptor of its
    folder (Linux resolves the descriptor's link like any folder), held open while it is used."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def spec_to_wire(spec: AttemptSpec) -> dict[str, Any]:
    wire = {name: getattr(spec, name) for name in _SPEC_FIELDS}
    for name in _PATH_FIELDS:
        wire[name] = str(wire[name])
    wire["volumes"] = [dataclasses.asdict(volume) for volume in spec.volumes]
    if spec.gang is not None:
        wire["gang"] = dataclasses.asdict(spec.gang)
    wire["task"] = [{**dataclasses.asdict(container), "log_path": str(container.log_path)} for container in spec.task]
    return wire


def spec_from_wire(wire: dict[str, Any]) -> AttemptSpec:
    values = dict(wire)
    for name in _PATH_FIELDS:
        values[name] = Path(values[name])
    if values.get("gang") is not None:
        values["gang"] = GangMember(**values["gang"])
    values["volumes"] = tuple(VolumeMount(**volume) for volume in values.get("volumes", ()))
    values["task"] = tuple(
        TaskContainer(**{**item, "log_path": Path(item["log_path"]),
                         "depends_on": tuple((name, condition) for name, condition in item["depends_on"]),
                         "mounts": tuple(TaskMount(**mount) for mount in item.get("mounts", ()))})
        for item in values.get("task", ())
    )  # fmt: skip
    return AttemptSpec(**values)


def event_to_wire(event: AttemptEvent) -> dict[str, Any]:
    kind = "running" if isinstance(event, AttemptRunning) else "exited"
    return {"kind": kind, **{name: getattr(event, name) for name in _EVENT_FIELDS[type(event)]}}


def event_from_wire(wire: dict[str, Any]) -> AttemptEvent:
    values = dict(wire)
    kind = values.pop("kind")
    return AttemptRunning(**values) if kind == "running" else AttemptExited(**values)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def wire_line(wire: dict[str, Any]) -> str:
    """An event's wire form as one JSON line (a journal entry as it is)."""
    return json.dumps(wire, separators=(",", ":")) + "\n"


def event_message(line: str) -> bytes:
    """The socket message `{"op": "event", **wire}` for an event already encoded by `wire_line`,
    without encoding it again."""
    return ('{"op":"event",' + line[1:]).encode()


class LineReader:
    """Splits a byte stream into decoded messages; keeps a partial line for the next chunk."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]
