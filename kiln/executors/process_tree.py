"""Every process of one attempt: listed from its cgroups when it has any, else followed with psutil.

An attempt is over only when nothing of it runs, and stopping it means signalling all of it, so the
executor needs one answer to "which processes are this attempt?". Cgroups answer exactly: nothing
escapes them, not even `setsid`. A process that moves itself into another group (which takes write
access to cgroup files, never an accident) has left the attempt, as it would leave a container;
the render zygote's warm processes do so between jobs. Without cgroups we follow the tree with
psutil: every descendant seen once stays known after its parent dies (so a re-parented grandchild
is not lost) and the attempt's process group is signalled as well; a process that daemonizes
between two polls can still escape, which is why cgroups are preferred.

Exited-but-unreaped processes (zombies) count as gone: on hosts whose init does not reap orphans
they stay forever, yet use no memory and cannot be killed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections.abc import Callable, Iterable

import psutil

ChildrenMap = dict[int, list[psutil.Process]]


def exit_code_from_returncode(returncode: int) -> int:
    """Docker's convention: a process killed by signal N exited with 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def children_snapshot() -> ChildrenMap:
    """Parent pid -> its children, for the whole host, taken once per monitor tick."""
    children: ChildrenMap = {}
    for process in psutil.process_iter(["ppid"]):
        ppid = process.info.get("ppid")
        if ppid is not None:
            children.setdefault(ppid, []).append(process)
    return children


_SPARE_TOKEN = secrets.token_hex(3)  # this process's: another with the same pid later picks its own
_spare_numbers = itertools.count()


def spare_name(prefix: str, suffix: str = "") -> str:
    """`<prefix><pid>-<token><n><suffix>`, unique among every pool's names: the pid tells the next
    executor whose it is (`left_by_dead_owner`); a counter instead of fresh randomness per name,
    which cost ~8 us each (a `getrandom` call) three times per attempt."""
    return f"{prefix}{os.getpid()}-{_SPARE_TOKEN}{next(_spare_numbers):x}{suffix}"


def left_by_dead_owner(name: str, prefix: str) -> bool:
    """Whether `name` is a pool's spare, `<prefix><owner pid>-...`, whose owner process has exited
    (cgroup and log pools name their spares so; the next executor removes what a dead one left)."""
    owner = name.removeprefix(prefix).split("-", 1)[0] if name.startswith(prefix) else ""
    if not owner.isdigit():
        return False
    try:
        os.kill(int(owner), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_alive(process: psutil.Process) -> bool:
    """Running (not reaped, not recycled to another program) and not a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ProcessTree:
    """The processes of one attempt, rooted at the process the executor spawned."""

    def __init__(self, root_pid: int, cgroup_pids: Callable[[], set[int]] | None = None) -> None:
        self.root_pid = root_pid
        self._cgroup_pids = cgroup_pids
        self._root: psutil.Process | None = None
        self._known: dict[int, psutil.Process] = {}
        if cgroup_pids is None:
            # Followed from the root: created right after spawning, before the root can be reaped,
            # so psutil remembers its start time and never mistakes a recycled pid for it. With
            # cgroups the group lists the tree itself and no psutil object is made per attempt
            # (which matters when thousands of short jobs run back to back).
            self._root = psutil.Process(root_pid)
            self._known[root_pid] = self._root

    @property
    def uses_cgroups(self) -> bool:
        return self._cgroup_pids is not None

    def live(self, children: ChildrenMap | None = None) -> list[psutil.Process]:
        """Processes of the attempt still alive; `children` is needed only without cgroups."""
        if self._cgroup_pids is not None:
            self._members(self._cgroup_pids())
        elif children is not None:
            self._follow(children)
        alive = {pid: process for pid, process in self._known.items() if is_alive(process)}
        self._known = alive
        return list(alive.values())

    def signal(self, signum: int, live: Iterable[psutil.Process] | None = None) -> None:
        """Send `signum` to every live process of the attempt (and its process group, as a net).

        Without cgroups and without a fresh `live` list, the tree is followed from a new snapshot
        first: a child that left the process group since the last monitor pass is still caught.
        """
        if live is None:
            live = self.live(None if self.uses_cgroups else children_snapshot())
        for process in live:
            try:
                process.send_signal(signum)
            except psutil.Error:
                continue
        if not self.uses_cgroups:
            self._signal_group(signum)

    def rss_bytes(self, live: Iterable[psutil.Process]) -> int:
        """Summed resident memory of the processes (shared pages count once per process)."""
        total = 0
        for process in live:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _members(self, pids: set[int]) -> None:
        """With cgroups, the attempt is what its groups hold now (the root joins them a moment
        after spawning; the executor knows it from the start anyway, by its process handle)."""
        known = {pid: process for pid, process in self._known.items() if pid in pids}
        for pid in pids - known.keys():
            try:
                known[pid] = psutil.Process(pid)
            except psutil.Error:
                continue
        self._known = known

    def _follow(self, children: ChildrenMap) -> None:
        pending = list(self._known.values())
        while pending:
            parent = pending.pop()
            if not _still_running(parent):
                continue  # its pid may be recycled: the snapshot's children are someone else's
            for child in children.get(parent.pid, []):
                if child.pid not in self._known:
                    self._known[child.pid] = child
                    pending.append(child)

    def _signal_group(self, signum: int) -> None:
        """Signal the process group the root led, unless its pid now belongs to someone else.

        The kernel keeps a pid reserved while a group with that id has members, so the group is
        ours as long as the pid is not running an unrelated process.
        """
        if self._root is None:
            return
        pgid = self._root.pid
        if psutil.pid_exists(pgid) and not self._root.is_running():
            return
        with contextlib.suppress(OSError):
            os.killpg(pgid, signum)


def _still_running(process: psutil.Process) -> bool:
    try:
        return process.is_running()
    except psutil.Error:
        return False
