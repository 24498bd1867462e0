"""Per-attempt cgroups: find what this host lets us use, create, watch and remove them.

Memory is a promise the kernel keeps best: a cgroup v1 memory group *nested under the server's own
memory cgroup* (the only place a non-host-root process may write on hosts like ours) makes the kernel
kill at the limit, and its `oom_kill` counter tells OOM apart from a user's `kill -9`. A cgroup2 group
(no controllers needed) lists every process of the attempt, including those that called `setsid`,
and `cgroup.kill` removes them atomically. Each controller is probed for real (create a group, write
a setting, move a process in) and anything that fails is reported and left to the fallbacks in
`kiln.executors.local` (psutil watchdog, process-group tracking), so macOS, non-root users and
containers still run jobs, with weaker guarantees.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.mountinfo import parse_mountinfo

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
CPU_SHARES_PER_VCPU = 1024
MIN_CPU_SHARES = 2  # the kernel's floor for cpu.shares
MIN_CFS_QUOTA_US = 1000  # the kernel's floor for cpu.cfs_quota_us
DEFAULT_CFS_PERIOD_US = 100_000

MEMORY_CGROUP_V1 = "cgroup v1 memory (kernel OOM killer at the limit)"
MEMORY_WATCHDOG = "psutil RSS watchdog (kills the process tree when its summed RSS passes the limit)"
CPU_CGROUP_V1 = "cgroup v1 cpu (cpu.shares = 1024 x vCPUs; CFS quota when hard-capped)"
CPU_NONE = "none (vCPUs only reserve capacity)"
TRACKING_CGROUP2 = "cgroup2 (cgroup.procs / cgroup.kill)"
TRACKING_PROCESS_GROUP = "process group + psutil descendants"

_MOVE_SELF_SCRIPT = 'for f; do echo $$ > "$f" || exit 1; done'
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_OOM_KILL = re.compile(r"^oom_kill (\d+)$", re.MULTILINE)

# Configure callbacks get the new group's directory and raise OSError when a write fails.
_Configure = Callable[[Path], None]


@dataclass(frozen=True)
class CgroupSupport:
    """Where per-attempt groups go (parents we may write under); None = use the fallback."""

    memory_parent: Path | None = None
    cpu_parent: Path | None = None
    tracking_parent: Path | None = None
    notes: tuple[str, ...] = ()

    @property
    def memory_mechanism(self) -> str:
        return MEMORY_CGROUP_V1 if self.memory_parent else MEMORY_WATCHDOG

    @property
    def cpu_mechanism(self) -> str:
        return CPU_CGROUP_V1 if self.cpu_parent else CPU_NONE

    @property
    def tracking_mechanism(self) -> str:
        return TRACKING_CGROUP2 if self.tracking_parent else TRACKING_PROCESS_GROUP

    def mechanisms(self) -> dict[str, str]:
        """What enforces each promise, for logs, `capacity().notes` and the docs."""
        return {
            "memory": self.memory_mechanism,
            "cpu": self.cpu_mechanism,
            "tracking": self.tracking_mechanism,
        }


def detect_cgroups(
    enabled: bool = True,
    proc_self: Path = Path("/proc/self"),
) -> CgroupSupport:
    """Probe each controller once (at executor start); never raises, explains every fallback."""
    if not enabled:
        return CgroupSupport(notes=("cgroups disabled by configuration",))
    try:
        own = parse_proc_cgroup((proc_self / "cgroup").read_text())
        mounts = parse_mountinfo((proc_self / "mountinfo").read_text())
    except OSError as exc:
        return CgroupSupport(notes=(f"no cgroup information on this system ({exc})",))
    notes: list[str] = []
    memory = _usable_parent("memory", own, mounts, {"memory.limit_in_bytes": str(64 * MIB)}, notes)
    cpu = _usable_parent("cpu", own, mounts, {"cpu.shares": str(CPU_SHARES_PER_VCPU)}, notes)
    tracking = _usable_parent("", own, mounts, {}, notes)
    return CgroupSupport(memory, cpu, tracking, tuple(notes))


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """`/proc/self/cgroup` -> {controller: own path}; the cgroup2 entry has the key ""."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def own_cgroup_dir(controller: str, own: dict[str, str], mounts: dict[str, tuple[Path, str]]) -> Path | None:
    """The directory of this process's own cgroup for `controller`, if mounted and visible."""
    if controller not in own or controller not in mounts:
        return None
    mount_point, mount_root = mounts[controller]
    path = own[controller]
    root = mount_root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    directory = mount_point / path.lstrip("/")
    return directory if directory.is_dir() else None


