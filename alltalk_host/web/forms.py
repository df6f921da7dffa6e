"""Reading AllTalk's form bodies: urlencoded (SillyTavern, text-generation-webui) and multipart
(Home Assistant's integrations), into a MultiDict of text fields.

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
from ..apis.speech_api import short
from ..errors import BadRequest, Code, HostError, PayloadTooLarge
from .errors import check_encoding, too_large, undecodable

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
