"""A Kiln server on the test Ray cluster for each Ray test module (the restart tests make their own)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import FAST_FLAGS, KilnServer, start_server
from tests.ray_cluster import RayCluster


@pytest.fixture(scope="module")
def server(
    ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[KilnServer]:
    flags = [*FAST_FLAGS, "--executor", "ray", "--ray-address", ray_cluster.address]
    flags += getattr(request.module, "SERVER_FLAGS", [])  # e.g. JOBS_AS_ROOT for the render module
    server = start_server(tmp_path_factory.mktemp(f"kiln-{request.module.__name__.rsplit('.', 1)[-1]}"), flags)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def batch(server: KilnServer) -> Any:
    return server.client()
