"""Request ids and the access log.

Each request gets an id (``X-Request-Id`` from the client when sane, else a new one), echoed on
its response and attached to every log record made while it is handled. The access log has one
record per answer: method, route pattern, path *without* its query, status, duration, and the
model, generation and commit that served it. It never shows bodies or query strings: texts to
speak are private (AllTalk's streaming GET carries the text in its query).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from ..logs import REQUEST_ID, request_id
from .errors import Handler
from .keys import REQUEST_ID_KEY
from .streams import COMMIT_HEADER, MODEL_HEADER

REQUEST_ID_HEADER = "X-Request-Id"
log = logging.getLogger("alltalk_host.access")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID_KEY] = rid
    token = REQUEST_ID.set(rid)
    try:
        return await handler(request)
    finally:
        REQUEST_ID.reset(token)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: also streams, whose headers go out before the handler returns."""
    rid = request.get(REQUEST_ID_KEY)
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            match = request.match_info  # type: ignore[attr-defined]
        # A request aiohttp's parser refused never reached the router: its match_info is an
        # assertion error (AttributeError: a BaseRequest, which has none).
        except (AttributeError, AssertionError):
            match = None
        resource = match.route.resource if match is not None else None
        model, _, generation = response.headers.get(MODEL_HEADER, "").partition(
            "; generation=")
        commit = response.headers.get(COMMIT_HEADER, "")
        fields = {
            "request_id": request.get(REQUEST_ID_KEY), "method": request.method,
            "route": resource.canonical if resource is not None else "unmatched",
            "path": request.path, "status": response.status, "duration_s": round(time, 4),
            "model": model or None, "generation": int(generation) if generation else None,
            "commit": commit or None, "remote": request.remote,
        }
        served = f" model={model} gen={generation} commit={commit[:10]}" if model else ""
        self.logger.info("%s %s %d %.3fs%s", request.method, request.path, response.status,
                         time, served, extra=fields)


class ClientFaultFilter(logging.Filter):
    """On ``aiohttp.server``: a request its parser refuses (a bad request line, header or
    content coding), and a body that breaks off mid-read, are logged by aiohttp at ERROR with a
    full traceback, from any client on the network. They are the client's fault: one WARNING
    line saying why, and the access log has the answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | web.RequestPayloadError) and (
                getattr(exc, "code", 400) < 500):
            reason = " ".join(str(getattr(exc, "message", "") or exc).split())[:200]
            record.msg, record.args = f"{record.getMessage()}: {reason}", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


async def quiet_client_faults(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the filter on aiohttp's server logger while this app runs."""
    server_log, only = logging.getLogger("aiohttp.server"), ClientFaultFilter()
    server_log.addFilter(only)
    yield
    server_log.removeFilter(only)
