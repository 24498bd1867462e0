"""Which of the server's environment variables a job sees: a short list, never "everything".

An AWS container sees only its definition's environment and Batch's `AWS_BATCH_*` variables; the
control plane's own secrets (access keys, database URLs, tokens) never reach it. The server's
environment here holds such secrets too (the operator's `AWS_SECRET_ACCESS_KEY`, say), so a job
inherits only what describes the host rather than the operator: where programs are (`PATH`),
language and time zone, where the CA certificates are, how the server's Python finds its code
(Kiln's render image runs on it), and the render worker's and Blender's tunables. `job_environment` in kiln.toml names more.
Credentials meant for jobs reach them through their definition's `jobRoleArn` (`[job_roles]`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from .job_users import JobUser

INHERITED_NAMES = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH",
    # Where the host's CA certificates are (HTTPS, S3 included); proxies are not inherited: their
    # URLs may carry a password.
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
})  # fmt: skip
# LC_*: locale; PYTHON*: the render image runs the server's interpreter; the rest tune renders.
INHERITED_PREFIXES = ("LC_", "PYTHON", "KILN_RENDER_", "BLENDER_", "OCIO", "TBB_", "OMP_")


def inherited_environment(environ: Mapping[str, str], extra_names: Collection[str] = ()) -> dict[str, str]:
    """The part of `environ` every job inherits: Kiln's list plus `extra_names` (`job_environment`)."""
    return {
        name: value
        for name, value in environ.items()
        if name in INHERITED_NAMES or name.startswith(INHERITED_PREFIXES) or name in extra_names
    }


def identity_environment(user: JobUser, workdir: Path) -> dict[str, str]:
    """HOME, USER and LOGNAME of the job's user; HOME is the workdir when the user has no home."""
    return {"HOME": user.home or str(workdir), "USER": user.name, "LOGNAME": user.name}
