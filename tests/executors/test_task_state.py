"""The rules of a task's run (kiln/executors/task_state.py), without processes: an ECS task ends
with its first essential container; a pod (`eksProperties`) runs every container to its end and
fails with its first failing one."""

from __future__ import annotations

from kiln.executors.task_state import Member, TaskState


def run(state: TaskState, exits: dict[str, int]) -> list[str]:
    """Start what may start, exit it with `exits[name]`, until nothing more starts; the start order."""
    order = []
    while batch := state.ready():
        for member in batch:
            state.start_began(member.name)
            order.append(member.name)
        for member in batch:
            if not state.stopping:
                state.exited(member.name, exits[member.name])
    return order


def test_a_pod_runs_every_container_and_fails_with_the_first_failure() -> None:
    state = TaskState([Member("a", False, ()), Member("b", False, ()), Member("c", False, ())], pod=True)
    assert run(state, {"a": 0, "b": 3, "c": 5}) == ["a", "b", "c"]
    assert state.all_done and not state.stopping  # nothing was stopped
    assert state.exit_code == 3 and state.ending is not None and state.ending.name == "b"


def test_a_pod_that_fails_no_container_succeeds() -> None:
    state = TaskState([Member("init", False, ()), Member("main", False, (("init", "SUCCESS"),))], pod=True)
    assert run(state, {"init": 0, "main": 0}) == ["init", "main"]
    assert state.all_done and state.exit_code == 0


def test_a_failing_init_container_leaves_the_rest_unstarted() -> None:
    members = [Member("i1", False, ()), Member("i2", False, (("i1", "SUCCESS"),)),
               Member("main", False, (("i2", "SUCCESS"),))]  # fmt: skip
    state = TaskState(members, pod=True)
    assert run(state, {"i1": 4, "i2": 0, "main": 0}) == ["i1"]
    assert state.all_done and state.exit_code == 4
    results = state.results()
    assert results["i2"]["reason"].startswith("DependencyConditionFailed: container i1")
    assert results["main"]["exitCode"] is None


def test_an_ecs_task_still_ends_with_its_essential_container() -> None:
    state = TaskState([Member("sidecar", False, ()), Member("main", True, ())])
    state.start_began("sidecar")
    state.start_began("main")
    state.exited("main", 2)
    assert state.stopping and state.exit_code == 2
    assert [member.name for member in state.stop()] == ["sidecar"]  # still running: to be signalled
