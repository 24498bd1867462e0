"""Log events out of one attempt's output file: lines, their estimated times, and positions.

An attempt's stdout and stderr go, as the job wrote them, to one file (`job_log.locate`, `Settings.log_file`). CloudWatch
sees each line as an event (the awslogs driver's view), so a line here is an event: its message is
the line without its newline, an empty line is no event (CloudWatch stores none), and a line longer
than an event may be (256 KiB) is split. While the attempt can still write, an unterminated last
line is not shown yet; it appears whole once finished.

Positions are byte offsets at event boundaries, which never move in an append-only file, so a
position token stays valid while the job writes on.

Times: the file holds no time per line, so a line's time is estimated from what is known, the
attempt's start `S` and the file's last write `E` (its mtime, within `S`..stop): a line's time is
`S + (E - S) * end / size`, where `end` is the offset just past the line. That is exact for the
last line written and monotonic in the offset, so time ranges select contiguous runs of lines;
while the attempt runs `E` and `size` grow, so earlier lines' estimates shift a little until it ends.
"""

from __future__ import annotations

import contextlib
import io
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from kiln.errors import ValidationError

MAX_MESSAGE_BYTES = 256 * 1024 - 26  # CloudWatch: an event is at most 256 KiB, 26 bytes of it overhead
MAX_PAGE_BYTES = 1024 * 1024  # GetLogEvents / FilterLogEvents: at most 1 MB of events per response
READ_WINDOW = 1024 * 1024  # bytes read from the file at a time (more than one event, so reads progress)
_TOKEN = re.compile(r"([fb])/(\d{1,20})/([0-9a-f]{8})")


@dataclass(frozen=True)
class Timeline:
    """Estimated event times of one file (see the module's docstring)."""

    start_ms: int
    end_ms: int
    size: int

    def time_at(self, offset: int) -> int:
        if self.size <= 0 or self.end_ms <= self.start_ms:
            return self.start_ms
        return self.start_ms + (self.end_ms - self.start_ms) * min(offset, self.size) // self.size


@dataclass(frozen=True)
class Event:
    start: int  # offset of the line's first byte
    end: int  # offset just past the line and its newline
    timestamp: int
    message: str


