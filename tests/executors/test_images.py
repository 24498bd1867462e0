"""The image catalogue: built-ins, configured images, registrations and AWS's pull error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kiln.config import Settings
from kiln.errors import KilnError
from kiln.executors.images import HOST_IMAGE, RENDER_IMAGE, ImageCatalogue, ImageNotFound


def test_host_runs_the_command_directly() -> None:
    assert ImageCatalogue().resolve(HOST_IMAGE) == []


def test_configured_images_come_from_settings_beside_kilns_own(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, images={"acme/render": ["python", "-m", "render"]})
    catalogue = ImageCatalogue.from_settings(settings)
    assert catalogue.resolve("acme/render") == ["python", "-m", "render"]
    assert catalogue.names() == ["acme/render", "host", "kiln/render"]
    assert catalogue.built_in() == ["host", "kiln/render"]
    # Kiln's render worker runs on this interpreter; a configured `kiln/render` would win.
    assert catalogue.resolve(RENDER_IMAGE) == [sys.executable, "-m", "kiln.render"]
    overridden = Settings(data_dir=tmp_path, images={RENDER_IMAGE: ["/opt/render/bin/render"]})
    assert ImageCatalogue.from_settings(overridden).resolve(RENDER_IMAGE) == ["/opt/render/bin/render"]


def test_latest_tag_is_implicit() -> None:
    catalogue = ImageCatalogue({"busybox": ["busybox"], "tool:latest": ["tool"]})
    assert catalogue.resolve("busybox:latest") == ["busybox"]
    assert catalogue.resolve("tool") == ["tool"]
    with pytest.raises(ImageNotFound):
        catalogue.resolve("busybox:1.36")


def test_resolve_returns_a_copy() -> None:
    catalogue = ImageCatalogue({"a": ["x"]})
    catalogue.resolve("a").append("mutated")
    assert catalogue.resolve("a") == ["x"]


def test_unknown_image_reads_like_aws() -> None:
    with pytest.raises(ImageNotFound) as caught:
        ImageCatalogue({"mine": ["m"]}).resolve("123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1")
    message = caught.value.message
    assert message.startswith("CannotPullContainerError: ")
    assert "failed to resolve ref 123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1" in message
    assert "built-in: host; configured: mine;" in message
    assert "[images] in kiln.toml" in message
    assert str(caught.value) == message
    assert isinstance(caught.value, KilnError)


def test_register_adds_a_built_in_image() -> None:
    catalogue = ImageCatalogue()
    catalogue.register("kiln/render", ["python", "-m", "kiln.render"])
    assert catalogue.resolve("kiln/render:latest") == ["python", "-m", "kiln.render"]
    with pytest.raises(ImageNotFound, match=r"built-in: host, kiln/render;"):
        catalogue.resolve("other")


def test_configuration_wins_over_a_registration() -> None:
    catalogue = ImageCatalogue({"kiln/render": ["my-render"]})
    catalogue.register("kiln/render", ["python", "-m", "kiln.render"])
    assert catalogue.resolve("kiln/render") == ["my-render"]


def test_register_rejects_an_empty_name() -> None:
    with pytest.raises(ValueError):
        ImageCatalogue().register("", [])
