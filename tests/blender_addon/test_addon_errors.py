"""What an artist sees when something is wrong, and signing with a real key: the add-on in real Blender
against a real `kiln server --auth sigv4` (one key from `kiln keys create`).

Each failure must come back as the operator's report (`bpy.ops` raises it as a RuntimeError in a
script: "Error: Kiln: ..."), not as a traceback of the add-on. The good key submits for real
(wait=False) and cancels from Blender; the scene is packed with the Blender Asset Tracer of the
add-on's wheel, the one a Blender without Kiln has.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import boto3

from tests.conftest import Key, KilnServer, free_port

from .conftest import run_blender

ONLY_THE_WHEEL = """
import importlib.machinery, os, sys

class OnlyTheWheel:
    # Blender Asset Tracer from the add-on's wheel only, as in a Blender without Kiln installed.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "blender_asset_tracer":
            return None
        wheels = [entry for entry in sys.path if entry.endswith(".whl")]
        spec = importlib.machinery.PathFinder.find_spec(name, path if path is not None else wheels)
        if spec is None:
            raise ModuleNotFoundError(name)
        return spec

sys.meta_path.insert(0, OnlyTheWheel())
"""

SCRIPT = """
prefs = bpy.context.preferences.addons["kiln_blender"].preferences
settings = bpy.context.scene.kiln
reports = {}

def attempt(case, **changes):
    for name, value in changes.items():
        setattr(prefs if name in ("server_url", "access_key_id", "secret_access_key") else settings, name, value)
    try:
        answer = sorted(bpy.ops.kiln.submit())
    except RuntimeError as error:
        answer = str(error)
    reports[case] = {"answer": answer, "message": settings.message, "state": settings.state}

prefs.server_url, prefs.access_key_id, prefs.secret_access_key = endpoint, key_id, secret
attempt("never_saved")
bpy.ops.wm.open_mainfile(filepath=scene)
settings = bpy.context.scene.kiln
settings.resolution_percent, settings.samples = 10, 1
settings.output = output
attempt("wrong_key", secret_access_key="not-the-secret")
attempt("unreachable", server_url=unreachable, secret_access_key=secret)
attempt("queue_missing", server_url=endpoint, job_queue="no-such-queue")
attempt("not_writable", job_queue="kiln-render", output=os.path.join(blocker, "out"))
settings.output = output
attempt("submitted")
submitted = {"render": settings.last_job_id, "stitch": settings.last_stitch_job_id, "kiln_state": settings.state}
ui = sys.modules["kiln_blender.ui"]
submitted["poll"] = ui._poll_timer(bpy.context.scene.name)  # what the UI's timer runs: poll again in 1 s


class Layout:
    # Enough of UILayout to run the panel's and the status bar's draw code without a window.
    use_property_split = False
    drawn = []

    def prop(self, data, name, **_):
        assert name in data.bl_rna.properties, name
        self.drawn.append(name)

    def operator(self, idname, **_):
        group, _, name = idname.partition(".")
        assert hasattr(getattr(bpy.ops, group), name), idname
        self.drawn.append(idname)

    def label(self, text="", **_):
        self.drawn.append(text)

    def progress(self, factor=0.0, text="", **_):
        assert 0.0 <= factor <= 1.0
        self.drawn.append(text)

    def row(self, **_):
        return self

    box = row


class Drawer:
    layout = Layout()


ui.KILN_PT_render.draw(Drawer(), bpy.context)
ui.draw_status(Drawer(), bpy.context)
submitted["drawn"] = Layout.drawn
cancelled = sorted(bpy.ops.kiln.cancel())
submitted["poll_after_cancel"] = ui._poll_timer(bpy.context.scene.name)
import blender_asset_tracer
result = {
    "reports": reports,
    **submitted,
    "cancelled": cancelled,
    "after_cancel": settings.state,
    "bat": blender_asset_tracer.__file__,
    "key_in_blend": None,
}
# The connection lives in the preferences, never in the .blend.
bpy.ops.wm.save_as_mainfile(filepath=saved, copy=True)
result["key_in_blend"] = secret.encode() in open(saved, "rb").read() or key_id.encode() in open(saved, "rb").read()
"""


def test_failures_are_reports_and_a_good_key_submits_and_cancels(
    secured: tuple[KilnServer, Key], addon_zip: Path, sample_scene: Path, tmp_path: Path
) -> None:
    server, key = secured
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run = run_blender(
        SCRIPT,
        tmp_path / "home",
        timeout=120,
        prelude=ONLY_THE_WHEEL,
        addon_zip=str(addon_zip),
        scene=str(sample_scene),
        endpoint=server.endpoint,
        unreachable=f"http://127.0.0.1:{free_port()}",
        key_id=key.access_key_id,
        secret=key.secret,
        output=str(tmp_path / "out"),
        blocker=str(blocker),
        saved=str(tmp_path / "saved.blend"),
    )
    result = run.result
    reports = result["reports"]
    for case in ("never_saved", "wrong_key", "unreachable", "queue_missing", "not_writable"):
        answer = reports[case]["answer"]
        assert isinstance(answer, str) and answer.startswith("Error: Kiln: "), (case, answer)
        assert "Traceback" not in answer, (case, answer)
        assert answer.strip().endswith(reports[case]["message"]), (case, answer)
    assert "save the .blend file first" in reports["never_saved"]["message"]
    assert reports["wrong_key"]["message"].startswith(f"the Kiln server at {server.endpoint} refused the access key")
    assert key.access_key_id in reports["wrong_key"]["message"]
    assert reports["wrong_key"]["state"] == "FAILED"
    assert "is not reachable" in reports["unreachable"]["message"]
    assert "the job queue no-such-queue does not exist" in reports["queue_missing"]["message"]
    assert "is not writable" in reports["not_writable"]["message"]
    assert "Traceback" not in run.stderr, run.stderr

    assert reports["submitted"]["answer"] == ["FINISHED"], reports["submitted"]
    assert result["kiln_state"] == "RUNNING"
    assert result["poll"] == 1.0 and result["poll_after_cancel"] is None
    drawn = result["drawn"]
    assert {"job_queue", "frames_per_job", "output", "kiln.submit", "kiln.cancel", "kiln.open_dashboard"} <= set(drawn)
    bars = [text for text in drawn if re.fullmatch(r"Kiln: [0-4]/4 frames", text)]
    assert len(bars) == 2, drawn  # the progress bar, in the panel and in the status bar
    assert result["cancelled"] == ["FINISHED"] and result["after_cancel"] == "CANCELLED"
    assert ".whl" in result["bat"]
    assert result["key_in_blend"] is False
    client = _client(server, key)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = client.describe_jobs(jobs=[result["render"], result["stitch"]])["jobs"]
        if all(job["status"] == "FAILED" for job in jobs):
            break
        time.sleep(0.2)
    assert [job["status"] for job in jobs] == ["FAILED", "FAILED"], jobs
    assert "cancelled from Blender" in jobs[0]["statusReason"]


def _client(server: KilnServer, key: Key) -> Any:
    return boto3.client(
        "batch",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret,
    )
