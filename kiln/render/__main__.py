"""`python -m kiln.render` is `kiln-render`, the entrypoint of the `kiln/render` image."""

from kiln.render.cli import run

run()
