"""Fetching a scene from S3 with the textures and libraries it names by relative paths.

A real S3-compatible server (moto on 127.0.0.1) holds the project that test_packing builds with
real Blender; the fetched copy is packed, unpacked and rendered, and the pixels say which textures
travelled. The scene is untrusted input: paths that leave its bucket are reported, never fetched.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from kiln.render.errors import BlendFileError, RenderError
from kiln.render.packing import PackingError, pack_scene, unpack_scene
from kiln.render.remote_scene import fetch_scene

from .conftest import run_bpy
from .test_packing import BLUE, MAGENTA, RED, Project, build_project, colours, render

BUCKET, OTHER_BUCKET = "kiln-remote-scene", "kiln-remote-other"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "kiln-test",
    "AWS_SECRET_ACCESS_KEY": "kiln-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SCENE_URI = f"s3://{BUCKET}/project/shots/scene.blend"
SCENE_DEPENDENCIES = (  # what the scene names, then what its library names (known once it is fetched)
    f"s3://{BUCKET}/project/library/props.blend",
    f"s3://{BUCKET}/project/shots/textures/red.png",
    f"s3://{BUCKET}/project/library/tex/blue.png",
)

# A scene of image paths (use_fake_user keeps an image without users in the file), saved at
# odd/shots/odd.blend: one present, one absent, one at the top of the bucket, two that leave the
# bucket, a frame sequence, UDIM tiles; and an object linked from a library by its absolute path
# (one that exists on this machine, whose own `//tex/blue.png` must not be looked up beside odd.blend).
ODD_PATHS = {
    "present": ("FILE", "//textures/present.png"),
    "absent": ("FILE", "//textures/absent.png"),
    "bucket_top": ("FILE", "//../../top.png"),
    "other_bucket": ("FILE", f"//../../../{OTHER_BUCKET}/secret.png"),
    "above_root": ("FILE", "//" + "../" * 40 + "etc/passwd"),  # "/" stops the climb, however deep the test dir
    "frames": ("SEQUENCE", "//seq/frame_0001.png"),
    "tiles": ("TILED", "//udim/skin.<UDIM>.png"),
}
BUILD_ODD_SCENE = """
from pathlib import Path
import bpy

bpy.ops.wm.read_factory_settings(use_empty=True)
for name, (source, filepath) in paths.items():
    image = bpy.data.images.new(name, 4, 4, tiled=source == "TILED")
    image.source, image.filepath, image.use_fake_user = source, filepath, True
with bpy.data.libraries.load(library, link=True, relative=False) as (_, linked):
    linked.objects = ["Prop"]
bpy.context.scene.collection.objects.link(linked.objects[0])
Path(path).parent.mkdir(parents=True, exist_ok=True)
bpy.ops.wm.save_as_mainfile(filepath=path, relative_remap=False)  # keep the absolute library
result = [sorted(image.filepath for image in bpy.data.images), [lib.filepath for lib in bpy.data.libraries]]
"""
# Objects beside the odd scene: what its references must pick up, and what they must not.
ODD_FETCHED = [
    "odd/shots/textures/present.png",
    "odd/shots/seq/frame_0001.png",
    "odd/shots/seq/frame_0002.png",
    "odd/shots/seq/frame_0010.png",
    "odd/shots/udim/skin.1001.png",
    "odd/shots/udim/skin.1002.png",
    "top.png",
]
ODD_LEFT = [
    "odd/shots/seq/frame_notes.txt",
    "odd/shots/seq/other_0001.png",
    "odd/shots/udim/skin.png",
    "odd/top.png",
    "odd/shots/tex/blue.png",  # the absolute library's texture, were it taken relative to the scene
]


@dataclass(frozen=True)
class Remote:
    s3: Any
    project: Project  # as built; the folder was renamed, so its paths no longer exist
    hidden: Path  # where the project's folder is now (only its relative references still resolve)


def upload(s3: Any, root: Path, prefix: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(root).as_posix()}")


def uri(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def files_below(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def remote(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """The packing project on S3 at project/, its build folder renamed so that nothing local is reachable."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.create_bucket(Bucket=OTHER_BUCKET)
        s3.put_object(Bucket=OTHER_BUCKET, Key="secret.png", Body=b"not the scene's")
        root = tmp_path_factory.mktemp("remote") / "source"
        project = build_project(root)
        upload(s3, root / "project", "project")
        hidden = root.rename(root.with_name("hidden"))
        yield Remote(s3, project, hidden)


def test_the_fetched_scene_packs_and_renders_with_its_remote_textures(remote: Remote, tmp_path: Path) -> None:
    fetched = fetch_scene(SCENE_URI, tmp_path / "fetched")
    assert fetched.scene == tmp_path / "fetched" / BUCKET / "project/shots/scene.blend"
    assert fetched.files == (SCENE_URI, *SCENE_DEPENDENCIES)
    assert fetched.missing == (str(remote.project.absolute_texture),)  # the artist's disk, not the store
    assert files_below(tmp_path / "fetched") == sorted(
        f"{BUCKET}/project/{key}"
        for key in ["shots/scene.blend", "shots/textures/red.png", "library/props.blend", "library/tex/blue.png"]
    )

    packed = pack_scene(fetched.scene, tmp_path / "packs")
    assert packed.missing == (remote.project.absolute_texture,)
    assert packed.file_count == 4
    scene = unpack_scene(packed.archive, tmp_path / "cache", packed.digest)
    # Red from beside the scene, blue from beside the linked library; the absolute one is not on S3.
    assert colours(render(scene, tmp_path / "out")) == [RED, MAGENTA, BLUE]


