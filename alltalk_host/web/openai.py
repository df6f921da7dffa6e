"""OpenAI-compatible speech routes: what the openai SDK and Open WebUI call.

``POST /v1/audio/speech`` streams: audio is sent as sentences complete, in the requested
format. Input with nothing to speak (Home Assistant's openai_tts checks a key by speaking ".")
gets a short, complete silence instead. Errors use OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config.settings import SPEED_RANGE
from ..encode import get_format
from ..errors import Code, HostError, NotFound
from ..registry import Serving
from ..speech import SpeechInput
from .errors import Handler, current_serving, read_json
from .keys import HOST
from .streams import send_audio, send_stream

routes = web.RouteTableDef()

# OpenAI's voices: where the config's voice map has no entry, they speak with the model's
# default voice, so any OpenAI client works against any model.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                 "shimmer", "verse")
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MAX_INPUT = 4096  # OpenAI's own limit; the config's max_text_length applies too


def openai_errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except HostError as exc:
            kind = "invalid_request_error" if exc.status < 500 else "server_error"
            param = exc.details.get("param") if isinstance(exc.details, dict) else None
            return web.json_response({"error": {"message": exc.message, "type": kind,
                                                "param": param, "code": exc.code}},
                                     status=exc.status)
    return wrapped


def _invalid(message: str, param: str, code: Code = Code.INVALID_VALUE, status: int = 400
             ) -> HostError:
    return HostError(message, code=code, status=status, details={"param": param})


def resolve_model(serving: Serving, name: str) -> str:
    config = serving.config
    if name in config.models:
        return name
    mapped = config.openai.models.get(name)
    if mapped is not None or name in OPENAI_MODELS:
        return mapped or config.default_model
    raise _invalid(f"the model {name!r} does not exist", "model", Code.MODEL_NOT_FOUND,
                   404)


def resolve_voice(serving: Serving, model: str, voice: str) -> str | None:
    gen = serving.generations.get(model)
    voices = gen.voices if gen else []
    if voice in voices:
        return voice
    mapped = serving.config.openai.voices.get(model, {}).get(voice)
    if mapped:
        if voices and mapped not in voices:
            raise _invalid(f"the voice map sends {voice!r} to {mapped!r}, which model {model} "
                           "does not have", "voice", Code.UNKNOWN_VOICE)
        return mapped
    if voice in OPENAI_VOICES:
        return None  # the model's default voice
    raise _invalid(f"unknown voice {voice!r}; this model has {voices[:50]} and takes "
                   f"OpenAI's voice names", "voice", Code.UNKNOWN_VOICE)


def _text(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise _invalid(f"'{name}' is required and must be a non-empty string", name,
                       Code.MISSING_FIELD if value is None else Code.INVALID_TYPE)
    return value


@routes.post("/v1/audio/speech")
@openai_errors
async def speech(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_json(request)
    except HostError as exc:
        raise _invalid(exc.message, "body", exc.code, exc.status) from None
    model_name = _text(body, "model")
    text = _text(body, "input")
    voice_name = _text(body, "voice")
    fmt_name = _text(body, "response_format", required=False) or "mp3"
    speed = body.get("speed")  # none given: the model's default_speed
    assert model_name is not None and text is not None and voice_name is not None
    if len(text) > MAX_INPUT:
        raise _invalid(f"input is {len(text)} characters; the maximum is {MAX_INPUT}", "input",
                       Code.TEXT_TOO_LONG)
    try:
        fmt = get_format(fmt_name)
    except HostError as exc:
        raise _invalid(exc.message, "response_format", exc.code) from None
    if body.get("stream_format", "audio") != "audio":
        raise _invalid("only stream_format 'audio' is supported", "stream_format")
    lo, hi = SPEED_RANGE
    if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)
                              or not lo <= speed <= hi):
        raise _invalid(f"speed must be a number from {lo} to {hi}", "speed")
    serving = current_serving(request)
    model = resolve_model(serving, model_name)
    voice = resolve_voice(serving, model, voice_name)
    wanted = SpeechInput(text, model=model, voice=voice,
                         speed=None if speed is None else float(speed))
    speech_service = request.app[HOST].speech
    try:
        stream = await speech_service.stream(wanted)
    except HostError as exc:
        if exc.code == Code.NOTHING_TO_SPEAK:
            return await send_audio(await speech_service.silence(model), fmt)
        exc.details = {"param": _PARAM_OF.get(exc.code)}
        raise
    async with stream:
        try:
            return await send_stream(request, stream, fmt)
        except HostError as exc:  # refused at the first chunk, before any byte was sent
            exc.details = {"param": _PARAM_OF.get(exc.code)}
            raise


_PARAM_OF = {Code.EMPTY_TEXT: "input", Code.TEXT_TOO_LONG: "input", Code.NOTHING_TO_SAY: "input",
             Code.UNKNOWN_VOICE: "voice", Code.UNSUPPORTED_LANGUAGE: "input",
             Code.BAD_SPEED: "speed"}


@routes.get("/v1/audio/voices")
@openai_errors
async def list_voices(request: web.Request) -> web.Response:
    serving = current_serving(request)
    model = resolve_model(serving, request.query.get("model", serving.config.default_model))
    gen = serving.generations.get(model)
    if gen is None:
        raise NotFound(f"model {model!r} is not loaded", code=Code.MODEL_NOT_LOADED)
    mapped = serving.config.openai.voices.get(model, {})
    names = list(dict.fromkeys([*OPENAI_VOICES, *mapped, *gen.voices]))
    return web.json_response({"model": model, "voices": [{"id": n, "name": n} for n in names]})


@routes.get("/v1/audio/models")
async def list_audio_models(request: web.Request) -> web.Response:
    # Open WebUI reads {"models": [{"id": ...}]} here to fill its TTS model list.
    return web.json_response({"models": [{"id": n} for n in _model_names(request)]})


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": n, "object": "model", "created": 0, "owned_by": "alltalk-host"}
        for n in _model_names(request)]})


def _model_names(request: web.Request) -> list[str]:
    """OpenAI's model names, then every configured model."""
    serving = request.app[HOST].registry.serving
    return list(OPENAI_MODELS) + (sorted(serving.config.models) if serving else [])
