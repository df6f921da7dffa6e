"""AllTalk-compatible routes (its v2 API) for speech, status and files, in AllTalk's shapes.

SillyTavern, text-generation-webui and Home Assistant talk to these unchanged. The routes that
change state (model switch, settings, stop) are in alltalk_control.py, behind the guard.
docs/compatibility.md lists each route, what it maps to and where it differs from AllTalk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..config.settings import HostConfig, ModelDef
from ..encode import FORMATS, encode
from ..errors import Code, HostError
from ..outputs import check_stem
from ..registry import Serving
from ..speech import SpeechInput, SpeechResult
from ..speech_api import provenance_headers
from ..text import filter_text, filtered_segments
from .alltalk_fields import (
    OPTION_FIELDS,
    boolean,
    choice,
    contract_option,
    field_error,
    generation_errors,
    language_of,
    number,
    voice_of,
)
from .errors import V1_HINT, current_serving, ensure_form
from .keys import HOST, OUTPUTS
from .streams import send_audio, send_stream

routes = web.RouteTableDef()


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
    parameters = caps.parameters if caps else ()
    toggles = caps.toggles if caps else ()
    return web.json_response({
        "engines_available": sorted(host.catalog.backends),
        "current_engine_loaded": model.backend,
        "models_available": [{"name": name} for name in sorted(config.models)],
        "current_model_loaded": config.default_model,
        "manufacturer_name": "alltalk-host",
        "audio_format": "wav",
        # A backend may have the setting and still refuse it here (xtts: no working version).
        "deepspeed_capable": "deepspeed" in toggles and bool(status.get("deepspeed_capable",
                                                                         True)),
        "deepspeed_available": bool(status.get("deepspeed_available", False)),
        "deepspeed_enabled": bool(_setting(model, "deepspeed", False)),
        "generationspeed_capable": True,
        "generationspeed_set": model.default_speed,
        "lowvram_capable": "low_vram" in toggles,
        "lowvram_enabled": bool(_setting(model, "low_vram", False)),
        "pitch_capable": "pitch" in parameters,
        "pitch_set": _setting(model, "pitch", 0),
        "repetitionpenalty_capable": "repetition_penalty" in parameters,
        "repetitionpenalty_set": _setting(model, "repetition_penalty", 0),
        "streaming_capable": bool(caps and caps.streaming),
        "temperature_capable": "temperature" in parameters,
        "temperature_set": _setting(model, "temperature", 0),
        "ttsengines_installed": bool(host.catalog.backends),
        "languages_capable": bool(caps and len(caps.languages) > 1),
        "multivoice_capable": bool(gen and len(gen.voices) > 1),
        "multimodel_capable": len(config.models) > 1,
    })


def _setting(model: ModelDef, name: str, default: Any) -> Any:
    """A backend setting as the backend parsed it (its defaults included: XTTS's temperature
    is 0.75 unless set), else as written, else ``default``."""
    value = getattr(model.parsed, name, None)
    if value is None or isinstance(value, Mapping):
        value = model.settings.get(name, default)
    return value


# --- generation -----------------------------------------------------------------------------

@routes.post("/api/tts-generate")
@generation_errors
async def tts_generate(request: web.Request) -> web.Response:
    form = await ensure_form(request)
    text = str(form.get("text_input", "")).strip()
    if not text:
        return field_error("text_input", "Field required")
    filtering = choice(form, "text_filtering", "standard", ("none", "standard", "html"))
    narrator = choice(form, "narrator_enabled", "false", ("true", "false", "silent"))
    not_inside = choice(form, "text_not_inside", "character",
                        ("character", "narrator", "silent"))
    name = str(form.get("output_file_name", "myoutputfile")).strip()
    check_stem(name)
    timestamp = boolean(form, "output_file_timestamp", True)
    speed = number(form, "speed")
    boolean(form, "autoplay", False)  # accepted; the host does not play audio itself
    serving = current_serving(request)
    config = serving.config
    options = _options(form, serving)
    language, headers = language_of(form, "language", serving)
    character = voice_of(form, "character_voice_gen", serving)

    def part(piece: str, voice: str | None) -> SpeechInput:
        return SpeechInput(piece, voice=voice, language=language, speed=speed, options=options)

    if narrator == "false":
        parts = [part(filter_text(text, filtering), character)]
    else:
        # Checked only in narrator mode: SillyTavern sends a placeholder otherwise.
        narrator_voice = voice_of(form, "narrator_voice_gen", serving) or (
            config.alltalk.narrator_voice or None)
        segments = filtered_segments(text, filtering, not_inside)
        if narrator == "silent":
            segments = [s for s in segments if s[0] == "character"]
        parts = [part(piece, narrator_voice if role == "narrator" else character)
                 for role, piece in segments]
    result = await _speak(request, parts)
    return await _saved(request, result, config, name, timestamp, headers=headers)


async def _speak(request: web.Request, parts: list[SpeechInput]) -> SpeechResult:
    """The parts spoken on one lease; short silence when there is nothing to speak, as
    clients of AllTalk expect a file for any text."""
    speech = request.app[HOST].speech
    parts = [p for p in parts if p.text]  # filtering may leave nothing at all
    try:
        if parts:
            return await speech.synthesize_parts(parts)
    except HostError as exc:
        if exc.code != Code.NOTHING_TO_SPEAK:
            raise
    return await speech.silence()


def _options(form: Any, serving: Serving) -> dict[str, float]:
    """AllTalk's temperature / repetition_penalty / pitch, on the contract's scales, passed on
    where the model takes them (and ignored, as AllTalk does, where it does not)."""
    gen = serving.default
    accepted = gen.capabilities.parameters if gen else ()
    options = {}
    for name in OPTION_FIELDS:
        value = number(form, name)
        if value is not None and name in accepted:
            options[name] = contract_option(name, value)
    return options


async def _saved(request: web.Request, result: SpeechResult, config: HostConfig, stem: str,
                 timestamp: bool, cache_url: bool = True,
                 headers: Mapping[str, str] | None = None) -> web.Response:
    """Write the audio as a WAV to the outputs folder; AllTalk's reply naming the file."""
    wav = await asyncio.to_thread(encode, result.audio, FORMATS["wav"])
    store = request.app[OUTPUTS].get(config.outputs_dir)
    path = await asyncio.to_thread(store.write, stem, wav, ".wav", timestamp,
                                   config.output_retention)
    base = f"{request.scheme}://{request.host}" if config.alltalk.legacy_api else ""
    reply = {"status": "generate-success", "output_file_path": str(path),
             "output_file_url": f"{base}/audio/{path.name}"}
    if cache_url:
        reply["output_cache_url"] = f"{base}/audiocache/{path.name}"
    return web.json_response(reply, headers={**provenance_headers(result.provenance),
                                             **(headers or {})})


