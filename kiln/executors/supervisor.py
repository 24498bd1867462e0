"""The attempt supervisor: a long-lived process that parents every local attempt.

Attempts must outlive the API server (a crash, a deploy, a SIGKILL), so they are not the server's
children: this process starts them (through the same `LocalExecutor` engine: cgroups, OOM,
timeouts), reaps them and journals their exits in `<data dir>/executor/journal.jsonl` before telling
the server. A restarted server connects again and `adopt`s what it had placed: finished attempts
come back with their real exit status and time, running ones simply go on.

It also removes a round trip from every short job: an attempt placed with `start_after` waits here
for its predecessor and starts the moment that one ends, while the scheduler plans the next batch.

Everything runs on one thread: the server's socket, the attempts' exits (the engine is `driven`)
and the periodic pass share one selector, and only the C launcher's thread, which holds no GIL,
waits for each job's exec. With a spawner and a monitor thread beside this loop, every attempt
crossed three threads, and waiting for the GIL between them was most of this process's time.

One client (the server) at a time; a new connection replaces the old one. With no client and
nothing running for `IDLE_EXIT_SECONDS` it exits (its journal keeps whatever was not collected).

Run as `python -m kiln.executors.supervisor --state-dir DIR` (the server does this itself).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kiln.clock import now_ms
from kiln.config import Settings
from kiln.private_files import make_private_dir

from .base import AttemptEvent, AttemptExited, AttemptRunning, AttemptSpec
from .chains import StartChains
from .images import ImageCatalogue
from .local import LocalExecutor
from .supervisor_journal import Journal
from .supervisor_wire import (
    LOCK_NAME,
    SOCKET_NAME,
    LineReader,
    encode,
    event_message,
    event_to_wire,
    socket_address,
    spec_from_wire,
    wire_line,
)

log = logging.getLogger("kiln.supervisor")

IDLE_EXIT_SECONDS = 10.0
SELECT_SECONDS = 1.0
# While start-ahead chains keep the job slots fed, events wait this long to go out in one batch:
# the server needs them for its next tick only (ticks are 50 ms apart when busy), and one send per
# child cost the supervisor a system call and the server a thread wake-up and a read per child.
EVENT_BATCH_SECONDS = 0.01
STOP_REASON = "Terminated because the Kiln executor was stopped"


class Supervisor:
    """The event loop: the server's socket, the engine's wake-ups, the journal."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        # Driven by this loop, in this one thread: no hand-offs between threads per attempt.
        self.engine = LocalExecutor(Settings(data_dir=state_dir.parent), driven=True)
        self.journal = Journal(state_dir)
        self.exits: dict[str, dict[str, Any]] = self.journal.unacknowledged_exits()
        self.started: dict[str, int] = {}  # live attempt -> when it began running (epoch ms)
        self.chains = StartChains()  # attempts placed behind a running one (start-ahead)
        self.client: socket.socket | None = None
        self.outbox: list[bytes] = []  # lines for the server not sent yet (see `_send_event`)
        self.outbox_since = 0.0  # when the oldest of them was held
        self.held_running: dict[str, int] = {}  # attempt -> where its AttemptRunning is in the outbox
        self.reader = LineReader()
        self.selector = selectors.DefaultSelector()
        self.idle_since = time.monotonic()
        self.stopping = False
        self.lost = set(self.journal.orphans())  # started by a previous supervisor, end unknown
        self._discard_orphans(sorted(self.lost))

    # -- wiring ------------------------------------------------------------------------------------
    def _discard_orphans(self, attempt_ids: list[str]) -> None:
        """Attempts a previous supervisor started but never saw end cannot be reaped by this one:
        kill what is left of them (their cgroups know) and let the server fail them as lost."""
        self.engine.discard_leftovers(attempt_ids)
        if attempt_ids:
            log.warning("attempts of a previous supervisor were lost: %s", ", ".join(attempt_ids))

    def serve(self, listener: socket.socket) -> None:
        self.selector.register(listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.engine.fileno(), selectors.EVENT_READ, "exits")
        while True:
            due = self.engine.seconds_to_next_pass()
            for key, _ in self.selector.select(min(SELECT_SECONDS if due is None else due, self._flush_due())):
                try:
                    self._ready(key, listener)
                except Exception:  # dying here would lose every attempt: log it and carry on
                    log.exception("supervisor loop: %s failed", key.data)
            try:
                self.engine.service()  # exits seen, and the periodic pass (OOM, timeouts) when due
                self._drain_engine()
            except Exception:
                log.exception("supervisor loop: the engine's pass failed")
            if self._flush_due() <= 0:
                self._flush()
            if self._should_exit():
                break
        self._flush()
        self.engine.shutdown(grace_seconds=0.0)  # nothing runs any more; stops the launcher thread
        self.journal.close()

    def _ready(self, key: selectors.SelectorKey, listener: socket.socket) -> None:
        if key.data == "accept":
            self._accept(listener)
        elif key.fileobj is self.client and self.client is not None:  # not one dropped earlier in this batch
            self._read_client(self.client)

    def _should_exit(self) -> bool:
        busy = self.client is not None or self.engine.running() or self.chains.queued
        if busy and not self.stopping:
            self.idle_since = time.monotonic()
            return False
        if self.stopping:
            return not self.engine.running()
        return time.monotonic() - self.idle_since >= IDLE_EXIT_SECONDS

    # -- the server connection ---------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        connection, _ = listener.accept()
        if self.client is not None:
            log.info("a new server connected; dropping the previous connection")
            self._drop_client()
        connection.setblocking(True)
        self.client = connection
        self.reader = LineReader()
        self.selector.register(connection, selectors.EVENT_READ, "client")

    def _drop_client(self) -> None:
        self.outbox = []  # the next server adopts what it missed (its exits are journaled)
        self.held_running.clear()
        if self.client is not None:
            self.selector.unregister(self.client)
            self.client.close()
            self.client = None

    def _read_client(self, client: socket.socket) -> None:
        try:
            chunk = client.recv(1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            self._drop_client()
            return
        for message in self.reader.feed(chunk):
            try:
                self._handle(message)
            except Exception:  # one bad message must not take every attempt's parent down
                log.exception("cannot handle %s", message.get("op"))

    def _send(self, messages: list[dict[str, Any]]) -> None:
        """Replies the server waits for: sent now, after any events still held (order is kept)."""
        self.outbox += [encode(m) for m in messages]
        self._flush()

    def _send_event(self, line: bytes, *, running: str | None = None, ended: str | None = None) -> None:
        """An event: held while chains keep the slots fed (`EVENT_BATCH_SECONDS`), else sent by the
        loop's next pass (an exit is journaled first, so a crash meanwhile loses nothing). The
        `AttemptRunning` of an attempt whose exit joins it before they go is dropped: the exit
        carries `started_at`, and most children of a fast array end within the batch."""
        if not self.outbox:
            self.outbox_since = time.monotonic()
        if ended is not None and (held := self.held_running.pop(ended, None)) is not None:
            self.outbox[held] = b""
        if running is not None:
            self.held_running[running] = len(self.outbox)
        self.outbox.append(line)

    def _flush_due(self) -> float:
        """Seconds until the events held must go (0: now; `SELECT_SECONDS` with none held)."""
        if not self.outbox:
            return SELECT_SECONDS
        if not self.chains.queued:
            return 0.0
        return max(0.0, self.outbox_since + EVENT_BATCH_SECONDS - time.monotonic())

    def _flush(self) -> None:
        lines, self.outbox = self.outbox, []
        self.held_running.clear()
        if self.client is None or not lines:
            return
        try:
            self.client.sendall(b"".join(lines))
        except OSError:
            self._drop_client()  # the server is gone: the journal keeps everything for the next

    def _handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "hello":
            self._configure(message)
            gpus = self.engine.capacity().gpus
            self._send([{"op": "welcome", "notes": self.engine.describe(), "pid": os.getpid(), "gpus": gpus}])
        elif op == "start":
            for wire in message["specs"]:
                self._start(spec_from_wire(wire))
        elif op == "terminate":
            self._terminate(message["id"], message["reason"])
        elif op == "acknowledge":
            for attempt_id in message["ids"]:
                self.exits.pop(attempt_id, None)
            self.journal.acknowledge(message["ids"], self.exits, self._live)
        elif op == "adopt":
            self._adopt(message["ids"])
        elif op == "stop":
            self._stop_everything()

    def _configure(self, message: dict[str, Any]) -> None:
        """The server's settings win (flags such as the termination grace)."""
        settings = replace(
            Settings(data_dir=self.state_dir.parent),
            termination_grace_seconds=float(message["termination_grace_seconds"]),
            gpus=message.get("gpus"),
            job_user=message.get("job_user"),
            allowed_job_users=tuple(message.get("allowed_job_users", ())),
            job_uids=message.get("job_uids"),
        )
        catalogue = ImageCatalogue(message["images"])
        for name in message["built_in_images"]:
            catalogue.register(name, message["images"][name])
        self.engine.reconfigure(settings, catalogue, message["environment"])  # what jobs may inherit

    def _adopt(self, attempt_ids: list[str]) -> None:
        """Answer which attempts live on here and replay what the server may have missed."""
        asked = set(attempt_ids)
        for stale in set(self.exits) - asked:  # the server recorded these before it went away
            del self.exits[stale]
        live = self._live()
        known = [a for a in attempt_ids if a in live or a in self.chains.queued or a in self.exits]
        # Never received by this supervisor, nor started by a previous one (its journal says):
        # the server may start them now without running anything twice.
        unseen = [a for a in attempt_ids if a not in known and a not in self.lost]
        replay: list[dict[str, Any]] = []
        for attempt_id in known:
            if attempt_id in self.started:
                replay.append({"op": "event", **event_to_wire(AttemptRunning(attempt_id, self.started[attempt_id]))})
            elif attempt_id in self.exits:
                replay.append({"op": "event", **self.exits[attempt_id]})
        self._send([{"op": "adopted", "ids": known, "never_started": unseen}, *replay])

    # -- attempts ----------------------------------------------------------------------------------
    def _live(self) -> set[str]:
        """Attempts started here and not yet over (the engine knows them before their event is read)."""
        return set(self.started) | self.engine.running()

    def _is_live(self, attempt_id: str) -> bool:
        """`attempt_id in self._live()` without building the set (asked for every attempt started)."""
        return attempt_id in self.started or self.engine.is_running(attempt_id)

    def _known(self, attempt_id: str) -> bool:
        """Live, queued or over here: a start of it is a repeat (a server restarted between its
        commit and its send)."""
        return self._is_live(attempt_id) or attempt_id in self.chains.queued or attempt_id in self.exits

    def _start(self, spec: AttemptSpec) -> None:
        if self._known(spec.attempt_id):
            return  # sent twice: already ours
        if self.chains.hold(spec, _LiveView(self)):
            return
        self.journal.record_starts([spec.attempt_id])
        self.engine.start(spec)

    def _terminate(self, attempt_id: str, reason: str) -> None:
        if not self.chains.drop(attempt_id):
            self.engine.terminate(attempt_id, reason)
            return
        # Never started: it ends here (whoever waited for it now waits for its predecessor).
        event = AttemptExited.stopped_before_start(attempt_id, now_ms(), reason)
        self._record([event])

    def _stop_everything(self) -> None:
        """`kiln executor stop`: terminate every attempt, then exit once they are gone."""
        self.stopping = True
        for attempt_id in list(self.chains.queued):
            self._terminate(attempt_id, STOP_REASON)
        for attempt_id in list(self.started):
            self.engine.terminate(attempt_id, STOP_REASON)

    def _drain_engine(self) -> None:
        """Record what the engine reported, until it reports nothing more (starting a follower
        reports that it runs, or that it could not start)."""
        while events := self.engine.poll():
            self._record(events)

    def _record(self, events: list[AttemptEvent]) -> None:
        """Journal first, then start whoever waited for an attempt that ended, then tell the server.

        Each event is encoded once, for the journal and the socket alike, and the exits and the
        starts of their followers share one journal write: an array's every child passes here.
        """
        exit_lines: list[str] = []
        followers: list[AttemptSpec] = []
        for event in events:
            wire = event_to_wire(event)
            if isinstance(event, AttemptRunning):
                self.started[event.attempt_id] = event.at_ms
                self._send_event(event_message(wire_line(wire)), running=event.attempt_id)
                continue
            if event.started:
                wire["started_at"] = self.started.get(event.attempt_id)
            self.started.pop(event.attempt_id, None)
            self.exits[event.attempt_id] = wire
            line = wire_line(wire)
            self._send_event(event_message(line), ended=event.attempt_id)
            exit_lines.append(line)
            followers += self.chains.released(event.attempt_id)
        starting = [follower for follower in followers if not self._known(follower.attempt_id)]
        self.journal.record(exit_lines, [spec.attempt_id for spec in starting])
        for follower in starting:  # before the send: a follower's place is idle until it starts
            self.engine.start(follower)


class _LiveView:
    """The supervisor's live attempts as a container (`in` only), for `StartChains.hold`."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def __contains__(self, attempt_id: object) -> bool:
        return isinstance(attempt_id, str) and self._supervisor._is_live(attempt_id)


def bind(state_dir: Path) -> socket.socket | None:
    """The listening socket, or None when another supervisor already owns this state dir."""
    lock = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return None  # held for the process lifetime (the fd stays open)
    path = state_dir / SOCKET_NAME
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket_address(path) as address:
        listener.bind(address)
    os.chmod(path, 0o600)
    listener.listen(8)
    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln-supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state_dir: Path = args.state_dir
    make_private_dir(state_dir)
    listener = bind(state_dir)
    if listener is None:
        log.info("another supervisor owns %s", state_dir)
        return 0
    # The server's signals are not ours: a terminal's Ctrl-C or a SIGTERM to the server's group
    # must not kill the attempts' parent. `kiln executor stop` is the way to stop it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("supervisor %d serving %s", os.getpid(), state_dir)
    Supervisor(state_dir).serve(listener)
    log.info("supervisor %d exiting", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
