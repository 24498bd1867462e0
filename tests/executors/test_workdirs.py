"""The workdir pool: emptied attempt directories are reused by rename, never with another job's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.executors.workdirs import FREE_PREFIX, WorkdirPool


def _spares(parent: Path) -> list[str]:
    return sorted(name for name in os.listdir(parent) if name.startswith(FREE_PREFIX))


def test_an_emptied_directory_is_renamed_aside_and_back_into_place(tmp_path: Path) -> None:
    pool = WorkdirPool()
    first = tmp_path / "work" / "attempt-1"
    pool.make(first)  # the parent is created on first use
    assert first.is_dir() and not any(first.iterdir())
    inode = first.stat().st_ino
    pool.release(first)
    assert not first.exists()
    assert len(_spares(tmp_path / "work")) == 1

    second = tmp_path / "work" / "attempt-2"
    pool.make(second)
    assert second.is_dir() and not any(second.iterdir())
    assert second.stat().st_ino == inode  # the same directory, renamed: no mkdir
    assert _spares(tmp_path / "work") == []


def test_a_directory_with_files_is_removed_and_never_reused(tmp_path: Path) -> None:
    pool = WorkdirPool()
    used = tmp_path / "attempt-1"
    pool.make(used)
    (used / "nested").mkdir()
    (used / "nested" / "secret.txt").write_text("job 1's data")
    pool.release(used)
    assert not used.exists()
    assert _spares(tmp_path) == []
    fresh = tmp_path / "attempt-2"
    pool.make(fresh)
    assert list(fresh.iterdir()) == []


def test_spares_are_bounded_and_leftovers_of_another_process_are_used(tmp_path: Path) -> None:
    pool = WorkdirPool(keep=2)
    dirs = [tmp_path / f"attempt-{i}" for i in range(4)]
    for directory in dirs:
        pool.make(directory)
    for directory in dirs:
        pool.release(directory)
    assert len(_spares(tmp_path)) == 2 and not any(d.exists() for d in dirs)

    later = WorkdirPool()  # e.g. a supervisor restarted on the same data dir
    again = tmp_path / "attempt-9"
    later.make(again)
    assert again.is_dir() and len(_spares(tmp_path)) == 1


def test_a_spare_removed_behind_the_pool_falls_back_to_mkdir(tmp_path: Path) -> None:
    pool = WorkdirPool()
    pool.make(tmp_path / "a")
    pool.release(tmp_path / "a")
    for name in _spares(tmp_path):
        (tmp_path / name).rmdir()
    pool.make(tmp_path / "b")
    assert (tmp_path / "b").is_dir()
    pool.release(tmp_path / "missing")  # an attempt whose directory is already gone: nothing to do


def test_a_workdir_belongs_to_its_user_and_a_spare_goes_back_only_to_that_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    pool = WorkdirPool()
    nobody = (65534, 65534)
    first = tmp_path / "attempt-1"
    pool.make(first, nobody)
    info = first.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (*nobody, 0o700)
    inode = info.st_ino
    pool.release(first)

    mine = tmp_path / "attempt-2"
    pool.make(mine)  # root's: never nobody's emptied directory
    assert mine.stat().st_ino != inode and mine.stat().st_uid == 0
    again = tmp_path / "attempt-3"
    pool.make(again, nobody)
    assert again.stat().st_ino == inode and again.stat().st_uid == 65534


def test_a_workdir_its_job_opened_up_is_removed_not_reused(tmp_path: Path) -> None:
    pool = WorkdirPool()
    used = tmp_path / "attempt-1"
    pool.make(used)
    used.chmod(0o777)  # others could have put files in it meanwhile, or may later
    pool.release(used)
    assert not used.exists()
    assert _spares(tmp_path) == []
