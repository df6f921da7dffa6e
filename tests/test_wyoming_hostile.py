"""A Wyoming peer that breaks the protocol, sends too much, or goes quiet holding a model:
each is answered (an ``error`` event, or a close) and logged as one INFO line, never a
traceback, and the host goes on serving others.

Raw sockets on loopback against a host and its Wyoming server running on their own loop in a
thread, so that plain functions (and hypothesis) can speak to them byte by byte.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wyoming.event import Event, read_event

from alltalk_host.errors import BadRequest
from alltalk_host.host import Host
from alltalk_host.limits import EdgeLimits
from alltalk_host.web.app import create_app
from alltalk_host.wyoming.sentences import SentenceBuffer
from alltalk_host.wyoming.server import Address, WyomingServer

IDLE_S = 2.0
MAX_EVENT = 65_536
READ_TIMEOUT_S = 30.0


@dataclass
class Live:
    host: Host
    port: int
    loop: asyncio.AbstractEventLoop

    def running(self) -> int:
        """Requests running on the default model now."""
        async def count() -> int:
            serving = self.host.registry.require_serving()
            return serving.generations[serving.config.default_model].running
        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(timeout=10)

    def slots_free(self, within: float = 10.0) -> bool:
        """Whether every slot of the default model is free again within ``within`` seconds:
        a request ended by its client stops running at once, but keeps its slot until the
        backend call it started returns (the host never runs more calls than the backend
        takes), and that takes a moment on a loaded machine."""
        async def in_use() -> int:
            serving = self.host.registry.require_serving()
            gen = serving.generations[serving.config.default_model]
            return gen.capacity - sum(gen._free)
        deadline = time.monotonic() + within
        while asyncio.run_coroutine_threadsafe(in_use(), self.loop).result(timeout=10):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


@pytest.fixture
def make_live(host_options, config_repo, caplog) -> Iterator[Callable[..., Live]]:
    """Start a host with one slot and no queue (and ``settings``, dotted keys of
    settings.toml), and its Wyoming server, on a loop in a thread."""
    stops: list[Callable[[], None]] = []

    def start(**settings: Any) -> Live:
        config_repo.model("reference", max_concurrency=1)
        config_repo.set("settings.toml", "default.queue_limit", 0)
        for key, value in settings.items():
            config_repo.set("settings.toml", f"default.{key}", value)
        config_repo.commit("tests: one slot, no queue")
        caplog.set_level(logging.INFO)
        limits = EdgeLimits(wyoming_max_event_bytes=MAX_EVENT, wyoming_idle_timeout_s=IDLE_S)
        host = Host(host_options(limits=limits))
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(create_app(host))
        loop.run_until_complete(runner.setup())  # starts the host
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        server = WyomingServer(host, Address.parse(f"tcp://127.0.0.1:{port}"), [sock])
        loop.run_until_complete(server.start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        def stop() -> None:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=60)
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=60)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=60)
            loop.close()
        stops.append(stop)
        for _ in range(400):
            if host.registry.serving is not None:
                break
            time.sleep(0.05)
        return Live(host, port, loop)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def live(make_live) -> Live:
    return make_live()


def event_bytes(kind: str, data: dict | None = None, payload: bytes = b"") -> bytes:
    header: dict = {"type": kind}
    body = json.dumps(data).encode() if data else b""
    if body:
        header["data_length"] = len(body)
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header).encode() + b"\n" + body + payload


def exchange(port: int, raw: bytes, until: str | None = None, end_writing: bool = True,
             ) -> tuple[list[Event], bool]:
    """Send ``raw``; the events read back until one of type ``until`` (the connection stays
    open) or until the server closes, and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as conn:
        conn.sendall(raw)
        if end_writing and until is None:
            conn.shutdown(socket.SHUT_WR)
        events: list[Event] = []
        with conn.makefile("rb") as stream:
            while (event := read_event(stream)) is not None:
                events.append(event)
                if event.type == until:
                    return events, False
        return events, True


class Served:
    """Whether a good request on a new connection got its audio; what it got, when not."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events

    def __bool__(self) -> bool:
        return any(e.type == "audio-chunk" for e in self.events) and not errors(self.events)

    def __repr__(self) -> str:
        return f"Served({[(e.type, e.data) for e in self.events]!r:.600})"


def served(port: int) -> Served:
    """A good request on a new connection gets its audio."""
    events, _ = exchange(port, event_bytes("synthesize", {"text": "Still here."}),
                         until="audio-stop")
    return Served(events)


def errors(events: list[Event]) -> list[str]:
    return [e.data.get("code") for e in events if e.type == "error"]


def assert_quiet_log(caplog: pytest.LogCaptureFixture) -> None:
    """A client's mistakes: no ERROR record and no traceback in the log."""
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


