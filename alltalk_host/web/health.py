"""Liveness, readiness and per-model health, for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from .keys import HOST

routes = web.RouteTableDef()


@routes.get("/health/live")
async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    control = request.app[HOST].control
    serving = control.registry.serving
    body = {
        "status": "ready" if control.ready else "not_ready",
        "commit": serving.commit if serving else None,
        "default_model": serving.config.default_model if serving else None,
    }
    return web.json_response(body, status=200 if control.ready else 503)


@routes.get("/health/models/{name}")
async def model_health(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    control = request.app[HOST].control
    serving = control.registry.serving
    gen = serving.generations.get(name) if serving else None
    if gen is None:
        if name in control.loading:
            return web.json_response({"name": name, "state": "loading"}, status=503)
        if serving is None or name not in serving.config.models:
            raise NotFound(f"unknown model {name!r}", code="unknown_model")
        return web.json_response({"name": name, "state": "not_loaded"}, status=503)
    return web.json_response(
        {"name": name, "state": "ready", "generation": gen.number, "commit": gen.commit,
         "in_flight": gen.running + gen.waiting}
    )
