"""AllTalk-compatible routes (its v2 API) for speech, status and files, in AllTalk's shapes.

SillyTavern, text-generation-webui and Home Assistant talk to these unchanged. The routes that
change state (model switch, settings, stop) are in alltalk_control.py, behind the guard.
docs/compatibility.md lists each route, what it maps to and where it differs from AllTalk.

These are aiohttp adapters over ``alltalk_api`` (what each route checks and answers), which
the Ray front calls too; the two cannot answer the same request differently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..apis import alltalk_api
from ..apis.alltalk_api import CACHE_HEADERS, RVC_VOICES, WAV, AllTalkContext, FormCall
from ..apis.alltalk_fields import Reply, alltalk_error
from ..errors import HostError
from ..serving.speech import SpeechResult
from .bodies import ensure_form
from .errors import current_serving
from .keys import HOST, OUTPUTS
from .streams import send_audio, send_stream

routes = web.RouteTableDef()


def _context(request: web.Request) -> AllTalkContext:
    outputs = request.app[OUTPUTS]
    return AllTalkContext(serving_now=lambda: current_serving(request),
                          speech=request.app[HOST].speech,
                          outputs_for=lambda config: outputs.get(config.outputs_dir),
                          base_url=f"{request.scheme}://{request.host}",
                          origin=request.headers.get("Origin"),
                          user_agent=request.headers.get("User-Agent", ""))


def _send(reply: Reply) -> web.Response:
    return web.json_response(reply.body, status=reply.status, headers=reply.headers)


# --- status and lists ---------------------------------------------------------------------

@routes.get("/api/ready")
async def ready(request: web.Request) -> web.Response:
    return web.Response(text=alltalk_api.ready_text(request.app[HOST].control.ready))


@routes.get("/api/voices")
async def voices(request: web.Request) -> web.Response:
    return web.json_response(alltalk_api.voices(current_serving(request)))


@routes.get("/api/rvcvoices")
async def rvc_voices(request: web.Request) -> web.Response:
    return web.json_response(RVC_VOICES)


@routes.get("/api/currentsettings")
async def current_settings(request: web.Request) -> web.Response:
    return web.json_response(alltalk_api.current_settings(
        current_serving(request), request.app[HOST].catalog.backends))


# --- speech ---------------------------------------------------------------------------------

async def _form_reply(request: web.Request, call: FormCall) -> web.Response:
    try:
        return _send(await call(_context(request), await ensure_form(request)))
    except HostError as exc:
        return _send(alltalk_error(exc))


@routes.post("/api/tts-generate")
async def tts_generate(request: web.Request) -> web.Response:
    return await _form_reply(request, alltalk_api.generate)


@routes.post("/api/previewvoice/")
async def preview_voice(request: web.Request) -> web.Response:
    return await _form_reply(request, alltalk_api.preview)


@routes.get("/api/tts-generate-streaming")
@routes.post("/api/tts-generate-streaming")
async def tts_generate_streaming(request: web.Request) -> web.StreamResponse:
    try:
        params: Any = request.query if request.method == "GET" else await ensure_form(request)
        spoken, headers = await alltalk_api.streaming(_context(request), params)
        if isinstance(spoken, SpeechResult):
            return await send_audio(spoken, WAV, headers)
        async with spoken:
            return await send_stream(request, spoken, WAV, headers)
    except HostError as exc:  # refused before the first byte was sent
        return _send(alltalk_error(exc))


# --- files ----------------------------------------------------------------------------------

def _output_file(request: web.Request, headers: Mapping[str, str]) -> web.FileResponse:
    path = alltalk_api.output_file(_context(request), request.match_info["name"])
    return web.FileResponse(path, headers={"Content-Type": "audio/wav", **headers})


@routes.get("/audio/{name}")
async def audio_file(request: web.Request) -> web.FileResponse:
    return _output_file(request, {})


@routes.get("/audiocache/{name}")
async def audio_cache_file(request: web.Request) -> web.FileResponse:
    return _output_file(request, CACHE_HEADERS)
