"""The add-on's Blender side: preferences, `scene.kiln`, the Render Properties panel, the operators.

Names other tools rely on (issue 20): the preferences of the add-on (`server_url`,
`access_key_id`, `secret_access_key`; user preferences, never saved in a .blend),
`scene.kiln` (`job_queue`, `frames_per_job`, `output`, `progress`, `last_job_id`) and the
operators `kiln.submit(wait=False)`, `kiln.cancel`, `kiln.open_result`, `kiln.open_dashboard`.

Every `KilnError` becomes one line in Blender's report (`self.report({'ERROR'}, ...)`); a bug
of the add-on is reported the same way, with the traceback only in the console.

No `from __future__ import annotations` here: Blender reads the property annotations at register time.
"""

import os
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import batch_api, packing, pipeline, storage
from .batch_api import BatchClient, Connection, KilnError

ADDON = __package__ or "kiln_blender"  # `bl_ext.<repository>.kiln_blender` when installed as an extension
POLL_SECONDS = 1.0
WAIT_POLL_SECONDS = 0.5
SERVER_GONE_SECONDS = 60.0  # polls failing this long in a row: stop following (the jobs are not touched)


def preferences(context: Any) -> Any:
    addon = context.preferences.addons.get(ADDON)
    if addon is None:
        raise KilnError(f"the Kiln add-on ({ADDON}) is not enabled")
    return addon.preferences


class KilnPreferences(bpy.types.AddonPreferences):
    """The connection: stored with Blender's preferences, never in a .blend file."""

    bl_idname = ADDON

    server_url: StringProperty(  # type: ignore[valid-type]
        name="Server URL",
        description="The Kiln server (or AWS Batch endpoint, https://batch.REGION.amazonaws.com)",
        default="http://127.0.0.1:8642",
    )
    access_key_id: StringProperty(  # type: ignore[valid-type]
        name="Access Key ID", description="For a `kiln server --auth sigv4` (from `kiln keys create`) or AWS"
    )
    secret_access_key: StringProperty(  # type: ignore[valid-type]
        name="Secret Access Key", subtype="PASSWORD", description="The access key's secret"
    )
    region: StringProperty(  # type: ignore[valid-type]
        name="Region", default="us-east-1", description="The region requests are signed for (the server's --region)"
    )
    s3_endpoint_url: StringProperty(  # type: ignore[valid-type]
        name="S3 Endpoint", description="Where s3:// packs are uploaded when the server has no relay (empty: AWS S3)"
    )
    relay: EnumProperty(  # type: ignore[valid-type]
        name="Through the Server",
        description="Send a local output's files through the Kiln server's relay (as `kiln render --relay`)",
        items=[
            ("AUTO", "Automatic", "When the server's jobs cannot see this machine's files (a server elsewhere)"),
            ("ALWAYS", "Always", "The pack and the frames always travel through the server"),
            ("NEVER", "Never", "The jobs read and write the local output folder directly (a shared disk)"),
        ],
        default="AUTO",
    )

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.prop(self, "server_url")
        layout.prop(self, "access_key_id")
        layout.prop(self, "secret_access_key")
        layout.prop(self, "region")
        layout.prop(self, "s3_endpoint_url")
        layout.prop(self, "relay")


