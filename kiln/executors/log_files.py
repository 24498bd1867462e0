"""Attempt log files that stayed empty, recycled: an inode reused by link instead of a new one.

Every attempt's output goes to a file of its own (its log stream), created when it starts. Most
of a short job's cost is its process, but creating a file is not always cheap: on ext4 without a
journal, allocating an inode skips every inode deleted in the last minutes, reading the inode table
for each, and after a burst of deletions (a retention purge, a test run) that cost ~0.8 ms of CPU
per file where it is normally ~0.03 ms (docs/performance.md, "Array overhead"). A job that printed
nothing leaves an empty file, and an empty stream reads the same whether its file exists or not
(kiln/logs/events.py): such a file is renamed aside (`.kiln-free-<pid>-<n>.log` in the same
directory) and linked into place as the next attempt's log in that directory.

Only empty, 0600, single-link regular files of this process's user move; a log with any byte in it
stays where it is. A reader that opened a log just before it was recycled could see the next
attempt's bytes through its descriptor: such readers check afterwards that the stream's path still
names the file they read (kiln/api/job_logs.py; the CloudWatch reader bounds every read by the
size it found, zero for such a file), and the stream's own path never comes back.
Spares are removed when the executor shuts down; those of an executor that died are removed by the
next one the first time it uses their directory (their name carries the owner's pid).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from .process_tree import left_by_dead_owner, spare_name

FREE_PREFIX = ".kiln-free-"
FREE_SUFFIX = ".log"
KEEP_PER_DIRECTORY = 64
LOG_MODE = 0o600


class LogFilePool:
    """Spare empty log files per directory; used from the executor's owner thread only."""

    def __init__(self, keep: int = KEEP_PER_DIRECTORY) -> None:
        self._keep = keep
        self._free: dict[str, list[str]] = {}  # directory -> spare files in it

    def claim(self, log_path: Path) -> None:
        """Put a spare at `log_path` when its directory has one (the job then appends to it); else
        nothing: the launcher creates the file."""
        spares = self._spares(os.path.dirname(log_path))
        while spares:
            spare = spares.pop()
            try:
                os.link(spare, log_path)  # never over an existing file, as rename would
            except FileExistsError:
                spares.append(spare)  # something is there already: leave both alone
                return
            except OSError:  # removed behind our back: the next one
                continue
            with contextlib.suppress(OSError):
                os.unlink(spare)
            return

    def release(self, log_path: Path) -> None:
        """The attempt is over: its log becomes a spare if it is empty (and plainly ours)."""
        directory = os.path.dirname(log_path)
        spares = self._spares(directory)
        if len(spares) >= self._keep:
            return
        try:
            info = os.lstat(log_path)
        except OSError:
            return
        if not (
            stat.S_ISREG(info.st_mode)
            and info.st_size == 0
            and info.st_nlink == 1
            and info.st_uid == os.geteuid()
            and stat.S_IMODE(info.st_mode) == LOG_MODE
        ):
            return
        spare = os.path.join(directory, spare_name(FREE_PREFIX, FREE_SUFFIX))
        try:
            os.rename(log_path, spare)
        except OSError:
            return
        spares.append(spare)

    def close(self) -> None:
        """Remove every spare (the executor is shutting down)."""
        for spares in self._free.values():
            for spare in spares:
                with contextlib.suppress(OSError):
                    os.unlink(spare)
        self._free.clear()

    def _spares(self, directory: str) -> list[str]:
        """The spares of `directory`; the first time, those of dead executors in it are removed."""
        spares = self._free.get(directory)
        if spares is None:
            spares = self._free[directory] = []
            _remove_dead_owners_spares(directory)
        return spares


def _remove_dead_owners_spares(directory: str) -> None:
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(FREE_SUFFIX) and left_by_dead_owner(entry.name, FREE_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
