"""The Ray Serve front's HTTP handlers: Starlette requests in, Starlette responses out, over the
same core calls as the aiohttp routes (``speech_api`` for what a request may say, the speech
service for audio, ``encode`` for formats).

Ray Serve's ingress is ASGI, so these cannot be the aiohttp handlers; they are kept as thin.
Every response names the replica that answered (``X-AllTalk-Replica``); audio responses also
carry the commit and model that produced them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..audio import to_wav
from ..backend import Audio
from ..encode import Format, StreamEncoder, encode
from ..errors import Code, HostError, NotFound, PayloadTooLarge, Unavailable
from ..registry import Serving
from ..speech import SpeechResult, SpeechStream
from ..speech_api import (
    INTERNAL_MESSAGE,
    openai_body,
    openai_error,
    openai_request,
    parse_json,
    provenance_headers,
    tts_input,
    with_param,
)
from .replica import Replica

log = logging.getLogger(__name__)

REPLICA_HEADER = "X-AllTalk-Replica"
STATUS_PATH = "/ray/status"
DEFAULT_BODY_LIMIT = 1_048_576  # before any config serves; then http.max_body_bytes

RayHandler = Callable[[Request], Awaitable[Response]]


class RayFront:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.speech = replica.host.speech
        self.routes: dict[tuple[str, str], RayHandler] = {
            ("POST", "/tts"): self.tts,
            ("POST", "/v1/audio/speech"): self.openai_speech,
            ("GET", STATUS_PATH): self.status,
        }

    async def handle(self, request: Request) -> Response:
        """The one entry: the route, the JSON error of a failure, the replica header."""
        method, path = request.method, request.url.path
        handler = self.routes.get((method, path))
        try:
            if handler is None:
                allowed = sorted(m for m, p in self.routes if p == path)
                if allowed:
                    raise HostError(f"{method} is not allowed on {path}; use {allowed}",
                                    code=Code.METHOD_NOT_ALLOWED, status=405)
                raise NotFound(f"no route {method} {path}", code=Code.NOT_FOUND)
            response = await handler(request)
        except HostError as exc:
            response = JSONResponse(exc.to_dict(), status_code=exc.status)
        except Exception:
            log.exception("unhandled error in %s %s", method, path)
            response = JSONResponse(HostError(INTERNAL_MESSAGE).to_dict(), status_code=500)
        response.headers[REPLICA_HEADER] = self.replica.id
        return response

    async def tts(self, request: Request) -> Response:
        result = await self.speech.synthesize(tts_input(parse_json(await self._body(request))))
        wav = await asyncio.to_thread(to_wav, result.audio)
        return Response(wav, media_type="audio/wav",
                        headers=provenance_headers(result.provenance))

    async def openai_speech(self, request: Request) -> Response:
        try:
            asked = openai_request(await openai_body(self._body(request)), self._serving)
            try:
                stream = await self.speech.stream(asked.wanted)
            except HostError as exc:
                if exc.code == Code.NOTHING_TO_SPEAK:
                    return await _whole(await self.speech.silence(asked.model), asked.fmt)
                raise with_param(exc) from None
            try:
                # Before the status line: a refusal here is still an ordinary error.
                first = await anext(stream.chunks, None)
            except HostError as exc:
                await stream.aclose()
                raise with_param(exc) from None
            except BaseException:
                await stream.aclose()
                raise
        except HostError as exc:
            return JSONResponse(openai_error(exc), status_code=exc.status)
        return StreamingResponse(_encoded(stream, first, asked.fmt),
                                 media_type=asked.fmt.content_type,
                                 headers=provenance_headers(stream.provenance))

    async def status(self, request: Request) -> Response:
        return JSONResponse(self.replica.status())

    def _serving(self) -> Serving:
        serving = self.replica.host.registry.serving
        if serving is None:
            raise Unavailable("no model is loaded yet", code=Code.NOT_READY)
        return serving

    async def _body(self, request: Request) -> bytes:
        """The body, or 413 past the serving config's ``http.max_body_bytes``."""
        serving = self.replica.host.registry.serving
        limit = serving.config.http.max_body_bytes if serving else DEFAULT_BODY_LIMIT
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes "
                                      "(http.max_body_bytes)")
        return bytes(data)


async def _whole(result: SpeechResult, fmt: Format) -> Response:
    data = await asyncio.to_thread(encode, result.audio, fmt)
    return Response(data, media_type=fmt.content_type,
                    headers=provenance_headers(result.provenance))


async def _encoded(stream: SpeechStream, first: Audio | None, fmt: Format
                   ) -> AsyncIterator[bytes]:
    """The stream's chunks in ``fmt``, encoded off the event loop. A failure after the first
    byte propagates, and the server ends the transfer without its final chunk (a broken
    response every HTTP client reports), never a second response inside the body."""
    encoder = StreamEncoder(fmt, stream.provenance.sample_rate)
    async with stream:
        try:
            if first is not None:
                yield await asyncio.to_thread(encoder.encode, first)
                async for chunk in stream.chunks:
                    yield await asyncio.to_thread(encoder.encode, chunk)
            yield await asyncio.to_thread(encoder.finish)
        except HostError as exc:
            log.warning("aborting the %s stream after it started (%s, commit %s): %s",
                        fmt.name, stream.provenance.model_label, stream.provenance.commit[:10],
                        exc.message)
            raise
