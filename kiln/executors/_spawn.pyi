"""Types of the C launcher (kiln/executors/_spawn.c)."""

from collections.abc import Sequence

def spawn(
    path: bytes,
    argv: list[bytes],
    envp: list[bytes],
    cwd: bytes,
    log: bytes,
    procs: list[bytes],
    uid: int = -1,
    gid: int = -1,
    groups: Sequence[int] = (),
    mount_ns: int = -1,
    umask: int = -1,
    /,
) -> int: ...

class Launcher:
    """`spawn` on a thread of its own: `submit` returns at once, `collect` gives the outcomes."""

    def submit(
        self,
        token: str,
        path: bytes,
        argv: list[bytes],
        envp: list[bytes],
        cwd: bytes,
        log: bytes,
        procs: list[bytes],
        uid: int = -1,
        gid: int = -1,
        groups: Sequence[int] = (),
        mount_ns: int = -1,
        umask: int = -1,
        /,
    ) -> None: ...
    def collect(self) -> list[tuple[str, int, int, OSError | None]]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
