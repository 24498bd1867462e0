"""A real local Ray cluster for the tests: a head and two worker nodes as separate `ray start` processes.

Each node is its own `ray start --block` process in its own session, so the tests own exactly its
processes: stopping (or "losing") a node signals that session's processes, never `ray stop`, which
would stop every Ray on the machine. Nodes are given `--node-ip-address=127.0.0.1`, but Ray 2.60 replaces a
loopback address with the machine's routable one and listens on all interfaces for some of its
ports (seen on these test machines): the tests cannot change that; every node still runs here.
Every node has a custom resource naming it (`node:<name>`-like, here `kiln_test_<name>`) so a test
can tell them apart, and a fixed CPU count and memory so capacity is predictable.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.cli.embedded_server import free_port

NODE_CPUS = 2
NODE_MEMORY_BYTES = 2 * 1024**3
START_SECONDS = 90
STOP_SECONDS = 3
RAY = str(Path(sys.executable).with_name("ray"))
# A private mount namespace whose /tmp is a new empty tmpfs, then the command ($0: a folder to
# create in it; $1: `:`-separated folders under /tmp to keep, such as a checkout and its venv that
# live there, carried over through bind mounts parked in /dev/shm). unshare execs in place, so the
# node's session and pid stay the Popen's.
_PRIVATE_TMP_SCRIPT = """
set -e
root=$0 keep=$1
shift
stash=$(mktemp -d /dev/shm/kiln-node-XXXXXX)
IFS=:
n=0
for path in $keep; do n=$((n + 1)); mkdir "$stash/$n"; mount --bind "$path" "$stash/$n"; done
mount -t tmpfs -o mode=1777 kiln-node-tmp /tmp
n=0
for path in $keep; do n=$((n + 1)); mkdir -p "$path"; mount --move "$stash/$n" "$path"; rmdir "$stash/$n"; done
unset IFS
rmdir "$stash"
mkdir -p "$root"
exec "$@"
"""
PRIVATE_TMP = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _PRIVATE_TMP_SCRIPT]


def kept_under_tmp() -> str:
    """What a node with a private /tmp must still see: this checkout and its interpreter's
    environment, when they live under /tmp (a CI clone may)."""
    import kiln

    needed = {Path(kiln.__file__).resolve().parents[1], Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    below = sorted(str(path) for path in needed if path.is_relative_to("/tmp"))
    return ":".join(path for path in below if not any(path.startswith(other + "/") for other in below))


def private_tmp_refused() -> str | None:
    """Why a node cannot get a private /tmp here (the kernel or the sandbox refuses mount
    namespaces, or `unshare` is missing), or None when it can."""
    try:
        done = subprocess.run(
            [*PRIVATE_TMP, "/tmp/probe", kept_under_tmp(), sys.executable, "-c", "import kiln"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except OSError as error:
        return f"cannot run unshare: {error}"
    return None if done.returncode == 0 else f"unshare --mount refused: {done.stderr.strip()}"


def _host_processes(session: int) -> set[int]:
    """The pids of session `session` and all their descendants, from /proc."""
    parents: dict[int, int] = {}
    members: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        pid, ppid, sid = int(entry.name), int(fields[1]), int(fields[3])
        parents[pid] = ppid
        if sid == session:
            members.add(pid)
    grown = True
    while grown:
        children = {pid for pid, ppid in parents.items() if ppid in members} - members
        members |= children
        grown = bool(children)
    return members


# One Ray driver for all of a cluster's questions: starting a Python with Ray for each costs 2-5 s.
_PROBE_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], namespace="kiln", _node_ip_address="127.0.0.1", logging_level="ERROR")
print("PROBE ready", flush=True)
for line in sys.stdin:
    if line.strip() == "nodes":
        answer = [{"id": n["NodeID"], "address": n["NodeManagerAddress"], "resources": sorted(n["Resources"])}
                  for n in ray.nodes() if n["Alive"]]
    else:
        answer = {g["name"]: g["state"] for g in ray.util.placement_group_table().values()}
    print("PROBE " + json.dumps(answer), flush=True)
"""
PROBE_SECONDS = 60


