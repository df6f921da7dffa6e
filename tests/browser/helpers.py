"""What the browser tests share besides fixtures: Playwright's ``expect`` (with this suite's
timeout) and ``until``, a wait on a JavaScript expression. Test modules import these from here,
never from ``conftest.py``."""

from __future__ import annotations

import asyncio
from typing import Any

TIMEOUT_MS = 20_000  # generous: other work shares this machine's two cores

try:
    from playwright.async_api import Page, async_playwright, expect
except ImportError:  # pragma: no cover - conftest.py skips these tests, saying what to install
    Page = Any  # type: ignore[misc,assignment]
    async_playwright = expect = None  # type: ignore[assignment]

if expect is not None:
    expect.set_options(timeout=TIMEOUT_MS)


async def until(page: Page, expression: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Wait for a JavaScript expression to hold. (Page.wait_for_function evaluates its
    predicate with eval, which the page's Content-Security-Policy rightly refuses.)"""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await page.evaluate(expression):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {expression}")
        await asyncio.sleep(0.05)
