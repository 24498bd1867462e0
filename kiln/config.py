"""Server settings: defaults, `kiln.toml` in the data dir, then command-line flags.

Test-only knobs (``min_timeout_seconds``, ``termination_grace_seconds``,
``min_state_time_limit_seconds``) exist so the suite can exercise timeouts and job-state time limits
in seconds instead of AWS's one- and ten-minute floors; production keeps AWS's values.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import tomllib
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from kiln.errors import ValidationError

DEFAULT_PORT = 8642
DEFAULT_ENDPOINT = f"http://127.0.0.1:{DEFAULT_PORT}"
CONFIG_FILE_NAME = "kiln.toml"
# Workdirs of jobs that run as another user than the server: root-owned, outside any data dir.
SHARED_WORK_PARENT = Path("/var/lib/kiln/work")


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/kiln`, falling back to `~/.local/share/kiln` as the XDG spec says."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kiln"


def host_memory_mib() -> int:
    """Total physical memory in MiB; the local compute environment cannot promise more."""
    pages = os.sysconf("SC_PHYS_PAGES")
    page_size = os.sysconf("SC_PAGE_SIZE")
    return int(pages * page_size // (1024 * 1024))


# Bind addresses that mean every address of the machine (the front door and the relay's URL read them).
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", "[::]", ""})


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know at start-up; immutable once running."""

    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    region: str = "us-east-1"
    account_id: str = "123456789012"
    database_url: str | None = None
    # "none" (loopback only, unless `insecure`) or "sigv4" (access keys in <data_dir>/credentials).
    auth: str = "none"
    # Allow a non-loopback `host` without authentication.
    insecure: bool = False
    # SQLite `synchronous=FULL` (fsync on every commit: survives power loss) instead of NORMAL
    # (survives a killed process, which is the default promise).
    fsync: bool = False
    retention_days: float = 7.0
    scheduler_interval_seconds: float = 0.2
    # AWS values; lowered only by tests through documented flags.
    min_timeout_seconds: int = 60
    termination_grace_seconds: float = 30.0
    # Lowest jobStateTimeLimitActions.maxTimeSeconds accepted (AWS: 600; the 86,400 ceiling stays).
    min_state_time_limit_seconds: int = 600
    host_vcpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    host_memory_mib: int = field(default_factory=host_memory_mib)
    # Local executor: GPUs attempts may be given; None finds them with nvidia-smi (docs/gpus.md).
    gpus: int | None = None
    # CE names whose jobs get a hard CPU quota (cfs) on top of cpu.shares.
    cpu_hard_cap_environments: frozenset[str] = frozenset()
    # image name -> entrypoint prepended to the job's command; "host" is built in (empty entrypoint).
    images: dict[str, list[str]] = field(default_factory=dict)
    # What runs attempts: "local" (processes on this host), "docker" (a container per attempt) or "ray".
    executor: str = "local"
    # Docker executor: the daemon URL (default: $DOCKER_HOST, else the local socket) and the
    # containers' network mode ("host": jobs reach services on 127.0.0.1, as on the local executor).
    docker_host: str | None = None
    docker_network: str = "host"
    docker_gpus: int = 0  # GPUs the daemon can hand out (NVIDIA container toolkit); GPU jobs wait for them
    # Ray executor: the cluster's GCS address (HOST:PORT); None joins the local cluster or starts one.
    ray_address: str | None = None
    # Host names (and host:port) the API answers besides the loopback names and the bind address:
    # any other `Host` is refused, so a DNS-rebinding page cannot reach a loopback server.
    allowed_hosts: tuple[str, ...] = ()
    # Slow clients: a connection that has not sent a whole request head in this time is closed, and
    # a body must arrive within its own deadline (slowloris; half-sent requests hold no memory long).
    request_head_timeout_seconds: float = 15.0
    request_body_timeout_seconds: float = 60.0
    # Who attempts run as on the local and Ray executors. None: "nobody" when the server runs as
    # root, else the server's own user. `allowed_job_users` are the other users a definition's
    # `containerProperties.user` may name (root only when listed here).
    job_user: str | None = None
    allowed_job_users: tuple[str, ...] = ()
    # The uids attempts borrow, one each while they run ("FIRST-LAST" or "none"), so that no job can
    # read or signal another's processes. None: "2000000000-2000065535" when `job_user` is not set
    # and the server runs as root, else "none" (kiln/executors/job_users.py).
    job_uids: str | None = None
    # Names of the server's environment variables that attempts inherit, beside Kiln's own short list
    # (kiln/executors/job_environment.py).
    job_environment: tuple[str, ...] = ()
    # [job_roles]: role ARN -> the variables a job gets when its definition's `jobRoleArn` names it
    # (credentials meant for jobs, as AWS hands a job its role; never shown by DescribeJobs).
    job_roles: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    # Where attempts' working directories go; None: see `work_dir`.
    work_root: Path | None = None
    # The URL jobs reach this server at for `kiln://` files (the relay, docs/ray.md); None: see `relay_url`.
    public_url: str | None = None
    # Ray executor: whether every node sees the submitting machine's files (NFS and the like), so
    # `kiln render` may hand jobs local paths; when not, it sends files through the server's relay.
    shared_filesystem: bool = False

    @property
    def relay_url(self) -> str:
        """`public_url`, else this server's bind address (127.0.0.1 for a wildcard or loopback bind)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in WILDCARD_BINDS or self.host == "localhost" else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def files_reach_jobs(self) -> bool:
        """Whether jobs see the files of the machine the server runs on (all but Ray without a shared filesystem)."""
        return self.executor != "ray" or self.shared_filesystem

    @property
    def relay_dir(self) -> Path:
        return self.data_dir / "relay"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "kiln.db"

    @cached_property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def log_file(self, stream: str) -> Path:
        """Where the attempt whose log stream is `stream` writes its output (asked for every
        attempt placed: the directory is joined once)."""
        return self.logs_dir / f"{stream}.log"

    @cached_property
    def work_dir(self) -> Path:
        """Attempts' workdirs: `<data_dir>/work` when every job runs as the server's own user.

        A job running as another user must reach its workdir by path, but the data dir's parents are
        often private (/root/.local/share/kiln, a 0700 temporary dir) and opening the data dir itself
        to others would expose any file in it with a lax mode. Such workdirs therefore live under
        `/var/lib/kiln/work/<data dir hash>` (root's, not writable by others), or `work_root`.
        """
        if self.work_root is not None:
            return self.work_root
        if jobs_run_as_server_user(self.job_user, self.allowed_job_users):
            return self.data_dir / "work"
        return shared_work_root(self.data_dir)

    @property
    def executor_dir(self) -> Path:
        """The attempt supervisor's socket, lock, journal and log."""
        return self.data_dir / "executor"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.database_path}"


