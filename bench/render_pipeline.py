"""Render pipeline benchmark: `kiln render` of Pottery against plain Blender on the same machine.

Frames 1-24 of the workshop's Pottery scene at 25 % resolution and 8 samples, timed as:
- floor: ONE bpy process renders all frames with all threads (Blender's animation render), the
  process start, `import bpy` and scene load included, since every job pays those too;
- parallel floor: one bpy process per core, each rendering a contiguous share of the frames on one
  thread: the same split the pipeline makes, without a scheduler (what Kiln itself costs);
- pipeline: the `kiln render` command's wall time against a running server (header read, submit,
  render array, stitch to MP4), at 1 and 6 frames per job.

Fair share of the CPU: the compute environment may use every core (`maxvCpus` = cores) and each
render job asks for 1 vCPU, so `cores` jobs render side by side on one thread each, as AWS Batch
packs 1-vCPU jobs on an instance. A 6-frames-per-job run with `vcpus = cores` (one job at a time,
all threads, the floor's shape) is also timed for comparison. The floor runs before and after the
pipelines; ratios use their mean, because the machines here are shared and noisy.

Usage: python bench/render_pipeline.py [--scene PATH] [--frames 1-24] [--resolution-percent 25] [--samples 8]
Everything runs on 127.0.0.1 in a temporary directory; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

POTTERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "pottery.blend"
TIMEOUT_SECONDS = 1200
TARGETS = {1: 1.3, 6: 1.15}

FLOOR_SCRIPT = textwrap.dedent(
    """
    import sys, bpy
    blend, output, first, last, percent, samples, threads = sys.argv[1:8]
    bpy.ops.wm.open_mainfile(filepath=blend)
    scene = bpy.context.scene
    scene.render.threads_mode = "AUTO" if threads == "all" else "FIXED"
    if threads != "all":
        scene.render.threads = int(threads)
    scene.render.resolution_percentage = int(percent)
    scene.cycles.samples = int(samples)
    scene.frame_start, scene.frame_end = int(first), int(last)
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = output + "/"
    bpy.ops.render.render(animation=True)
    """
)


@dataclass(frozen=True)
class Settings:
    scene: Path
    first: int
    last: int
    percent: int
    samples: int
    cores: int

    @property
    def frame_count(self) -> int:
        return self.last - self.first + 1


def blender_floor(settings: Settings, scratch: Path, processes: int) -> float:
    """Wall time of `processes` bpy processes splitting the frames (1: one process, all threads)."""
    threads = "all" if processes == 1 else "1"
    shares = _split(settings.first, settings.last, processes)
    started = time.perf_counter()
    children = []
    for index, (first, last) in enumerate(shares):
        output = scratch / f"floor-{processes}-{index}"
        arguments = [str(settings.scene), str(output), str(first), str(last), str(settings.percent)]
        command = [sys.executable, "-c", FLOOR_SCRIPT, *arguments, str(settings.samples), threads]
        children.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for child in children:
        if child.wait(timeout=TIMEOUT_SECONDS) != 0:
            raise SystemExit(f"plain Blender render failed ({child.args})")
    elapsed = time.perf_counter() - started
    rendered = sum(len(list((scratch / f"floor-{processes}-{i}").glob("*.png"))) for i in range(len(shares)))
    if rendered != settings.frame_count:
        raise SystemExit(f"plain Blender rendered {rendered} frames, expected {settings.frame_count}")
    return elapsed


def _split(first: int, last: int, parts: int) -> list[tuple[int, int]]:
    frames = list(range(first, last + 1))
    size = -(-len(frames) // parts)
    return [(chunk[0], chunk[-1]) for chunk in (frames[i : i + size] for i in range(0, len(frames), size))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (data_dir.parent / "server.log").open("ab")
    command = [sys.executable, "-m", "kiln", "server", "--data-dir", str(data_dir), "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{endpoint}/healthz", timeout=1).status_code == 200:
                return process, endpoint
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("kiln server did not start")


def pipeline_seconds(
    settings: Settings, endpoint: str, output: Path, queue: str, frames_per_job: int, vcpus: int
) -> float:
    """Wall time of `kiln render` (submit to MP4) on a queue whose CE may use every core."""
    command = [sys.executable, "-m", "kiln", "render", str(settings.scene), "-o", str(output),
               "--frames", f"{settings.first}-{settings.last}", "--frames-per-job", str(frames_per_job),
               "--resolution-percent", str(settings.percent), "--samples", str(settings.samples),
               "--vcpus", str(vcpus), "--queue", queue, "--endpoint-url", endpoint]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"kiln render failed:\n{done.stdout}\n{done.stderr}")
    frames = len(list((output / "frames").glob("*.png")))
    if frames != settings.frame_count or not (output / "output.mp4").is_file():
        raise SystemExit(f"kiln render left {frames} frames in {output}")
    return elapsed


def run(settings: Settings) -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kiln-render-bench-") as scratch_name:
        scratch = Path(scratch_name)
        results["floor_before_s"] = blender_floor(settings, scratch / "a", 1)
        results["parallel_floor_s"] = blender_floor(settings, scratch / "b", settings.cores)
        server, endpoint = start_server(scratch / "data")
        try:
            for frames_per_job, vcpus in ((1, 1), (6, 1), (6, settings.cores)):
                name = f"pipeline_{frames_per_job}fpj_{vcpus}vcpu_s"
                output = scratch / name
                results[name] = pipeline_seconds(settings, endpoint, output, "bench", frames_per_job, vcpus)
                print(f"{name}: {results[name]:.1f}", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait(timeout=120)
        results["floor_after_s"] = blender_floor(settings, scratch / "c", 1)
    return results


def report(settings: Settings, results: dict[str, float]) -> None:
    floor = statistics.mean([results["floor_before_s"], results["floor_after_s"]])
    parallel = results["parallel_floor_s"]
    print(f"Pottery frames {settings.first}-{settings.last} at {settings.percent} %, {settings.samples} samples, "
          f"{settings.cores} cores")  # fmt: skip
    print(f"floor (1 bpy process, all threads): {results['floor_before_s']:.1f} s before, "
          f"{results['floor_after_s']:.1f} s after, mean {floor:.1f} s")  # fmt: skip
    print(
        f"parallel floor ({settings.cores} bpy processes x 1 thread): {parallel:.1f} s = {parallel / floor:.2f}x floor"
    )
    for frames_per_job, vcpus in ((1, 1), (6, 1), (6, settings.cores)):
        seconds = results[f"pipeline_{frames_per_job}fpj_{vcpus}vcpu_s"]
        target = TARGETS.get(frames_per_job) if vcpus == 1 else None
        verdict = (
            "" if target is None else f" (target <= {target}x: {'met' if seconds / floor <= target else 'MISSED'})"
        )
        print(f"pipeline {frames_per_job} frame(s)/job, {vcpus} vCPU/job: {seconds:.1f} s = {seconds / floor:.2f}x floor, "
              f"{seconds / parallel:.2f}x parallel floor{verdict}")  # fmt: skip
    print(json.dumps({key: round(value, 2) for key, value in results.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=Path(os.environ.get("KILN_POTTERY_BLEND", POTTERY)))
    parser.add_argument("--frames", default="1-24")
    parser.add_argument("--resolution-percent", type=int, default=25)
    parser.add_argument("--samples", type=int, default=8)
    arguments = parser.parse_args()
    first, last = (int(part) for part in arguments.frames.split("-"))
    cores = len(os.sched_getaffinity(0))
    settings = Settings(arguments.scene.resolve(), first, last, arguments.resolution_percent, arguments.samples, cores)
    if not settings.scene.is_file():
        raise SystemExit(f"scene not found: {settings.scene} (pass --scene or set KILN_POTTERY_BLEND)")
    report(settings, run(settings))


if __name__ == "__main__":
    main()
