"""The OpenAI-compatible speech route, driven by the real openai SDK on loopback."""

from __future__ import annotations

import asyncio
import io

import av
import numpy as np
import openai
import pytest

from .helpers import error_of, read_wav, wait_until

TEXT = "Hello from the speech route. This is a second sentence."


def decoded_seconds(data: bytes, fmt: str) -> float:
    """Decode what the server sent, with FFmpeg, and return its duration."""
    if fmt == "pcm":
        return len(data) / 2 / 24000
    if fmt == "wav":
        samples, rate = read_wav(data)
        return len(samples) / rate
    container = av.open(io.BytesIO(data))
    frames = [f for f in container.decode(audio=0)]
    container.close()
    return sum(f.samples for f in frames) / frames[0].sample_rate


@pytest.fixture
async def sdk(start_server):
    client = await start_server()
    api = openai.AsyncOpenAI(base_url=f"http://{client.host}:{client.port}/v1",
                             api_key="not-needed", max_retries=0)
    yield api, client
    await api.close()


async def test_every_format_decodes_to_the_right_duration(sdk):
    api, _ = sdk
    reference = await api.audio.speech.create(model="tts-1", voice="alloy", input=TEXT,
                                              response_format="wav")
    expected = decoded_seconds(reference.read(), "wav")
    assert expected > 1.5
    for fmt in ("mp3", "opus", "aac", "flac", "pcm"):
        response = await api.audio.speech.create(model="tts-1", voice="alloy", input=TEXT,
                                                 response_format=fmt)
        seconds = decoded_seconds(response.read(), fmt)
        # mp3 and aac pad their first and last frames by a few tens of milliseconds
        assert abs(seconds - expected) < 0.15, (fmt, seconds, expected)


async def test_model_and_voice_mapping(sdk, config_repo):
    api, client = sdk
    # The default model's own voice, a mapped OpenAI voice, an unmapped one.
    resp_own = await api.audio.speech.create(model="reference", voice="male_01", input="Hi.",
                                             response_format="wav")
    assert resp_own.response.headers["X-AllTalk-Model"].startswith("reference;")
    await api.audio.speech.create(model="tts-1-hd", voice="nova", input="Hi.")
    models = [m.id async for m in api.models.list()]
    assert {"tts-1", "tts-1-hd", "reference", "reference-low"} <= set(models)
    voices = await (await client.get("/v1/audio/voices")).json()
    assert {"alloy", "female_01", "male_01"} <= {v["id"] for v in voices["voices"]}
    # A configured model that is not loaded: named, it loads, and speaks with its own voice.
    listed = await (await client.get("/v1/models")).json()
    assert {m["id"]: m["loaded"] for m in listed["data"]}["reference-low"] is False
    resp_low = await api.audio.speech.create(model="reference-low", voice="narrator",
                                             input="Hi.", response_format="wav")
    assert resp_low.response.headers["X-AllTalk-Model"].startswith("reference-low;")
    listed = await (await client.get("/v1/models")).json()
    assert {m["id"]: m["loaded"] for m in listed["data"]}["reference-low"] is True


async def test_the_voice_map_in_the_config_repo_is_used(start_server, config_repo):
    config_repo.set("settings.toml", "default.openai.voices.reference.alloy", "male_01")
    config_repo.commit("alloy is male_01")
    client = await start_server()
    payload = {"model": "tts-1", "input": "Same words.", "response_format": "wav"}
    mapped = await (await client.post("/v1/audio/speech", json={**payload, "voice": "alloy"}
                                      )).read()
    direct = await (await client.post("/v1/audio/speech", json={**payload, "voice": "male_01"}
                                      )).read()
    assert mapped == direct


async def test_streaming_sends_audio_before_the_utterance_is_done(start_server, config_repo):
    config_repo.model("reference", rtf=0.6)
    config_repo.set("settings.toml", "default.warmup_text", "Hi.")
    config_repo.commit("slow enough to watch")
    client = await start_server()
    api = openai.AsyncOpenAI(base_url=f"http://{client.host}:{client.port}/v1",
                             api_key="x", max_retries=0)
    text = " ".join(f"This is sentence number {i}." for i in range(8))
    chunks = []
    async with api.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text, response_format="pcm") as response:
        async for chunk in response.iter_bytes():
            if not chunks:
                # The first audio is here while the model is still working on the rest.
                status = await (await client.get("/control/status")).json()
                busy = [m["in_flight"] for m in status["models"] if m["name"] == "reference"]
                assert busy == [1]
            chunks.append(chunk)
    await api.close()
    total = sum(len(c) for c in chunks) / 2 / 24000
    assert total > 8 * 1.0 and len(chunks) > 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [({"model": "tts-1", "voice": "alloy"}, 400, "missing_field"),
     ({"model": "tts-1", "voice": "alloy", "input": ""}, 400, "invalid_type"),
     ({"model": "nope", "voice": "alloy", "input": "Hi"}, 404, "model_not_found"),
     ({"model": "tts-1", "voice": "robot", "input": "Hi"}, 400, "unknown_voice"),
     ({"model": "tts-1", "voice": "alloy", "input": "Hi", "response_format": "ogg"}, 400,
      "unsupported_format"),
     ({"model": "tts-1", "voice": "alloy", "input": "Hi", "speed": 4.5}, 400, "invalid_value"),
     ({"model": "tts-1", "voice": "alloy", "input": "Hi", "speed": 0.1}, 400, "invalid_value"),
     ({"model": "tts-1", "voice": "alloy", "input": "x" * 4097}, 400, "text_too_long"),
     ({"model": "tts-1", "voice": "alloy", "input": "x" * 2500}, 400, "text_too_long")],
)
async def test_bad_requests_get_openai_shaped_errors(start_server, body, status, code):
    client = await start_server()
    resp = await client.post("/v1/audio/speech", json=body)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    assert error["message"]


