"""Who an attempt runs as on this host: names resolved once per configuration, never per attempt.

A job must not reach the control plane (the data dir's access keys and database, the supervisor's
socket, other jobs' logs), as an AWS container never sees Batch's own state. A server running as
root therefore starts attempts as an unprivileged user; a job definition's
`containerProperties.user` picks another one only when it is `job_user` or listed in
`allowed_job_users` (root only when listed), and must exist, as Docker requires (with Docker's
words when it does not). A server that is not root can start jobs only as itself.

Nor may one job reach another while both run: the kernel lets a process read a process of its own
uid (`/proc/<pid>/environ` with its role credentials, `/proc/<pid>/cwd` into its workdir) and signal
it. So when no `job_user` is named, each attempt of a root server borrows a uid of its own from
`job_uids` (by default 2,000,000,000 onwards, outside the ranges distributions and /etc/subuid hand
out), with `nobody`'s group: jobs still share files through that group (umask 002, so one render
child writes into the frames folder another made), never processes or workdirs. A uid goes back
to the pool when its attempt has no process left (cgroups say so) and the lowest free one is lent
next, so the numbers in use stay few and each keeps its spare workdirs (workdirs.py).

Names become numbers (uid, gid, groups, home) here, once: the launcher then makes plain system calls
with numbers, and an array's thousands of children do not each read /etc/passwd.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from kiln.errors import KilnError, ValidationError

from .base import CANNOT_START_PREFIX

DEFAULT_ROOT_JOB_USER = "nobody"
DEFAULT_JOB_UIDS = "2000000000-2000065535"
NO_JOB_UIDS = "none"
# Attempts that borrow a uid share files with each other through their group, as `nobody` did.
SHARED_GROUP_UMASK = 0o002
DAEMON_PREFIX = "Error response from daemon: "


@dataclass(frozen=True)
class JobUser:
    """A resolved user: what the launcher switches to (`home` None: no usable home directory)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str | None
    # Each attempt borrows a uid of its own (`UidPool`); `uid` is then the pool's first, which
    # stands for every borrowed one in mode-bit checks (they own nothing outside their workdirs).
    borrows_uid: bool = False

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def differs_from_this_process(self) -> bool:
        """Starting a job as this user needs a switch (setuid) in the launcher."""
        return self.borrows_uid or self.uid != os.geteuid() or self.gid != os.getegid()

    def borrowing(self, uid: int) -> JobUser:
        """This identity with a borrowed `uid` (its name is the number: no passwd entry has it)."""
        return replace(self, name=str(uid), uid=uid)

    @property
    def described(self) -> str:
        """This identity in an error message."""
        if self.borrows_uid:
            return f"uid {self.uid} (lent from job_uids, group {self.gid})"
        return f"user {self.name} (uid {self.uid})"

    @property
    def umask(self) -> int | None:
        """The umask the launcher gives the job (None: the supervisor's own, inherited)."""
        return SHARED_GROUP_UMASK if self.borrows_uid else None


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

    def __init__(
        self,
        job_user: str | None = None,
        allowed: Sequence[str] = (),
        *,
        job_uids: str | None = None,
        euid: int | None = None,
    ) -> None:
        self._euid = os.geteuid() if euid is None else euid
        name = job_user or (DEFAULT_ROOT_JOB_USER if self._euid == 0 else str(self._euid))
        try:
            named = lookup(name)
        except UserRefused:
            raise ValidationError(f"job_user {name!r}: no such user on this host") from None
        if self._euid != 0 and named.uid != self._euid:
            raise ValidationError(
                f"job_user {name!r}: the server runs as uid {self._euid} and can start jobs only as itself "
                "(run it as root to start jobs as another user)"
            )
        # Borrowed uids: by default when no job_user is named, or when job_uids names a range.
        spec = job_uids if job_uids is not None else (NO_JOB_UIDS if job_user else DEFAULT_JOB_UIDS)
        span = parse_uid_range(spec)
        if span is not None and job_uids is not None and self._euid != 0:
            raise ValidationError(
                f"job_uids {job_uids!r}: the server runs as uid {self._euid} and cannot lend uids to jobs "
                "(run it as root, or remove job_uids)"
            )
        self.uids = span if self._euid == 0 and not named.is_root else None
        self.default = named
        if self.uids is not None:
            self.default = JobUser(str(self.uids[0]), self.uids[0], named.gid, (named.gid,), None, borrows_uid=True)
        self._allowed_uids = {named.uid}
        self._allowed_names = [named.name]
        self.allowed = list(dict.fromkeys([self.default, named]))
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
    def described(self) -> str:
        """Who jobs without a `user` run as, in words (logs, errors)."""
        if self.uids is None:
            return f"{self.default.name} (uid {self.default.uid})"
        return f"a uid of their own from {self.uids[0]}-{self.uids[1]} (group {self.default.gid})"

    @property
    def only_this_process_user(self) -> bool:
        """Every job runs as the server's own user (nothing to switch, nothing to hide by modes)."""
        return self.uids is None and self._allowed_uids == {self._euid}

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


