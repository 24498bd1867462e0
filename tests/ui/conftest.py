"""Browser tests: Debian's headless Chromium, driven by Playwright, against a real `kiln server`.

Playwright's own browser download is never used (this machine reaches no CDN): `make test`
installs Debian's `chromium` package and the tests launch `/usr/bin/chromium` directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, ViewportSize, sync_playwright

from tests.conftest import FAST_FLAGS, JOBS_AS_ROOT, KilnServer, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    """One Playwright per session: its sync API cannot run twice at once."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium; `make test` installs it")
    with sync_playwright() as instance:
        yield instance


def launch_chromium(playwright: Playwright, *extra_args: str) -> Browser:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args])


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = launch_chromium(playwright)
    yield launched
    launched.close()


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    # Its jobs render with this interpreter and write into pytest's root-only temp dirs, which the
    # default job user (a lent uid, under a root server) cannot reach; tests/e2e/test_job_isolation.py
    # covers the default.
    server = start_server(tmp_path_factory.mktemp("kiln-ui"), [*FAST_FLAGS, *JOBS_AS_ROOT])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ui_batch(ui_server: KilnServer) -> Any:
    return ui_server.client()


@pytest.fixture
def page(browser: Browser, ui_server: KilnServer) -> Iterator[Page]:
    """A fresh tab; a JavaScript error on the page fails the test."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_ui(page: Page, server: KilnServer, route: str = "") -> None:
    page.goto(f"{server.endpoint}/ui/{route}")
