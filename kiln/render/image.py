"""Kiln's built-in image `kiln/render`: the name job definitions use, and the local program it runs.

On the local executor an image is only an entrypoint prepended to the job's command, so the
workshop's job definition (`["Ref::action", "-i", ...]` against the render image) runs this
package's CLI with the server's own Python, which has Blender (`bpy`) installed beside Kiln.
Register it with `ImageCatalogue.register(IMAGE, entrypoint())`.
"""

from __future__ import annotations

import sys

IMAGE = "kiln/render"


def entrypoint() -> list[str]:
    """`python -m kiln.render` with the interpreter Kiln itself runs on (same venv, same pins)."""
    return [sys.executable, "-m", "kiln.render"]
