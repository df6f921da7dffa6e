"""The HTTP contract on a real server on loopback: speech, health, errors, control auth."""

from __future__ import annotations

import socket

import pytest
from aiohttp import ClientSession

from .helpers import dominant_pitch, error_of, read_wav, wait_until


async def test_tts_returns_wav_with_commit_and_model_headers(start_server, config_repo):
    client = await start_server()
    resp = await client.post("/tts", json={"text": "Hello there. How are you?"})
    assert resp.status == 200
    assert resp.content_type == "audio/wav"
    assert resp.headers["X-AllTalk-Commit"] == config_repo.initial
    assert resp.headers["X-AllTalk-Model"] == "reference; generation=1"
    samples, rate = read_wav(await resp.read())
    assert rate == 22050
    assert 0.5 < len(samples) / rate < 10
    assert abs(samples).max() > 0.05


async def test_tts_options_change_the_audio(start_server):
    client = await start_server()

    async def pitch_and_length(**body):
        resp = await client.post("/tts", json={"text": "Hello there", **body})
        assert resp.status == 200, await resp.text()
        samples, rate = read_wav(await resp.read())
        return dominant_pitch(samples, rate), len(samples)

    p1, n1 = await pitch_and_length(voice="female_01")
    p2, _ = await pitch_and_length(voice="male_01")
    _, n_fast = await pitch_and_length(voice="female_01", speed=2.0)
    assert p1 != p2
    assert n_fast < n1 * 0.6


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"text": ""}, 400, "empty_text"),
        ({"text": "   "}, 400, "empty_text"),
        ({}, 400, "missing_field"),
        ({"text": 5}, 400, "bad_field"),
        ({"text": "x" * 2001}, 400, "text_too_long"),
        ({"text": "hi", "model": "nope"}, 404, "unknown_model"),
        # Loaded on demand (tests/test_on_demand.py), then the voice is checked.
        ({"text": "hi", "model": "reference-low", "voice": "nobody"}, 404, "unknown_voice"),
        ({"text": "hi", "voice": "nobody"}, 404, "unknown_voice"),
        ({"text": "hi", "language": "xx"}, 400, "unsupported_language"),
        ({"text": "hi", "speed": 0}, 400, "bad_speed"),
        ({"text": "hi", "speed": 100}, 400, "bad_speed"),
        ({"text": "hi", "speed": "fast"}, 400, "bad_field"),
    ],
)
async def test_tts_bad_input_gets_a_json_error(start_server, body, status, code):
    client = await start_server()
    resp = await client.post("/tts", json=body)
    assert resp.status == status
    assert (await error_of(resp))["code"] == code


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_malformed_bodies_get_a_json_error(start_server, raw):
    client = await start_server()
    for path in ("/tts", "/control/config/apply"):
        resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert (await error_of(resp))["code"] == "malformed_json"


async def test_unknown_routes_and_methods_answer_json(start_server):
    client = await start_server()
    resp = await client.get("/nowhere")
    assert resp.status == 404 and (await error_of(resp))["code"] == "not_found"
    resp = await client.get("/tts")
    assert resp.status == 405 and (await error_of(resp))["code"] == "method_not_allowed"


async def test_health_ready_is_503_until_the_default_model_is_loaded(start_server, config_repo):
    config_repo.model("reference", load_seconds=1.0)
    config_repo.commit("slow load")
    client = await start_server(wait=False)
    assert (await client.get("/health/live")).status == 200
    await wait_until(client, lambda s: [m["state"] for m in s["models"]] == ["loading"])
    resp = await client.get("/health/ready")
    assert resp.status == 503
    resp = await client.get("/health/models/reference")
    assert resp.status == 503 and (await resp.json())["state"] == "loading"
    # The event loop keeps answering while the model loads in a worker thread.
    await wait_until(client, lambda s: s["ready"])
    resp = await client.get("/health/ready")
    assert resp.status == 200 and (await resp.json())["default_model"] == "reference"
    body = await (await client.get("/health/models/reference")).json()
    assert body["state"] == "ready" and body["generation"] == 1
    assert (await client.get("/health/models/reference-low")).status == 503
    assert (await client.get("/health/models/nope")).status == 404


async def test_control_with_a_token_needs_the_right_bearer(start_server):
    client = await start_server(wait=False, control_token="s3cret-token")
    resp = await client.get("/control/status")
    assert resp.status == 401 and (await error_of(resp))["code"] == "unauthorized"
    resp = await client.get("/control/status", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    resp = await client.get("/control/status", headers={"Authorization": "s3cret-token"})
    assert resp.status == 401
    resp = await client.get("/control/status",
                            headers={"Authorization": "Bearer s3cret-token"})
    assert resp.status == 200
    # Speech and health stay open.
    assert (await client.get("/health/live")).status == 200


def _external_address() -> str | None:
    """This machine's non-loopback IPv4 address, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def test_without_a_token_control_answers_loopback_only(aiohttp_server, host_options):
    from alltalk_host.host import Host
    from alltalk_host.web.app import create_app

    address = _external_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to call from")
    server = await aiohttp_server(create_app(Host(host_options())), host="0.0.0.0")
    async with ClientSession() as session:
        remote = await session.get(f"http://{address}:{server.port}/control/status")
        assert remote.status == 403
        assert (await error_of(remote))["code"] == "forbidden"
        local = await session.get(f"http://127.0.0.1:{server.port}/control/status")
        assert local.status == 200
        # Speech is not a control route.
        assert (await session.get(f"http://{address}:{server.port}/health/live")).status == 200


async def test_effective_settings_show_layers_and_redact_secrets(start_server, tmp_path,
                                                                 monkeypatch):
    local = tmp_path / "local.toml"
    local.write_text('control_token = "s3cret"\nmax_text_length = 100\n')
    monkeypatch.setenv("ALLTALK_QUEUE_LIMIT", "3")
    client = await start_server(local_file=local)
    body = await (await client.get("/control/config/effective")).json()
    layers = {k["key"]: (k["value"], k["layer"]) for k in body["keys"]}
    assert layers["control_token"] == ("***", "host-local")
    assert layers["max_text_length"] == (100, "host-local")
    assert layers["queue_limit"] == (3, "env")
    assert layers["default_model"] == ("reference", "repo:settings.toml[default]")
    assert "s3cret" not in await (await client.get("/control/status")).text()
    # The limit from the host-local layer is what /tts enforces.
    resp = await client.post("/tts", json={"text": "x" * 101})
    assert (await error_of(resp))["code"] == "text_too_long"