def jobs_run_as_server_user(job_user: str | None, allowed_job_users: tuple[str, ...]) -> bool:
    """Whether every job runs as this process's user (the default when it is not root)."""
    euid = os.geteuid()
    names = list(allowed_job_users) + ([job_user] if job_user else ["nobody"] if euid == 0 else [])
    for name in names:
        try:
            uid = int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid
        except KeyError:
            return False
        if uid != euid:
            return False
    return True


def shared_work_root(data_dir: Path) -> Path:
    """The workdirs' root of a server whose jobs run as other users: one per data dir."""
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:16]
    return SHARED_WORK_PARENT / digest


def absolute(path: Path) -> Path:
    """`path` absolute (from this process's working directory), `~` expanded, symlinks kept."""
    return Path(os.path.abspath(path.expanduser()))


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from `<data_dir>/kiln.toml` then explicit overrides (flags win).

    The data dir is made absolute here, once: jobs, the supervisor and the log files are all
    reached from other working directories (`kiln server --data-dir kiln-data/x`).
    """
    settings = Settings() if data_dir is None else Settings(data_dir=absolute(data_dir))
    config_path = settings.data_dir / CONFIG_FILE_NAME
    if config_path.exists():
        settings = _apply_file(settings, config_path)
    clean = {key: value for key, value in overrides.items() if value is not None}
    return replace(settings, **clean)


def _apply_file(settings: Settings, path: Path) -> Settings:
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"{path}: invalid TOML: {exc}") from exc
    server = dict(document.get("server", {}))
    known = {f for f in Settings.__dataclass_fields__ if f not in {"data_dir", "images", "job_roles"}}
    unknown = set(server) - known
    if unknown:
        raise ValidationError(f"{path}: unknown [server] keys: {', '.join(sorted(unknown))}")
    for key, value in server.items():
        _check_type(path, key, value)
    if "cpu_hard_cap_environments" in server:
        server["cpu_hard_cap_environments"] = frozenset(server["cpu_hard_cap_environments"])
    for key in ("allowed_hosts", "allowed_job_users", "job_environment"):
        if key in server:
            server[key] = tuple(server[key])
    if "work_root" in server:  # a relative one is inside the data dir, as every other path of kiln.toml
        server["work_root"] = settings.data_dir / Path(server["work_root"]).expanduser()
    images = _parse_images(path, document.get("images", {}))
    roles = _parse_job_roles(path, document.get("job_roles", {}))
    return replace(settings, **server, images={**settings.images, **images}, job_roles={**settings.job_roles, **roles})


_NUMBER = (int, float)
_SERVER_KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "host": str, "port": int, "region": str, "account_id": str, "database_url": str, "auth": str, "insecure": bool, "fsync": bool,
    "retention_days": _NUMBER, "scheduler_interval_seconds": _NUMBER, "min_timeout_seconds": int,
    "termination_grace_seconds": _NUMBER, "min_state_time_limit_seconds": int, "host_vcpus": int, "host_memory_mib": int,
    "cpu_hard_cap_environments": list, "executor": str, "docker_host": str, "docker_network": str, "docker_gpus": int,
    "ray_address": str,
    "gpus": int,
    "allowed_hosts": list, "request_head_timeout_seconds": _NUMBER, "request_body_timeout_seconds": _NUMBER,
    "job_user": str, "allowed_job_users": list, "job_uids": str, "job_environment": list, "work_root": str,
    "public_url": str, "shared_filesystem": bool,
}  # fmt: skip


def _check_type(path: Path, key: str, value: Any) -> None:
    """TOML is typed; a wrong type is an error here, not a surprise later."""
    expected = _SERVER_KEY_TYPES[key]
    wrong = not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool)
    if isinstance(value, list):
        wrong = wrong or not all(isinstance(item, str) for item in value)
    if wrong:
        shown = {str: "a string", int: "an integer", bool: "true or false", list: "a list of strings"}.get(
            expected if isinstance(expected, type) else float, "a number"
        )
        raise ValidationError(f"{path}: [server] {key} must be {shown}, got {value!r}")


def _parse_images(path: Path, table: dict[str, Any]) -> dict[str, list[str]]:
    images: dict[str, list[str]] = {}
    for name, entry in table.items():
        entrypoint = entry.get("entrypoint") if isinstance(entry, dict) else entry
        if not isinstance(entrypoint, list) or not all(isinstance(part, str) for part in entrypoint):
            raise ValidationError(f"{path}: [images] {name!r} must be a list of strings (the entrypoint)")
        images[name] = entrypoint
    return images


def _parse_job_roles(path: Path, table: dict[str, Any]) -> dict[str, dict[str, str]]:
    """`[job_roles."arn:aws:iam::123456789012:role/render"]` tables of variable = "value"."""
    roles: dict[str, dict[str, str]] = {}
    for arn, variables in table.items():
        if not arn.startswith("arn:"):
            raise ValidationError(f"{path}: [job_roles] {arn!r} must be a role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        if not isinstance(variables, dict) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in variables.items()
        ):
            raise ValidationError(f'{path}: [job_roles] {arn!r} must be a table of VARIABLE = "value" strings')
        reserved = sorted(name for name in variables if name.startswith("AWS_BATCH"))
        if reserved:
            raise ValidationError(f"{path}: [job_roles] {arn!r}: {', '.join(reserved)} is reserved for AWS Batch")
        roles[arn] = dict(variables)
    return roles
