"""Run attempts on a Ray cluster: Ray picks the node and holds the resources, Kiln's agent runs it.

An attempt runs in a *slot*: a one-bundle placement group (`CPU` = vCPUs, `memory` = the job's
memory in bytes, `GPU` = GPUs) with which Ray chooses a node with room and reserves it there,
without a Ray worker process per attempt. Slots are reused: once an attempt's exit is recorded
its slot goes to the next attempt of the same shape (creating a group on a full cluster waits
about a second for Ray, reusing one does not), an attempt placed `start_after` a running sibling
(start-ahead) shares its predecessor's slot and waits on its node, and spares nobody took soon
are removed so other shapes and other Ray users get the room back. The node's `NodeAgent` actor
(see ray_node.py) runs the attempts with the local executor's engine and limits, and gets them
in one call per node and pass. One monitor thread does everything else, on a short tick: places
and starts attempts, pulls logs and events from the agents, and watches the nodes.

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
named actors (`kiln-agent-<tag>-<node id>`, the tag naming this host and data dir), slots are
detached groups named `kiln-<tag>-slot-<id>`, and which attempts were handed over is kept in
Ray's GCS (ray_handovers.py), all in Kiln's Ray namespace. A restarted server finds them again,
`adopt`s what its agents still run or hold the exit of (with the slot each uses), and acknowledges
each exit once it is recorded: only then does the agent forget it and the slot become free.
Attempts handed over that no agent of a live node knows are lost with their node; attempts never
handed over are started.
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
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, replace
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
from .ray_handovers import HandOvers
from .ray_node import Handed, Known, NodeAgent, NodeReport, attempt_of, log_keys

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.05
SPARE_SECONDS = 2.0  # a free slot nobody took in this long is removed (its room goes back to Ray)
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


Shape = tuple[tuple[str, float], ...]  # a bundle's resources, as a key


@dataclass
class _Slot:
    """A placement group Kiln holds: a single attempt's (reused by the next of its shape) or a
    gang's (one bundle per node, removed with the gang)."""

    name: str
    group: PlacementGroup | None  # None: adopted, and its group was already gone
    shape: Shape | None  # None: a gang's, never reused
    holders: set[str] = field(default_factory=set)  # attempts using it whose exit is not recorded yet
    nodes: dict[int, str] | None = None  # bundle index -> Ray node, once Ray has placed the group
    idle_since: float = 0.0  # a spare's

    def on_live_nodes(self, live: Collection[str]) -> bool:
        """Placed, with every bundle on a node of `live` (False while Ray has not placed it)."""
        return self.nodes is not None and all(node in live for node in self.nodes.values())

    def shared_on(self, node_id: str) -> bool:
        """A single attempt's slot on `node_id` that start-ahead followers share."""
        return self.shape is not None and len(self.holders) > 1 and node_id in (self.nodes or {}).values()


@dataclass
class _Attempt:
    spec: AttemptSpec
    slot: _Slot | None = None  # None: waiting for one
    node_id: str | None = None  # set once it was handed to its node's agent
    started_at: int | None = None
    stop_reason: str | None = None  # terminate asked before the attempt reached its node
    bundle_index: int = 0  # its bundle in the slot (a gang's slot has one per node)


@dataclass
class _Gang:
    """The nodes of one multi-node parallel job's attempt, collected as the scheduler hands them
    over (all in one pass); the group is created once every node has arrived."""

    size: int
    main: int
    members: dict[int, AttemptSpec]  # node index -> its attempt


def group_name(tag: str, attempt_id: str) -> str:
    """A gang's placement group, named after its main node's attempt."""
    return f"kiln-{tag}-{attempt_id}"


def slot_name(tag: str) -> str:
    return f"kiln-{tag}-slot-{uuid.uuid4().hex[:16]}"


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


