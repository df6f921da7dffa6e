"""``GET /metrics`` (Prometheus text format) and the middleware that counts every answer.

The route is a control route: metrics name the models and commits that serve, so they have
the same guard (a token, or loopback without one). Scrape it with the token as a bearer
credential (``authorization`` in a Prometheus scrape config).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..config.canary import CANARY, STABLE
from ..metrics import CONTENT_TYPE
from .errors import Handler
from .guard import ControlRoutes
from .keys import HOST
from .streams import ARM_HEADER, MODEL_HEADER

control_routes = ControlRoutes(body=None)


@control_routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    collected = request.app[HOST].metrics
    if collected is None:
        raise web.HTTPNotFound(reason="metrics are turned off (ALLTALK_METRICS=0)")
    body = await asyncio.to_thread(collected.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each answer by route (its pattern, not the path: a bounded label), the model
    that served it, its status class and arm; a request the client gave up on counts apart."""
    collected = request.app[HOST].metrics
    if collected is None:
        return await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        collected.requests.labels(route, "", "cancelled", STABLE).inc()
        raise
    model = response.headers.get(MODEL_HEADER, "").split(";", 1)[0]
    arm = CANARY if response.headers.get(ARM_HEADER) == CANARY else STABLE
    collected.request_done(route, model, response.status, arm)
    return response
