"""Bad input gets a 4xx, never a 500, and writes no traceback: the inputs once seen to break
the server, then generated JSON and form bodies thrown at every route, bodies labelled with
content codings, and integers of hundreds of digits in every numeric field."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from alltalk_host.host import Host
from alltalk_host.web.app import CONTROL_TABLES, ROUTE_TABLES, create_app

from .helpers import error_of

JSON_ROUTES = ["/tts", "/v1/audio/speech", "/control/config/plan", "/control/config/apply",
               "/control/models/switch", "/control/config/rollback"]
FORM_ROUTES = ["/api/tts-generate", "/api/previewvoice/", "/api/tts-generate-streaming"]
HUGE_NUMBER = b'{"text": "Hi", "speed": 1' + b"0" * 5000 + b"}"
DEEP = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("body", [HUGE_NUMBER, DEEP], ids=["huge-number", "deep-nesting"])
async def test_pathological_json_is_a_400_on_every_json_route(start_server, body):
    client = await start_server()
    for path in JSON_ROUTES:
        resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400, (path, await resp.text())
        assert (await resp.json())["error"]["code"] == "malformed_json"


async def test_a_form_with_an_unknown_charset_is_a_400(start_server):
    client = await start_server()
    for path in FORM_ROUTES[:2]:
        resp = await client.post(path, data=b"text_input=Hi&voice=male_01", headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=bogus"})
        assert resp.status == 400, path
        assert (await resp.json())["error"].startswith("body: ")


async def test_bodies_beyond_the_limit_are_413(start_server, config_repo):
    config_repo.change("small bodies", "settings.toml", "default.http.max_body_bytes", 4096)
    client = await start_server()
    big = json.dumps({"text": "x" * 5000})
    resp = await client.post("/tts", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413 and (await error_of(resp))["code"] == "body_too_large"
    resp = await client.post("/v1/audio/speech", data=big,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "body_too_large"
    resp = await client.post("/api/tts-generate", data={"text_input": "x" * 5000})
    assert resp.status == 400 and (await resp.json())["error"].startswith("body: ")
    # Within the limit all is well.
    resp = await client.post("/tts", json={"text": "Hello."})
    assert resp.status == 200


# --- generated bodies at every route ----------------------------------------------------------

# The event stream is endless by design (a heartbeat every 15 s keeps it open), so a plain
# read of it never returns; tests/test_events.py covers its bad input.
ENDLESS = {("GET", "/control/events")}
ROUTES = sorted({(r.method, re.sub(r"\{\w+\}", "reference", r.path))
                 for table in (*ROUTE_TABLES, *CONTROL_TABLES) for r in table} - ENDLESS)
FIELDS = ["text", "input", "model", "voice", "language", "speed", "options", "response_format",
          "commit", "author", "commit_working_tree", "message", "text_input", "text_filtering",
          "narrator_enabled", "character_voice_gen", "output_file_name", "temperature",
          "stream_format"]
NAMES = st.sampled_from(["reference", "reference-low", "tts-1", "alloy", "male_01", "en",
                         "wav", "mp3", "HEAD", "main", "true", "", ".", "../x"])
# Integers past a float's range (and up to Python's 4300-digit limit) too.
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
           | NAMES | st.integers(min_value=10 ** 300, max_value=10 ** 4000).map(
               lambda n: n * (-1) ** (n % 2)))
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                           max_leaves=8)
JSON_BODIES = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON_VALUES,
                              max_size=5).map(lambda d: ("application/json",
                                                         json.dumps(d).encode()))
FORM_BODIES = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                              st.text(max_size=40) | NAMES, max_size=6).map(
    lambda d: ("application/x-www-form-urlencoded", urllib.parse.urlencode(d).encode()))
RAW_BODIES = st.tuples(st.sampled_from(["application/json", "text/plain",
                                        "application/x-www-form-urlencoded; charset=latin-1",
                                        "multipart/form-data; boundary=b", ""]),
                       st.binary(max_size=120))
BODIES = JSON_BODIES | FORM_BODIES | RAW_BODIES


def served_designed_503(path: str, status: int) -> bool:
    """Health routes answer 503 by design (a model not loaded)."""
    return path.startswith("/health/") and status == 503


@pytest.fixture
def live_server(host_options) -> Iterator[tuple[str, int]]:
    """A real server on its own loop in a thread, so that hypothesis (which drives a plain
    function) can send requests to it."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(Host(host_options())), handler_cancellation=True)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    for _ in range(400):
        if send(host, port, "GET", "/health/ready")[0] == 200:
            break
        threading.Event().wait(0.05)
    yield host, port
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=60)
    loop.close()


