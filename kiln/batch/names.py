"""Naming rules shared by every resource (as each operation documents them: https://docs.aws.amazon.com/batch/latest/APIReference/)."""

from __future__ import annotations

import re

from kiln.errors import ValidationError

JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_job_name(name: str) -> None:
    if not JOB_NAME.fullmatch(name):
        raise ValidationError(
            "Error executing request, Exception : Job name should match valid pattern "
            f"(1-128 letters, digits, '-' or '_', starting with a letter or digit; got {name!r})"
        )


def check_resource_name(name: str, what: str) -> None:
    """Job definition, queue, CE and scheduling policy names: 1-128 of [A-Za-z0-9_-]."""
    if not RESOURCE_NAME.fullmatch(name):
        raise ValidationError(f"Provided name {name} is not supported pattern[a-zA-Z_0-9-]{{1,128}} ({what})")
