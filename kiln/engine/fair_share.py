"""Fair-share ordering of a queue's RUNNABLE jobs, as pure functions (https://docs.aws.amazon.com/batch/latest/userguide/fair-share-scheduling.html).

A fair-share queue serves share identifiers in inverse proportion to their weighted recent usage:
the next job comes from the share whose `usage * weightFactor` is smallest, so a share with weight
1 gets three times the capacity of one with weight 3 (AWS: "lower weightFactor = bigger share").
Within a share, higher `schedulingPriority` goes first, then the order jobs became RUNNABLE.

Usage is vCPU-seconds of the share's attempts: running ones count in full, finished ones fade
linearly to nothing over `shareDecaySeconds` (0 means AWS's default window of 600 s). Every
attempt counts at least MIN_CHARGE_SECONDS of its vCPUs, and so does each job placed within one
ordering, so a burst of very short jobs still shares by job count rather than not at all.
`decayed_usage` is the definition; the scheduler gets the same sums from SQL
(`ShareStore.usage` in kiln/store/shares.py), and a test checks that the two agree.

`computeReservation` keeps `(computeReservation/100) ** active_shares` of the capacity for share
identifiers that have nothing running yet: a job of a share already running is held back when it
would eat into that reserve (`reserve`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_CHARGE_SECONDS = 1.0
DEFAULT_DECAY_SECONDS = 600
DEFAULT_WEIGHT = 1.0
_EPSILON = 1e-9


@dataclass(frozen=True)
class ShareJob:
    """A RUNNABLE candidate as fair share sees it; inputs come in RUNNABLE (FIFO) order."""

    job_id: str
    share: str
    priority: int = 0
    vcpus: float = 1.0


@dataclass(frozen=True)
class AttemptUsage:
    """One attempt of a share's job: running, or finished within the decay window."""

    share: str
    vcpus: float
    started_at: int | None  # epoch ms; None while STARTING
    stopped_at: int | None
    active: bool


@dataclass(frozen=True)
class FairShare:
    """A policy's `fairsharePolicy`, ready for ordering."""

    decay_seconds: int = DEFAULT_DECAY_SECONDS
    compute_reservation: int = 0
    weights: Mapping[str, float] = field(default_factory=dict)  # exact share identifiers
    prefixes: tuple[tuple[str, float], ...] = ()  # `prefix*` entries

    @classmethod
    def from_document(cls, document: Mapping[str, Any] | None) -> FairShare:
        document = document or {}
        weights: dict[str, float] = {}
        prefixes: list[tuple[str, float]] = []
        for entry in document.get("shareDistribution") or []:
            identifier, weight = entry["shareIdentifier"], float(entry.get("weightFactor", DEFAULT_WEIGHT))
            if identifier.endswith("*"):
                prefixes.append((identifier[:-1], weight))
            else:
                weights[identifier] = weight
        decay = int(document.get("shareDecaySeconds") or 0) or DEFAULT_DECAY_SECONDS
        reservation = int(document.get("computeReservation") or 0)
        return cls(decay, reservation, weights, tuple(sorted(prefixes, key=lambda p: -len(p[0]))))

    def weight(self, share: str) -> float:
        """The entry naming this share, else the (longest) matching prefix entry, else 1.0."""
        if share in self.weights:
            return self.weights[share]
        return next((weight for prefix, weight in self.prefixes if share.startswith(prefix)), DEFAULT_WEIGHT)


def decayed_usage(attempts: Iterable[AttemptUsage], now_ms: int, decay_seconds: int) -> dict[str, float]:
    """Per share: vCPU-seconds of running attempts plus finished ones, fading over the window."""
    window_ms = (decay_seconds or DEFAULT_DECAY_SECONDS) * 1000
    usage: dict[str, float] = {}
    for attempt in attempts:
        if not attempt.active and attempt.stopped_at is None:
            continue  # holds no capacity and never ended: no such attempt is ever stored
        end = now_ms if attempt.active or attempt.stopped_at is None else attempt.stopped_at
        ran = 0.0 if attempt.started_at is None else max(0, end - attempt.started_at) / 1000
        fade = 1.0 if attempt.active else min(1.0, max(0.0, 1 - (now_ms - end) / window_ms))
        usage[attempt.share] = usage.get(attempt.share, 0.0) + attempt.vcpus * max(ran, MIN_CHARGE_SECONDS) * fade
    return usage


def order(jobs: Sequence[ShareJob], policy: FairShare, usage: Mapping[str, float]) -> list[ShareJob]:
    """The order to offer `jobs` to the planner.

    Repeatedly take the best job (priority, then FIFO) of the share with the smallest weighted
    usage, charging that share for the job as if it had run MIN_CHARGE_SECONDS; ties go to the share
    whose next job has waited longest.
    """
    position = {job.job_id: index for index, job in enumerate(jobs)}
    per_share: dict[str, list[ShareJob]] = {}
    for job in jobs:
        per_share.setdefault(job.share, []).append(job)
    for queue in per_share.values():
        queue.sort(key=lambda job: (-job.priority, position[job.job_id]), reverse=True)  # pop() takes the best
    spent = {share: float(usage.get(share, 0.0)) for share in per_share}
    heap = [(spent[s] * policy.weight(s), position[q[-1].job_id], s) for s, q in per_share.items()]
    heapq.heapify(heap)
    ordered: list[ShareJob] = []
    while heap:
        _, _, share = heapq.heappop(heap)
        job = per_share[share].pop()
        ordered.append(job)
        spent[share] += job.vcpus * MIN_CHARGE_SECONDS
        if per_share[share]:
            heapq.heappush(heap, (spent[share] * policy.weight(share), position[per_share[share][-1].job_id], share))
    return ordered


def reserved_vcpus(max_vcpus: float, compute_reservation: int, active_shares: int) -> float:
    """AWS's `(computeReservation/100) ** ActiveFairShares` of the maximum vCPUs."""
    if compute_reservation <= 0:
        return 0.0
    return max_vcpus * (compute_reservation / 100) ** active_shares


def reserve(
    ordered: Sequence[ShareJob],
    compute_reservation: int,
    running_shares: Iterable[str],
    max_vcpus: float | None,
    used_vcpus: float,
) -> list[ShareJob]:
    """Drop (for this round) jobs of already-running shares that would use reserved capacity.

    Walks `ordered` as if every kept job were placed; a job of a share with nothing running is
    never held back, and placing it makes its share active (shrinking the reserve).
    """
    if compute_reservation <= 0 or max_vcpus is None:
        return list(ordered)
    active = set(running_shares)
    used = used_vcpus
    kept: list[ShareJob] = []
    for job in ordered:
        limit = max_vcpus - reserved_vcpus(max_vcpus, compute_reservation, len(active))
        if job.share in active and used + job.vcpus > limit + _EPSILON:
            continue
        kept.append(job)
        used += job.vcpus
        active.add(job.share)
    return kept
