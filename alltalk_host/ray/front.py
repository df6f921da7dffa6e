"""The Ray Serve front's HTTP handlers: Starlette requests in, Starlette responses out, over the
same core calls as the aiohttp routes (``speech_api`` for what a request may say, ``alltalk_api``
for AllTalk's routes, the speech service for audio, ``encode`` for formats).

Ray Serve's ingress is ASGI, so these cannot be the aiohttp handlers; they are kept as thin.
Every response names the replica that answered (``X-AllTalk-Replica``); audio responses also
carry the commit and model that produced them.

AllTalk's output files are fetched by URL after the reply, and Serve may send that GET to
another replica, so every replica keeps them in one folder (``outputs_folder``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)

from ..apis import alltalk_api
from ..apis.alltalk_api import CACHE_HEADERS, RVC_VOICES, WAV, AllTalkContext, FormCall
from ..apis.alltalk_fields import FORM_TYPES, Reply, alltalk_error, not_a_form
from ..apis.bodies import parse_json, short
from ..apis.encode import Format, StreamEncoder, encode
from ..apis.http_boundary import (
    Access,
    Caller,
    HttpPolicy,
    check_local,
    check_origin,
    check_token_digest,
    token_digest,
)
from ..apis.speech_api import (
    INTERNAL_MESSAGE,
    openai_body,
    openai_error,
    openai_request,
    openai_spoken,
    provenance_headers,
    tts_input,
    with_param,
)
from ..audio import to_wav
from ..backend import Audio
from ..config.settings import HostConfig
from ..errors import BadRequest, Code, HostError, NotFound, PayloadTooLarge, Unauthorized
from ..outputs import OutputStore, OutputStores
from ..serving.registry import Serving
from ..serving.speech import SpeechResult, SpeechStream
from .board import Board, LedgerConflict, MemoryStore
from .replica import Replica

log = logging.getLogger(__name__)

REPLICA_HEADER = "X-AllTalk-Replica"
STATUS_PATH = "/ray/status"
FLEET_PATH = "/ray/fleet"  # every replica's status and the fleet's ledger, from the board
DEFAULT_BODY_LIMIT = 1_048_576  # before any config serves; then http.max_body_bytes

RayHandler = Callable[[Request], Awaitable[Response]]


def outputs_folder(config: HostConfig, shared_dir: Path) -> Path:
    """``outputs.dir`` the same for every replica: as written when absolute (on several
    machines, a shared file system mounted there on each), else under the deployment's
    ``state_dir``. Never a worker's working directory, which Ray chooses."""
    written = config.outputs_dir_as_written
    return written if written.is_absolute() else (shared_dir / written).resolve()


