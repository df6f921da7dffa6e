"""``create_app``: the one factory main, tests and tools use to build the aiohttp application."""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator

from aiohttp import web

from ..apis.voice_audio import MAX_UPLOAD_BYTES
from ..host import Host
from ..outputs import OutputStores
from ..webui import routes as webui
from . import (
    alltalk,
    alltalk_control,
    control,
    events,
    health,
    hooks,
    metrics,
    openai,
    openapi,
    tts,
    voices,
)
from .access import echo_request_id, quiet_client_faults, request_id_middleware
from .arms import arm_middleware
from .cors import CONTROL, PUBLIC, add_cors_headers, preflight
from .deadlines import body_deadline_middleware
from .errors import Handler, error_middleware
from .guard import ControlRoutes, guard
from .keys import DELIVERIES, HOST, OUTPUTS, ROUTE_KINDS, SEEN_DELIVERIES
from .outputs_check import watch_outputs
from .policy import policy

log = logging.getLogger(__name__)
UPLOAD_LIMIT = MAX_UPLOAD_BYTES + 64 * 1024  # the sample and the form's fields
# Speech, health and read-only routes, and the web UI's files: open to every client that can
# reach the port (the page calls control routes like any other client).
ROUTE_TABLES: tuple[web.RouteTableDef, ...] = (
    webui.routes, tts.routes, health.routes, alltalk.routes, openai.routes,
    hooks.routes,  # /hooks/git changes state, but a forge's signature is its guard
    openapi.routes)
# Everything that changes state or shows the config: each route is guarded (guard.py).
CONTROL_TABLES: tuple[ControlRoutes, ...] = (control.control_routes,
                                              alltalk_control.control_routes,
                                              events.control_routes,
                                              metrics.control_routes,
                                              voices.upload_routes, voices.edit_routes,
                                              voices.control_routes)


def create_app(host: Host) -> web.Application:
    app = web.Application(middlewares=[request_id_middleware, metrics.metrics_middleware,
                                       error_middleware, body_deadline_middleware,
                                       body_limit_middleware, arm_middleware])
    app[HOST] = host
    app[OUTPUTS] = OutputStores()
    app[DELIVERIES] = deque(maxlen=SEEN_DELIVERIES)
    kinds: dict[str, str] = {}
    methods: dict[str, set[str]] = defaultdict(set)
    for table in ROUTE_TABLES:
        for route in table:
            assert isinstance(route, web.RouteDef)
            route.register(app.router)
            kinds.setdefault(route.path, PUBLIC)
            methods[route.path].add(route.method)
    for control_table in CONTROL_TABLES:
        for route in control_table:
            assert isinstance(route, web.RouteDef)
            web.RouteDef(route.method, route.path, guard(route.handler, control_table.body),
                         route.kwargs).register(app.router)
            kinds[route.path] = CONTROL  # a path with any control route is one for CORS
            methods[route.path].add(route.method)
    for path, kind in kinds.items():
        app.router.add_route("OPTIONS", path, preflight(kind, methods[path]))
    app[ROUTE_KINDS] = kinds
    app.on_response_prepare.append(add_cors_headers)
    app.on_response_prepare.append(echo_request_id)
    app.on_shutdown.append(_begin_shutdown)
    app.on_shutdown.append(_end_event_streams)
    app.cleanup_ctx.append(quiet_client_faults)
    app.cleanup_ctx.append(_host_lifetime)
    app.cleanup_ctx.append(watch_outputs)
    return app


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bodies beyond ``http.max_body_bytes`` are 413: aiohttp enforces the limit as the body
    is read, and the limit comes from the serving commit, so it is set per request."""
    limit = policy(request).max_body_bytes
    if request.method in ("POST", "PUT") and request.path.startswith("/control/voices"):
        limit = max(limit, UPLOAD_LIMIT)  # a voice sample; read within its own limit
    return await handler(request.clone(client_max_size=limit))


async def _begin_shutdown(app: web.Application) -> None:
    """Before aiohttp waits for open requests to finish: abandon the change in progress and
    kill the loads still running, so a hung load holds up neither the wait nor the exit
    (and is never applied)."""
    await app[HOST].begin_shutdown()


async def _end_event_streams(app: web.Application) -> None:
    """Before aiohttp waits for open requests to finish: end the event streams, which
    otherwise never would."""
    app[HOST].events.close()


async def _host_lifetime(app: web.Application) -> AsyncIterator[None]:
    options = app[HOST].options
    if options.control_token:
        log.info("control routes require 'Authorization: Bearer <token>'")
    elif options.behind_proxy:
        log.warning("behind_proxy is set and no control token is configured "
                    "(ALLTALK_CONTROL_TOKEN or control_token in the host-local file): control "
                    "routes refuse every client")
    else:
        log.warning("no control token configured (ALLTALK_CONTROL_TOKEN or control_token in "
                    "the host-local file): control routes are open without a token to "
                    "clients on this machine (loopback, HTTP/1.1, no proxy headers); if any "
                    "reverse proxy or tunnel forwards to this port, set a control token")
    await app[HOST].start()
    yield
    await app[HOST].stop()
