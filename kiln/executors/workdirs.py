"""Attempt working directories, recycled: a rename in and a rename out instead of mkdir and rmdir.

Thousands of short attempts each need an empty working directory of their own. On ext4 an
`rmdir` costs about as much as starting a small process (it frees an inode through the journal),
and it sits on the path from an attempt's exit to the next start. Most jobs leave their directory
empty, so an emptied one is renamed aside (`.kiln-free-<token>` in the same parent) and renamed
into place for the next attempt: two directory-entry updates, no inode work. A directory that is
not empty is removed as before and never reused, so no attempt sees another's files.

A workdir belongs to the job's user (mode 0700): the job writes there, nobody else reads it. Spares
are kept per owner and only handed to the same user again, so no user ever gets a directory another
one had (an empty one can still carry what its owner set on it: default ACLs, attributes). A spare
whose mode its job changed is removed, not reused. Only a new directory costs a `chown`.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

from kiln.errors import ServerError

from .process_tree import spare_name

FREE_PREFIX = ".kiln-free-"
KEEP_PER_PARENT = 64  # spare directories kept per parent and owner: more than any host runs at once
WORKDIR_MODE = 0o700
# A root under which other users' workdirs live: they may pass through it, not list it.
SHARED_ROOT_MODE = 0o711


class UnsafeWorkRoot(ServerError):
    """The directory meant for workdirs is not this process's own (or not a directory)."""


class WorkdirPool:
    """Spare empty directories per parent directory and owner; safe to call from several threads."""

    def __init__(self, keep: int = KEEP_PER_PARENT) -> None:
        self._keep = keep
        self._free: dict[tuple[Path, int], list[Path]] = {}
        self._scanned: set[Path] = set()
        self._lock = threading.Lock()

    def make(self, workdir: Path, owner: tuple[int, int] | None = None) -> None:
        """Make `workdir` an empty directory of `owner` (uid, gid; default: this process), mode 0700:
        a spare of the same owner renamed into place, or a new one."""
        uid = os.geteuid() if owner is None else owner[0]
        with self._lock:
            spares = self._spares(workdir.parent, uid)
            spare = spares.pop() if spares else None
        if spare is not None:
            try:
                os.rename(spare, workdir)
                return
            except OSError:  # removed behind our back, or `workdir` exists: start afresh
                remove_tree(spare)
        try:
            workdir.mkdir(mode=WORKDIR_MODE)
        except FileNotFoundError:
            os.makedirs(workdir.parent, mode=SHARED_ROOT_MODE, exist_ok=True)
            workdir.mkdir(mode=WORKDIR_MODE)
        except FileExistsError:
            os.chmod(workdir, WORKDIR_MODE)
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            os.chown(workdir, *owner)

    def release(self, workdir: Path) -> None:
        """The attempt is over: keep its directory as a spare of its owner if it is empty and still
        0700, else remove it."""
        try:
            with os.scandir(workdir) as entries:
                empty = next(entries, None) is None
            info = os.lstat(workdir) if empty else None
        except FileNotFoundError:
            return
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == WORKDIR_MODE:
            with self._lock:
                spares = self._spares(workdir.parent, info.st_uid)
                keep = len(spares) < self._keep
            if keep:
                spare = workdir.parent / spare_name(FREE_PREFIX)
                try:
                    os.rename(workdir, spare)
                except OSError:
                    pass
                else:
                    with self._lock:
                        spares.append(spare)
                    return
        remove_tree(workdir)

    def _spares(self, parent: Path, uid: int) -> list[Path]:
        """The spares of `parent` owned by `uid`; the first time, those a previous process left too."""
        if parent not in self._scanned:
            self._scanned.add(parent)
            try:
                with os.scandir(parent) as entries:
                    for entry in entries:
                        if entry.name.startswith(FREE_PREFIX):
                            self._adopt_spare(Path(entry.path))
            except OSError:
                pass
        return self._free.setdefault((parent, uid), [])

    def _adopt_spare(self, path: Path) -> None:
        try:
            info = os.lstat(path)
        except OSError:
            return
        if not stat.S_ISDIR(info.st_mode) or stat.S_IMODE(info.st_mode) != WORKDIR_MODE:
            remove_tree(path)  # an older Kiln's (0755) or a changed one: never handed out
            return
        spares = self._free.setdefault((path.parent, info.st_uid), [])
        if len(spares) < self._keep:
            spares.append(path)


def prepare_work_root(root: Path, shared: bool) -> None:
    """Create the parent of every workdir: 0711 when jobs run as other users (they pass through to
    their own workdir but cannot list the others), else 0700. It must be this process's own
    directory, never a link: a root server changes its mode."""
    root.mkdir(mode=SHARED_ROOT_MODE if shared else WORKDIR_MODE, parents=True, exist_ok=True)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise UnsafeWorkRoot(f"{root} must be a directory owned by uid {os.geteuid()} (it holds jobs' workdirs)")
    wanted = SHARED_ROOT_MODE if shared else WORKDIR_MODE
    if stat.S_IMODE(info.st_mode) != wanted:
        os.chmod(root, wanted)


def remove_tree(workdir: Path) -> None:
    """Most jobs leave their workdir empty: one rmdir, and the tree walk only when needed."""
    try:
        workdir.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)
