"""`make demo`: render a Blender scene to an MP4 through a real Kiln server, as AWS Batch jobs.

Two commands a user would type, run one after the other:

1. `kiln sample-scene demo-output/scene.blend --frames 48`: a small animated Cycles scene built
   in code (the repository ships no .blend binary);
2. `kiln render demo-output/scene.blend -o demo-output/render --frames-per-job 4 --embedded
   --data-dir demo-output/kiln-data`: starts an embedded `kiln server` (SQLite + local executor)
   on a free port with a data dir of its own, registers the render job definition (image
   `kiln/render`) and a queue, submits an array of 12 render jobs and a stitch job that depends
   on the whole array, shows their progress and prints where the MP4 is.

Everything lands in ./demo-output/ (gitignored), emptied at the start of each run; the server's
state stays in demo-output/kiln-data, so `kiln server --data-dir demo-output/kiln-data` shows the
jobs afterwards. A few minutes at most on 2 cores. The shell-array demo that used to be here is
examples/shell_array_demo.py.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import av
from rich.console import Console

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo-output"
FRAMES = 48
FRAMES_PER_JOB = 4
console = Console()


def kiln(*args: str) -> None:
    """Run `kiln ARGS` with this interpreter; a failure ends the demo with the command's status."""
    console.print(f"[bold]$ kiln {' '.join(args)}[/bold]", soft_wrap=True)
    child = subprocess.Popen([sys.executable, "-m", "kiln", *args])
    # Ctrl-C is for `kiln render` (it stops watching and asks about its embedded server); the demo
    # just waits for it instead of killing it half way through that conversation.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        returncode = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if returncode != 0:
        raise SystemExit(returncode)


def describe_video(path: Path) -> str:
    """Decode the MP4 to show it is a real video: frames, size, rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return f"{frames} frames, {stream.width}x{stream.height}, {stream.average_rate} fps, H.264"


def main() -> None:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    scene, output, data = DEMO_DIR / "scene.blend", DEMO_DIR / "render", DEMO_DIR / "kiln-data"
    kiln("sample-scene", str(scene), "--frames", str(FRAMES))
    kiln("render", str(scene), "-o", str(output), "--frames-per-job", str(FRAMES_PER_JOB),
         "--embedded", "--data-dir", str(data))  # fmt: skip
    video = output / "output.mp4"
    console.print(f"\n[green]The MP4:[/green] {video}  ({describe_video(video)})", soft_wrap=True)
    console.print(f"Frames: {output / 'frames'}/   Jobs: kiln server --data-dir {data}, then kiln jobs", soft_wrap=True)


if __name__ == "__main__":
    main()
