"""Whether the outputs folder can take files: said in the log when a commit sets the folder
(start-up included), and in /control/status on every call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from .keys import HOST, OUTPUTS

log = logging.getLogger(__name__)
POLL_S = 1.0


async def outputs_status(app: web.Application) -> dict[str, Any] | None:
    """``{"dir", "writable", "problem"}`` for the serving commit's folder (None before one)."""
    serving = app[HOST].registry.serving
    if serving is None:
        return None
    folder = serving.config.outputs_dir
    problem = await asyncio.to_thread(app[OUTPUTS].get(folder).problem)
    return {"dir": str(folder), "writable": problem is None, "problem": problem}


async def watch_outputs(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: check the folder each time the serving commit names another one. The core
    announces no snapshot change (and imports no web code), so this looks once a second."""
    task = asyncio.create_task(_watch(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _watch(app: web.Application) -> None:
    checked: Path | None = None
    while True:
        serving = app[HOST].registry.serving
        if serving is not None and serving.config.outputs_dir != checked:
            checked = serving.config.outputs_dir
            status = await outputs_status(app)
            if status and not status["writable"]:
                log.warning("%s (%s): /api/tts-generate and /api/previewvoice/ will fail "
                            "until it is fixed", status["problem"], status["dir"])
            else:
                log.info("outputs folder: %s", checked)
        await asyncio.sleep(POLL_S)
