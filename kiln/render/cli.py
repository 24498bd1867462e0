"""`kiln-render` (also `python -m kiln.render`): the entrypoint of Kiln's built-in `kiln/render` image.

It honours the reference workshop's job definition, `["Ref::action", "-i", "Ref::inputUri", "-o",
"Ref::outputUri", "-f", "Ref::framesPerJob"]`, so the same definition runs on AWS and on Kiln:

    kiln-render render -i <blend or scene-pack URI> -o <output URI> -f <frames per job> [-t <total frames>]
                       [--frame-start N] [--frame-end N] [--resolution-percent P] [--samples S]
    kiln-render stitch -i <URI> -o <URI>            (-f/-t accepted and ignored)

Failures a person can fix print one line on stderr and exit non-zero (1; 2 for wrong arguments),
since the job's log is the only place they will be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from botocore.exceptions import BotoCoreError

from kiln.render.errors import RenderError
from kiln.render.pack_cache import cache_folder, cache_limit_bytes, pack_digest, scene_of_pack
from kiln.render.slices import array_index
from kiln.render.vcpus import job_vcpus

PROGRAM = "kiln-render"
ACTIONS = ("render", "stitch")


class UsageError(RenderError):
    """The command line is wrong (exit status 2, like argparse)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as one line (a `UsageError`) instead of usage text and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROGRAM, description="Kiln's Blender render worker (runs inside jobs).")
    actions = parser.add_subparsers(dest="action", metavar="{render,stitch}", parser_class=_Parser)
    actions.required = True
    render = actions.add_parser("render", help="render this array child's slice of frames")
    render.add_argument(
        "-i", "--input", required=True, help="URI of the .blend file, or of a scene pack <sha256>.zip (kiln render)"
    )
    render.add_argument("-o", "--output", required=True, help="output URI; frames go to <output>/frames/NNNN.png")
    render.add_argument("-f", "--frames-per-job", required=True, type=_positive, help="frames per array child")
    render.add_argument("-t", "--total-frames", type=_positive, help="checked against the scene's frame count")
    render.add_argument("--frame-start", type=int, help="render from this frame (default: the scene's frame_start)")
    render.add_argument("--frame-end", type=int, help="render up to this frame (default: the scene's frame_end)")
    render.add_argument("--resolution-percent", type=_percent, help="override the scene's resolution percentage")
    render.add_argument("--samples", type=_positive, help="override the render engine's sample count")
    stitch = actions.add_parser("stitch", help="encode <input>/frames/*.png into <output>/output.mp4")
    stitch.add_argument("-i", "--input", required=True, help="URI holding frames/NNNN.png")
    stitch.add_argument("-o", "--output", required=True, help="URI that receives output.mp4")
    stitch.add_argument("-f", "--frames-per-job", help="accepted for the shared job definition; ignored")
    stitch.add_argument("-t", "--total-frames", help="accepted for the shared job definition; ignored")
    return parser


def main(argv: Sequence[str] | None = None, *, use_zygote: bool = True) -> int:
    """Run one action; returns the process exit status.

    `render` goes through the render zygote (a pre-loaded Blender forked per job) where it can,
    and renders in this process otherwise (see kiln.render.zygote.client).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv:
            raise UsageError(f"no action given: expected one of {', '.join(ACTIONS)}")
        if not argv[0].startswith("-") and argv[0] not in ACTIONS:
            raise UsageError(f"unknown action {argv[0]!r}: expected one of {', '.join(ACTIONS)}")
        arguments = build_parser().parse_args(argv)
        if arguments.action == "render":
            if pack_digest(arguments.input) is not None:  # a scene pack: render its cached local tree
                cache, limit = cache_folder(os.environ), cache_limit_bytes(os.environ)
                arguments.input = str(scene_of_pack(arguments.input, cache, limit, say=_say))
                argv = render_argv(arguments)
            if use_zygote and (status := _render_via_zygote(argv)) is not None:
                return status
            _render(arguments)
        else:
            _stitch(arguments)
    except UsageError as error:
        _fail(str(error))
        return 2
    except (RenderError, OSError, BotoCoreError) as error:
        _fail(str(error))
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    return 0


def render_argv(arguments: argparse.Namespace) -> list[str]:
    """The `render` command line of parsed `arguments` (after the input was replaced by a local file)."""
    argv = ["render", "-i", arguments.input, "-o", arguments.output, "-f", str(arguments.frames_per_job)]
    for flag, value in (
        ("-t", arguments.total_frames),
        ("--frame-start", arguments.frame_start),
        ("--frame-end", arguments.frame_end),
        ("--resolution-percent", arguments.resolution_percent),
        ("--samples", arguments.samples),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def run() -> NoReturn:
    """Console-script entry point; as a container's PID 1 the worker runs in a child (`first_process`)."""
    from kiln.render.first_process import is_first_process, run_worker_as_child

    if is_first_process():
        sys.exit(run_worker_as_child(sys.argv[1:]))
    sys.exit(main())


def _render(arguments: argparse.Namespace) -> None:
    from kiln.render.render_frames import RenderJob, render_slice  # loads Blender only for `render`

    render_slice(
        RenderJob(
            blend_uri=arguments.input,
            output_uri=arguments.output,
            frames_per_job=arguments.frames_per_job,
            array_index=array_index(os.environ),
            threads=job_vcpus(os.environ),
            total_frames=arguments.total_frames,
            frame_start=arguments.frame_start,
            frame_end=arguments.frame_end,
            resolution_percent=arguments.resolution_percent,
            samples=arguments.samples,
        ),
        say=_say,
    )


def _render_via_zygote(argv: list[str]) -> int | None:
    from kiln.render.zygote.client import render_via_zygote

    return render_via_zygote(argv)


def _stitch(arguments: argparse.Namespace) -> None:
    from kiln.render.stitch import stitch

    stitch(arguments.input, arguments.output, say=_say)


def _say(line: str) -> None:
    print(line, flush=True)


def _fail(message: str) -> None:
    one_line = " ".join(message.split())
    print(f"{PROGRAM}: error: {one_line}", file=sys.stderr, flush=True)


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _percent(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 32767:
        raise argparse.ArgumentTypeError(f"expected a percentage from 1 to 32767, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
