"""Start-ahead chains where attempts run (kiln/executors/chains.py): who waits for whom, and who
starts when an attempt ends or a queued one is stopped."""

from __future__ import annotations

from pathlib import Path

from kiln.executors.base import AttemptSpec
from kiln.executors.chains import StartChains


def spec(attempt_id: str, after: str | None = None) -> AttemptSpec:
    return AttemptSpec(attempt_id=attempt_id, job_id=f"job-{attempt_id}", image="host", command=["true"],
                       environment={}, vcpus=1, memory_mib=32, log_path=Path("/dev/null"), workdir=Path("/tmp"),
                       start_after=after)  # fmt: skip


def test_an_attempt_waits_only_behind_one_that_is_live_or_queued() -> None:
    chains = StartChains()
    assert not chains.hold(spec("a"), live={"a"})  # no predecessor: start now
    assert not chains.hold(spec("b", after="gone"), live={"a"})  # its predecessor is over: start now
    assert chains.hold(spec("b", after="a"), live={"a"})
    assert chains.hold(spec("c", after="b"), live={"a"})  # behind a queued one
    assert chains.queued == {"b": "a", "c": "b"}


def test_an_ended_attempt_releases_its_follower_without_its_start_after() -> None:
    chains = StartChains()
    chains.hold(spec("b", after="a"), live={"a"})
    chains.hold(spec("c", after="b"), live={"a"})
    [b] = chains.released("a")
    assert (b.attempt_id, b.start_after) == ("b", None)
    assert chains.queued == {"c": "b"}
    assert chains.released("nobody-waits") == []
    [c] = chains.released("b")
    assert c.attempt_id == "c" and chains.queued == {} and not any(chains.waiting.values())


def test_a_queued_attempt_stopped_before_it_starts_hands_its_followers_to_its_predecessor() -> None:
    chains = StartChains()
    chains.hold(spec("b", after="a"), live={"a"})
    chains.hold(spec("c", after="b"), live={"a"})
    assert chains.drop("b")
    assert not chains.drop("b")  # once
    assert not chains.drop("a")  # running, not queued: the caller terminates it
    assert chains.queued == {"c": "a"}
    assert [s.attempt_id for s in chains.released("a")] == ["c"]
