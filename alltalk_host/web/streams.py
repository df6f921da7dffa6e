"""Audio responses that the speech routes of every API share: provenance headers, a whole file,
a stream.

A stream's status line is sent only once its first chunk is ready, so everything that can refuse
a request (the text, a voice, the queue limit, the lease, an option the backend rejects) is
still answered as a normal error. After the first byte a failure can no longer change the
status: the transfer is aborted (the connection closes without the final chunk, which every HTTP
client reports at once) instead of a second response being written into the body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiohttp import web

from ..apis.encode import Format, StreamEncoder, encode
from ..apis.speech_api import (
    ARM_HEADER,
    COMMIT_HEADER,
    LANGUAGE_HEADER,
    MODEL_HEADER,
    provenance_headers,
)
from ..backend import Audio
from ..errors import HostError
from ..serving.speech import SpeechResult, SpeechStream

log = logging.getLogger(__name__)

# Headers a browser client may read from a cross-origin response (see cors.py).
EXPOSED_HEADERS = (COMMIT_HEADER, MODEL_HEADER, ARM_HEADER, LANGUAGE_HEADER)


async def send_audio(result: SpeechResult, fmt: Format,
                     headers: Mapping[str, str] | None = None) -> web.Response:
    """A complete audio file (with its length) in ``fmt``."""
    data = await asyncio.to_thread(encode, result.audio, fmt)
    return web.Response(body=data, headers={**provenance_headers(result.provenance),
                                            **(headers or {}),
                                            "Content-Type": fmt.content_type})


async def send_stream(request: web.Request, stream: SpeechStream, fmt: Format,
                      headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Send speech as each chunk is ready; the streaming routes of every API end here.

    Encoding a chunk (mp3, aac, opus) takes tens of milliseconds, so it runs off the event
    loop. A client that disconnects makes write() fail; the caller leaving its ``async
    with stream`` block then cancels the backend.
    """
    # Before the status line: an error raised here is still an ordinary error response.
    first = await anext(stream.chunks, None)
    response = web.StreamResponse(headers={**provenance_headers(stream.provenance),
                                           **(headers or {}),
                                           "Content-Type": fmt.content_type})
    await response.prepare(request)
    encoder = StreamEncoder(fmt, stream.provenance.sample_rate)
    try:
        if first is not None:
            await _write(response, encoder, first)
            async for chunk in stream.chunks:
                await _write(response, encoder, chunk)
        await response.write(await asyncio.to_thread(encoder.finish))
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; aiohttp notices the closed connection on its own
    except HostError as exc:  # a documented end, such as the drain deadline: no traceback
        log.warning("aborting the %s response to %s %s after it started (%s, commit %s): %s",
                    fmt.name, request.method, request.path, stream.provenance.model_label,
                    stream.provenance.commit[:10], exc.message)
        abort(request)
    except Exception:
        log.exception("aborting the %s response to %s %s after it started (%s, commit %s)",
                      fmt.name, request.method, request.path, stream.provenance.model_label,
                      stream.provenance.commit[:10])
        abort(request)
    return response


async def _write(response: web.StreamResponse, encoder: StreamEncoder, chunk: Audio) -> None:
    data = await asyncio.to_thread(encoder.encode, chunk)
    if data:
        await response.write(data)


def abort(request: web.Request) -> None:
    """End a started response as a broken transfer: close the connection before the final
    chunk. aiohttp then finds the transport closing and writes nothing more to it."""
    transport = request.transport
    if transport is not None:
        transport.close()
