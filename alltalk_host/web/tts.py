"""POST /tts, the native speech route (route -> SpeechService -> registry lease -> backend),
and GET /tts/models, what it may be asked for."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..apis.speech_api import provenance_headers, tts_input
from ..audio import to_wav
from ..backend import Capabilities
from ..config.settings import SPEED_RANGE, HostConfig, ModelDef
from ..serving.generation import GenerationState
from .bodies import read_json
from .errors import current_serving
from .keys import HOST
from .shown_paths import host_folders, relative_paths

routes = web.RouteTableDef()


@routes.post("/tts")
async def tts(request: web.Request) -> web.Response:
    wanted = tts_input(await read_json(request))
    result = await request.app[HOST].speech.synthesize(wanted)
    wav = await asyncio.to_thread(to_wav, result.audio)
    return web.Response(body=wav, content_type="audio/wav",
                        headers=provenance_headers(result.provenance))


@routes.get("/tts/models")
async def models(request: web.Request) -> web.Response:
    """What a /tts request may ask for: every configured model, whether it serves or loads
    when asked for (``on_demand``), and for those their voices (a model not loaded yet: none
    known), languages, options and defaults; the text limit. Read-only
    and public like the other speech routes (no settings, paths or secrets)."""
    serving = current_serving(request)
    config = serving.config
    folders = host_folders(config, request.app[HOST].options)
    entries = []
    for name, model in sorted(config.models.items()):
        gen = serving.generations.get(name)
        entry: dict = {"name": name, "backend": model.backend,
                       "default": name == config.default_model, **model.availability}
        if "reason" in entry:
            entry["reason"] = relative_paths(entry["reason"], folders)
        if gen is None:
            entry["state"] = "unavailable" if model.unavailable else "not_loaded"
            entry["on_demand"] = config.loads_on_demand(name)
            cls = request.app[HOST].catalog.get(model.backend)
            if entry["on_demand"] and cls is not None:
                # What its backend says of itself; its voices are known once it is loaded.
                entry.update(_takes(cls.capabilities, [], model, config))
        else:
            entry.update(state=GenerationState.SERVING, generation=gen.number,
                         commit=gen.commit,
                         **_takes(gen.capabilities, serving.voices_of(name), model, config))
        entries.append(entry)
    return web.json_response({"commit": serving.commit, "default_model": config.default_model,
                              "max_text_length": config.max_text_length,
                              "speed_range": list(SPEED_RANGE), "models": entries})


def _takes(caps: Capabilities, voices: list[str], model: ModelDef,
           config: HostConfig) -> dict[str, Any]:
    """What a request to ``model`` may ask for, and what it gets when it names nothing."""
    return {"voices": voices, "languages": list(caps.languages), "streaming": caps.streaming,
            "parameters": list(caps.parameters), "default_voice": model.default_voice,
            "default_language": model.default_language or config.default_language,
            "default_speed": model.default_speed}
