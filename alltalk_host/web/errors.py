"""One place where failures become JSON: ``{"error": {"code", "message", "details"?}}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..apis.speech_api import INTERNAL_MESSAGE, V1_HINT
from ..errors import Code, HostError
from ..serving.registry import Serving
from .keys import HOST

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED,
    413: Code.BODY_TOO_LARGE,
}


def current_serving(request: web.Request) -> Serving:
    """The snapshot that serves now, for routes that read it before asking for speech."""
    return request.app[HOST].registry.require_serving()


def error_response(error: HostError) -> web.Response:
    return web.json_response(error.to_dict(), status=error.status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HostError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code: Code = _HTTP_CODES.get(exc.status, Code.HTTP_ERROR)
        message = exc.reason if exc.status != 404 else (
            f"no route {request.method} {request.path}")
        if exc.status in (404, 405) and await _is_under_v1(request):
            message = V1_HINT
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        body = HostError(message, code=code).to_dict()
        return web.json_response(body, status=exc.status, headers=headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        body = HostError(INTERNAL_MESSAGE).to_dict()
        return web.json_response(body, status=500)


async def _is_under_v1(request: web.Request) -> bool:
    """Whether this request's path, with /v1 in front, is a route (a missing /v1 prefix)."""
    if request.path.startswith("/v1/"):
        return False
    try:
        match = await request.app.router.resolve(request.clone(rel_url="/v1" + request.path))
    except ValueError:  # a path that makes no URL
        return False
    return match.http_exception is None or match.http_exception.status == 405