def _log_files(spec: AttemptSpec) -> dict[str, Path]:
    """The server's log file of each of the attempt's log keys (its own, an ecsProperties task's
    containers'), where the node's reports are appended."""
    by_name = {f"{spec.attempt_id}/{c.name}": c.log_path for c in spec.task}
    return {key: by_name.get(key, spec.log_path) for key in log_keys(spec)}


def bundle(spec: AttemptSpec) -> dict[str, float]:
    """Ray takes fractions of a CPU only below one: a larger fractional request is rounded up."""
    cpus = spec.vcpus if spec.vcpus <= 1 else float(math.ceil(spec.vcpus))
    resources = {"CPU": cpus, "memory": float(spec.memory_mib * MIB)}
    if spec.gpus:
        resources["GPU"] = float(spec.gpus)
    return resources


def shape(spec: AttemptSpec) -> Shape:
    return tuple(sorted(bundle(spec).items()))


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
        self._epoch = uuid.uuid4().hex  # this server process: agents take starts only from the latest
        self._handovers = HandOvers(self._tag)
        self._nodes: dict[str, _Node] = {}
        self._attempts: dict[str, _Attempt] = {}
        self._lost: set[str] = set()  # nodes given up on: never used again, even if Ray still lists them
        self._spares: list[_Slot] = []  # free slots, oldest first
        # Exits handed to the scheduler and not yet acknowledged: the node whose agent holds each
        # (told once it is recorded) and the slot still reserving its resources.
        self._held_on: dict[str, str] = {}
        self._ended_slots: dict[str, _Slot | None] = {}
        self._acked: list[str] = []  # acknowledged, for the monitor to pass on to the agents
        self._unclaimed: list[str] = []  # attempts `adopt` found lost: their records go once that is recorded
        # Attempts that ended before reaching a node -> the one they were to start after, for
        # their own followers to wait for instead (until their end is recorded).
        self._skipped: dict[str, str | None] = {}
        self._gangs: dict[str, _Gang] = {}  # gang id -> nodes handed over so far, until all are
        self._waiting_members: dict[str, str] = {}  # attempt id -> gang id, for nodes in `_gangs`
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
            start_after=True,
            largest_host=(largest.get("CPU", 0.0), int(largest.get("memory", 0.0) // MIB), int(largest.get("GPU", 0))),
        )

    def start(self, spec: AttemptSpec) -> None:
        if spec.gang is not None:
            self._start_gang_member(spec)
            return
        with self._lock:
            self._attempts[spec.attempt_id] = _Attempt(spec)
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
        name = group_name(self._tag, gang.members[gang.main].attempt_id)
        bundles = [bundle(gang.members[index]) for index in order]
        group = placement_group(bundles, strategy="SPREAD", name=name, lifetime="detached")
        slot = _Slot(name, group, None, {gang.members[index].attempt_id for index in order})
        with self._lock:
            for position, index in enumerate(order):
                member = gang.members[index]
                self._attempts[member.attempt_id] = _Attempt(member, slot, bundle_index=position)
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
        """Recorded: the agents may forget these exits and their slots are free (on the monitor).

        Called after every committed tick, so it is also when the hand-over records of attempts
        `adopt` found lost go: their host-lost ends are committed by then.
        """
        with self._lock:
            self._acked.extend(attempt_ids)
            self._acked.extend(self._unclaimed)
            self._unclaimed = []
            if self._acked:
                self._wake.set()

    def adopt(self, attempt_ids: Collection[str]) -> Adoption:
        """Take back the attempts a previous server process of this data dir placed.

        Known: an agent (of a live node) still runs it or holds its exit; its log goes on from
        where the server's copy stops, and a start or exit the server missed is reported again.
        Never started: it was never handed over (no record in the GCS), so it is started now.
        The rest are lost. Slots no known attempt uses are removed, and the agents stop whatever
        they run that no id here claims.
        """
        wanted = set(attempt_ids)
        handed = self._handovers.take_over(wanted)
        with self._reports:
            with self._lock:
                agents = {node_id: node.agent for node_id, node in self._nodes.items() if node.agent is not None}
                tracked = wanted & set(self._attempts)
            asks = {node_id: agent.adopt.remote(sorted(wanted)) for node_id, agent in agents.items()}
            found: dict[str, dict[str, Known]] = {}
            for node_id, call in asks.items():
                try:
                    found[node_id] = ray.get(call, timeout=ADOPT_TIMEOUT_SECONDS)
                except (RayError, GetTimeoutError) as exc:
                    logger.warning("the agent of Ray node %s failed while adopting: %s", node_id, exc)
                    self._lose_node(node_id)
            gang_nodes = {a for known_here in found.values() for a, info in known_here.items() if info.spec.gang}
            if gang_nodes:  # not re-adopted: stopped on their agents and lost (see docs/ray.md)
                self._disown(agents, found, wanted - gang_nodes)
            resumes = []
            slots: dict[str, _Slot] = {}
            for node_id, known_here in found.items():
                adopted = {a: info for a, info in known_here.items() if a not in tracked}
                offsets = {key: _size(path) for info in adopted.values() for key, path in _log_files(info.spec).items()}
                resumes.append(agents[node_id].resume.remote(offsets))
                for attempt_id, info in adopted.items():
                    slot = slots.get(info.slot)
                    if slot is None:
                        slot = slots[info.slot] = _Slot(info.slot, named_group(info.slot), shape(info.spec))
                        slot.nodes = {0: node_id}
                    slot.holders.add(attempt_id)
                    with self._lock:
                        self._attempts[attempt_id] = _Attempt(info.spec, slot, node_id, info.started_at)
            try:
                ray.get(resumes, timeout=CALL_TIMEOUT_SECONDS)
            except (RayError, GetTimeoutError) as exc:  # the next report notices a failed agent
                logger.warning("a Ray node agent failed while resuming adopted attempts: %s", exc)
        self._remove_unused_groups(keep=set(slots))
        known = tracked | {attempt_id for known_here in found.values() for attempt_id in known_here}
        never_started = wanted - known - handed
        with self._lock:
            self._unclaimed.extend(wanted - known - never_started)
        if known or wanted:
            logger.info(
                "adopted %d Ray attempt(s); %d never started, %d lost",
                len(known), len(never_started), len(wanted - known - never_started),
            )  # fmt: skip
        self._wake.set()
        return Adoption(frozenset(known), frozenset(never_started))

    def _disown(self, agents: dict[str, Any], found: dict[str, dict[str, Known]], claimed: set[str]) -> None:
        """Claim only `claimed` again on the agents that know other attempts: they stop the rest."""
        for node_id in list(found):
            if set(found[node_id]) <= claimed:
                continue
            try:
                ray.get(agents[node_id].adopt.remote(sorted(claimed)), timeout=CALL_TIMEOUT_SECONDS)
            except (RayError, GetTimeoutError) as exc:
                logger.warning("the agent of Ray node %s failed while adopting: %s", node_id, exc)
            found[node_id] = {a: info for a, info in found[node_id].items() if a in claimed}

    def _remove_unused_groups(self, keep: set[str]) -> None:
        """Remove this server's groups (by their name) that no adopted attempt uses: slots that were
        spare or whose attempts are lost, and gangs' groups."""
        with self._lock:
            keep |= {a.slot.name for a in self._attempts.values() if a.slot is not None}
        prefix = f"kiln-{self._tag}-"
        for entry in placement_group_table().values():
            name = entry.get("name") or ""
            if name.startswith(prefix) and name not in keep and entry.get("state") != "REMOVED":
                self._remove_group(named_group(name))

    def shutdown(self) -> None:
        """Leave the attempts running for the next server (and the agents that run them or hold
        their exits); remove only the agents with nothing left to do, and the spare slots.

        An attempt still waiting for its slot is not handed over any more: the slot goes, so the
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
            handed = {a.slot.name for a in self._attempts.values() if a.slot is not None and a.node_id is not None}
            handed |= {slot.name for slot in self._ended_slots.values() if slot is not None}
            unused = [*self._spares, *(a.slot for a in self._attempts.values() if a.slot is not None)]
            self._spares = []
        for slot in {s.name: s for s in unused if s.name not in handed}.values():
            self._remove_group(slot.group)
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
                self._release()
                self._place()
                self._collect()
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
        agent.configure.remote(replace(self._settings, job_roles={}), environment, self._epoch)
        return agent

    def _lose_node(self, node_id: str) -> None:
        with self._lock:
            self._lost.add(node_id)
            node = self._nodes.pop(node_id, None)
            lost = [a for a in self._attempts.values() if a.node_id == node_id]
            for attempt in lost:
                del self._attempts[attempt.spec.attempt_id]
            spares = [slot for slot in self._spares if slot.nodes is not None and node_id in slot.nodes.values()]
            self._spares = [slot for slot in self._spares if slot not in spares]
            for attempt in self._attempts.values():  # queued behind an attempt of that node: a slot of its own
                slot = attempt.slot
                if attempt.node_id is None and slot is not None and slot.shared_on(node_id):
                    slot.holders.discard(attempt.spec.attempt_id)
                    attempt.slot, attempt.spec = None, replace(attempt.spec, start_after=None)
        for slot in spares:
            self._remove_group(slot.group)
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
        """Give waiting attempts a slot (a spare, their predecessor's, or a new group), and hand
        those whose slot is placed to their nodes' agents: a gang's nodes all at once, when its
        whole group is placed. Spares nobody took are removed when a new group waits for room,
        or once they have been idle for a while."""
        with self._lock:
            waiting = [a for a in self._attempts.values() if a.node_id is None]
            nodes = {node_id: node.resources for node_id, node in self._nodes.items()}
        units: dict[str, list[_Attempt]] = {}  # what starts together: a gang, else one attempt
        for attempt in waiting:
            if attempt.slot is None and not self._take_slot(attempt):
                continue
            self._prefer_spare(attempt)
            assert attempt.slot is not None
            units.setdefault(attempt.slot.name if attempt.slot.shape is None else attempt.spec.attempt_id, []).append(
                attempt
            )
        handovers: dict[str, list[Handed]] = {}
        pending = False
        for members in units.values():
            stop = next((a.stop_reason for a in members if a.stop_reason is not None), None)
            if stop is not None:  # a gang starts whole or not at all
                for attempt in members:
                    self._not_started(attempt, attempt.stop_reason or stop, None, started=False)
                continue
            needs = [bundle(a.spec) for a in members]
            misfit = next((need for need in needs if not any(fits(need, r) for r in nodes.values())), None)
            if misfit is not None:
                for attempt in members:
                    self._not_started(
                        attempt, TASK_FAILED_TO_START, NO_NODE_FITS.format(need=_text(misfit)), started=False
                    )
                continue
            slot = members[0].slot
            assert slot is not None
            if slot.nodes is None and not self._placed(slot):
                pending = True
                continue
            for attempt, spec, node_id in self._destinations(members):
                handovers.setdefault(node_id, []).append(Handed(spec, slot.name))
                attempt.node_id = node_id
        self._trim_spares(pending)
        if handovers:
            self._handovers.record([h.spec.attempt_id for batch in handovers.values() for h in batch])
            with self._lock:
                agents = {node_id: self._nodes[node_id].agent for node_id in handovers if node_id in self._nodes}
            for node_id, batch in handovers.items():
                if node_id in agents:
                    agents[node_id].start.remote(batch, self._epoch)

    def _take_slot(self, attempt: _Attempt) -> bool:
        """A slot for a waiting single attempt: its predecessor's (start-ahead: it waits on that
        node), else a spare of its shape, else a new group. False: its predecessor has none yet."""
        after = attempt.spec.start_after
        with self._lock:
            while after is not None and after in self._skipped:  # it never reached a node: follow its predecessor
                after = self._skipped[after]
        attempt.spec = replace(attempt.spec, start_after=after)
        return self._own_slot(attempt) if after is None else self._follow(attempt, after)

    def _follow(self, attempt: _Attempt, after: str) -> bool:
        """Share the slot of the attempt it starts after, on that node; False: wait for it to have
        one. Its predecessor being over already, it gets a slot of its own."""
        with self._lock:
            predecessor = self._attempts.get(after)
            slot = predecessor.slot if predecessor is not None else self._ended_slots.get(after)
        if predecessor is not None and (slot is None or slot.nodes is None):
            return False
        if slot is not None and self._alive(slot):
            attempt.slot = slot
            slot.holders.add(attempt.spec.attempt_id)
            return True
        attempt.spec = replace(attempt.spec, start_after=None)
        return self._own_slot(attempt)

    def _own_slot(self, attempt: _Attempt) -> bool:
        """A spare of its shape, else a new group (placed by Ray in its own time)."""
        wanted = shape(attempt.spec)
        slot = self._pop_spare(wanted)
        if slot is None:
            name = slot_name(self._tag)
            group = placement_group([bundle(attempt.spec)], strategy="STRICT_PACK", name=name, lifetime="detached")
            slot = _Slot(name, group, wanted)
            logger.info(
                "new Ray slot %s (%s) for attempt %s", name, _text(bundle(attempt.spec)), attempt.spec.attempt_id
            )
        _give(attempt, slot)
        return True

    def _prefer_spare(self, attempt: _Attempt) -> None:
        """An attempt whose own new group Ray has not placed yet takes a spare of its shape that
        came free meanwhile (an exit recorded just after it was placed): no wait for Ray."""
        slot = attempt.slot
        if slot is None or slot.nodes is not None or slot.shape is None or slot.holders != {attempt.spec.attempt_id}:
            return
        spare = self._pop_spare(slot.shape)
        if spare is None:
            return
        self._remove_group(slot.group)
        _give(attempt, spare)

    def _pop_spare(self, wanted: Shape) -> _Slot | None:
        """Take the oldest spare of shape `wanted`, if there is one."""
        with self._lock:
            spare = next((slot for slot in self._spares if slot.shape == wanted), None)
            if spare is not None:
                self._spares.remove(spare)
            return spare

    def _alive(self, slot: _Slot) -> bool:
        """Every node the slot's bundles are on is live (False while it is not placed)."""
        with self._lock:
            return slot.on_live_nodes(self._nodes)

    @staticmethod
    def _placed(slot: _Slot) -> bool:
        """Whether Ray has placed the slot's group; notes its bundles' nodes when it has."""
        if slot.group is None:
            return False
        table = placement_group_table(slot.group)
        if table.get("state") != "CREATED":
            return False
        slot.nodes = {int(index): str(node) for index, node in table["bundles_to_node_id"].items()}
        return True

    def _destinations(self, members: list[_Attempt]) -> list[tuple[_Attempt, AttemptSpec, str]]:
        """Where each attempt of a placed slot goes (nothing while a node is missing); a gang's
        other nodes get the main node's Ray node address."""
        slot = members[0].slot
        assert slot is not None and slot.nodes is not None
        bundle_nodes = slot.nodes
        if not self._alive(slot):
            slot.nodes = None  # a node is gone: Ray moves the group, read where to next pass
            return []
        main = next((a for a in members if a.spec.gang is not None and a.spec.gang.index == a.spec.gang.main), None)
        if main is None:
            return [(attempt, attempt.spec, bundle_nodes[attempt.bundle_index]) for attempt in members]
        address = node_address(bundle_nodes[main.bundle_index])
        if address is None:
            return []  # Ray does not list the node (any more): try again next tick
        destinations = []
        for attempt in members:
            spec = attempt.spec
            if spec.gang is not None and spec.gang.index != spec.gang.main:
                spec = replace(spec, environment={**spec.environment, MAIN_NODE_ADDRESS: address})
            destinations.append((attempt, spec, bundle_nodes[attempt.bundle_index]))
        logger.info("gang of %d placed on Ray node(s) %s; main node at %s", len(members),
                    sorted(set(bundle_nodes.values())), address)  # fmt: skip
        return destinations

    def _trim_spares(self, room_wanted: bool) -> None:
        """Spares nobody took: all of them when a new group waits for room (they are of other
        shapes), else those idle for `SPARE_SECONDS`."""
        now = time.monotonic()
        with self._lock:
            doomed = [s for s in self._spares if room_wanted or now - s.idle_since >= SPARE_SECONDS]
            self._spares = [s for s in self._spares if s not in doomed]
        for slot in doomed:
            self._remove_group(slot.group)

    def _not_started(self, attempt: _Attempt, status_reason: str, reason: str | None, *, started: bool) -> None:
        with self._lock:
            self._attempts.pop(attempt.spec.attempt_id, None)
            self._skipped[attempt.spec.attempt_id] = attempt.spec.start_after
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
        for key, chunk in report.logs.items():
            with self._lock:
                attempt = self._attempts.get(attempt_of(key))
            path = None if attempt is None else _log_files(attempt.spec).get(key)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("ab") as log:
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
                logger.debug("attempt %s running on Ray node %s", event.attempt_id, node_id)
                self._emit(AttemptRunning(event.attempt_id, event.at_ms, host=node_id))
            else:
                self._ended(attempt, node_id)
                started_at = event.started_at if event.started_at is not None else attempt.started_at
                self._emit(replace(event, host=node_id, started_at=started_at))

    def _ended(self, attempt: _Attempt, node_id: str | None) -> None:
        """The attempt's exit goes to the scheduler: keep its slot (and, with `node_id`, the
        agent's copy of the exit) until the scheduler acknowledges having recorded it."""
        with self._lock:
            self._ended_slots[attempt.spec.attempt_id] = attempt.slot
            if node_id is not None:
                self._held_on[attempt.spec.attempt_id] = node_id

    def _release(self) -> None:
        """Pass acknowledgements on: agents forget those exits, slots nobody holds any more become
        spares (a gang's, or one on a node that is gone, is removed)."""
        with self._lock:
            acked, self._acked = self._acked, []
            by_node: dict[str, list[str]] = {}
            freed: list[_Slot] = []
            for attempt_id in acked:
                self._skipped.pop(attempt_id, None)
                slot = self._ended_slots.pop(attempt_id, None)
                if slot is not None:
                    slot.holders.discard(attempt_id)
                    if not slot.holders:
                        freed.append(slot)
                node_id = self._held_on.pop(attempt_id, None)
                if node_id is not None:
                    by_node.setdefault(node_id, []).append(attempt_id)
            agents = {n: self._nodes[n].agent for n in by_node if n in self._nodes}
            now = time.monotonic()
            doomed = []
            for slot in freed:
                alive = slot.on_live_nodes(self._nodes)
                if slot.shape is not None and alive and slot.group is not None and not self._stop.is_set():
                    slot.idle_since = now
                    self._spares.append(slot)
                else:
                    doomed.append(slot)
        if acked:
            self._handovers.forget(acked)
        for node_id, agent in agents.items():
            agent.acknowledge.remote(by_node[node_id])
        for slot in doomed:
            self._remove_group(slot.group)

    @staticmethod
    def _remove_group(group: PlacementGroup | None) -> None:
        if group is None:
            return
        with contextlib.suppress(RayError, ValueError):  # already removed
            remove_placement_group(group)


def _give(attempt: _Attempt, slot: _Slot) -> None:
    """`slot` becomes the attempt's own (a spare or a new group: it holds nobody else)."""
    slot.holders = {attempt.spec.attempt_id}
    attempt.slot = slot


def _text(resources: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in resources.items())


def _size(path: Path) -> int:
    """How much of an attempt's log the server already has."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
