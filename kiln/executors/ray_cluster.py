"""Run attempts on a Ray cluster: Ray picks the node and holds the resources, Kiln's agent runs it.

Per attempt the server creates a one-bundle placement group (`CPU` = vCPUs, `memory` = the job's
memory in bytes, `GPU` = GPUs): Ray chooses a node with room and reserves it there, without a
Ray worker process per attempt. Once the group is placed, the node's `NodeAgent` actor (see
ray_node.py) runs the attempt with the local executor's engine and limits. One monitor thread
does everything else, on a short tick: starts placed attempts, pulls logs and events from the
agents, and watches the nodes.

Ray's own fault handling is not used (why: docs/ray.md, "Losing a node"): no task or
actor retries, and node death is detected here - a node missing from `ray.nodes()`, or an agent
that no longer answers - so every attempt on it fails at once with AWS's host-terminated reason
and the scheduler retries it per its `retryStrategy`. A group no live node could ever hold fails
to start instead of waiting inside Ray forever, and `capacity()` counts live nodes only, with the
largest node's size so the scheduler never places a job that fits the cluster but no node.

A multi-node parallel gang is one placement group with a bundle per node (SPREAD), created when
the last of its attempts arrives; all its nodes are handed to their agents in one pass once Ray has
placed the whole group, the other nodes told the main node's Ray node address.

Attempts outlive the server, as with the local executor's supervisor: the agents are detached
named actors (`kiln-agent-<tag>-<node id>`, the tag naming this host and data dir) and each
attempt's placement group is detached and named `kiln-<tag>-<attempt id>`, both in Kiln's Ray
namespace. A restarted server finds them again, `adopt`s what its agents still run or hold the
exit of, and acknowledges each exit once it is recorded: only then does the agent forget it and the
server remove the group. Attempts that no agent of a live node knows are lost with their node.
Gang attempts are not re-adopted: a restarted server has their agents stop them and fails them as
lost (their gang's group is named after the main node's attempt only, so the other nodes' attempts
could not be matched to it), and the job's retry runs a new gang.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kiln.clock import now_ms
from kiln.config import Settings

from .base import (
    HOST_TERMINATED,
    TASK_FAILED_TO_START,
    Adoption,
    AttemptExited,
    AttemptRunning,
    AttemptSpec,
    Capacity,
    EventReporter,
)
from .cgroups import MIB
from .job_environment import inherited_environment
from .ray_node import NodeAgent, NodeReport

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1
NODES_EVERY_SECONDS = 1.0  # how often `ray.nodes()` is read: node loss is noticed within about this
CALL_TIMEOUT_SECONDS = 10.0  # an agent that does not answer a report in this long is lost
ADOPT_TIMEOUT_SECONDS = 60.0  # the first call to a new agent waits for its worker process to start
NAMESPACE = "kiln"
NO_NODE_FITS = "CannotStartContainerError: no live Ray node has {need}"
MAIN_NODE_ADDRESS = "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"
RemoteAgent = ray.remote(NodeAgent)


@dataclass
class _Node:
    node_id: str
    resources: dict[str, float]
    agent: Any = None  # the NodeAgent actor handle, once created


@dataclass
class _Attempt:
    spec: AttemptSpec
    group: PlacementGroup | None  # None: adopted, and its group was already gone
    node_id: str | None = None  # set once the group is placed and the agent was asked to start it
    started_at: int | None = None
    stop_reason: str | None = None  # terminate asked before the attempt reached its node
    bundle_index: int = 0  # its bundle in `group` (a gang's group has one per node)


@dataclass
class _Gang:
    """The nodes of one multi-node parallel job's attempt, collected as the scheduler hands them
    over (all in one pass); the group is created once every node has arrived."""

    size: int
    main: int
    members: dict[int, AttemptSpec]  # node index -> its attempt


def group_name(tag: str, attempt_id: str) -> str:
    """The attempt's placement group: named so a restarted server (same tag) finds it again."""
    return f"kiln-{tag}-{attempt_id}"


def gang_group_name(tag: str, members: dict[int, AttemptSpec], main: int) -> str:
    """A gang's group is named after its main node's attempt, like a single attempt's group."""
    return group_name(tag, members[main].attempt_id)


def node_address(node_id: str) -> str | None:
    """The Ray node's own address (`NodeManagerAddress`), which its processes are reached at."""
    return next((str(n["NodeManagerAddress"]) for n in ray.nodes() if n["NodeID"] == node_id and n["Alive"]), None)


def named_group(name: str) -> PlacementGroup | None:
    try:
        return get_placement_group(name)
    except ValueError:  # no such group (in this namespace)
        return None


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


