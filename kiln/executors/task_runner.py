"""Run the containers of an `ecsProperties` task as processes of one attempt.

`python -m kiln.executors.task_runner PLAN` is the attempt's one process when the local executor
(and so a Ray node's agent) runs a multi-container job: the executor resolves every container's
image and program, opens each container's log, and starts this runner like any job, inside the
attempt's cgroups, as the job's user, with the logs as descriptors 3, 4, ... (the job's user may not
open the data dir's files itself). The executor's interface, its limits, timeouts, OOM handling and
process tracking stay as they are: the attempt's memory limit covers every container, a terminate
reaches all of them, and the attempt ends once none is left.

The runner starts each container (its own process group, the host's network: a sidecar serving on
127.0.0.1 is reachable by the others) once its `dependsOn` conditions hold: START, after the other
started; COMPLETE, after it exited; SUCCESS, after it exited with 0. A container whose condition can
no longer hold is never started. When an essential container exits (or cannot start), the others get
SIGTERM, and SIGKILL after their grace; the runner's exit code is that essential container's, which
makes it the attempt's. On SIGTERM it stops every container the same way.

Each container's exit code and reason are written as the runner's last line of output, in the
attempt's own log (kiln/task_results.py), where DescribeJobs reads them back.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from kiln.task_results import result_line

FIRST_LOG_FD = 3
POLL_SECONDS = 0.02
NOT_STARTED_EXIT_CODE = 1  # the attempt's code when an essential container never started
DEPENDENCY_FAILED = "DependencyConditionFailed"
CANNOT_START = "CannotStartContainerError"


@dataclass
class _Container:
    name: str
    argv: list[str]
    environment: dict[str, str]
    essential: bool
    depends_on: list[tuple[str, str]]
    log_fd: int
    grace: float
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    reason: str | None = None
    skipped: bool = False
    kill_at: float | None = None

    @property
    def done(self) -> bool:
        return self.skipped or self.exit_code is not None


def plan_of(containers: list[dict[str, Any]], grace_seconds: float) -> str:
    """The runner's argument: each container's name, argv, environment, essential flag, dependsOn,
    log descriptor and grace, in the order given (the executor's side of the contract)."""
    return json.dumps({"graceSeconds": grace_seconds, "containers": containers}, separators=(",", ":"))


def runner_argv(plan: str) -> list[str]:
    """The attempt's command: this module, with the interpreter Kiln runs on."""
    return [sys.executable, "-m", "kiln.executors.task_runner", plan]


class TaskRunner:
    def __init__(self, plan: dict[str, Any]) -> None:
        grace = float(plan.get("graceSeconds", 10.0))
        self.containers = [
            _Container(item["name"], item["argv"], item["environment"], bool(item["essential"]),
                       [(name, condition) for name, condition in item["dependsOn"]], int(item["logFd"]),
                       float(item["stopTimeout"]) if item.get("stopTimeout") is not None else grace)
            for item in plan["containers"]
        ]  # fmt: skip
        self.by_name = {container.name: container for container in self.containers}
        self.ending: _Container | None = None  # the essential container whose end ends the task
        self.stopping = False
        self.asked_to_stop = False

    def on_sigterm(self, signum: int, frame: object) -> None:
        self.asked_to_stop = True

    def say(self, message: str) -> None:
        print(f"kiln: {message}", flush=True)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_sigterm)  # acted on in the loop, not inside the handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while not all(container.done for container in self.containers):
            if self.asked_to_stop:
                self.stop("the attempt was asked to stop (SIGTERM)")
            if not self.stopping:
                self.start_ready()
            self.reap()
            self.kill_overdue()
            time.sleep(POLL_SECONDS)
        self.report()
        if self.ending is None:
            return 0
        return NOT_STARTED_EXIT_CODE if self.ending.exit_code is None else self.ending.exit_code

    def condition(self, dependency: tuple[str, str]) -> bool | None:
        """True: met; False: can never be met; None: not yet."""
        other = self.by_name[dependency[0]]
        if other.skipped:
            return False
        if dependency[1] == "START":
            return True if other.process is not None else None
        if other.exit_code is None:
            return None
        return dependency[1] == "COMPLETE" or other.exit_code == 0

    def start_ready(self) -> None:
        progress = True
        while progress and not self.stopping:
            progress = False
            for container in self.containers:
                if container.process is not None or container.done:
                    continue
                met = [self.condition(dependency) for dependency in container.depends_on]
                if False in met:
                    failed = container.depends_on[met.index(False)]
                    self.skip(container, f"{DEPENDENCY_FAILED}: container {failed[0]} did not meet the "
                                         f"{failed[1]} condition")  # fmt: skip
                    progress = True
                elif None not in met:
                    self.start(container)
                    progress = True

    def start(self, container: _Container) -> None:
        try:
            container.process = subprocess.Popen(
                container.argv, env={**os.environ, **container.environment}, stdin=subprocess.DEVNULL,
                stdout=container.log_fd, stderr=container.log_fd, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            self.skip(container, f"{CANNOT_START}: {exc}")
            return
        self.say(f"container {container.name} started (pid {container.process.pid})")

    def skip(self, container: _Container, reason: str) -> None:
        container.skipped, container.reason = True, reason
        self.say(f"container {container.name} not started: {reason}")
        if container.essential:
            self.end_by(container)

    def reap(self) -> None:
        for container in self.containers:
            if container.process is None or container.exit_code is not None:
                continue
            code = container.process.poll()
            if code is None:
                continue
            container.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as Docker
            self.say(f"container {container.name} exited with code {container.exit_code}")
            if container.essential:
                self.end_by(container)

    def end_by(self, container: _Container) -> None:
        if self.ending is None and not self.stopping:
            self.ending = container
            self.stop(f"essential container {container.name} ended")

    def stop(self, why: str) -> None:
        """Stop every running container (SIGTERM, SIGKILL after its grace); start no more."""
        if self.stopping:
            return
        self.stopping = True
        self.say(f"stopping the task: {why}")
        now = time.monotonic()
        for container in self.containers:
            if container.process is None and not container.done:
                container.skipped, container.reason = True, "the task stopped before the container started"
            elif container.process is not None and container.exit_code is None:
                self.signal(container, signal.SIGTERM)
                container.kill_at = now + container.grace
        if self.ending is None:  # asked to stop: the first essential container's end is the task's
            self.ending = next((c for c in self.containers if c.essential and c.process is not None), None)

    def kill_overdue(self) -> None:
        now = time.monotonic()
        for container in self.containers:
            if container.exit_code is None and container.kill_at is not None and now >= container.kill_at:
                self.signal(container, signal.SIGKILL)
                container.kill_at = None

    def signal(self, container: _Container, signum: int) -> None:
        if container.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(container.process.pid, signum)

    def report(self) -> None:
        results = {c.name: {"exitCode": c.exit_code, "reason": c.reason} for c in self.containers}
        print(result_line(results), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m kiln.executors.task_runner PLAN", file=sys.stderr)
        return 2
    return TaskRunner(json.loads(argv[1])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
