"""POST /tts, the native speech route (route -> SpeechService -> registry lease -> backend)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..audio import to_wav
from ..speech import SpeechInput
from .errors import field, read_json
from .keys import HOST
from .streams import provenance_headers

routes = web.RouteTableDef()


@routes.post("/tts")
async def tts(request: web.Request) -> web.Response:
    body = await read_json(request)
    wanted = SpeechInput(
        text=field(body, "text", str, required=True),
        model=field(body, "model", str),
        voice=field(body, "voice", str),
        language=field(body, "language", str),
        speed=field(body, "speed", (int, float)),
        options=field(body, "options", dict) or {},  # backend parameters, checked by it
    )
    result = await request.app[HOST].speech.synthesize(wanted)
    wav = await asyncio.to_thread(to_wav, result.audio)
    return web.Response(body=wav, content_type="audio/wav",
                        headers=provenance_headers(result.provenance))
