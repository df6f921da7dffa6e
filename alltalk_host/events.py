"""Live events: what the host is doing, as it happens, for pages, the CLI and metrics.

Three kinds: ``operation`` (a change and its phases: planning, loading, warming up,
switching, done or failed, then draining), ``model`` (a generation's state, one of
``serving.generation.GenerationState``: loading, serving, draining, unloading, unloaded, or
load_failed), and ``worker`` (a model instance's worker process ended, restarted, or gave up
after its restarts: ``change``, with what status shows of that worker). Each event gets an
increasing id; the last few hundred stay in a ring buffer, so a reader that reconnects with the
last id it saw (Server-Sent Events' ``Last-Event-ID``) gets what it missed, and one that fell
too far behind is told to start over.

Everything here runs on the event loop. Code on other threads publishes through
``publish_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Code, HostError

log = logging.getLogger(__name__)

BUFFER = 500  # events kept for readers that reconnect
OPERATION, MODEL, WORKER, RESET = "operation", "model", "worker", "reset"
TERMINAL = ("done", "failed")  # an operation's last phase: one of these, exactly once


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "time": self.time, **self.data}


Listener = Callable[[Event], None]


class EventBus:
    def __init__(self, capacity: int = BUFFER) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._last = 0
        self._changed = asyncio.Event()
        self._listeners: list[Listener] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def last_id(self) -> int:
        return self._last

    def listen(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every event, synchronously (metrics, logs)."""
        self._listeners.append(listener)

    def publish(self, kind: str, **data: Any) -> Event:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        event = Event(next(self._ids), kind, data)
        self._events.append(event)
        self._last = event.id
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not fail the operation it watches
                log.exception("event listener failed on %s event %d", kind, event.id)
        # Wake every reader: each holds the Event object current when it started waiting.
        self._changed.set()
        self._changed = asyncio.Event()
        return event

    def publish_threadsafe(self, kind: str, **data: Any) -> None:
        """From a worker thread (a model's load): published on the loop, in order."""
        if self._loop is not None and not self._loop.is_closed():
            # RuntimeError: the loop closed meanwhile; the host is gone, and so are its readers.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(lambda: self.publish(kind, **data))

    def since(self, after: int) -> list[Event] | None:
        """Events after id ``after``, or None when some of them are no longer kept."""
        if after >= self._last:
            return []
        oldest = self._events[0].id if self._events else self._last + 1
        if after + 1 < oldest:
            return None
        return [e for e in self._events if e.id > after]

    def restarted(self, after: int | None) -> bool:
        """Whether ``after`` is an id this bus never gave: the reader followed the host
        before a restart (each process numbers its events from 1)."""
        return after is not None and after > self._last

    def follow(self, after: int | None = None,
               heartbeat_s: float = 15.0) -> AsyncIterator[Event | None]:
        """Events after ``after`` (default: from now on), then each new one as it comes;
        ``None`` every ``heartbeat_s`` of silence. Ends when the bus closes. A reader too far
        behind gets a ``reset`` event and continues from the newest; one from before a
        restart (``restarted``) gets a ``reset`` event, then every event kept, as a reader
        that starts afresh (``after=0``) does. Where it starts is decided now, not at the
        first read, so a caller can tell the reader so first."""
        if self.restarted(after):
            return self._follow(0, heartbeat_s, Event(self._last, RESET, {
                "reason": "the host restarted and numbers its events afresh; reload the "
                          "state and follow on"}))
        return self._follow(self._last if after is None else after, heartbeat_s)

    async def _follow(self, cursor: int, heartbeat_s: float,
                      first: Event | None = None) -> AsyncIterator[Event | None]:
        if first is not None:
            yield first
        while not self._closed:
            waiter = self._changed
            events = self.since(cursor)
            if events is None:
                yield Event(self._last, RESET, {"reason": "events were missed; reload the "
                                                          "state and follow on"})
                cursor = self._last
                continue
            for event in events:
                yield event
                cursor = event.id
            if events:
                continue
            try:
                await asyncio.wait_for(waiter.wait(), heartbeat_s)
            except TimeoutError:
                yield None

    def close(self) -> None:
        """End every follower (the server is stopping)."""
        self._closed = True
        self._changed.set()


class Operation:
    """One change (an apply, a rollback, a switch...) as its events tell it: every phase
    carries the operation's id, action and commit, and the seconds since it started."""

    _numbers = itertools.count(1)

    def __init__(self, bus: EventBus | None, action: str, commit: str, who: str) -> None:
        self.bus = bus
        self.id = f"op-{next(self._numbers)}"
        self.action = action
        self.commit = commit
        self.who = who
        self.started = time.monotonic()
        self.ended = False

    def phase(self, phase: str, **data: Any) -> None:
        self.ended = self.ended or phase in TERMINAL
        if self.bus is not None:
            self.bus.publish(OPERATION, **self._fields(phase, data))

    def failed_by(self, exc: BaseException, **data: Any) -> None:
        """End with a ``failed`` phase that names ``exc``, unless it has ended already: for
        what no step of the change expected (its state could not be saved), so whoever
        follows it (the CLI, the web UI) is not left waiting for an end that never comes."""
        if self.ended:
            return
        if isinstance(exc, HostError):
            self.phase("failed", reason=exc.message, code=exc.code, **data)
        elif isinstance(exc, asyncio.CancelledError):
            self.phase("failed", reason="interrupted: the host is stopping",
                       code=Code.SHUTTING_DOWN, **data)
        else:
            self.phase("failed", reason=f"{type(exc).__name__}: {exc}",
                       code=Code.INTERNAL_ERROR, **data)

    def phase_threadsafe(self, phase: str, **data: Any) -> None:
        if self.bus is not None:
            self.bus.publish_threadsafe(OPERATION, **self._fields(phase, data))

    def _fields(self, phase: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"op": self.id, "action": self.action, "commit": self.commit, "who": self.who,
                "phase": phase, "elapsed_s": round(time.monotonic() - self.started, 3), **data}
