"""The pure rules of multi-node parallel jobs: node ranges, node resolution under `nodeOverrides`,
the job's outcome from its main node, and gang placement in `scheduling.plan`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.batch import multinode
from kiln.engine.lifecycle import Status
from kiln.engine.lifecycle.gangs import outcome
from kiln.engine.scheduling import INSUFFICIENT_CAPACITY, JOB_REQUIREMENT, MAX_RESOURCE, Candidate, plan
from kiln.errors import ValidationError
from kiln.store.records import Attempt, Job
from tests.engine.test_scheduling import Scenario, scenarios

CONTAINER = {"image": "host", "vcpus": 1, "memory": 64, "command": ["run", "Ref::mode"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0:3", (0, 3, False)), (":2", (0, 2, False)), ("2:", (2, 9, True)), ("4", (4, 4, False)), ("0:9", (0, 9, False))],
)
def test_parse_range(text: str, expected: tuple[int, int, bool]) -> None:
    assert multinode.parse_range(text, 10) == multinode.NodeRange(*expected)


@pytest.mark.parametrize("text", ["", ":", "a", "1:x", "-1:2", "3:1", "0:10", "10:", "1:2:3"])
def test_parse_range_refuses(text: str) -> None:
    with pytest.raises(ValidationError):
        multinode.parse_range(text, 10)


def _properties(*ranges: tuple[str, dict[str, Any]], num_nodes: int = 6, main: int = 0) -> dict[str, Any]:
    entries = [{"targetNodes": target, "container": {**CONTAINER, **extra}} for target, extra in ranges]
    return {"numNodes": num_nodes, "mainNode": main, "nodeRangeProperties": entries}


def test_nested_range_overrides_the_wider_one_for_its_nodes() -> None:
    properties = _properties(("0:5", {}), ("4:5", {"image": "special"}), ("0", {"image": "main"}))
    multinode.check_node_properties(properties)
    nodes = multinode.resolve(properties, None, {"mode": "fast"})
    assert [c["image"] for c in nodes.containers] == ["main", "host", "host", "host", "special", "special"]
    assert all(c["command"] == ["run", "fast"] for c in nodes.containers)
    assert properties["nodeRangeProperties"][0]["container"]["command"] == ["run", "Ref::mode"]  # not mutated


def test_num_nodes_override_grows_the_open_range_and_overrides_match_by_range() -> None:
    properties = _properties(("0", {}), ("1:", {}), num_nodes=2)
    overrides = {"numNodes": 4, "nodePropertyOverrides": [
        {"targetNodes": "1:3", "containerOverrides": {"command": ["worker"]}},
        {"targetNodes": "0:0", "containerOverrides": {"environment": [{"name": "ROLE", "value": "main"}]}},
    ]}  # fmt: skip
    nodes = multinode.resolve(properties, overrides, {})
    assert nodes.num_nodes == 4 and nodes.node_properties["numNodes"] == 4
    assert [c["command"] for c in nodes.containers] == [["run", "Ref::mode"], ["worker"], ["worker"], ["worker"]]
    assert nodes.containers[0]["environment"] == [{"name": "ROLE", "value": "main"}]
    assert nodes.node_properties["nodeRangeProperties"][1]["targetNodes"] == "1:"


def test_override_targets_must_match_a_definition_range() -> None:
    properties = _properties(("0", {}), ("1:", {}), num_nodes=3)
    with pytest.raises(ValidationError, match=r"^NodeOverride targets should match job definition\. Non matching "
                                              r"targets - 0:1, x$"):  # fmt: skip
        multinode.resolve(properties, {"nodePropertyOverrides": [{"targetNodes": "0:1"}, {"targetNodes": "x"}]}, {})


def test_node_ids() -> None:
    assert multinode.node_id("abc", 2) == "abc#2"
    assert multinode.split_node_id("abc#2") == ("abc", 2)
    assert multinode.split_node_id("abc") is None and multinode.split_node_id("abc#") is None
    assert multinode.split_node_id("abc:3") is None


def _row(status: str, **extra: Any) -> Job:
    spec = {"retryStrategy": {"attempts": 2}, "nodeProperties": {"mainNode": 0}}
    row = Job.new("mnp", "mnp", "q", "d", status, 0, vcpus=1.0, memory_mib=64, spec=spec, num_nodes=2)
    row.status_reason, row.attempt_count = "Essential container in task exited", 1
    return dataclasses.replace(row, **extra)


def _attempt(exit_code: int, status_reason: str = "Essential container in task exited") -> Attempt:
    return Attempt(task_id="t", job_id="mnp#0", number=1, compute_environment="ce", log_stream="s", vcpus=1.0,
                   memory_mib=64, gpus=0, active=False, exit_code=exit_code, reason=None,
                   status_reason=status_reason)  # fmt: skip


def test_outcome_follows_the_main_node() -> None:
    job = _row("RUNNING")
    assert outcome(job, _row("SUCCEEDED"), _attempt(0))[0] is Status.SUCCEEDED
    assert outcome(job, _row("FAILED"), _attempt(1)) == (Status.RUNNABLE, None)  # attempt 1 of 2
    assert outcome(dataclasses.replace(job, attempt_count=2), _row("FAILED"), _attempt(1))[0] is Status.FAILED
    timed_out = _attempt(137, "Job attempt duration exceeded timeout")
    assert outcome(job, _row("FAILED"), timed_out)[0] is Status.FAILED
    stopped = dataclasses.replace(job, is_terminated=True, spec={**job.spec, "stopReason": "enough"})
    assert outcome(stopped, _row("FAILED"), _attempt(143)) == (Status.FAILED, "enough")


@settings(max_examples=80, deadline=None)
@given(scenarios(), st.data())
def test_a_gang_is_placed_whole_or_waits_with_a_reason(scenario: Scenario, data: st.DataObject) -> None:
    """A gang is one candidate of the summed size: placed once, or left waiting with the capacity
    diagnostic (or a never-fits one); the plan is otherwise what it would be."""
    gangs = {job.job_id for job in scenario.candidates if data.draw(st.booleans())}
    candidates = [dataclasses.replace(job, gang=job.job_id in gangs) for job in scenario.candidates]
    with_gangs = plan(candidates, scenario.queues, scenario.environments, scenario.host_free, scenario.host_total)
    without = scenario.run()
    assert with_gangs.placements == without.placements
    for job in candidates:
        reason = with_gangs.diagnostics.get(job.job_id)
        if any(p.job_id == job.job_id for p in with_gangs.placements):
            assert job.job_id not in with_gangs.diagnostics
        elif job.gang:
            assert reason in (INSUFFICIENT_CAPACITY, JOB_REQUIREMENT, MAX_RESOURCE)
        else:
            assert reason == without.diagnostics[job.job_id]


def test_gang_waiting_for_room_gets_the_capacity_reason() -> None:
    from kiln.engine.scheduling import EnvironmentView, QueueView, Resources

    queue = QueueView("q", 1, ("ce",))
    gang = Candidate("g", "q", 3.0, 192, 0, gang=True)
    small = Candidate("s", "q", 1.0, 64)
    result = plan(
        [gang, small], [queue], [EnvironmentView("ce", True, 3.0, 1.0)], Resources(7, 4096), Resources(8, 4096)
    )
    assert [p.job_id for p in result.placements] == ["s"]
    assert result.diagnostics == {"g": INSUFFICIENT_CAPACITY}
