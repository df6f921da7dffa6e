"""The voice library's routes: list and show the voices of the serving commit, upload one (a
commit), replace its sample, remove it. Uploads are checked and normalised in-process
(apis/voice_audio.py) before anything is committed; each change is a commit applied before the
branch moves, as a model switch is.

    POST   /control/voices           multipart: file, name, [model, language, transcript, source]
    PUT    /control/voices/{name}    multipart: file, [the same fields]: a new sample
    PATCH  /control/voices/{name}    JSON: [name (a new one), model, language, transcript, source]
    DELETE /control/voices/{name}
    GET    /control/voices, /control/voices/{name}
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..apis.speech_api import field
from ..apis.voice_audio import MAX_UPLOAD_BYTES, normalise
from ..backend import Capabilities, VoiceSample
from ..config.voices import AUDIO_SUFFIXES, VOICES_DIR
from ..errors import BadRequest, Code, NotFound, PayloadTooLarge
from .bodies import read_json
from .errors import current_serving
from .guard import ControlRoutes
from .keys import HOST

upload_routes = ControlRoutes(body="multipart")
edit_routes = ControlRoutes(body="json")
control_routes = ControlRoutes(body=None)
FIELDS = ("name", "model", "language", "transcript", "source", "author")
MAX_FIELD = 2000
SAMPLE_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg",
                ".ogg": "audio/ogg", ".opus": "audio/ogg", ".m4a": "audio/mp4"}


def describe(sample: VoiceSample, models: list[str], added_in: str | None) -> dict[str, Any]:
    return {"name": sample.name, "file": sample.file, "sha256": sample.sha256,
            "seconds": sample.seconds, "sample_rate": sample.rate, "bytes": sample.size,
            "model": sample.model, "language": sample.language,
            "transcript": sample.transcript, "source": sample.source, "models": models,
            "added_in": added_in, "sample_url": f"/control/voices/{quote(sample.name)}/sample"}


async def _listing(request: web.Request) -> tuple[str, dict[str, dict[str, Any]],
                                                  list[dict[str, Any]]]:
    """The library of the serving commit, and the unversioned voice files (a voices_dir) of
    the loaded models that clone."""
    serving = current_serving(request)
    speakers = {name: serving.voices_of(name) for name in serving.generations}
    added = await asyncio.to_thread(request.app[HOST].control.repo.added_in, serving.commit,
                                    VOICES_DIR) if serving.config.voices else {}
    library = {name: describe(sample, [m for m, voices in speakers.items() if name in voices],
                              added.get(sample.file))
               for name, sample in sorted(serving.config.voices.items())}
    unversioned = [{"name": voice, "model": name, "source": "voices_dir (unversioned)"}
                   for name, gen in sorted(serving.generations.items())
                   if gen.capabilities.voice_cloning
                   for voice in gen.voices if voice.lower().endswith(AUDIO_SUFFIXES)]
    return serving.commit, library, unversioned


@control_routes.get("/control/voices")
async def list_voices(request: web.Request) -> web.Response:
    commit, voices, unversioned = await _listing(request)
    return web.json_response({"commit": commit, "voices": list(voices.values()),
                              "unversioned": unversioned})


@control_routes.get("/control/voices/{name}")
async def show_voice(request: web.Request) -> web.Response:
    commit, voices, _ = await _listing(request)
    name = request.match_info["name"]
    if name not in voices:
        raise NotFound(f"the library has no voice {name[:70]!r}", code=Code.UNKNOWN_VOICE)
    return web.json_response({"commit": commit, **voices[name]})


@control_routes.get("/control/voices/{name}/sample")
async def voice_sample(request: web.Request) -> web.StreamResponse:
    """The sample as the serving commit holds it, to listen to."""
    sample = current_serving(request).config.voices.get(request.match_info["name"])
    if sample is None:
        raise NotFound(f"the library has no voice {request.match_info['name'][:70]!r}",
                       code=Code.UNKNOWN_VOICE)
    kind = SAMPLE_TYPES.get(sample.path.suffix, "application/octet-stream")
    return web.Response(body=await asyncio.to_thread(sample.path.read_bytes),
                        content_type=kind, headers={
                            "Content-Disposition": f'inline; filename="{quote(sample.name)}'
                                                   f'{sample.path.suffix}"'})


@upload_routes.post("/control/voices")
async def add_voice(request: web.Request) -> web.Response:
    fields, data = await _upload(request)
    name = fields.pop("name", None)
    if not name:
        raise BadRequest("name is required: the voice's name", code=Code.MISSING_FIELD,
                         details={"field": "name"})
    return await _put(request, name, fields, data, replace=False)


@upload_routes.put("/control/voices/{name}")
async def replace_voice(request: web.Request) -> web.Response:
    fields, data = await _upload(request)
    fields.pop("name", None)
    return await _put(request, request.match_info["name"], fields, data, replace=True)


@edit_routes.patch("/control/voices/{name}")
async def edit_voice(request: web.Request) -> web.Response:
    """Rename a voice (``name``) and/or change its fields; "" clears a field."""
    body = await read_json(request)
    unknown = set(body) - set(FIELDS)
    if unknown:
        raise BadRequest(f"unknown fields {sorted(unknown)[:5]}; known: {', '.join(FIELDS)}",
                         code=Code.BAD_FIELD)
    values = {key: field(body, key, str) for key in FIELDS}
    if any(len(v) > MAX_FIELD for v in values.values() if v):
        raise BadRequest(f"fields are at most {MAX_FIELD} characters", code=Code.BAD_FIELD)
    author = (values.pop("author") or "").strip()[:80] or None
    new_name = values.pop("name")
    fields = {k: v.strip() for k, v in values.items() if v is not None}
    return web.json_response(await request.app[HOST].control.edit_voice(
        request.match_info["name"], new_name, fields, author or f"api@{request.remote}",
        author))


@control_routes.delete("/control/voices/{name}")
async def remove_voice(request: web.Request) -> web.Response:
    author = request.query.get("author", "").strip()[:80] or None
    who = author or f"api@{request.remote}"
    return web.json_response(await request.app[HOST].control.remove_voice(
        request.match_info["name"], who, author))


def _limits(request: web.Request, model: str | None) -> Capabilities:
    """The cloning limits an upload is checked against: the named model's backend's, else
    those of the default model or of the first loaded model that clones, else the contract's
    defaults (a library may be filled before a cloning model loads)."""
    serving = current_serving(request)
    catalog = request.app[HOST].catalog
    for name in ([model] if model else [serving.config.default_model, *serving.generations]):
        gen = serving.generations.get(name)
        defined = serving.config.models.get(name)
        cls = catalog.get(defined.backend) if defined is not None else None
        caps = gen.capabilities if gen else cls.capabilities if cls else None
        if caps is not None and caps.voice_cloning:
            return caps
    return Capabilities()


async def _put(request: web.Request, name: str, fields: dict[str, str], data: bytes,
               replace: bool) -> web.Response:
    caps = _limits(request, fields.get("model"))
    low, high = caps.clone_seconds
    sample = await asyncio.to_thread(normalise, data, caps.clone_rate, low, high)
    author = fields.pop("author", None)
    who = author or f"api@{request.remote}"
    return web.json_response(await request.app[HOST].control.put_voice(
        name, sample.wav, {k: fields.get(k) for k in ("model", "language", "transcript",
                                                      "source")},
        who, author, replace=replace))


async def _upload(request: web.Request) -> tuple[dict[str, str], bytes]:
    """The form's text fields and its one file, read within the upload's size limit."""
    if request.content_type != "multipart/form-data":
        raise BadRequest("send the voice as multipart/form-data with a file field",
                         code=Code.MALFORMED_FORM)
    fields: dict[str, str] = {}
    data: bytes | None = None
    received = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                raise BadRequest("a form part without a name", code=Code.MALFORMED_FORM)
            value = bytearray()
            while chunk := await part.read_chunk():
                received += len(chunk)
                if received > MAX_UPLOAD_BYTES + 64 * 1024:
                    raise PayloadTooLarge(f"an upload is at most {MAX_UPLOAD_BYTES // 2**20} "
                                          "MiB")
                value.extend(chunk)
            if part.name == "file":
                data = bytes(value)
            elif part.name in FIELDS:
                if len(value) > MAX_FIELD:
                    raise BadRequest(f"{part.name} is longer than {MAX_FIELD} bytes",
                                     code=Code.BAD_FIELD, details={"field": part.name})
                fields[part.name] = value.decode("utf-8", errors="replace").strip()
            else:
                raise BadRequest(f"unknown form field {part.name[:40]!r}; known: file, "
                                 f"{', '.join(FIELDS)}", code=Code.BAD_FIELD)
    # aiohttp's multipart reader: ValueError, AssertionError, HTTPException, and
    # HttpProcessingError for a part header with control characters.
    except (ValueError, LookupError, AssertionError, web.HTTPException,
            HttpProcessingError) as exc:
        raise BadRequest(f"the form body cannot be read: {str(exc)[:200]}",
                         code=Code.MALFORMED_FORM) from None
    if data is None:
        raise BadRequest("file is required: the recording", code=Code.MISSING_FIELD,
                         details={"field": "file"})
    return {k: v for k, v in fields.items() if v}, data
