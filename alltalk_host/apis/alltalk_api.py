"""AllTalk's v2 routes with no web framework: status and lists, speech to a file, streamed
speech, the output files. Each call takes what a front-end read from the request (a form or
query Mapping, a file name) and an ``AllTalkContext``, and returns what to send.

The aiohttp app (``web/alltalk.py``) and the Ray front (``ray/front.py``) are adapters over
these: they read the request, call one function, turn a ``HostError`` into AllTalk's shape
with ``alltalk_error`` and send the result. Which fields are checked, in which order, how the
text is split between narrator and character and what the reply names live here once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.settings import HostConfig, ModelDef
from ..errors import Code, HostError
from ..outputs import OutputStore, check_stem
from ..serving.registry import Serving
from ..serving.speech import SpeechInput, SpeechResult, SpeechService, SpeechStream
from ..text import filter_text, filtered_segments
from .alltalk_fields import (
    OPTION_FIELDS,
    FieldError,
    Reply,
    boolean,
    choice,
    contract_option,
    language_of,
    number,
    voice_of,
)
from .encode import FORMATS, encode
from .speech_api import V1_HINT, provenance_headers

WAV = FORMATS["wav"]  # the only format of AllTalk's speech routes
# Output names are unique (timestamped), so clients may cache /audiocache/ files for good.
CACHE_HEADERS = {"Cache-Control": "public, max-age=31536000, immutable"}
# No backend offers voice conversion (RVC) yet.
RVC_VOICES = {"status": "success", "rvcvoices": ["Disabled"]}


@dataclass(frozen=True)
class AllTalkContext:
    """What the AllTalk routes need from the front-end that calls them."""

    serving_now: Callable[[], Serving]  # the serving snapshot, or Unavailable (not ready)
    speech: SpeechService
    outputs_for: Callable[[HostConfig], OutputStore]  # where this front keeps a config's files
    base_url: str = ""  # scheme://host of the request: legacy_api's absolute URLs
    # Who asked (see absolute_urls): the request's Origin and User-Agent headers.
    origin: str | None = None
    user_agent: str = ""


# A route that takes a form and answers JSON (``generate``, ``preview``): what a front calls
# with what it read, catching a HostError to answer it with ``alltalk_error``.
FormCall = Callable[[AllTalkContext, Mapping[str, Any]], Awaitable[Reply]]


# --- status and lists ---------------------------------------------------------------------

def ready_text(ready: bool) -> str:
    # SillyTavern waits for exactly "Ready"; AllTalk v2 says "Unloaded" before that.
    return "Ready" if ready else "Unloaded"


def voices(serving: Serving) -> dict[str, Any]:
    return {"status": "success", "voices": serving.voices_of(serving.config.default_model)}


def current_settings(serving: Serving, backends: Iterable[str]) -> dict[str, Any]:
    config = serving.config
    model = config.models[config.default_model]
    gen = serving.default
    caps = gen.capabilities if gen else None
    status = gen.instances[0].status() if gen and gen.instances else {}
    parameters = caps.parameters if caps else ()
    toggles = caps.toggles if caps else ()
    installed = sorted(backends)
    return {
        "engines_available": installed,
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
        "ttsengines_installed": bool(installed),
        "languages_capable": bool(caps and len(caps.languages) > 1),
        "multivoice_capable": len(serving.voices_of(config.default_model)) > 1,
        "multimodel_capable": len(config.models) > 1,
    }


def _setting(model: ModelDef, name: str, default: Any) -> Any:
    """A backend setting as the backend parsed it (its defaults included: XTTS's temperature
    is 0.75 unless set), else as written, else ``default``."""
    value = getattr(model.parsed, name, None)
    if value is None or isinstance(value, Mapping):
        value = model.settings.get(name, default)
    return value


# --- speech ---------------------------------------------------------------------------------

async def generate(ctx: AllTalkContext, form: Mapping[str, Any]) -> Reply:
    """``POST /api/tts-generate``: speak, write a WAV to the outputs folder, name it."""
    text = str(form.get("text_input", "")).strip()
    if not text:
        raise FieldError("text_input", "Field required")
    filtering = choice(form, "text_filtering", "standard", ("none", "standard", "html"))
    narrator = choice(form, "narrator_enabled", "false", ("true", "false", "silent"))
    not_inside = choice(form, "text_not_inside", "character",
                        ("character", "narrator", "silent"))
    name = str(form.get("output_file_name", "myoutputfile")).strip()
    check_stem(name)
    timestamp = boolean(form, "output_file_timestamp", True)
    speed = number(form, "speed")
    boolean(form, "autoplay", False)  # accepted; the host does not play audio itself
    serving = ctx.serving_now()
    config = serving.config
    options = _options(form, serving)
    language, headers = language_of(form, "language", serving)
    character, voice_headers = voice_of(form, "character_voice_gen", serving)
    headers = {**headers, **voice_headers}

    def part(piece: str, voice: str | None) -> SpeechInput:
        return SpeechInput(piece, voice=voice, language=language, speed=speed, options=options)

    if narrator == "false":
        parts = [part(filter_text(text, filtering), character)]
    else:
        # Checked only in narrator mode: SillyTavern sends a placeholder otherwise.
        narrator_voice, narrator_headers = voice_of(form, "narrator_voice_gen", serving)
        narrator_voice = narrator_voice or config.alltalk.narrator_voice or None
        headers = {**narrator_headers, **headers}
        segments = filtered_segments(text, filtering, not_inside)
        if narrator == "silent":
            segments = [s for s in segments if s[0] == "character"]
        parts = [part(piece, narrator_voice if role == "narrator" else character)
                 for role, piece in segments]
    result = await _speak(ctx.speech, parts)
    return await _saved(ctx, result, config, name, timestamp, headers=headers)


async def preview(ctx: AllTalkContext, form: Mapping[str, Any]) -> Reply:
    """``POST /api/previewvoice/``: the config's preview text in one voice, as a file."""
    if not str(form.get("voice") or "").strip():
        raise FieldError("voice", "Field required")
    serving = ctx.serving_now()
    voice, headers = voice_of(form, "voice", serving)
    config = serving.config
    result = await ctx.speech.synthesize(SpeechInput(config.alltalk.preview_text, voice=voice))
    return await _saved(ctx, result, config, "preview_voice", True, cache_url=False,
                        headers=headers)