class RayProbe:
    """A long-lived driver process that answers `nodes` (the live ones) and `groups` (placement
    groups in Kiln's namespace, by name, with their state); it is started again when it died (its
    node was the one a test killed)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.process: subprocess.Popen[bytes] | None = None
        self.pending = b""

    def ask(self, question: str) -> Any:
        for tries_left in (1, 0):
            try:
                if self.process is None or self.process.poll() is not None:
                    self._start()
                assert self.process is not None and self.process.stdin is not None
                self.process.stdin.write(f"{question}\n".encode())
                self.process.stdin.flush()
                return json.loads(self._line())
            except (OSError, RuntimeError):
                self.close()
                if not tries_left:
                    raise
        raise AssertionError("unreachable")

    def _start(self) -> None:
        self.pending = b""
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PROBE_SCRIPT, self.address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        if self._line() != "ready":
            raise RuntimeError("the Ray probe did not start")

    def _line(self) -> str:
        """The next `PROBE ...` line's text (Ray may print lines of its own), within PROBE_SECONDS."""
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + PROBE_SECONDS
        while True:
            while b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                if line.startswith(b"PROBE "):
                    return line.removeprefix(b"PROBE ").decode()
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
                raise RuntimeError(f"the Ray probe did not answer in {PROBE_SECONDS} s")
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("the Ray probe exited")
            self.pending += chunk

    def close(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """Lose the node as a host is lost: SIGKILL everything that runs on it at once.

        That is the node's session (raylet, object store, and Ray workers, which put themselves in
        process groups of their own) and every descendant of those (the attempts, which the Kiln
        agent starts in sessions of their own). The processes are stopped first, so nothing forks
        between the scan and the kill.
        """
        stopped: set[int] = set()
        while True:  # stop what is found until a scan finds nothing new (stopped processes cannot fork)
            found = _host_processes(self.process.pid) - stopped  # started with start_new_session: sid = pid
            if not found:
                break
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= found
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then `kill` what is left: a worker node stops in about a second, the head's
        `ray start --block` not within 20 s, and nothing of a test cluster needs a clean end."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass


@dataclass
class RayCluster:
    """`address` is the GCS address (`127.0.0.1:PORT`) for `kiln server --ray-address`."""

    root: Path
    port: int
    nodes: dict[str, RayNode] = field(default_factory=dict)
    probe: RayProbe = field(init=False)

    def __post_init__(self) -> None:
        self.probe = RayProbe(self.address)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_node(self, name: str, *, head: bool = False, cpus: int = NODE_CPUS, private_tmp: bool = False) -> RayNode:
        """`private_tmp`: the node runs in a mount namespace of its own with an empty /tmp, so like a
        separate machine it sees none of the files the tests, the server and other nodes keep there."""
        log = self.root / f"{name}.log"
        resources = json.dumps({f"kiln_test_{name}": 1})
        common = [
            "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
            f"--memory={NODE_MEMORY_BYTES}", f"--resources={resources}", "--disable-usage-stats",
            f"--object-store-memory={100 * 1024**2}", f"--dashboard-agent-listen-port={free_port()}",
            # Nodes on one machine need session dirs (and so sockets) of their own.
            f"--temp-dir={self.root / name}",
        ]  # fmt: skip
        if head:
            where = [
                "--head", f"--port={self.port}", "--include-dashboard=false",
            ]  # fmt: skip
        else:
            where = [f"--address={self.address}"]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        command = [RAY, "start", *where, *common]
        if private_tmp:
            command = [*PRIVATE_TMP, str(self.root), kept_under_tmp(), *command]
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        node = RayNode(name, process, log)
        self.nodes[name] = node
        return node

    def wait_for_nodes(self, count: int) -> None:
        """Until `count` nodes are alive in the GCS (bounded)."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if node.process.poll() is not None and node.process.returncode not in (None, -9):
                    raise RuntimeError(f"ray node {node.name} exited:\n{node.log.read_text()[-3000:]}")
            try:
                if len(self.live_nodes()) >= count:
                    return
            except (OSError, RuntimeError):  # the head's GCS is not up yet
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the Ray cluster did not reach {count} live nodes in {START_SECONDS} s")

    def live_nodes(self) -> list[dict[str, Any]]:
        """The live nodes: `id`, `address` (NodeManagerAddress) and `resources` (names)."""
        return list(self.probe.ask("nodes"))

    def placement_groups(self) -> dict[str, str]:
        """Placement groups in Kiln's Ray namespace, by name, with their state."""
        return dict(self.probe.ask("groups"))

    def node_ids(self) -> dict[str, str]:
        """Test node name -> Ray node id, for the live nodes."""
        return {
            resource.removeprefix("kiln_test_"): node["id"]
            for node in self.live_nodes()
            for resource in node["resources"]
            if resource.startswith("kiln_test_")
        }

    def stop(self) -> None:
        self.probe.close()
        for node in reversed(list(self.nodes.values())):
            node.stop()
        if os.environ.get("KILN_KEEP_RAY_LOGS") is None:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(
    workers: tuple[str, ...] = ("w1", "w2"), *, head_cpus: int = NODE_CPUS, private_tmp: bool = False
) -> RayCluster:
    """`private_tmp`: the workers as separate machines (see RayCluster.start_node); with `head_cpus` 0
    every job then runs on a node that shares no files with the tests."""
    # Short root: Ray's unix sockets live under it and socket paths are limited to 107 bytes.
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="kray")), free_port())
    try:
        cluster.start_node("head", head=True, cpus=head_cpus)
        cluster.wait_for_nodes(1)
        for name in workers:
            cluster.start_node(name, private_tmp=private_tmp)
        cluster.wait_for_nodes(1 + len(workers))
    except BaseException:
        cluster.stop()
        raise
    return cluster
