"""A reverse proxy never opens control: a real relay that does what nginx's default
``proxy_pass`` does, each proxy header, ``behind_proxy``, a dual-stack listener, and the Ray
front's ``/ray/status`` judged as its aiohttp twin ``/control/status``."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from alltalk_host.apis.http_boundary import PROXY_HEADERS, is_loopback_address
from alltalk_host.commands import cli
from alltalk_host.commands.cli_serve import _listen
from alltalk_host.errors import ConfigInvalid
from alltalk_host.host import Host, HostOptions
from alltalk_host.web.app import create_app

from .helpers import error_of

TOKEN = "s3cret-token"
SWITCH = {"model": "reference-low", "author": "internet"}
# Written out rather than read from PROXY_HEADERS: this list is what the test holds the
# guard to, whatever the tuple says.
HEADERS = ["X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port",
           "X-Forwarded-Server", "Forwarded", "Via", "X-Real-IP", "X-Client-IP",
           "CF-Connecting-IP", "True-Client-IP", "X-Cluster-Client-IP", "Fastly-Client-IP",
           "X-Original-Forwarded-For", "X-ProxyUser-Ip"]


class NginxDefaultRelay:
    """What ``proxy_pass http://127.0.0.1:PORT;`` with nginx's defaults sends upstream:
    HTTP/1.0, ``Connection: close``, Host rewritten to the upstream's address, no forwarding
    header; the client's other headers and its body as they came. One request per
    connection, the answer relayed back until the upstream closes."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = [line for line in head.split("\r\n") if line]
            method, target, _version = request_line.split(" ", 2)
            headers = [line.split(":", 1) for line in lines]
            length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"),
                          0)
            body = await reader.readexactly(length)
            host, port = self.upstream
            kept = "".join(f"{k}:{v}\r\n" for k, v in headers
                           if k.strip().lower() not in ("host", "connection", "keep-alive"))
            up_reader, up_writer = await asyncio.open_connection(host, port)
            up_writer.write(f"{method} {target} HTTP/1.0\r\nHost: {host}:{port}\r\n"
                            f"Connection: close\r\n{kept}\r\n".encode("latin-1") + body)
            await up_writer.drain()
            writer.write(await up_reader.read())  # until the upstream closes
            up_writer.close()
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def relay() -> AsyncIterator[Callable[[Any], Awaitable[str]]]:
    relays: list[NginxDefaultRelay] = []

    async def start(client: Any) -> str:
        relays.append(NginxDefaultRelay(client.host, client.port))
        return await relays[-1].start()
    yield start
    for one in relays:
        await one.close()


