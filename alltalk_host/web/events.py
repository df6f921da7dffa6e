"""``GET /control/events``: the host's live events as Server-Sent Events.

A control route (it shows what the host is doing, commits included), so it has the guard and
its token; pages read it with ``fetch`` (the browser's ``EventSource`` cannot send a token).
A reader that reconnects sends the last id it saw (``Last-Event-ID``, or ``?after=N``) and gets
what it missed from the buffer; a ``reset`` event tells one that fell too far behind to reload
the status, and so does one that sends an id above the last (it followed the host before a
restart: ids begin at 1 in each process), whose ``hello`` also says ``"reset": true``. A
``heartbeat`` every 15 s of quiet keeps proxies from closing the stream.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from ..errors import BadRequest, Code
from ..events import Event
from .guard import ControlRoutes
from .keys import HOST

control_routes = ControlRoutes(body=None)
HEARTBEAT_S = 15.0


def _after(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after")
    if raw is None or raw == "":
        return None
    try:
        after = int(raw)
    except ValueError:
        raise BadRequest(f"Last-Event-ID / after must be an event id, not {raw[:40]!r}",
                         code=Code.BAD_FIELD) from None
    if after < 0:
        raise BadRequest("an event id is not negative", code=Code.BAD_FIELD)
    return after


def frame(event: Event | None) -> bytes:
    """One SSE frame: an event with its id, or a heartbeat (no id: it moves no cursor)."""
    if event is None:
        return f"event: heartbeat\ndata: {json.dumps({'time': time.time()})}\n\n".encode()
    data = json.dumps(event.to_dict(), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


@control_routes.get("/control/events")
async def events(request: web.Request) -> web.StreamResponse:
    bus = request.app[HOST].events
    after = _after(request)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})  # nginx: do not hold events back
    # Both decided before anything is awaited, so the hello and the events agree.
    hello = {"last_id": bus.last_id, "time": time.time(), "reset": bus.restarted(after)}
    following = bus.follow(after, heartbeat_s=HEARTBEAT_S)
    await response.prepare(request)
    await response.write(f"event: hello\ndata: {json.dumps(hello)}\n\n".encode())
    try:
        async for event in following:
            await response.write(frame(event))
    except ConnectionError:
        return response  # the reader went away
    await response.write_eof()
    return response
