"""uvicorn's HTTP/1.1 protocol (h11) with deadlines and a connection cap: slow clients cannot hold the server.

Left to itself uvicorn waits for a request head as long as the client likes (its keep-alive timer
stops at the first byte, and a new connection has none), waits as long for a body, and keeps every
connection the kernel hands it. Sockets that send half a request and then nothing would each hold
a file descriptor and a head buffer, before any authentication. This protocol:

- closes a connection that has not sent a whole request head `head_timeout` seconds after it opened
  or after its last response finished (bytes that trickle in do not extend the deadline);
- answers 408 in AWS's error form (or closes, once a response has begun) when a body is not complete
  `body_timeout` seconds after its head;
- drops a connection whose client has read nothing of its response for `write_stall_timeout`
  seconds (uvicorn would otherwise hold the response, and the app sending it, for ever);
- past `max_connections` open connections, closes the one that has waited longest for a head: an
  idle flood evicts itself, while a real client, which sends its head at once, keeps its place.
  uvicorn's `limit_concurrency` is no help here: it answers 503 to *requests* once that many
  connections are open, so idle sockets would make every real request fail, and it closes none;
- refuses a head over uvicorn's `h11_max_incomplete_event_size` however it arrives (h11 alone lets
  one through when it comes in a single read), and answers any head h11 refuses in AWS's error form
  rather than uvicorn's bare text 400, lingering briefly before closing so that a client still
  sending reads the answer instead of a reset.

uvicorn builds one protocol per connection from its own config, so `http_protocol` bakes the limits
into a subclass to hand it as `http=`.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import resource
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.server import ServerState

from kiln.api.errors import ERROR_TYPE_HEADER, REQUEST_ID_HEADER, describe_error
from kiln.errors import ClientError, ValidationError
from kiln.relay_access import RELAY_PREFIX

log = logging.getLogger(__name__)

# Connections kept open at most. With 64 KiB heads that bounds head buffers to ~64 MiB.
MAX_OPEN_CONNECTIONS = 1000
# A relay upload's body may take its length at this rate on top of the body deadline.
RELAY_UPLOAD_MIN_RATE = 2**20
# The listen backlog, which is also how many connections asyncio accepts in one turn of the loop
# (before any of them can be counted against the cap): so at most a few such batches are in flight.
MAX_ACCEPT_BACKLOG = 128
# How long a refused connection is still read (and discarded) after its answer, so that a client
# still sending gets the answer rather than a reset.
LINGER_SECONDS = 2.0
CAP_WARNING_INTERVAL_SECONDS = 60.0


class RequestTimeoutError(ClientError):
    """The client sent a request head but not its whole body in time (HTTP 408)."""

    http_status = 408


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections may be open."""

    head_timeout: float = 15.0
    body_timeout: float = 60.0
    max_connections: int = MAX_OPEN_CONNECTIONS
    backlog: int = MAX_ACCEPT_BACKLOG  # pass it to uvicorn as `backlog=`
    write_stall_timeout: float = 60.0

    def __post_init__(self) -> None:
        if min(self.head_timeout, self.body_timeout, self.write_stall_timeout) <= 0:
            raise ValidationError(f"request deadlines must be above 0 seconds: {self}")
        if self.max_connections < 1 or self.backlog < 1:
            raise ValidationError(f"connection cap and backlog must be at least 1: {self}")

    @classmethod
    def within_fd_limit(cls, head_timeout: float, body_timeout: float) -> ConnectionLimits:
        """The caps, lowered to fit the soft `RLIMIT_NOFILE`: open connections take at most half the
        process's file descriptors and each accept batch a sixteenth, so the database, logs and
        attempts keep theirs however many sockets a client opens."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return cls(head_timeout, body_timeout)
        connections = max(1, min(MAX_OPEN_CONNECTIONS, soft // 2))
        return cls(head_timeout, body_timeout, connections, max(1, min(MAX_ACCEPT_BACKLOG, soft // 16)))


class HeadLimitedConnection(h11.Connection):
    """h11's server side with a hard cap on the request head, keeping the reason of a refusal.

    h11's `max_incomplete_event_size` bounds only a head still incomplete: one that arrives whole
    in a single read (up to 256 KiB from asyncio) passes whatever its size. uvicorn drops the reason.
    """

    def __init__(self, max_head_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.refusal: h11.RemoteProtocolError | None = None

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            event = super().next_event()
            if isinstance(event, h11.Request) and head_size(event) > self.max_head_bytes:
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            return event
        except h11.RemoteProtocolError as exc:
            self.refusal = self.refusal or exc
            raise


def head_size(request: h11.Request) -> int:
    """The request line and header lines as sent, give or take optional whitespace."""
    line = len(request.method) + 1 + len(request.target) + len(b" HTTP/1.1\r\n")
    return line + sum(len(name) + 2 + len(value) + 2 for name, value in request.headers) + 2


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's `H11Protocol` plus a head deadline, a body deadline and the connection cap."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # This server's connections awaiting a request head, longest waiting first.
    waiting: ClassVar[dict[DeadlineH11Protocol, None]] = {}
    _cap_warned_at: ClassVar[float | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        max_head = config.h11_max_incomplete_event_size
        self.max_head_bytes = max_head if max_head is not None else DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self.conn = HeadLimitedConnection(self.max_head_bytes)
        self.head_deadline: asyncio.TimerHandle | None = None
        self.body_deadline: asyncio.TimerHandle | None = None
        self.write_deadline: asyncio.TimerHandle | None = None
        self.timed_cycle: RequestResponseCycle | None = None  # the request whose head was last seen
        self.refused = False  # answered with an error: what still arrives is discarded

    # -- uvicorn's hooks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_awaiting_head()
        self._cancel_body_deadline()
        self._cancel_write_deadline()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_deadline is None:
            self.write_deadline = self.loop.call_later(self.limits.write_stall_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        self._cancel_write_deadline()
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self.timed_cycle:  # h11 has just yielded a new request head
            self.timed_cycle = self.cycle
            self._stop_awaiting_head()
            self._cancel_body_deadline()
            if self.conn.their_state is h11.SEND_BODY:
                self.body_deadline = self.loop.call_later(self._body_time(), self._body_timed_out)
        elif self.conn.their_state is not h11.SEND_BODY:
            self._cancel_body_deadline()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing() and not self.refused:
            self._await_head()  # before uvicorn's own: it may read a pipelined head at once
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        refusal = self.conn.refusal if isinstance(self.conn, HeadLimitedConnection) else None
        if refusal is not None and refusal.error_status_hint == 431:
            message = f"Request line and headers exceed the limit of {self.max_head_bytes} bytes"
        else:
            message = f"Malformed HTTP request: {refusal or msg}"
        log.debug("refused a request from %s: %s", self.client, message)
        self._refuse(ClientError(message))

    # -- deadlines

    def _await_head(self) -> None:
        self._stop_awaiting_head()
        self.waiting[self] = None
        self.head_deadline = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _stop_awaiting_head(self) -> None:
        self.waiting.pop(self, None)
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _cancel_body_deadline(self) -> None:
        if self.body_deadline is not None:
            self.body_deadline.cancel()
            self.body_deadline = None

    def _cancel_write_deadline(self) -> None:
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None

    def _head_timed_out(self) -> None:
        """Nothing to answer: an idle keep-alive connection is closed the same way."""
        self.head_deadline = None
        log.debug("closing the connection from %s: no request head within %g s", self.client, self.limits.head_timeout)
        self._close()

    def _write_stalled(self) -> None:
        self.write_deadline = None
        stall = self.limits.write_stall_timeout
        log.info("dropping the connection from %s: it read none of its response for %g s", self.client, stall)
        self.transport.abort()

    def _close(self) -> None:
        """Close, or drop when unsent bytes remain: a close waits for them, and a client that reads
        nothing would hold the connection for ever."""
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def _body_time(self) -> float:
        """Seconds the body may take: `body_timeout`, plus time at 1 MiB/s for a relay upload's
        declared length (a scene pack can be gigabytes; every API body is small)."""
        scope = self.cycle.scope if self.cycle is not None else {}
        if scope.get("method") != "PUT" or not str(scope.get("path", "")).startswith(RELAY_PREFIX):
            return self.limits.body_timeout
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        return self.limits.body_timeout + (int(length) / RELAY_UPLOAD_MIN_RATE if length.isdigit() else 0)

    def _body_timed_out(self) -> None:
        self.body_deadline = None
        timeout = self.limits.body_timeout
        log.info("closing the connection from %s: its request body did not arrive within %g s", self.client, timeout)
        self._refuse(RequestTimeoutError(f"The request body did not arrive within {timeout:g} seconds of its headers"))

    # -- the connection cap

    def _make_room(self) -> None:
        """Over the cap: close the connection that has waited longest for a head (maybe this one).

        Each new connection closes at most one, so connections already closing may make the count
        briefly overshoot; `waiting` keeps this O(1) under a flood.
        """
        oldest = next(iter(self.waiting), None)
        if oldest is None:
            return
        oldest._stop_awaiting_head()
        oldest._close()
        now = self.loop.time()
        warned = type(self)._cap_warned_at
        if warned is None or now - warned > CAP_WARNING_INTERVAL_SECONDS:
            type(self)._cap_warned_at = now
            log.warning(
                "%d connections open (the cap): closing those that waited longest for a request head",
                self.limits.max_connections,
            )

    # -- answering an error from outside the app

    def _refuse(self, exc: ClientError) -> None:
        """Answer `exc` in AWS's error form unless a response has begun, then close after a short linger."""
        self._stop_awaiting_head()
        self._cancel_body_deadline()
        if self.transport.is_closing() or self.refused:
            return
        self.refused = True
        if self.conn.our_state is h11.SEND_RESPONSE and self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's receive and send end here, as on a hang-up
            self.cycle.message_event.set()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._write_error(exc)
            self.transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(LINGER_SECONDS, self._close)
        else:
            self._close()

    def _write_error(self, exc: ClientError) -> None:
        request_id = str(uuid.uuid4())
        status, code, message = describe_error(exc, request_id)
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (ERROR_TYPE_HEADER.encode(), code.encode()),
            (REQUEST_ID_HEADER.encode(), request_id.encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase)
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))


def http_protocol(limits: ConnectionLimits) -> type[DeadlineH11Protocol]:
    """The class to pass uvicorn as `http=`, with `limits` built in."""

    class KilnH11Protocol(DeadlineH11Protocol):
        pass

    KilnH11Protocol.limits = limits
    KilnH11Protocol.waiting = {}
    return KilnH11Protocol
