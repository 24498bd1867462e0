"""The Ray node agent's own rules, on this host without a Ray cluster: the agent is a plain class
(Ray wraps it as an actor), hosting the real local executor. Start-ahead chains on the node, and
refusing starts from a server that is not the one that configured it last."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.config import Settings
from kiln.executors.base import AttemptEvent, AttemptExited, AttemptRunning, AttemptSpec
from kiln.executors.ray_node import Handed, NodeAgent

from .helpers import SpecFactory


@pytest.fixture
def agent(settings: Settings) -> Iterator[NodeAgent]:
    tag = f"test-{uuid.uuid4().hex[:8]}"
    node = NodeAgent("node-1", tag)
    node.configure(settings, {}, "server-1")
    yield node
    node._engine().shutdown(grace_seconds=0.2)
    shutil.rmtree(Path(tempfile.gettempdir()) / "kiln-ray" / f"{tag}-node-1", ignore_errors=True)


def events_until(agent: NodeAgent, done: set[str], timeout: float = 15.0) -> list[AttemptEvent]:
    """Every event the agent reports until each attempt in `done` has exited."""
    events: list[AttemptEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += agent.report().events
        if done <= {e.attempt_id for e in events if isinstance(e, AttemptExited)}:
            return events
        time.sleep(0.02)
    raise AssertionError(f"{done} did not all exit within {timeout}s: {events}")


def handed(*specs: AttemptSpec) -> list[Handed]:
    return [Handed(spec, "kiln-test-slot-1") for spec in specs]


def test_a_follower_waits_on_the_node_and_starts_when_its_predecessor_ends(
    agent: NodeAgent, make_spec: SpecFactory
) -> None:
    first = make_spec(["sh", "-c", "sleep 0.5; echo first"])
    second = make_spec(["sh", "-c", "echo second"], start_after=first.attempt_id)
    third = make_spec(["sh", "-c", "echo third"], start_after=second.attempt_id)
    agent.start(handed(first, second, third), "server-1")
    events = events_until(agent, {first.attempt_id, second.attempt_id, third.attempt_id})
    at = {(type(e).__name__, e.attempt_id): e.at_ms for e in events}
    # Each starts only once its predecessor is over, without the server asking again.
    assert at["AttemptRunning", second.attempt_id] >= at["AttemptExited", first.attempt_id]
    assert at["AttemptRunning", third.attempt_id] >= at["AttemptExited", second.attempt_id]
    assert all(e.exit_code == 0 for e in events if isinstance(e, AttemptExited))


def test_a_queued_follower_that_is_terminated_never_starts(
    agent: NodeAgent, make_spec: SpecFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    first = make_spec(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"])
    second = make_spec(["sh", "-c", f"touch {tmp_path / 'ran'}"], start_after=first.attempt_id)
    third = make_spec(["sh", "-c", "echo third"], start_after=second.attempt_id)
    agent.start(handed(first, second, third), "server-1")
    agent.terminate(second.attempt_id, "Terminated by the test")
    events = events_until(agent, {second.attempt_id})
    (stopped,) = [e for e in events if isinstance(e, AttemptExited)]
    assert (stopped.attempt_id, stopped.started, stopped.terminated) == (second.attempt_id, False, True)
    assert stopped.status_reason == "Terminated by the test"
    gate.touch()
    events += events_until(agent, {first.attempt_id, third.attempt_id})
    # The one behind it waited for its predecessor's predecessor instead, and ran.
    assert {e.attempt_id for e in events if isinstance(e, AttemptRunning)} == {first.attempt_id, third.attempt_id}
    assert not (tmp_path / "ran").exists()


def test_starts_from_a_server_that_configured_the_agent_earlier_are_refused(
    agent: NodeAgent, make_spec: SpecFactory, settings: Settings
) -> None:
    """A dead server's hand-over still in flight must not start after its successor took stock."""
    agent.configure(settings, {}, "server-2")
    late = make_spec(["true"])
    agent.start(handed(late), "server-1")
    time.sleep(0.5)
    assert agent.report().events == [] and agent.idle()
    assert agent.adopt([late.attempt_id]) == {}
    current = make_spec(["true"])
    agent.start(handed(current), "server-2")
    (ended,) = [e for e in events_until(agent, {current.attempt_id}) if isinstance(e, AttemptExited)]
    assert ended.exit_code == 0


def test_adoption_names_each_attempts_slot_and_drops_queued_attempts_nobody_claims(
    agent: NodeAgent, make_spec: SpecFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    first = make_spec(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"])
    second = make_spec(["sh", "-c", f"touch {tmp_path / 'ran'}"], start_after=first.attempt_id)
    agent.start(handed(first, second), "server-1")
    deadline = time.monotonic() + 10
    while agent.adopt([first.attempt_id, second.attempt_id])[first.attempt_id].started_at is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    known = agent.adopt([first.attempt_id, second.attempt_id])
    assert {a: (k.slot, k.started_at is None) for a, k in known.items()} == {
        first.attempt_id: ("kiln-test-slot-1", False),
        second.attempt_id: ("kiln-test-slot-1", True),  # still queued: not running yet
    }
    assert set(agent.adopt([first.attempt_id])) == {first.attempt_id}  # the queued one is over for the server
    gate.touch()
    events = events_until(agent, {first.attempt_id})
    time.sleep(0.3)
    events += agent.report().events
    assert {e.attempt_id for e in events} == {first.attempt_id}
    assert not (tmp_path / "ran").exists()
