"""AllTalk-compatible routes (its v2 API), mapped onto the core, in AllTalk's reply shapes.

SillyTavern, text-generation-webui and Home Assistant talk to these unchanged. Model switches
and setting changes become commits, like every other change. docs/compatibility.md lists each
route, what it maps to and where it differs from AllTalk.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..config.settings import HostConfig
from ..encode import FORMATS, encode
from ..errors import BadRequest, Conflict, HostError, NotFound
from ..registry import Serving
from ..speech import SpeechInput, SpeechResult
from ..text import filter_text, narrator_segments
from .errors import Handler, current_serving, ensure_form
from .keys import HOST, OUTPUTS
from .tts import provenance_headers, send_stream

routes = web.RouteTableDef()

# Core error codes that are about a field of the request: AllTalk answers these with 400
# {"error": "field: description"}; anything else is {"status": "generate-failure", ...}.
_FIELD_OF = {
    "empty_text": "text_input", "text_too_long": "text_input", "nothing_to_say": "text_input",
    "unknown_voice": "character_voice_gen", "bad_voice_file": "character_voice_gen",
    "unsupported_language": "language", "bad_speed": "speed", "bad_option": "temperature",
    "bad_file_name": "output_file_name", "malformed_form": "body",
}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def field_error(field: str, message: str) -> web.Response:
    return web.json_response({"error": f"{field}: {message}"}, status=400)


def generation_errors(handler: Handler) -> Handler:
    """Core errors in AllTalk's shapes for the generation routes."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except HostError as exc:
            # The form readers below name their field in the code: "field:<name>".
            field = exc.code[6:] if exc.code.startswith("field:") else _FIELD_OF.get(exc.code)
            if field is not None:
                return field_error(field, exc.message)
            return web.json_response({"status": "generate-failure", "error": exc.message},
                                     status=exc.status)
    return wrapped


def _bool(form: Any, name: str, default: bool) -> bool:
    value = str(form.get(name, default)).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise BadRequest(f"expected true or false, not {value!r}", code=f"field:{name}")


