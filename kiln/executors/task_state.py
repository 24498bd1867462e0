"""The rules of an `ecsProperties` task's run, without processes or containers: which container may
start (`dependsOn`), which never will, when the task ends (an essential container ended) and with
what exit code. The local executor's task runner and the Docker executor both follow them.

START is met once the other container started; COMPLETE once it exited; SUCCESS once it exited with
0. A condition that can no longer be met (SUCCESS after a failure, or the other container never
started) leaves the container unstarted, with a `DependencyConditionFailed` reason. The first
essential container to end (exit, or never start) ends the task: the others are to be stopped and
the task's exit code is that container's (1 if it never started).

An `eksProperties` pod (`pod=True`) follows Kubernetes instead: no container is essential and none
ends the others; the task ends once every container has, and its exit code is that of the first
container that failed (exited non-zero, or never started), 0 when none did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEPENDENCY_FAILED = "DependencyConditionFailed"
CANNOT_START = "CannotStartContainerError"
STOPPED_BEFORE_START = "the task stopped before the container started"
NOT_STARTED_EXIT_CODE = 1


@dataclass
class Member:
    name: str
    essential: bool
    depends_on: tuple[tuple[str, str], ...]
    started: bool = False
    exit_code: int | None = None
    reason: str | None = None
    skipped: bool = False

    @property
    def done(self) -> bool:
        return self.skipped or self.exit_code is not None

    @property
    def running(self) -> bool:
        return self.started and self.exit_code is None


class TaskState:
    """One task's containers and what has happened to them (not thread-safe: callers lock)."""

    def __init__(self, members: list[Member], pod: bool = False) -> None:
        self.members = {member.name: member for member in members}
        # The essential container whose end ends the task; in a pod, the first container that failed.
        self.ending: Member | None = None
        self.stopping = False
        self.pod = pod

    def _condition(self, dependency: tuple[str, str]) -> bool | None:
        """True: met; False: can never be met; None: not yet."""
        other = self.members[dependency[0]]
        if other.skipped:
            return False
        if dependency[1] == "START":
            return True if other.started else None
        if other.exit_code is None:
            return None
        return dependency[1] == "COMPLETE" or other.exit_code == 0

    def ready(self) -> list[Member]:
        """Containers to start now; those whose conditions can no longer hold are marked skipped
        (an essential one among them ends the task). Empty once stopping."""
        found: list[Member] = []
        progress = True
        while progress and not self.stopping:
            progress = False
            for member in self.members.values():
                if member.started or member.done or member in found:
                    continue
                met = [self._condition(dependency) for dependency in member.depends_on]
                if False in met:
                    failed = member.depends_on[met.index(False)]
                    self.skip(
                        member, f"{DEPENDENCY_FAILED}: container {failed[0]} did not meet the {failed[1]} condition"
                    )
                    progress = True
                elif None not in met:
                    found.append(member)
        return found

    def start_began(self, name: str) -> None:
        self.members[name].started = True

    def skip(self, member: Member, reason: str) -> None:
        """`member` will never start (`reason`); if essential, the task ends."""
        member.skipped, member.reason = True, reason
        if self.pod:
            self.ending = self.ending or member
        elif member.essential:
            self.end_by(member)

    def exited(self, name: str, exit_code: int) -> None:
        member = self.members[name]
        member.started = True  # whoever saw the exit may have seen it before the start was recorded
        member.exit_code = exit_code
        if self.pod:
            self.ending = self.ending or (member if exit_code != 0 else None)
        elif member.essential:
            self.end_by(member)

    def end_by(self, member: Member) -> None:
        if self.ending is None:
            self.ending = member
        self.stopping = True

    def stop(self) -> list[Member]:
        """Start nothing more; the containers still running, to be signalled. The task's end is
        the first essential container's from now on, if none ended it yet."""
        self.stopping = True
        for member in self.members.values():
            if not member.started and not member.done:
                member.skipped, member.reason = True, STOPPED_BEFORE_START
        if self.ending is None:
            self.ending = next((m for m in self.members.values() if m.essential and m.started), None)
        return [member for member in self.members.values() if member.running]

    @property
    def all_done(self) -> bool:
        return all(member.done for member in self.members.values())

    @property
    def exit_code(self) -> int:
        if self.ending is None:
            return 0
        return NOT_STARTED_EXIT_CODE if self.ending.exit_code is None else self.ending.exit_code

    def results(self) -> dict[str, dict[str, Any]]:
        """Each container's `exitCode` and `reason` (kiln/task_results.py)."""
        return {m.name: {"exitCode": m.exit_code, "reason": m.reason} for m in self.members.values()}
