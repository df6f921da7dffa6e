"""The fleet's board (ray/board.py) behind the Ray front, without a cluster: every replica's
status read through any one replica, the shared ledger and its version rule, the control
token checked by digest; and the deploy's own rules (the remote, the spec Ray gives back).
The same calls run on real nodes in tests/test_ray_nodes.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest

from alltalk_host.ray.board import Board, MemoryStore
from alltalk_host.ray.front import FLEET_PATH
from alltalk_host.ray.rollout import FleetSpec, RolloutError
from alltalk_host.ray.source import SourceError, remote_problem

from .helpers import ConfigRepoHelper


async def test_any_replica_shows_every_replica_and_the_shared_ledger(
        ray_front, config_repo: ConfigRepoHelper) -> None:
    board = Board(MemoryStore())  # one table for both, as Ray's GCS is for every node
    one, other = await ray_front("r1", board=board), await ray_front("r2", board=board)
    async with aiohttp.ClientSession() as http:
        async with http.get(one + FLEET_PATH) as resp:
            seen = await resp.json()
            assert resp.status == 200, seen
        assert set(seen["replicas"]) == {"r1", "r2"}
        for rid in ("r1", "r2"):
            assert seen["replicas"][rid]["commit"] == config_repo.head
            assert seen["replicas"][rid]["node"] == f"node-{rid}"
        assert (seen["ledger"], seen["version"]) == (None, 0)

        ledger = {"applied": config_repo.head, "known_good": [config_repo.head]}
        async with http.put(one + FLEET_PATH, json={"ledger": ledger, "version": 0}) as resp:
            assert resp.status == 200 and (await resp.json())["version"] == 1
        # Another operator who read version 0 too is refused, and the ledger kept.
        async with http.put(other + FLEET_PATH,
                            json={"ledger": {"applied": None}, "version": 0}) as resp:
            body = await resp.json()
            assert resp.status == 409 and body["error"]["code"] == "conflict", body
            assert "another operator" in body["error"]["message"]
        async with http.get(other + FLEET_PATH) as resp:
            seen = await resp.json()
        assert (seen["ledger"], seen["version"]) == (ledger, 1)

        for bad in ({"ledger": [], "version": 1}, {"ledger": {}, "version": "1"},
                    {"ledger": {}, "version": True}, {"version": 1}):
            async with http.put(one + FLEET_PATH, json=bad) as resp:
                body = await resp.json()
                assert resp.status == 400 and body["error"]["code"] == "bad_request", (bad,
                                                                                        body)
        async with http.get(one + FLEET_PATH) as resp:
            assert (await resp.json())["version"] == 1  # the refusals changed nothing


async def test_the_fleets_control_routes_take_the_token_by_its_digest(ray_front) -> None:
    token = "s3cret-fleet-token"
    base = await ray_front("r1", token_sha256=hashlib.sha256(token.encode()).hexdigest())
    async with aiohttp.ClientSession() as http:
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                ({"Authorization": token}, 401),
                                ({"Authorization": f"Bearer {token}"}, 200)):
            for path in (FLEET_PATH, "/ray/status"):
                async with http.get(base + path, headers=headers) as resp:
                    assert resp.status == status, (path, headers, await resp.text())
        # Speech is open, as on the aiohttp front.
        async with http.post(base + "/tts", json={"text": "Hi."}) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(("remote", "words"), [
    ("ext::sh -c touch% /tmp/x", "remote helper"),
    ("fd::17", "remote helper"),
    ("ftp://example.org/config.git", "uses ftp://"),
    ("-uhack", "starts with '-'"),
    ("config", "relative path"),
    ("https://example.org/\x00config.git", "control characters"),
    ("", "git URL or an absolute path"),
    ("https://example.org/" + "x" * 1100, "longer than"),
])
def test_a_remote_the_nodes_would_misuse_is_refused(remote: str, words: str,
                                                    tmp_path: Path) -> None:
    assert words in (remote_problem(remote) or ""), remote_problem(remote)
    with pytest.raises(SourceError, match="remote"):
        FleetSpec(remote=remote, root=tmp_path)


@pytest.mark.parametrize("remote", ["https://git.example.org/ops/config.git",
                                    "ssh://git@git.example.org/ops/config.git",
                                    "git@git.example.org:ops/config.git",
                                    "git://10.0.0.1/config.git", "/srv/alltalk/config.git",
                                    "file:///srv/alltalk/config.git"])
def test_ordinary_remotes_are_taken(remote: str) -> None:
    assert remote_problem(remote) is None


def test_the_spec_ray_gives_back_is_the_one_deployed(tmp_path: Path) -> None:
    spec = FleetSpec(remote="git://10.0.0.1/config.git", root=tmp_path, replicas=3,
                     plugins=["reference"], max_replicas_per_node=1, http_host="0.0.0.0",
                     http_port=8123, proxy_location="HeadOnly", models_dir="/srv/models",
                     control_token_sha256="ab" * 32)
    config = spec.deploy_config("c" * 40)
    # Ray's GET answers with what it was given: the application and the proxies' options.
    instance = {"http_options": config["http_options"],
                "proxy_location": config["proxy_location"],
                "applications": {"alltalk": {"deployed_app_config": config["applications"][0]}}}
    assert FleetSpec.from_ray(instance) == spec
    assert FleetSpec.from_ray({"applications": {}}) is None
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8123}
    assert "s3cret" not in str(config)


def test_a_relative_root_or_unknown_proxy_location_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match="absolute"):
        FleetSpec(remote=str(tmp_path), root=Path("fleet"))
    with pytest.raises(RolloutError, match="proxy_location"):
        FleetSpec(remote=str(tmp_path), root=tmp_path, proxy_location="Everywhere")


def test_the_default_spec_listens_on_loopback(tmp_path: Path) -> None:
    config = FleetSpec(remote=str(tmp_path), root=tmp_path).deploy_config("c" * 40)
    assert config["http_options"]["host"] == "127.0.0.1"
