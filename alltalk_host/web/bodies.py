"""Reading a request's body on the aiohttp front: one place for its size limit
(``http.max_body_bytes``), its content coding, JSON (parsed by ``apis/bodies.py``) and forms.

Forms are AllTalk's bodies: urlencoded (SillyTavern, text-generation-webui) and multipart
(Home Assistant's integrations), read into a MultiDict of text fields.

Multipart is read here rather than by aiohttp's ``request.post()``, which decodes a part's own
``Content-Encoding: gzip`` with no bound (its ``client_max_size`` counts the bytes received,
not the bytes decoded): a 48 KB part of compressed bytes became 50 MB. Form fields have no
content codings (RFC 7578, 4.7), so a part that declares one is refused; file parts are read
and dropped, as no route reads files.
"""

from __future__ import annotations

from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict, MultiDictProxy

from ..apis.alltalk_fields import FORM_TYPES, not_a_form
from ..apis.bodies import parse_json, short
from ..errors import BadRequest, Code, HostError, PayloadTooLarge

# The Content-Encoding values read, compared whole as aiohttp does: it decodes gzip, and br and
# zstd with their optional packages (without them its parser refuses the request, 400, before
# any handler runs); anything else, a list of codings included, reaches the handler undecoded.
# deflate is refused although aiohttp decodes it: in aiohttp 3.14 a deflate body that proves
# broken only at its end (when it arrives after the headers) is never finished nor failed, so
# the read of it never returns and the client never gets an answer.
DECODED = frozenset({"", "identity", "gzip", "br", "zstd"})


def check_encoding(request: web.Request) -> None:
    """415 for a body whose content coding aiohttp did not decode: read as it is, it would be
    taken for something the client did not mean (RFC 9110, 8.4)."""
    raw = request.headers.get("Content-Encoding", "")
    if raw.strip().lower() not in DECODED:
        raise HostError(f"Content-Encoding {raw[:40]!r} is not decoded here; send the body "
                        "as it is, or gzip-compressed", status=415,
                        code=Code.BAD_CONTENT_ENCODING)


def undecodable(request: web.Request, exc: web.RequestPayloadError) -> BadRequest:
    """A body that is not what its Content-Encoding says (aiohttp found out as it decoded).

    aiohttp's parser has given up on this connection and would, after the answer, try to read
    the rest of the body and log that failure as an unhandled exception: the body is marked
    finished and the connection to be closed after the answer instead."""
    request.content.feed_eof()
    request.protocol.close()
    coding = request.headers.get("Content-Encoding", "")[:40]
    return BadRequest(f"the body cannot be decoded as its Content-Encoding ({coding}) says: "
                      f"{short(exc)}", code=Code.BAD_CONTENT_ENCODING)


async def read_body(request: web.Request) -> bytes:
    """The body, decoded; 413 beyond the size limit (``http.max_body_bytes``, which aiohttp
    counts on the decoded bytes, so a small compressed bomb is refused as it grows)."""
    check_encoding(request)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(too_large(exc)) from None
    except web.RequestPayloadError as exc:
        raise undecodable(request, exc) from None


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body counts as ``{}``."""
    return parse_json(await read_body(request))


def too_large(exc: web.HTTPRequestEntityTooLarge) -> str:
    return f"{exc.text or 'the body is too large'} (http.max_body_bytes)"


# Content-Transfer-Encoding values that leave a part's bytes as they are.
_AS_IS = ("", "identity", "binary", "7bit", "8bit")
MAX_FIELDS = 1000


async def ensure_form(request: web.Request) -> Any:
    """The request's form fields (urlencoded or multipart), or BadRequest if unreadable."""
    if request.body_exists and request.content_type not in FORM_TYPES:
        raise not_a_form(request.content_type)
    check_encoding(request)
    try:
        if request.content_type == "multipart/form-data":
            return await _multipart(request)
        return await request.post()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(too_large(exc)) from None
    except web.RequestPayloadError as exc:
        raise undecodable(request, exc) from None
    # LookupError: a charset Python does not know (charset=bogus); ValueError includes
    # undecodable bytes; AssertionError, HTTPException and HttpProcessingError (a part header
    # with control characters): aiohttp's multipart reader.
    except (ValueError, LookupError, AssertionError, web.HTTPException,
            HttpProcessingError) as exc:
        raise BadRequest(f"the form body cannot be read: {short(exc)}",
                         code=Code.MALFORMED_FORM) from None


async def _multipart(request: web.Request) -> MultiDictProxy[str]:
    limit = request.client_max_size
    fields: MultiDict[str] = MultiDict()
    received = 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ValueError("a nested multipart body is not a form")
        for header in ("Content-Encoding", "Content-Transfer-Encoding"):
            coding = part.headers.get(header, "").strip().lower()
            if coding not in _AS_IS:
                raise HostError(f"form field {str(part.name)[:40]!r} has {header} "
                                f"{coding[:40]!r}; form fields are sent as they are",
                                status=415, code=Code.BAD_CONTENT_ENCODING)
        if part.name is None:
            raise ValueError("a form field without a name")
        if len(fields) >= MAX_FIELDS:
            raise ValueError(f"more than {MAX_FIELDS} form fields")
        value = bytearray()
        while chunk := await part.read_chunk():
            received += len(chunk)
            if 0 < limit < received:
                raise web.HTTPRequestEntityTooLarge(limit, received)
            if not part.filename:
                value.extend(chunk)
        if not part.filename:
            fields.add(part.name, value.decode(part.get_charset(default="utf-8")))
    return MultiDictProxy(fields)
