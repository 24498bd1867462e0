"""The Prometheus metrics of one Kiln server, each server (and each in-process app) in its own registry.

Two kinds. What the store knows is read at scrape time (`StoreCollector`: jobs by queue and status,
capacity in use), so it is exact, survives restarts and costs nothing between scrapes. What only
passes through the scheduler (attempts started and failed, attempt durations, tick latency) is
counted as it happens (`SchedulerMetrics`) and starts from zero with the process, which Prometheus
reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kiln.executors.base import AttemptEvent, AttemptExited, AttemptRunning

MIB = 1024 * 1024
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
# Bounded label values for why an attempt failed (user-written terminate reasons would not be).
FAILURE_REASONS = (
    "NonZeroExitCode",
    "OutOfMemoryError",
    "Timeout",
    "Terminated",
    "CannotPullContainerError",
    "CannotStartContainerError",
    "TaskFailedToStart",
    "HostTerminated",
)


def failure_reason(event: AttemptExited) -> str | None:
    """One of FAILURE_REASONS, or None when the attempt succeeded."""
    if event.exit_code == 0 and not (event.terminated or event.timed_out):
        return None
    if event.timed_out:
        return "Timeout"
    if event.terminated:
        return "Terminated"
    if event.oom:
        return "OutOfMemoryError"
    if not event.started:
        code = (event.reason or "").split(":", 1)[0]
        return code if code in {"CannotPullContainerError", "CannotStartContainerError"} else "TaskFailedToStart"
    if event.exit_code is None:  # the attempt was lost with its host (a server restart)
        return "HostTerminated"
    return "NonZeroExitCode"


class SchedulerMetrics:
    """What the scheduler reports as it goes; without a registry it counts into one nobody scrapes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.tick_seconds = Histogram(
            "kiln_scheduler_tick_seconds",
            "Duration of one scheduler pass (apply events, move jobs on, place, start).",
            buckets=TICK_BUCKETS,
            registry=registry,
        )
        self.attempts_started = Counter(
            "kiln_attempts_started", "Attempts whose process started (reached RUNNING).", registry=registry
        )
        self.attempts_failed = Counter(
            "kiln_attempts_failed", "Attempts that ended without success, by reason.", ["reason"], registry=registry
        )
        self.placed_ahead = Counter(
            "kiln_attempts_placed_ahead",
            "Array children placed behind a running sibling, to start the moment it ends (start-ahead).",
            registry=registry,
        )
        self.attempt_duration = Histogram(
            "kiln_attempt_duration_seconds",
            "Run time of attempts that started, from RUNNING to exit, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        for reason in FAILURE_REASONS:  # every series exists from the start, at zero
            self.attempts_failed.labels(reason)
        for outcome in ("succeeded", "failed"):
            self.attempt_duration.labels(outcome)

    def time_tick(self) -> AbstractContextManager[Any]:
        """`with metrics.time_tick(): scheduler.tick()` (an exception is timed too)."""
        return self.tick_seconds.time()

    def record_events(self, events: Sequence[AttemptEvent], started_at: Mapping[str, int | None]) -> None:
        """Count executor events as the scheduler applies them; `started_at` is when each of their
        attempts started (None: not yet), by task id. Events of attempts not in it (purged
        meanwhile) are not counted."""
        for event in events:
            if event.attempt_id not in started_at:
                continue
            if isinstance(event, AttemptRunning):
                self.attempts_started.inc()
            elif isinstance(event, AttemptExited):
                reason = failure_reason(event)
                if reason is not None:
                    self.attempts_failed.labels(reason).inc()
                started = started_at[event.attempt_id]
                if event.started and started is not None:
                    outcome = "succeeded" if reason is None else "failed"
                    self.attempt_duration.labels(outcome).observe(max(0, event.at_ms - started) / 1000)


@dataclass(frozen=True)
class EnvironmentUsage:
    """Resources held by running attempts in one compute environment."""

    name: str
    vcpus: float = 0.0
    memory_mib: int = 0
    gpus: int = 0
    attempts: int = 0


@dataclass(frozen=True)
class StoreSnapshot:
    """What `/metrics` reads from the store at scrape time. Job counts hold every status of every
    queue, zeros included, so series do not vanish when a status empties."""

    jobs: Mapping[tuple[str, str], int]  # (queue name, status) -> top-level jobs, as ListJobs lists them
    array_children: Mapping[tuple[str, str], int]  # (queue name, status) -> array children
    environments: Sequence[EnvironmentUsage] = ()
    host_vcpus: float = 0.0
    host_memory_mib: int = 0
    host_gpus: int = 0


class StoreCollector(Collector):
    """Gauges computed from a fresh `StoreSnapshot` at every scrape."""

    def __init__(self, snapshot: Callable[[], StoreSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield _by_queue(
            "kiln_jobs", "Jobs per queue and status (top-level jobs: plain jobs and array parents).", snap.jobs
        )
        yield _by_queue("kiln_array_child_jobs", "Array child jobs per queue and status.", snap.array_children)
        per_environment = (
            ("vcpus_in_use", "vCPUs held by running attempts", lambda e: e.vcpus),
            ("memory_bytes_in_use", "Memory held by running attempts", lambda e: e.memory_mib * MIB),
            ("gpus_in_use", "GPUs held by running attempts", lambda e: e.gpus),
            ("running_attempts", "Attempts holding capacity", lambda e: e.attempts),
        )
        for suffix, text, value in per_environment:
            family = GaugeMetricFamily(
                f"kiln_compute_environment_{suffix}",
                f"{text}, per compute environment.",
                labels=["compute_environment"],
            )
            for environment in snap.environments:
                family.add_metric([environment.name], float(value(environment)))
            yield family
        yield GaugeMetricFamily("kiln_host_vcpus", "vCPUs the executor places on.", value=snap.host_vcpus)
        yield GaugeMetricFamily(
            "kiln_host_memory_bytes", "Memory the executor places on.", value=snap.host_memory_mib * MIB
        )
        yield GaugeMetricFamily("kiln_host_gpus", "GPUs the executor places on.", value=snap.host_gpus)


def _by_queue(name: str, documentation: str, counts: Mapping[tuple[str, str], int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["queue", "status"])
    for (queue, status), count in sorted(counts.items()):
        family.add_metric([queue, status], count)
    return family


class ServerMetrics:
    """One server's registry: the scheduler's counters plus the store's gauges."""

    def __init__(self, snapshot: Callable[[], StoreSnapshot]) -> None:
        self.registry = CollectorRegistry()
        self.scheduler = SchedulerMetrics(self.registry)
        self.registry.register(StoreCollector(snapshot))
