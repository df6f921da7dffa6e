"""AllTalk-compatible routes: recorded request sequences of real clients, then bad input."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .helpers import dominant_pitch, read_wav, wait_until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def fetch_wav(client, url: str):
    resp = await client.get(url)
    assert resp.status == 200, url
    return read_wav(await resp.read())


async def test_sillytavern_sequence(start_server, config_repo):
    """SillyTavern's AllTalk provider: check, list, switch model, preview, generate, play."""
    client = await start_server()
    resp = await client.get("/api/ready")
    assert await resp.text() == "Ready"
    settings = await (await client.get("/api/currentsettings")).json()
    assert settings["current_model_loaded"] == "reference"
    assert {"name": "reference-low"} in settings["models_available"]
    assert settings["multimodel_capable"] and settings["streaming_capable"]
    assert settings["deepspeed_capable"] is False and settings["lowvram_capable"] is False
    rvc = await (await client.get("/api/rvcvoices")).json()
    assert rvc == {"status": "success", "rvcvoices": ["Disabled"]}
    voices = await (await client.get("/api/voices")).json()
    assert voices == {"status": "success", "voices": ["female_01", "male_01"]}

    # The model dropdown: a commit and an apply, checked by HTTP status only.
    resp = await client.post("/api/reload?tts_method=reference-low")
    assert resp.status == 200 and (await resp.json()) == {"status": "model-success"}
    assert config_repo.repo.head.commit.message.startswith("Switch the default model")
    resp = await client.post("/api/reload?tts_method=reference")
    assert (await resp.json()) == {"status": "model-success"}

    resp = await client.post("/api/previewvoice/", data="voice=male_01", headers=FORM)
    preview = await resp.json()
    assert preview["status"] == "generate-success"
    assert preview["output_file_url"].startswith("/audio/preview_voice_")
    await fetch_wav(client, preview["output_file_url"])

    form = {"text_input": "Hello there, traveller. *She waves.* \"Welcome!\"",
            "text_filtering": "standard", "character_voice_gen": "female_01",
            "narrator_enabled": "false", "narrator_voice_gen": "male_01",
            "text_not_inside": "character", "language": "en", "output_file_name": "st_output",
            "output_file_timestamp": "true", "autoplay": "false", "autoplay_volume": "0.8"}
    resp = await client.post("/api/tts-generate", data=form)
    reply = await resp.json()
    assert resp.status == 200 and reply["status"] == "generate-success", reply
    assert resp.headers["X-AllTalk-Commit"] == config_repo.repo.head.commit.hexsha
    assert reply["output_file_url"].startswith("/audio/st_output_")
    assert reply["output_cache_url"] == reply["output_file_url"].replace("/audio/",
                                                                         "/audiocache/")
    samples, rate = await fetch_wav(client, reply["output_file_url"])
    assert len(samples) / rate > 1.0
    cached = await client.get(reply["output_cache_url"])
    assert "immutable" in cached.headers["Cache-Control"]

    # The streaming player: an <audio> element on a GET.
    resp = await client.get("/api/tts-generate-streaming", params={
        "text": "Streaming now. Two sentences.", "voice": "female_01", "language": "en",
        "output_file": "stream_output.wav"})
    assert resp.status == 200 and resp.content_type == "audio/wav"
    body = await resp.read()
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE" and len(body) > 44 + 22050


