"""The frame every executor shares (kiln/executors/base.py): how an ended attempt is reported in
AWS's words, and how events reach the scheduler."""

from __future__ import annotations

import threading

import pytest

from kiln.executors.base import (
    CANNOT_START_PREFIX,
    TASK_FAILED_TO_START,
    AttemptExited,
    AttemptRunning,
    AttemptSpec,
    AttemptStop,
    EventReporter,
    attempt_ended,
)

from .helpers import SpecFactory


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


def test_a_timeout_is_due_only_once_the_attempt_runs_and_its_time_has_passed() -> None:
    stop = AttemptStop(timeout_seconds=60)
    assert not stop.time_out(10_000.0)  # not running yet: AWS counts from startedAt
    stop.running_since(100.0)
    assert stop.deadline == 160.0
    assert not stop.time_out(159.9)
    assert stop.time_out(160.0)
    assert not stop.time_out(161.0)  # once
    event = stop.ended("t", 5, 143)
    assert (event.status_reason, event.timed_out, event.terminated) == (
        "Job attempt duration exceeded timeout",
        True,
        False,
    )


def test_no_timeout_without_timeout_seconds() -> None:
    stop = AttemptStop()
    stop.running_since(0.0)
    assert stop.deadline is None
    assert not stop.time_out(10**9)


def test_the_first_stop_wins() -> None:
    terminated = AttemptStop(timeout_seconds=1)
    terminated.running_since(0.0)
    assert terminated.terminate("user asked")
    assert not terminated.terminate("again")  # a second request changes nothing
    assert not terminated.time_out(5.0)  # nor does the timeout that passes meanwhile
    assert terminated.ended("t", 1, 143).status_reason == "user asked"

    timed_out = AttemptStop(timeout_seconds=1)
    timed_out.running_since(0.0)
    assert timed_out.time_out(1.0)
    assert not timed_out.terminate("too late")
    assert timed_out.ended("t", 1, 143).status_reason == "Job attempt duration exceeded timeout"

    out_of_memory = AttemptStop()
    out_of_memory.oom = True
    assert not out_of_memory.terminate("after the kernel's kill")
    assert (out_of_memory.ended("t", 1, -9).exit_code, out_of_memory.ended("t", 1, -9).terminated) == (137, False)


def test_sigkill_follows_the_grace_and_a_shorter_grace_brings_it_forward() -> None:
    stop = AttemptStop()
    assert not stop.kill_due(10**9)  # no SIGTERM sent: nothing to escalate
    stop.grace(100.0, 30.0)
    assert not stop.kill_due(129.0)
    assert stop.kill_due(130.0)
    stop.grace(101.0, 5.0)  # a server shutting down waits less
    assert stop.kill_at == 106.0
    stop.grace(102.0, 60.0)  # a longer grace never postpones it
    assert stop.kill_at == 106.0


def test_an_oom_learnt_at_the_end_is_reported_as_aws_does() -> None:
    event = AttemptStop().ended("t", 7, 1, oom=True)
    assert (event.exit_code, event.reason, event.oom) == (
        137,
        "OutOfMemoryError: Container killed due to memory usage",
        True,
    )


class _OneBadStart(EventReporter):
    """An executor whose `start` has a bug for one attempt (as any executor's might)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []

    def start(self, spec: AttemptSpec) -> None:
        if spec.attempt_id == "bad":
            raise RuntimeError("a bug in start")
        self.started.append(spec.attempt_id)


def test_a_start_that_raises_fails_that_attempt_alone_and_the_others_start(make_spec: SpecFactory) -> None:
    executor = _OneBadStart()
    specs = [make_spec(["true"], attempt_id=name) for name in ("first", "bad", "last")]
    executor.start_many(specs)
    assert executor.started == ["first", "last"]
    [event] = executor.poll()
    assert isinstance(event, AttemptExited)
    assert (event.attempt_id, event.started, event.status_reason) == ("bad", False, TASK_FAILED_TO_START)
    assert event.reason == f"{CANNOT_START_PREFIX}: a bug in start"
