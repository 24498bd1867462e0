"""The scheduler loop: the one place where decisions turn into effects.

Each tick: apply executor events, move jobs along (dependencies, arrays), signal terminations,
plan placements with the pure `scheduling.plan`, commit each placement (RUNNABLE -> STARTING plus
an attempt row) and only then start it. A job is never started before its placement is durable.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

from kiln.batch import progress, scheduling
from kiln.batch.arns import Arns
from kiln.batch.clock import now_ms
from kiln.batch.containers import environment_of
from kiln.batch.status import HOST_TERMINATED, Status, set_reason, transition
from kiln.config import Settings
from kiln.executors.base import TASK_FAILED_TO_START, AttemptExited, AttemptRunning, AttemptSpec, Executor
from kiln.store.database import Database
from kiln.store.repository import Repository

log = logging.getLogger(__name__)
Row = dict[str, Any]
CANDIDATES_PER_QUEUE = 1000
RETENTION_CHECK_SECONDS = 60.0


def log_stream_name(definition_name: str, task_id: str) -> str:
    return f"{definition_name[:200]}/default/{task_id}"


def log_path(settings: Settings, stream: str) -> Path:
    return settings.logs_dir / f"{stream}.log"


class Scheduler:
    """Runs `tick` on a background thread; `wake` makes the next tick happen now."""

    def __init__(self, db: Database, executor: Executor, settings: Settings, arns: Arns) -> None:
        self.db, self.executor, self.settings, self.arns = db, executor, settings, arns
        self.host_id = f"kiln-{socket.gethostname()}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signalled: set[str] = set()
        self._last_purge = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.reconcile_lost_attempts()
        self._thread = threading.Thread(target=self._run, name="kiln-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.executor.shutdown()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.tick()
            except Exception:  # the loop must survive anything; the error is logged with its traceback
                log.exception("scheduler tick failed")
                busy = False
            if not busy:
                self._wake.wait(self.settings.scheduler_interval_seconds)
                self._wake.clear()

    # -- one tick ------------------------------------------------------------------------------
    def tick(self) -> bool:
        """One pass; returns True when something moved (so the next pass comes at once)."""
        now = now_ms()
        moved = self.apply_events()
        with self.db.begin() as connection:
            repo = Repository(connection)
            moved |= progress.advance_submitted(repo, now)
            moved |= progress.advance_pending(repo, now)
            moved |= progress.finish_array_parents(repo, now)
        self.signal_terminations()
        moved |= self.place(now)
        self.purge_expired(now)
        return moved

    def apply_events(self) -> bool:
        events = self.executor.poll()
        for event in events:
            with self.db.begin() as connection:
                repo = Repository(connection)
                attempt = repo.get_attempt(event.attempt_id)
                job = None if attempt is None else repo.get_job(attempt["job_id"])
                if attempt is None or job is None:
                    continue  # purged meanwhile
                if isinstance(event, AttemptRunning):
                    repo.update_attempt(attempt["task_id"], {"started_at": event.at_ms})
                    transition(
                        repo,
                        [job["id"]],
                        Status.RUNNING,
                        None,
                        event.at_ms,
                        only_from=frozenset({Status.STARTING}),
                    )
                elif isinstance(event, AttemptExited):
                    self._signalled.discard(event.attempt_id)
                    progress.record_exit(repo, job, attempt, event, self._spec_of(repo, job).get("retryStrategy"))
        return bool(events)

    def signal_terminations(self) -> None:
        """TerminateJob is recorded durably by the API; here the running attempt gets its signal."""
        with self.db.read() as connection:
            repo = Repository(connection)
            active = {a["job_id"]: a for a in repo.active_attempts()}
            jobs = repo.get_jobs(list(active))
        for job in jobs:
            attempt = active[job["id"]]
            if job["is_terminated"] and attempt["task_id"] not in self._signalled:
                self._signalled.add(attempt["task_id"])
                self.executor.terminate(attempt["task_id"], job["spec"].get("stopReason") or "Terminated")

    # -- placement -----------------------------------------------------------------------------
    def place(self, now: int) -> bool:
        with self.db.read() as connection:
            repo = Repository(connection)
            queues = [row["doc"] for row in repo.list_named("queue", None, 0, 10_000) if row["state"] == "ENABLED"]
            # Candidates per queue, so one huge queue never hides a higher-priority one.
            runnable = [job for q in queues for job in repo.runnable_in_queue(q["jobQueueArn"], CANDIDATES_PER_QUEUE)]
            if not runnable:
                return False
            decision = scheduling.plan(*self._planning_inputs(repo, queues, runnable))
        current = {job["id"]: job["status_reason"] for job in runnable}
        changed = {job_id: reason for job_id, reason in decision.diagnostics.items() if current[job_id] != reason}
        if changed:
            with self.db.begin() as connection:
                repo = Repository(connection)
                for job_id, reason in changed.items():
                    set_reason(repo, [job_id], Status.RUNNABLE, reason)
        for placement in decision.placements:
            self._start(placement, now)
        return bool(decision.placements)

    def _planning_inputs(self, repo: Repository, queues: list[Row], runnable: list[Row]) -> tuple[Any, ...]:
        ces = {row["name"]: row["doc"] for row in repo.list_named("ce", None, 0, 10_000)}
        active = repo.active_attempts()
        used: dict[str, float] = {}
        for attempt in active:
            used[attempt["compute_environment"]] = used.get(attempt["compute_environment"], 0.0) + attempt["vcpus"]
        queue_views = [
            scheduling.QueueView(
                arn=q["jobQueueArn"],
                priority=q["priority"],
                environments=tuple(
                    item["computeEnvironment"].rsplit("/", 1)[-1] for item in q["computeEnvironmentOrder"]
                ),
            )
            for q in queues
        ]
        env_views = [
            scheduling.EnvironmentView(
                name=name, enabled=doc["state"] == "ENABLED", max_vcpus=_cap(doc), used_vcpus=used.get(name, 0.0)
            )
            for name, doc in ces.items()
        ]
        capacity = self.executor.capacity()
        total = scheduling.Resources(capacity.vcpus, capacity.memory_mib, capacity.gpus)
        free = scheduling.Resources(
            total.vcpus - sum(a["vcpus"] for a in active),
            total.memory_mib - sum(a["memory_mib"] for a in active),
            total.gpus - sum(a["gpus"] for a in active),
        )
        candidates = [
            scheduling.Candidate(j["id"], j["queue_arn"], j["vcpus"], j["memory_mib"], j["gpus"]) for j in runnable
        ]
        return candidates, queue_views, env_views, free, total

    def _start(self, placement: scheduling.Placement, now: int) -> None:
        task_id = uuid.uuid4().hex
        with self.db.begin() as connection:
            repo = Repository(connection)
            if not transition(repo, [placement.job_id], Status.STARTING, None, now):
                return  # cancelled or terminated since the plan was made
            job = repo.get_job(placement.job_id)
            assert job is not None
            spec, parent = self._spec_of(repo, job), self._parent_of(repo, job)
            number = job["attempt_count"] + 1
            stream = log_stream_name(spec["jobDefinitionName"], task_id)
            repo.update_job_fields(job["id"], {"attempt_count": number})
            repo.insert_attempt({"task_id": task_id, "job_id": job["id"], "number": number,
                                 "compute_environment": placement.environment, "log_stream": stream,
                                 "vcpus": job["vcpus"], "memory_mib": job["memory_mib"], "gpus": job["gpus"],
                                 "active": True})  # fmt: skip
            attempt_spec = self._attempt_spec(job, parent, spec, task_id, number, placement.environment, stream)
        try:
            self.executor.start(attempt_spec)
        except Exception as exc:  # an executor bug must fail the attempt, not the scheduler
            log.exception("executor failed to start %s", task_id)
            self._fail_start(task_id, f"CannotStartContainerError: {exc}")

    def _fail_start(self, task_id: str, reason: str) -> None:
        event = AttemptExited(task_id, now_ms(), None, TASK_FAILED_TO_START, reason, started=False)
        with self.db.begin() as connection:
            repo = Repository(connection)
            attempt = repo.get_attempt(task_id)
            job = repo.get_job(attempt["job_id"]) if attempt else None
            if attempt and job:
                progress.record_exit(repo, job, attempt, event, self._spec_of(repo, job).get("retryStrategy"))

    def _attempt_spec(self, job: Row, parent: Row | None, spec: Row, task_id: str, number: int,
                      environment: str, stream: str) -> AttemptSpec:  # fmt: skip
        container = spec["container"]
        variables = {
            "AWS_BATCH_JOB_ID": job["id"],
            "AWS_BATCH_JOB_ATTEMPT": str(number),
            "AWS_BATCH_JQ_NAME": job["queue_arn"].rsplit("/", 1)[-1],
            "AWS_BATCH_CE_NAME": environment,
        }
        if parent is not None:
            variables["AWS_BATCH_JOB_ARRAY_INDEX"] = str(job["array_index"])
            variables["AWS_BATCH_JOB_ARRAY_SIZE"] = str(parent["array_size"])
        timeout = (spec.get("timeout") or {}).get("attemptDurationSeconds")
        return AttemptSpec(
            attempt_id=task_id, job_id=job["id"], image=container["image"], command=list(container.get("command") or []),
            environment=environment_of(container, variables), vcpus=job["vcpus"], memory_mib=job["memory_mib"],
            gpus=job["gpus"], log_path=log_path(self.settings, stream), workdir=self.settings.work_dir / task_id,
            timeout_seconds=timeout, cpu_hard_cap=environment in self.settings.cpu_hard_cap_environments,
        )  # fmt: skip

    @staticmethod
    def _parent_of(repo: Repository, job: Row) -> Row | None:
        return repo.get_job(job["parent_id"]) if job["parent_id"] else None

    def _spec_of(self, repo: Repository, job: Row) -> Row:
        parent = self._parent_of(repo, job)
        return {**parent["spec"], **job["spec"]} if parent is not None else job["spec"]

    # -- crash recovery and retention ----------------------------------------------------------
    def reconcile_lost_attempts(self) -> None:
        """Attempts the previous server process had placed are gone with it: fail them as a lost
        host (AWS's text), so each job is retried per its strategy instead of hanging forever."""
        reason = HOST_TERMINATED.format(host=self.host_id)
        with self.db.begin() as connection:
            repo = Repository(connection)
            for attempt in repo.active_attempts():
                job = repo.get_job(attempt["job_id"])
                if job is None:
                    continue
                self.executor.discard_lost(attempt["task_id"])
                event = AttemptExited(
                    attempt["task_id"], now_ms(), None, reason, started=attempt["started_at"] is not None
                )
                progress.record_exit(repo, job, attempt, event, self._spec_of(repo, job).get("retryStrategy"))

    def purge_expired(self, now: int) -> None:
        retention_ms = int(self.settings.retention_days * 86_400_000)
        if now / 1000 - self._last_purge < min(RETENTION_CHECK_SECONDS, retention_ms / 4000):
            return
        self._last_purge = now / 1000
        cutoff = now - retention_ms
        with self.db.begin() as connection:
            repo = Repository(connection)
            ids = repo.purge_candidates(cutoff)
            streams = repo.log_streams_of(ids + repo.child_ids(ids))
            repo.purge_jobs(ids)
        for stream in streams:
            log_path(self.settings, stream).unlink(missing_ok=True)
        if ids:
            log.info("purged %d jobs finished before the retention window", len(ids))


def _cap(ce_doc: Row) -> float | None:
    if ce_doc["type"] == "UNMANAGED":
        return ce_doc.get("unmanagedvCpus")
    return (ce_doc.get("computeResources") or {}).get("maxvCpus")