class RayFront:
    def __init__(self, replica: Replica, shared_dir: Path, board: Board | None = None,
                 token_sha256: str | None = None) -> None:
        """``shared_dir``: the fleet's root, where relative output folders resolve;
        ``token_sha256``: the control token's digest, from the deploy (the token itself
        is never in Ray's config); without one, control routes answer loopback clients."""
        self.replica = replica
        self.host = replica.host
        self.speech = replica.host.speech
        self.shared_dir = shared_dir
        self.board = board or Board(MemoryStore())
        # A front built with the host's own token (the tests' uvicorn fronts) checks that.
        self.token_sha256 = token_sha256 or token_digest(replica.host.options.control_token)
        self.outputs = OutputStores()
        self.routes: dict[tuple[str, str], RayHandler] = {
            ("POST", "/tts"): self.tts,
            ("POST", "/v1/audio/speech"): self.openai_speech,
            ("GET", STATUS_PATH): self.status,
            ("GET", FLEET_PATH): self.fleet,
            ("PUT", FLEET_PATH): self.write_ledger,
            ("GET", "/api/ready"): self.ready,
            ("GET", "/api/voices"): self.voices,
            ("GET", "/api/rvcvoices"): self.rvc_voices,
            ("GET", "/api/currentsettings"): self.current_settings,
            ("POST", "/api/tts-generate"): self.tts_generate,
            ("POST", "/api/previewvoice/"): self.preview_voice,
            ("GET", "/api/tts-generate-streaming"): self.tts_generate_streaming,
            ("POST", "/api/tts-generate-streaming"): self.tts_generate_streaming,
        }
        # GET /audio/{name}, /audiocache/{name}: the folder, and the file's extra headers.
        self.files: dict[str, Mapping[str, str]] = {"/audio": {}, "/audiocache": CACHE_HEADERS}

    async def handle(self, request: Request) -> Response:
        """The one entry: the route, the JSON error of a failure, the replica header."""
        method, path = request.method, request.url.path
        try:
            response = await self._route(method, path)(request)
        except Unauthorized as exc:
            response = JSONResponse(exc.to_dict(), status_code=exc.status,
                                    headers={"WWW-Authenticate": "Bearer"})
        except HostError as exc:
            response = JSONResponse(exc.to_dict(), status_code=exc.status)
        except Exception:
            log.exception("unhandled error in %s %s", method, path)
            response = JSONResponse(HostError(INTERNAL_MESSAGE).to_dict(), status_code=500)
        response.headers[REPLICA_HEADER] = self.replica.id
        return response

    def _route(self, method: str, path: str) -> RayHandler:
        handler = self.routes.get((method, path))
        if handler is not None:
            return handler
        folder, _, name = path.rpartition("/")
        file_headers = self.files.get(folder) if name else None
        if file_headers is not None:
            if method == "GET":
                return lambda request: self.output_file(request, name, file_headers)
            allowed = ["GET"]
        else:
            allowed = sorted(m for m, p in self.routes if p == path)
        if allowed:
            raise HostError(f"{method} is not allowed on {path}; use {allowed}",
                            code=Code.METHOD_NOT_ALLOWED, status=405)
        raise NotFound(f"no route {method} {path}", code=Code.NOT_FOUND)

    async def tts(self, request: Request) -> Response:
        result = await self.speech.synthesize(tts_input(parse_json(await self._body(request))))
        wav = await asyncio.to_thread(to_wav, result.audio)
        return Response(wav, media_type="audio/wav",
                        headers=provenance_headers(result.provenance))

    async def openai_speech(self, request: Request) -> Response:
        try:
            asked = openai_request(await openai_body(self._body(request)), self._serving)
            spoken = await openai_spoken(self.speech, asked)
            if isinstance(spoken, SpeechResult):
                return await _whole(spoken, asked.fmt)
            try:
                return await _streamed(spoken, asked.fmt)
            except HostError as exc:
                raise with_param(exc) from None
        except HostError as exc:
            return JSONResponse(openai_error(exc), status_code=exc.status)

    async def status(self, request: Request) -> Response:
        # It shows commits and failure reasons, as /control/status does: the same guard.
        self._guard(request)
        return JSONResponse(self.replica.status())

    async def fleet(self, request: Request) -> Response:
        """What the board holds: every replica's last report, the ledger and its version."""
        self._guard(request)
        replicas = await asyncio.to_thread(self.board.replicas)
        ledger, version = await asyncio.to_thread(self.board.ledger)
        return JSONResponse({"replicas": replicas, "ledger": ledger, "version": version})

    async def write_ledger(self, request: Request) -> Response:
        """``{"ledger": {...}, "version": N}``: written if the board is still at N."""
        self._guard(request)
        body = parse_json(await self._body(request))
        state, expect = body.get("ledger"), body.get("version")
        if not isinstance(state, dict) or not isinstance(expect, int) or isinstance(expect,
                                                                                    bool):
            raise BadRequest("the body must be {'ledger': {...}, 'version': N}",
                             code=Code.BAD_REQUEST)
        try:
            version = await asyncio.to_thread(self.board.write_ledger, state, expect)
        except LedgerConflict as exc:
            raise HostError(str(exc), code=Code.CONFLICT, status=409) from None
        return JSONResponse({"version": version})

    def _guard(self, request: Request) -> None:
        """Refuse a control request as the aiohttp app's guard does (``http_boundary``).
        Behind Serve's proxy the client and headers are the caller's own: the proxy passes
        the ASGI scope through."""
        # No client in the scope: an unknown peer, so not a local one ("").
        caller = Caller(remote=request.client.host if request.client else "",
                        http_version=request.scope.get("http_version", "1.1"),
                        headers=request.headers,
                        origin_self=f"{request.url.scheme}://{request.url.netloc}")
        rules = HttpPolicy.of(self.host.registry.serving)
        check_origin(caller, rules)
        if self.token_sha256:
            check_token_digest(caller.headers.get("Authorization", ""), self.token_sha256)
        else:
            check_local(caller, Access(None, self.host.options.behind_proxy), rules)

    # --- AllTalk's routes: adapters over alltalk_api, as web/alltalk.py is ---------------

    async def ready(self, request: Request) -> Response:
        return PlainTextResponse(alltalk_api.ready_text(self.host.control.ready))

    async def voices(self, request: Request) -> Response:
        return JSONResponse(alltalk_api.voices(self._serving()))

    async def rvc_voices(self, request: Request) -> Response:
        return JSONResponse(RVC_VOICES)

    async def current_settings(self, request: Request) -> Response:
        return JSONResponse(alltalk_api.current_settings(self._serving(),
                                                         self.host.catalog.backends))

    async def tts_generate(self, request: Request) -> Response:
        return await self._form_reply(request, alltalk_api.generate)

    async def preview_voice(self, request: Request) -> Response:
        return await self._form_reply(request, alltalk_api.preview)

    async def tts_generate_streaming(self, request: Request) -> Response:
        try:
            params = (request.query_params if request.method == "GET"
                      else await self._form(request))
            spoken, headers = await alltalk_api.streaming(self._context(request), params)
            if isinstance(spoken, SpeechResult):
                return await _whole(spoken, WAV, headers)
            return await _streamed(spoken, WAV, headers)
        except HostError as exc:  # refused before the first byte
            return _send(alltalk_error(exc))

    async def output_file(self, request: Request, name: str, headers: Mapping[str, str]
                          ) -> Response:
        path = alltalk_api.output_file(self._context(request), name)
        return FileResponse(path, media_type="audio/wav", headers=dict(headers))

    async def _form_reply(self, request: Request, call: FormCall) -> Response:
        try:
            return _send(await call(self._context(request), await self._form(request)))
        except HostError as exc:
            return _send(alltalk_error(exc))

    def _context(self, request: Request) -> AllTalkContext:
        return AllTalkContext(serving_now=self._serving, speech=self.speech,
                              outputs_for=self._outputs_for,
                              base_url=f"{request.url.scheme}://{request.url.netloc}",
                              origin=request.headers.get("origin"),
                              user_agent=request.headers.get("user-agent", ""))

    def _outputs_for(self, config: HostConfig) -> OutputStore:
        return self.outputs.get(outputs_folder(config, self.shared_dir))

    async def _form(self, request: Request) -> Mapping[str, str]:
        """A form body, read within the body limit as aiohttp's ``post()`` reads it."""
        return read_form(await self._body(request),
                         request.headers.get("content-type", "application/octet-stream"))

    def _serving(self) -> Serving:
        return self.host.registry.require_serving()

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


