"""The security boundary: every route that changes state is guarded, whatever its path."""

from __future__ import annotations

import asyncio
import re

import pytest

from alltalk_host.web.app import CONTROL_TABLES

from .helpers import error_of

TOKEN = "s3cret-token"
# Every guarded route, with a concrete path.
CONTROL = sorted({(r.method, re.sub(r"\{\w+\}", "reference", r.path))
                  for table in CONTROL_TABLES for r in table})


def test_the_alltalk_routes_that_change_state_are_control_routes():
    assert {("POST", "/api/reload"), ("GET", "/api/reload_config"),
            ("POST", "/api/lowvramsetting"), ("POST", "/api/deepspeed"),
            ("PUT", "/api/stop-generation"), ("POST", "/control/models/switch"),
            ("GET", "/control/status")} <= set(CONTROL)


async def test_with_a_token_every_control_route_needs_it(start_server, config_repo):
    client = await start_server(control_token=TOKEN)
    for method, path in CONTROL:
        resp = await client.request(method, path + "?tts_method=reference-low")
        assert resp.status == 401, (method, path)
        assert (await error_of(resp))["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    # The switch that a curl of /api/reload used to make was not made.
    assert config_repo.head == config_repo.initial
    status = await client.get("/control/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (await status.json())["default_model"] == "reference"
    # Speech and read-only routes stay open.
    assert await (await client.get("/api/ready")).text() == "Ready"
    assert (await client.post("/tts", json={"text": "Hi."})).status == 200


async def test_the_token_opens_alltalk_control_routes(start_server, config_repo):
    client = await start_server(control_token=TOKEN)
    resp = await client.post("/api/reload?tts_method=reference-low",
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert await resp.json() == {"status": "model-success"}
    resp = await client.put("/api/stop-generation", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200


@pytest.mark.parametrize(("authorization", "words"), [
    (None, "need 'Authorization: Bearer"),
    ("Bearer ", "wrong"),
    ("Bearer wrong", "wrong"),
    (TOKEN, "wrong"),
    ("Basic czNjcmV0", "wrong"),
])
async def test_bad_tokens_are_told_apart(start_server, authorization, words):
    client = await start_server(wait=False, control_token=TOKEN)
    headers = {"Authorization": authorization} if authorization is not None else {}
    resp = await client.get("/control/status", headers=headers)
    assert resp.status == 401
    assert words in (await error_of(resp))["message"]


async def raw_request(client, head: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (aiohttp's client would refuse them); the status and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


async def test_a_non_utf8_authorization_header_is_a_401(start_server):
    client = await start_server(wait=False, control_token=TOKEN)
    status, body = await raw_request(client, (
        b"GET /control/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer \xff\xfe\xc3\r\nConnection: close\r\n\r\n"))
    assert status == 401 and b'"unauthorized"' in body


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://localhost.evil.example",
                                    "http://127.0.0.1.evil.example:7851"])
async def test_pages_from_other_origins_cannot_change_state(start_server, config_repo, origin):
    client = await start_server()
    for method, path, kwargs in (
            ("POST", "/control/models/switch", {"json": {"model": "reference-low"}}),
            ("POST", "/api/reload?tts_method=reference-low", {}),
            ("PUT", "/api/stop-generation", {}),
            ("GET", "/api/reload_config", {})):
        resp = await client.request(method, path, headers={"Origin": origin}, **kwargs)
        assert resp.status == 403, (path, await resp.text())
        assert (await error_of(resp))["code"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert config_repo.head == config_repo.initial


async def test_a_cross_site_get_without_origin_cannot_reload(start_server, config_repo):
    """An <img src=".../api/reload_config"> on another site: the browser sends no Origin,
    but says Sec-Fetch-Site: cross-site."""
    client = await start_server()
    config_repo.change("limit", "settings.toml", "default.max_text_length", 150)
    resp = await client.get("/api/reload_config", headers={"Sec-Fetch-Site": "cross-site"})
    assert resp.status == 403
    status = await (await client.get("/control/status")).json()
    assert status["serving_commit"] == config_repo.initial


@pytest.mark.parametrize("origin", ["http://127.0.0.1:8000", "http://localhost:8000",
                                    "http://[::1]:3000", "http://localhost"])
async def test_loopback_pages_may_change_state(start_server, config_repo, origin):
    client = await start_server()
    resp = await client.post("/api/reload?tts_method=reference-low", headers={"Origin": origin})
    assert await resp.json() == {"status": "model-success"}
    assert resp.headers["Access-Control-Allow-Origin"] == origin


async def test_trusted_origins_come_from_the_config(start_server, config_repo):
    config_repo.change("trust the tavern", "settings.toml", "default.http.trusted_origins",
                       ["http://tavern.lan:8000"])
    client = await start_server()
    resp = await client.post("/control/models/switch", json={"model": "reference-low"},
                             headers={"Origin": "http://tavern.lan:8000"})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/control/models/switch", json={"model": "reference"},
                             headers={"Origin": "http://other.lan:8000"})
    assert resp.status == 403


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
async def test_json_control_routes_refuse_other_body_types(start_server, config_repo,
                                                           content_type):
    """What a page can send cross-site without a preflight is not read as JSON."""
    client = await start_server()
    resp = await client.post("/control/models/switch", data=b'{"model": "reference-low"}',
                             headers={"Content-Type": content_type})
    assert resp.status == 415
    assert (await error_of(resp))["code"] == "unsupported_media_type"
    assert config_repo.head == config_repo.initial


async def test_dns_rebinding_cannot_read_control_routes(start_server):
    """A page whose name was rebound to 127.0.0.1 sends its own name as Host."""
    client = await start_server()
    resp = await client.get("/control/status", headers={"Host": "evil.example:7851"})
    assert resp.status == 403
    assert (await error_of(resp))["code"] == "host_not_allowed"
    for host in ("localhost:7851", "127.0.0.1", "[::1]:7851"):
        resp = await client.get("/control/status", headers={"Host": host})
        assert resp.status == 200, host
    # Speech does not depend on the name.
    assert (await client.get("/api/ready", headers={"Host": "evil.example"})).status == 200


async def test_allowed_hosts_come_from_the_config(start_server, config_repo):
    config_repo.change("a name", "settings.toml", "default.http.allowed_hosts", ["tts.lan"])
    client = await start_server()
    assert (await client.get("/control/status", headers={"Host": "tts.lan:7851"})).status == 200


async def test_with_a_token_other_host_names_are_fine(start_server):
    client = await start_server(control_token=TOKEN)
    resp = await client.get("/control/status", headers={"Host": "tts.example.org",
                                                        "Authorization": f"Bearer {TOKEN}",
                                                        "X-Forwarded-For": "203.0.113.9"})
    assert resp.status == 200


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
async def test_behind_a_proxy_control_needs_a_token(start_server, config_repo, header):
    client = await start_server()
    resp = await client.post("/api/reload?tts_method=reference-low",
                             headers={header: "for=203.0.113.9"})
    assert resp.status == 401
    assert "set a control token" in (await error_of(resp))["message"]
    assert config_repo.head == config_repo.initial


async def test_a_page_of_this_server_itself_is_same_origin(start_server, config_repo):
    client = await start_server()
    host = f"{client.host}:{client.port}"
    resp = await client.post("/control/models/switch", json={"model": "reference-low"},
                             headers={"Origin": f"http://{host}", "Host": host})
    assert resp.status == 200
    # A rebound name is "same-origin" too, and the Host rule still refuses it.
    resp = await client.post("/control/models/switch", json={"model": "reference"},
                             headers={"Origin": "http://evil.example:7851",
                                      "Host": "evil.example:7851"})
    assert resp.status == 403 and (await error_of(resp))["code"] == "host_not_allowed"
