"""Streamed responses: refusals before the first byte are ordinary errors, a failure after it
is a broken transfer the client sees at once, and text with nothing to speak never hangs."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Iterator
from dataclasses import replace

import aiohttp
import av
import openai
import pytest

from alltalk_host import Audio, SpeechRequest, hookimpl
from alltalk_host.errors import BadRequest
from alltalk_host.text import split_sentences
from alltalk_host_reference import ReferenceBackend

from .helpers import error_of, read_wav, wait_until
from .strict_reference import STRICT


class FlakyBackend(ReferenceBackend):
    """Streams like the reference backend, except where the text says to fail."""

    name = "flaky"

    def stream(self, request: SpeechRequest) -> Iterator[Audio]:
        if "REFUSE" in request.text:  # a backend's own check, at the first chunk
            raise BadRequest("temperature: 9 is outside 0.01..2.0", code="bad_option")
        for sentence in split_sentences(request.text):
            if "BREAK" in sentence:  # a failure mid-utterance, after audio went out
                raise RuntimeError("the GPU fell over")
            yield self.synthesize(replace(request, text=sentence))


@hookimpl
def alltalk_host_register_backends(register):
    register(FlakyBackend)


@pytest.fixture
async def flaky(start_server, config_repo):
    config_repo.model("flaky", backend="flaky", keep_loaded=True)
    config_repo.commit("a flaky model")
    return await start_server(extra_plugins=[("flaky", sys.modules[__name__])])


def speech(text: str, fmt: str = "pcm") -> dict:
    return {"model": "flaky", "voice": "alloy", "input": text, "response_format": fmt}


async def test_a_failure_after_the_first_byte_breaks_the_transfer(flaky):
    url = f"http://{flaky.host}:{flaky.port}"
    async with aiohttp.ClientSession() as session:
        for method, path, kwargs in (
                ("POST", "/v1/audio/speech", {"json": speech("One. Two BREAK. Three.")}),
                ("GET", "/api/tts-generate-streaming",
                 {"params": {"text": "One. Two BREAK. Three."}})):
            if path.startswith("/api"):
                # AllTalk's streaming route speaks the default model: make it the flaky one.
                await flaky.post("/control/models/switch", json={"model": "flaky"})
            async with session.request(method, url + path, **kwargs) as resp:
                assert resp.status == 200  # the first sentence went out
                with pytest.raises(aiohttp.ClientPayloadError):
                    # A bound, not a timing: without the abort the client would wait forever.
                    await asyncio.wait_for(resp.read(), timeout=20)
    # Nothing hangs on the server either, and it goes on serving.
    await wait_until(flaky, lambda s: all(m.get("in_flight", 0) == 0 for m in s["models"]))
    resp = await flaky.post("/v1/audio/speech", json=speech("All fine now."))
    assert resp.status == 200 and len(await resp.read()) > 0


async def test_a_backend_refusal_at_the_first_chunk_is_an_ordinary_error(flaky):
    resp = await flaky.post("/v1/audio/speech", json=speech("REFUSE this."))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "bad_option" and error["type"] == "invalid_request_error"
    await flaky.post("/control/models/switch", json={"model": "flaky"})
    resp = await flaky.get("/api/tts-generate-streaming", params={"text": "REFUSE this."})
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("temperature: ")


async def test_a_full_queue_is_a_503_not_a_broken_stream(start_server, config_repo):
    config_repo.model("reference", backend=STRICT, rtf=3.0, max_concurrency=1)
    config_repo.set("settings.toml", "default.queue_limit", 0)
    config_repo.set("settings.toml", "default.warmup_text", "Hi.")
    config_repo.commit("one at a time, no queue")
    client = await start_server()
    long = asyncio.create_task(client.post("/tts", json={"text": "A long sentence to say."}))
    await wait_until(client, lambda s: s["models"][0]["in_flight"] == 1)
    resp = await client.post("/v1/audio/speech", json={
        "model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "mp3"})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "busy"
    resp = await client.get("/api/tts-generate-streaming", params={"text": "Hello."})
    assert resp.status == 503 and (await resp.json())["status"] == "generate-failure"
    long.cancel()


def decoded_seconds(data: bytes) -> float:
    container = av.open(io.BytesIO(data))
    samples = sum(f.samples for f in container.decode(audio=0))
    rate = container.streams.audio[0].sample_rate
    container.close()
    return samples / rate


async def test_open_webui_and_openai_tts_punctuation_requests_get_short_silence(start_server):
    """Open WebUI's request and Home Assistant openai_tts's key check (it speaks ".")."""
    client = await start_server()
    url = f"http://{client.host}:{client.port}/v1/audio/speech"
    async with aiohttp.ClientSession() as session:  # both are aiohttp clients, no timeout
        for body in ({"input": ".", "voice": "alloy", "model": "tts-1"},  # Open WebUI
                     {"model": "tts-1", "input": ".", "voice": "alloy",  # openai_tts
                      "response_format": "mp3"}):
            async with session.post(url, json=body, headers={
                    "Authorization": "Bearer sk-anything"}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "audio/mpeg"
                assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"
                data = await asyncio.wait_for(resp.read(), timeout=20)
                assert int(resp.headers["Content-Length"]) == len(data)  # complete
            assert 0 < decoded_seconds(data) <= 0.3  # mp3 frames pad a little


@pytest.mark.parametrize("text", [".", "...", "-", "\u0001\u0002", "!?", "🙂"])
async def test_nothing_to_speak_is_silence_on_client_routes_and_400_on_tts(start_server, text):
    client = await start_server()
    api = openai.AsyncOpenAI(base_url=f"http://{client.host}:{client.port}/v1",
                             api_key="x", max_retries=0)
    response = await api.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                             response_format="wav")
    samples, rate = read_wav(response.read())
    assert 0 < len(samples) / rate <= 0.25 and abs(samples).max() == 0
    await api.close()

    reply = await (await client.post("/api/tts-generate", data={"text_input": text})).json()
    assert reply["status"] == "generate-success", reply
    samples, rate = read_wav(await (await client.get(reply["output_file_url"])).read())
    assert 0 < len(samples) / rate <= 0.25

    resp = await client.get("/api/tts-generate-streaming", params={"text": text})
    assert resp.status == 200
    samples, rate = read_wav(await resp.read())
    assert 0 < len(samples) / rate <= 0.25

    resp = await client.post("/tts", json={"text": text})
    assert resp.status == 400
    assert (await error_of(resp))["code"] == "nothing_to_speak"


async def test_undecodable_text_is_silence_too(start_server):
    client = await start_server()
    # A lone surrogate, as JSON may escape it; bytes that are no UTF-8 in a form.
    resp = await client.post("/v1/audio/speech", data=b'{"model": "tts-1", "voice": "alloy", '
                             b'"input": "\\ud83d", "response_format": "wav"}',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 200
    samples, rate = read_wav(await resp.read())
    assert 0 < len(samples) / rate <= 0.25
    resp = await client.post("/api/tts-generate", data=b"text_input=%FF%FE%C3",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (await resp.json())["status"] == "generate-success"


async def test_nothing_to_speak_still_checks_the_rest_of_the_request(start_server):
    client = await start_server()
    resp = await client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "robot",
                                                       "input": "."})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "unknown_voice"
    resp = await client.post("/tts", json={"text": ".", "speed": 9})
    assert (await error_of(resp))["code"] == "bad_speed"
