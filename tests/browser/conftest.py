"""The web UI in a real browser: Debian's chromium-headless-shell driven by Playwright, against a
real server (tests/conftest.py's ``start_server``: real git, real HTTP on loopback).

Playwright's async API runs on the test's own event loop, beside the server, so these tests use
the suite's fixtures as they are (there is no pytest-playwright, whose sync API could not share
a session with them). ``make test`` runs this folder with the rest of the suite, installing the
browser first where it can; ``make test-browser`` runs it alone. Never ``playwright install``:
it downloads a browser build, which cannot work here; the Debian package is the browser.

Every page a test opens records its requests; at the end of the test each must have gone to the
server's own origin (or be a blob: URL of it: audio the page made itself).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ..helpers import ROOT
from .helpers import TIMEOUT_MS, Page, async_playwright

BROWSER = Path(os.environ.get("ALLTALK_TEST_BROWSER", "/usr/bin/chromium-headless-shell"))
ARTIFACTS = Path(os.environ.get("ALLTALK_TEST_ARTIFACTS",
                                ROOT / "var" / "test-artifacts" / "browser"))
INSTALL = ("apt-get install chromium-headless-shell (Debian, as root), and the playwright "
           "package from the [test] extra")
MISSING = ("the playwright package is not installed" if async_playwright is None
           else f"no browser at {BROWSER}" if not BROWSER.exists() else None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MISSING is None:
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason=f"browser tests skipped: {MISSING}; install with: {INSTALL}")
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(skip)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_playwright() as p:
        # The flag lets audio start without a click, as a person's click would.
        launched = await p.chromium.launch(
            executable_path=str(BROWSER), args=["--autoplay-policy=no-user-gesture-required"])
        yield launched
        await launched.close()


class Pages:
    """Opens pages on a server and remembers every request they make."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.requests: list[Any] = []
        self.errors: list[str] = []
        self.origin = ""

    async def open(self, client: Any, hash_: str = "", context: Any = None,
                   setup: Callable[[Page], Any] | None = None) -> Page:
        """A new page (in a new context unless given one) at ``/ui/<hash_>``; ``setup(page)``
        runs before it loads (say, to route its requests)."""
        self.origin = f"http://127.0.0.1:{client.port}"
        if context is None:
            context = await self.browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(TIMEOUT_MS)
            self.contexts.append(context)
        page = await context.new_page()
        page.on("request", lambda request: self.requests.append(request))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        if setup is not None:
            await setup(page)
        await page.goto(f"{self.origin}/ui/{hash_}")
        return page

    def foreign(self) -> list[str]:
        """Requests that left the page's origin."""
        own = (f"{self.origin}/", f"blob:{self.origin}/")
        return [r.url for r in self.requests if not r.url.startswith(own)]

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def pages(browser: Any) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    yield opened
    await opened.close()
    assert opened.requests, "no page was opened"
    assert not opened.foreign(), f"requests left the page's origin: {opened.foreign()}"
    assert not opened.errors, f"uncaught errors in the page: {opened.errors}"


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Save a full-page screenshot as a test artifact: <test name>-<what>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    async def take(page: Page, what: str) -> Path:
        path = ARTIFACTS / f"{request.node.name}-{what}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path
    return take
