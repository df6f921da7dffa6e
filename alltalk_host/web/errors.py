"""One place where failures become JSON: ``{"error": {"code", "message", "details"?}}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..alltalk_fields import FORM_TYPES, not_a_form
from ..errors import BadRequest, Code, HostError, PayloadTooLarge
from ..registry import Serving
from ..speech_api import INTERNAL_MESSAGE, V1_HINT, parse_json, short
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


async def read_body(request: web.Request) -> bytes:
    """The body, or 413 beyond the size limit (``http.max_body_bytes``)."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(_too_large(exc)) from None


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body counts as ``{}``."""
    return parse_json(await read_body(request))


def _too_large(exc: web.HTTPRequestEntityTooLarge) -> str:
    return f"{exc.text or 'the body is too large'} (http.max_body_bytes)"


async def ensure_form(request: web.Request) -> Any:
    """The request's form fields (urlencoded or multipart), or BadRequest if unreadable."""
    if request.body_exists and request.content_type not in FORM_TYPES:
        raise not_a_form(request.content_type)
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(_too_large(exc)) from None
    # LookupError: a charset Python does not know (charset=bogus); ValueError includes
    # undecodable bytes; AssertionError, HTTPException and HttpProcessingError (a part header
    # with control characters): aiohttp's multipart reader.
    except (ValueError, LookupError, AssertionError, web.HTTPException,
            HttpProcessingError) as exc:
        raise BadRequest(f"the form body cannot be read: {short(exc)}",
                         code=Code.MALFORMED_FORM) from None
    # aiohttp spools a file part into a temporary file and never closes it; no route reads
    # files, so each is closed now rather than left to the garbage collector.
    for value in form.values():
        if isinstance(value, web.FileField):
            value.file.close()
    return form
