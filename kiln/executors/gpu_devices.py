"""This host's GPUs for the local executor: which devices exist, and which attempt holds which.

AWS Batch reserves whole GPUs (`resourceRequirements` type `GPU`) and shows a job only its own
devices. Here the devices are the ones `nvidia-smi` lists (it ships with the NVIDIA driver, so it
is there wherever CUDA is usable; no binary or no GPU means none), unless the `gpus` setting gives
a count, which wins: the first N devices found, or devices 0..N-1 when the host shows fewer (a
count is trusted as given, for GPUs nvidia-smi cannot list and for tests).

Each attempt that asks for GPUs is handed free devices of its own through `CUDA_VISIBLE_DEVICES`
and `NVIDIA_VISIBLE_DEVICES` (indices in nvidia-smi's order; `CUDA_DEVICE_ORDER=PCI_BUS_ID` makes
CUDA count them the same way); an attempt without GPUs on a host with GPUs sees none. The holdings
live in the engine, which runs inside the attempt supervisor: the supervisor outlives servers, so
attempts adopted by a restarted server keep their devices and a new assignment never reuses them.
Attempts a dead supervisor left behind are killed before the next one starts anything.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .base import AttemptSpec

NVIDIA_SMI_QUERY = ("--query-gpu=index,uuid", "--format=csv,noheader")
NVIDIA_SMI_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class GpuInventory:
    """The devices attempts may be given, and a one-line account of where they came from."""

    devices: tuple[str, ...]
    note: str


@functools.cache
def detect_gpus() -> GpuInventory:
    """The GPUs `nvidia-smi` lists (their indices); none when it is missing or fails.

    Asked once per process (it can take a second with the driver idle); the supervisor asks again
    whenever it is restarted, which happens after 10 s with nothing to do.
    """
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return GpuInventory((), "gpus: none (no nvidia-smi on PATH)")
    try:
        done = subprocess.run(
            [binary, *NVIDIA_SMI_QUERY],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return GpuInventory((), f"gpus: none (nvidia-smi failed: {exc})")
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return GpuInventory((), f"gpus: none (nvidia-smi exited {done.returncode}: {said[0] if said else ''})")
    devices = parse_nvidia_smi(done.stdout)
    if not devices:
        return GpuInventory((), "gpus: none (nvidia-smi lists no GPU)")
    return GpuInventory(devices, f"gpus: {len(devices)} found by nvidia-smi ({', '.join(devices)})")


def parse_nvidia_smi(output: str) -> tuple[str, ...]:
    """Device indices from `nvidia-smi --query-gpu=index,uuid --format=csv,noheader` lines."""
    indices = [line.split(",")[0].strip() for line in output.splitlines() if line.strip()]
    return tuple(index for index in indices if index.isdigit())


def host_gpus(configured: int | None) -> GpuInventory:
    """The GPUs to place on: detected, or `configured` many (see the module docstring)."""
    if configured is None:
        return detect_gpus()
    if configured <= 0:
        return GpuInventory((), "gpus: none (gpus = 0 in the settings)")
    found = detect_gpus().devices
    devices = found[:configured] if len(found) >= configured else tuple(str(i) for i in range(configured))
    return GpuInventory(devices, f"gpus: {configured} configured ({', '.join(devices)})")


def visible_devices_environment(devices: Sequence[str], host_has_gpus: bool) -> dict[str, str]:
    """The variables that confine an attempt to `devices` (none at all on a host without GPUs)."""
    if not devices:
        return {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "none"} if host_has_gpus else {}
    listed = ",".join(devices)
    return {"CUDA_VISIBLE_DEVICES": listed, "NVIDIA_VISIBLE_DEVICES": listed, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


class NotEnoughGpus(Exception):
    """An attempt asked for more GPUs than are free (the scheduler's accounting disagrees)."""


class GpuAllocator:
    """Which attempt holds which device; thread-safe (attempts start and end on different threads)."""

    def __init__(self, inventory: GpuInventory) -> None:
        self._lock = threading.Lock()
        self._inventory = inventory
        self._held: dict[str, tuple[str, ...]] = {}

    @property
    def inventory(self) -> GpuInventory:
        return self._inventory

    def reconfigure(self, inventory: GpuInventory) -> None:
        """New devices (a server with other settings connected); devices held stay held until released."""
        with self._lock:
            self._inventory = inventory

    def assign(self, attempt_id: str, count: int) -> tuple[str, ...]:
        """`count` free devices for `attempt_id`, lowest first; raises `NotEnoughGpus`."""
        if count <= 0:
            return ()
        with self._lock:
            taken = {device for devices in self._held.values() for device in devices}
            free = [device for device in self._inventory.devices if device not in taken]
            if len(free) < count:
                raise NotEnoughGpus(
                    f"the job needs {count} GPU(s) but {len(free)} of this host's "
                    f"{len(self._inventory.devices)} are free"
                )
            self._held[attempt_id] = tuple(free[:count])
            return self._held[attempt_id]

    def confine(self, spec: AttemptSpec) -> AttemptSpec:
        """`spec` with devices of its own in its environment, after the job's own variables (so a
        job cannot widen them); unchanged on a host without GPUs. Raises `NotEnoughGpus`."""
        devices = self.assign(spec.attempt_id, spec.gpus)
        confined = visible_devices_environment(devices, bool(self._inventory.devices))
        return replace(spec, environment={**spec.environment, **confined}) if confined else spec

    def release(self, attempt_id: str) -> None:
        with self._lock:
            self._held.pop(attempt_id, None)

    def held(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return dict(self._held)
