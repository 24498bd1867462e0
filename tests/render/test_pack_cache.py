"""A render job given a scene pack: fetched once per node into a private cache, verified, rendered.

Real worker processes (`python -m kiln.render`, through the render zygote as jobs run) render the
packed project of test_packing after its originals are hidden, so only the pack can supply the
textures and the linked library.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kiln.render.pack_cache import pack_digest, trim
from kiln.render.packing import pack_scene

from .conftest import run_worker
from .images import read_png
from .test_packing import BLUE, GREEN, RED, build_project, colours


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A pack of the project (kept in a store folder) and the original's render; originals hidden."""
    root = tmp_path_factory.mktemp("pack-cache")
    project = build_project(root / "source")
    before = root / "before"
    done = run_worker("render", "-i", str(project.scene), "-o", str(before), "-f", "1")
    assert done.returncode == 0, done.stderr
    pack = pack_scene(project.scene, root / "store")
    (root / "source").rename(root / "hidden")
    return pack.archive, read_png(before / "frames" / "0001.png")


def test_a_job_given_a_pack_renders_it_and_the_next_job_reuses_the_cached_tree(
    packed: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    archive, before = packed
    cache = tmp_path / "node-cache"
    environment = {"KILN_RENDER_PACK_CACHE": str(cache)}
    first = run_worker("render", "-i", f"file://{archive}", "-o", str(tmp_path / "one"), "-f", "1", env=environment)
    assert first.returncode == 0, first.stderr
    digest = archive.name.removesuffix(".zip")
    assert f"scene pack {digest[:12]} fetched from file://{archive}" in first.stdout
    after = read_png(tmp_path / "one" / "frames" / "0001.png")
    assert colours(after) == [RED, GREEN, BLUE]
    assert np.array_equal(after, before)
    assert stat_mode(cache) == 0o700

    archive_moved = archive.with_name("moved.zip")  # the second job must not need the archive at all
    archive.rename(archive_moved)
    try:  # while another job renders from the tree (holding its lock shared): no waiting for it
        with _holding(cache / f".{digest}.lock", fcntl.LOCK_SH):
            second = run_worker(
                "render", "-i", str(archive), "-o", str(tmp_path / "two"), "-f", "1", env=environment, timeout=60
            )
    finally:
        archive_moved.rename(archive)
    assert second.returncode == 0, second.stderr
    assert f"scene pack {digest[:12]} is in this node's cache ({cache})" in second.stdout
    assert np.array_equal(read_png(tmp_path / "two" / "frames" / "0001.png"), before)


def test_a_pack_whose_bytes_do_not_match_its_name_is_refused(packed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    archive, _ = packed
    forged = tmp_path / ("0" * 64 + ".zip")
    forged.write_bytes(archive.read_bytes())
    done = run_worker(
        "render",
        "-i",
        str(forged),
        "-o",
        str(tmp_path / "out"),
        "-f",
        "1",
        env={"KILN_RENDER_PACK_CACHE": str(tmp_path / "c")},
    )
    assert done.returncode == 1
    assert f"kiln-render: error: {forged}: sha256 is {archive.name.removesuffix('.zip')}, expected {'0' * 64}" in (
        done.stderr
    )
    assert not (tmp_path / "out" / "frames").exists()
    assert [path.name for path in (tmp_path / "c").iterdir() if not path.name.startswith(".")] == []


def test_a_cache_folder_other_users_could_write_is_refused(packed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    archive, _ = packed
    cache = tmp_path / "open-cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    done = run_worker(
        "render", "-i", str(archive), "-o", str(tmp_path / "out"), "-f", "1", env={"KILN_RENDER_PACK_CACHE": str(cache)}
    )
    assert done.returncode == 1
    assert f"the scene pack cache {cache} is not a private folder of user {os.getuid()}" in done.stderr
    assert list(cache.iterdir()) == []


def test_only_a_file_named_by_a_sha256_is_a_pack() -> None:
    digest = "ab" * 32
    assert pack_digest(f"s3://bucket/packs/{digest}.zip") == digest
    assert pack_digest(f"/local/{digest}.zip") == digest
    assert pack_digest("/local/scene.blend") is None
    assert pack_digest(f"/local/{digest}.blend") is None
    assert pack_digest(f"/local/{digest.upper()}.zip") is None
    assert pack_digest("/local/frames.zip") is None


def _tree(cache: Path, name: str, size: int, used: float) -> Path:
    """A cached tree of `size` bytes whose lock file says it was last used at `used`."""
    tree = cache / name
    (tree / "shots").mkdir(parents=True)
    (tree / "shots" / "scene.blend").write_bytes(b"x" * size)
    lock = cache / f".{name}.lock"
    lock.touch()
    os.utime(lock, (used, used))
    return tree


def test_trimming_removes_the_least_recently_used_trees_no_job_holds(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    held, oldest, newer = ("c" * 64, 1_000.0), ("a" * 64, 2_000.0), ("b" * 64, 3_000.0)
    for name, used in (held, oldest, newer):
        _tree(cache, name, 3 * 1024, used)
    dead_fetch = cache / f".{'d' * 64}.fetch-x1"  # a fetch that was killed: nobody holds its digest
    live_unpack = cache / f".{'e' * 64}.partial-x2"  # one in progress: its job holds the digest
    for leftover in (dead_fetch, live_unpack):
        leftover.mkdir()
        (leftover / "part").write_bytes(b"y")
    (cache / f".{'d' * 64}.lock").touch()
    with _holding(cache / f".{held[0]}.lock", fcntl.LOCK_SH), _holding(cache / f".{'e' * 64}.lock", fcntl.LOCK_EX):
        done = trim(cache, 6 * 1024)
        left = trim(cache, 0)
    assert sorted(path.name for path in cache.iterdir() if not path.name.endswith(".lock")) == sorted(
        [held[0], live_unpack.name]
    )
    assert sorted(done) == sorted(
        [f"removed {dead_fetch.name} (left by a fetch that did not finish)",
         f"removed scene pack {'a' * 12} from this node's cache (0.0 MiB)"]
    )  # fmt: skip
    assert left == [f"removed scene pack {'b' * 12} from this node's cache (0.0 MiB)"]  # c and e are held


@contextlib.contextmanager
def _holding(lock: Path, how: int) -> Iterator[None]:
    """`lock` held as a job holds it (shared while rendering, exclusive while fetching)."""
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, how)
        yield
    finally:
        os.close(descriptor)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