@dataclass(frozen=True)
class StreamFile:
    """One stream's file as it is now: `size` bytes; `complete` once the attempt is over and
    nothing more will be written."""

    name: str
    path: Path
    size: int
    complete: bool
    timeline: Timeline

    @cached_property
    def readable(self) -> int:
        """Bytes that hold whole events: all of them once complete, else up to the last newline."""
        return self.size if self.complete else _last_line_end(self.path, self.size)

    @classmethod
    def open(cls, name: str, path: Path, started_ms: int | None, stopped_ms: int | None, now: int) -> StreamFile:
        """`stopped_ms` set means the attempt is over: nothing more will be written."""
        try:
            stat = path.stat()
            size, written = stat.st_size, int(stat.st_mtime * 1000)
        except FileNotFoundError:  # failed to start, or nothing written yet
            size, written = 0, now
        start = started_ms if started_ms is not None else min(written, stopped_ms or now)
        end = max(start, min(written, stopped_ms if stopped_ms is not None else now))
        return cls(name, path, size, stopped_ms is not None, Timeline(start, end, size))

    # -- tokens --------------------------------------------------------------------------------
    def token(self, direction: str, position: int) -> str:
        """`f/<offset>/<stream check>` (read on from here) or `b/...` (read back from here).

        The check ties the token to its stream, so a token from another stream is refused.
        """
        return f"{direction}/{position:020d}/{zlib.crc32(self.name.encode()):08x}"

    def parse_token(self, token: str) -> tuple[str, int]:
        """(direction, position) of a token this stream issued; anything else is the caller's mistake."""
        found = _TOKEN.fullmatch(token)
        if found is None or found[3] != f"{zlib.crc32(self.name.encode()):08x}" or int(found[2]) > self.size:
            raise ValidationError("The specified nextToken is invalid.")
        return found[1], min(int(found[2]), self.readable)

    # -- reading -------------------------------------------------------------------------------
    def forward(
        self, position: int, limit: int, accept: Callable[[Event], bool], scan_bytes: int = 64 * MAX_PAGE_BYTES
    ) -> tuple[list[Event], int]:
        """Up to `limit` accepted events from `position` on, at most 1 MB of them, scanning at most
        about `scan_bytes`; returns them and the position after the last byte looked at."""
        events: list[Event] = []
        used = 0
        with _opened(self.path) as handle:
            while position < self.readable and len(events) < limit and scan_bytes > 0:
                handle.seek(position)
                data = handle.read(min(READ_WINDOW, self.readable - position))
                final = self.complete and position + len(data) >= self.readable
                advanced = position
                for end, event in self._lines(data, position, final):
                    if event is not None:
                        size = len(event.message.encode())
                        if len(events) >= limit or (events and used + size > MAX_PAGE_BYTES):
                            return events, advanced
                        if accept(event):
                            events.append(event)
                            used += size
                    advanced = end
                if advanced == position:
                    break  # a window without a whole line: cannot happen for windows larger than an event
                scan_bytes -= advanced - position
                position = advanced
        return events, position

    def backward(self, position: int, limit: int, accept: Callable[[Event], bool]) -> tuple[list[Event], int]:
        """The last `limit` accepted events ending at or before `position` (at most 1 MB of them),
        oldest first, and the position of the earliest byte looked at."""
        found: list[Event] = []  # newest first
        used = 0
        scanned = 0
        with _opened(self.path) as handle:
            while position > 0 and len(found) < limit and scanned < 64 * MAX_PAGE_BYTES:
                low = max(0, position - READ_WINDOW)
                handle.seek(low)
                data = handle.read(position - low)
                first = 0 if low == 0 else data.find(b"\n") + 1  # skip the line cut by the window
                base = low + first if first else low  # no newline at all: a very long line, cut here
                earliest = position
                final = self.complete or position < self.readable
                for _, event in reversed(list(self._lines(data[base - low :], base, final))):
                    if event is None:
                        continue
                    size = len(event.message.encode())
                    if len(found) >= limit or (found and used + size > MAX_PAGE_BYTES):
                        return found[::-1], earliest
                    if accept(event):
                        found.append(event)
                        used += size
                    earliest = event.start
                scanned += position - base
                position = base
        return found[::-1], position

    def _lines(self, data: bytes, base: int, final: bool) -> Iterator[tuple[int, Event | None]]:
        """(offset past the line, its event) for each line of `data`, which starts at a line start at
        offset `base`; an empty line has no event. An unterminated last line counts only when
        `final` (or when it alone overflows an event)."""
        index = 0
        while index < len(data):
            newline = data.find(b"\n", index, index + MAX_MESSAGE_BYTES + 1)
            if newline == -1:
                if len(data) - index > MAX_MESSAGE_BYTES:
                    cut = index + MAX_MESSAGE_BYTES  # a line too long for one event: split it
                elif final:
                    cut = len(data)
                else:
                    return  # the rest of this line lies beyond the window
                line, after = data[index:cut], cut
            else:
                line, after = data[index:newline], newline + 1
            end = base + after
            message = line.decode("utf-8", errors="replace")
            yield end, Event(base + index, end, self.timeline.time_at(end), message) if line else None
            index = after


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    """The file opened for reading, or an empty stand-in when it does not exist (yet)."""
    try:
        handle: BinaryIO = path.open("rb")
    except FileNotFoundError:
        handle = io.BytesIO()
    with handle:
        yield handle


def _last_line_end(path: Path, size: int) -> int:
    """Offset just past the last newline: the whole events of a file that is still being written."""
    if size == 0:
        return 0
    low = max(0, size - MAX_MESSAGE_BYTES - 1)
    with _opened(path) as handle:
        handle.seek(low)
        tail = handle.read(size - low)
    newline = tail.rfind(b"\n")
    if newline == -1:  # no line ends yet, or one longer than an event: its whole pieces can show
        return size if low > 0 else 0
    return low + newline + 1
