"""Start-ahead chains where attempts run: an attempt placed `start_after` a running one waits
beside it and starts the moment it ends, without a round trip to the server. The attempt
supervisor keeps them for the local executor; the scheduler builds the chains
(kiln/engine/start_ahead.py). Kept apart from the supervisor's socket and journal so that any
process that runs attempts (a Ray node's agent, next) can hold chains the same way."""

from __future__ import annotations

import copy
from collections.abc import Container
from dataclasses import dataclass, field

from .base import AttemptSpec


@dataclass
class StartChains:
    waiting: dict[str, list[AttemptSpec]] = field(default_factory=dict)  # predecessor -> who starts after it
    queued: dict[str, str] = field(default_factory=dict)  # attempt waiting -> its predecessor

    def hold(self, spec: AttemptSpec, live: Container[str]) -> bool:
        """Queue `spec` behind its predecessor if that one is `live` here or queued itself; False:
        start it now (no predecessor, or it is already over)."""
        after = spec.start_after
        if after is None or (after not in live and after not in self.queued):
            return False
        self.waiting.setdefault(after, []).append(spec)
        self.queued[spec.attempt_id] = after
        return True

    def drop(self, attempt_id: str) -> bool:
        """Take a queued attempt out (stopped before it started): whoever waited for it waits for
        its predecessor instead. False if it was not queued."""
        predecessor = self.queued.pop(attempt_id, None)
        if predecessor is None:
            return False
        self.waiting[predecessor] = [s for s in self.waiting[predecessor] if s.attempt_id != attempt_id]
        for follower in self.waiting.pop(attempt_id, []):
            self.waiting[predecessor].append(follower)
            self.queued[follower.attempt_id] = predecessor
        return True

    def released(self, ended: str) -> list[AttemptSpec]:
        """`ended` is over: who waited for it, to start now."""
        followers = self.waiting.pop(ended, [])
        for follower in followers:
            del self.queued[follower.attempt_id]
        return [_without_predecessor(follower) for follower in followers]


def _without_predecessor(spec: AttemptSpec) -> AttemptSpec:
    """`spec` with `start_after` cleared: a shallow copy with one field set, as `dataclasses.replace`
    would give, without running the frozen dataclass's `__init__` over every field again (an array's
    every child passes here)."""
    follower = copy.copy(spec)
    object.__setattr__(follower, "start_after", None)
    return follower
