"""Bad input gets a 4xx, never a 500: the inputs once seen to break the server, then generated
JSON and form bodies thrown at every route."""

from __future__ import annotations

import asyncio
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

from .conftest import error_of

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
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
           | NAMES)
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
         content_type: str = "") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
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
def test_generated_bodies_never_get_a_5xx(live_server, route, body, query):
    host, port = live_server
    method, path = route
    content_type, data = body
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    status, reply = send(host, port, method, target, data, content_type)
    assert status < 500 or served_designed_503(path, status), (method, target, data[:200],
                                                              status, reply[:300])
    assert send(host, port, "GET", "/health/live")[0] == 200
