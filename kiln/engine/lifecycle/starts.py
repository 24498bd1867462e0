"""What the scheduler reports on the way to running: placements, attempts that are up, and why a
RUNNABLE job cannot be placed."""

from __future__ import annotations

from collections.abc import Sequence

from kiln.engine.lifecycle.states import Status
from kiln.engine.lifecycle.transitions import Move, set_reason, transition, transition_each
from kiln.store.repository import Repository


def placed(repo: Repository, moves: Sequence[Move]) -> None:
    """The scheduler placed these RUNNABLE jobs (each move's values carry the new attempt count)."""
    transition_each(repo, Status.STARTING, moves, only_from=frozenset({Status.RUNNABLE}))


def running(repo: Repository, moves: Sequence[Move]) -> None:
    """Their attempts' processes are up (executor events): STARTING jobs are RUNNING."""
    transition_each(repo, Status.RUNNING, moves, only_from=frozenset({Status.STARTING}))


def release_gang_nodes(repo: Repository, node_ids: Sequence[str], now_ms: int) -> None:
    """A multi-node job's gang was placed: its waiting (SUBMITTED) nodes become RUNNABLE, to be
    moved to STARTING in the same transaction."""
    transition(repo, node_ids, Status.RUNNABLE, None, now_ms, only_from=frozenset({Status.SUBMITTED}))


def diagnose(repo: Repository, job_id: str, reason: str | None) -> None:
    """Why a RUNNABLE job cannot be placed (AWS's capacity diagnostics), or None once it can."""
    set_reason(repo, [job_id], Status.RUNNABLE, reason)