class KilnSceneSettings(bpy.types.PropertyGroup):
    """`scene.kiln`: what to render, and how the last submission is doing."""

    job_queue: StringProperty(name="Job Queue", default=pipeline.DEFAULT_QUEUE)  # type: ignore[valid-type]
    job_definition: StringProperty(  # type: ignore[valid-type]
        name="Job Definition",
        default=pipeline.DEFINITION_NAME,
        description="A definition running the workshop's command (kiln-render is registered when missing)",
    )
    frames_per_job: IntProperty(name="Frames per Job", default=1, min=1, soft_max=100)  # type: ignore[valid-type]
    use_scene_range: BoolProperty(  # type: ignore[valid-type]
        name="Scene Frame Range", default=True, description="Render the scene's frame range"
    )
    frame_start: IntProperty(name="Start", default=1)  # type: ignore[valid-type]
    frame_end: IntProperty(name="End", default=250)  # type: ignore[valid-type]
    resolution_percent: IntProperty(  # type: ignore[valid-type]
        name="Resolution %", default=0, min=0, max=32767, description="0: the scene's own"
    )
    samples: IntProperty(name="Samples", default=0, min=0, description="0: the scene's own")  # type: ignore[valid-type]
    output: StringProperty(  # type: ignore[valid-type]
        name="Output",
        default="//kiln_render/",
        subtype="DIR_PATH",
        description="Folder for frames/ and output.mp4: a local path (// is the .blend's folder) or s3://bucket/prefix",
    )
    progress: FloatProperty(  # type: ignore[valid-type]
        name="Progress", subtype="PERCENTAGE", min=0.0, max=100.0, options={"SKIP_SAVE"}
    )
    frames_done: IntProperty(name="Frames Done", options={"SKIP_SAVE"})  # type: ignore[valid-type]
    frames_total: IntProperty(name="Frames", options={"SKIP_SAVE"})  # type: ignore[valid-type]
    failed_jobs: IntProperty(name="Failed Jobs", options={"SKIP_SAVE"})  # type: ignore[valid-type]
    state: EnumProperty(  # type: ignore[valid-type]
        name="State",
        items=[
            ("NONE", "None", ""),
            ("SUBMITTING", "Submitting", ""),
            ("RUNNING", "Running", ""),
            ("SUCCEEDED", "Succeeded", ""),
            ("FAILED", "Failed", ""),
            ("CANCELLED", "Cancelled", ""),
        ],
        default="NONE",
    )
    message: StringProperty(name="Message")  # type: ignore[valid-type]
    last_job_id: StringProperty(name="Render Job ID")  # type: ignore[valid-type]
    last_stitch_job_id: StringProperty(name="Stitch Job ID")  # type: ignore[valid-type]
    dashboard_url: StringProperty(name="Dashboard")  # type: ignore[valid-type]
    result: StringProperty(name="Result", description="The MP4: a local path or a URI")  # type: ignore[valid-type]


@dataclass
class Watch:
    """A submission being followed: enough to poll it, mirror it and cancel it."""

    scene_name: str
    connection: Connection
    plan: pipeline.Plan
    jobs: pipeline.Submitted
    local_output: Path | None  # frames are counted here (and copied here from the relay)
    mirror: storage.Mirror | None = None
    failing_since: float | None = None  # when polls started failing (a server gone for good ends the watch)


_watches: dict[str, Watch] = {}


def _connection(context: Any) -> Connection:
    prefs = preferences(context)
    return Connection(prefs.server_url, prefs.access_key_id, prefs.secret_access_key, prefs.region or "us-east-1")


def _frames(scene: Any, settings: Any) -> tuple[range, bool]:
    step = max(1, scene.frame_step)
    if settings.use_scene_range:
        return range(scene.frame_start, scene.frame_end + 1, step), False
    if settings.frame_end < settings.frame_start:
        raise KilnError(f"the frame range {settings.frame_start}-{settings.frame_end} ends before it starts")
    return range(settings.frame_start, settings.frame_end + 1, step), True


def _output(settings: Any) -> tuple[str, Path | None]:
    """(output URI as the jobs get it, the local folder or None for s3://)."""
    text = settings.output.strip()
    if not text:
        raise KilnError("set an output folder in the Kiln panel")
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    if "://" in text:
        if not text.startswith("s3://") or len(text) <= len("s3://"):
            raise KilnError(f"the output {text} is neither a local folder nor an s3://bucket/prefix")
        return text.rstrip("/"), None
    local = Path(os.path.abspath(bpy.path.abspath(text)))
    return str(local), local