class RayExecutor(EventReporter):
    """The `Executor` on a Ray cluster (`ray_address` None: join the local one, or start one)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
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
        self._lost: set[str] = set()  # nodes given up on: never used again, even if Ray still lists them
        # Exits handed to the scheduler and not yet acknowledged: the node whose agent holds each
        # (told once it is recorded) and the group still reserving its resources.
        self._held_on: dict[str, str] = {}
        self._ended_groups: dict[str, PlacementGroup | None] = {}
        self._acked: list[str] = []  # acknowledged, for the monitor to pass on to the agents
        self._unclaimed: list[PlacementGroup] = []  # groups of attempts `adopt` did not find
        self._gangs: dict[str, _Gang] = {}  # gang id -> nodes handed over so far, until all are
        self._waiting_members: dict[str, str] = {}  # attempt id -> gang id, for nodes in `_gangs`
        self._doomed: list[PlacementGroup] = []  # unclaimed groups whose attempts' ends are recorded
        self._lock = threading.Lock()
        self._reports = threading.Lock()  # one exchange of reports at a time: `adopt` rewinds them
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._next_nodes = 0.0
        self._refresh_nodes()
        self._monitor = threading.Thread(target=self._watch, name="kiln-ray-executor", daemon=True)
        self._monitor.start()

    # -- Executor ---------------------------------------------------------------------------------

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
        if spec.gang is not None:
            self._start_gang_member(spec)
            return
        name = group_name(self._tag, spec.attempt_id)
        group = placement_group([bundle(spec)], strategy="STRICT_PACK", name=name, lifetime="detached")
        with self._lock:
            self._attempts[spec.attempt_id] = _Attempt(spec, group)
        self._wake.set()

    def _start_gang_member(self, spec: AttemptSpec) -> None:
        """Collect a gang's nodes; with the last one, place them all as ONE group, a bundle per
        node in node-index order, SPREAD over the Ray nodes (as AWS puts MNP nodes on separate
        instances, where it can). Nothing of the gang starts before the whole group is placed."""
        assert spec.gang is not None
        with self._lock:
            gang = self._gangs.setdefault(spec.gang.gang_id, _Gang(spec.gang.size, spec.gang.main, {}))
            gang.members[spec.gang.index] = spec
            if len(gang.members) < gang.size:
                self._waiting_members[spec.attempt_id] = spec.gang.gang_id
                return
            del self._gangs[spec.gang.gang_id]
            for member in gang.members.values():
                self._waiting_members.pop(member.attempt_id, None)
        order = sorted(gang.members)
        name = gang_group_name(self._tag, gang.members, gang.main)
        bundles = [bundle(gang.members[index]) for index in order]
        group = placement_group(bundles, strategy="SPREAD", name=name, lifetime="detached")
        with self._lock:
            for position, index in enumerate(order):
                member = gang.members[index]
                self._attempts[member.attempt_id] = _Attempt(member, group, bundle_index=position)
        self._wake.set()

    def _drop_incomplete_member(self, attempt_id: str) -> bool:
        """Forget a node whose gang never completed (only part of it was relaunched after a
        restart, see `adopt`); False if it is not one."""
        with self._lock:
            gang_id = self._waiting_members.pop(attempt_id, None)
            gang = self._gangs.get(gang_id) if gang_id is not None else None
            if gang is not None:
                gang.members = {i: m for i, m in gang.members.items() if m.attempt_id != attempt_id}
                if not gang.members:
                    del self._gangs[gang_id]  # type: ignore[arg-type]
        return gang_id is not None

    def terminate(self, attempt_id: str, reason: str) -> None:
        if self._drop_incomplete_member(attempt_id):
            self._emit(AttemptExited.stopped_before_start(attempt_id, now_ms(), reason))
            return
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

    def running(self) -> set[str]:
        with self._lock:
            return set(self._attempts) | set(self._waiting_members)

    def acknowledge(self, attempt_ids: Collection[str]) -> None:
        """Recorded: the agents may forget these exits and their groups can go (on the monitor).

        Called after every committed tick, so it is also when the groups of attempts `adopt` did
        not find are removed: their host-lost ends are committed by then.
        """
        with self._lock:
            self._acked.extend(attempt_ids)
            self._doomed.extend(self._unclaimed)
            self._unclaimed = []
            if self._doomed or attempt_ids:
                self._wake.set()

    def adopt(self, attempt_ids: Collection[str]) -> Adoption:
        """Take back the attempts a previous server process of this data dir placed.

        Known: an agent (of a live node) still runs it or holds its exit; its log goes on from
        where the server's copy stops, and a start or exit the server missed is reported again.
        Never started: no agent knows it and it has no placement group, so it was never handed
        over. The rest are lost; their groups are removed at the next acknowledgement, and the
        agents stop whatever they run that no id here claims.
        """
        wanted = set(attempt_ids)
        with self._reports:
            with self._lock:
                agents = {node_id: node.agent for node_id, node in self._nodes.items() if node.agent is not None}
                tracked = wanted & set(self._attempts)
            asks = {node_id: agent.adopt.remote(sorted(wanted)) for node_id, agent in agents.items()}
            found: dict[str, dict[str, tuple[AttemptSpec, int | None]]] = {}
            for node_id, call in asks.items():
                try:
                    found[node_id] = ray.get(call, timeout=ADOPT_TIMEOUT_SECONDS)
                except (RayError, GetTimeoutError) as exc:
                    logger.warning("the agent of Ray node %s failed while adopting: %s", node_id, exc)
                    self._lose_node(node_id)
            gang_nodes = {a for known_here in found.values() for a, (spec, _) in known_here.items() if spec.gang}
            if gang_nodes:  # not re-adopted: stopped on their agents and lost (see docs/ray.md)
                self._disown(agents, found, wanted - gang_nodes)
            resumes = []
            for node_id, known_here in found.items():
                adopted = {a: v for a, v in known_here.items() if a not in tracked}
                offsets = {attempt_id: _size(spec.log_path) for attempt_id, (spec, _) in adopted.items()}
                resumes.append(agents[node_id].resume.remote(offsets))
                with self._lock:
                    for attempt_id, (spec, started_at) in adopted.items():
                        group = named_group(group_name(self._tag, attempt_id))
                        self._attempts[attempt_id] = _Attempt(spec, group, node_id, started_at)
            try:
                ray.get(resumes, timeout=CALL_TIMEOUT_SECONDS)
            except (RayError, GetTimeoutError) as exc:  # the next report notices a failed agent
                logger.warning("a Ray node agent failed while resuming adopted attempts: %s", exc)
        known = tracked | {attempt_id for known_here in found.values() for attempt_id in known_here}
        never_started = set()
        for attempt_id in wanted - known:
            group = named_group(group_name(self._tag, attempt_id))
            if group is None and attempt_id not in gang_nodes:
                never_started.add(attempt_id)
            elif group is not None:
                with self._lock:
                    self._unclaimed.append(group)
        if known or wanted:
            logger.info(
                "adopted %d Ray attempt(s); %d never started, %d lost",
                len(known), len(never_started), len(wanted - known - never_started),
            )  # fmt: skip
        self._wake.set()
        return Adoption(frozenset(known), frozenset(never_started))

    def _disown(self, agents: dict[str, Any], found: dict[str, dict[str, Any]], claimed: set[str]) -> None:
        """Claim only `claimed` again on the agents that know other attempts: they stop the rest."""
        for node_id in list(found):
            if set(found[node_id]) <= claimed:
                continue
            try:
                ray.get(agents[node_id].adopt.remote(sorted(claimed)), timeout=CALL_TIMEOUT_SECONDS)
            except (RayError, GetTimeoutError) as exc:
                logger.warning("the agent of Ray node %s failed while adopting: %s", node_id, exc)
            found[node_id] = {a: known for a, known in found[node_id].items() if a in claimed}

    def shutdown(self) -> None:
        """Leave the attempts running for the next server (and the agents that run them or hold
        their exits); remove only the agents with nothing left to do.

        An attempt still waiting for its group is not handed over any more: its group goes, so the
        next server finds it never started and starts it.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._monitor.join(timeout=10)
        self._release()
        with self._lock:
            nodes = list(self._nodes.values())
            waiting = [a for a in self._attempts.values() if a.node_id is None]
        for attempt in waiting:
            self._remove_group(attempt.group)
        for node in nodes:
            if node.agent is None:
                continue
            try:
                if ray.get(node.agent.idle.remote(), timeout=CALL_TIMEOUT_SECONDS):
                    ray.kill(node.agent)
            except (RayError, GetTimeoutError):
                logger.warning("the agent of Ray node %s did not answer at shutdown", node.node_id)
        ray.shutdown()

    # -- monitor ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._next_nodes:
                    self._refresh_nodes()
                self._place()
                self._collect()
                self._release()
            except Exception:  # the monitor must outlive any one surprise from the cluster
                logger.exception("the Ray executor's monitor pass failed")
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()

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
        # Only what jobs may inherit, and no role credentials (the server puts them in each attempt).
        environment = inherited_environment(os.environ, self._settings.job_environment)
        agent.configure.remote(replace(self._settings, job_roles={}), environment)
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
            self._ended(attempt, None)
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
        """Hand attempts whose placement group is placed to their nodes' agents: a gang's nodes
        all at once, when its whole group is placed."""
        with self._lock:
            waiting = [a for a in self._attempts.values() if a.node_id is None]
            nodes = {node_id: node.resources for node_id, node in self._nodes.items()}
        groups: dict[Any, list[_Attempt]] = {}
        for attempt in waiting:
            key = attempt.group.id if attempt.group is not None else attempt.spec.attempt_id
            groups.setdefault(key, []).append(attempt)
        for members in groups.values():
            stop = next((a.stop_reason for a in members if a.stop_reason is not None), None)
            if stop is not None:  # a gang starts whole or not at all
                for attempt in members:
                    self._not_started(attempt, attempt.stop_reason or stop, None, started=False)
                continue
            needs = [bundle(a.spec) for a in members]
            misfit = next((need for need in needs if not any(fits(need, r) for r in nodes.values())), None)
            if misfit is not None:
                text = ", ".join(f"{amount:g} {name}" for name, amount in misfit.items())
                for attempt in members:
                    self._not_started(attempt, TASK_FAILED_TO_START, NO_NODE_FITS.format(need=text), started=False)
                continue
            group = members[0].group
            if group is None:
                continue
            table = placement_group_table(group)
            if table.get("state") != "CREATED":
                continue
            self._hand_over(members, table["bundles_to_node_id"])

    def _hand_over(self, members: list[_Attempt], bundle_nodes: dict[int, str]) -> None:
        """Start a placed group's attempts on the agents of the nodes their bundles landed on;
        a gang's other nodes get the main node's Ray node address."""
        with self._lock:
            placed = {a.spec.attempt_id: self._nodes.get(bundle_nodes[a.bundle_index]) for a in members}
        if any(node is None for node in placed.values()):
            return  # a node is gone; the next refresh fails its attempts or the group moves
        main = next((a for a in members if a.spec.gang is not None and a.spec.gang.index == a.spec.gang.main), None)
        address = None
        if main is not None:
            address = node_address(bundle_nodes[main.bundle_index])
            if address is None:
                return  # Ray does not list the node (any more): try again next tick
        for attempt in members:
            node = placed[attempt.spec.attempt_id]
            assert node is not None
            spec = attempt.spec
            if address is not None and spec.gang is not None and spec.gang.index != spec.gang.main:
                spec = replace(spec, environment={**spec.environment, MAIN_NODE_ADDRESS: address})
            attempt.node_id = node.node_id
            node.agent.start.remote(spec)
        if main is not None:
            nodes = sorted({node.node_id for node in placed.values() if node is not None})
            logger.info("gang of %d placed on Ray node(s) %s; main node at %s", len(members), nodes, address)

    def _not_started(self, attempt: _Attempt, status_reason: str, reason: str | None, *, started: bool) -> None:
        with self._lock:
            self._attempts.pop(attempt.spec.attempt_id, None)
        self._ended(attempt, None)
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
        with self._reports:
            with self._lock:
                busy = {a.node_id for a in self._attempts.values() if a.node_id is not None}
                calls = {n: self._nodes[n].agent.report.remote() for n in busy if n in self._nodes}
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
                self._ended(attempt, node_id)
                started_at = event.started_at if event.started_at is not None else attempt.started_at
                self._emit(replace(event, host=node_id, started_at=started_at))

    def _ended(self, attempt: _Attempt, node_id: str | None) -> None:
        """The attempt's exit goes to the scheduler: keep its group (and, with `node_id`, the
        agent's copy of the exit) until the scheduler acknowledges having recorded it."""
        with self._lock:
            self._ended_groups[attempt.spec.attempt_id] = attempt.group
            if node_id is not None:
                self._held_on[attempt.spec.attempt_id] = node_id

    def _release(self) -> None:
        """Pass acknowledgements on: agents forget those exits, their groups are removed."""
        with self._lock:
            acked, self._acked = self._acked, []
            groups: list[PlacementGroup | None] = [*self._doomed]
            self._doomed = []
            by_node: dict[str, list[str]] = {}
            for attempt_id in acked:
                groups.append(self._ended_groups.pop(attempt_id, None))
                node_id = self._held_on.pop(attempt_id, None)
                if node_id is not None:
                    by_node.setdefault(node_id, []).append(attempt_id)
            agents = {n: self._nodes[n].agent for n in by_node if n in self._nodes}
            # A gang's group holds every node's bundle: it goes with the last of them.
            held = {a.group.id for a in self._attempts.values() if a.group is not None}
            held |= {group.id for group in self._ended_groups.values() if group is not None}
            groups = [group for group in groups if group is None or group.id not in held]
        for node_id, agent in agents.items():
            agent.acknowledge.remote(by_node[node_id])
        for group in groups:
            self._remove_group(group)

    @staticmethod
    def _remove_group(group: PlacementGroup | None) -> None:
        if group is None:
            return
        with contextlib.suppress(RayError, ValueError):  # already removed
            remove_placement_group(group)


def _size(path: Path) -> int:
    """How much of an attempt's log the server already has."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
