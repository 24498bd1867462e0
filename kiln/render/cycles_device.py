"""Which device Cycles renders on: the job's GPUs when it was given some, else the CPU.

A job gets GPUs only by asking (`resourceRequirements` type `GPU`); the executor then names its
devices in `CUDA_VISIBLE_DEVICES`, and CUDA (so Cycles) sees only those. Without that variable, or
with it empty, the job has no GPU of its own and renders on the CPU, even on a host with GPUs,
so it never competes with a GPU job for a device it was not given. With devices named, Cycles'
preferences are asked for them, OptiX first (RTX hardware ray tracing), then CUDA; if the bpy
wheel or the driver offers neither, the render falls back to the CPU and says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GPU_BACKENDS = ("OPTIX", "CUDA")  # preferred first; both address NVIDIA GPUs by CUDA_VISIBLE_DEVICES
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class DeviceChoice:
    """`device` is Cycles' scene setting (`CPU` or `GPU`); `backend` the compute device type used."""

    device: str
    backend: str
    devices: tuple[str, ...]  # names of the devices Cycles will use (GPU only)
    why: str

    def describe(self) -> str:
        """One line for the job log."""
        if self.device == "GPU":
            return f"Cycles renders on the GPU ({self.backend}: {', '.join(self.devices)}); {self.why}"
        return f"Cycles renders on the CPU; {self.why}"


def assigned_gpus(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The devices the executor gave this job (`CUDA_VISIBLE_DEVICES`); none when unset or empty."""
    raw = environ.get(VISIBLE_DEVICES, "").strip()
    devices = tuple(part.strip() for part in raw.split(",") if part.strip())
    return () if devices in ((), ("-1",)) else devices  # "-1": CUDA's own spelling of "no device"


def choose_device(preferences: Any, environ: Mapping[str, str]) -> DeviceChoice:
    """Pick the device from Cycles' add-on preferences (`bpy.context.preferences.addons["cycles"]`).

    Leaves `preferences.compute_device_type` on the chosen backend (Cycles reads it at render time).
    """
    assigned = assigned_gpus(environ)
    if not assigned:
        return DeviceChoice("CPU", "NONE", (), f"{VISIBLE_DEVICES} is unset or empty: this job was given no GPU")
    preferences.refresh_devices()  # Cycles' advice: fill every list once, so later lookups never re-allocate it
    tried = []
    for backend in GPU_BACKENDS:
        try:
            preferences.compute_device_type = backend
        except TypeError:  # not compiled into this Blender build
            continue
        tried.append(backend)
        found = [d for d in preferences.get_devices_for_type(backend) if d.type == backend]
        if found:
            names = tuple(str(d.name) for d in found)
            return DeviceChoice("GPU", backend, names, f"{VISIBLE_DEVICES}={','.join(assigned)}")
    preferences.compute_device_type = "NONE"
    searched = "/".join(tried) or "this Blender build has neither"
    return DeviceChoice(
        "CPU", "NONE", (), f"{VISIBLE_DEVICES}={','.join(assigned)} but Cycles found no GPU device ({searched})"
    )


def apply_device(scene: Any, preferences: Any, choice: DeviceChoice) -> None:
    """Enable exactly the chosen devices (no CPU beside a GPU) and set the scene's Cycles device."""
    if choice.device == "GPU":
        for device in preferences.get_devices_for_type(choice.backend):
            device.use = device.type == choice.backend
    scene.cycles.device = choice.device
