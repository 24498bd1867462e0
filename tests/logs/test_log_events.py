"""Log events out of real files: lines, long lines, unfinished lines, paging both ways, times."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.errors import ValidationError
from kiln.logs import filter_patterns
from kiln.logs.events import MAX_MESSAGE_BYTES, READ_WINDOW, StreamFile, Timeline


def everything(_event: object) -> bool:
    return True


def stream_of(path: Path, data: bytes, *, complete: bool = True, name: str = "jd/default/task") -> StreamFile:
    path.write_bytes(data)
    return StreamFile.open(name, path, 1_000, 2_000 if complete else None, now=3_000)


def forward_pages(stream: StreamFile, page: int) -> list[list[str]]:
    pages: list[list[str]] = []
    position = 0
    for _ in range(10_000):
        events, after = stream.forward(position, page, everything)
        if not events and after == position:
            return pages
        pages.append([event.message for event in events])
        position = after
    raise AssertionError("forward paging did not end")


def backward_pages(stream: StreamFile, page: int) -> list[list[str]]:
    pages: list[list[str]] = []
    position = stream.readable
    for _ in range(10_000):
        events, before = stream.backward(position, page, everything)
        if not events and before == position:
            return pages[::-1]
        pages.append([event.message for event in events])
        position = before
    raise AssertionError("backward paging did not end")


def test_lines_become_events_without_newlines_and_empty_lines_are_skipped(tmp_path: Path) -> None:
    stream = stream_of(tmp_path / "log", b"one\n\ntwo \xc3\xa9\r\n\n\nthree")
    events, end = stream.forward(0, 100, everything)
    assert [event.message for event in events] == ["one", "two \u00e9\r", "three"]
    assert end == stream.size and [event.end for event in events] == [4, 13, 20]


def test_an_unfinished_attempt_hides_its_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log"
    running = stream_of(path, b"a\nb\npart", complete=False)
    assert running.readable == 4
    assert [event.message for event in running.forward(0, 100, everything)[0]] == ["a", "b"]
    assert [event.message for event in running.backward(running.readable, 100, everything)[0]] == ["a", "b"]
    finished = StreamFile.open("jd/default/task", path, 1_000, 2_000, now=3_000)
    assert [event.message for event in finished.forward(4, 100, everything)[0]] == ["part"]


def test_a_line_longer_than_an_event_is_split(tmp_path: Path) -> None:
    long = b"x" * (2 * MAX_MESSAGE_BYTES + 10)
    stream = stream_of(tmp_path / "log", b"head\n" + long + b"\ntail\n")
    sizes = [len(event.message) for event in stream.forward(0, 100, everything)[0]]
    assert sizes == [4, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, 10, 4]
    assert [len(event.message) for event in stream.backward(stream.readable, 100, everything)[0]] == sizes


def test_pages_stop_at_one_megabyte(tmp_path: Path) -> None:
    line = b"y" * 200_000 + b"\n"
    stream = stream_of(tmp_path / "log", line * 12)
    events, _ = stream.forward(0, 10_000, everything)
    assert len(events) == 5  # 5 x 200,000 bytes fit in 1 MiB, a sixth does not
    assert len(stream.backward(stream.readable, 10_000, everything)[0]) == 5


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.text(alphabet="ab \u00e9", max_size=12), max_size=40),
    page=st.integers(min_value=1, max_value=7),
)
def test_paging_either_way_yields_every_event_once_in_order(tmp_path_factory: pytest.TempPathFactory,
                                                            lines: list[str], page: int) -> None:  # fmt: skip
    stream = stream_of(tmp_path_factory.mktemp("log") / "log", "".join(f"{line}\n" for line in lines).encode())
    expected = [line for line in lines if line]
    assert [m for p in forward_pages(stream, page) for m in p] == expected
    assert [m for p in backward_pages(stream, page) for m in p] == expected


def test_times_run_from_start_to_last_write_and_never_go_back(tmp_path: Path) -> None:
    timeline = Timeline(start_ms=1_000, end_ms=2_000, size=100)
    assert [timeline.time_at(offset) for offset in (0, 50, 100, 150)] == [1_000, 1_500, 2_000, 2_000]
    assert Timeline(5, 5, 0).time_at(10) == 5
    stream = stream_of(tmp_path / "log", b"".join(f"line {i}\n".encode() for i in range(50)))
    times = [event.timestamp for event in stream.forward(0, 100, everything)[0]]
    assert times == sorted(times) and times[0] >= 1_000 and times[-1] <= 2_000


def test_tokens_are_stable_and_belong_to_their_stream(tmp_path: Path) -> None:
    stream = stream_of(tmp_path / "log", b"a\nb\n")
    token = stream.token("f", 2)
    assert token == stream.token("f", 2) and stream.parse_token(token) == ("f", 2)
    assert stream.parse_token(stream.token("b", 4)) == ("b", 4)
    other = stream_of(tmp_path / "other", b"a\nb\n", name="jd/default/other")
    for bad in (other.token("f", 2), stream.token("f", 99), "f/2", "x/00000000000000000002/00000000", ""):
        with pytest.raises(ValidationError, match="nextToken"):
            stream.parse_token(bad)


def test_a_missing_file_is_an_empty_stream(tmp_path: Path) -> None:
    stream = StreamFile.open("jd/default/task", tmp_path / "absent.log", None, None, now=3_000)
    assert stream.size == 0 and stream.readable == 0
    assert stream.forward(0, 10, everything) == ([], 0) and stream.backward(0, 10, everything) == ([], 0)


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("", ["anything"], []),
        ("ERROR", ["[ERROR] disk", "xERRORx"], ["error", "WARN"]),
        ("ERROR disk", ["ERROR: disk full"], ["ERROR: cpu", "disk only"]),
        ("?ERROR ?WARN", ["ERROR x", "WARN y"], ["INFO z"]),
        ("frame -skipped", ["frame 3 done"], ["frame 4 skipped"]),
        ('"disk full" -"not really"', ["the disk full now"], ["disk is full", "disk full, not really"]),
        (r'"say \"hi\""', ['they say "hi"'], ["they say hi"]),
    ],
)
def test_plain_term_filter_patterns(pattern: str, matches: list[str], misses: list[str]) -> None:
    parsed = filter_patterns.parse(pattern)
    assert all(parsed.matches(message) for message in matches)
    assert not any(parsed.matches(message) for message in misses)


@pytest.mark.parametrize("pattern", ['{ $.level = "error" }', "[ip, user, status = 500]", "%ERR[A-Z]+%"])
def test_structured_filter_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValidationError, match="plain-term"):
        filter_patterns.parse(pattern)


def test_a_run_of_empty_lines_longer_than_a_read_is_passed_over(tmp_path: Path) -> None:
    stream = stream_of(tmp_path / "log", b"before\n" + b"\n" * (READ_WINDOW + 10) + b"after\n")
    assert [m for page in forward_pages(stream, 10) for m in page] == ["before", "after"]
    assert [m for page in backward_pages(stream, 10) for m in page] == ["before", "after"]
