"""The /control routes: status, config history, plan, apply (with a canary, and deciding on
one), rollback, reload, model switch, and loading or unloading a model on demand.

Every one is a control route (guard.py): they change state or show the configuration.
"""

from __future__ import annotations

from aiohttp import web

from ..apis.speech_api import field
from ..errors import BadRequest, Code
from .bodies import read_json
from .guard import ControlRoutes
from .keys import HOST
from .outputs_check import outputs_status

control_routes = ControlRoutes(body="json")


def _author(request: web.Request, body: dict) -> str | None:
    """The git author the caller named for a commit the host writes, if any."""
    author = field(body, "author", str)
    return author.strip()[:80] if author and author.strip() else None


def _who(request: web.Request, body: dict) -> str:
    """Who an apply is recorded as in the history: the author, else the caller's address."""
    return _author(request, body) or f"api@{request.remote}"


@control_routes.get("/control/status")
async def status(request: web.Request) -> web.Response:
    status = request.app[HOST].control.status()
    # The web front-end's own part: whether generated files can be stored.
    status["outputs"] = await outputs_status(request.app)
    return web.json_response(status)


@control_routes.get("/control/plugins")
async def plugins(request: web.Request) -> web.Response:
    return web.json_response(
        {"plugins": [p.to_dict() for p in request.app[HOST].catalog.plugins]})


@control_routes.get("/control/config/commits")
async def commits(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        raise BadRequest("limit must be a whole number", code=Code.BAD_FIELD) from None
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be from 1 to 1000", code=Code.BAD_FIELD)
    return web.json_response({"commits": await request.app[HOST].control.commits(limit)})


@control_routes.get("/control/config/effective")
async def effective(request: web.Request) -> web.Response:
    return web.json_response(request.app[HOST].control.effective())


@control_routes.post("/control/config/plan")
async def plan(request: web.Request) -> web.Response:
    body = await read_json(request)
    result = await request.app[HOST].control.plan(field(body, "commit", str, required=True))
    return web.json_response(result.to_dict())


@control_routes.post("/control/config/apply")
async def apply(request: web.Request) -> web.Response:
    body = await read_json(request)
    commit = field(body, "commit", str, required=True)
    # true: a canary with the [canary] defaults; an object: some of them overridden.
    canary = field(body, "canary", (dict, bool))
    overrides = {} if canary is True else canary if isinstance(canary, dict) else None
    return web.json_response(await request.app[HOST].control.apply(
        commit, _who(request, body), canary=overrides))


@control_routes.get("/control/canary")
async def canary(request: web.Request) -> web.Response:
    return web.json_response(request.app[HOST].control.rollout.describe())


@control_routes.post("/control/canary/promote")
async def promote_canary(request: web.Request) -> web.Response:
    body = await read_json(request)
    return web.json_response(
        await request.app[HOST].control.end_canary(_who(request, body), promote=True))


@control_routes.post("/control/canary/abort")
async def abort_canary(request: web.Request) -> web.Response:
    body = await read_json(request)
    return web.json_response(
        await request.app[HOST].control.end_canary(_who(request, body), promote=False))


@control_routes.post("/control/config/reload")
async def reload(request: web.Request) -> web.Response:
    body = await read_json(request)
    result = await request.app[HOST].control.reload(
        _who(request, body),
        commit_working_tree=bool(field(body, "commit_working_tree", bool)),
        message=field(body, "message", str),
        author=_author(request, body),
    )
    return web.json_response(result)


@control_routes.post("/control/config/rollback")
async def rollback(request: web.Request) -> web.Response:
    body = await read_json(request)
    revert = field(body, "revert", bool)
    return web.json_response(await request.app[HOST].control.rollback(
        field(body, "commit", str), _who(request, body), revert=revert is not False,
        author=_author(request, body)))


@control_routes.post("/control/models/switch")
async def switch(request: web.Request) -> web.Response:
    body = await read_json(request)
    model = field(body, "model", str, required=True)
    return web.json_response(await request.app[HOST].control.switch_model(
        model, _who(request, body), author=_author(request, body)))


@control_routes.post("/control/models/switch/plan")
async def plan_switch(request: web.Request) -> web.Response:
    body = await read_json(request)
    model = field(body, "model", str, required=True)
    plan = await request.app[HOST].control.plan_switch(model)
    # No commit exists yet: the switch writes it when it is applied.
    return web.json_response({**plan.to_dict(), "commit": None, "base": plan.commit,
                              "model": model})


@control_routes.post("/control/models/{name}/reload")
async def reload_model(request: web.Request) -> web.Response:
    body = await read_json(request)
    return web.json_response(await request.app[HOST].control.reload_model(
        request.match_info["name"], _who(request, body)))


# Loaded on demand (change/on_demand.py): not commits, the host's choice at run time.

@control_routes.post("/control/models/{name}/load")
async def load_model(request: web.Request) -> web.Response:
    """Load a configured model now, as a request naming it would: to warm it before traffic."""
    await read_json(request)
    return web.json_response(await request.app[HOST].control.on_demand.load(
        request.match_info["name"]))


@control_routes.post("/control/models/{name}/unload")
async def unload_model(request: web.Request) -> web.Response:
    """Unload a model loaded on demand, after its requests (the default and keep_loaded ones
    belong to the commit: 409 model_pinned)."""
    await read_json(request)
    return web.json_response(await request.app[HOST].control.on_demand.unload(
        request.match_info["name"]))
