"""The add-on's parts that need no Blender, checked against Kiln's own: signing (botocore's signer and
a real `kiln server --auth sigv4`), the job shapes (`kiln render`'s), packing (the same bytes as
kiln/render/packing.py), and the zip `kiln blender-addon` builds.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kiln.blender_addon.kiln_blender import packing as addon_packing
from kiln.blender_addon.kiln_blender import pipeline, sigv4, storage
from kiln.blender_addon.kiln_blender.batch_api import (
    ApiError,
    AuthRefusedError,
    BatchClient,
    Connection,
    KilnError,
    NotReachableError,
)
from kiln.cli import render_pipeline
from kiln.render.packing import pack_scene
from tests.conftest import Key, KilnServer, free_port
from tests.render.test_packing import build_project

from .conftest import run_blender

AT = datetime(2026, 12, 7, 15, 4, 5, tzinfo=UTC)
KEY, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def botocore_signature(
    method: str, url: str, headers: dict[str, str], body: bytes, service: str, token: str = ""
) -> str:
    """botocore's Authorization header for the same request at the same time."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    request.context["timestamp"] = AT.strftime(SIGV4_TIMESTAMP)
    signer_class = S3SigV4Auth if service == "s3" else SigV4Auth
    signer = signer_class(Credentials(KEY, SECRET, token or None), service, "eu-west-1")
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signed = signer.signed_headers(signer.headers_to_sign(request))
    scope = f"{AT:%Y%m%d}/eu-west-1/{service}/aws4_request"
    return f"AWS4-HMAC-SHA256 Credential={KEY}/{scope}, SignedHeaders={signed}, Signature={signature}"


@pytest.mark.parametrize(
    ("method", "url", "headers", "body", "service", "token"),
    [
        ("POST", "http://127.0.0.1:8642/v1/submitjob", {"Content-Type": "application/json"}, b'{"a": 1}', "batch", ""),
        ("POST", "https://batch.eu-west-1.amazonaws.com/v1/describejobs", {"Content-Type": "application/json"},
         b"{}", "batch", "session-token"),
        ("GET", "http://localhost:9000/kiln/v1/relay/out-1/frames?list", {}, b"", "batch", ""),
        ("GET", "http://host:80/kiln/v1/relay/a%20b/x?b=2&a=1&a=0", {}, b"", "batch", ""),
        ("PUT", "https://bucket.s3.eu-west-1.amazonaws.com/packs/a%2Bb.zip", {"Content-Type": "application/zip"},
         None, "s3", ""),
    ],
)  # fmt: skip
def test_signatures_equal_botocores(
    method: str, url: str, headers: dict[str, str], body: bytes | None, service: str, token: str
) -> None:
    ours = sigv4.sign(
        method, url, headers, body, access_key_id=KEY, secret_access_key=SECRET, region="eu-west-1",
        service=service, session_token=token, now=AT,
    )  # fmt: skip
    theirs_headers = {name: value for name, value in ours.items() if name != "Authorization"}
    assert ours["Authorization"] == botocore_signature(method, url, theirs_headers, body or b"", service, token)
    assert ours["X-Amz-Date"] == AT.strftime(SIGV4_TIMESTAMP)
    if body is None:
        assert ours["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"


def test_the_client_signs_for_a_real_sigv4_server_and_says_why_it_is_refused(secured: tuple[KilnServer, Key]) -> None:
    server, key = secured
    good = BatchClient(Connection(server.endpoint, key.access_key_id, key.secret))
    assert "jobQueues" in good.call("DescribeJobQueues", {})
    # The relay routes take the same signatures: a streamed (unsigned-payload) upload, a listing, a download.
    relay = storage.Relay(good.connection, "out-addon-test")
    assert relay.listing("packs") == {}
    with pytest.raises(AuthRefusedError, match="refused the access key"):
        BatchClient(Connection(server.endpoint, key.access_key_id, "wrong")).call("DescribeJobQueues", {})
    with pytest.raises(AuthRefusedError, match="needs an access key"):
        BatchClient(Connection(server.endpoint)).call("DescribeJobQueues", {})
    with pytest.raises(NotReachableError, match="is not reachable"):
        BatchClient(Connection(f"http://127.0.0.1:{free_port()}")).call("DescribeJobQueues", {})
    with pytest.raises(ApiError, match="SubmitJob failed"):
        good.call("SubmitJob", {"jobName": "x", "jobQueue": "no-such-queue", "jobDefinition": "no-such"})
    with pytest.raises(KilnError, match="does not exist"):
        pipeline.ensure_queue(good, "no-such-queue")
    with pytest.raises(KilnError, match="is not an http"):
        BatchClient(Connection("127.0.0.1:8642"))


def test_relay_upload_and_download_with_signatures(secured: tuple[KilnServer, Key], tmp_path: Path) -> None:
    server, key = secured
    relay = storage.Relay(Connection(server.endpoint, key.access_key_id, key.secret), "out-addon-relay")
    source = tmp_path / "pack.zip"
    source.write_bytes(b"pack bytes" * 1000)
    relay.put(source, "packs/pack.zip")
    assert relay.listing("packs") == {"pack.zip": 10_000}
    relay.get("packs/pack.zip", tmp_path / "back" / "pack.zip")
    assert (tmp_path / "back" / "pack.zip").read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    ("frames", "per_job", "given", "resolution", "samples"),
    [(range(1, 4), 2, True, 20, 2), (range(1, 13), 1, False, None, None), (range(-5, 10, 3), 4, True, None, 8)],
)
def test_job_shapes_are_kiln_renders(
    frames: range, per_job: int, given: bool, resolution: int | None, samples: int | None
) -> None:
    ours = pipeline.Plan("/p/My Shot.blend", "/out", frames, per_job, given, resolution, samples, "/out/packs/x.zip")
    theirs = render_pipeline.RenderPlan(
        "/p/My Shot.blend", "/out", frames, per_job, given, resolution, samples, "/out/packs/x.zip"
    )
    assert ours.render_command() == theirs.render_command()
    assert ours.stitch_command() == theirs.stitch_command()
    assert (ours.slices, ours.video_uri, ours.frames_uri) == (theirs.slices, theirs.video_uri, theirs.frames_uri)
    assert pipeline.job_base_name(ours.scene_uri) == render_pipeline.job_base_name(theirs.scene_uri)
    assert pipeline.render_definition() == render_pipeline.render_definition()
    assert (pipeline.DEFAULT_QUEUE, pipeline.DEFINITION_NAME) == (
        render_pipeline.DEFAULT_QUEUE,
        render_pipeline.DEFINITION_NAME,
    )
    request = pipeline.render_request(ours, "q", "kiln-render:1")
    assert ("arrayProperties" in request) == (theirs.slices > 1)


