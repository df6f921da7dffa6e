"""``create_app``: the one factory main, tests and tools use to build the aiohttp application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..host import Host
from ..outputs import OutputStores
from . import alltalk, control, health, openai, tts
from .auth import control_auth_middleware
from .errors import error_middleware
from .keys import HOST, OUTPUTS

log = logging.getLogger(__name__)
# Each module holds a RouteTableDef named ``routes``.
ROUTE_MODULES = (tts, health, control, alltalk, openai)


def create_app(host: Host) -> web.Application:
    app = web.Application(middlewares=[error_middleware, control_auth_middleware])
    app[HOST] = host
    app[OUTPUTS] = OutputStores()
    for module in ROUTE_MODULES:
        app.add_routes(module.routes)
    app.cleanup_ctx.append(_host_lifetime)
    return app


async def _host_lifetime(app: web.Application) -> AsyncIterator[None]:
    if app[HOST].options.control_token:
        log.info("control routes require 'Authorization: Bearer <token>'")
    else:
        log.warning("no control token configured (ALLTALK_CONTROL_TOKEN or control_token in "
                    "the host-local file): control routes answer loopback clients only")
    await app[HOST].start()
    yield
    await app[HOST].stop()