def _send(reply: Reply) -> Response:
    return JSONResponse(reply.body, status_code=reply.status, headers=dict(reply.headers))


async def _whole(result: SpeechResult, fmt: Format,
                 headers: Mapping[str, str] | None = None) -> Response:
    data = await asyncio.to_thread(encode, result.audio, fmt)
    return Response(data, media_type=fmt.content_type,
                    headers={**provenance_headers(result.provenance), **(headers or {})})


async def _streamed(stream: SpeechStream, fmt: Format,
                    headers: Mapping[str, str] | None = None) -> Response:
    """The stream as a response once its first chunk is ready: a refusal until then (the
    text, a voice, the queue, an option the backend rejects) is still an ordinary error."""
    try:
        first = await anext(stream.chunks, None)
    except BaseException:
        await stream.aclose()
        raise
    return StreamingResponse(_encoded(stream, first, fmt), media_type=fmt.content_type,
                             headers={**provenance_headers(stream.provenance),
                                      **(headers or {})})


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


def read_form(raw: bytes, content_type_header: str) -> Mapping[str, str]:
    """The fields of an urlencoded or multipart form, as aiohttp's ``post()`` gives them.

    Starlette's own ``form()`` needs python-multipart, which Ray does not ship; the standard
    library reads both kinds. Of a multipart body only the plain fields are kept (AllTalk's
    routes read no file), each decoded with its part's charset.
    """
    if not raw:
        return ImmutableMultiDict()
    header = Message()
    header["content-type"] = content_type_header
    content_type = header.get_content_type()
    charset = str(header.get_param("charset") or "utf-8")
    try:
        if content_type == FORM_TYPES[0]:
            return ImmutableMultiDict(parse_qsl(raw.rstrip().decode(charset),
                                                keep_blank_values=True, encoding=charset))
        if content_type == FORM_TYPES[1]:
            return ImmutableMultiDict(_multipart_fields(raw, content_type_header))
    # LookupError: a charset Python does not know; ValueError: undecodable bytes.
    except (ValueError, LookupError) as exc:
        raise BadRequest(f"the form body cannot be read: {short(exc)}",
                         code=Code.MALFORMED_FORM) from None
    raise not_a_form(content_type)


def _multipart_fields(raw: bytes, content_type_header: str) -> list[tuple[str, str]]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type_header.encode("latin-1") + b"\r\n\r\n" + raw)
    if not message.is_multipart() or message.defects:
        raise ValueError("the multipart body is malformed (no boundary, or parts that do "
                         "not end)")
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.get_filename() is not None:
            continue  # a part with no field name, or a file
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        fields.append((name, payload.decode(part.get_content_charset() or "utf-8")))
    return fields
