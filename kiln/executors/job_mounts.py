"""Jobs reach the programs Kiln runs for them, even when those are installed in a private directory.

A root server starts jobs as an unprivileged user. When Kiln's interpreter or venv lives under a
directory that user may not pass (`/root`, mode 0700, is where pyenv and many CI images put
Python), the render image cannot start. Opening `/root` to everyone would expose root's home;
instead the supervisor prepares, once per configuration, a mount namespace in which each such
directory is covered by an empty tmpfs (0711) holding only bind mounts of the entries jobs need
(`/root/.pyenv`, say). Jobs enter it (`setns`) as they start, before they drop root: in it they see
those entries with their own modes, and nothing else of the covered directory. Nothing changes on
the host, and every other path looks as it does outside.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .job_users import JobUser, may_search

logger = logging.getLogger(__name__)

PREPARE_SECONDS = 20.0

# Run by a root helper process: make a mount namespace, open the directories in it, say "ready",
# and live until the supervisor has taken a descriptor of the namespace (which keeps it alive).
_PREPARE_SCRIPT = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWNS, MS_NOSUID, MS_NODEV, MS_REC, MS_SLAVE = 0x20000, 2, 4, 0x4000, 1 << 19
OPEN_TREE_CLONE, O_CLOEXEC, AT_RECURSIVE, AT_FDCWD, MOVE_MOUNT_F_EMPTY_PATH = 1, 0o2000000, 0x8000, -100, 4
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # the same number on every architecture (generic table)

def check(result, what):
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result

check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
# Slave: what is mounted on the host later (shared mounts, systemd's default) still reaches jobs;
# nothing mounted here reaches the host.
check(libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "make / a slave of the host's mounts")
for directory, children in json.loads(sys.argv[1]):
    kept = []
    for child in children:
        path = os.path.join(directory, child).encode()
        flags = OPEN_TREE_CLONE | O_CLOEXEC | AT_RECURSIVE
        kept.append((child, os.path.isdir(path), check(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path, flags), f"open_tree {path}")))
    check(libc.mount(b"tmpfs", directory.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0711,size=64k"), f"tmpfs on {directory}")
    for child, is_dir, tree in kept:
        target = os.path.join(directory, child)
        if is_dir:
            os.mkdir(target)
        else:
            open(target, "x").close()
        check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH), f"move_mount {target}")
        os.close(tree)
print("ready", flush=True)
sys.stdin.read()
"""


def paths_jobs_need(entrypoints: Iterable[str]) -> list[str]:
    """The files a job must reach to run Kiln's images: each absolute entrypoint program and, when
    one is this interpreter, its standard library and Kiln's own package (the render image)."""
    needed: list[str] = []
    for program in entrypoints:
        if not os.path.isabs(program):
            continue
        needed.append(program)
        if os.path.realpath(program) == os.path.realpath(sys.executable):
            kiln_package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            needed += [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], kiln_package]
    return list(dict.fromkeys(needed))


def openings(paths: Iterable[str], users: Iterable[JobUser]) -> dict[str, tuple[str, ...]]:
    """Directory -> the entries in it to show jobs, for every directory on the way to `paths` (as
    written and after symbolic links) that one of `users` may not pass."""
    found: dict[str, set[str]] = {}
    for user in users:
        if user.is_root:
            continue
        for path in paths:
            for candidate in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
                parts = candidate.split(os.sep)[1:]
                for depth in range(len(parts) - 1):
                    directory = os.sep + os.sep.join(parts[:depth])
                    try:
                        info = os.stat(directory)
                    except OSError:
                        break
                    if stat.S_ISDIR(info.st_mode) and not may_search(info, user):
                        found.setdefault(directory, set()).add(parts[depth])
    return {directory: tuple(sorted(found[directory])) for directory in sorted(found, key=lambda d: d.count(os.sep))}


@dataclass
class JobMounts:
    """The prepared namespace (a descriptor of it), or none: nothing to open, or it failed (`note`)."""

    opened: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fd: int | None = None
    note: str = ""

    @classmethod
    def prepare(cls, paths: Iterable[str], users: Iterable[JobUser]) -> JobMounts:
        """Open what `users` cannot reach of `paths`; only root can, and only where the kernel lets it."""
        wanted = openings(paths, users)
        if not wanted or os.geteuid() != 0:
            return cls()
        try:
            fd = _namespace_with(wanted)
        except (OSError, subprocess.SubprocessError) as exc:
            note = f"cannot open {', '.join(wanted)} to jobs in a mount namespace: {exc}"
            logger.warning("%s; jobs that need a program in there will fail to start", note)
            return cls(note=note)
        shown = "; ".join(f"{directory}: {', '.join(children)}" for directory, children in wanted.items())
        return cls(wanted, fd, f"private directories shown to jobs (a mount namespace): {shown}")

    def admits(self, directory: str, child: str) -> bool:
        """Whether a job passes `directory` towards `child` in the namespace."""
        return self.fd is not None and child in self.opened.get(directory, ())

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _namespace_with(wanted: Mapping[str, tuple[str, ...]]) -> int:
    """A descriptor of a new mount namespace with `wanted` opened (the helper process is gone)."""
    argument = json.dumps(list(wanted.items()))
    with subprocess.Popen(
        [sys.executable, "-I", "-c", _PREPARE_SCRIPT, argument],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
    ) as helper:  # fmt: skip
        assert helper.stdin is not None and helper.stdout is not None and helper.stderr is not None
        try:
            ready = helper.stdout.readline()
            if ready.strip() != b"ready":
                helper.wait(PREPARE_SECONDS)
                reason = helper.stderr.read().decode(errors="replace").strip().splitlines()
                raise OSError(reason[-1] if reason else f"the helper exited with {helper.returncode}")
            return os.open(f"/proc/{helper.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            helper.stdin.close()
            try:
                helper.wait(PREPARE_SECONDS)
            except subprocess.TimeoutExpired:
                helper.kill()
