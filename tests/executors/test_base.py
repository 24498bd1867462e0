"""The frame every executor shares (kiln/executors/base.py): how an ended attempt is reported in
AWS's words, and how events reach the scheduler."""

from __future__ import annotations

import threading

import pytest

from kiln.executors.base import AttemptExited, AttemptRunning, EventReporter, attempt_ended


@pytest.mark.parametrize(
    ("flags", "exit_code", "expected"),
    [
        ({}, 0, (0, "Essential container in task exited", None)),
        ({}, 3, (3, "Essential container in task exited", None)),
        ({"timed_out": True}, 143, (143, "Job attempt duration exceeded timeout", None)),
        # A terminate reason wins over the timeout that may have fired meanwhile.
        ({"terminated": True, "timed_out": True, "terminate_reason": "stop it"}, 143, (143, "stop it", None)),
        # An OOM kill is exit code 137 with AWS's container reason, whatever the kill left.
        (
            {"oom": True},
            -9,
            (137, "Essential container in task exited", "OutOfMemoryError: Container killed due to memory usage"),
        ),
        ({}, None, (None, "Essential container in task exited", None)),
    ],
)
def test_an_ended_attempt_is_reported_in_aws_words(
    flags: dict[str, object], exit_code: int | None, expected: tuple[int | None, str, str | None]
) -> None:
    event = attempt_ended("task-1", 1234, exit_code, **flags)  # type: ignore[arg-type]
    assert (event.exit_code, event.status_reason, event.reason) == expected
    assert (event.attempt_id, event.at_ms, event.started) == ("task-1", 1234, True)
    assert (event.oom, event.timed_out, event.terminated) == (
        bool(flags.get("oom")),
        bool(flags.get("timed_out")),
        bool(flags.get("terminated")),
    )


def test_events_reach_poll_in_order_and_wake_the_listener_each_time() -> None:
    reporter = EventReporter()
    assert reporter.poll() == []
    reporter._emit(AttemptRunning("before-subscribe", 1))  # queued even before anyone listens
    woken: list[str] = []
    reporter.subscribe(lambda: woken.append(threading.current_thread().name))
    events = [AttemptRunning(f"a{n}", n) for n in range(50)] + [attempt_ended("a0", 99, 0)]
    threads = [
        threading.Thread(target=reporter._emit, args=(event,), name=f"emitter-{n}") for n, event in enumerate(events)
    ]
    for thread in threads:  # one at a time: order is the order they were emitted in
        thread.start()
        thread.join()
    drained = reporter.poll()
    assert drained == [AttemptRunning("before-subscribe", 1), *events]
    assert isinstance(drained[-1], AttemptExited)
    assert woken == [f"emitter-{n}" for n in range(len(events))]  # called on the emitting thread
    assert reporter.poll() == []
