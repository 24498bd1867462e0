"""Which cgroups a process is in, and moving this process into (or out of) a job's groups.

The render zygote must put each forked render into the cgroups the executor made for the job, so
the job's memory limit, CPU weight and kill-the-whole-attempt still apply, and must itself stay out
of them, so no job pays for (or kills) the shared zygote. The local executor names every
per-attempt group `kiln-<attempt id>`; that prefix is how an attempt's groups are recognised.
Read like an outside program would (the render worker never imports the executors), from
`/proc/<pid>/cgroup` and this process's `/proc/self/mountinfo`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln.mountinfo import parse_mountinfo

ATTEMPT_GROUP_PREFIX = "kiln-"
UNLIMITED = 1 << 63  # what `memory_limit_bytes` says of a group without a limit


class CgroupError(Exception):
    """A group could not be read or joined."""


@dataclass(frozen=True)
class Membership:
    """One line of /proc/<pid>/cgroup: a hierarchy (its controllers; "" for cgroup2) and the path in it."""

    hierarchy: str
    path: str

    @property
    def in_attempt_group(self) -> bool:
        return any(part.startswith(ATTEMPT_GROUP_PREFIX) for part in PurePosixPath(self.path).parts)

    @property
    def outside_attempt_group(self) -> str:
        """The path just above the first attempt group (where the process that made it lives)."""
        parts = PurePosixPath(self.path).parts
        for index, part in enumerate(parts):
            if part.startswith(ATTEMPT_GROUP_PREFIX):
                return str(PurePosixPath(*parts[:index]))
        return self.path


def memberships(pid: int | str = "self") -> dict[str, Membership]:
    """The groups of `pid`, by hierarchy (named by its controllers, "" for cgroup2)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError as error:
        raise CgroupError(f"cannot read the cgroups of process {pid}: {error}") from None
    found: dict[str, Membership] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            found[parts[1]] = Membership(parts[1], parts[2])
    return found


def in_attempt_group(pid: int | str = "self") -> bool:
    """Whether the executor placed `pid` in per-attempt groups (so it tracks, limits and kills it)."""
    try:
        return any(member.in_attempt_group for member in memberships(pid).values())
    except CgroupError:
        return False


def join(targets: dict[str, Membership]) -> None:
    """Move this process into `targets` (every hierarchy whose path differs from its own).

    cgroup2 (the executor's tracking group, which tells it what still runs of an attempt) is joined
    last, so a process leaving an attempt is never listed gone while it is still in its other groups.
    """
    own = memberships()
    mounts = _mount_points()
    for hierarchy, target in sorted(targets.items(), key=lambda item: item[0] == ""):
        current = own.get(hierarchy)
        if current is not None and current.path == target.path:
            continue
        procs = _group_folder(mounts, target) / "cgroup.procs"
        try:
            procs.write_text(str(os.getpid()))
        except OSError as error:
            raise CgroupError(f"cannot join {procs}: {error}") from None


def memory_limit_bytes(pid: int | str) -> int | None:
    """The memory limit of the attempt group `pid` is in; None when it is in no such memory group."""
    text = _read_memory_file(pid, "memory.limit_in_bytes", "memory.max")
    if text == "max":
        return UNLIMITED
    return None if text is None or not text.isdigit() else int(text)


def memory_peak_bytes() -> int | None:
    """The most memory ever charged to this process's attempt memory group (None: in no such group).

    A group the executor recycled may report an earlier attempt's peak: an overestimate, never less.
    """
    text = _read_memory_file("self", "memory.max_usage_in_bytes", "memory.peak")
    return None if text is None or not text.isdigit() else int(text)


def _read_memory_file(pid: int | str, cgroup1_name: str, cgroup2_name: str) -> str | None:
    try:
        groups = memberships(pid)
        mounts = _mount_points()
    except CgroupError:
        return None
    for hierarchy, name in (("memory", cgroup1_name), ("", cgroup2_name)):
        group = groups.get(hierarchy)
        if group is None or hierarchy not in mounts or not group.in_attempt_group:
            continue
        try:
            return (_group_folder(mounts, group) / name).read_text().strip()
        except (OSError, CgroupError):
            continue
    return None


def _group_folder(mounts: dict[str, tuple[Path, str]], group: Membership) -> Path:
    key = group.hierarchy.split(",")[0]  # "cpu,cpuacct" is mounted once, under each name
    if key not in mounts:
        raise CgroupError(f"cgroup hierarchy {group.hierarchy or 'cgroup2'!r} is not mounted here")
    point, root = mounts[key]
    relative = group.path
    if root != "/" and (relative == root or relative.startswith(root.rstrip("/") + "/")):
        relative = relative[len(root.rstrip("/")) :]
    return point / relative.lstrip("/")


def leave_attempt_groups() -> None:
    """Move this process up out of any per-attempt group it was started in."""
    join(
        {
            hierarchy: Membership(hierarchy, member.outside_attempt_group)
            for hierarchy, member in memberships().items()
            if member.in_attempt_group
        }
    )


def _mount_points() -> dict[str, tuple[Path, str]]:
    """Controller (or `name=...`; "" for cgroup2) -> (mount point, root of the mount)."""
    try:
        return parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError as error:
        raise CgroupError(f"cannot read mountinfo: {error}") from None
