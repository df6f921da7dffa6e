"""OpenAI-compatible speech routes: what the openai SDK and Open WebUI call.

``POST /v1/audio/speech`` streams: audio is sent as sentences complete, in the requested
format. Input with nothing to speak (Home Assistant's openai_tts checks a key by speaking ".")
gets a short, complete silence instead. Errors use OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from aiohttp import web

from ..apis.speech_api import (
    OPENAI_MODELS,
    OPENAI_VOICES,
    openai_body,
    openai_error,
    openai_request,
    openai_spoken,
    resolve_model,
    with_param,
)
from ..errors import Code, HostError, NotFound
from ..serving.speech import SpeechResult
from .bodies import read_body
from .errors import Handler, current_serving
from .keys import HOST
from .streams import send_audio, send_stream

routes = web.RouteTableDef()


def openai_errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except HostError as exc:
            return web.json_response(openai_error(exc), status=exc.status)
    return wrapped


@routes.post("/v1/audio/speech")
@openai_errors
async def speech(request: web.Request) -> web.StreamResponse:
    body = await openai_body(read_body(request))
    asked = openai_request(body, lambda: current_serving(request))
    spoken = await openai_spoken(request.app[HOST].speech, asked)
    if isinstance(spoken, SpeechResult):
        return await send_audio(spoken, asked.fmt)
    async with spoken as stream:
        try:
            return await send_stream(request, stream, asked.fmt)
        except HostError as exc:  # refused at the first chunk, before any byte was sent
            raise with_param(exc) from None


@routes.get("/v1/audio/voices")
@openai_errors
async def list_voices(request: web.Request) -> web.Response:
    serving = current_serving(request)
    model = resolve_model(serving, request.query.get("model", serving.config.default_model))
    gen = serving.generations.get(model)
    if gen is None and not serving.config.loads_on_demand(model):
        raise NotFound(f"model {model!r} is not loaded", code=Code.MODEL_NOT_LOADED)
    mapped = serving.config.openai.voices.get(model, {})
    # A model not loaded yet (it loads on demand): its own voices are known once it is.
    names = list(dict.fromkeys([*OPENAI_VOICES, *mapped, *serving.voices_of(model)]))
    return web.json_response({"model": model, "voices": [{"id": n, "name": n} for n in names]})


@routes.get("/v1/audio/models")
async def list_audio_models(request: web.Request) -> web.Response:
    # Open WebUI reads {"models": [{"id": ...}]} here to fill its TTS model list.
    return web.json_response({"models": [{"id": n, "loaded": loaded}
                                         for n, loaded in _model_names(request)]})


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": n, "object": "model", "created": 0, "owned_by": "alltalk-host", "loaded": loaded}
        for n, loaded in _model_names(request)]})


def _model_names(request: web.Request) -> list[tuple[str, bool]]:
    """OpenAI's model names, then every configured model, each with whether it is loaded
    (any configured model can be named: one not loaded loads on demand)."""
    serving = request.app[HOST].registry.serving
    if serving is None:
        return [(n, False) for n in OPENAI_MODELS]
    loaded = set(serving.generations)
    return ([(n, resolve_model(serving, n) in loaded) for n in OPENAI_MODELS]
            + [(n, n in loaded) for n in sorted(serving.config.models)])