async def test_malformed_json_is_an_openai_error(start_server):
    client = await start_server()
    resp = await client.post("/v1/audio/speech", data=b"{nope")
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "malformed_json"


async def test_the_sdk_raises_on_errors(sdk):
    api, _ = sdk
    with pytest.raises(openai.NotFoundError):
        await api.audio.speech.create(model="nope", voice="alloy", input="Hi")
    with pytest.raises(openai.BadRequestError):
        await api.audio.speech.create(model="tts-1", voice="robot", input="Hi")


async def test_a_client_that_disconnects_cancels_only_its_own_generation(start_server,
                                                                         config_repo):
    config_repo.model("reference", rtf=4.0, max_concurrency=4)
    config_repo.set("settings.toml", "default.warmup_text", "Hi.")
    config_repo.commit("very slow")
    client = await start_server()
    long_text = "A long sentence that takes a very long time to say out loud."
    leaving = asyncio.create_task(client.post("/tts", json={"text": long_text}))
    staying = asyncio.create_task(client.post("/tts", json={"text": "Short one."}))
    await wait_until(client, lambda s: s["models"][0]["in_flight"] == 2)
    leaving.cancel()  # the client goes away; its ~20 s generation must stop early
    await wait_until(client, lambda s: s["models"][0]["in_flight"] <= 1, timeout=8)
    resp = await staying
    assert resp.status == 200
    samples, _ = read_wav(await resp.read())
    assert np.abs(samples).max() > 0.05
    status = await (await client.get("/control/status")).json()
    assert status["models"][0]["in_flight"] == 0


async def test_every_synthesis_response_names_its_commit(start_server, config_repo):
    client = await start_server()
    responses = [
        await client.post("/tts", json={"text": "Hi."}),
        await client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy",
                                                    "input": "Hi."}),
        await client.post("/api/tts-generate", data={"text_input": "Hi."}),
        await client.get("/api/tts-generate-streaming", params={"text": "Hi."}),
        await client.post("/api/previewvoice/", data={"voice": "female_01"}),
    ]
    for resp in responses:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-AllTalk-Commit"] == config_repo.initial
        assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"
    bad = await client.post("/tts", json={"text": ""})
    assert (await error_of(bad))["code"] == "empty_text"


async def test_open_webui_lists_models_under_audio_models(start_server):
    client = await start_server()
    body = await (await client.get("/v1/audio/models")).json()
    assert {"tts-1", "tts-1-hd", "reference", "reference-low"} <= {m["id"] for m in
                                                                   body["models"]}


async def test_a_base_url_without_v1_is_told_where_the_routes_are(start_server):
    client = await start_server()
    api = openai.AsyncOpenAI(base_url=f"http://{client.host}:{client.port}", api_key="x",
                             max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await api.audio.speech.create(model="tts-1", voice="alloy", input="Hi")
    assert "/v1" in str(info.value)
    await api.close()
    for path in ("/audio/voices", "/models", "/audio/models"):
        resp = await client.get(path)
        assert resp.status == 404
        assert "under /v1" in (await error_of(resp))["message"], path


async def test_a_request_without_speed_speaks_at_the_models_default_speed(start_server,
                                                                          config_repo):
    config_repo.model("reference", default_speed=0.5)
    config_repo.commit("half speed by default")
    client = await start_server()
    api = openai.AsyncOpenAI(base_url=f"http://{client.host}:{client.port}/v1",
                             api_key="not-needed", max_retries=0)
    try:
        kwargs = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "wav"}
        default = await api.audio.speech.create(**kwargs)
        normal = await api.audio.speech.create(**kwargs, speed=1.0)
    finally:
        await api.close()
    ratio = decoded_seconds(default.content, "wav") / decoded_seconds(normal.content, "wav")
    assert 1.8 < ratio < 2.2, ratio
