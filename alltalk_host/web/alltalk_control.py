"""AllTalk's routes that change state: model switch, config reload, low-VRAM and DeepSpeed
toggles, stop. They are control routes (guard.py) like /control/*, and answer in AllTalk's
shapes. Switches and settings become commits, then applies, like every other change.

They read query parameters only (SillyTavern sends ``POST /api/reload?tts_method=NAME`` with no
body), so a body, of any type, is never read.
"""

from __future__ import annotations

from aiohttp import web

from ..apis.alltalk_fields import boolean
from ..errors import Code, Conflict, HostError, NotFound
from .errors import current_serving
from .guard import ControlRoutes
from .keys import HOST

control_routes = ControlRoutes(body=None)


def _who(request: web.Request) -> str:
    return f"alltalk-api@{request.remote}"


def _invalid_method() -> web.Response:
    return web.json_response({"status": "error", "message": "Invalid TTS method specified"},
                             status=400)


@control_routes.post("/api/reload")
async def reload_model(request: web.Request) -> web.Response:
    name = request.query.get("tts_method", "").strip()
    serving = request.app[HOST].registry.serving
    if not name or (serving is not None and name not in serving.config.models):
        return _invalid_method()
    try:
        # An unchanged default ({"result": "unchanged"}) is a success here too.
        await request.app[HOST].control.switch_model(name, _who(request))
    except Conflict as exc:
        if exc.code == Code.APPLY_IN_PROGRESS:
            return web.json_response({"status": "model-is currently changing"}, status=409)
        return web.json_response({"status": "model-failure", "message": exc.message},
                                 status=exc.status)
    except NotFound:
        return _invalid_method()
    except HostError as exc:
        return web.json_response({"status": "model-failure", "message": exc.message},
                                 status=exc.status)
    return web.json_response({"status": "model-success"})


@control_routes.get("/api/reload_config")
async def reload_config(request: web.Request) -> web.Response:
    # A GET that changes state, as AllTalk has it: its clients need it (see guard.py).
    try:
        await request.app[HOST].control.reload(_who(request))
    except HostError as exc:
        # AllTalk answers 400 or 500; a 503 (not ready) stays a 503: a server error it is not.
        return web.json_response({"status": "error", "message": exc.message},
                                 status=exc.status if exc.status == 503 else 400)
    return web.Response(text="Config file reloaded successfully")


async def _toggle(request: web.Request, setting: str, query: str, ok: str) -> web.Response:
    """AllTalk answers a toggle it cannot apply with 200 {"status": "error", "message"}; its
    clients read the status field, so do the same (the core leaves no commit behind)."""
    try:
        if query not in request.query:
            raise HostError(f"{query} is required", code=Code.MISSING_FIELD, status=400)
        value = boolean(request.query, query, False)
        serving = current_serving(request)
        model = serving.config.default_model
        gen = serving.generations.get(model)
        if gen is None or setting not in gen.capabilities.toggles:
            raise HostError(f"model {model} ({serving.config.models[model].backend}) has no "
                            f"{setting} setting", code=Code.NOT_CAPABLE, status=400)
        await request.app[HOST].control.set_model_setting(model, setting, value, _who(request))
    except HostError as exc:
        return web.json_response({"status": "error", "message": exc.message})
    return web.json_response({"status": ok, "message": ""})


@control_routes.post("/api/lowvramsetting")
async def low_vram(request: web.Request) -> web.Response:
    return await _toggle(request, "low_vram", "new_low_vram_value", "lowvram-success")


@control_routes.post("/api/deepspeed")
async def deepspeed(request: web.Request) -> web.Response:
    return await _toggle(request, "deepspeed", "new_deepspeed_value", "deepspeed-success")


@control_routes.put("/api/stop-generation")
async def stop_generation(request: web.Request) -> web.Response:
    request.app[HOST].speech.cancel_all()
    return web.json_response({"message": "Cancelling current TTS generation"})
