"""Start-ahead chains: who waits behind whom, and how the speed of an array decides the depth."""

from __future__ import annotations

from kiln.engine.start_ahead import HORIZON_MS, MAX_DEPTH, MIN_SAMPLES, StartAhead
from kiln.executors.base import AttemptExited, AttemptRunning

SMALL = (1.0, 64, 0)


def _exit(task: str, at_ms: int, terminated: bool = False) -> AttemptExited:
    return AttemptExited(task, at_ms, 0, "Essential container in task exited", terminated=terminated)


def _warm(ahead: StartAhead, parent: str, duration_ms: int, samples: int = MIN_SAMPLES) -> None:
    """Children of `parent` that ran for `duration_ms` each."""
    for i in range(samples):
        task = f"warm-{parent}-{i}"
        ahead.placed(task, parent, "ce", SMALL, None)
        ahead.observe([AttemptRunning(task, 1000 * i), _exit(task, 1000 * i + duration_ms)])


def test_nothing_is_chained_before_an_array_proved_fast() -> None:
    ahead = StartAhead()
    ahead.placed("t1", "p", "ce", SMALL, None)
    assert ahead.room() == 0
    assert ahead.chain([("j2", "p", SMALL)]) == []


def test_an_exit_without_its_running_event_still_times_the_child() -> None:
    """The supervisor drops the `AttemptRunning` of a child whose exit goes in the same batch; the
    exit's `started_at` gives the duration instead."""
    ahead = StartAhead()
    for i in range(MIN_SAMPLES):
        task = f"quick-{i}"
        ahead.placed(task, "p", "ce", SMALL, None)
        ahead.observe([AttemptExited(task, 1000 * i + 5, 0, "Essential container in task exited", started_at=1000 * i)])
    ahead.placed("t1", "p", "ce", SMALL, None)
    assert ahead.room() == min(MAX_DEPTH, int(HORIZON_MS / 5))


def test_slow_arrays_never_chain() -> None:
    ahead = StartAhead()
    _warm(ahead, "p", duration_ms=int(HORIZON_MS) * 2)
    ahead.placed("t1", "p", "ce", SMALL, None)
    assert ahead.room() == 0


def test_fast_array_chains_in_queue_order_behind_the_tail() -> None:
    ahead = StartAhead()
    _warm(ahead, "p", duration_ms=int(HORIZON_MS / 3))  # depth 3
    ahead.placed("t1", "p", "ce", SMALL, None)
    chained = ahead.chain([(f"j{i}", "p", SMALL) for i in range(5)])
    assert [c.job_id for c in chained] == ["j0", "j1", "j2"]
    assert chained[0].after == "t1"
    assert chained[1].after == chained[0].task_id
    assert chained[2].after == chained[1].task_id
    assert {c.environment for c in chained} == {"ce"}
    for c in chained:
        ahead.placed(c.task_id, "p", c.environment, SMALL, c.after)
    assert ahead.queued() == {c.task_id for c in chained}
    assert ahead.room() == 0


def test_a_job_that_cannot_be_chained_stops_the_chain() -> None:
    ahead = StartAhead()
    _warm(ahead, "p", duration_ms=10)
    ahead.placed("t1", "p", "ce", SMALL, None)
    chained = ahead.chain([("j0", "p", SMALL), ("other", "q", SMALL), ("j1", "p", SMALL)])
    assert [c.job_id for c in chained] == ["j0"]  # `other` is first in the queue: nothing overtakes it
    bigger = ahead.chain([("big", "p", (2.0, 64, 0))])
    assert bigger == []  # needs more than the place it would take


def test_the_first_follower_takes_the_place_when_its_predecessor_ends() -> None:
    ahead = StartAhead()
    _warm(ahead, "p", duration_ms=10)
    ahead.placed("t1", "p", "ce", SMALL, None)
    first, second = ahead.chain([("j0", "p", SMALL), ("j1", "p", SMALL)])
    ahead.placed(first.task_id, "p", "ce", SMALL, first.after)
    ahead.placed(second.task_id, "p", "ce", SMALL, second.after)
    ahead.observe([AttemptRunning("t1", 0), _exit("t1", 5)])
    assert ahead.queued() == {second.task_id}
    assert ahead.queued_usage() == {"ce": SMALL}  # what the scheduler must not count as held
    ahead.observe([_exit("t1", 5)])  # a failed tick replays events: nothing moves twice
    assert ahead.queued() == {second.task_id}
    ahead.observe([_exit(second.task_id, 6, terminated=True)])  # terminated while it waited
    assert ahead.queued() == set()
    assert ahead.queued_usage() == {}
    assert ahead.chain([("j2", "p", SMALL)])[0].after == first.task_id


def test_depth_is_capped() -> None:
    ahead = StartAhead()
    _warm(ahead, "p", duration_ms=0)
    ahead.placed("t1", "p", "ce", SMALL, None)
    assert len(ahead.chain([(f"j{i}", "p", SMALL) for i in range(MAX_DEPTH * 2)])) == MAX_DEPTH


def test_forget_undoes_placements_that_were_not_committed() -> None:
    ahead = StartAhead()
    _warm(ahead, "p", duration_ms=10)
    ahead.placed("kept", "p", "ce", SMALL, None)
    ahead.placed("head", "p", "ce", SMALL, None)
    first, second = ahead.chain([("j0", "p", SMALL), ("j1", "p", SMALL)])
    ahead.placed(first.task_id, "p", "ce", SMALL, first.after)
    ahead.placed(second.task_id, "p", "ce", SMALL, second.after)
    before = ahead.room()
    ahead.forget(["head", first.task_id, second.task_id])  # the tick that placed them failed
    assert ahead.queued() == set()
    assert ahead.queued_usage() == {}
    assert ahead.room() < before  # "head" no longer offers a place
    assert [c.after for c in ahead.chain([("j2", "p", SMALL)])] == ["kept"]
