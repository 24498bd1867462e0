"""Who may use the server's file relay (`kiln://AREA/PATH`), and the tokens jobs prove it with.

On a cluster whose nodes share no disk with the submitting machine, a job cannot read a local
input or write a local output. The relay lets the server hold such files instead: the submitter
(signed like any API call) uploads the scene's pack into an *area* and mirrors the frames back,
and the jobs read and write the same area through `kiln://` URIs in their command.

A job has no access key (jobs must never read the server's keys), so each attempt gets a token:
`<job id>.<HMAC of the job id>` under a key kept in the data dir. The token opens only the areas
the job's own command names, and only while the job is STARTING or RUNNING, so a token a job
leaks (in its log, say) is worth nothing once the job ends, and no job reaches another's files.
It is handed to the attempt like a role's variables: never stored in the job, never shown by
DescribeJobs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from kiln.private_files import PRIVATE_FILE_MODE

RELAY_PREFIX = "/kiln/v1/relay/"
RELAY_SCHEME = "kiln://"
# The variables an attempt gets when its command names a kiln:// URI (kiln/render/relay_fs.py reads them).
RELAY_URL_VARIABLE = "KILN_RELAY_URL"
RELAY_TOKEN_VARIABLE = "KILN_RELAY_TOKEN"
# The header a job sends its token in; a browser cannot add it to a cross-site request unpreflighted.
JOB_TOKEN_HEADER = "x-kiln-job-token"
AREA_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_AREA_IN_URI = re.compile(rf"kiln://({AREA_PATTERN})(?:/|$)")
_KEY_BYTES = 32
_TOKEN_DOMAIN = b"kiln-relay-job:"


def areas_named(command: Iterable[str]) -> frozenset[str]:
    """The relay areas a command's words name (`kiln://AREA/...`, also inside `--opt=kiln://AREA`)."""
    return frozenset(match.group(1) for word in command for match in _AREA_IN_URI.finditer(str(word)))


def names_relay(command: Iterable[str]) -> bool:
    return any(RELAY_SCHEME in str(word) for word in command)


class RelayKey:
    """The data dir's relay key (`relay.key`, 0600, made on first use): signs and checks job tokens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = self._load()
        return self._key

    def _load(self) -> bytes:
        try:
            return bytes.fromhex(self.path.read_text().strip())
        except FileNotFoundError:
            pass
        fresh = secrets.token_hex(_KEY_BYTES)
        try:  # O_EXCL: two servers starting on one data dir agree on the first key written
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except FileExistsError:
            return bytes.fromhex(self.path.read_text().strip())
        with os.fdopen(descriptor, "w") as handle:
            handle.write(fresh + "\n")
        return bytes.fromhex(fresh)

    def token_for(self, job_id: str) -> str:
        return f"{job_id}.{self._signature(job_id)}"

    def job_of(self, token: str) -> str | None:
        """The job a token was made for, or None when the token is not one this key made."""
        job_id, dot, signature = token.strip().rpartition(".")
        if not dot or not job_id or len(job_id) > 200:
            return None
        return job_id if hmac.compare_digest(signature.encode(), self._signature(job_id).encode()) else None

    def _signature(self, job_id: str) -> str:
        return hmac.new(self.key, _TOKEN_DOMAIN + job_id.encode(), hashlib.sha256).hexdigest()