BROKEN = {
    "not JSON": b"not json\n",
    "binary garbage": b"\xff\xfe\x00garbage\x81\n",
    "a header that is a list": b"[1, 2]\n",
    "an empty line": b"\n",
    "no type": b'{"data": {}}\n',
    "a type that is a number": b'{"type": 5}\n',
    "data that is a list": b'{"type": "synthesize", "data": [1]}\n',
    "a negative length": b'{"type": "synthesize", "data_length": -1}\n',
    "a length that is a string": b'{"type": "synthesize", "data_length": "10"}\n',
    "a length that is a fraction": b'{"type": "synthesize", "payload_length": 1.5}\n',
    "a length that is true": b'{"type": "synthesize", "data_length": true}\n',
    "a length of 5000 digits": b'{"type": "synthesize", "data_length": 1' + b"0" * 5000 + b"}\n",
    "data bytes that are not JSON": b'{"type": "synthesize", "data_length": 5}\nhello',
    "data bytes that are a list": b'{"type": "synthesize", "data_length": 3}\n[1]',
    "a header nested 30,000 deep": b"[" * 30_000 + b"\n",
    "a truncated payload": b'{"type": "audio-chunk", "payload_length": 100}\nabc',
    "a truncated header": b'{"type": "synth',
}


@pytest.mark.parametrize("raw", BROKEN.values(), ids=BROKEN)
def test_a_broken_event_is_an_error_event_one_info_line_and_a_close(live, caplog, raw):
    events, closed = exchange(live.port, raw)
    assert closed and errors(events) == ["malformed_event"], events
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.INFO
    assert_quiet_log(caplog)
    assert live.slots_free()
    assert served(live.port)


@pytest.mark.parametrize("header", [
    {"type": "audio-chunk", "payload_length": 300_000_000},
    {"type": "synthesize", "data_length": MAX_EVENT},
    {"type": "synthesize", "data_length": 10**30},
], ids=["a 300 MB payload", "data just past the limit", "a length of 10**30"])
def test_an_event_past_the_size_limit_is_refused_before_its_data_is_read(live, caplog,
                                                                          header):
    # The data never comes: the answer cannot wait for it (wyoming's own reader waited for
    # all 300 MB, and held them).
    events, closed = exchange(live.port, json.dumps(header).encode() + b"\n",
                              end_writing=False)
    assert closed and errors(events) == ["event_too_large"]
    assert "wyoming_max_event_bytes" in events[0].data["text"]
    assert_quiet_log(caplog)
    assert live.slots_free()
    assert served(live.port)


def test_a_header_line_past_the_size_limit_is_refused(live, caplog):
    events, closed = exchange(live.port, b'{"type": "' + b"x" * MAX_EVENT + b'"}\n',
                              end_writing=False)
    assert closed and errors(events) == ["event_too_large"]
    assert_quiet_log(caplog)
    assert live.slots_free()
    assert served(live.port)


def test_an_event_that_stops_half_way_ends_after_the_idle_limit(live, caplog):
    with socket.create_connection(("127.0.0.1", live.port), timeout=READ_TIMEOUT_S) as conn:
        conn.sendall(b'{"type": "synthesize", "data_length": 100}\n{"text": ')
        started = time.monotonic()
        with conn.makefile("rb") as stream:
            error = read_event(stream)
            assert read_event(stream) is None  # closed
    assert error is not None and error.data["code"] == "idle_timeout"
    assert time.monotonic() - started < IDLE_S + 5
    assert_quiet_log(caplog)


@pytest.mark.parametrize(("data", "code"), [
    ({"voice": {"name": "reference"}}, "missing_field"),
    ({"text": 5}, "missing_field"),
    ({"text": "Hi.", "voice": "reference"}, "bad_field"),
    ({"text": "Hi.", "voice": {"name": 5}}, "bad_field"),
    ({"text": "Hi.", "voice": {"name": "reference", "speaker": ["x"]}}, "bad_field"),
    ({"text": "Hi.", "voice": {"name": "nope"}}, "unknown_voice"),
])
def test_bad_fields_are_error_events_and_the_connection_goes_on(live, caplog, data, code):
    raw = event_bytes("synthesize", data) + event_bytes("describe")
    events, closed = exchange(live.port, raw, until="info")
    assert not closed and errors(events) == [code]
    assert [e.type for e in events] == ["error", "audio-stop", "info"]
    assert_quiet_log(caplog)


def test_unknown_events_are_ignored_as_wyoming_piper_does(live, caplog):
    raw = event_bytes("no-such-event", {"x": 1}) + event_bytes("describe")
    events, closed = exchange(live.port, raw, until="info")
    assert not closed and [e.type for e in events] == ["info"]
    assert_quiet_log(caplog)


def test_a_stop_after_white_space_is_spoken_not_a_crash(live, caplog):
    events, _ = exchange(live.port, event_bytes("synthesize", {"text": "Hi.\n\n\t. Hello there."}),
                         until="audio-stop")
    assert not errors(events) and any(e.type == "audio-chunk" for e in events)
    assert_quiet_log(caplog)


# --- streams: the text limit before splitting, and a quiet stream gives its slot back --------

