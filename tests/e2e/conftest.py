"""The core scenarios run once per executor: the same test code on local processes, on Docker and
on a Ray cluster (tests/ray_cluster.py).

A scenario module opts in by defining `kiln_server` from `runtime_server` and registering its
job definitions through `shell` (a busybox-compatible `sh -c` script): on the local executor the
definition uses the built-in `host` image, on Docker the busybox test image. Scripts that leave
files for the test to check write under `job_tmp`: a folder the default (unprivileged) job user
can write, which Docker containers get bind-mounted at the same path (`volumes`/`mountPoints`);
pytest's own temp dirs are root's alone and hold the servers' data dirs, which no container may
mount.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.support import unique

Shell = Callable[..., str]


@dataclass(frozen=True)
class Runtime:
    """How the scenarios run on one executor."""

    name: str
    image: str
    flags: list[str]
    shared_dir: Path | None = None  # bind-mounted at the same path inside containers
    container_extra: dict[str, Any] = field(default_factory=dict)

    def register_shell(self, batch: Any, script: str, *, memory: int = 128, vcpus: int = 1, **extra: Any) -> str:
        """A definition running `sh -c script`; returns name:revision."""
        container: dict[str, Any] = {
            "image": self.image,
            "vcpus": vcpus,
            "memory": memory,
            "command": ["sh", "-c", script],
        }
        if self.shared_dir is not None:
            container["volumes"] = [{"name": "shared", "host": {"sourcePath": str(self.shared_dir)}}]
            container["mountPoints"] = [{"sourceVolume": "shared", "containerPath": str(self.shared_dir)}]
        name = unique("jd")
        result = batch.register_job_definition(
            jobDefinitionName=name, type="container", containerProperties=container, **extra
        )
        return f"{name}:{result['revision']}"

    def workdir_marker(self, task_id: str) -> str:
        """What `pwd=$(pwd)` ends with: the attempt's own dir locally (under the server's work root;
        on Ray in the node's temp dir), the image's WORKDIR (/) in Docker."""
        return "pwd=/\n" if self.name == "docker" else f"/{task_id}\n"


@pytest.fixture(scope="module", params=["local", "docker", "ray"])
def runtime(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    if request.param == "local":
        return Runtime("local", "host", FAST_FLAGS)
    if request.param == "ray":  # the local engine on each Ray node: same image, paths and limits
        cluster = request.getfixturevalue("ray_cluster")
        return Runtime("ray", "host", [*FAST_FLAGS, "--executor", "ray", "--ray-address", cluster.address])
    daemon = request.getfixturevalue("docker_engine")
    flags = [*FAST_FLAGS, "--executor", "docker", "--docker-host", daemon.url]
    return Runtime("docker", daemon.image, flags, shared_dir=request.getfixturevalue("job_files_root"))


@pytest.fixture(scope="module")
def runtime_server(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    server = start_server(tmp_path_factory.mktemp(f"kiln-{runtime.name}"), runtime.flags)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shell(batch: Any, runtime: Runtime) -> Shell:
    """`shell(script, memory=128, vcpus=1, **register_extra)` -> a definition for this runtime."""
    return functools.partial(runtime.register_shell, batch)
