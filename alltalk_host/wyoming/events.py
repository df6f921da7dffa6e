"""Reading one Wyoming event from a peer, within limits, its mistakes named; what its data says.

The framing wyoming 1.10 writes: a JSON header line (``type``, ``data``, ``data_length``,
``payload_length``), then ``data_length`` bytes of a JSON object merged into ``data``, then
``payload_length`` bytes of payload. wyoming's own ``async_read_event`` reads whatever lengths
a header claims (one 300 MB event took the host from 78 MB to 838 MB), ends the connection
without a word on some mistakes and raises on others, one traceback per event. This reader
checks the header before reading on, refuses an event beyond the size limit without reading
the rest, and raises ``BadEvent`` for every mistake: the connection cannot go on after one,
since where the next event begins is unknown.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from wyoming.event import Event
from wyoming.tts import SynthesizeVoice

from ..errors import BadRequest, Code


class BadEvent(BadRequest):
    """A peer's event that breaks the protocol; answered with an ``error`` event, then the
    connection closes."""

    code: str = Code.MALFORMED_EVENT


async def read_event(reader: asyncio.StreamReader, max_bytes: int,
                     idle_s: float) -> Event | None:
    """The next event, or None at the end of the stream between events.

    Waits for its first byte as long as the peer likes; from there the whole event must
    arrive within ``idle_s`` seconds, and header, data and payload together must be at most
    ``max_bytes`` (the reader's own limit, which bounds the header line, must be at least
    that).
    """
    first = await reader.read(1)
    if not first:
        return None
    try:
        async with asyncio.timeout(idle_s):
            return await _rest(reader, first, max_bytes)
    except TimeoutError:
        raise BadEvent(f"the event did not arrive within {idle_s:g} s "
                       "(wyoming_idle_timeout_s)", code=Code.IDLE_TIMEOUT) from None
    except asyncio.IncompleteReadError:
        raise BadEvent("the connection ended in the middle of an event") from None


async def _rest(reader: asyncio.StreamReader, first: bytes, max_bytes: int) -> Event:
    line = first
    if first != b"\n":
        try:
            line += await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _too_large(f"the header line is longer than {max_bytes} bytes",
                             max_bytes) from None
    header = _json(line, "the header line")
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise BadEvent("the event has no type (a string)")
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadEvent(f"the data of a {_short(kind)} event is not a JSON object")
    data_length = _length(header, "data_length")
    payload_length = _length(header, "payload_length")
    size = len(line) + data_length + payload_length
    if size > max_bytes:
        raise _too_large(f"a {_short(kind)} event of {size} bytes", max_bytes)
    if data_length:
        more = _json(await reader.readexactly(data_length), f"the data of a {_short(kind)} event")
        data = {**data, **more}
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=kind, data=data, payload=payload)


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, too many digits, too deep
        raise BadEvent(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise BadEvent(f"{what} is not a JSON object")
    return value


def _length(header: dict[str, Any], name: str) -> int:
    value = header.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadEvent(f"{name} must be a whole number of bytes, not {_short(repr(value))}")
    return value


def _too_large(what: str, max_bytes: int) -> BadEvent:
    return BadEvent(f"{what}: the limit is {max_bytes} bytes (wyoming_max_event_bytes)",
                    code=Code.EVENT_TOO_LARGE)


def _short(text: str) -> str:
    """A value from the peer, short enough for a log line."""
    return text if len(text) <= 40 else text[:37] + "..."


# --- what a request event's data says ----------------------------------------------------------

def text_of(data: dict[str, Any]) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise BadRequest("the event needs a text (a string)", code=Code.MISSING_FIELD)
    return text


def voice_of(data: dict[str, Any]) -> SynthesizeVoice | None:
    raw = data.get("voice")
    if raw is None:
        return None
    fields = ("name", "language", "speaker")
    if not isinstance(raw, dict) or not all(
            isinstance(raw.get(k), str | None) for k in fields):
        raise BadRequest("voice must be an object of strings (name, language, speaker)",
                         code=Code.BAD_FIELD)
    return SynthesizeVoice.from_dict(raw)
