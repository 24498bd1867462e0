"""Render processes kept warm between jobs of one scene: which job may reuse which process.

A 1-frame job forked from the zygote still renders in a fresh Cycles session: with Pottery that is
~0.6 s of set-up per frame (shaders, the Nishita sky, BVH, kernels) which one Blender rendering
frame after frame with persistent data pays once (docs/performance.md). So a forked render process
that finished its job cleanly may leave the job's cgroups and wait, scene and Cycles session still
loaded, for the next job of the same scene with the same settings: that job's process is handed to
it instead of a fresh fork, and the process joins that job's cgroups first, exactly as a fork would.

Which job may take a warm process is decided here, without side effects:

- the same local input file, unchanged since it was opened ahead (path and identity), written to a
  local output, with the same Blender-visible settings (vCPUs, resolution, samples): the warm
  process then holds exactly the state a fresh fork would build;
- a memory limit at least the peak the process's earlier jobs reached in their own groups. Memory
  already charged to an earlier job is not charged again to the next (cgroups cannot move charges),
  so a job whose limit would not have held the render started afresh gets a fresh fork, and fails
  as it would have.

Idle warm processes are bounded in number (one per job slot the host has) and in time.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from kiln.render.uris import local_path
from kiln.render.vcpus import VCPUS_VARIABLE

WARM_SECONDS_VARIABLE = "KILN_RENDER_ZYGOTE_WARM_SECONDS"  # 0 turns warm processes off
DEFAULT_WARM_SECONDS = 30.0


@dataclass(frozen=True)
class WarmKey:
    """What a warm process has loaded and set: a job with the same key finds what a fork would build."""

    blend_file: Path
    identity: tuple[int, ...]  # device, inode, size, modification time (blender.file_identity)
    vcpus: str
    resolution_percent: int | None
    samples: int | None


def warm_key(
    arguments: argparse.Namespace,
    cwd: str,
    environ: Mapping[str, str],
    opened_ahead: tuple[Path, tuple[int, ...]] | None,
) -> WarmKey | None:
    """The key of a `render` job whose input is the scene opened ahead and whose output is local."""
    if arguments.action != "render" or opened_ahead is None:
        return None
    if local_path(arguments.input, cwd=cwd) != opened_ahead[0] or local_path(arguments.output, cwd=cwd) is None:
        return None
    return WarmKey(
        blend_file=opened_ahead[0],
        identity=opened_ahead[1],
        vcpus=environ.get(VCPUS_VARIABLE, ""),
        resolution_percent=arguments.resolution_percent,
        samples=arguments.samples,
    )


class Parkable(Protocol):
    key: WarmKey | None
    needed_bytes: int


W = TypeVar("W", bound=Parkable)


@dataclass
class WarmPool(Generic[W]):
    """Idle warm processes, oldest first."""

    capacity: int
    idle_seconds: float
    _idle: list[tuple[float, W]] = field(default_factory=list)

    def take(self, key: WarmKey | None, memory_limit_bytes: int | None) -> W | None:
        """The most recently parked process for `key` that the job's memory limit admits."""
        if key is None or memory_limit_bytes is None:
            return None
        for index in range(len(self._idle) - 1, -1, -1):
            worker = self._idle[index][1]
            if worker.key == key and 0 < worker.needed_bytes <= memory_limit_bytes:
                del self._idle[index]
                return worker
        return None

    def park(self, worker: W, now: float) -> list[W]:
        """Keep `worker` idle; returns the processes to dismiss (the oldest, beyond capacity)."""
        if worker.key is None or self.capacity <= 0 or self.idle_seconds <= 0:
            return [worker]
        self._idle.append((now, worker))
        evicted = [parked for _, parked in self._idle[: max(0, len(self._idle) - self.capacity)]]
        del self._idle[: len(evicted)]
        return evicted

    def discard(self, worker: W) -> None:
        self._idle = [(since, parked) for since, parked in self._idle if parked is not worker]

    def stale(self, opened_ahead: tuple[Path, tuple[int, ...]] | None, now: float) -> list[W]:
        """Processes idle too long, or holding an older version of a file opened ahead since: removed."""
        keep: list[tuple[float, W]] = []
        stale: list[W] = []
        for since, worker in self._idle:
            outdated = (
                opened_ahead is not None
                and worker.key is not None
                and worker.key.blend_file == opened_ahead[0]
                and worker.key.identity != opened_ahead[1]
            )
            if outdated or now - since >= self.idle_seconds:
                stale.append(worker)
            else:
                keep.append((since, worker))
        self._idle = keep
        return stale

    def next_expiry(self) -> float | None:
        """When the oldest idle process is due to go (monotonic seconds); None when none is idle."""
        return self._idle[0][0] + self.idle_seconds if self._idle else None

    def __len__(self) -> int:
        return len(self._idle)
