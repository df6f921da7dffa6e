"""How long an HTTP client may take to send its request: its headers, then its body.

A client sending one byte a second otherwise holds a connection (and, mid-body, a handler)
for as long as it likes. aiohttp has no header timeout of its own, but its keep-alive timer
is armed when a connection opens and after each response, and closes a connection still
waiting for a request's headers when it fires: ``http_header_timeout_s`` is that timer. For
the body aiohttp has nothing; the middleware here gives the body a deadline, and a body late
past it ends its request with 408 and the connection. The limits are per machine (limits.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import streams, web

from ..errors import RequestTimeout
from ..limits import EdgeLimits
from .errors import Handler
from .keys import HOST


def server_args(limits: EdgeLimits) -> dict[str, Any]:
    """What ``web.run_app`` (or an ``AppRunner``) takes to time out slow headers."""
    return {"keepalive_timeout": limits.http_header_timeout_s}


class _BodyLate(asyncio.TimeoutError):
    """Raised to whoever waits for a body that missed its deadline. A timeout, so aiohttp's
    own reading of what is left after the response ends quietly and closes the connection."""


@web.middleware
async def body_deadline_middleware(request: web.Request,
                                   handler: Handler) -> web.StreamResponse:
    """The body must have arrived ``http_body_timeout_s`` after the headers did."""
    body = request.content
    if body.is_eof():  # no body, or all of it here already: the usual case
        return await handler(request)
    limit = request.app[HOST].options.limits.http_body_timeout_s
    timer = asyncio.get_running_loop().call_later(limit, _late, body)
    try:
        return await handler(request)
    except _BodyLate:
        raise RequestTimeout(f"the body did not arrive within {limit:g} s "
                             "(http_body_timeout_s)") from None
    finally:
        timer.cancel()


def _late(body: streams.StreamReader) -> None:
    if not body.is_eof():
        body.set_exception(_BodyLate())
