"""Issue 15, section 4: the contract as written: reserved options and their scales, the AllTalk
routes' mapping onto them, the load progress callback, names a backend may not use."""

from __future__ import annotations

from pathlib import Path

import pytest

from alltalk_host import RESERVED_OPTIONS, Capabilities, ModelContext, hookimpl
from alltalk_host.plugins import discover
from alltalk_host_reference import ReferenceBackend

from .helpers import dominant_pitch, read_wav


async def speak_alltalk(client, **fields) -> tuple[float, int]:
    resp = await client.post("/api/tts-generate", data={
        "text_input": "Hello there", "character_voice_gen": "female_01", **fields})
    body = await resp.json()
    assert resp.status == 200, body
    samples, rate = read_wav(await (await client.get(body["output_file_url"])).read())
    return dominant_pitch(samples, rate), resp.status


async def test_sillytaverns_pitch_0_means_unchanged_and_steps_are_semitones(start_server):
    client = await start_server()
    plain, _ = await speak_alltalk(client)
    zero, _ = await speak_alltalk(client, pitch="0")  # what SillyTavern always sends
    up, _ = await speak_alltalk(client, pitch="10")
    down, _ = await speak_alltalk(client, pitch="-10")
    assert zero == pytest.approx(plain, rel=0.02)
    assert up / plain == pytest.approx(2 ** (10 / 12), rel=0.05)
    assert down / plain == pytest.approx(2 ** (-10 / 12), rel=0.05)
    resp = await client.post("/api/tts-generate", data={"text_input": "Hi", "pitch": "11"})
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("pitch: 11 is outside AllTalk's pitch range")


async def test_the_native_route_takes_the_contracts_scale(start_server):
    client = await start_server()

    async def pitch_of(**options) -> float:
        resp = await client.post("/tts", json={"text": "Hello there", "voice": "female_01",
                                               "options": options})
        assert resp.status == 200, await resp.text()
        return dominant_pitch(*read_wav(await resp.read()))

    assert await pitch_of(pitch=2.0) / await pitch_of() == pytest.approx(2.0, rel=0.05)
    for bad in (0, 3.0, "high"):
        resp = await client.post("/tts", json={"text": "Hi", "options": {"pitch": bad}})
        body = await resp.json()
        assert resp.status == 400 and body["error"]["code"] == "bad_option", body
    resp = await client.post("/tts", json={"text": "Hi", "options": {"pitchh": 1.0}})
    assert "unknown options ['pitchh']" in (await resp.json())["error"]["message"]


def test_reserved_options_have_a_scale_that_holds_their_neutral_value():
    assert set(RESERVED_OPTIONS) == {"pitch", "temperature", "repetition_penalty"}
    for scale in RESERVED_OPTIONS.values():
        assert scale.low < scale.high and scale.meaning
        assert scale.neutral is None or scale.low <= scale.neutral <= scale.high


def test_a_backend_that_declares_speed_as_an_option_is_refused():
    class Speedy(ReferenceBackend):
        name = "speedy"
        capabilities = Capabilities(parameters=("speed",))

    class Plugin:
        @hookimpl
        def alltalk_host_register_backends(self, register):  # type: ignore[no-untyped-def]
            register(Speedy)

    catalog = discover(allow=[], extra=[("speedy", Plugin())])
    assert "speedy" not in catalog.backends
    assert "speed is SpeechRequest.speed" in catalog.plugins[-1].error


def test_load_reports_progress_through_the_context_and_nobody_has_to_listen(tmp_path: Path):
    heard: list[tuple[str, float | None]] = []
    settings = ReferenceBackend.validate_settings({})
    context = ModelContext("m", tmp_path, tmp_path,
                           progress=lambda message, fraction=None: heard.append(
                               (message, fraction)))
    ReferenceBackend(settings, context).load()
    assert heard == [("reading the model file", 0.0)]
    ReferenceBackend(settings, ModelContext("m", tmp_path, tmp_path)).load()  # the no-op
