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
makes it the attempt's (the rules are task_state.py's, which the Docker executor follows too). On
SIGTERM it stops every container the same way.

Each container's exit code and reason are written as the runner's last line of output, in the
attempt's own log (kiln/task_results.py), where DescribeJobs reads them back.

A pod (`eksProperties`, the plan's `pod`) follows task_state.py's pod rules: no container stops the
others and the runner's exit code is the first failing container's. Each of its containers starts
in a directory of its own, `containers/<name>` under the attempt's workdir, where each volume mount
is a symbolic link at the mount path (made relative: `/data` is `containers/<name>/data`) to the
volume: a hostPath volume's path, or an emptyDir's directory `volumes/<name>`, made here and shared
by every container that mounts it. Processes on the host cannot have a volume at the absolute mount
path itself; the Docker executor mounts it there.
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

from .task_state import CANNOT_START, Member, TaskState

FIRST_LOG_FD = 3
POLL_SECONDS = 0.02


@dataclass
class _Process:
    """How one container runs here: its command, environment, log descriptor and grace."""

    argv: list[str]
    environment: dict[str, str]
    log_fd: int
    grace: float
    mounts: list[dict[str, Any]] | None = None  # a pod's container: it runs in its own directory
    process: subprocess.Popen[bytes] | None = None
    kill_at: float | None = None


def plan_of(containers: list[dict[str, Any]], grace_seconds: float, pod: bool = False) -> str:
    """The runner's argument: each container's name, argv, environment, essential flag, dependsOn,
    log descriptor and grace (a pod's: also its `mounts`), in the order given, and whether the task
    is a pod (the executor's side of the contract)."""
    plan = {"graceSeconds": grace_seconds, "containers": containers, "pod": pod}
    return json.dumps(plan, separators=(",", ":"))


def container_home(root: str, name: str) -> str:
    """Where a pod's container starts: its own directory under the attempt's workdir."""
    return os.path.join(root, "containers", name)


def lay_out_mounts(root: str, name: str, mounts: list[dict[str, Any]]) -> str:
    """Make a pod container's directory and its mounts' links in it (emptyDir volumes made on
    first use); its directory. OSError when the filesystem refuses."""
    home = container_home(root, name)
    os.makedirs(home, exist_ok=True)
    for mount in mounts:
        host_path = mount.get("host_path")
        target = host_path or os.path.join(root, "volumes", mount["volume"])
        if mount.get("sub_path"):
            target = os.path.join(target, mount["sub_path"])
        if host_path is None:
            os.makedirs(target, exist_ok=True)
        link = os.path.join(home, mount["container_path"].strip("/"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(target, link)
    return home


def runner_argv(plan: str) -> list[str]:
    """The attempt's command: this module, with the interpreter Kiln runs on."""
    return [sys.executable, "-m", "kiln.executors.task_runner", plan]


class TaskRunner:
    def __init__(self, plan: dict[str, Any]) -> None:
        grace = float(plan.get("graceSeconds", 10.0))
        items = plan["containers"]
        pod = bool(plan.get("pod"))
        self.state = TaskState([
            Member(item["name"], bool(item["essential"]), tuple((n, c) for n, c in item["dependsOn"]))
            for item in items
        ], pod=pod)  # fmt: skip
        self.processes = {
            item["name"]: _Process(item["argv"], item["environment"], int(item["logFd"]),
                                   float(item["stopTimeout"]) if item.get("stopTimeout") is not None else grace,
                                   list(item.get("mounts") or []) if pod else None)
            for item in items
        }  # fmt: skip
        self.signalled = False  # the running containers were told to stop
        self.announced: set[str] = set()  # containers said to be skipped
        self.asked_to_stop = False

    def on_sigterm(self, signum: int, frame: object) -> None:
        self.asked_to_stop = True

    def say(self, message: str) -> None:
        print(f"kiln: {message}", flush=True)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_sigterm)  # acted on in the loop, not inside the handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while not self.state.all_done:
            if self.asked_to_stop and not self.signalled:
                self.stop_all("the attempt was asked to stop (SIGTERM)")
            while batch := self.state.ready():
                for member in batch:
                    self.start(member)
            self.reap()
            if self.state.stopping and not self.signalled:
                ending = self.state.ending
                self.stop_all(f"essential container {ending.name if ending else '?'} ended")
            self.kill_overdue()
            time.sleep(POLL_SECONDS)
        print(result_line(self.state.results()), flush=True)
        return self.state.exit_code

    def start(self, member: Member) -> None:
        run = self.processes[member.name]
        try:
            home = None if run.mounts is None else lay_out_mounts(os.getcwd(), member.name, run.mounts)
            run.process = subprocess.Popen(
                run.argv, env={**os.environ, **run.environment}, stdin=subprocess.DEVNULL,
                stdout=run.log_fd, stderr=run.log_fd, start_new_session=True, cwd=home,
            )  # fmt: skip
        except OSError as exc:
            self.state.skip(member, f"{CANNOT_START}: {exc}")
            return
        self.state.start_began(member.name)
        self.say(f"container {member.name} started (pid {run.process.pid})")

    def reap(self) -> None:
        for name, run in self.processes.items():
            member = self.state.members[name]
            if run.process is None or member.exit_code is not None:
                continue
            code = run.process.poll()
            if code is None:
                continue
            self.state.exited(name, 128 - code if code < 0 else code)  # killed by signal N: 128 + N, as Docker
            self.say(f"container {name} exited with code {member.exit_code}")
        for member in self.state.members.values():
            if member.skipped and member.name not in self.announced:
                self.announced.add(member.name)
                self.say(f"container {member.name} not started: {member.reason}")

    def stop_all(self, why: str) -> None:
        """Stop every running container (SIGTERM, SIGKILL after its grace); start no more."""
        self.signalled = True
        self.say(f"stopping the task: {why}")
        now = time.monotonic()
        for member in self.state.stop():
            run = self.processes[member.name]
            self.signal(run, signal.SIGTERM)
            run.kill_at = now + run.grace

    def kill_overdue(self) -> None:
        now = time.monotonic()
        for name, run in self.processes.items():
            if self.state.members[name].running and run.kill_at is not None and now >= run.kill_at:
                self.signal(run, signal.SIGKILL)
                run.kill_at = None

    def signal(self, run: _Process, signum: int) -> None:
        if run.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.process.pid, signum)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m kiln.executors.task_runner PLAN", file=sys.stderr)
        return 2
    return TaskRunner(json.loads(argv[1])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
