"""One Wyoming connection's reading: events within the limits, and the end of a peer that
breaks the protocol or goes quiet while it holds a model.

wyoming's own ``AsyncEventHandler.run`` reads events with no limit (see ``events.py``); this
loop replaces it. What the events mean is the subclass's (``handler.py``).

An event that breaks the protocol or passes the size limit is answered with an ``error``
event and the connection closes: where the next event would begin is unknown. While
``holding()`` (a stream has started speaking and keeps its model's generation), the next
event must come within ``wyoming_idle_timeout_s``; past it ``went_quiet()`` ends what is
held and the connection closes. Each is one INFO line in the log, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import abstractmethod
from typing import Any

from wyoming.error import Error
from wyoming.event import Event
from wyoming.server import AsyncEventHandler

from ..limits import EdgeLimits
from .events import BadEvent, read_event

log = logging.getLogger(__name__)


class LimitedConnection(AsyncEventHandler):
    def __init__(self, reader: Any, writer: Any, limits: EdgeLimits) -> None:
        super().__init__(reader, writer)
        self.limits = limits
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a local client"

    @abstractmethod
    def holding(self) -> bool:
        """Whether the peer holds something others wait for (a model's slot) between events."""

    @abstractmethod
    async def went_quiet(self, idle_s: float) -> None:
        """The peer sent nothing for ``idle_s`` while ``holding()``: give back what it holds
        and tell it why; the connection closes next."""

    async def run(self) -> None:
        """Events until the peer closes, breaks the protocol, or goes quiet holding a model."""
        try:
            while (event := await self._next_event()) is not None:
                await self.handle_event(event)
        except BadEvent as exc:
            log.info("wyoming event from %s refused, closing the connection: %s (%s)",
                     self.peer, exc.message, exc.code)
            with contextlib.suppress(ConnectionError):
                await self.write_event(Error(exc.message, exc.code).event())
        finally:
            await self.disconnect()
            self.writer.close()

    async def _next_event(self) -> Event | None:
        idle = self.limits.wyoming_idle_timeout_s
        try:
            async with asyncio.timeout(idle if self.holding() else None):
                return await read_event(self.reader, self.limits.wyoming_max_event_bytes, idle)
        except TimeoutError:
            await self.went_quiet(idle)
            return None
