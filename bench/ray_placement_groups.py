"""What one placement group per attempt costs on Ray: the reason Kiln on Ray starts attempts in
waves about a second apart (issue 18).

Starts its own three-node Ray cluster on this machine (tests/ray_cluster.py: a head and two
workers, 2 CPUs each) and, from a driver of its own, times:
1. a one-bundle group (1 CPU) created, ready and removed, one after another, on an idle cluster;
2. the same on a FULL cluster (a group on every CPU), as Kiln does when an attempt ends and the
   next one starts: remove one group, create one, poll `placement_group_table` until CREATED;
3. one `placement_group_table` call (Kiln's monitor calls it per waiting attempt per tick).

Usage: python bench/ray_placement_groups.py [--rounds 20]
Everything listens on 127.0.0.1 (Ray binds some ports more widely, see tests/ray_cluster.py);
every wait is bounded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' Ray cluster helper, run as a script

from tests.ray_cluster import NODE_CPUS, start_cluster

DRIVER = """
import sys, time
import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

ray.init(address=sys.argv[1], _node_ip_address="127.0.0.1", logging_level="ERROR")
rounds, slots = int(sys.argv[2]), int(sys.argv[3])
bundle = [{"CPU": 1.0, "memory": 32.0 * 2**20}]


def created(group, timeout=30.0):
    deadline = time.perf_counter() + timeout
    while placement_group_table(group).get("state") != "CREATED":
        if time.perf_counter() > deadline:
            raise SystemExit("a placement group was not created within 30 s")
        time.sleep(0.005)


started = time.perf_counter()
for _ in range(rounds):
    group = placement_group(bundle, strategy="STRICT_PACK")
    created(group)
    remove_placement_group(group)
print(f"idle cluster: create, ready, remove: {(time.perf_counter() - started) * 1000 / rounds:.1f} ms each")

groups = [placement_group(bundle, strategy="STRICT_PACK") for _ in range(slots)]
for group in groups:
    created(group)
started = time.perf_counter()
for turn in range(rounds):
    remove_placement_group(groups[turn % slots])
    groups[turn % slots] = placement_group(bundle, strategy="STRICT_PACK")
    created(groups[turn % slots])
print(f"full cluster ({slots} groups): remove one, create one until CREATED: "
      f"{(time.perf_counter() - started) * 1000 / rounds:.1f} ms each")

started = time.perf_counter()
for _ in range(50):
    placement_group_table(groups[0])
print(f"placement_group_table: {(time.perf_counter() - started) * 1000 / 50:.2f} ms per call")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    cluster = start_cluster()
    try:
        slots = NODE_CPUS * len(cluster.nodes)
        run = subprocess.run([sys.executable, "-c", DRIVER, cluster.address, str(args.rounds), str(slots)],
                             capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
        print(run.stdout, end="")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
