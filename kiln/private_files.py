"""Files and directories only the server's user may read: the data dir, job logs, credentials.

Job output and the database can hold secrets (environment values, tokens printed by a job), so
nothing Kiln writes under its data dir is readable by other local users. Modes are given at creation
(never created wide, then narrowed) and existing directories are narrowed at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) and make it 0700, also when it existed and was wider.

    Only a directory this user owns is narrowed: chmod on someone else's would fail anyway.
    """
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o777 != PRIVATE_DIR_MODE:
        path.chmod(PRIVATE_DIR_MODE)


def open_private_log(path: Path) -> int:
    """A descriptor appending to `path`, created 0600; close-on-exec so no job inherits it by accident."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)


def create_private_file(path: Path) -> None:
    """Create `path` empty and 0600 if missing (e.g. the SQLite file, before SQLite creates it 0644).

    SQLite gives its -wal and -shm files the mode of the database file, so they follow.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE))


def readable_by_others(path: Path) -> bool:
    """Whether group or others have any permission on `path` (a credentials file must not)."""
    return bool(path.stat().st_mode & 0o077)