@pytest.mark.parametrize(
    ("deleted", "fetched_keys"),
    [
        (["shots/textures/red.png"], ["shots/scene.blend", "library/props.blend", "library/tex/blue.png"]),
        (["library/props.blend"], ["shots/scene.blend", "shots/textures/red.png"]),
    ],
    ids=["texture", "library"],
)
def test_references_missing_on_the_store_are_listed(
    remote: Remote, tmp_path: Path, deleted: list[str], fetched_keys: list[str]
) -> None:
    prefix = f"missing-{tmp_path.name}"
    upload(remote.s3, remote.hidden / "project", prefix)
    for key in deleted:
        remote.s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/{key}")
    fetched = fetch_scene(uri(f"{prefix}/shots/scene.blend"), tmp_path / "fetched")
    assert set(fetched.files) == {uri(f"{prefix}/{key}") for key in fetched_keys}
    assert fetched.missing == tuple(
        sorted([str(remote.project.absolute_texture), *(uri(f"{prefix}/{key}") for key in deleted)])
    )


def test_sequences_tiles_and_paths_that_leave_the_bucket(remote: Remote, tmp_path: Path) -> None:
    local = tmp_path / "built/odd.blend"
    library = remote.hidden / "project/library/props.blend"
    built = run_bpy(BUILD_ODD_SCENE, path=str(local), paths=ODD_PATHS, library=str(library))
    images = sorted([*(filepath for _, filepath in ODD_PATHS.values()), "//tex/blue.png"])
    assert built == [images, [str(library)]]
    remote.s3.upload_file(str(local), BUCKET, "odd/shots/odd.blend")
    for key in ODD_FETCHED + ODD_LEFT:
        remote.s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())

    fetched = fetch_scene(uri("odd/shots/odd.blend"), tmp_path / "deep/fetched")
    assert fetched.files == (uri("odd/shots/odd.blend"), *sorted(uri(key) for key in ODD_FETCHED))
    assert fetched.missing == tuple(
        sorted(
            [
                uri("odd/shots/textures/absent.png"),
                ODD_PATHS["other_bucket"][1],
                ODD_PATHS["above_root"][1],
                str(library),  # the artist's disk (this one, here): packing takes it from there, not fetching
            ]
        )
    )
    # Each object is copied to <folder>/<bucket>/<key>, and nothing is written anywhere else.
    assert files_below(tmp_path / "deep") == sorted(
        f"fetched/{BUCKET}/{key}" for key in ["odd/shots/odd.blend", *ODD_FETCHED]
    )
    frame = "odd/shots/seq/frame_0010.png"
    assert (tmp_path / f"deep/fetched/{BUCKET}" / frame).read_bytes() == frame.encode()
    assert sorted(path.name for path in tmp_path.rglob("*") if path.name in ("secret.png", "passwd")) == []

    # Packed confined to what was fetched: /etc/passwd (reached by climbing) and the library at an
    # absolute path both exist on this machine, and neither travels in the pack.
    packed = pack_scene(fetched.scene, tmp_path / "packs", confined_to=tmp_path / "deep/fetched")
    with zipfile.ZipFile(packed.archive) as archive:
        names = archive.namelist()
    assert [name for name in names if "passwd" in name or name.endswith("props.blend")] == []
    assert {Path("/etc/passwd"), library} <= set(packed.missing)
    unconfined = pack_scene(fetched.scene, tmp_path / "unconfined")  # what confinement prevents
    with zipfile.ZipFile(unconfined.archive) as archive:
        assert any(name.endswith("etc/passwd") for name in archive.namelist())


def test_a_compressed_scene_is_traced_too(remote: Remote, tmp_path: Path) -> None:
    fetched = fetch_scene(uri("project/shots/compressed.blend"), tmp_path / "fetched")
    assert fetched.files[1:] == SCENE_DEPENDENCIES
    assert fetched.missing == (str(remote.project.absolute_texture),)


def test_the_number_of_files_is_bounded(remote: Remote, tmp_path: Path) -> None:
    assert len(fetch_scene(SCENE_URI, tmp_path / "four", max_files=4).files) == 4
    # The fourth file is only known once the library is fetched: the bound holds across rounds.
    with pytest.raises(PackingError, match=rf"^cannot fetch {SCENE_URI}: it references more than 3 files"):
        fetch_scene(SCENE_URI, tmp_path / "three", max_files=3)


def test_a_scene_that_cannot_be_read_fails_in_one_line(remote: Remote, tmp_path: Path) -> None:
    with pytest.raises(RenderError, match=rf"^cannot read {uri('project/shots/absent.blend')}: no such file$"):
        fetch_scene(uri("project/shots/absent.blend"), tmp_path / "fetched")
    remote.s3.put_object(Bucket=BUCKET, Key="notes.blend", Body=b"not a scene")
    with pytest.raises(BlendFileError, match=rf"^{uri('notes.blend')}: not a \.blend file"):
        fetch_scene(uri("notes.blend"), tmp_path / "fetched")


@pytest.mark.parametrize("style", ["path", "file-uri"])
def test_local_scenes_are_fetched_the_same_way(remote: Remote, tmp_path: Path, style: str) -> None:
    """Plain paths and file:// mirror below the folder by their absolute path; `..` may reach up to /."""
    project = remote.hidden / "project"
    scene = project / "shots/scene.blend"
    source = str(scene) if style == "path" else f"file://{scene}"
    fetched = fetch_scene(source, tmp_path / "fetched")
    prefix = "file://" if style == "file-uri" else ""
    assert fetched.files == tuple(
        prefix + str(project / key)
        for key in ["shots/scene.blend", "library/props.blend", "shots/textures/red.png", "library/tex/blue.png"]
    )
    assert fetched.scene == tmp_path / "fetched" / scene.relative_to("/")
    assert fetched.missing == (str(remote.project.absolute_texture),)
