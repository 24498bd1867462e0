"""Does forking a process that has imported bpy give correct, cheaper render jobs? (the zygote's premise)

Interleaves two ways of running the same 1-frame render job (`kiln-render render -f 1` of Pottery):
- fresh: `python -m kiln.render render ...` as its own process (what a job costs without the zygote);
- fork: `os.fork()` of this process, which has imported bpy and Kiln's render code and rendered an
  8x8 warm-up frame (the zygote's state), the child running the same CLI.
For each it prints wall time, the child's CPU time (user + sys, which a loaded machine distorts
less than wall time), peak RSS, the per-thread CPU ticks of the forked child (two busy threads =
Blender's TBB workers work after fork) and a hash of the decoded pixels (must be equal).

Usage: python bench/render_fork_probe.py [--threads 1] [--rounds 3] [--keep-pools] [--scene PATH]
`--keep-pools` forks without stopping Blender's TBB and OpenEXR thread pools first (shows why they
are stopped: the child then renders on one thread whatever `--threads` says).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

POTTERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "pottery.blend"


def pixels_hash(path: Path) -> str:
    """SHA-256 (16 hex digits) of a PNG's decompressed image data: equal pixels, whatever the metadata."""
    data, position, image = path.read_bytes(), 8, b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            image += data[position + 8 : position + 8 + length]
        position += 12 + length
    return hashlib.sha256(zlib.decompress(image)).hexdigest()[:16]


def thread_ticks() -> list[int]:
    """CPU ticks (utime) of each thread of this process."""
    ticks = []
    for task in os.listdir("/proc/self/task"):
        stat = Path(f"/proc/self/task/{task}/stat").read_text()
        ticks.append(int(stat.rsplit(")", 1)[1].split()[11]))
    return sorted(ticks, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=Path(os.environ.get("KILN_POTTERY_BLEND", POTTERY)))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-pools", action="store_true")
    arguments = parser.parse_args()

    started = time.monotonic()
    import bpy  # noqa: F401

    from kiln.render import cli, render_frames  # noqa: F401
    from kiln.render.blender_fork import BlenderThreadPools
    from kiln.render.zygote.daemon import warm_up

    print(f"parent: import {time.monotonic() - started:.2f} s, {len(os.listdir('/proc/self/task'))} threads")
    started = time.monotonic()
    warm_up()
    pools = BlenderThreadPools()
    print(f"parent: warm-up {time.monotonic() - started:.2f} s", flush=True)

    arguments_ = ["render", "-i", str(arguments.scene), "-f", "1", "--resolution-percent", "25", "--samples", "8"]
    env = {**os.environ, "KILN_VCPUS": str(arguments.threads), "AWS_BATCH_JOB_ARRAY_INDEX": "0"}
    walls: dict[str, list[float]] = {"fresh": [], "fork": []}
    with tempfile.TemporaryDirectory(prefix="kiln-fork-probe-") as scratch:
        for round_number in range(arguments.rounds):
            for mode in ("fresh", "fork"):
                output = Path(scratch) / f"{mode}-{round_number}"
                log_path = Path(scratch) / f"{mode}-{round_number}.log"
                with log_path.open("wb") as log:
                    begun = time.monotonic()
                    if mode == "fresh":
                        command = [sys.executable, "-m", "kiln.render", *arguments_, "-o", str(output)]
                        pid = subprocess.Popen(command, env=env, stdout=log, stderr=log).pid
                    else:
                        if not arguments.keep_pools:
                            pools.stop()
                        pid = os.fork()
                        if pid == 0:
                            _child(pools, arguments.keep_pools, log.fileno(), env, [*arguments_, "-o", str(output)])
                    _, status, usage = os.wait4(pid, 0)
                wall = time.monotonic() - begun
                walls[mode].append(wall)
                frames = list((output / "frames").glob("*.png"))
                lines = log_path.read_text().splitlines()
                ticks = next((line for line in lines if line.startswith("thread ticks")), "")
                print(
                    f"round {round_number} {mode:5}: wall {wall:5.2f} s, cpu {usage.ru_utime + usage.ru_stime:5.2f} s, "
                    f"peak RSS {usage.ru_maxrss // 1024} MiB, exit {os.waitstatus_to_exitcode(status)}, "
                    f"pixels {pixels_hash(frames[0]) if frames else None} {ticks}",
                    flush=True,
                )
    for mode, values in walls.items():
        print(f"{mode}: best {min(values):.2f} s, median {sorted(values)[len(values) // 2]:.2f} s")


def _child(pools: object, keep_pools: bool, log: int, env: dict[str, str], argv: list[str]) -> None:
    from kiln.render import cli
    from kiln.render.blender_fork import BlenderThreadPools

    status = 1
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(env)
        if not keep_pools and isinstance(pools, BlenderThreadPools):
            pools.restore()
        status = cli.main(argv, use_zygote=False)
        print("thread ticks", thread_ticks()[:4], flush=True)
    finally:
        os._exit(status)


if __name__ == "__main__":
    main()
