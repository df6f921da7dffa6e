"""CORS: which web pages may call this server from a browser (SillyTavern's provider does).

Speech and read-only routes answer the origins of ``http.cors_origins`` (default ``*``, as
AllTalk); control routes only the origins the guard accepts (loopback and
``http.trusted_origins``). Every route answers ``OPTIONS`` preflights.

Written here rather than with aiohttp-cors (maintained, 0.8.1): that library matches origins
as exact strings fixed at start-up, while these rules match loopback origins on any port and
change with the serving commit, without a restart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiohttp import web

from ..errors import Code, Forbidden
from .errors import Handler
from .guard import check_origin
from .keys import ROUTE_KINDS
from .policy import policy
from .streams import EXPOSED_HEADERS

PUBLIC, CONTROL = "public", "control"
MAX_AGE_S = 600
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def kind_of(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return None if resource is None else request.app[ROUTE_KINDS].get(resource.canonical)


def allowed_origin(request: web.Request, kind: str, origin: str) -> str | None:
    """The Access-Control-Allow-Origin value for ``origin``, or None to send no CORS."""
    rules = policy(request)
    if kind == CONTROL:
        return origin if rules.origin_trusted(origin) else None
    return rules.cors_origin(origin)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: a signal rather than a middleware, so that streamed responses
    (prepared inside their handler) and error responses get the headers too."""
    origin = request.headers.get("Origin")
    kind = kind_of(request)
    if origin is None or kind is None or request.method == "OPTIONS":
        return
    allow = allowed_origin(request, kind, origin)
    if allow is None:
        return
    response.headers["Access-Control-Allow-Origin"] = allow
    response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
    if allow != "*":
        response.headers.add("Vary", "Origin")


def preflight(kind: str, methods: Iterable[str]) -> Handler:
    allow_methods = ", ".join(sorted(set(methods)))

    async def handler(request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is None or "Access-Control-Request-Method" not in request.headers:
            return web.Response(status=204, headers={"Allow": f"{allow_methods}, OPTIONS"})
        allow = allowed_origin(request, kind, origin)
        if allow is None:
            if kind == CONTROL:
                check_origin(request, policy(request))  # raises origin_not_allowed
            raise Forbidden(f"pages from {origin[:100]!r} may not call this server "
                            "(http.cors_origins)", code=Code.ORIGIN_NOT_ALLOWED)
        headers = {
            "Access-Control-Allow-Origin": allow,
            "Access-Control-Allow-Methods": allow_methods,
            "Access-Control-Max-Age": str(MAX_AGE_S),
            "Vary": "Origin",
        }
        # Any header the page wants to send (Content-Type, Cache-Control, Authorization):
        # the rules above already decided whether this page may call at all.
        wanted = [h.strip() for h in
                  request.headers.get("Access-Control-Request-Headers", "").split(",")]
        wanted = [h for h in wanted if _HEADER_NAME.match(h)]
        if wanted:
            headers["Access-Control-Allow-Headers"] = ", ".join(wanted)
        # Chrome asks before a public page calls a private address (Private Network Access).
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return web.Response(status=204, headers=headers)

    return handler
