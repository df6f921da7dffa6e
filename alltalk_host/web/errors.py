"""One place where failures become JSON: ``{"error": {"code", "message", "details"?}}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..apis.speech_api import INTERNAL_MESSAGE, V1_HINT, parse_json, short
from ..errors import BadRequest, Code, HostError, PayloadTooLarge
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


# The Content-Encoding values read, compared whole as aiohttp does: it decodes gzip, and br and
# zstd with their optional packages (without them its parser refuses the request, 400, before
# any handler runs); anything else, a list of codings included, reaches the handler undecoded.
# deflate is refused although aiohttp decodes it: in aiohttp 3.14 a deflate body that proves
# broken only at its end (when it arrives after the headers) is never finished nor failed, so
# the read of it never returns and the client never gets an answer.
DECODED = frozenset({"", "identity", "gzip", "br", "zstd"})


def check_encoding(request: web.Request) -> None:
    """415 for a body whose content coding aiohttp did not decode: read as it is, it would be
    taken for something the client did not mean (RFC 9110, 8.4)."""
    raw = request.headers.get("Content-Encoding", "")
    if raw.strip().lower() not in DECODED:
        raise HostError(f"Content-Encoding {raw[:40]!r} is not decoded here; send the body "
                        "as it is, or gzip-compressed", status=415,
                        code=Code.BAD_CONTENT_ENCODING)


def undecodable(request: web.Request, exc: web.RequestPayloadError) -> BadRequest:
    """A body that is not what its Content-Encoding says (aiohttp found out as it decoded).

    aiohttp's parser has given up on this connection and would, after the answer, try to read
    the rest of the body and log that failure as an unhandled exception: the body is marked
    finished and the connection to be closed after the answer instead."""
    request.content.feed_eof()
    request.protocol.close()
    coding = request.headers.get("Content-Encoding", "")[:40]
    return BadRequest(f"the body cannot be decoded as its Content-Encoding ({coding}) says: "
                      f"{short(exc)}", code=Code.BAD_CONTENT_ENCODING)


async def read_body(request: web.Request) -> bytes:
    """The body, decoded; 413 beyond the size limit (``http.max_body_bytes``, which aiohttp
    counts on the decoded bytes, so a small compressed bomb is refused as it grows)."""
    check_encoding(request)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(too_large(exc)) from None
    except web.RequestPayloadError as exc:
        raise undecodable(request, exc) from None


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body counts as ``{}``."""
    return parse_json(await read_body(request))


def too_large(exc: web.HTTPRequestEntityTooLarge) -> str:
    return f"{exc.text or 'the body is too large'} (http.max_body_bytes)"
