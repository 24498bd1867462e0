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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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
        script = (
            "import ray,sys; ray.init(address=sys.argv[1], _node_ip_address='127.0.0.1', logging_level='ERROR');"
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if node.process.poll() is not None and node.process.returncode not in (None, -9):
                    raise RuntimeError(f"ray node {node.name} exited:\n{node.log.read_text()[-3000:]}")
            try:
                done = subprocess.run(
                    [sys.executable, "-c", script, self.address],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                continue
            if done.returncode == 0 and done.stdout.strip().isdigit() and int(done.stdout.strip()) >= count:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {count} live nodes in {START_SECONDS} s")

    def node_ids(self) -> dict[str, str]:
        """Test node name -> Ray node id, for the live nodes (read through a short-lived driver)."""
        script = (
            "import json,ray,sys; ray.init(address=sys.argv[1], _node_ip_address='127.0.0.1', logging_level='ERROR');"
            "print(json.dumps({r: n['NodeID'] for n in ray.nodes() if n['Alive'] for r in n['Resources']"
            " if r.startswith('kiln_test_')}))"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, self.address], capture_output=True, text=True, timeout=60, check=True
        )
        found = json.loads(done.stdout.strip().splitlines()[-1])
        return {name.removeprefix("kiln_test_"): node_id for name, node_id in found.items()}

    def stop(self) -> None:
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