def test_a_chunk_of_60000_dots_is_refused_by_the_text_limit_at_once(live, caplog):
    raw = (event_bytes("synthesize-start") + event_bytes("synthesize-chunk", {"text": "Hi. "})
           + event_bytes("synthesize-chunk", {"text": "." * 60_000})
           + event_bytes("synthesize-stop"))
    started = time.monotonic()
    events, _ = exchange(live.port, raw, until="synthesize-stopped")
    assert time.monotonic() - started < 5
    assert errors(events) == ["text_too_long"]
    assert_quiet_log(caplog)
    assert live.slots_free()
    assert served(live.port)


def test_a_chunk_of_60000_dots_within_a_large_limit_is_split_without_stopping_the_host(
        make_live, caplog):
    # The reproduction: this chunk held HTTP and Wyoming for 47 s.
    live = make_live(max_text_length=1_000_000)
    dots = "Hi. " + "." * 60_000 + " Bye."
    started = time.monotonic()
    events, _ = exchange(live.port, event_bytes("synthesize-start")
                         + event_bytes("synthesize-chunk", {"text": dots})
                         + event_bytes("synthesize-stop"), until="synthesize-stopped")
    assert time.monotonic() - started < 10
    assert not errors(events) and any(e.type == "audio-chunk" for e in events)
    assert_quiet_log(caplog)


def test_a_quiet_stream_that_holds_the_model_ends_and_lets_it_go(live, caplog):
    with socket.create_connection(("127.0.0.1", live.port), timeout=READ_TIMEOUT_S) as conn:
        conn.sendall(event_bytes("synthesize-start")
                     + event_bytes("synthesize-chunk", {"text": "Hello there. And then"}))
        with conn.makefile("rb") as stream:
            first = []
            while not first or first[-1].type != "audio-stop":
                first.append(read_event(stream))
            assert first[0].type == "audio-start"
            assert live.running() == 1  # the stream keeps its model's generation...
            other, _ = exchange(live.port, event_bytes("synthesize", {"text": "Me too."}),
                                until="audio-stop")
            assert not errors(other)  # ...but not the only slot: others are served
            rest = []
            while (event := read_event(stream)) is not None:  # then the stream goes quiet
                rest.append(event)
    kinds = [e.type for e in rest if e.type != "audio-chunk"]
    assert kinds == ["error", "synthesize-stopped"]
    assert errors(rest) == ["idle_timeout"]
    assert live.running() == 0
    assert live.slots_free()
    assert served(live.port)
    assert_quiet_log(caplog)
    lines = [r for r in caplog.records if "idle_timeout" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO


def test_a_stream_that_waits_before_its_first_sentence_holds_nothing_and_is_not_ended(
        live, caplog):
    with socket.create_connection(("127.0.0.1", live.port), timeout=READ_TIMEOUT_S) as conn:
        conn.sendall(event_bytes("synthesize-start")
                     + event_bytes("synthesize-chunk", {"text": "Hello"}))
        time.sleep(IDLE_S * 2)  # a language model thinking: no slot is held meanwhile
        conn.sendall(event_bytes("synthesize-chunk", {"text": " there."})
                     + event_bytes("synthesize-stop"))
        with conn.makefile("rb") as stream:
            events = []
            while (event := read_event(stream)) is not None:
                events.append(event)
                if event.type == "synthesize-stopped":
                    break
    assert not errors(events) and any(e.type == "audio-chunk" for e in events)


# --- generated events ---------------------------------------------------------------------

TYPES = st.sampled_from(["synthesize", "synthesize-start", "synthesize-chunk",
                         "synthesize-stop", "describe", "audio-chunk", "ping", ""])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=30),
                    lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)
DATA = st.fixed_dictionaries({}, optional={
    "text": st.text(max_size=60) | JSON,
    "voice": st.fixed_dictionaries({}, optional={"name": st.sampled_from(
        ["reference", "reference/female_01", "nope", ""]) | JSON, "language": JSON,
        "speaker": JSON}) | JSON})
LENGTHS = st.none() | st.integers(-5, 200) | st.sampled_from([10**12, "3", 2.5, True, [1]])
HEADERS = st.fixed_dictionaries({"type": TYPES | JSON}, optional={
    "data": DATA | JSON, "data_length": LENGTHS, "payload_length": LENGTHS, "version": JSON})


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=st.lists(st.tuples(HEADERS, st.binary(max_size=80)), min_size=1, max_size=4),
       garbage=st.binary(max_size=40))
def test_generated_events_never_log_a_traceback_and_the_host_goes_on(live, caplog, events,
                                                                      garbage):
    raw = b"".join(json.dumps(header).encode() + b"\n" + tail for header, tail in events)
    _, closed = exchange(live.port, raw + garbage)
    assert closed
    assert_quiet_log(caplog)
    assert live.running() == 0
    assert live.slots_free()  # a busy answer now would be right, but not what is tested
    assert served(live.port)


def test_the_sentence_buffer_refuses_text_past_its_limit_before_splitting_it():
    buffer = SentenceBuffer(limit=20)
    assert buffer.add("Hello there. ") == []
    with pytest.raises(BadRequest) as refused:
        buffer.add("." * 60_000)
    assert refused.value.code == "text_too_long"
    assert buffer.add(" " * 7) == []  # within the limit: taken, and completes nothing
    assert buffer.finish() == ["Hello there."]
