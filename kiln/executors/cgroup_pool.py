"""Configured cgroup groups, recycled between attempts under one pool name for their whole life.

Creating, configuring and removing an attempt's memory and cpu groups costs the executor about
half a millisecond per attempt on the path from one attempt's exit to the next one's start
(`mkdir`, limit writes, `rmdir`, and the kernel's work behind them). Thousands of children of an
array ask for the same limits, so an emptied group is kept as a spare and handed to the next
attempt with the same limits: they are already written. A group is reused only when nothing of
its attempt is left in it and the memory it still has charged (page cache, tmpfs files) is
negligible, so no attempt inherits another's memory use; an attempt's OOM count is taken from its
own start (`AttemptCgroups` reads a baseline).

Every group (memory, cpu and the cgroup2 tracking group alike) is named `kiln-pool-<pid>-<n>`
when created and keeps that name: renaming the memory and cpu groups to each attempt's name and
back cost ~80 us of the executor's CPU per attempt, and cgroup2 refuses renames anyway. The
owner's pid in the name is what recovery needs: groups that an executor which died left behind
are removed by the next one that starts, and their processes, that dead executor's lost attempts,
are killed. Spares are removed when the executor shuts down.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import AttemptCgroups, CgroupSupport
from .process_tree import left_by_dead_owner, spare_name

logger = logging.getLogger(__name__)

POOL_PREFIX = "kiln-pool-"
LEGACY_PREFIXES = ("kiln-free-",)  # spares and tracking groups of Kiln before pool names were for life
KEEP_PER_LIMITS = 16  # spares kept per (memory, vCPUs, hard cap): more than run at once per kind
# At most this much memory may still be charged to an emptied group for it to be reused.
REUSE_MAX_CHARGED_BYTES = 4 * 1024 * 1024

_Limits = tuple[int, float, bool]  # memory MiB, vCPUs, hard CPU cap


@dataclass
class _Spare:
    groups: AttemptCgroups  # with its control files still open
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
        """The attempt's groups: a spare with these limits, else new ones under a new pool name."""
        limits = (memory_mib, vcpus, cpu_hard_cap)
        self._limits[attempt_id] = limits
        spares = self._spares.get(limits)
        if spares:
            spare = spares.pop()
            return spare.groups.reuse(spare.oom_count)
        return AttemptCgroups.create(
            self.support, self._pool_name(), memory_mib=memory_mib, vcpus=vcpus, cpu_hard_cap=cpu_hard_cap
        )

    def release(self, attempt_id: str, groups: AttemptCgroups, *, settled_oom_count: int | None = None) -> bool:
        """The attempt is over: keep its groups as spares when they are clean, else remove them.
        `settled_oom_count`: the memory group's OOM count read once nothing of the attempt was left
        (the next attempt's baseline then needs no read).

        False (and a warning) when a group stays busy, as `AttemptCgroups.remove`.
        """
        limits = self._limits.pop(attempt_id, None)
        spares = self._spares.setdefault(limits, []) if limits is not None else None
        if spares is None or len(spares) >= self.keep or not groups.paths() or not self._clean(groups):
            return groups.remove()
        spares.append(_Spare(groups, settled_oom_count))
        return True

    def discard(self, attempt_id: str, groups: AttemptCgroups) -> bool:
        """Remove the attempt's groups instead of keeping them (see `release`)."""
        self._limits.pop(attempt_id, None)
        return groups.remove()

    def close(self) -> None:
        """Remove every spare (the executor is shutting down)."""
        for spares in self._spares.values():
            for spare in spares:
                spare.groups.remove()
        self._spares.clear()

    @staticmethod
    def _pool_name() -> str:
        return spare_name(POOL_PREFIX)

    @staticmethod
    def _clean(groups: AttemptCgroups) -> bool:
        """Empty, still there (a group removed behind our back must not go back to the pool), and
        with little memory charged."""
        try:
            if groups.pids(strict=True):
                return False
        except OSError:
            return False
        try:
            charged = groups.charged_bytes()
        except (OSError, ValueError):
            return False
        return charged is None or charged <= REUSE_MAX_CHARGED_BYTES

    def _remove_dead_owners_spares(self) -> None:
        """Groups of executors that died, spares or still holding what is left of their lost attempts
        (killed: that executor's successor cannot reap them)."""
        for parent in (self.support.memory_parent, self.support.cpu_parent, self.support.tracking_parent):
            if parent is None:
                continue
            with contextlib.suppress(OSError), os.scandir(parent) as entries:
                for entry in entries:
                    if any(left_by_dead_owner(entry.name, prefix) for prefix in (POOL_PREFIX, *LEGACY_PREFIXES)):
                        group = Path(entry.path)
                        tracking = parent == self.support.tracking_parent
                        (AttemptCgroups(tracking=group) if tracking else AttemptCgroups(cpu=group)).remove()
