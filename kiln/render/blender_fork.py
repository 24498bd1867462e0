"""Make a process that has imported `bpy` safe to `fork`: stop the worker threads its libraries keep.

`import bpy` starts thread pools: oneTBB workers (Blender's and Cycles' parallelism) and OpenEXR's
IlmThread pool. `fork` copies only the calling thread, so a child inherits pools whose threads do
not exist: measured on bpy 4.5, Cycles then renders on one thread whatever `threads` says (TBB hands
work to the dead worker) and writing an EXR hangs forever (its tasks wait for dead IlmThread
workers). Both libraries can stop their threads cleanly, but bpy exposes neither call, so they are
reached through `ctypes` in the libraries bpy ships: `tbb::finalize` (blocking; it waits for the
workers to exit) and `Imf::setGlobalThreadCount(0)`. The child restores the EXR pool size; TBB
starts fresh workers by itself on first use. Anything that is not as expected raises `ForkUnsafe`,
and the caller must then not fork.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

# oneTBB's exported ABI (namespace r1) and OpenEXR 3.3's, as shipped in the bpy wheel's lib/ folder.
_TBB_LIBRARY = "libtbb.so.12"
_TBB_GET = "_ZN3tbb6detail2r13getERNS0_2d121task_scheduler_handleE"  # r1::get(task_scheduler_handle&)
_TBB_FINALIZE = "_ZN3tbb6detail2r18finalizeERNS0_2d121task_scheduler_handleEl"  # r1::finalize(handle&, long)
_TBB_FINALIZE_NOTHROWING = 1  # d1::finalize_nothrowing: returns false instead of throwing
_EXR_LIBRARY = "libOpenEXR.so.32"
_EXR_GET_THREADS = "_ZN7Imf_3_317globalThreadCountEv"
_EXR_SET_THREADS = "_ZN7Imf_3_320setGlobalThreadCountEi"


class ForkUnsafe(Exception):
    """The thread pools could not be stopped: a forked child could hang or lose its threads."""


class BlenderThreadPools:
    """The oneTBB and OpenEXR pools of the `bpy` loaded in this process."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("bpy")
        if spec is None or spec.origin is None:
            raise ForkUnsafe("bpy is not installed")
        libraries = Path(spec.origin).parent / "lib"
        try:
            tbb = ctypes.CDLL(str(libraries / _TBB_LIBRARY))
            exr = ctypes.CDLL(str(libraries / _EXR_LIBRARY))
            self._tbb_get = getattr(tbb, _TBB_GET)
            self._tbb_finalize = getattr(tbb, _TBB_FINALIZE)
            self._exr_get = getattr(exr, _EXR_GET_THREADS)
            self._exr_set = getattr(exr, _EXR_SET_THREADS)
        except (OSError, AttributeError) as error:
            raise ForkUnsafe(f"this bpy's thread libraries are not the expected ones: {error}") from None
        self._tbb_get.argtypes = [ctypes.c_void_p]
        self._tbb_finalize.argtypes = [ctypes.c_void_p, ctypes.c_long]
        self._tbb_finalize.restype = ctypes.c_bool
        self._exr_get.restype = ctypes.c_int
        self._exr_set.argtypes = [ctypes.c_int]
        self.exr_threads = int(self._exr_get())

    def stop(self) -> None:
        """Join every pool thread (call right before `fork`, from the only thread using bpy)."""
        self._exr_set(0)
        handle = ctypes.c_void_p(0)  # d1::task_scheduler_handle is one pointer
        self._tbb_get(ctypes.byref(handle))
        if not self._tbb_finalize(ctypes.byref(handle), _TBB_FINALIZE_NOTHROWING):
            raise ForkUnsafe("oneTBB refused to finalize (its scheduler is still in use)")

    def restore(self) -> None:
        """In the child: give OpenEXR its pool back (TBB restarts its own workers on demand)."""
        self._exr_set(self.exr_threads)
