"""One refusal per route family, as its clients see it: the error's shape, its status and its
code (after datasette's error-shape tests). A family's shape is part of its contract:

- native (``/tts``), control (``/control/...``) and hooks (``/hooks/git``):
  ``{"error": {"code", "message", "details"?}}``;
- OpenAI (``/v1/audio/speech``): OpenAI's ``{"error": {"message", "type", "param", "code"}}``;
- AllTalk (``/api/...``): AllTalk's own, ``{"error": "field: description"}`` for a bad field
  (its clients show that string; it carries no code, the field name stands for it);
- Wyoming: an ``error`` event with ``text`` and ``code``, then the request's last event.

Real HTTP and TCP on loopback against a host started by the fixtures; nothing is mocked.
"""

from __future__ import annotations

import socket
from typing import Any

from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.tts import Synthesize, SynthesizeVoice

from alltalk_host.errors import Code
from alltalk_host.web.keys import HOST
from alltalk_host.wyoming.server import Address, WyomingServer

from .helpers import error_of

NATIVE_ERROR = {"code", "message"}  # and "details" where there are any
OPENAI_ERROR = {"message", "type", "param", "code"}
READ_TIMEOUT_S = 30.0


async def native_error(resp: Any, status: int) -> dict[str, Any]:
    """The error object of a native-shaped reply with ``status``, its code a ``Code``."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    error = await error_of(resp)
    assert NATIVE_ERROR <= set(error) <= NATIVE_ERROR | {"details"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["code"] in set(Code), error
    return error


async def test_native_routes_answer_code_and_message(start_server):
    client = await start_server()
    resp = await client.post("/tts", json={"text": ""})
    assert (await native_error(resp, 400))["code"] == Code.EMPTY_TEXT


async def test_openai_routes_answer_in_openai_shape(start_server):
    client = await start_server()
    resp = await client.post("/v1/audio/speech",
                             json={"model": "nope", "voice": "alloy", "input": "Hi."})
    assert resp.status == 404, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == OPENAI_ERROR, body
    error = body["error"]
    assert error["code"] == Code.MODEL_NOT_FOUND and error["param"] == "model", error
    assert error["type"] == "invalid_request_error" and error["message"], error


async def test_alltalk_routes_answer_in_alltalk_shape(start_server):
    """A core refusal (text over the limit) reaches an AllTalk client as AllTalk's field
    error, naming the field it sent."""
    client = await start_server()
    limit = (await (await client.get("/tts/models")).json())["max_text_length"]
    resp = await client.post("/api/tts-generate", data={"text_input": "x" * (limit + 1)})
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert body["error"].startswith("text_input: ") and str(limit) in body["error"], body


async def test_control_routes_answer_code_and_message(start_server, config_repo):
    client = await start_server()
    head = config_repo.head
    resp = await client.post("/control/models/switch", json={"model": "nope"})
    assert (await native_error(resp, 404))["code"] == Code.UNKNOWN_MODEL
    assert config_repo.head == head  # refused before anything was committed


async def test_hooks_answer_code_and_message(start_server):
    client = await start_server(webhook_secret="s3cret-webhook")
    resp = await client.post("/hooks/git", data=b'{"ref": "refs/heads/main"}',
                             headers={"Content-Type": "application/json"})
    error = await native_error(resp, 401)
    assert error["code"] == Code.UNAUTHORIZED and "no webhook signature" in error["message"]


async def test_wyoming_answers_an_error_event_with_text_and_code(start_server):
    client = await start_server()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    port = sock.getsockname()[1]
    server = WyomingServer(client.server.app[HOST], Address.parse(f"tcp://127.0.0.1:{port}"),
                           [sock])
    await server.start()
    try:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as wyoming:
            await wyoming.write_event(
                Synthesize(text="Hi.", voice=SynthesizeVoice(name="nope")).event())
            events: list[Event] = []
            while not events or events[-1].type != "audio-stop":
                event = await wyoming.read_event()
                assert event is not None, f"the server closed the connection after {events}"
                events.append(event)
    finally:
        await server.stop()
    assert [e.type for e in events] == ["error", "audio-stop"], events
    error = events[0].data
    assert set(error) == {"text", "code"}, error
    assert error["code"] == Code.UNKNOWN_VOICE and "nope" in error["text"], error