def parse_uid_range(spec: str) -> tuple[int, int] | None:
    """`job_uids`: "FIRST-LAST" (inclusive), or "none" (every job runs as `job_user`)."""
    if spec.strip().lower() == NO_JOB_UIDS:
        return None
    first, dash, last = spec.partition("-")
    try:
        span = (int(first), int(last)) if dash else (-1, -1)
    except ValueError:
        span = (-1, -1)
    if not 1000 <= span[0] <= span[1] < 2**31 - 1:
        raise ValidationError(
            f"job_uids {spec!r} must be FIRST-LAST with 1000 <= FIRST <= LAST < 2147483647 "
            f'(the uids attempts borrow, e.g. "{DEFAULT_JOB_UIDS}"), or "{NO_JOB_UIDS}"'
        )
    taken = next((entry for entry in pwd.getpwall() if span[0] <= entry.pw_uid <= span[1]), None)
    if taken is not None:
        raise ValidationError(
            f"job_uids {spec!r} holds uid {taken.pw_uid} of user {taken.pw_name}: attempts would run as that "
            "user and could reach its files; pick a range no user of this host has"
        )
    return span


class UidPool:
    """The uids lent to running attempts: the lowest free one first, back when the attempt is over.

    What is free follows from what is lent: at most a host's concurrency is lent at once, so the
    lowest free uid is found among the first few of the range. Not thread-safe: the local executor
    calls it under its lock.
    """

    def __init__(self, span: tuple[int, int] | None, lent: dict[str, int] | None = None) -> None:
        self.span = span
        self.lent: dict[str, int] = dict(lent or {})

    def resized(self, span: tuple[int, int] | None) -> UidPool:
        """A pool over `span` that keeps what is lent now (a reconnecting server may change job_uids)."""
        return self if span == self.span else UidPool(span, self.lent)

    def lend(self, attempt_id: str, user: JobUser) -> JobUser:
        """`user` itself, or `user` with a uid of the attempt's own when it borrows one."""
        if not user.borrows_uid:
            return user
        in_use = set(self.lent.values())
        first, last = self.span or (0, -1)
        uid = next((uid for uid in range(first, last + 1) if uid not in in_use), None)
        if uid is None:
            span = "off" if self.span is None else f"{first}-{last}"
            raise UserRefused(
                f"{CANNOT_START_PREFIX}: every uid of job_uids ({span}) is lent to a running attempt; "
                "widen job_uids in kiln.toml"
            )
        self.lent[attempt_id] = uid
        return user.borrowing(uid)

    def give_back(self, attempt_id: str) -> None:
        """The attempt has no process left: its uid may be lent again."""
        self.lent.pop(attempt_id, None)


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
