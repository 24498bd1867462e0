"""Where the cgroup hierarchies are mounted, read from `/proc/self/mountinfo`.

Shared by the executors (which create attempts' cgroups) and the render zygote (which reads its
job's cgroups like an outside program would): a neutral module, so neither imports the other.
"""

from __future__ import annotations

import re
from pathlib import Path


def parse_mountinfo(text: str) -> dict[str, tuple[Path, str]]:
    """`/proc/self/mountinfo` -> {controller: (mount point, mount root)}; cgroup2 has the key ""."""
    mounts: dict[str, tuple[Path, str]] = {}
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, extra = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(extra) < 3:
            continue
        point = (Path(_unescape(fields[4])), _unescape(fields[3]))
        if extra[0] == "cgroup2":
            mounts.setdefault("", point)
        elif extra[0] == "cgroup":
            for option in extra[2].split(","):
                mounts.setdefault(option, point)
    return mounts


def _unescape(field: str) -> str:
    """mountinfo escapes spaces and friends as octal (`\\040`)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)
