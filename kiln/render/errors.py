"""The render workload's one failure type.

The worker runs inside a job, so a failure a person can fix (bad input, missing frames, wrong
arguments) must reach the job's log as one readable line, not a traceback. Everything raised on
purpose under `kiln.render` is a `RenderError`; the CLI prints its message and exits non-zero.
"""

from __future__ import annotations


class RenderError(Exception):
    """A failure whose message is written for the person reading the job's log."""


class BlendFileError(RenderError):
    """The input is not a .blend file Kiln can read (wrong magic, truncated, no scene)."""