async def test_text_generation_webui_sequence(start_server):
    """The text-generation-webui remote extension: lists, stop, all 19 fields, then play."""
    client = await start_server()
    for path in ("/api/voices", "/api/rvcvoices", "/api/currentsettings"):
        assert (await client.get(path)).status == 200
    resp = await client.put("/api/stop-generation")
    assert await resp.json() == {"message": "Cancelling current TTS generation"}
    form = {
        "text_input": "The tavern was quiet. \"Another round?\" asked the keeper.",
        "text_filtering": "standard", "character_voice_gen": "female_01",
        "rvccharacter_voice_gen": "Disabled", "rvccharacter_pitch": "0",
        "narrator_enabled": "true", "narrator_voice_gen": "male_01",
        "rvcnarrator_voice_gen": "Disabled", "rvcnarrator_pitch": "0",
        "text_not_inside": "narrator", "language": "en", "output_file_name": "tgw_out",
        "output_file_timestamp": "true", "autoplay": "false", "autoplay_volume": "0.5",
        "speed": "1.0", "pitch": "0", "temperature": "0.75", "repetition_penalty": "10",
    }
    assert len(form) == 19
    reply = await (await client.post("/api/tts-generate", data=form)).json()
    assert reply["status"] == "generate-success", reply
    base = f"http://{client.host}:{client.port}"
    async with aiohttp.ClientSession() as session, \
            session.get(base + reply["output_file_url"]) as resp:
        samples, rate = read_wav(await resp.read())
    assert len(samples) / rate > 2.0


async def test_home_assistant_multipart_with_legacy_absolute_urls(start_server, config_repo):
    config_repo.change("legacy URLs", "settings.toml", "default.alltalk.legacy_api", True)
    client = await start_server()
    data = aiohttp.FormData()
    data.add_field("text_input", "The front door is open.")
    data.add_field("character_voice_gen", "male_01")
    data.add_field("output_file_timestamp", "false")
    data.add_field("output_file_name", "ha_alert")
    reply = await (await client.post("/api/tts-generate", data=data)).json()
    url = reply["output_file_url"]
    assert url == f"http://{client.host}:{client.port}/audio/ha_alert.wav"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
    # Home Assistant's other route: the streaming GET, read whole as a WAV.
    resp = await client.get("/api/tts-generate-streaming", params={"text": "Door open."})
    assert (await resp.read())[:4] == b"RIFF"


async def test_legacy_api_keeps_sillytavern_and_text_generation_webui_working(start_server,
                                                                               config_repo):
    """Both put their server URL in front of output_file_url, the preview's included: on a
    server with legacy_api on (for Home Assistant) they still get AllTalk v2's relative URLs.
    SillyTavern calls from the browser (an Origin on every POST), text-generation-webui's
    extension with python-requests; Home Assistant's aiohttp session gets absolute ones."""
    config_repo.change("legacy URLs", "settings.toml", "default.alltalk.legacy_api", True)
    client = await start_server()
    endpoint = f"http://{client.host}:{client.port}"
    browser = {"Origin": "http://127.0.0.1:8000", "User-Agent": "Mozilla/5.0 (X11; Linux)"}
    tgw = {"User-Agent": "python-requests/2.32.3"}
    st_form = {"text_input": "Hello.", "output_file_name": "st_output",
               "output_file_timestamp": "true", "autoplay_volume": "0.8"}
    replies = [
        await (await client.post("/api/tts-generate", data=st_form, headers=browser)).json(),
        await (await client.post("/api/previewvoice/", data="voice=male_01",
                                 headers={**FORM, **browser})).json(),
        await (await client.post("/api/tts-generate", data={"text_input": "Hi.", **st_form},
                                 headers=tgw)).json()]
    ha = await (await client.post("/api/tts-generate", data={"text_input": "Door open."},
                                  headers={"User-Agent": "HomeAssistant/2025.1.0 aiohttp/3.11"
                                                         " Python/3.13"})).json()
    assert ha["output_file_url"].startswith(endpoint + "/audio/"), ha
    async with aiohttp.ClientSession() as session:
        for reply in replies:
            assert reply["output_file_url"].startswith("/audio/"), reply
            async with session.get(endpoint + reply["output_file_url"]) as resp:
                assert resp.status == 200


