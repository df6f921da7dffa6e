"""POST /tts, the native speech route (route -> SpeechService -> registry lease -> backend),
and the audio-response helpers that every API's speech routes share."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..audio import to_wav
from ..encode import Format, StreamEncoder
from ..speech import Provenance, SpeechInput, SpeechStream
from .errors import field, read_json
from .keys import HOST

routes = web.RouteTableDef()


def provenance_headers(p: Provenance) -> dict[str, str]:
    """Sent on every audio response: which config and which loaded model produced it."""
    return {"X-AllTalk-Commit": p.commit, "X-AllTalk-Model": p.model_label}


async def send_stream(request: web.Request, stream: SpeechStream,
                      fmt: Format) -> web.StreamResponse:
    """Send speech as each chunk is ready; the streaming routes of every API end here.

    Encoding a chunk (mp3, aac, opus) takes tens of milliseconds, so it runs off the event
    loop. A client that disconnects makes write() fail; the caller leaving its ``async
    with stream`` block then cancels the backend.
    """
    response = web.StreamResponse(headers={**provenance_headers(stream.provenance),
                                           "Content-Type": fmt.content_type})
    await response.prepare(request)
    encoder = StreamEncoder(fmt, stream.provenance.sample_rate)
    async for chunk in stream.chunks:
        data = await asyncio.to_thread(encoder.encode, chunk)
        if data:
            await response.write(data)
    await response.write(await asyncio.to_thread(encoder.finish))
    await response.write_eof()
    return response


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