async def raw(host: str, port: int, head: str) -> tuple[int, bytes]:
    """Send a request as written (its HTTP version included); the status and body."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head.encode("latin-1"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]


# --- nginx's default proxy_pass ----------------------------------------------------------------

async def test_a_control_post_through_nginxs_default_proxy_is_refused(
        start_server, config_repo, relay):
    client = await start_server()
    proxied = await relay(client)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxied}/control/models/switch", json=SWITCH) as resp:
            assert resp.status == 401, await resp.text()
            assert "set a control token" in (await error_of(resp))["message"]
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        async with session.post(f"{proxied}/api/reload?tts_method=reference-low") as resp:
            assert resp.status == 401
    assert config_repo.head == config_repo.initial  # no commit authored "internet"
    # Speech through the same proxy is not control, and passes.
    async with aiohttp.ClientSession() as session, session.post(
            f"{proxied}/tts", json={"text": "Hi."}) as resp:
        assert resp.status == 200
    # The same request from this machine over HTTP/1.1 (aiohttp, curl, the CLI) passes.
    resp = await client.post("/control/models/switch", json=SWITCH)
    assert resp.status == 200, await resp.text()
    assert config_repo.head != config_repo.initial


async def test_http_1_0_is_what_tells_the_proxy_from_a_local_curl(start_server, config_repo):
    client = await start_server()
    request = "GET /control/status HTTP/{}\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n"
    status, body = await raw(client.host, client.port, request.format("1.1", client.port))
    assert status == 200, body
    status, body = await raw(client.host, client.port, request.format("1.0", client.port))
    assert status == 401 and b"HTTP/1.0" in body and b"set a control token" in body


async def test_with_a_token_the_proxy_passes_what_the_token_opens(start_server, config_repo,
                                                                  relay):
    client = await start_server(control_token=TOKEN)
    proxied = await relay(client)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxied}/control/models/switch", json=SWITCH,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(f"{proxied}/control/status") as resp:
            assert resp.status == 401


# --- proxy headers -----------------------------------------------------------------------------

def test_the_guard_knows_every_proxy_header():
    assert set(HEADERS) <= set(PROXY_HEADERS)


@pytest.mark.parametrize("header", HEADERS)
async def test_each_proxy_header_alone_needs_a_token(start_server, config_repo, header):
    client = await start_server()
    resp = await client.get("/control/status", headers={header: "203.0.113.9"})
    assert resp.status == 401, await resp.text()
    error = await error_of(resp)
    assert error["code"] == "unauthorized" and header in error["message"]
    assert "set a control token" in error["message"]
    resp = await client.post("/control/models/switch", json=SWITCH, headers={header: "x"})
    assert resp.status == 401
    assert config_repo.head == config_repo.initial


# --- behind_proxy ------------------------------------------------------------------------------

async def test_behind_proxy_refuses_a_plain_local_request_without_a_token(start_server,
                                                                          config_repo):
    # A commit cannot turn it off: it is not a commit setting.
    config_repo.change("try to lower it", "settings.toml", "default.behind_proxy", False)
    client = await start_server(behind_proxy=True)
    resp = await client.get("/control/status")
    assert resp.status == 401
    assert "behind_proxy" in (await error_of(resp))["message"]
    assert (await client.post("/control/models/switch", json=SWITCH)).status == 401
    assert (await client.post("/tts", json={"text": "Hi."})).status == 200


async def test_behind_proxy_with_a_token_lets_the_token_in(start_server):
    client = await start_server(behind_proxy=True, control_token=TOKEN)
    assert (await client.get("/control/status")).status == 401
    resp = await client.get("/control/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200


def test_behind_proxy_is_turned_on_by_the_flag_the_variable_or_the_host_local_file(
        tmp_path: Path):
    local = tmp_path / "local.toml"
    assert not HostOptions.from_env({}, local_file=local).behind_proxy
    assert cli._parser().parse_args(["serve", "--behind-proxy"]).behind_proxy is True
    assert cli._parser().parse_args(["serve"]).behind_proxy is None
    assert HostOptions.from_env({}, local_file=local, behind_proxy=True).behind_proxy
    assert HostOptions.from_env({"ALLTALK_BEHIND_PROXY": "1"}, local_file=local).behind_proxy
    local.write_text("behind_proxy = true\n")
    assert HostOptions.from_env({}, local_file=local).behind_proxy
    # No source turns it off once another turned it on.
    assert HostOptions.from_env({"ALLTALK_BEHIND_PROXY": "0"}, local_file=local).behind_proxy
    local.write_text('behind_proxy = "yes"\n')
    with pytest.raises(ConfigInvalid, match="true or false"):
        HostOptions.from_env({}, local_file=local)
    with pytest.raises(ConfigInvalid, match="ALLTALK_BEHIND_PROXY"):
        HostOptions.from_env({"ALLTALK_BEHIND_PROXY": "maybe"}, local_file=tmp_path / "none")


@pytest.mark.parametrize(("options", "words"), [
    ({}, "if any reverse proxy or tunnel forwards to this port, set a control token"),
    ({"behind_proxy": True}, "refuse every client"),
])
async def test_serve_warns_at_start_up_when_control_is_token_less(start_server, caplog,
                                                                  options, words):
    with caplog.at_level(logging.INFO, logger="alltalk_host.web.app"):
        await start_server(**options)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "alltalk_host.web.app" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and words in warnings[0], warnings


async def test_with_a_token_serve_does_not_warn(start_server, caplog):
    with caplog.at_level(logging.INFO, logger="alltalk_host.web.app"):
        await start_server(control_token=TOKEN)
    assert not [r for r in caplog.records
                if r.name == "alltalk_host.web.app" and r.levelno >= logging.WARNING]


# --- a dual-stack listener ---------------------------------------------------------------------

def _have_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::", 0))
    except OSError:
        return False
    return True


def test_ipv4_mapped_loopback_is_loopback():
    assert is_loopback_address("::ffff:127.0.0.1") and is_loopback_address("::ffff:127.1.2.3")
    assert not is_loopback_address("::ffff:203.0.113.9")
    assert is_loopback_address("::1") and not is_loopback_address("")


@pytest.mark.skipif(not _have_ipv6(), reason="this machine has no IPv6")
async def test_serve_on_double_colon_gives_ipv4_loopback_clients_local_control(
        host_options, config_repo):
    """``serve --host ::`` listens on both stacks; 127.0.0.1 arrives as ::ffff:127.0.0.1."""
    runner = web.AppRunner(create_app(Host(host_options())), handler_cancellation=True)
    await runner.setup()
    sockets = _listen("::", 0)
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    port = sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                async with session.get(f"http://127.0.0.1:{port}/health/ready") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.05)
            async with session.post(f"http://127.0.0.1:{port}/control/models/switch",
                                    json=SWITCH) as resp:
                assert resp.status == 200, await resp.text()
            async with session.get(f"http://[::1]:{port}/control/status") as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
    assert config_repo.head != config_repo.initial


# --- the Ray front's /ray/status ---------------------------------------------------------------

async def test_ray_status_needs_the_token_when_one_is_set(ray_front):
    base = await ray_front("r1", control_token=TOKEN)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/ray/status") as resp:
            assert resp.status == 401
            assert (await error_of(resp))["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert resp.headers["X-AllTalk-Replica"] == "r1"
        async with session.get(f"{base}/ray/status",
                               headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["replica"] == "r1"


# The same requests to both twins: each answers with the same status and error code.
ASKED = [
    {},
    {"X-Forwarded-For": "203.0.113.9"},
    {"Via": "1.1 edge"},
    {"Host": "evil.example:7851"},
    {"Origin": "http://evil.example"},
    {"Origin": "http://localhost:8000"},
    {"Sec-Fetch-Site": "cross-site"},
]


async def _answer(session: aiohttp.ClientSession, url: str, headers: dict[str, str]
                  ) -> tuple[int, str | None]:
    async with session.get(url, headers=headers) as resp:
        body = await resp.json()
        return resp.status, body["error"]["code"] if resp.status != 200 else None


@pytest.mark.parametrize("options", [{}, {"behind_proxy": True}], ids=["local", "behind_proxy"])
async def test_ray_status_without_a_token_answers_as_control_status(
        ray_front, start_server, options):
    base = await ray_front("r1", **options)
    client = await start_server(**options)
    twin = f"http://{client.host}:{client.port}/control/status"
    async with aiohttp.ClientSession() as session:
        for headers in ASKED:
            expected = await _answer(session, twin, headers)
            assert await _answer(session, f"{base}/ray/status", headers) == expected, headers
    # HTTP/1.0, as nginx's default proxy_pass sends it.
    port = int(base.rsplit(":", 1)[1])
    status, _ = await raw("127.0.0.1", port, f"GET /ray/status HTTP/1.0\r\n"
                          f"Host: 127.0.0.1:{port}\r\n\r\n")
    assert status == 401
    if not options:
        async with aiohttp.ClientSession() as session:
            assert (await _answer(session, f"{base}/ray/status", {})) == (200, None)


async def test_a_rollout_reads_the_board_with_the_control_token(ray_front, config_repo,
                                                               aiohttp_server, tmp_path):
    from alltalk_host.ray.rollout import APP_NAME, APPS_PATH, Fleet, FleetSpec

    base = await ray_front("r1", control_token=TOKEN)
    spec = FleetSpec(remote=str(config_repo.path), root=tmp_path / "root")
    config = spec.deploy_config(config_repo.head)

    async def applications(request: web.Request) -> web.Response:  # Ray's, one replica
        return web.json_response({"http_options": config["http_options"], "applications": {
            APP_NAME: {"status": "RUNNING", "deployed_app_config": config["applications"][0],
                       "deployments": {"alltalk": {"replicas": [
                           {"replica_id": "r1", "state": "RUNNING"}]}}}}})
    dashboard = web.Application()
    dashboard.router.add_get(APPS_PATH, applications)
    ray = str((await aiohttp_server(dashboard)).make_url("")).rstrip("/")

    async with Fleet(ray, base, control_token=TOKEN, state_dir=tmp_path / "a") as fleet:
        [status] = (await fleet.status())["replicas"]
        assert status["replica"] == "r1" and status["state"] == "serving", status
        assert fleet.shared is None
    async with Fleet(ray, base, state_dir=tmp_path / "b") as fleet:
        [status] = (await fleet.status())["replicas"]
        assert status["state"] == "unreported", status
        assert "401" in fleet.shared, fleet.shared  # said, not silently empty