async def test_narrator_mode_speaks_each_part_in_its_voice(start_server):
    client = await start_server()
    text = '*The old man sighs.* "I am tired." *He sits down slowly.*'

    async def generate(**fields):
        form = {"text_input": text, "character_voice_gen": "female_01",
                "narrator_voice_gen": "male_01", "output_file_timestamp": "false",
                "text_filtering": "none", **fields}
        reply = await (await client.post("/api/tts-generate", data=form)).json()
        assert reply["status"] == "generate-success", reply
        return await fetch_wav(client, reply["output_file_url"])

    both, rate = await generate(narrator_enabled="true", output_file_name="both")
    silent, _ = await generate(narrator_enabled="silent", output_file_name="silent")
    plain, _ = await generate(narrator_enabled="false", output_file_name="plain")
    assert len(silent) < len(both) * 0.6  # only "I am tired."
    narrator_pitch = dominant_pitch(both[: rate // 2], rate)
    character_pitch = dominant_pitch(silent[: rate // 2], rate)
    assert abs(narrator_pitch - character_pitch) > 10  # two voices
    assert abs(dominant_pitch(plain[: rate // 2], rate) - character_pitch) < 5


async def test_outputs_are_pruned_to_the_configured_count(start_server, config_repo):
    config_repo.change("keep three", "settings.toml", "default.outputs.max_files", 3)
    client = await start_server()
    urls = []
    for i in range(5):
        reply = await (await client.post("/api/tts-generate", data={
            "text_input": f"Message number {i}.", "output_file_name": f"msg{i}"})).json()
        urls.append(reply["output_file_url"])
    statuses = [(await client.get(url)).status for url in urls]
    assert statuses == [404, 404, 200, 200, 200]


async def test_model_switch_replies(start_server, config_repo):
    client = await start_server()
    resp = await client.post("/api/reload?tts_method=nope")
    assert resp.status == 400
    assert await resp.json() == {"status": "error", "message": "Invalid TTS method specified"}

    broken = config_repo.change("broken second model", "models.toml",
                                "default.models.reference-low.settings.model_file",
                                "missing.toml")
    assert (await client.post("/control/config/apply", json={"commit": broken})).status == 200
    resp = await client.post("/api/reload?tts_method=reference-low")
    body = await resp.json()
    assert resp.status == 422 and body["status"] == "model-failure"
    assert (await client.get("/api/ready")).status == 200  # the old model still serves
    assert config_repo.head == broken  # the failed switch left the branch alone

    slow = config_repo.change("slow", "models.toml",
                              "default.models.reference.settings.load_seconds", 1.0)
    task = asyncio.create_task(client.post("/control/config/apply", json={"commit": slow}))
    await wait_until(client, lambda s: s["apply_in_progress"] is not None)
    resp = await client.post("/api/reload?tts_method=reference")
    assert resp.status == 409 and await resp.json() == {"status": "model-is currently changing"}
    assert (await task).status == 200


async def test_reload_config_applies_the_branch_head(start_server, config_repo):
    client = await start_server()
    head = config_repo.change("limit", "settings.toml", "default.max_text_length", 150)
    resp = await client.get("/api/reload_config")
    assert await resp.text() == "Config file reloaded successfully"
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == head


async def test_low_vram_and_deepspeed_need_a_capable_model(start_server, config_repo):
    client = await start_server()
    for path, query in (("/api/lowvramsetting", "new_low_vram_value=True"),
                        ("/api/deepspeed", "new_deepspeed_value=false")):
        resp = await client.post(f"{path}?{query}")
        body = await resp.json()
        # AllTalk's shape for a toggle it cannot apply: 200, the status field says so.
        assert resp.status == 200 and body["status"] == "error", body
        assert "has no" in body["message"]
        resp = await client.post(path)
        assert (await resp.json())["status"] == "error"
    assert config_repo.head == config_repo.initial  # nothing was committed


@pytest.mark.parametrize(
    ("form", "field"),
    [({}, "text_input"),
     ({"text_input": "  "}, "text_input"),
     ({"text_input": "x" * 2001}, "text_input"),
     ({"text_input": "Hi", "character_voice_gen": "nobody"}, "character_voice_gen"),
     ({"text_input": "Hi", "output_file_name": "../escape"}, "output_file_name"),
     ({"text_input": "Hi", "output_file_name": "a/b"}, "output_file_name"),
     ({"text_input": "Hi", "output_file_name": "with space"}, "output_file_name"),
     ({"text_input": "Hi", "output_file_name": "café"}, "output_file_name"),
     ({"text_input": "Hi", "narrator_enabled": "maybe"}, "narrator_enabled"),
     ({"text_input": "Hi", "text_filtering": "latex"}, "text_filtering"),
     ({"text_input": "Hi", "speed": "fast"}, "speed"),
     ({"text_input": "Hi", "speed": "9"}, "speed"),
     ({"text_input": "Hi", "narrator_enabled": "true", "narrator_voice_gen": "nobody"},
      "narrator_voice_gen"),
     ({"text_input": "Hi", "temperature": "warm"}, "temperature")],
)
async def test_tts_generate_bad_fields_get_alltalk_validation_errors(start_server, tmp_path,
                                                                     form, field):
    client = await start_server()
    # One good request first: it proves the test looks where files are written.
    good = await client.post("/api/tts-generate", data={"text_input": "Hi."})
    outputs = tmp_path / "outputs"
    written = sorted(outputs.glob("*.wav"))
    assert [p.name for p in written] == [(await good.json())["output_file_url"][7:]]
    resp = await client.post("/api/tts-generate", data=form)
    body = await resp.json()
    assert resp.status == 400, body
    assert set(body) == {"error"} and body["error"].startswith(f"{field}: "), body
    assert sorted(outputs.glob("*.wav")) == written  # nothing more written


@pytest.mark.parametrize(
    ("data", "headers"),
    [(b'{"text_input": "Hi"}', {"Content-Type": "application/json"}),
     (b"--xx\r\nnot a real part", {"Content-Type": "multipart/form-data; boundary=zz"})],
)
async def test_malformed_form_bodies(start_server, data, headers):
    client = await start_server()
    resp = await client.post("/api/tts-generate", data=data, headers=headers)
    body = await resp.json()
    assert resp.status == 400 and body["error"].startswith(("body: ", "text_input: ")), body


@pytest.mark.parametrize("name", ["../state/state.json", "..%2Fstate.json", "nope.wav",
                                  ".partial-x", "a%00b.wav"])
async def test_audio_files_never_leave_the_outputs_folder(start_server, name):
    client = await start_server()
    await client.post("/api/tts-generate", data={"text_input": "Hi."})
    resp = await client.get(f"/audio/{name}")
    assert resp.status == 404


async def test_stop_generation_cancels_work_in_progress(start_server, config_repo):
    config_repo.model("reference", rtf=3.0)
    config_repo.set("settings.toml", "default.warmup_text", "Hi.")
    config_repo.commit("slow")
    client = await start_server()
    task = asyncio.create_task(client.post("/api/tts-generate", data={
        "text_input": "A long sentence that would take a long while to speak out loud."}))
    await wait_until(client, lambda s: any(m.get("in_flight") for m in s["models"]))
    await client.put("/api/stop-generation")
    resp = await asyncio.wait_for(task, timeout=10)  # far less than the ~15 s it would take
    body = await resp.json()
    assert resp.status == 409 and body["status"] == "generate-failure"


async def test_narrator_mode_with_standard_filtering_finds_the_narration(start_server):
    """SillyTavern sends text_filtering=standard, which strips '*': narration is found first."""
    client = await start_server()
    text = '*The old man sighs.* "I am tired." *He sits down slowly.*'

    async def generate(narrator: str):
        reply = await (await client.post("/api/tts-generate", data={
            "text_input": text, "text_filtering": "standard", "narrator_enabled": narrator,
            "character_voice_gen": "female_01", "narrator_voice_gen": "male_01",
            "output_file_name": f"n_{narrator}"})).json()
        assert reply["status"] == "generate-success", reply
        return await fetch_wav(client, reply["output_file_url"])

    both, rate = await generate("true")
    silent, _ = await generate("silent")
    assert len(silent) < len(both) * 0.6  # the narration was split out, then left out
    assert abs(dominant_pitch(both[: rate // 2], rate)
               - dominant_pitch(silent[: rate // 2], rate)) > 10


async def test_a_language_the_model_lacks_falls_back_on_alltalk_routes(start_server):
    """AllTalk's Piper engine ignores the language; SillyTavern's dropdown sends one anyway."""
    client = await start_server()
    resp = await client.post("/api/tts-generate", data={"text_input": "Ahoj.",
                                                         "language": "cs"})
    assert (await resp.json())["status"] == "generate-success"
    assert resp.headers["X-AllTalk-Language"] == "en; model reference does not speak cs"
    resp = await client.get("/api/tts-generate-streaming",
                            params={"text": "Ahoj.", "language": "cs"})
    assert resp.status == 200 and resp.headers["X-AllTalk-Language"].startswith("en;")
    await resp.read()
    resp = await client.post("/api/tts-generate", data={"text_input": "Hallo.",
                                                         "language": "de"})
    assert "X-AllTalk-Language" not in resp.headers
    # The native route stays strict.
    resp = await client.post("/tts", json={"text": "Ahoj.", "language": "cs"})
    assert resp.status == 400


def test_current_settings_report_the_backends_parsed_defaults():
    """XTTS's temperature and repetition penalty default to 0.75 and 5.0, not 0."""
    from alltalk_host.apis.alltalk_api import _setting
    from alltalk_host.config.settings import ModelDef
    from alltalk_host_xtts.backend import XttsSettings

    model = ModelDef(name="x", backend="xtts", settings={"checkpoint": "c"},
                     parsed=XttsSettings(checkpoint="c"))
    assert _setting(model, "temperature", 0) == 0.75
    assert _setting(model, "repetition_penalty", 0) == 5.0
    assert _setting(model, "pitch", 0) == 0
    tuned = ModelDef(name="x", backend="xtts", settings={"temperature": 0.5},
                     parsed=XttsSettings(checkpoint="c", temperature=0.5))
    assert _setting(tuned, "temperature", 0) == 0.5


async def test_a_voice_file_the_model_lacks_speaks_the_default_voice_and_says_so(start_server):
    """text-generation-webui ships en_US-ljspeech-high.onnx (a Piper voice) as its default
    voice; AllTalk's XTTS voices are files (female_01.wav). As with a language the model does
    not speak, the model's own voice answers and X-AllTalk-Voice tells; a bare unknown name
    is still a 400 naming its field."""
    client = await start_server()
    piper = "en_US-ljspeech-high.onnx"
    resp = await client.post("/api/tts-generate", data={
        "text_input": "Hello.", "character_voice_gen": piper, "narrator_voice_gen": piper})
    assert resp.status == 200 and (await resp.json())["status"] == "generate-success"
    assert resp.headers["X-AllTalk-Voice"] == (
        "female_01; model reference has no voice en_US-ljspeech-high?onnx")
    resp = await client.post("/api/previewvoice/", data={"voice": piper})
    assert resp.status == 200 and "X-AllTalk-Voice" in resp.headers
    resp = await client.get("/api/tts-generate-streaming", params={"text": "Hi.", "voice": piper})
    assert resp.status == 200 and "X-AllTalk-Voice" in resp.headers
    await resp.read()
    # AllTalk's file name of a voice the model has is that voice.
    resp = await client.post("/api/tts-generate", data={
        "text_input": "Hello.", "character_voice_gen": "male_01.wav"})
    assert resp.status == 200 and "X-AllTalk-Voice" not in resp.headers
    resp = await client.post("/api/tts-generate", data={
        "text_input": "Hello.", "character_voice_gen": "nobody"})
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("character_voice_gen: ")