def send(host: str, port: int, method: str, path: str, body: bytes = b"",
         content_type: str = "", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        headers = dict(headers or {})
        if content_type:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), body=BODIES,
       query=st.dictionaries(st.sampled_from(["tts_method", "text", "voice", "limit", "model",
                                              "new_low_vram_value", "language"]),
                             st.text(max_size=20) | NAMES, max_size=3))
@example(route=("POST", "/tts"), body=("application/json", HUGE_NUMBER), query={})
@example(route=("POST", "/api/tts-generate"),
         body=("application/x-www-form-urlencoded; charset=bogus", b"text_input=Hi"), query={})
def test_generated_bodies_never_get_a_5xx(live_server, caplog, route, body, query):
    host, port = live_server
    method, path = route
    content_type, data = body
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    status, reply = send(host, port, method, target, data, content_type)
    assert status < 500 or served_designed_503(path, status), (method, target, data[:200],
                                                              status, reply[:300])
    assert send(host, port, "GET", "/health/live")[0] == 200
    assert tracebacks(caplog) == []


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records with a traceback: client input must write none."""
    return [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.exc_info]


# --- content codings on every POST route ------------------------------------------------------

POST_ROUTES = [path for method, path in ROUTES if method == "POST"]
CODINGS = st.sampled_from(["gzip", "deflate", "br", "zstd", "x-bogus", "gzip, deflate",
                           "gzip, gzip", "identity", "GZIP", " deflate ", "compress", "*"])


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(POST_ROUTES), body=BODIES, coding=CODINGS, compress=st.booleans())
def test_bodies_with_content_codings_never_get_a_5xx_nor_a_traceback(live_server, caplog, path,
                                                                     body, coding, compress):
    """Labelled gzip/deflate/br/zstd/unknown, compressed for real or not."""
    host, port = live_server
    content_type, data = body
    if compress:
        data = gzip.compress(data)
    status, reply = send(host, port, "POST", path, data, content_type,
                         {"Content-Encoding": coding})
    assert status < 500 or served_designed_503(path, status), (path, coding, data[:100],
                                                              status, reply[:300])
    assert tracebacks(caplog) == []


# --- integers of hundreds of digits in every numeric field ------------------------------------

# Every field a route reads as a number: /tts and OpenAI's speed, the backends' options (the
# reference model's pitch; onnx's noise_scale and xtts's temperature are checked by their
# plugins' own tests), a canary's thresholds, AllTalk's form numbers and the commit-list limit.
JSON_NUMBERS = {
    "/tts": [{"text": "Hi", "speed": None}, {"text": "Hi", "options": {"pitch": None}},
             {"text": "Hi", "options": {"noise_scale": None}}],
    "/v1/audio/speech": [{"model": "tts-1", "input": "Hi", "voice": "alloy", "speed": None}],
    "/control/config/apply": [{"commit": "HEAD~1", "canary": {name: None}} for name in (
        "percent", "duration_s", "min_requests", "max_error_rate", "max_latency_ratio",
        "latency_slack_s")],
}
FORM_NUMBERS = {"/api/tts-generate": ["speed", "temperature", "repetition_penalty", "pitch",
                                      "autoplay_volume", "rvccharacter_pitch"]}
HUGE = [10 ** 400, -(10 ** 400), 10 ** 4000, 2 ** 1024, 10 ** 308 * 2]


def _with(template: object, value: int) -> object:
    """The template with every None replaced by ``value``."""
    if isinstance(template, dict):
        return {k: _with(v, value) for k, v in template.items()}
    return value if template is None else template


async def test_huge_integers_in_every_numeric_field_are_a_400(start_server, config_repo,
                                                              caplog):
    config_repo.change("a second commit, for a canary", "settings.toml",
                       "default.max_text_length", 900)
    client = await start_server()
    for path, templates in JSON_NUMBERS.items():
        for template in templates:
            for value in HUGE:
                body = json.dumps(_with(template, value))
                resp = await client.post(path, data=body,
                                         headers={"Content-Type": "application/json"})
                assert resp.status == 400, (path, template, await resp.text())
    for path, names in FORM_NUMBERS.items():
        for name in names:
            for value in HUGE:
                resp = await client.post(path, data={"text_input": "Hi", name: str(value)})
                assert resp.status in (200, 400), (path, name, await resp.text())
                if resp.status == 400:
                    assert (await resp.json())["error"].startswith(f"{name}: ")
    resp = await client.get("/control/config/commits", params={"limit": str(10 ** 400)})
    assert resp.status == 400
    assert tracebacks(caplog) == []
