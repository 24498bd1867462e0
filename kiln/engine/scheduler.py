"""The scheduler loop: the one place where decisions turn into effects.

Each tick: apply the executor's events, move jobs along (dependencies, arrays), signal
terminations, plan placements with the pure `scheduling.plan`, commit the placements (RUNNABLE ->
STARTING plus attempt rows) and only then start them. A job is never started before its placement
is durable, and no outcome is reported before it is committed.

Work is batched (group commit): one transaction applies every event that arrived since the last
tick and one transaction records every placement of a tick, so ten thousand short jobs cost a
few statements per tick, not per job. The executor wakes the loop the moment an attempt ends; the
slower sweeps (dependencies, array parents, RUNNABLE diagnostics) run when something changed or
once a second. What an attempt is (`attempts`), crash recovery (`recovery`) and retention
(`retention`) live beside it; job states are the lifecycle's (`lifecycle`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kiln.arns import Arns
from kiln.clock import now_ms
from kiln.config import Settings
from kiln.engine import consumables, lifecycle, recovery, scheduling, share_queue, time_limits
from kiln.engine.attempts import AttemptBuilder, log_stream_name
from kiln.engine.lifecycle import TERMINAL, Move, Status, gangs, progress
from kiln.engine.retention import Retention
from kiln.engine.start_ahead import Chained, StartAhead
from kiln.executors.base import (
    CANNOT_START_PREFIX,
    TASK_FAILED_TO_START,
    AttemptEvent,
    AttemptExited,
    AttemptRunning,
    AttemptSpec,
    Executor,
    local_host_id,
)
from kiln.observability.metrics import SchedulerMetrics
from kiln.store import leader_lease
from kiln.store.database import Database
from kiln.store.queries import Values
from kiln.store.records import Attempt, Candidate, Document, EnvironmentUsage, Job
from kiln.store.repository import Repository

log = logging.getLogger(__name__)
# Candidates fetched per queue and tick when placing; a sweep diagnoses up to DIAGNOSED_PER_QUEUE.
CANDIDATES_PER_QUEUE = 64
AHEAD_CANDIDATES = 256  # per queue and tick, for start-ahead chains
DIAGNOSED_PER_QUEUE = 1000
SWEEP_SECONDS = 1.0
TICK_SPACING_SECONDS = 0.05  # between busy ticks, unless the API changed something


class Scheduler:
    """Runs `tick` on a background thread; `wake` makes the next tick happen now."""

    metrics = SchedulerMetrics()  # the server sets its own (kiln/server.py); this one is never scraped

    def __init__(
        self, db: Database, executor: Executor, settings: Settings, arns: Arns,
        lease: leader_lease.LeaderLease | None = None,
    ) -> None:  # fmt: skip
        self.db, self.executor, self.settings, self.arns = db, executor, settings, arns
        # Servers sharing a PostgreSQL database: only the lease holder schedules (store/leader_lease.py).
        self.lease = lease or leader_lease.for_engine(db.engine)
        self._leading = False
        self.host_id = local_host_id()
        self.placer = f"{self.host_id}:{settings.data_dir}"  # attempts.placed_by
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signalled: set[str] = set()
        self._last_diagnosis = 0.0
        self._changed = threading.Event()  # the API committed something: sweep on the next tick
        self._unblocked = False  # a job with dependents ended: look at PENDING jobs next tick
        self._queues: list[Document] = []  # ENABLED queue documents, refreshed by each sweep
        self._environments: list[Document] = []
        self.attempts = AttemptBuilder(settings)
        self.retention = Retention(db, settings)
        self._unapplied: list[AttemptEvent] = []
        self._ahead = StartAhead()
        self._chained_this_tick: list[str] = []  # to forget if the tick's transaction fails
        self._gangs: set[str] = set()  # MNP jobs one of whose nodes had an event this tick
        executor.subscribe(self.wake)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._lead()
        self._thread = threading.Thread(target=self._run, name="kiln-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.executor.shutdown()
        self.lease.release()

    def wake(self) -> None:
        """Called by the executor when events are ready."""
        self._wake.set()

    def notify_change(self) -> None:
        """Called by the API after a commit (submit, cancel, terminate, queue changes)."""
        self._changed.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                with self.metrics.time_tick():
                    busy = self._lead() and self.tick()
            except Exception:  # the loop must survive anything; the error is logged with its traceback
                log.exception("scheduler tick failed")
                busy = False
            if not busy:
                self._wake.wait(self.settings.scheduler_interval_seconds)
            elif not self._changed.is_set():
                # Let executor events gather for a moment: a tick's fixed cost (a transaction, a
                # few queries) is then paid per batch, not per event, and the CPU it would spend
                # spinning on single events is left to the jobs. Start-ahead keeps the executor fed.
                self._stop.wait(TICK_SPACING_SECONDS)

    def _lead(self) -> bool:
        """Whether this server schedules now. On gaining the lease it first reconciles the attempts
        the previous leader (or this server's previous process) had placed."""
        held = self.lease.held()
        if held and not self._leading:
            self.reconcile_lost_attempts()
        self._leading = held
        return held

    # -- one tick ------------------------------------------------------------------------------
    def tick(self) -> bool:
        """One pass; returns True when something moved (so the next pass comes at once).

        Everything a tick decides is committed in ONE transaction (group commit), and only then
        are the placed attempts started. A full sweep (SUBMITTED and PENDING jobs, all array
        parents, terminations, queue and CE documents) runs after an API change and once a
        second, RUNNABLE diagnostics with the once-a-second one only; between sweeps a tick only
        applies events, finishes the array parents they touched, releases dependents of jobs that
        ended, and places what fits.
        """
        now = now_ms()
        stop_nodes = False
        # RUNNABLE reasons are refreshed once a second, not after every API change: a diagnosis
        # reads up to DIAGNOSED_PER_QUEUE jobs per queue, and the next submit would wait behind it.
        diagnose = time.monotonic() - self._last_diagnosis >= SWEEP_SECONDS
        sweep = diagnose or self._changed.is_set()
        if sweep:
            self._changed.clear()
        if diagnose:
            self._last_diagnosis = time.monotonic()
        # Events stay pending until the transaction recording them commits: a failed tick must
        # not lose an attempt's exit (its capacity would stay held forever).
        events = self._unapplied = self._unapplied + self.executor.poll()
        with self.db.begin() as connection:
            repo = Repository(connection)
            finished_parents = self.apply_events(repo, events)
            self._ahead.observe(events)  # idempotent: a failed tick observes them again
            moved = bool(events)
            unblocked, self._unblocked = self._unblocked, False
            if sweep:
                moved |= progress.advance_submitted(repo, now)
                moved |= time_limits.enforce(repo, now)  # jobStateTimeLimitActions
            if (sweep or unblocked) and progress.advance_pending(repo, now):
                moved = self._unblocked = True  # a failure cascades down a chain one tick per level
            if sweep or finished_parents:
                parents = None if sweep else sorted(finished_parents)
                if progress.finish_array_parents(repo, now, parents):
                    moved = self._unblocked = True  # the stitch-after-render case
            if sweep or self._gangs:  # MNP jobs follow their main node (all of them on a sweep)
                stop_nodes = gangs.sync(repo, now, None if sweep else sorted(self._gangs))
                moved |= stop_nodes or bool(self._gangs)
            if sweep:
                moved |= gangs.fail_stranded(repo, now)
                self._refresh_config(repo)
            to_start = self.place(repo, now, diagnose=diagnose)
            self._chained_this_tick = []
            try:
                # This tick's new attempts can take followers at once: children that end faster
                # than ticks come would otherwise have ended before any tick saw them running.
                self._chain_heads(to_start)
                to_start += self.place_ahead(repo, now)
            except BaseException:  # not committed: nothing of this tick may stay chained
                self._ahead.forget(self._chained_this_tick)
                raise
        self._unapplied = []
        self._gangs = set()
        self.executor.acknowledge([e.attempt_id for e in events if isinstance(e, AttemptExited)])
        self._launch(to_start)
        if sweep or stop_nodes:
            self.signal_terminations()
        self.retention.purge_expired(now)
        return moved or bool(to_start)

    def apply_events(self, repo: Repository, events: list[AttemptEvent]) -> set[str]:
        """Record executor events; returns the array parents one of whose children just ended
        (their completion is checked right away, not at the next sweep)."""
        if not events:
            return set()
        attempts = {a.task_id: a for a in repo.attempts.get_many([e.attempt_id for e in events])}
        jobs = {j.id: j for j in repo.jobs.get_many(sorted({a.job_id for a in attempts.values()}))}
        specs = self.attempts.specs(repo, list(jobs.values()))
        started: list[Values] = []
        running: list[Move] = []
        exits: list[progress.Exit] = []
        # Started and ended within this batch: the exit's writes record the start too (one write each).
        ending = {event.attempt_id for event in events if isinstance(event, AttemptExited)}
        counted: list[AttemptEvent] = []  # the events as the metrics count them (see below)
        for event in events:
            counted.append(event)
            attempt = attempts.get(event.attempt_id)
            job = None if attempt is None else jobs.get(attempt.job_id)
            if attempt is None or job is None or not attempt.active:
                continue  # purged meanwhile, or replayed by the executor after a restart
            if job.node_index is not None and job.parent_id is not None:
                self._gangs.add(job.parent_id)
            if isinstance(event, AttemptRunning):
                attempt.started_at = event.at_ms
                if event.attempt_id not in ending:
                    started.append({"_task_id": attempt.task_id, "started_at": event.at_ms})
                    running.append(Move(job.id, event.at_ms))
            elif isinstance(event, AttemptExited):
                self._signalled.discard(event.attempt_id)
                if event.started and attempt.started_at is None and event.started_at is not None:
                    # Its `AttemptRunning` never came (the supervisor folds it into an exit that
                    # follows within its batch, and a server that was down missed it): the exit
                    # stands for it, in the metrics as in the records.
                    attempt.started_at = event.started_at
                    counted.insert(-1, AttemptRunning(event.attempt_id, event.started_at))
                exits.append(progress.Exit(job, attempt, event, specs[job.id].get("retryStrategy")))
        self.metrics.record_events(counted, {task_id: a.started_at for task_id, a in attempts.items()})
        repo.attempts.update_each(started)
        lifecycle.running(repo, running)
        decided = progress.record_exits(repo, exits)
        ended = [job_id for job_id, status in decided.items() if status in TERMINAL]
        if ended and repo.jobs.has_dependents(ended):
            self._unblocked = True
        return {parent for job_id in ended if (parent := jobs[job_id].parent_id)}

    def _refresh_config(self, repo: Repository) -> None:
        """Queue and CE documents change only through the API, which triggers a sweep."""
        self._queues = [queue.doc for queue in repo.queues.all() if queue.state == "ENABLED"]
        self._environments = [environment.doc for environment in repo.environments.all()]

    def signal_terminations(self) -> None:
        """TerminateJob is recorded durably by the API; here the running attempt gets its signal."""
        with self.db.read() as connection:
            terminated = Repository(connection).attempts.terminated_active()
        for task_id, spec in terminated:
            if task_id not in self._signalled:
                self._signalled.add(task_id)
                self.executor.terminate(task_id, spec.get("stopReason") or "Terminated")

    # -- placement -----------------------------------------------------------------------------
    def place(self, repo: Repository, now: int, *, diagnose: bool) -> list[_Launch]:
        """Plan what fits now and record those placements; with `diagnose`, also refresh RUNNABLE
        reasons. Returns the attempts to start once the transaction has committed."""
        capacity = self.executor.capacity()
        usage = repo.attempts.usage_by_environment()
        # Placed behind another attempt (start-ahead): they will use its place, not hold their own.
        for environment, (vcpus, memory, gpus) in self._ahead.queued_usage().items():
            held = usage.setdefault(environment, EnvironmentUsage(environment, 0.0, 0, 0, 0))
            held.vcpus -= vcpus
            held.memory_mib -= memory
            held.gpus -= gpus
        free = scheduling.Resources(
            capacity.vcpus - sum(u.vcpus for u in usage.values()),
            capacity.memory_mib - sum(u.memory_mib for u in usage.values()),
            capacity.gpus - sum(u.gpus for u in usage.values()),
        )
        if not diagnose and (free.vcpus <= 0 or free.memory_mib <= 0):
            return []  # nothing can start until an attempt ends (which wakes us)
        runnable = self._candidates(repo, self._queues, free, diagnose)
        if not runnable:
            return []
        total = scheduling.Resources(capacity.vcpus, capacity.memory_mib, capacity.gpus)
        needs = _needs(repo, runnable)
        decision = scheduling.plan(
            [
                scheduling.Candidate(
                    j.id, j.queue_arn, j.vcpus, j.memory_mib, j.gpus, j.num_nodes is not None, needs.get(j.id, ())
                )
                for j in runnable
            ],
            [_queue_view(q) for q in self._queues],
            _environment_views(self._environments, usage),
            free,
            total,
            None if capacity.largest_host is None else scheduling.Resources(*capacity.largest_host),
            _available(repo, needs) if needs else None,
        )
        if diagnose:
            self._record_diagnostics(repo, runnable, decision)
        placements = [Chained(p.job_id, uuid.uuid4().hex, p.environment, None) for p in decision.placements]
        return self._record_placements(repo, placements, now, needs) if placements else []

    def place_ahead(self, repo: Repository, now: int) -> list[_Launch]:
        """Queue the next children of fast arrays behind running siblings (see start_ahead)."""
        room = self._ahead.room()
        if not room or not self.executor.capacity().start_after:
            return []
        launches: list[_Launch] = []
        for queue in self._queues:
            if queue.get("schedulingPolicyArn"):
                continue  # fair-share order is decided per tick by share_queue
            candidates = repo.jobs.candidates(
                queue["jobQueueArn"], Status.RUNNABLE.value, min(room, AHEAD_CANDIDATES), float("inf"), 2**62
            )
            # A job that needs consumable resources waits for them in `place`, never behind a sibling.
            needy = _needs(repo, candidates)
            candidates = [r for r in candidates if r.id not in needy]
            chained = self._ahead.chain([(r.id, r.parent_id, (r.vcpus, r.memory_mib, r.gpus)) for r in candidates])
            if chained:
                placed = self._record_placements(repo, chained, now, {})
                self._chain_heads(placed)
                self.metrics.placed_ahead.inc(len(placed))
                launches += placed
        return launches

    def _candidates(
        self, repo: Repository, queues: list[Document], free: scheduling.Resources, diagnose: bool
    ) -> list[Candidate]:
        """Per queue (so a huge queue never hides a higher-priority one): everything for a
        diagnosis sweep, else only jobs that could fit the free capacity."""
        if diagnose:
            limit, vcpus, memory = DIAGNOSED_PER_QUEUE, float("inf"), 2**62
        else:
            # A few more than could start now: reading rows is a large part of a tick's cost.
            limit = min(CANDIDATES_PER_QUEUE, max(8, int(4 * free.vcpus)))
            vcpus, memory = free.vcpus, free.memory_mib
        # share_queue orders a fair-share queue's candidates (FIFO queues: repo.jobs.candidates)
        return [job for queue in queues for job in share_queue.runnable_candidates(repo, queue, limit, vcpus, memory)]

    @staticmethod
    def _record_diagnostics(repo: Repository, runnable: list[Candidate], decision: scheduling.Plan) -> None:
        current = {job.id: job.status_reason for job in runnable}
        for job_id, reason in decision.diagnostics.items():
            if current[job_id] != reason:
                lifecycle.diagnose(repo, job_id, reason)

    def _record_placements(
        self, repo: Repository, placements: list[Chained], now: int, needs: dict[str, tuple[consumables.Need, ...]]
    ) -> list[_Launch]:
        """RUNNABLE -> STARTING plus an attempt row for each placement, in the tick's transaction;
        `needs`: the consumable resources of the jobs that need some (what `plan` weighed)."""
        jobs = {j.id: j for j in repo.jobs.get_many([p.job_id for p in placements])}
        job_specs = self.attempts.specs(repo, list(jobs.values()))
        launches: list[_Launch] = []
        moves: list[Move] = []
        attempts: list[Attempt] = []
        skipped: dict[str, str | None] = {}  # a chain link that was not placed -> what it waited for
        for placement in placements:
            after = placement.after
            while after in skipped:
                after = skipped[after]
            job = jobs.get(placement.job_id)
            if job is None or job.status != Status.RUNNABLE.value:
                skipped[placement.task_id] = after  # cancelled or terminated since the candidates were read
                continue
            task_id, number = placement.task_id, job.attempt_count + 1
            spec = job_specs[job.id]
            moves.append(Move(job.id, now, None, {"attempt_count": number}))
            if job.num_nodes is not None:  # a multi-node parallel job: its nodes start as one gang
                launches += self._place_gang(repo, job, number, placement.environment, now)
                continue
            stream = log_stream_name(spec["jobDefinitionName"], task_id)
            attempts.append(self._new_attempt(job, task_id, number, placement.environment, stream))
            attempt = self.attempts.attempt_spec(job, spec, task_id, number, placement.environment, stream)
            launches.append(_Launch(replace(attempt, start_after=after), job.parent_id, placement.environment))
        lifecycle.placed(repo, moves)
        repo.attempts.insert(attempts)
        _consume_non_replenishable(repo, [needs[move.job_id] for move in moves if move.job_id in needs])
        return launches

    def _place_gang(self, repo: Repository, job: Job, number: int, environment: str, now: int) -> list[_Launch]:
        """Every node of an MNP job placed, in the same transaction as the job: SUBMITTED nodes
        pass through RUNNABLE to STARTING with an attempt each, the main node first."""
        main = gangs.main_node(job)
        # The main node, then the others in node order (`children`'s order; the sort is stable).
        nodes = sorted(repo.jobs.children(job.id, [Status.SUBMITTED.value]), key=lambda node: node.node_index != main)
        lifecycle.release_gang_nodes(repo, [node.id for node in nodes], now)
        node_specs = self.attempts.specs(repo, nodes)
        moves: list[Move] = []
        attempts: list[Attempt] = []
        launches: list[_Launch] = []
        for node in nodes:
            task_id, spec = uuid.uuid4().hex, node_specs[node.id]
            stream = log_stream_name(spec["jobDefinitionName"], task_id)
            moves.append(Move(node.id, now, None, {"attempt_count": number}))
            attempts.append(self._new_attempt(node, task_id, number, environment, stream))
            attempt = self.attempts.attempt_spec(node, spec, task_id, number, environment, stream)
            launches.append(_Launch(attempt, None, environment))
        lifecycle.placed(repo, moves)
        repo.attempts.insert(attempts)
        return launches

    def _new_attempt(self, job: Job, task_id: str, number: int, environment: str, stream: str) -> Attempt:
        """The row of attempt `number` of `job`, placed now by this server (active, not yet started)."""
        return Attempt(
            task_id=task_id, job_id=job.id, number=number, compute_environment=environment, log_stream=stream,
            vcpus=job.vcpus, memory_mib=job.memory_mib, gpus=job.gpus, placed_by=self.placer,
        )  # fmt: skip

    def _chain_heads(self, launches: list[_Launch]) -> None:
        """Array children placed now become places that start-ahead may queue followers behind."""
        for launch in launches:
            spec = launch.spec
            if launch.parent_id is not None:
                resources = (spec.vcpus, spec.memory_mib, spec.gpus)
                self._ahead.placed(spec.attempt_id, launch.parent_id, launch.environment, resources, spec.start_after)
                self._chained_this_tick.append(spec.attempt_id)

    def _launch(self, launches: list[_Launch]) -> None:
        """Start attempts whose placement is committed, together; a failure to start becomes an exit
        (the executor reports one start's; a batch that raises as a whole fails all of its attempts)."""
        if not launches:
            return
        try:
            self.executor.start_many([launch.spec for launch in launches])
        except Exception as exc:  # an executor bug must fail the attempts, not the scheduler
            log.exception("executor failed to start %d attempts", len(launches))
            for launch in launches:
                self._fail_start(launch.spec.attempt_id, f"{CANNOT_START_PREFIX}: {exc}")

    def _fail_start(self, task_id: str, reason: str) -> None:
        event = AttemptExited(task_id, now_ms(), None, TASK_FAILED_TO_START, reason, started=False)
        with self.db.begin() as connection:
            repo = Repository(connection)
            attempt = repo.attempts.get(task_id)
            job = repo.jobs.get(attempt.job_id) if attempt else None
            if attempt and job:
                strategy = self.attempts.specs(repo, [job])[job.id].get("retryStrategy")
                progress.record_exits(repo, [progress.Exit(job, attempt, event, strategy)])

    def reconcile_lost_attempts(self) -> None:
        """See `recovery.reconcile_lost_attempts` (before the first tick, and on gaining the lease)."""
        recovery.reconcile_lost_attempts(self.db, self.executor, self.attempts, self.placer, self.host_id)


@dataclass(frozen=True)
class _Launch:
    """A committed placement, ready to hand to the executor."""

    spec: AttemptSpec
    parent_id: str | None  # the array parent of a child (start-ahead follows arrays)
    environment: str


def _needs(repo: Repository, jobs: Sequence[Candidate | Job]) -> dict[str, tuple[consumables.Need, ...]]:
    """The consumable resources each of `jobs` needs (an array child: its parent's); jobs that need
    none are left out."""
    carriers = {job.id: job.parent_id or job.id for job in jobs}
    found = repo.consumables.needs_of(list(carriers.values()))
    return {
        job_id: tuple((need.resource_name, need.quantity) for need in found[carrier])
        for job_id, carrier in carriers.items()
        if carrier in found
    }


def _available(repo: Repository, needs: dict[str, tuple[consumables.Need, ...]]) -> dict[str, int]:
    """What each resource some candidate needs has available now (missing ones are left out)."""
    names = sorted({name for wanted in needs.values() for name, _ in wanted})
    in_use = repo.consumables.in_use()
    return {
        resource.name: consumables.available(
            resource.resource_type, resource.total_quantity, in_use.get(resource.name, 0)
        )
        for resource in repo.consumables.get_many(names)
    }


def _consume_non_replenishable(repo: Repository, placed: list[tuple[consumables.Need, ...]]) -> None:
    """In the placing transaction, NON_REPLENISHABLE totals lose what the placed attempts take (a
    REPLENISHABLE resource needs no write: its in-use count is summed from the active attempts)."""
    if not placed:
        return
    taken: dict[str, int] = {}
    for wanted in placed:
        for name, quantity in wanted:
            taken[name] = taken.get(name, 0) + quantity
    kinds = {resource.name: resource.resource_type for resource in repo.consumables.get_many(sorted(taken))}
    repo.consumables.lower_totals(
        {name: quantity for name, quantity in taken.items() if kinds.get(name) == consumables.NON_REPLENISHABLE}
    )


def _queue_view(queue: Document) -> scheduling.QueueView:
    names = tuple(item["computeEnvironment"].rsplit("/", 1)[-1] for item in queue["computeEnvironmentOrder"])
    return scheduling.QueueView(arn=queue["jobQueueArn"], priority=queue["priority"], environments=names)


def _environment_views(
    environments: list[Document], usage: dict[str, EnvironmentUsage]
) -> list[scheduling.EnvironmentView]:
    used = {environment: held.vcpus for environment, held in usage.items()}
    return [
        scheduling.EnvironmentView(
            name=doc["computeEnvironmentName"],
            enabled=doc["state"] == "ENABLED",
            max_vcpus=_cap(doc),
            used_vcpus=used.get(doc["computeEnvironmentName"], 0.0),
        )
        for doc in environments
    ]


def _cap(ce_doc: Document) -> float | None:
    if ce_doc["type"] == "UNMANAGED":
        return ce_doc.get("unmanagedvCpus")
    return (ce_doc.get("computeResources") or {}).get("maxvCpus")