async def streaming(ctx: AllTalkContext, params: Mapping[str, Any]
                    ) -> tuple[SpeechResult | SpeechStream, dict[str, str]]:
    """``/api/tts-generate-streaming``: a stream to send as WAV, or a whole short silence when
    there is nothing to speak; and the extra headers. The caller sends the stream (its first
    chunk before the status line) and closes it."""
    raw = str(params.get("text", ""))
    if not raw.strip():
        raise FieldError("text", "Field required")
    serving = ctx.serving_now()
    language, headers = language_of(params, "language", serving)
    voice, voice_headers = voice_of(params, "voice", serving)
    headers = {**headers, **voice_headers}
    wanted = SpeechInput(filter_text(raw, "standard"), voice=voice, language=language)
    try:
        if not wanted.text:  # filtering left nothing at all
            raise HostError("nothing to speak", code=Code.NOTHING_TO_SPEAK, status=400)
        return await ctx.speech.stream(wanted), headers
    except HostError as exc:
        if exc.code != Code.NOTHING_TO_SPEAK:
            raise
        return await ctx.speech.silence(), headers


async def _speak(speech: SpeechService, parts: list[SpeechInput]) -> SpeechResult:
    """The parts spoken on one lease; short silence when there is nothing to speak, as
    clients of AllTalk expect a file for any text."""
    parts = [p for p in parts if p.text]  # filtering may leave nothing at all
    try:
        if parts:
            return await speech.synthesize_parts(parts)
    except HostError as exc:
        if exc.code != Code.NOTHING_TO_SPEAK:
            raise
    return await speech.silence()


def _options(form: Mapping[str, Any], serving: Serving) -> dict[str, float]:
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


async def _saved(ctx: AllTalkContext, result: SpeechResult, config: HostConfig, stem: str,
                 timestamp: bool, cache_url: bool = True,
                 headers: Mapping[str, str] | None = None) -> Reply:
    """Write the audio as a WAV to the outputs folder; AllTalk's reply naming the file."""
    wav = await asyncio.to_thread(encode, result.audio, WAV)
    store = ctx.outputs_for(config)
    path = await asyncio.to_thread(store.write, stem, wav, ".wav", timestamp,
                                   config.output_retention)
    base = ctx.base_url if absolute_urls(config, ctx) else ""
    reply = {"status": "generate-success", "output_file_path": str(path),
             "output_file_url": f"{base}/audio/{path.name}"}
    if cache_url:
        reply["output_cache_url"] = f"{base}/audiocache/{path.name}"
    return Reply(reply, headers={**provenance_headers(result.provenance), **(headers or {})})


def absolute_urls(config: HostConfig, ctx: AllTalkContext) -> bool:
    """Whether a reply carries AllTalk v1's absolute URLs: with ``alltalk.legacy_api``, for
    every client but the two known to put their server URL in front of ``output_file_url``
    (an absolute URL became ``http://h:7851http://h:7851/audio/...`` for them), so one
    server serves all three. SillyTavern calls from the browser, which sends ``Origin`` with
    every POST; text-generation-webui's extension posts with python-requests. The Home
    Assistant integrations written for AllTalk v1 (Home Assistant's own aiohttp session)
    fetch the URL as it is."""
    prefixes = ctx.origin is not None or ctx.user_agent.lower().startswith("python-requests/")
    return config.alltalk.legacy_api and not prefixes


# --- files ----------------------------------------------------------------------------------

def output_file(ctx: AllTalkContext, name: str) -> Path:
    """``GET /audio/{name}`` and ``/audiocache/{name}``: the file, or NotFound."""
    if name in ("speech", "voices", "models"):  # an OpenAI client without /v1 in its base URL
        raise HostError(V1_HINT, code=Code.NOT_FOUND, status=404)
    config = ctx.serving_now().config
    return ctx.outputs_for(config).resolve(name)
