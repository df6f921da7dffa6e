"""Liveness, readiness and per-model health, for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from .keys import HOST
from .shown_paths import host_folders, relative_paths

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
    host = request.app[HOST]
    ok, body = host.control.model_health(request.match_info["name"])
    serving = host.registry.serving
    if "reason" in body and serving is not None:  # public: no server paths
        body["reason"] = relative_paths(body["reason"], host_folders(serving.config,
                                                                     host.options))
    return web.json_response(body, status=200 if ok else 503)
