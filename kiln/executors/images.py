"""The local image catalogue: what an AWS `image` name means when no container engine runs jobs.

On the local executor an image is only a name for an entrypoint prepended to the job's command, so
a job definition written for AWS (`image: my/render:latest`, `command: [...]`) runs unchanged once
the user maps that image to a local program in `kiln.toml`. An unknown image must fail the attempt
the way AWS does, so the message copies Docker's `CannotPullContainerError` wording.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from kiln.config import Settings
from kiln.errors import KilnError

from .base import CANNOT_PULL_PREFIX

HOST_IMAGE = "host"  # built in: run the job's command as given, on this host
# Built in: Kiln's render worker (kiln/render), run with the interpreter Kiln itself runs on (same
# venv, same pins, Blender's `bpy` beside Kiln), so the workshop's job definition
# (`["Ref::action", "-i", ...]` on the render image) runs unchanged. Only a module name: the
# executors never import the render package.
RENDER_IMAGE = "kiln/render"
_LATEST = ":latest"


class ImageNotFound(KilnError):
    """The image is in no catalogue entry; the message is the attempt's container reason."""

    def __init__(self, image: str, built_in: Sequence[str], configured: Sequence[str]) -> None:
        self.image = image
        known = f"built-in: {', '.join(built_in)}"
        if configured:
            known += f"; configured: {', '.join(configured)}"
        super().__init__(
            f"{CANNOT_PULL_PREFIX}: pull image manifest has been retried 1 time(s): "
            f"failed to resolve ref {image}: not found in Kiln's image catalogue "
            f"({known}; add it under [images] in kiln.toml)"
        )


class ImageCatalogue:
    """Image name -> entrypoint, from the built-ins, `Settings.images` and later registrations.

    Registrations are how Kiln's own images (e.g. `kiln/render`) become built in without the user
    configuring anything; configuration may still override them on purpose.
    """

    def __init__(self, images: Mapping[str, Sequence[str]] | None = None) -> None:
        self._entries: dict[str, list[str]] = {HOST_IMAGE: []}
        self._built_in: set[str] = {HOST_IMAGE}
        for name, entrypoint in (images or {}).items():
            self._entries[name] = list(entrypoint)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageCatalogue:
        """The catalogue a server (or a Ray node) with these settings offers: the configured
        images and Kiln's own, with this process's interpreter."""
        catalogue = cls(settings.images)
        catalogue.register(RENDER_IMAGE, render_entrypoint())
        return catalogue

    def register(self, name: str, entrypoint: Sequence[str]) -> None:
        """Add a built-in image (one Kiln ships) unless the user's configuration already names it."""
        if not name:
            raise ValueError("an image name cannot be empty")
        self._built_in.add(name)
        self._entries.setdefault(name, list(entrypoint))

    def entries(self) -> dict[str, list[str]]:
        """Every image and its entrypoint (to hand the catalogue to another process)."""
        return {name: list(entrypoint) for name, entrypoint in self._entries.items()}

    def built_in(self) -> list[str]:
        """The names Kiln itself provides (registered), as opposed to configured ones."""
        return sorted(self._built_in)

    def names(self) -> list[str]:
        """Every image this catalogue resolves, sorted (for docs, CLI listings and messages)."""
        return sorted(self._entries)

    def resolve(self, image: str) -> list[str]:
        """The entrypoint for `image` (a fresh list), or `ImageNotFound` with AWS's wording.

        `name` and `name:latest` are the same image, as they are for Docker.
        """
        for candidate in _aliases(image):
            if candidate in self._entries:
                return list(self._entries[candidate])
        configured = sorted(set(self._entries) - self._built_in)
        raise ImageNotFound(image, sorted(self._built_in), configured)


def render_entrypoint() -> list[str]:
    """`python -m kiln.render` with the interpreter Kiln runs on."""
    return [sys.executable, "-m", "kiln.render"]


def _aliases(image: str) -> list[str]:
    """`image` first, then its spelling with or without the implicit `:latest` tag."""
    if image.endswith(_LATEST):
        return [image, image.removesuffix(_LATEST)]
    last_part = image.rsplit("/", 1)[-1]
    if ":" in last_part or "@" in last_part:
        return [image]
    return [image, image + _LATEST]
