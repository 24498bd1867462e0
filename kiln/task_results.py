"""What an `ecsProperties` task's runner reports of its containers, and reading it back.

The runner (kiln/executors/task_runner.py) ends its output, the attempt's own log stream, with one
line: `RESULT_PREFIX` and a JSON object of each container's `exitCode` and `reason`. DescribeJobs
reads it from there (kiln/batch/views.py), so neither the executors' interface nor the store needs
a field per container. Neutral: the executors write it, the domain reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULT_PREFIX = "kiln-task-result "
TAIL_BYTES = 64 * 1024  # the result line is the last one; a task of ten containers writes well under this


def result_line(results: dict[str, dict[str, Any]]) -> str:
    return RESULT_PREFIX + json.dumps({"containers": results}, separators=(",", ":"))


def read_results(log: Path) -> dict[str, dict[str, Any]] | None:
    """Each container's `exitCode` and `reason` from the last result line of `log`; None when
    there is none (the attempt still runs, never started, or its runner was killed)."""
    try:
        with log.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                found = json.loads(line[len(RESULT_PREFIX) :])["containers"]
            except (ValueError, KeyError, TypeError):
                return None
            return found if isinstance(found, dict) else None
    return None