def _choice(form: Any, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = str(form.get(name, default)).strip().lower()
    if value not in choices:
        raise BadRequest(f"must be one of {', '.join(choices)}", code=f"field:{name}")
    return value


def _number(form: Any, name: str) -> float | None:
    raw = form.get(name)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{raw!r} is not a number", code=f"field:{name}") from None


def _voice(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value in ("", "Disabled", "default") else value


# --- status and lists ---------------------------------------------------------------------

@routes.get("/api/ready")
async def ready(request: web.Request) -> web.Response:
    # SillyTavern waits for exactly "Ready"; AllTalk v2 says "Unloaded" before that.
    return web.Response(text="Ready" if request.app[HOST].control.ready else "Unloaded")


@routes.get("/api/voices")
async def voices(request: web.Request) -> web.Response:
    serving = current_serving(request)
    gen = serving.default
    return web.json_response({"status": "success", "voices": gen.voices if gen else []})


@routes.get("/api/rvcvoices")
async def rvc_voices(request: web.Request) -> web.Response:
    # No backend offers voice conversion (RVC) yet.
    return web.json_response({"status": "success", "rvcvoices": ["Disabled"]})


@routes.get("/api/currentsettings")
async def current_settings(request: web.Request) -> web.Response:
    host = request.app[HOST]
    serving = current_serving(request)
    config = serving.config
    model = config.models[config.default_model]
    gen = serving.default
    caps = gen.capabilities if gen else None
    status = gen.instances[0].status() if gen and gen.instances else {}
    settings = model.settings
    parameters = caps.parameters if caps else ()
    toggles = caps.toggles if caps else ()
    return web.json_response({
        "engines_available": sorted(host.catalog.backends),
        "current_engine_loaded": model.backend,
        "models_available": [{"name": name} for name in sorted(config.models)],
        "current_model_loaded": config.default_model,
        "manufacturer_name": "alltalk-host",
        "audio_format": "wav",
        "deepspeed_capable": "deepspeed" in toggles,
        "deepspeed_available": bool(status.get("deepspeed_available", False)),
        "deepspeed_enabled": bool(settings.get("deepspeed", False)),
        "generationspeed_capable": True,
        "generationspeed_set": model.default_speed,
        "lowvram_capable": "low_vram" in toggles,
        "lowvram_enabled": bool(settings.get("low_vram", False)),
        "pitch_capable": "pitch" in parameters,
        "pitch_set": settings.get("pitch", 0),
        "repetitionpenalty_capable": "repetition_penalty" in parameters,
        "repetitionpenalty_set": settings.get("repetition_penalty", 0),
        "streaming_capable": bool(caps and caps.streaming),
        "temperature_capable": "temperature" in parameters,
        "temperature_set": settings.get("temperature", 0),
        "ttsengines_installed": bool(host.catalog.backends),
        "languages_capable": bool(caps and len(caps.languages) > 1),
        "multivoice_capable": bool(gen and len(gen.voices) > 1),
        "multimodel_capable": len(config.models) > 1,
    })


# --- changes: each one a commit, then an apply ----------------------------------------------

def _who(request: web.Request) -> str:
    return f"alltalk-api@{request.remote}"


@routes.post("/api/reload")
async def reload_model(request: web.Request) -> web.Response:
    name = request.query.get("tts_method", "").strip()
    serving = request.app[HOST].registry.serving
    if not name or (serving is not None and name not in serving.config.models):
        return web.json_response({"status": "error", "message": "Invalid TTS method specified"},
                                 status=400)
    try:
        await request.app[HOST].control.switch_model(name, _who(request))
    except Conflict as exc:
        if exc.code == "apply_in_progress":
            return web.json_response({"status": "model-is currently changing"}, status=409)
        return web.json_response({"status": "model-failure", "message": exc.message},
                                 status=exc.status)
    except NotFound:
        return web.json_response({"status": "error", "message": "Invalid TTS method specified"},
                                 status=400)
    except HostError as exc:
        return web.json_response({"status": "model-failure", "message": exc.message},
                                 status=exc.status)
    return web.json_response({"status": "model-success"})


@routes.get("/api/reload_config")
async def reload_config(request: web.Request) -> web.Response:
    try:
        await request.app[HOST].control.reload(_who(request))
    except HostError as exc:
        return web.json_response({"status": "error", "message": exc.message},
                                 status=400 if exc.status < 500 else 500)
    return web.Response(text="Config file reloaded successfully")


async def _toggle(request: web.Request, setting: str, query: str, ok: str) -> web.Response:
    try:
        value = _bool(request.query, query, False) if query in request.query else None
        if value is None:
            raise BadRequest(f"{query} is required", code="missing_field")
        serving = current_serving(request)
        model = serving.config.default_model
        gen = serving.generations.get(model)
        if gen is None or setting not in gen.capabilities.toggles:
            raise BadRequest(f"model {model} ({serving.config.models[model].backend}) has no "
                             f"{setting} setting", code="not_capable")
        await request.app[HOST].control.set_model_setting(model, setting, value, _who(request))
    except HostError as exc:
        return web.json_response({"status": "error", "message": exc.message},
                                 status=exc.status)
    return web.json_response({"status": ok, "message": ""})


@routes.post("/api/lowvramsetting")
async def low_vram(request: web.Request) -> web.Response:
    return await _toggle(request, "low_vram", "new_low_vram_value", "lowvram-success")


@routes.post("/api/deepspeed")
async def deepspeed(request: web.Request) -> web.Response:
    return await _toggle(request, "deepspeed", "new_deepspeed_value", "deepspeed-success")


@routes.put("/api/stop-generation")
async def stop_generation(request: web.Request) -> web.Response:
    request.app[HOST].speech.cancel_all()
    return web.json_response({"message": "Cancelling current TTS generation"})


# --- generation -----------------------------------------------------------------------------

@routes.post("/api/tts-generate")
@generation_errors
async def tts_generate(request: web.Request) -> web.Response:
    form = await ensure_form(request)
    text = str(form.get("text_input", "")).strip()
    if not text:
        return field_error("text_input", "Field required")
    filtering = _choice(form, "text_filtering", "standard", ("none", "standard", "html"))
    narrator = _choice(form, "narrator_enabled", "false", ("true", "false", "silent"))
    not_inside = _choice(form, "text_not_inside", "character",
                         ("character", "narrator", "silent"))
    language = str(form.get("language", "en")).strip() or "en"
    name = str(form.get("output_file_name", "myoutputfile")).strip()
    timestamp = _bool(form, "output_file_timestamp", True)
    speed = _number(form, "speed")
    _bool(form, "autoplay", False)  # accepted; the host does not play audio itself
    serving = current_serving(request)
    config = serving.config
    options = _options(form, serving)
    text = filter_text(text, filtering)
    character = _voice(form.get("character_voice_gen"))
    narrator_voice = _voice(form.get("narrator_voice_gen")) or config.values["alltalk"][
        "narrator_voice"] or None

    def part(piece: str, voice: str | None) -> SpeechInput:
        return SpeechInput(piece, voice=voice, language=None if language == "auto" else language,
                           speed=speed, options=options)

    if narrator == "false":
        parts = [part(text, character)]
    else:
        segments = narrator_segments(text, not_inside)
        if narrator == "silent":
            segments = [s for s in segments if s[0] == "character"]
        parts = [part(piece, narrator_voice if role == "narrator" else character)
                 for role, piece in segments]
        if not parts:
            return field_error("text_input", "nothing to say after narrator filtering")
    result = await request.app[HOST].speech.synthesize_parts(parts)
    return await _saved(request, result, config, name, timestamp)


def _options(form: Any, serving: Serving) -> dict[str, float]:
    """AllTalk's temperature / repetition_penalty / pitch, passed on where the model takes them
    (and ignored, as AllTalk does, where it does not)."""
    gen = serving.default
    accepted = gen.capabilities.parameters if gen else ()
    options = {}
    for name in ("temperature", "repetition_penalty", "pitch"):
        value = _number(form, name)
        if value is not None and name in accepted:
            options[name] = value
    return options


async def _saved(request: web.Request, result: SpeechResult, config: HostConfig, stem: str,
                 timestamp: bool, cache_url: bool = True) -> web.Response:
    """Write the audio as a WAV to the outputs folder; AllTalk's reply naming the file."""
    wav = await asyncio.to_thread(encode, result.audio, FORMATS["wav"])
    store = request.app[OUTPUTS].get(config.outputs_dir)
    path = await asyncio.to_thread(store.write, stem, wav, ".wav", timestamp,
                                   config.output_retention)
    base = f"{request.scheme}://{request.host}" if config.values["alltalk"]["legacy_api"] else ""
    reply = {"status": "generate-success", "output_file_path": str(path),
             "output_file_url": f"{base}/audio/{path.name}"}
    if cache_url:
        reply["output_cache_url"] = f"{base}/audiocache/{path.name}"
    return web.json_response(reply, headers=provenance_headers(result.provenance))


@routes.post("/api/previewvoice/")
@generation_errors
async def preview_voice(request: web.Request) -> web.Response:
    form = await ensure_form(request)
    voice = _voice(form.get("voice"))
    if voice is None:
        return field_error("voice", "Field required")
    config = current_serving(request).config
    result = await request.app[HOST].speech.synthesize(
        SpeechInput(config.values["alltalk"]["preview_text"], voice=voice))
    return await _saved(request, result, config, "preview_voice", True, cache_url=False)


@routes.get("/api/tts-generate-streaming")
@routes.post("/api/tts-generate-streaming")
@generation_errors
async def tts_generate_streaming(request: web.Request) -> web.StreamResponse:
    params: Any = request.query if request.method == "GET" else await ensure_form(request)
    text = filter_text(str(params.get("text", "")), "standard")
    if not text:
        return field_error("text", "Field required")
    language = str(params.get("language", "en")).strip() or "en"
    wanted = SpeechInput(text, voice=_voice(params.get("voice")),
                         language=None if language == "auto" else language)
    speech = request.app[HOST].speech
    async with await speech.stream(wanted) as stream:
        return await send_stream(request, stream, FORMATS["wav"])


# --- files ----------------------------------------------------------------------------------

def _output_file(request: web.Request, headers: dict[str, str]) -> web.FileResponse:
    config = current_serving(request).config
    path = request.app[OUTPUTS].get(config.outputs_dir).resolve(request.match_info["name"])
    return web.FileResponse(path, headers={"Content-Type": "audio/wav", **headers})


@routes.get("/audio/{name}")
async def audio_file(request: web.Request) -> web.FileResponse:
    return _output_file(request, {})


@routes.get("/audiocache/{name}")
async def audio_cache_file(request: web.Request) -> web.FileResponse:
    # Output names are unique (timestamped), so clients may cache them for good.
    return _output_file(request, {"Cache-Control": "public, max-age=31536000, immutable"})