def submit(context: Any, wait: bool, report: Any) -> bool:
    """Everything the Submit button does; raises KilnError. Returns whether it succeeded (wait) or was submitted."""
    scene = context.scene
    settings = scene.kiln
    if not bpy.data.filepath:
        raise KilnError(
            "save the .blend file first: Kiln renders a saved copy and finds its textures and libraries from where the file is"
        )
    if scene.name in _watches and settings.state == "RUNNING":
        raise KilnError(f"a render of this scene is still running ({settings.last_job_id}): cancel it or wait for it")
    frames, frames_given = _frames(scene, settings)
    output_uri, local_output = _output(settings)
    if local_output is not None:
        storage.check_writable(local_output)
    connection = _connection(context)
    batch = BatchClient(connection)
    settings.state, settings.message = "SUBMITTING", ""
    settings.progress, settings.frames_done, settings.frames_total, settings.failed_jobs = 0.0, 0, len(frames), 0
    pipeline.ensure_queue(batch, settings.job_queue.strip() or pipeline.DEFAULT_QUEUE)
    definition = pipeline.ensure_definition(batch, settings.job_definition.strip() or pipeline.DEFINITION_NAME)
    relay = _relay_for(connection, local_output, preferences(context).relay)
    scene_path = Path(bpy.data.filepath)
    plan = pipeline.Plan(
        scene_uri=str(scene_path),
        output_uri=relay.uri if relay is not None else output_uri,
        frames=frames,
        frames_per_job=settings.frames_per_job,
        frames_given=frames_given,
        resolution_percent=settings.resolution_percent or None,
        samples=settings.samples or None,
    )
    plan.check()
    pack_uri = _pack_and_store(scene_path, plan, connection, relay, local_output, report)
    plan = pipeline.Plan(**{**plan.__dict__, "pack_uri": pack_uri})
    queue = settings.job_queue.strip() or pipeline.DEFAULT_QUEUE
    jobs = pipeline.submit(batch, plan, queue, definition)
    mirror = storage.Mirror(relay, local_output) if relay is not None and local_output is not None else None
    watch = Watch(scene.name, connection, plan, jobs, local_output, mirror)
    _watches[scene.name] = watch
    settings.last_job_id, settings.last_stitch_job_id = jobs.render_id, jobs.stitch_id
    settings.dashboard_url = pipeline.dashboard_url(connection.endpoint, jobs.render_id)
    settings.result = str(local_output / pipeline.VIDEO_NAME) if local_output is not None else plan.video_uri
    settings.state = "RUNNING"
    shape = f"an array of {jobs.slices} jobs" if jobs.slices > 1 else "one job"
    settings.message = f"submitted {len(frames)} frames as {shape} ({jobs.render_id}) and a stitch job to {queue}"
    report({"INFO"}, f"Kiln: {settings.message}")
    if not wait:
        # Followed from a timer in the UI. Not in background mode: a registered timer keeps a
        # background Blender (and the bpy module) from exiting; scripts pass wait=True instead.
        if not bpy.app.background:
            name = scene.name
            bpy.app.timers.register(lambda: _poll_timer(name), first_interval=POLL_SECONDS)
        _redraw()
        return True
    while True:
        if not _update(watch, scene):
            break
        time.sleep(WAIT_POLL_SECONDS)
    return settings.state == "SUCCEEDED"


def _relay_for(connection: Connection, local_output: Path | None, mode: str = "AUTO") -> storage.Relay | None:
    """The relay area for a local output the server's jobs cannot see (None: they see it, or s3://)."""
    info = storage.relay_info(connection)
    if local_output is None or mode == "NEVER":
        return None
    if mode == "ALWAYS":
        if info is None:
            raise KilnError(
                f"{connection.endpoint} has no relay (not a Kiln server?): set Through the Server to Automatic"
            )
        return storage.Relay(connection, storage.relay_area(local_output))
    if info is None:
        if storage.is_loopback(connection.endpoint):
            return None  # a Kiln server of old on this machine: its jobs see this disk
        raise KilnError(
            f"a local output folder needs a Kiln server on this machine or one with a relay; {connection.endpoint} "
            "has none (AWS Batch): use an s3:// output"
        )
    if bool(info.get("filesReachJobs", True)) and storage.is_loopback(connection.endpoint):
        return None
    return storage.Relay(connection, storage.relay_area(local_output))


def _pack_and_store(
    scene_path: Path,
    plan: pipeline.Plan,
    connection: Connection,
    relay: storage.Relay | None,
    local_output: Path | None,
    report: Any,
) -> str:
    """Save a copy of the open file beside it (so its relative paths stay right), pack the copy,
    put the pack where the jobs read it; returns its URI. The artist's file is never written."""
    copy = scene_path.with_name(f".kiln-submit-{uuid.uuid4().hex[:12]}.blend")
    with tempfile.TemporaryDirectory(prefix="kiln-pack-") as scratch:
        try:
            try:
                bpy.ops.wm.save_as_mainfile(filepath=str(copy), copy=True, check_existing=False)
            except RuntimeError as error:
                raise KilnError(f"cannot save a copy of the scene beside {scene_path}: {_one_line(error)}") from None
            packed = packing.pack_scene(copy, Path(scratch), scene_name=scene_path.name)
        finally:
            copy.unlink(missing_ok=True)
        for missing in packed.missing:
            report({"WARNING"}, f"Kiln: the scene uses {missing}, which is not there to pack: it renders without it")
        name = packed.archive.name
        if relay is not None:
            relay.put(packed.archive, f"packs/{name}")
            return f"{relay.uri}/packs/{name}"
        if local_output is not None:
            return str(storage.put_local(packed.archive, local_output / "packs"))
        relay_on_server = storage.relay_info(connection)
        if relay_on_server is not None:  # a Kiln server with an s3:// output: the pack travels through the relay
            area = storage.Relay(connection, "packs-" + packed.digest[:32])
            area.put(packed.archive, name)
            return f"{area.uri}/{name}"
        target = f"{plan.packs_uri}/{name}"
        storage.put_s3(connection, packed.archive, target, preferences(bpy.context).s3_endpoint_url)
        return target


