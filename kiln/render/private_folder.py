"""A folder of this user's alone, for what a job leaves for the next jobs of its user (the render
zygote's socket, the scene-pack cache): another local user who could write into it, or who made
it first in a shared place such as /tmp, could hand those jobs something of theirs."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def is_private_folder(folder: Path, *, parents: bool = False) -> bool:
    """Create `folder` 0700 when it is missing; whether it is then a directory (not a link) that
    this user owns and no one else may enter."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=parents)
    info = os.lstat(folder)
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