@routes.post("/api/previewvoice/")
@generation_errors
async def preview_voice(request: web.Request) -> web.Response:
    form = await ensure_form(request)
    if not str(form.get("voice") or "").strip():
        return field_error("voice", "Field required")
    serving = current_serving(request)
    voice = voice_of(form, "voice", serving)
    config = serving.config
    result = await request.app[HOST].speech.synthesize(
        SpeechInput(config.alltalk.preview_text, voice=voice))
    return await _saved(request, result, config, "preview_voice", True, cache_url=False)


@routes.get("/api/tts-generate-streaming")
@routes.post("/api/tts-generate-streaming")
@generation_errors
async def tts_generate_streaming(request: web.Request) -> web.StreamResponse:
    params: Any = request.query if request.method == "GET" else await ensure_form(request)
    raw = str(params.get("text", ""))
    if not raw.strip():
        return field_error("text", "Field required")
    serving = current_serving(request)
    language, headers = language_of(params, "language", serving)
    wanted = SpeechInput(filter_text(raw, "standard"), voice=voice_of(params, "voice", serving),
                         language=language)
    speech = request.app[HOST].speech
    try:
        if not wanted.text:  # filtering left nothing at all
            raise HostError("nothing to speak", code=Code.NOTHING_TO_SPEAK, status=400)
        stream = await speech.stream(wanted)
    except HostError as exc:
        if exc.code != Code.NOTHING_TO_SPEAK:
            raise
        return await send_audio(await speech.silence(), FORMATS["wav"], headers)
    async with stream:
        return await send_stream(request, stream, FORMATS["wav"], headers)


# --- files ----------------------------------------------------------------------------------

def _output_file(request: web.Request, headers: dict[str, str]) -> web.FileResponse:
    name = request.match_info["name"]
    if name in ("speech", "voices", "models"):  # an OpenAI client without /v1 in its base URL
        raise HostError(V1_HINT, code=Code.NOT_FOUND, status=404)
    config = current_serving(request).config
    path = request.app[OUTPUTS].get(config.outputs_dir).resolve(name)
    return web.FileResponse(path, headers={"Content-Type": "audio/wav", **headers})


@routes.get("/audio/{name}")
async def audio_file(request: web.Request) -> web.FileResponse:
    return _output_file(request, {})


@routes.get("/audiocache/{name}")
async def audio_cache_file(request: web.Request) -> web.FileResponse:
    # Output names are unique (timestamped), so clients may cache them for good.
    return _output_file(request, {"Cache-Control": "public, max-age=31536000, immutable"})
