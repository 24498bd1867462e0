"""Run attempts on a Ray cluster: Ray picks the node and holds the resources, Kiln's agent runs it.

Per attempt the server creates a one-bundle placement group (`CPU` = vCPUs, `memory` = the job's
memory in bytes, `GPU` = GPUs): Ray chooses a node with room and reserves it there, without a
Ray worker process per attempt. Once the group is placed, the node's `NodeAgent` actor (see
ray_node.py) runs the attempt with the local executor's engine and limits. One monitor thread
does everything else, on a short tick: starts placed attempts, pulls logs and events from the
agents, and watches the nodes.

Ray's own fault handling is not used (facts in shared/design/execution-facts.md): no task or
actor retries, and node death is detected here - a node missing from `ray.nodes()`, or an agent
that no longer answers - so every attempt on it fails at once with AWS's host-terminated reason
and the scheduler retries it per its `retryStrategy`. A group no live node could ever hold fails
to start instead of waiting inside Ray forever, and `capacity()` counts live nodes only, with the
largest node's size so the scheduler never places a job that fits the cluster but no node.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kiln.config import Settings

from .base import (
    HOST_TERMINATED,
    TASK_FAILED_TO_START,
    Adoption,
    AttemptEvent,
    AttemptExited,
    AttemptRunning,
    AttemptSpec,
    Capacity,
    drain,
)
from .cgroups import MIB
from .local import now_ms
from .ray_node import NodeAgent, NodeReport

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1
NODES_EVERY_SECONDS = 1.0  # how often `ray.nodes()` is read: node loss is noticed within about this
CALL_TIMEOUT_SECONDS = 10.0  # an agent that does not answer a report in this long is lost
NAMESPACE = "kiln"
NO_NODE_FITS = "CannotStartContainerError: no live Ray node has {need}"
NO_GANGS = "CannotStartContainerError: Kiln's Ray executor does not run multi-node parallel jobs yet; use the local or Docker executor"
RemoteAgent = ray.remote(NodeAgent)


@dataclass
class _Node:
    node_id: str
    resources: dict[str, float]
    agent: Any = None  # the NodeAgent actor handle, once created


@dataclass
class _Attempt:
    spec: AttemptSpec
    group: PlacementGroup
    node_id: str | None = None  # set once the group is placed and the agent was asked to start it
    started_at: int | None = None
    stop_reason: str | None = None  # terminate asked before the attempt reached its node


def loopback(address: str | None) -> str | None:
    """The host of a `127.0.0.1:PORT`-style address, for Ray to find this machine's node by."""
    if not address:
        return None
    host = address.rsplit(":", 1)[0]
    return host if host in {"127.0.0.1", "localhost"} else None


def bundle(spec: AttemptSpec) -> dict[str, float]:
    """Ray takes fractions of a CPU only below one: a larger fractional request is rounded up."""
    cpus = spec.vcpus if spec.vcpus <= 1 else float(math.ceil(spec.vcpus))
    resources = {"CPU": cpus, "memory": float(spec.memory_mib * MIB)}
    if spec.gpus:
        resources["GPU"] = float(spec.gpus)
    return resources


def fits(need: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(name, 0.0) + 1e-9 >= amount for name, amount in need.items())