def _count_local_frames(watch: Watch) -> int | None:
    if watch.local_output is None:
        return None
    try:
        names = os.listdir(watch.local_output / "frames")
    except FileNotFoundError:
        return 0
    except OSError:
        return None
    return len(pipeline.published_frames(names) & set(watch.plan.frames))


def _update(watch: Watch, scene: Any) -> bool:
    """One poll: mirror, count, update `scene.kiln`; returns whether to keep polling."""
    settings = scene.kiln
    batch = BatchClient(watch.connection)
    try:
        if watch.mirror is not None:
            watch.mirror.sync()
        seen = _count_local_frames(watch)
        progress = pipeline.look(batch, watch.jobs, watch.plan, seen)
    except KilnError as error:
        watch.failing_since = watch.failing_since or time.monotonic()
        if time.monotonic() - watch.failing_since > SERVER_GONE_SECONDS:
            return _finish(watch, scene, "FAILED", f"stopped following the render: {error}")
        settings.message = f"cannot follow the render: {error}"
        _redraw()
        return True  # a passing outage: keep polling (Cancel stops it)
    watch.failing_since = None
    settings.frames_done, settings.frames_total = progress.frames_done, progress.frames_total
    settings.failed_jobs = progress.failed_jobs
    settings.progress = progress.percent
    if not progress.finished:
        settings.message = f"{progress.frames_done}/{progress.frames_total} frames" + (
            f", {progress.failed_jobs} failed jobs" if progress.failed_jobs else ""
        )
        _redraw()
        return True
    if progress.succeeded:
        if watch.mirror is not None:
            try:
                watch.mirror.sync()
            except KilnError as error:
                return _finish(watch, scene, "FAILED", f"the render finished, but copying the video failed: {error}")
        if watch.local_output is not None and not (watch.local_output / pipeline.VIDEO_NAME).is_file():
            return _finish(watch, scene, "FAILED", f"the stitch job succeeded but {settings.result} is not there")
        settings.frames_done = progress.frames_total
        return _finish(watch, scene, "SUCCEEDED", f"done: {progress.frames_total} frames, video {settings.result}")
    return _finish(watch, scene, "FAILED", f"the render failed: {progress.reason} (see {settings.dashboard_url})")


def _finish(watch: Watch, scene: Any, state: str, message: str) -> bool:
    settings = scene.kiln
    settings.state, settings.message = state, message
    if state == "SUCCEEDED":
        settings.progress = 100.0
    _watches.pop(watch.scene_name, None)
    _redraw()
    return False


def _poll_timer(scene_name: str) -> float | None:
    scene = bpy.data.scenes.get(scene_name)
    watch = _watches.get(scene_name)
    if scene is None or watch is None or scene.kiln.state != "RUNNING":
        return None
    try:
        keep = _update(watch, scene)
    except Exception:  # a bug here must not kill Blender's timer loop silently
        traceback.print_exc()
        scene.kiln.message = "the Kiln add-on stopped following the render (see the console)"
        return None
    return POLL_SECONDS if keep else None


def _redraw() -> None:
    window_manager = getattr(bpy.context, "window_manager", None)
    for window in getattr(window_manager, "windows", []):
        for area in window.screen.areas:
            area.tag_redraw()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _run(operator: Any, action: Any) -> set[str]:
    """Run `action()`; a KilnError is the report, anything else a bug reported in one line."""
    try:
        return set(action())
    except KilnError as error:
        message = _one_line(error)
    except Exception as error:
        traceback.print_exc()
        message = f"the Kiln add-on failed unexpectedly ({type(error).__name__}: {_one_line(error)}); see the console"
    scene = bpy.context.scene
    if scene is not None and scene.kiln.state == "SUBMITTING":
        scene.kiln.state = "FAILED"
    if scene is not None:
        scene.kiln.message = message
    operator.report({"ERROR"}, f"Kiln: {message}")
    return {"CANCELLED"}


class KILN_OT_submit(bpy.types.Operator):
    """Save a copy of this file, pack it with what it uses, and render it on Kiln"""

    bl_idname = "kiln.submit"
    bl_label = "Submit to Kiln"
    bl_options = frozenset({"REGISTER"})

    wait: BoolProperty(  # type: ignore[valid-type]
        name="Wait", default=False, options={"SKIP_SAVE"}, description="Block until the stitch job ends (scripts)"
    )

    def execute(self, context: Any) -> set[str]:
        def action() -> set[str]:
            ok = submit(context, self.wait, self.report)
            if self.wait and not ok:
                raise KilnError(context.scene.kiln.message)
            return {"FINISHED"}

        return _run(self, action)


