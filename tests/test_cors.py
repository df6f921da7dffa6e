"""CORS, as a browser runs it: SillyTavern's provider from another (loopback) origin."""

from __future__ import annotations

import pytest

from .helpers import read_wav

ST = "http://127.0.0.1:8000"  # SillyTavern's own server, where its page comes from


async def browser(client, method: str, url: str, origin: str = ST, headers=None, **kwargs):
    """One fetch() as a browser does it: a preflight first when the request is not "simple"
    (a header outside the CORS-safelisted ones), then the request with Origin. Asserts what
    the browser checks before it lets the page read the answer."""
    headers = dict(headers or {})
    custom = sorted(h.lower() for h in headers if h.lower() not in ("content-type", "accept"))
    if custom or method not in ("GET", "HEAD", "POST"):
        pre = await client.options(url, headers={
            "Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": ",".join(custom)})
        assert pre.status == 204, (url, await pre.text())
        assert pre.headers["Access-Control-Allow-Origin"] in ("*", origin)
        assert method in pre.headers["Access-Control-Allow-Methods"]
        allowed = pre.headers.get("Access-Control-Allow-Headers", "").lower()
        assert all(h in allowed for h in custom), allowed
    resp = await client.request(method, url, headers={"Origin": origin, **headers}, **kwargs)
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", origin), (url, resp.status)
    return resp


async def test_sillytavern_provider_from_a_loopback_origin(start_server, config_repo):
    """SillyTavern's AllTalk provider, request by request, with the headers it sends."""
    client = await start_server()
    assert await (await browser(client, "GET", "/api/ready")).text() == "Ready"
    settings = await (await browser(client, "GET", "/api/currentsettings")).json()
    assert settings["current_model_loaded"] == "reference"
    await browser(client, "GET", "/api/rvcvoices")
    voices = (await (await browser(client, "GET", "/api/voices")).json())["voices"]

    # The model dropdown: POST /api/reload with no body; it only checks response.ok.
    resp = await browser(client, "POST", "/api/reload?tts_method=reference-low")
    assert resp.status == 200 and await resp.json() == {"status": "model-success"}
    resp = await browser(client, "POST", "/api/reload?tts_method=reference")
    assert resp.status == 200
    # The checkboxes: the reference backend has no such settings, which reads as an error.
    for path in ("/api/deepspeed?new_deepspeed_value=True",
                 "/api/lowvramsetting?new_low_vram_value=False"):
        resp = await browser(client, "POST", path)
        assert resp.status == 200 and (await resp.json())["status"] == "error"

    resp = await browser(client, "POST", "/api/previewvoice/", data=f"voice={voices[1]}",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    preview = await resp.json()
    await browser(client, "GET", preview["output_file_url"])

    # Generation: urlencoded plus Cache-Control, which makes the browser ask first.
    resp = await browser(client, "POST", "/api/tts-generate", data={
        "text_input": "Hello there. *She waves.*", "text_filtering": "standard",
        "character_voice_gen": voices[0], "narrator_enabled": "false",
        "narrator_voice_gen": "Please set a voice", "text_not_inside": "character",
        "language": "en", "output_file_name": "st_output", "output_file_timestamp": "true",
        "autoplay": "false", "autoplay_volume": "0.8"},
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Cache-Control": "no-cache"})
    reply = await resp.json()
    assert reply["status"] == "generate-success", reply
    # The page may read which commit spoke.
    assert "X-AllTalk-Commit" in resp.headers["Access-Control-Expose-Headers"]
    audio = await browser(client, "GET", reply["output_file_url"])
    samples, rate = read_wav(await audio.read())
    assert len(samples) / rate > 0.5
    assert config_repo.repo.head.commit.message.startswith("Switch the default model")


async def test_every_public_route_answers_a_preflight_from_anywhere(start_server):
    client = await start_server()
    for path, method in (("/tts", "POST"), ("/v1/audio/speech", "POST"),
                         ("/api/tts-generate-streaming", "GET"), ("/audio/x.wav", "GET"),
                         ("/api/voices", "GET")):
        resp = await client.options(path, headers={
            "Origin": "https://some.site", "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type,authorization"})
        assert resp.status == 204, path
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Access-Control-Allow-Headers"] == "content-type, authorization"


async def test_control_preflights_answer_trusted_origins_only(start_server):
    client = await start_server()
    ask = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type"}
    resp = await client.options("/control/models/switch", headers={"Origin": ST, **ask})
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == ST
    resp = await client.options("/control/models/switch",
                                headers={"Origin": "https://some.site", **ask})
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_origins_come_from_the_config(start_server, config_repo):
    config_repo.change("one site", "settings.toml", "default.http.cors_origins",
                       ["http://tavern.lan:8000"])
    client = await start_server()
    resp = await client.get("/api/voices", headers={"Origin": "http://tavern.lan:8000"})
    assert resp.headers["Access-Control-Allow-Origin"] == "http://tavern.lan:8000"
    assert "Origin" in resp.headers["Vary"]
    resp = await client.get("/api/voices", headers={"Origin": "https://some.site"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize("origin", [ST, "https://some.site"])
async def test_errors_and_streams_carry_cors_headers_too(start_server, origin):
    client = await start_server()
    resp = await client.post("/tts", json={"text": ""}, headers={"Origin": origin})
    assert resp.status == 400 and resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.post("/v1/audio/speech", headers={"Origin": origin}, json={
        "model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "pcm"})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
