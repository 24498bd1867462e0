"""`kiln render` (a .blend file to frames and an MP4 through AWS Batch jobs) and `kiln sample-scene`.

`kiln render` is a client of the public API, like the workshop's own submitter: it registers the
render job definition and a queue when they are missing, submits the render array and the stitch
job that depends on it, and watches them. It needs a server; when none answers on this machine it
starts an embedded one for the length of the command, so one command renders a scene on a laptop.
Interrupting it stops the watching, never silently the jobs.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.markup import escape

from kiln.cli.client import batch_client, default_endpoint
from kiln.cli.embedded_server import (
    EmbeddedServer,
    EmbeddedServerError,
    answers,
    is_loopback,
    start_embedded_server,
)
from kiln.cli.render_pipeline import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_QUEUE,
    DEFAULT_VCPUS,
    DEFINITION_NAME,
    PlanError,
    RenderPlan,
    SubmittedPipeline,
    check_array_size,
    ensure_definition,
    ensure_queue,
    frames_to_render,
    parse_frames,
    parse_license,
    storage_uri,
    submit_pipeline,
)
from kiln.cli.render_relay import RelayMirror, files_reach_jobs, relay_area, use_relay
from kiln.cli.render_watch import FrameCount, Outcome, ServerGoneError, failure_line, watch
from kiln.config import DEFAULT_ENDPOINT

console = Console()
err = Console(stderr=True)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass
class Connection:
    """The server the jobs went to; `server` is set when this command started it."""

    endpoint: str
    server: EmbeddedServer | None = None
    keep_server: bool = False  # the user chose to leave an embedded server (and its jobs) running


def render(
    scene: Annotated[str, typer.Argument(metavar="SCENE", help="The .blend file: a path or a URI (file://, s3://).")],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="OUTPUT",
            help="Where frames/ and output.mp4 go: a path or a URI (file://, s3://).",
        ),
    ],
    frames_per_job: Annotated[int, typer.Option(min=1, help="Frames each array child renders.")] = 1,
    frames: Annotated[
        str | None, typer.Option(help="Frames A-B to render (or one frame) [default: the scene's range].")
    ] = None,
    queue: Annotated[
        str, typer.Option(help="Job queue; created with a compute environment <queue>-ce when missing.")
    ] = DEFAULT_QUEUE,
    vcpus: Annotated[
        float | None,
        typer.Option(min=0.01, help=f"vCPUs per render job, = Blender threads [default: {DEFAULT_VCPUS}]."),
    ] = None,
    memory: Annotated[
        int | None, typer.Option(min=4, help=f"Memory limit per render job, MiB [default: {DEFAULT_MEMORY_MIB}].")
    ] = None,
    gpus: Annotated[
        int, typer.Option(min=0, help="GPUs per render job; Cycles renders on them (docs/gpus.md) [default: 0].")
    ] = 0,
    resolution_percent: Annotated[
        int | None, typer.Option(min=1, max=32767, help="Override the scene's resolution percentage.")
    ] = None,
    samples: Annotated[int | None, typer.Option(min=1, help="Override the scene's render samples.")] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--endpoint-url",
            help="Kiln server URL [default: $AWS_ENDPOINT_URL_BATCH or http://127.0.0.1:8642]. When no server "
            "answers at a 127.0.0.1/localhost URL, an embedded one is started for this command.",
        ),
    ] = None,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Always start an embedded server, even when one answers.")
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data dir of an embedded server [default: $XDG_DATA_HOME/kiln].")
    ] = None,
    job_role_arn: Annotated[
        str | None,
        typer.Option(
            help="jobRoleArn of the render job definition: the server hands its jobs that role's variables "
            "([job_roles] in kiln.toml), e.g. S3 credentials."
        ),
    ] = None,
    pack: Annotated[
        bool,
        typer.Option(
            help="Pack the scene with the textures and libraries it uses into one content-addressed zip that "
            "the jobs fetch (once per node), so they need no disk shared with this machine and render the "
            "scene as it was at submission. --no-pack: jobs read the .blend where it is.",
        ),
    ] = True,
    pack_store: Annotated[
        str | None,
        typer.Option(
            metavar="URI",
            help="Where the scene pack goes: a folder every node can read (s3://...) [default: OUTPUT/packs].",
        ),
    ] = None,
    license: Annotated[
        list[str] | None,
        typer.Option(
            "--license",
            metavar="NAME[:N]",
            help="A consumable resource each render job takes N of (default 1) while it runs, e.g. render "
            "licences: jobs wait in RUNNABLE until the server's resource has room (repeatable).",
        ),
    ] = None,
    relay: Annotated[
        bool | None,
        typer.Option(
            "--relay/--no-relay",
            help="Send a local OUTPUT's files through the server (the jobs write there, this command copies "
            "them back as they land) [default: when the server's jobs cannot see this machine's files: a "
            "server elsewhere, or Ray without shared_filesystem].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Render a Blender scene to frames and an MP4 with an array of render jobs and a stitch job.

    Registers the render job definition (image kiln/render) when missing, submits
    ceil(frames / frames-per-job) render jobs and a stitch job that waits for all of them, shows
    their progress, and prints where OUTPUT/output.mp4 and OUTPUT/frames/ are. Ctrl-C stops
    watching; the jobs keep running.
    """
    plan = _plan(scene, output, frames_per_job, frames, resolution_percent, samples)
    try:
        licenses = [parse_license(text) for text in license or []]
    except PlanError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    with _connected(endpoint_url, embedded, data_dir) as connection:
        plan, mirror = _through_relay(plan, connection, relay)
        if pack:
            plan = _packed(plan, pack_store or plan.packs_uri)
        batch = batch_client(connection.endpoint)
        jobs = _submit(batch, plan, connection, queue=queue, vcpus=vcpus, memory_mib=memory, gpus=gpus,
                       job_role_arn=job_role_arn, licenses=licenses)  # fmt: skip
        try:
            _say_submitted(
                jobs, plan, queue, connection.endpoint
            )  # inside the try: from here on Ctrl-C leaves running jobs behind
            outcome = watch(batch, jobs, plan, console, mirror)
            if mirror is not None:
                _copy_the_rest(mirror)
        except KeyboardInterrupt:
            _stop_watching(jobs, connection)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except ServerGoneError as exc:
            raise _fail(str(exc)) from None
    _report(
        outcome, plan if mirror is None else dataclasses.replace(plan, output_uri=str(mirror.local)), jobs, connection
    )


