"""Configured cgroup v1 groups, recycled between attempts by rename.

Creating, configuring and removing an attempt's memory and cpu groups costs the executor about
half a millisecond per attempt on the path from one attempt's exit to the next one's start
(`mkdir`, limit writes, `rmdir`, and the kernel's work behind them). Thousands of children of an
array ask for the same limits, so an emptied group is renamed aside
(`kiln-free-<pid>-<n>`) and renamed to the next attempt's name: the limits are already written.
A group is reused only when nothing of its attempt is left in it and the memory it still has
charged (page cache, tmpfs files) is negligible, so no attempt inherits another's memory use; an
attempt's OOM count is taken from its own start (`AttemptCgroups` reads a baseline).

The cgroup2 tracking group cannot be renamed (cgroup2 refuses renames), and creating and removing
one per attempt cost ~0.12 ms of system CPU (more in the kernel's deferred freeing). Where a memory
or cpu group carries the attempt's name, the tracking group gets a pool name from the start
(`kiln-free-<pid>-<n>`, in use or spare) and stays with its memory and cpu groups from attempt to
attempt; with neither (a host with only cgroup2 and no controllers) it is named after the attempt
and created fresh. Spare groups are removed when the executor shuts down, and groups that an
executor which died left behind are removed by the next one that starts (their name carries the
owner's pid): their processes, if any, are that dead executor's lost attempts, and are killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import AttemptCgroups, CgroupSupport, attempt_group_name, make_group, read_small, rmdir_group
from .process_tree import left_by_dead_owner

logger = logging.getLogger(__name__)

FREE_PREFIX = "kiln-free-"
KEEP_PER_LIMITS = 16  # spares kept per (memory, vCPUs, hard cap): more than run at once per kind
# At most this much memory may still be charged to an emptied group for it to be reused.
REUSE_MAX_CHARGED_BYTES = 4 * 1024 * 1024

_Limits = tuple[int, float, bool]  # memory MiB, vCPUs, hard CPU cap


@dataclass
class _Spare:
    memory: Path | None
    cpu: Path | None
    tracking: Path | None = None
    oom_count: int | None = None  # its memory group's `oom_kill` count when it was emptied, if known


@dataclass
class CgroupPool:
    """Spare configured groups per limits; used only from the executor's own threads, under its lock."""

    support: CgroupSupport
    keep: int = KEEP_PER_LIMITS
    _spares: dict[_Limits, list[_Spare]] = field(default_factory=dict)
    _limits: dict[str, _Limits] = field(default_factory=dict)  # attempt id -> limits of its groups

    def __post_init__(self) -> None:
        self._remove_dead_owners_spares()

    def acquire(self, attempt_id: str, *, memory_mib: int, vcpus: float, cpu_hard_cap: bool) -> AttemptCgroups:
        """The attempt's groups, memory and cpu named after it: a spare with these limits, else new ones."""
        limits = (memory_mib, vcpus, cpu_hard_cap)
        self._limits[attempt_id] = limits
        spares = self._spares.get(limits)
        if spares:
            spare = spares.pop()
            name = attempt_group_name(attempt_id)
            memory, cpu = _rename(spare.memory, name), _rename(spare.cpu, name)
            if _all_moved((spare.memory, spare.cpu), (memory, cpu)):
                tracking = spare.tracking or make_group(self.support.tracking_parent, self._tracking_name() or name)
                return AttemptCgroups(memory=memory, cpu=cpu, tracking=tracking, oom_baseline=spare.oom_count)
            for path in (memory, cpu, spare.memory, spare.cpu, spare.tracking):  # changed behind our back: afresh
                if path is not None:
                    rmdir_group(path)
        return AttemptCgroups.create(
            self.support, attempt_id, memory_mib=memory_mib, vcpus=vcpus, cpu_hard_cap=cpu_hard_cap,
            tracking_name=self._tracking_name(),
        )  # fmt: skip

    def release(self, attempt_id: str, groups: AttemptCgroups, *, settled_oom_count: int | None = None) -> bool:
        """The attempt is over: keep its groups as spares when they are clean, else remove them.
        `settled_oom_count`: the memory group's OOM count read once nothing of the attempt was left
        (the next attempt's baseline then needs no read).

        False (and a warning) when a group stays busy, as `AttemptCgroups.remove`.
        """
        limits = self._limits.pop(attempt_id, None)
        spares = self._spares.setdefault(limits, []) if limits is not None else None
        if spares is None or len(spares) >= self.keep or not self._clean(groups):
            return groups.remove()
        tracking = groups.tracking
        if tracking is not None and not tracking.name.startswith(FREE_PREFIX):  # named after the attempt
            if not rmdir_group(tracking):
                return groups.remove()
            tracking = None
        name = self._pool_name()
        memory, cpu = _rename(groups.memory, name), _rename(groups.cpu, name)
        if not _all_moved((groups.memory, groups.cpu), (memory, cpu)):
            return AttemptCgroups(memory, cpu, tracking).remove() and groups.remove()
        spares.append(_Spare(memory, cpu, tracking, settled_oom_count))
        return True

    def close(self) -> None:
        """Remove every spare (the executor is shutting down)."""
        for spares in self._spares.values():
            for spare in spares:
                AttemptCgroups(spare.memory, spare.cpu, spare.tracking).remove()
        self._spares.clear()

    def _tracking_name(self) -> str | None:
        """A pool name for a new cgroup2 group where a memory or cpu group carries the attempt's
        name; None: it is named after the attempt."""
        named = self.support.memory_parent is not None or self.support.cpu_parent is not None
        return self._pool_name() if named and self.support.tracking_parent is not None else None

    @staticmethod
    def _pool_name() -> str:
        return f"{FREE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"

    @staticmethod
    def _clean(groups: AttemptCgroups) -> bool:
        if groups.pids():
            return False
        if groups.memory is None:
            return True
        try:
            charged = int(read_small(groups.memory / "memory.usage_in_bytes"))
        except (OSError, ValueError):
            return False
        return charged <= REUSE_MAX_CHARGED_BYTES

    def _remove_dead_owners_spares(self) -> None:
        """Groups of executors that died: spares, and tracking groups that may still hold what is
        left of their lost attempts (killed, as `discard_leftovers` kills what their other groups hold)."""
        for parent in (self.support.memory_parent, self.support.cpu_parent, self.support.tracking_parent):
            if parent is None:
                continue
            with contextlib.suppress(OSError), os.scandir(parent) as entries:
                for entry in entries:
                    if left_by_dead_owner(entry.name, FREE_PREFIX):
                        group = Path(entry.path)
                        tracking = parent == self.support.tracking_parent
                        (AttemptCgroups(tracking=group) if tracking else AttemptCgroups(cpu=group)).remove()


def _rename(old: Path | None, name: str) -> Path | None:
    """The group's new path once `old` is renamed to `name` in its parent; None when `old` is
    None or the rename failed."""
    if old is None:
        return None
    new = old.with_name(name)
    try:
        os.rename(old, new)
    except OSError as exc:
        logger.debug("cannot rename cgroup %s to %s: %s", old, name, exc)
        return None
    return new


def _all_moved(old: tuple[Path | None, ...], new: tuple[Path | None, ...]) -> bool:
    """Every group that existed was renamed."""
    return all(after is not None or before is None for before, after in zip(old, new, strict=True))