class RayExecutor:
    """The `Executor` on a Ray cluster (`ray_address` None: join the local one, or start one)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        ray.init(
            address=settings.ray_address,
            namespace=NAMESPACE,
            _node_ip_address=loopback(settings.ray_address),
            log_to_driver=False,
            logging_level=logging.WARNING,
            ignore_reinit_error=True,
        )
        # Agents are named per server (host and data dir): a restarted server finds its own.
        self._tag = hashlib.sha256(f"{socket.gethostname()}:{settings.data_dir}".encode()).hexdigest()[:10]
        self._nodes: dict[str, _Node] = {}
        self._attempts: dict[str, _Attempt] = {}
        self._events: queue.SimpleQueue[AttemptEvent] = queue.SimpleQueue()
        self._lost: set[str] = set()  # nodes given up on: never used again, even if Ray still lists them
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._listener: Callable[[], None] = lambda: None
        self._next_nodes = 0.0
        self._refresh_nodes()
        self._monitor = threading.Thread(target=self._watch, name="kiln-ray-executor", daemon=True)
        self._monitor.start()

    # -- Executor ---------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listener = listener

    def capacity(self) -> Capacity:
        with self._lock:
            nodes = [node.resources for node in self._nodes.values()]
        largest = max(nodes, key=lambda r: (r.get("CPU", 0.0), r.get("memory", 0.0)), default={})
        return Capacity(
            vcpus=sum(r.get("CPU", 0.0) for r in nodes),
            memory_mib=int(sum(r.get("memory", 0.0) for r in nodes) // MIB),
            gpus=int(sum(r.get("GPU", 0.0) for r in nodes)),
            notes=[f"Ray cluster: {len(nodes)} live node(s)"],
            largest_host=(largest.get("CPU", 0.0), int(largest.get("memory", 0.0) // MIB), int(largest.get("GPU", 0))),
        )

    def start(self, spec: AttemptSpec) -> None:
        if spec.gang is not None:  # not built yet: one placement group per gang (SPREAD), main node's IP
            self._emit(AttemptExited(spec.attempt_id, now_ms(), None, TASK_FAILED_TO_START, NO_GANGS, started=False))
            return
        group = placement_group([bundle(spec)], strategy="STRICT_PACK", name=f"kiln-{spec.attempt_id}")
        with self._lock:
            self._attempts[spec.attempt_id] = _Attempt(spec, group)
        self._wake.set()

    def terminate(self, attempt_id: str, reason: str) -> None:
        with self._lock:
            attempt = self._attempts.get(attempt_id)
            if attempt is None:
                return
            if attempt.node_id is None:
                attempt.stop_reason = reason
                self._wake.set()
                return
            node = self._nodes.get(attempt.node_id)
        if node is not None and node.agent is not None:
            node.agent.terminate.remote(attempt_id, reason)

    def poll(self) -> list[AttemptEvent]:
        return drain(self._events)

    def running(self) -> set[str]:
        with self._lock:
            return set(self._attempts)

    def acknowledge(self, attempt_ids: Collection[str]) -> None:
        """Nothing to forget: exits are handed over once, through `poll`."""

    def adopt(self, attempt_ids: Collection[str]) -> Adoption:
        """Attempts of a previous server are not taken back on Ray: whatever is left of them on
        the nodes is stopped, and the scheduler fails them as lost (and retries them)."""
        wanted = set(attempt_ids)
        with self._lock:
            agents = [node.agent for node in self._nodes.values() if node.agent is not None]
        for agent in agents:
            try:
                leftovers = wanted & set(ray.get(agent.running.remote(), timeout=CALL_TIMEOUT_SECONDS))
                for attempt_id in leftovers:
                    agent.terminate.remote(attempt_id, "Terminated: its Kiln server restarted")
            except (RayError, GetTimeoutError):
                logger.warning("a Ray node agent did not answer while adopting", exc_info=True)
        return Adoption()

    def shutdown(self) -> None:
        """Stop the attempts (Ray attempts are not adopted by the next server) and the agents."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._monitor.join(timeout=10)
        with self._lock:
            nodes, attempts = list(self._nodes.values()), list(self._attempts.values())
        grace = min(self._settings.termination_grace_seconds, 5.0)
        calls = [node.agent.stop_all.remote(grace) for node in nodes if node.agent is not None]
        try:
            ray.get(calls, timeout=grace + 10)
        except (RayError, GetTimeoutError):
            logger.warning("some Ray node agents did not stop their attempts", exc_info=True)
        for attempt in attempts:
            self._remove_group(attempt.group)
        for node in nodes:
            if node.agent is not None:
                ray.kill(node.agent)
        ray.shutdown()

    # -- monitor ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._next_nodes:
                    self._refresh_nodes()
                self._place()
                self._collect()
            except Exception:  # the monitor must outlive any one surprise from the cluster
                logger.exception("the Ray executor's monitor pass failed")
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()

    def _emit(self, event: AttemptEvent) -> None:
        self._events.put(event)
        self._listener()

    def _refresh_nodes(self) -> None:
        """Agents for new nodes; every attempt of a node that is gone fails as host-terminated."""
        self._next_nodes = time.monotonic() + NODES_EVERY_SECONDS
        alive = {n["NodeID"]: dict(n["Resources"]) for n in ray.nodes() if n["Alive"] and n["NodeID"] not in self._lost}
        with self._lock:
            gone = [node_id for node_id in self._nodes if node_id not in alive]
        for node_id in gone:
            self._lose_node(node_id)
        for node_id, resources in alive.items():
            if node_id not in self._nodes:
                node = _Node(node_id, resources, self._make_agent(node_id))
                with self._lock:
                    self._nodes[node_id] = node
                logger.info("Ray node %s joined: %s", node_id, resources)
            else:
                self._nodes[node_id].resources = resources

    def _make_agent(self, node_id: str) -> Any:
        agent: Any = RemoteAgent.options(
            name=f"kiln-agent-{self._tag}-{node_id}",
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",  # outlives a crashed server, whose successor stops its leftovers
            num_cpus=0,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(node_id, self._tag)
        agent.configure.remote(self._settings, dict(os.environ))
        return agent

    def _lose_node(self, node_id: str) -> None:
        with self._lock:
            self._lost.add(node_id)
            node = self._nodes.pop(node_id, None)
            lost = [a for a in self._attempts.values() if a.node_id == node_id]
            for attempt in lost:
                del self._attempts[attempt.spec.attempt_id]
        if node is None:
            return
        logger.warning("Ray node %s is gone; %d attempt(s) on it lost", node_id, len(lost))
        reason = HOST_TERMINATED.format(host=node_id)
        for attempt in lost:
            self._remove_group(attempt.group)
            self._emit(
                AttemptExited(
                    attempt_id=attempt.spec.attempt_id,
                    at_ms=now_ms(),
                    exit_code=None,
                    status_reason=reason,
                    started=attempt.started_at is not None,
                    started_at=attempt.started_at,
                    host=node_id,
                )
            )

    def _place(self) -> None:
        """Hand attempts whose placement group is placed to their node's agent."""
        with self._lock:
            waiting = [a for a in self._attempts.values() if a.node_id is None]
            nodes = {node_id: node.resources for node_id, node in self._nodes.items()}
        for attempt in waiting:
            if attempt.stop_reason is not None:
                self._not_started(attempt, attempt.stop_reason, None, started=False)
                continue
            need = bundle(attempt.spec)
            if not any(fits(need, resources) for resources in nodes.values()):
                text = ", ".join(f"{amount:g} {name}" for name, amount in need.items())
                self._not_started(attempt, TASK_FAILED_TO_START, NO_NODE_FITS.format(need=text), started=False)
                continue
            table = placement_group_table(attempt.group)
            if table.get("state") != "CREATED":
                continue
            node_id = table["bundles_to_node_id"][0]
            with self._lock:
                node = self._nodes.get(node_id)
            if node is None:
                continue  # the node is gone; the next refresh fails or the group moves
            attempt.node_id = node_id
            node.agent.start.remote(attempt.spec)

    def _not_started(self, attempt: _Attempt, status_reason: str, reason: str | None, *, started: bool) -> None:
        with self._lock:
            self._attempts.pop(attempt.spec.attempt_id, None)
        self._remove_group(attempt.group)
        self._emit(
            AttemptExited(
                attempt_id=attempt.spec.attempt_id,
                at_ms=now_ms(),
                exit_code=None,
                status_reason=status_reason,
                reason=reason,
                started=started,
                terminated=reason is None,
            )
        )

    def _collect(self) -> None:
        """Pull logs and events from every node that runs something; a silent agent is a lost node."""
        with self._lock:
            busy = {a.node_id for a in self._attempts.values() if a.node_id is not None}
            calls = {node_id: self._nodes[node_id].agent.report.remote() for node_id in busy if node_id in self._nodes}
        for node_id, call in calls.items():
            try:
                report: NodeReport = ray.get(call, timeout=CALL_TIMEOUT_SECONDS)
            except (RayError, GetTimeoutError) as exc:
                logger.warning("the agent of Ray node %s failed: %s", node_id, exc)
                self._lose_node(node_id)
                continue
            self._apply(node_id, report)

    def _apply(self, node_id: str, report: NodeReport) -> None:
        for attempt_id, chunk in report.logs.items():
            with self._lock:
                attempt = self._attempts.get(attempt_id)
            if attempt is not None:
                attempt.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
                with attempt.spec.log_path.open("ab") as log:
                    log.write(chunk)
        for event in report.events:
            with self._lock:
                attempt = self._attempts.get(event.attempt_id)
                if attempt is not None and isinstance(event, AttemptExited):
                    del self._attempts[event.attempt_id]
            if attempt is None:
                continue
            if isinstance(event, AttemptRunning):
                attempt.started_at = event.at_ms
                logger.info("attempt %s running on Ray node %s", event.attempt_id, node_id)
                self._emit(AttemptRunning(event.attempt_id, event.at_ms, host=node_id))
            else:
                self._remove_group(attempt.group)
                started_at = event.started_at if event.started_at is not None else attempt.started_at
                self._emit(replace(event, host=node_id, started_at=started_at))

    @staticmethod
    def _remove_group(group: PlacementGroup) -> None:
        with contextlib.suppress(RayError):  # already gone with its node or its creator
            remove_placement_group(group)
