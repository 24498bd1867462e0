"""Attempt working directories, recycled: a rename in and a rename out instead of mkdir and rmdir.

Thousands of short attempts each need an empty working directory of their own. On ext4 an
`rmdir` costs about as much as starting a small process (it frees an inode through the journal),
and it sits on the path from an attempt's exit to the next start. Most jobs leave their directory
empty, so an emptied one is renamed aside (`.kiln-free-<token>` in the same parent) and renamed
into place for the next attempt: two directory-entry updates, no inode work. A directory that is
not empty is removed as before and never reused, so no attempt sees another's files.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from pathlib import Path

FREE_PREFIX = ".kiln-free-"
KEEP_PER_PARENT = 64  # spare directories kept per parent: more than any host runs at once


class WorkdirPool:
    """Spare empty directories per parent directory; safe to call from several threads."""

    def __init__(self, keep: int = KEEP_PER_PARENT) -> None:
        self._keep = keep
        self._free: dict[Path, list[Path]] = {}
        self._lock = threading.Lock()

    def make(self, workdir: Path) -> None:
        """Make `workdir` an empty directory (a spare renamed into place, or a new one)."""
        with self._lock:
            spares = self._spares(workdir.parent)
            spare = spares.pop() if spares else None
        if spare is not None:
            try:
                os.rename(spare, workdir)
                return
            except OSError:  # removed behind our back, or `workdir` exists: start afresh
                remove_tree(spare)
        try:
            workdir.mkdir()
        except FileNotFoundError:
            workdir.mkdir(parents=True)
        except FileExistsError:
            pass

    def release(self, workdir: Path) -> None:
        """The attempt is over: keep its directory as a spare if it is empty, else remove it."""
        try:
            with os.scandir(workdir) as entries:
                empty = next(entries, None) is None
        except FileNotFoundError:
            return
        except OSError:
            empty = False
        if empty:
            with self._lock:
                spares = self._spares(workdir.parent)
                keep = len(spares) < self._keep
            if keep:
                spare = workdir.parent / f"{FREE_PREFIX}{secrets.token_hex(6)}"
                try:
                    os.rename(workdir, spare)
                except OSError:
                    pass
                else:
                    with self._lock:
                        spares.append(spare)
                    return
        remove_tree(workdir)

    def _spares(self, parent: Path) -> list[Path]:
        """The spares of `parent`; the first time, those a previous process left there too."""
        spares = self._free.get(parent)
        if spares is None:
            try:
                with os.scandir(parent) as entries:
                    spares = [Path(e.path) for e in entries if e.name.startswith(FREE_PREFIX)][: self._keep]
            except OSError:
                spares = []
            self._free[parent] = spares
        return spares


def remove_tree(workdir: Path) -> None:
    """Most jobs leave their workdir empty: one rmdir, and the tree walk only when needed."""
    try:
        workdir.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)