class KILN_OT_cancel(bpy.types.Operator):
    """Cancel the last render submitted from this scene (its render and stitch jobs)"""

    bl_idname = "kiln.cancel"
    bl_label = "Cancel Kiln Render"

    def execute(self, context: Any) -> set[str]:
        def action() -> set[str]:
            settings = context.scene.kiln
            if not settings.last_job_id:
                raise KilnError("nothing to cancel: this scene has not been submitted")
            jobs = pipeline.Submitted(settings.last_job_id, settings.last_stitch_job_id or settings.last_job_id, 0)
            pipeline.cancel(BatchClient(_connection(context)), jobs)
            _watches.pop(context.scene.name, None)
            settings.state, settings.message = "CANCELLED", f"cancelled {settings.last_job_id}"
            self.report({"INFO"}, f"Kiln: {settings.message}")
            _redraw()
            return {"FINISHED"}

        return _run(self, action)


class KILN_OT_open_result(bpy.types.Operator):
    """Open the rendered MP4"""

    bl_idname = "kiln.open_result"
    bl_label = "Open Result"

    def execute(self, context: Any) -> set[str]:
        def action() -> set[str]:
            result = context.scene.kiln.result
            if not result or "://" in result:
                raise KilnError(f"the video is at {result or 'no place yet'}: open it from there")
            if not os.path.isfile(result):
                raise KilnError(f"{result} is not there (yet)")
            bpy.ops.wm.path_open(filepath=result)
            return {"FINISHED"}

        return _run(self, action)


class KILN_OT_open_dashboard(bpy.types.Operator):
    """Open the render job in Kiln's web dashboard"""

    bl_idname = "kiln.open_dashboard"
    bl_label = "Open in Dashboard"

    def execute(self, context: Any) -> set[str]:
        def action() -> set[str]:
            url = context.scene.kiln.dashboard_url
            if not url:
                raise KilnError("nothing submitted yet")
            bpy.ops.wm.url_open(url=url)
            return {"FINISHED"}

        return _run(self, action)


class KILN_PT_render(bpy.types.Panel):
    bl_label = "Kiln"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.kiln
        try:
            prefs = preferences(context)
            layout.label(text=f"Server: {prefs.server_url}", icon="URL")
        except KilnError:
            pass
        layout.prop(settings, "job_queue")
        layout.prop(settings, "job_definition")
        layout.prop(settings, "frames_per_job")
        layout.prop(settings, "use_scene_range")
        if not settings.use_scene_range:
            row = layout.row(align=True)
            row.prop(settings, "frame_start")
            row.prop(settings, "frame_end")
        layout.prop(settings, "resolution_percent")
        layout.prop(settings, "samples")
        layout.prop(settings, "output")
        layout.operator(KILN_OT_submit.bl_idname, icon="RENDER_ANIMATION")
        if settings.state != "NONE":
            box = layout.box()
            box.label(text=f"{settings.state.title()}: {settings.message}")
            if settings.state == "RUNNING":
                box.progress(factor=settings.progress / 100.0, text=_status_text(settings))
                box.operator(KILN_OT_cancel.bl_idname, icon="CANCEL")
            if settings.dashboard_url:
                box.operator(KILN_OT_open_dashboard.bl_idname, icon="URL")
            if settings.state == "SUCCEEDED":
                box.operator(KILN_OT_open_result.bl_idname, icon="FILE_MOVIE")


def _status_text(settings: Any) -> str:
    text = f"Kiln: {settings.frames_done}/{settings.frames_total} frames"
    return text + (f", {settings.failed_jobs} failed jobs" if settings.failed_jobs else "")


def draw_status(self: Any, context: Any) -> None:
    """Kiln's progress in the status bar while a render of the current scene runs."""
    scene = context.scene
    if scene is None or scene.kiln.state != "RUNNING":
        return
    self.layout.progress(factor=scene.kiln.progress / 100.0, text=_status_text(scene.kiln))


CLASSES = (
    KilnPreferences,
    KilnSceneSettings,
    KILN_OT_submit,
    KILN_OT_cancel,
    KILN_OT_open_result,
    KILN_OT_open_dashboard,
    KILN_PT_render,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.kiln = PointerProperty(type=KilnSceneSettings)
    bpy.types.STATUSBAR_HT_header.append(draw_status)


def unregister() -> None:
    bpy.types.STATUSBAR_HT_header.remove(draw_status)
    del bpy.types.Scene.kiln
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    _watches.clear()


__all__ = ["batch_api", "register", "unregister"]