def _usable_parent(
    controller: str,
    own: dict[str, str],
    mounts: dict[str, tuple[Path, str]],
    probe_settings: dict[str, str],
    notes: list[str],
) -> Path | None:
    label = controller or "cgroup2"
    parent = own_cgroup_dir(controller, own, mounts)
    if parent is None:
        notes.append(f"{label}: not mounted or own cgroup not visible")
        return None
    problem = _probe(parent, probe_settings)
    if problem:
        notes.append(f"{label}: {parent} not usable ({problem})")
        return None
    return parent


def _probe(parent: Path, settings: dict[str, str]) -> str | None:
    """Do what an attempt will do (mkdir, write settings, move a process in); the error or None."""
    child = parent / f"kiln-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        child.mkdir()
    except OSError as exc:
        return f"cannot create a group: {exc.strerror or exc}"
    try:
        for name, value in settings.items():
            (child / name).write_text(value)
        moved = subprocess.run(
            ["/bin/sh", "-c", _MOVE_SELF_SCRIPT, "kiln-probe", str(child / "cgroup.procs")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=5,
            check=False,
        )
        if moved.returncode != 0:
            return f"cannot move a process in: {moved.stderr.decode(errors='replace').strip()}"
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot configure a group: {exc}"
    finally:
        rmdir_group(child)


def attempt_group_name(attempt_id: str) -> str:
    """`kiln-<attempt id>`, with anything a path could misread replaced."""
    return "kiln-" + _UNSAFE_NAME_CHARS.sub("_", attempt_id)


class AttemptCgroups:
    """The groups of one attempt; any of them may be None (that attempt then uses the fallback)."""

    def __init__(
        self,
        memory: Path | None = None,
        cpu: Path | None = None,
        tracking: Path | None = None,
        *,
        oom_baseline: int | None = None,
    ) -> None:
        self.memory = memory
        self.cpu = cpu
        self.tracking = tracking
        # Control files as strings, joined once: an attempt reads them at every check, and path
        # joins cost more than the reads when thousands of short attempts run back to back.
        self._procs = [os.path.join(path, "cgroup.procs") for path in self.paths()]
        self._oom_control = None if memory is None else os.path.join(memory, "memory.oom_control")
        self._usage = None if memory is None else os.path.join(memory, "memory.usage_in_bytes")
        # Control files kept open (path -> descriptor) for as long as the groups live: the pool
        # hands them from attempt to attempt, and an open cost ~6 us more than the read itself.
        self._descriptors: dict[str, int] = {}
        self.last_oom_count = self._oom_baseline = 0
        self.reuse(oom_baseline)

    def reuse(self, oom_baseline: int | None) -> AttemptCgroups:
        """These groups, for the next attempt: a reused group must not report an old OOM, so its
        count is the baseline: `oom_baseline` when the pool knew it (nothing ran in it since it was
        read), else read now."""
        self.last_oom_count = self._oom_count() if oom_baseline is None else oom_baseline
        self._oom_baseline = self.last_oom_count
        return self

    @classmethod
    def create(
        cls, support: CgroupSupport, name: str, *, memory_mib: int, vcpus: float, cpu_hard_cap: bool
    ) -> AttemptCgroups:
        """Create and configure every group the host supports, each called `name` (a pool's, see
        `cgroup_pool`); a failing one degrades, not aborts."""
        return cls(
            memory=make_group(support.memory_parent, name, lambda path: _limit_memory(path, memory_mib)),
            cpu=make_group(support.cpu_parent, name, lambda path: _limit_cpu(path, vcpus, cpu_hard_cap)),
            tracking=make_group(support.tracking_parent, name, lambda path: None),
        )

    def paths(self) -> list[Path]:
        return [path for path in (self.memory, self.cpu, self.tracking) if path is not None]

    def procs_files(self) -> list[str]:
        """Files the attempt's process writes itself into before exec'ing the job."""
        return list(self._procs)

    @property
    def tracks_processes(self) -> bool:
        """Whether `pids()` lists the whole tree (any of our groups does)."""
        return bool(self.paths())

    def pids(self, *, strict: bool = False) -> set[int]:
        """Every live process of the attempt (exited processes are never listed).

        The launcher joins every group before the job starts and children inherit them all, so one
        group lists the whole tree: the cgroup2 one when present (it is the hardest to leave),
        else memory, else cpu. One read instead of three matters when thousands of short jobs end.
        `strict`: a group that cannot be read raises OSError instead of deferring to the next.
        """
        for procs in reversed(self._procs):  # tracking, cpu, memory: see paths()
            try:
                return {int(line) for line in self._read(procs).split()}
            except (OSError, ValueError):
                if strict:
                    raise OSError(f"cannot read {procs}") from None
                continue
        return set()

    def charged_bytes(self) -> int | None:
        """Memory charged to the memory group now (page cache and tmpfs included); None without one."""
        if self._usage is None:
            return None
        return int(self._read(self._usage))

    def _read(self, path: str) -> bytes:
        """A control file's bytes, through its descriptor kept open (`pread` from the start: a
        cgroup file shows its current state on every read from offset 0)."""
        descriptor = self._descriptors.get(path)
        if descriptor is None:
            descriptor = self._descriptors[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        chunks = [os.pread(descriptor, 1 << 16, 0)]
        offset = len(chunks[0])
        while chunks[-1]:  # a big cgroup.procs (thousands of processes) comes in several reads
            chunks.append(os.pread(descriptor, 1 << 16, offset))
            offset += len(chunks[-1])
        return b"".join(chunks)

    def close(self) -> None:
        """Close the control files kept open (the groups are removed, or nobody reads them again)."""
        descriptors, self._descriptors = self._descriptors, {}
        for descriptor in descriptors.values():
            with contextlib.suppress(OSError):
                os.close(descriptor)

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in the memory group since we set it up."""
        return self._oom_count() - self._oom_baseline

    def _oom_count(self) -> int:
        """The memory group's `oom_kill` count now (remembered in `last_oom_count`)."""
        if self._oom_control is None:
            return 0
        try:
            text = self._read(self._oom_control).decode()
        except OSError:
            return 0
        match = _OOM_KILL.search(text)
        self.last_oom_count = int(match.group(1)) if match else 0
        return self.last_oom_count

    def kill(self) -> None:
        """SIGKILL everything in the groups; cgroup2's `cgroup.kill` also catches forks in flight."""
        if self.tracking is not None:
            # Kernels before 5.14 lack cgroup.kill; the loop below still works there.
            with contextlib.suppress(OSError):
                (self.tracking / "cgroup.kill").write_text("1")
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue

    def remove(self, wait_seconds: float = 2.0) -> bool:
        """Kill what is left, then remove the groups; False (and a warning) if one stays busy."""
        self.close()
        deadline = time.monotonic() + wait_seconds
        remaining = [path for path in self.paths() if not rmdir_group(path)]  # usually empty already
        while remaining:
            self.kill()
            remaining = [path for path in remaining if not rmdir_group(path)]
            if remaining and time.monotonic() >= deadline:
                logger.warning("cgroups still busy, left in place: %s", ", ".join(map(str, remaining)))
                return False
            if remaining:
                time.sleep(0.02)
        return True


def make_group(parent: Path | None, name: str, configure: _Configure = lambda path: None) -> Path | None:
    """`parent/name`, created and configured; None (and a warning) when that fails."""
    if parent is None:
        return None
    path = parent / name
    try:
        path.mkdir(exist_ok=True)
        configure(path)
        return path
    except OSError as exc:
        logger.warning("cannot set up cgroup %s, using the fallback for this attempt: %s", path, exc)
        rmdir_group(path)
        return None


def _limit_memory(path: Path, memory_mib: int) -> None:
    """Hard limit; memsw equal to it (when swap accounting exists) so the job cannot swap instead."""
    limit = str(memory_mib * MIB)
    (path / "memory.limit_in_bytes").write_text(limit)
    memsw = path / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        memsw.write_text(limit)
    else:
        _write_quietly(path / "memory.swappiness", "0")


def _limit_cpu(path: Path, vcpus: float, hard_cap: bool) -> None:
    """A weight proportional to vCPUs, like ECS; a CFS quota only when asked (it wastes idle CPU)."""
    (path / "cpu.shares").write_text(str(cpu_shares(vcpus)))
    if hard_cap:
        period = _read_int(path / "cpu.cfs_period_us", DEFAULT_CFS_PERIOD_US)
        (path / "cpu.cfs_quota_us").write_text(str(cfs_quota_us(vcpus, period)))


def cpu_shares(vcpus: float) -> int:
    return max(MIN_CPU_SHARES, round(CPU_SHARES_PER_VCPU * vcpus))


def cfs_quota_us(vcpus: float, period_us: int) -> int:
    return max(MIN_CFS_QUOTA_US, round(vcpus * period_us))


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return default


def _write_quietly(path: Path, value: str) -> None:
    with contextlib.suppress(OSError):
        path.write_text(value)


def rmdir_group(path: Path) -> bool:
    """Remove a group directory (rmdir, never rm -r: cgroup files cannot be unlinked)."""
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
