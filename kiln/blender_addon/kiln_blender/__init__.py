"""Kiln for Blender: submit the open scene to a Kiln server (or AWS Batch) from Render Properties.

This package is the add-on itself (module `kiln_blender`), zipped by `kiln blender-addon -o FILE`.
It runs in Blender's Python, without Kiln: only the standard library, `bpy` and Blender Asset
Tracer (shipped in the zip as a wheel). Only `register()` imports `bpy`, so the modules that do
not need Blender (signing, the Batch client, the pipeline's job shapes, packing) are tested
outside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

bl_info = {
    "name": "Kiln",
    "author": "Kiln contributors",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "Properties > Render > Kiln",
    "description": "Render the open scene on a Kiln server or AWS Batch: an array of render jobs and a stitch job",
    "doc_url": "https://github.com/kiln-batch/kiln/blob/main/docs/user-guide.md#rendering-from-blender-the-kiln-add-on",
    "category": "Render",
}

WHEELS = Path(__file__).parent / "wheels"


def _use_bundled_wheels() -> None:
    """A legacy add-on install does not install the manifest's wheels: import them from the zip
    files (pure Python) instead. An extension install has them in its site-packages already."""
    try:
        import blender_asset_tracer  # noqa: F401
    except ImportError:
        for wheel in sorted(WHEELS.glob("*.whl")):
            if str(wheel) not in sys.path:
                sys.path.append(str(wheel))


def register() -> None:
    _use_bundled_wheels()
    from . import ui

    ui.register()


def unregister() -> None:
    from . import ui

    ui.unregister()