def test_packs_are_the_bytes_kiln_render_packs(tmp_path: Path) -> None:
    project = build_project(tmp_path / "project")
    for scene in (project.scene, project.compressed):
        theirs = pack_scene(scene, tmp_path / "theirs")
        ours = addon_packing.pack_scene(scene, tmp_path / "ours")
        assert ours.digest == theirs.digest == hashlib.sha256(ours.archive.read_bytes()).hexdigest()
        assert ours.archive.name == f"{ours.digest}.zip"
        assert ours.missing == ()
    # The add-on packs a copy saved beside the artist's file, named back as the original in the pack.
    copy = project.scene.with_name(".kiln-submit-0123.blend")
    shutil.copyfile(project.scene, copy)
    renamed = addon_packing.pack_scene(copy, tmp_path / "copy", scene_name=project.scene.name)
    assert renamed.digest == pack_scene(project.scene, tmp_path / "theirs").digest


def test_the_zip_is_an_extension_and_a_legacy_add_on_carrying_bat(addon_zip: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(addon_zip) as archive:
        names = archive.namelist()
        manifest = tomllib.loads(archive.read("kiln_blender/blender_manifest.toml").decode())
        init = archive.read("kiln_blender/__init__.py").decode()
        wheel_name = manifest["wheels"][0].removeprefix("./")
        wheel = tmp_path / Path(wheel_name).name
        wheel.write_bytes(archive.read(f"kiln_blender/{wheel_name}"))
    assert {name.split("/")[0] for name in names} == {"kiln_blender"}
    assert manifest["id"] == "kiln_blender" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] >= "4.2.0" and manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert "bl_info = {" in init and not any(name.endswith(".pyc") for name in names)
    # The wheel alone (no site-packages: -S) gives a working Blender Asset Tracer.
    done = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(wheel)!r}); "
         "import blender_asset_tracer.pack, blender_asset_tracer.trace; print(blender_asset_tracer.__file__)"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(wheel))
    with zipfile.ZipFile(wheel) as built:
        record = built.read("blender_asset_tracer-1.23.dist-info/RECORD").decode()
        for line in record.splitlines():
            name, digest, size = line.rsplit(",", 2)
            if digest:
                data = built.read(name)
                assert int(size) == len(data), name
    # The same sources give the same bytes.
    again = tmp_path / "again.zip"
    from kiln.blender_addon.build import build_addon

    build_addon(again)
    assert again.read_bytes() == addon_zip.read_bytes()


def test_the_zip_installs_as_a_blender_extension(addon_zip: Path, tmp_path: Path) -> None:
    """Blender 4.2+'s extension installer takes the zip: the manifest is valid, the BAT wheel is installed."""
    run = run_blender(
        """
        import os
        from pathlib import Path
        answer = bpy.ops.extensions.package_install_files(filepath=addon_zip, repo="user_default", enable_on_install=True)
        module = "bl_ext.user_default.kiln_blender"
        import blender_asset_tracer
        result = {
            "answer": sorted(answer),
            "server_url": bpy.context.preferences.addons[module].preferences.server_url,
            "queue": bpy.context.scene.kiln.job_queue,
            "submit": hasattr(bpy.ops.kiln, "submit"),
            "wheel_installed": any(path.name.startswith("blender_asset_tracer")
                                   for path in Path(os.environ["BLENDER_USER_EXTENSIONS"], ".local").rglob("*")),
        }
        """,
        tmp_path / "home",
        install=False,
        timeout=120,
        addon_zip=str(addon_zip),
    )
    assert run.result == {
        "answer": ["FINISHED"],
        "server_url": "http://127.0.0.1:8642",
        "queue": "kiln-render",
        "submit": True,
        "wheel_installed": True,
    }


def test_aws_batch_has_no_relay_and_is_not_asked() -> None:
    """An AWS endpoint is never sent Kiln's relay request (nothing listens on this address)."""
    assert storage.relay_info(Connection("https://batch.eu-west-1.amazonaws.com")) is None