def sample_scene(
    path: Annotated[Path, typer.Argument(help="Where to write the .blend file.")],
    frames: Annotated[int, typer.Option(min=1, help="Length of the animation, from frame 1.")] = 12,
) -> None:
    """Write a small animated Blender scene (Cycles, 320x180, 8 samples) to try `kiln render` on."""
    try:
        from kiln.render.sample_scene import write_sample_scene

        write_sample_scene(path, frames)
    except ImportError as exc:
        raise _fail(f"the sample scene needs Blender as a Python module ({exc}); install Kiln's render extra") from None
    except (OSError, RuntimeError) as exc:
        raise _fail(f"cannot write {path}: {exc}") from None
    console.print(f"wrote a {frames}-frame sample scene (frames 1-{frames}) to {escape(str(path))}", soft_wrap=True)


def _plan(
    scene: str,
    output: str,
    frames_per_job: int,
    frames: str | None,
    resolution_percent: int | None,
    samples: int | None,
) -> RenderPlan:
    """Read the scene's frame range from its header (no Blender needed) and size the array."""
    from kiln.render.blend_header import read_scene_info
    from kiln.render.errors import RenderError

    scene_uri = storage_uri(scene)
    try:
        wanted = None if frames is None else parse_frames(frames)
        info = read_scene_info(scene_uri)
        plan = RenderPlan(
            scene_uri=scene_uri,
            output_uri=storage_uri(output),
            frames=frames_to_render(info.frames, wanted),
            frames_per_job=frames_per_job,
            frames_flag_given=wanted is not None,
            resolution_percent=resolution_percent,
            samples=samples,
        )
        check_array_size(plan)
    except (PlanError, RenderError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    return plan


def _packed(plan: RenderPlan, store: str) -> RenderPlan:
    """The plan with its scene packed (kiln.render.packing) and the pack put in `store`.

    A scene at a URI is fetched first with the files it names by relative paths (remote_scene),
    and only those are packed: its absolute paths are the artist's disk, not this machine's. The
    pack is content-addressed, so a store that has it already is not written again (a resumed
    render uploads nothing), and jobs verify what they fetch against its name.
    """
    from kiln.render import uris
    from kiln.render.errors import RenderError
    from kiln.render.packing import pack_scene
    from kiln.render.remote_scene import fetch_scene

    local = uris.local_path(plan.scene_uri)
    name = escape(plan.scene_uri.rstrip("/").rsplit("/", 1)[-1])
    console.print(f"packing {name} with the files it uses ...", soft_wrap=True)
    try:
        with tempfile.TemporaryDirectory(prefix="kiln-pack-") as scratch:
            confined_to = None
            if local is None:
                confined_to = Path(scratch, "fetched")
                fetched = fetch_scene(plan.scene_uri, confined_to)
                local = fetched.scene
            packed = pack_scene(local, Path(scratch, "packs"), confined_to=confined_to)
            missing = fetched.missing if confined_to else tuple(str(path) for path in packed.missing)
            target = uris.join(store, packed.archive.name)
            stored = uris.list_files(store).get(packed.archive.name) == packed.archive.stat().st_size
            if not stored:
                uris.upload_atomic(packed.archive, target)
    except RenderError as exc:
        raise _fail(f"cannot pack the scene: {exc}; --no-pack makes the jobs read it where it is") from None
    others = packed.file_count - 1
    uses = f"and {others} file{'' if others == 1 else 's'} it uses" if others else "(it uses no other files)"
    console.print(
        f"packed {name} {uses}, {packed.total_bytes / 2**20:.1f} MiB, {'already in' if stored else 'into'} "
        f"{escape(target)}",
        soft_wrap=True,
    )
    for path in missing:
        err.print(f"[yellow]warning:[/yellow] the scene uses {escape(path)}, which is not there to pack: "
                  "it renders without it (a missing texture renders magenta)", soft_wrap=True)  # fmt: skip
    return dataclasses.replace(plan, pack_uri=target)


def _through_relay(
    plan: RenderPlan, connection: Connection, relay: bool | None
) -> tuple[RenderPlan, RelayMirror | None]:
    """The plan with a local OUTPUT replaced by a relay area when the jobs cannot reach it, and the
    mirror that copies the area back into OUTPUT (kiln/cli/render_relay.py)."""
    from kiln.render import uris

    local = uris.local_path(plan.output_uri)
    if relay is False or local is None:
        if relay and local is None:
            console.print(
                f"note: {escape(plan.output_uri)} is not a local folder; --relay does not apply", soft_wrap=True
            )
        return plan, None
    if relay is None and (connection.server is not None or files_reach_jobs(connection.endpoint)):
        return plan, None
    use_relay(connection.endpoint)
    area = f"kiln://{relay_area(local)}"
    console.print(
        f"the server's jobs cannot see this machine's files: they write to {area} on the server, and the frames and "
        f"video are copied into {escape(str(local))} as they land",
        soft_wrap=True,
    )
    mirror = RelayMirror(area, local)
    return dataclasses.replace(plan, output_uri=area), mirror


def _copy_the_rest(mirror: RelayMirror) -> None:
    """The last pass of the mirror, after the jobs ended: what it cannot copy is said, with where it is."""
    try:
        mirror.sync()
    except Exception as exc:  # storage or network
        raise _fail(f"the jobs ended, but copying {mirror.area_uri} into {mirror.local} failed: {exc}; "
                    "the same command again copies what is missing") from None  # fmt: skip


@contextmanager
def _connected(endpoint_url: str | None, embedded: bool, data_dir: Path | None) -> Iterator[Connection]:
    """The server to use: the one that answers, else an embedded one, stopped on the way out
    (unless the user chose to keep it and its jobs running)."""
    endpoint = endpoint_url or default_endpoint()
    if not embedded and answers(endpoint):
        if data_dir is not None:
            console.print(
                f"note: using the server at {endpoint}; --data-dir only applies to an embedded server", soft_wrap=True
            )
        yield Connection(endpoint)
        return
    if not embedded and not is_loopback(endpoint):
        raise _fail(f"no Kiln server answers at {endpoint}")
    if not embedded:
        console.print(f"no Kiln server answers at {endpoint}: starting an embedded one for this render", soft_wrap=True)
    try:
        # Its jobs render your scene into your folders: they run as you (a shared `kiln server`
        # running as root runs jobs as an unprivileged user instead; docs/security.md).
        server = start_embedded_server(data_dir, job_user=pwd.getpwuid(os.geteuid()).pw_name)
    except (EmbeddedServerError, OSError) as exc:
        hint = "use that server's --endpoint-url, or another --data-dir" if "already using" in str(exc) else ""
        raise _fail(f"could not start an embedded Kiln server: {exc}" + (f"; {hint}" if hint else "")) from None
    console.print(f"embedded Kiln server on {server.endpoint} (data dir {server.data_dir})", soft_wrap=True)
    connection = Connection(server.endpoint, server)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield connection
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not connection.keep_server:
            server.stop()


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> NoReturn:
    """A terminated `kiln render` still stops the embedded server it started (no orphan server)."""
    raise SystemExit(128 + signum)


def _submit(
    batch: object,
    plan: RenderPlan,
    connection: Connection,
    *,
    queue: str,
    vcpus: float | None,
    memory_mib: int | None,
    gpus: int = 0,
    job_role_arn: str | None = None,
    licenses: list[tuple[str, int]] | None = None,
) -> SubmittedPipeline:
    try:
        if ensure_queue(batch, queue):
            console.print(f"created job queue {queue} (compute environment {queue}-ce)")
        definition, registered = ensure_definition(batch, DEFINITION_NAME, job_role_arn)
        if registered:
            console.print(f"registered job definition {definition} (image kiln/render)")
        jobs = submit_pipeline(batch, plan, queue=queue, definition=definition, vcpus=vcpus, memory_mib=memory_mib,
                               gpus=gpus, licenses=licenses or [])  # fmt: skip
    except PlanError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except (ClientError, BotoCoreError) as exc:
        raise _fail(f"the server at {connection.endpoint} refused the pipeline: {exc}") from None
    return jobs


def _say_submitted(jobs: SubmittedPipeline, plan: RenderPlan, queue: str, endpoint: str) -> None:
    each = f"{plan.frames_per_job} frame{'s' if plan.frames_per_job > 1 else ''} each"
    shape = f"an array of {jobs.slices} jobs, {each}" if jobs.slices > 1 else "one job"
    console.print(
        f"submitted {jobs.render_name} ({jobs.render_id}: {shape}, frames {_span(plan.frames)}) "
        f"and {jobs.stitch_name} ({jobs.stitch_id}) to queue {queue}",
        soft_wrap=True,
    )
    console.print(f"dashboard: {dashboard_url(endpoint, jobs.stitch_id)}", soft_wrap=True, markup=False)
    console.print(f"render jobs: {dashboard_url(endpoint, jobs.render_id)}", soft_wrap=True, markup=False)


def dashboard_url(endpoint: str, job_id: str) -> str:
    """A job's page in the web dashboard the server serves at /ui."""
    return f"{endpoint.rstrip('/')}/ui/#/jobs/{job_id}"


def _stop_watching(jobs: SubmittedPipeline, connection: Connection) -> None:
    """Ctrl-C: the jobs keep running; say how to follow or cancel them, and settle an embedded server."""
    console.print("\nstopped watching; the jobs keep running")
    server = connection.server
    if server is not None and _ask_to_stop(server):
        server.stop()
        console.print("stopped the embedded server, and its jobs with it")
        return
    if server is not None:
        connection.keep_server = True
        console.print(
            f"the embedded Kiln server keeps running (pid {server.pid}, data dir {server.data_dir}); "
            f"stop it with: kill {server.pid}",
            soft_wrap=True,
        )
    flag = _endpoint_flag(connection.endpoint)
    console.print(
        f"follow:  kiln jobs{flag}  ·  kiln logs {_first_child(jobs)}{flag} --follow\n"
        f"result:  kiln describe {jobs.stitch_id}{flag}\n"
        f"cancel:  aws batch terminate-job{flag} --job-id {jobs.render_id} --reason 'cancelled'"
        f"  (the stitch job then fails as a dependent)",
        soft_wrap=True,
        markup=False,
    )


def _ask_to_stop(server: EmbeddedServer) -> bool:
    """Only a person at a terminal is asked; without one the server (and the jobs) keep running."""
    if not sys.stdin.isatty():
        return False
    try:
        return typer.confirm("Stop the embedded Kiln server too? That stops the jobs", default=False)
    except (typer.Abort, KeyboardInterrupt, EOFError):
        return False


def _report(outcome: Outcome, plan: RenderPlan, jobs: SubmittedPipeline, connection: Connection) -> None:
    if outcome.succeeded:
        console.print(
            f"[green]done:[/green] {plan.frame_count} frames ({_span(plan.frames)}) rendered and stitched "
            f"in {_duration(outcome.elapsed_seconds)}\n"
            f"  video:  {escape(plan.video_uri)}\n"
            f"  frames: {escape(plan.frames_uri)}/",
            soft_wrap=True,
        )
        return
    failed = outcome.failed or outcome.stitch
    lines = [f"the render pipeline failed: {failure_line(failed)}"]
    lines.append(f"  see why:  {_logs_hint(failed['jobId'], connection)}")
    if failed["jobId"] != jobs.stitch_id:
        lines.append(f"  the stitch job {jobs.stitch_id} did not run {_reason(outcome)}")
    lines += frame_lines(outcome.frames, plan)
    raise _fail("\n".join(lines))


def frame_lines(frames: FrameCount, plan: RenderPlan) -> list[str]:
    """Where the frames stand after a failure, saying only what was seen from here."""
    where = f"{plan.frames_uri}/"
    if frames.seen is None:
        return [f"  {where} cannot be listed from here ({frames.listing_error}); the render jobs report "
                f"{frames.reported} of {plan.frame_count} frames done"]  # fmt: skip
    lines = [f"  {frames.seen} of {plan.frame_count} frames are in {where}"]
    if frames.reported > frames.seen:
        lines.append(
            f"  the render jobs report {frames.reported} frames done, but only {frames.seen} are in {where} as "
            "seen from here: the jobs wrote them where this machine cannot see (on a cluster whose nodes share "
            "no disk with it, name an s3:// output)"
        )
    if frames.seen:
        lines.append("  the same command again renders only the missing ones")
    return lines


def _reason(outcome: Outcome) -> str:
    reason = outcome.stitch.get("statusReason")
    return f"({reason})" if reason else "(it fails as a dependent)"


def _logs_hint(job_id: str, connection: Connection) -> str:
    """`kiln logs ID`; after an embedded server stopped, its state is read by starting a server on its data dir."""
    if connection.server is None or connection.keep_server:
        return f"kiln logs {job_id}{_endpoint_flag(connection.endpoint)}"
    return f"kiln server --data-dir {connection.server.data_dir} & kiln logs {job_id}"


def _endpoint_flag(endpoint: str) -> str:
    return "" if endpoint.rstrip("/") == DEFAULT_ENDPOINT else f" --endpoint-url {endpoint}"


def _first_child(jobs: SubmittedPipeline) -> str:
    return f"{jobs.render_id}:0" if jobs.slices > 1 else jobs.render_id


def _span(frames: range) -> str:
    return f"{frames.start}-{frames[-1]}" if len(frames) > 1 else str(frames.start)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)
