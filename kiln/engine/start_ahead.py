"""Start-ahead: a short queue of placements behind each running child of a fast array job.

A `true` or a one-frame render ends faster than one scheduler round trip (read the exit, commit,
place the next, start it), so with nothing waiting the cores idle between children. For arrays
whose children have been ending quickly, the next children in the queue's own order are placed
behind running siblings (same resources, same compute environment); the executor starts each the
moment its predecessor ends, and the scheduler records all of it in its next batched transaction.

What is queued behind one attempt is bounded by `HORIZON_MS` of observed work, so a job arriving
later in a higher-priority queue waits at most about that long for it. A queued attempt holds no
capacity of its own: it will use its predecessor's. Only state in memory: after a restart the
queued attempts simply count as running until they do run.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kiln.executors.base import AttemptEvent, AttemptExited, AttemptRunning

HORIZON_MS = 250.0
MAX_DEPTH = 200
SMOOTHING = 0.2  # weight of the newest duration in the moving average
MIN_SAMPLES = 4  # children that must have ended before an array counts as fast


@dataclass
class _Slot:
    """One running attempt's place and the attempts queued to take it, in order. The same object
    passes from each attempt that ends to the next, so a queued attempt maps to it once and never
    needs re-pointing (an array's every child ends a slot's turn)."""

    parent_id: str
    environment: str
    resources: tuple[float, int, int]
    followers: deque[str] = field(default_factory=deque)


@dataclass(frozen=True)
class Chained:
    """Place job `job_id` as attempt `task_id` in `environment`, to start once `after` has ended."""

    job_id: str
    task_id: str
    environment: str
    after: str | None  # None: start now


@dataclass
class _Speed:
    mean_ms: float = 0.0
    samples: int = 0

    def add(self, duration_ms: float) -> None:
        self.mean_ms = duration_ms if not self.samples else (1 - SMOOTHING) * self.mean_ms + SMOOTHING * duration_ms
        self.samples += 1

    def depth(self) -> int:
        """How many attempts may wait behind one running sibling."""
        if self.samples < MIN_SAMPLES:
            return 0
        return min(MAX_DEPTH, int(HORIZON_MS / max(self.mean_ms, 1.0)))


class StartAhead:
    """Chains of placements per running array child, and how fast each array's children run."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}  # attempt holding the place -> its slot
        self._slot_of: dict[str, _Slot] = {}  # queued attempt -> the slot whose place it will take
        self._began: dict[str, tuple[str, int]] = {}  # attempt -> (parent, started at ms)
        self._speed: dict[str, _Speed] = {}  # array parent -> its children's durations
        self._waiting: dict[str, tuple[str, tuple[float, int, int]]] = {}  # queued -> (environment, resources)

    def queued(self) -> set[str]:
        """Attempts placed behind another: they hold no capacity until that one ends."""
        return set(self._slot_of)

    def queued_usage(self) -> dict[str, tuple[float, int, int]]:
        """What the queued attempts' rows claim, per compute environment: capacity they do not hold."""
        usage: dict[str, tuple[float, int, int]] = {}
        for task_id in self._slot_of:
            environment, (vcpus, memory, gpus) = self._waiting[task_id]
            held = usage.get(environment, (0.0, 0, 0))
            usage[environment] = (held[0] + vcpus, held[1] + memory, held[2] + gpus)
        return usage

    def placed(self, task_id: str, parent_id: str, environment: str, resources: tuple[float, int, int],
               after: str | None) -> None:  # fmt: skip
        if after is None:
            self._slots[task_id] = _Slot(parent_id, environment, resources)
            return
        slot = self._slot_of.get(after) or self._slots.get(after)
        if slot is not None:
            slot.followers.append(task_id)
            self._slot_of[task_id] = slot
            self._waiting[task_id] = (environment, resources)

    def forget(self, task_ids: Sequence[str]) -> None:
        """Undo `placed` for attempts whose placement was not committed (newest last)."""
        for task_id in reversed(task_ids):
            self._waiting.pop(task_id, None)
            queued_in = self._slot_of.pop(task_id, None)
            if queued_in is not None:
                queued_in.followers.remove(task_id)
            slot = self._slots.pop(task_id, None)
            for follower in slot.followers if slot is not None else ():
                self._slot_of.pop(follower, None)
                self._waiting.pop(follower, None)

    def observe(self, events: Iterable[AttemptEvent]) -> None:
        for event in events:
            if isinstance(event, AttemptRunning):
                slot = self._slots.get(event.attempt_id)
                if slot is not None:
                    self._began[event.attempt_id] = (slot.parent_id, event.at_ms)
            elif isinstance(event, AttemptExited):
                self._ended(event)

    def _ended(self, event: AttemptExited) -> None:
        task_id = event.attempt_id
        began = self._began.pop(task_id, None)
        slot = self._slots.pop(task_id, None)  # None for an attempt that ended while queued
        if began is None and slot is not None and event.started_at is not None:
            began = (slot.parent_id, event.started_at)  # its `AttemptRunning` was not sent (it ended first)
        if began is not None and not event.terminated:
            parent_id, started_ms = began
            speed = self._speed.get(parent_id)
            if speed is None:
                speed = self._speed[parent_id] = _Speed()
            speed.add(event.at_ms - started_ms)
        self._waiting.pop(task_id, None)
        queued_in = self._slot_of.pop(task_id, None)
        if queued_in is not None:  # ended while queued (terminated): it leaves its chain
            queued_in.followers.remove(task_id)
            return
        if slot is None or not slot.followers:
            return
        successor = slot.followers.popleft()  # the first follower now holds the place
        del self._slot_of[successor]
        del self._waiting[successor]
        self._slots[successor] = slot

    def room(self) -> int:
        """How many placements the chains could take now."""
        return sum(max(0, self._room(slot)) for slot in self._slots.values())

    def _room(self, slot: _Slot) -> int:
        speed = self._speed.get(slot.parent_id)
        return 0 if speed is None else speed.depth() - len(slot.followers)

    def chain(self, candidates: Sequence[tuple[str, str | None, tuple[float, int, int]]]) -> list[Chained]:
        """Chain a queue's next RUNNABLE jobs (id, array parent, resources), in the queue's order,
        behind running siblings that have room; stops at the first job that cannot be chained so
        nothing overtakes the queue's order."""
        room = {head: self._room(slot) for head, slot in self._slots.items()}
        tails = {head: (slot.followers[-1] if slot.followers else head) for head, slot in self._slots.items()}
        by_parent: dict[str, list[str]] = {}
        for head, slot in self._slots.items():
            by_parent.setdefault(slot.parent_id, []).append(head)
        chained: list[Chained] = []
        for job_id, parent_id, resources in candidates:
            heads = [h for h in by_parent.get(parent_id or "", ()) if room[h] > 0 and self._fits(resources, h)]
            if not heads:
                break
            head = max(heads, key=lambda h: room[h])  # the shortest chain first
            task_id = uuid.uuid4().hex
            chained.append(Chained(job_id, task_id, self._slots[head].environment, tails[head]))
            tails[head] = task_id
            room[head] -= 1
        return chained

    def _fits(self, resources: tuple[float, int, int], head: str) -> bool:
        held = self._slots[head].resources
        return all(need <= have for need, have in zip(resources, held, strict=True))
