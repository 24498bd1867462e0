"""The attempt supervisor, through the server's client: a real supervisor process, real attempts."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kiln.config import Settings
from kiln.executors.base import AttemptRunning
from kiln.executors.images import ImageCatalogue
from kiln.executors.supervised import SupervisedExecutor, stop_supervisor
from kiln.executors.supervisor_wire import JOURNAL_NAME

from .helpers import SpecFactory, exited, wait_for_exit


@pytest.fixture
def supervised(settings: Settings) -> Iterator[SupervisedExecutor]:
    executor = SupervisedExecutor(settings, ImageCatalogue(), "kiln-test-host")
    yield executor
    executor.shutdown()
    assert stop_supervisor(settings.executor_dir)


def _supervisor_process(settings: Settings) -> psutil.Process:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "kiln.executors.supervisor" in cmdline and str(settings.executor_dir) in cmdline:
            return process
    raise AssertionError("no supervisor process")


def test_runs_an_attempt_outside_the_server_process(supervised: SupervisedExecutor, make_spec: SpecFactory,
                                                    settings: Settings) -> None:  # fmt: skip
    spec = make_spec(["sh", "-c", "echo $PPID; exit 4"])
    supervised.start(spec)
    events = wait_for_exit(supervised, spec.attempt_id)
    assert isinstance(events[0], AttemptRunning)
    assert exited(events).exit_code == 4
    parent = int(spec.log_path.read_text().split()[0])
    assert parent == _supervisor_process(settings).pid  # the supervisor, not this process, is the parent


def test_start_after_waits_for_the_predecessor(supervised: SupervisedExecutor, make_spec: SpecFactory,
                                               tmp_path: Path) -> None:  # fmt: skip
    order = tmp_path / "order"
    first = make_spec(["sh", "-c", f"sleep 0.5; echo first >> {order}"])
    second = make_spec(["sh", "-c", f"echo second >> {order}"], start_after=first.attempt_id)
    third = make_spec(["sh", "-c", f"echo third >> {order}"], start_after=second.attempt_id)
    for spec in (first, second, third):
        supervised.start(spec)
    assert exited(wait_for_exit(supervised, third.attempt_id)).exit_code == 0
    assert order.read_text().split() == ["first", "second", "third"]


def test_a_tick_of_placements_starts_together_in_order(supervised: SupervisedExecutor, make_spec: SpecFactory,
                                                       tmp_path: Path) -> None:  # fmt: skip
    order = tmp_path / "order"
    head = make_spec(["sh", "-c", f"sleep 0.2; echo head >> {order}"])
    chain = [head]
    for name in ("one", "two"):
        chain.append(make_spec(["sh", "-c", f"echo {name} >> {order}"], start_after=chain[-1].attempt_id))
    supervised.start_many(chain)  # one message for all three
    assert exited(wait_for_exit(supervised, chain[-1].attempt_id)).exit_code == 0
    assert order.read_text().split() == ["head", "one", "two"]


def test_events_held_while_chains_keep_slots_fed_still_arrive_promptly(supervised: SupervisedExecutor,
                                                                      make_spec: SpecFactory) -> None:  # fmt: skip
    """With an attempt still queued behind a running one, the supervisor holds events to send them
    in batches (`EVENT_BATCH_SECONDS`); the head's exit must still arrive long before the chain ends."""
    head = make_spec(["true"])
    running = make_spec(["sleep", "3"], start_after=head.attempt_id)
    queued = make_spec(["true"], start_after=running.attempt_id)
    supervised.start_many([head, running, queued])
    started = time.monotonic()
    assert exited(wait_for_exit(supervised, head.attempt_id, timeout=2.5)).exit_code == 0
    assert time.monotonic() - started < 2.5  # not held until the queue emptied (3 s on)
    assert exited(wait_for_exit(supervised, queued.attempt_id)).exit_code == 0


def test_a_queued_attempt_can_be_terminated_before_it_starts(supervised: SupervisedExecutor,
                                                             make_spec: SpecFactory) -> None:  # fmt: skip
    head = make_spec(["sleep", "0.5"])
    queued = make_spec(["sh", "-c", "echo never"], start_after=head.attempt_id)
    behind = make_spec(["true"], start_after=queued.attempt_id)
    for spec in (head, queued, behind):
        supervised.start(spec)
    supervised.terminate(queued.attempt_id, "Terminated by test")
    gone = exited(wait_for_exit(supervised, queued.attempt_id))
    assert (gone.started, gone.terminated, gone.status_reason) == (False, True, "Terminated by test")
    assert not queued.log_path.exists()
    assert exited(wait_for_exit(supervised, behind.attempt_id)).exit_code == 0  # waited for `head` instead


def test_a_new_client_adopts_running_and_finished_attempts(settings: Settings, make_spec: SpecFactory) -> None:
    first = SupervisedExecutor(settings, ImageCatalogue(), "kiln-test-host")
    quick, slow = make_spec(["sh", "-c", "exit 7"]), make_spec(["sleep", "1"])
    first.start(quick)
    first.start(slow)
    time.sleep(0.3)
    first.shutdown()  # as a server stopping, or killed, would: nothing acknowledged
    second = SupervisedExecutor(settings, ImageCatalogue(), "kiln-test-host")
    try:
        adoption = second.adopt([quick.attempt_id, slow.attempt_id, "never-placed"])
        assert adoption.known == {quick.attempt_id, slow.attempt_id}
        assert adoption.never_started == {"never-placed"}  # safe to start: nothing ran under that id
        assert exited(wait_for_exit(second, quick.attempt_id)).exit_code == 7  # replayed with its real exit
        assert exited(wait_for_exit(second, slow.attempt_id)).exit_code == 0
        second.acknowledge([quick.attempt_id, slow.attempt_id])
    finally:
        second.shutdown()
        assert stop_supervisor(settings.executor_dir)


def test_exits_survive_the_supervisor_itself_through_its_journal(settings: Settings, make_spec: SpecFactory) -> None:
    client = SupervisedExecutor(settings, ImageCatalogue(), "kiln-test-host")
    done, running = make_spec(["sh", "-c", "exit 5"]), make_spec(["sleep", "30"])
    client.start(done)
    client.start(running)
    wait_for_exit(client, done.attempt_id)
    client.shutdown()
    assert '"exit_code":5' in (settings.executor_dir / JOURNAL_NAME).read_text()
    supervisor = _supervisor_process(settings)
    supervisor.send_signal(signal.SIGKILL)
    psutil.wait_procs([supervisor], timeout=10)
    again = SupervisedExecutor(settings, ImageCatalogue(), "kiln-test-host")  # a new supervisor
    try:
        adoption = again.adopt([done.attempt_id, running.attempt_id])
        assert adoption.known == {done.attempt_id}
        assert adoption.never_started == set()  # `running` had started: it is lost, not restartable
        assert exited(wait_for_exit(again, done.attempt_id)).exit_code == 5
        deadline = time.monotonic() + 5
        while any(p.info["cmdline"] == ["sleep", "30"] for p in psutil.process_iter(["cmdline"])):
            assert time.monotonic() < deadline, "the lost attempt's process was left running"
            time.sleep(0.05)
    finally:
        again.shutdown()
        assert stop_supervisor(settings.executor_dir)


def test_stop_terminates_every_attempt(settings: Settings, make_spec: SpecFactory) -> None:
    client = SupervisedExecutor(settings, ImageCatalogue(), "kiln-test-host")
    spec = make_spec(["sleep", "31"])
    client.start(spec)
    time.sleep(0.3)
    client.shutdown()
    assert stop_supervisor(settings.executor_dir)
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "31"]]
