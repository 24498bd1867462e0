"""Who an attempt runs as on this host: decided once per user name, never per attempt.

A job must not reach the control plane (the data dir's access keys and database, the supervisor's
socket, other jobs' logs), as an AWS container never sees Batch's own state. A server running as
root therefore starts attempts as an unprivileged user (`job_user`, default `nobody`); a job
definition's `containerProperties.user` picks another one only when it is `job_user` or listed in
`allowed_job_users` (root only when listed), and must exist, as Docker requires (with Docker's
words when it does not). A server that is not root can start jobs only as itself.

Names become numbers (uid, gid, groups, home) here, once: the launcher then makes plain system calls
with numbers, and an array's thousands of children do not each read /etc/passwd.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kiln.errors import KilnError, ValidationError

DEFAULT_ROOT_JOB_USER = "nobody"
CANNOT_START_PREFIX = "CannotStartContainerError"
DAEMON_PREFIX = "Error response from daemon: "


@dataclass(frozen=True)
class JobUser:
    """A resolved user: what the launcher switches to (`home` None: no usable home directory)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str | None

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def differs_from_this_process(self) -> bool:
        """Starting a job as this user needs a switch (setuid) in the launcher."""
        return self.uid != os.geteuid() or self.gid != os.getegid()


class UserRefused(KilnError):
    """A definition's `user` cannot be used; the message is the attempt's container reason."""


def lookup(spec: str) -> JobUser:
    """`name`, `uid`, `name:group` or `uid:gid`, as Docker's `--user` takes them.

    Raises `UserRefused` with Docker's wording when the user or the group does not exist.
    """
    user_part, _, group_part = spec.partition(":")
    try:
        entry = pwd.getpwuid(int(user_part)) if user_part.isdigit() else pwd.getpwnam(user_part)
    except (KeyError, OverflowError):
        raise UserRefused(
            f"{CANNOT_START_PREFIX}: {DAEMON_PREFIX}unable to find user {user_part}: no matching entries in passwd file"
        ) from None
    gid = entry.pw_gid
    if group_part:
        try:
            gid = grp.getgrgid(int(group_part)).gr_gid if group_part.isdigit() else grp.getgrnam(group_part).gr_gid
        except (KeyError, OverflowError):
            raise UserRefused(
                f"{CANNOT_START_PREFIX}: {DAEMON_PREFIX}unable to find group {group_part}: "
                "no matching entries in group file"
            ) from None
    try:
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    except OSError:
        groups = (gid,)
    home = entry.pw_dir if entry.pw_dir and os.path.isdir(entry.pw_dir) else None
    return JobUser(entry.pw_name, entry.pw_uid, gid, groups, home)


def this_process_user() -> JobUser:
    """The user this process runs as (jobs of a server that is not root run as it)."""
    return lookup(str(os.geteuid()))


class JobUsers:
    """The policy: the default job user, and which `containerProperties.user` values are honoured.

    Built once per configuration; every answer for a name is remembered (a refusal is not, so a
    user added to the host later is found without a restart).
    """

    def __init__(self, job_user: str | None = None, allowed: Sequence[str] = (), *, euid: int | None = None) -> None:
        self._euid = os.geteuid() if euid is None else euid
        name = job_user or (DEFAULT_ROOT_JOB_USER if self._euid == 0 else str(self._euid))
        try:
            self.default = lookup(name)
        except UserRefused:
            raise ValidationError(f"job_user {name!r}: no such user on this host") from None
        if self._euid != 0 and self.default.uid != self._euid:
            raise ValidationError(
                f"job_user {name!r}: the server runs as uid {self._euid} and can start jobs only as itself "
                "(run it as root to start jobs as another user)"
            )
        self._allowed_uids = {self.default.uid}
        self._allowed_names = [self.default.name]
        self.allowed = [self.default]
        for other in allowed:
            try:
                user = lookup(other)
            except UserRefused:
                raise ValidationError(f"allowed_job_users: no such user {other!r} on this host") from None
            self._allowed_uids.add(user.uid)
            self._allowed_names.append(other)
            self.allowed.append(user)
        self._known: dict[str, JobUser] = {}

    @property
    def only_this_process_user(self) -> bool:
        """Every job runs as the server's own user (nothing to switch, nothing to hide by modes)."""
        return self._allowed_uids == {self._euid}

    def resolve(self, requested: str | None) -> JobUser:
        """The user an attempt runs as: the default, or the definition's `user` when allowed."""
        if not requested:
            return self.default
        known = self._known.get(requested)
        if known is not None:
            return known
        user = lookup(requested)
        if user.uid not in self._allowed_uids:
            raise UserRefused(
                f"{CANNOT_START_PREFIX}: user {requested} is not allowed to run jobs on this Kiln server "
                f"(allowed: {', '.join(self._allowed_names)}; add it to allowed_job_users in kiln.toml)"
            )
        if self._euid != 0 and user.uid != self._euid:
            raise UserRefused(
                f"{CANNOT_START_PREFIX}: the Kiln server runs as uid {self._euid} and cannot start jobs as {requested}"
            )
        self._known[requested] = user
        return user


def blocked_on_the_way(
    path: str, user: JobUser, opened: Callable[[str, str], bool] = lambda directory, child: False
) -> str | None:
    """Why `user` could not execute `path` judged by mode bits, or None when it can.

    Checks every directory on the way (as written and after symbolic links) for search permission,
    and the file itself for execute permission: what the kernel checks at `execve`. `opened(dir,
    child)` says a closed directory is passable towards `child` anyway (job_mounts.py shows jobs
    such entries). ACLs are not read, so a path an ACL opens may be reported; never the reverse.
    """
    if user.is_root:
        return None
    for candidate in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        parts = candidate.split(os.sep)
        for end in range(1, len(parts) + 1):
            prefix = os.sep.join(parts[:end]) or os.sep
            try:
                info = os.stat(prefix)
            except OSError as error:
                return f"{prefix}: {error.strerror}"
            if end < len(parts) and opened(prefix, parts[end]):
                continue
            if not may_search(info, user):
                kind = "directory" if stat.S_ISDIR(info.st_mode) else "file"
                owner = _user_name(info.st_uid)
                return f"{kind} {prefix} (mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}) is closed to it"
    return None


def may_search(info: os.stat_result, user: JobUser) -> bool:
    """Mode bits grant `user` search (a directory) or execute (a file) permission."""
    if info.st_uid == user.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in user.groups or info.st_gid == user.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
