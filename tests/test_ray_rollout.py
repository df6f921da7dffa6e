"""The fleet's rollout (ray/rollout.Fleet) against a stand-in for Ray's REST API and Serve proxy
on loopback: what it does when a rollout cannot finish, without a Ray cluster. The stand-in
speaks the few calls the rollout makes (GET and PUT /api/serve/applications/, the board at
/ray/fleet); tests/test_ray_cli.py and tests/test_ray_nodes.py run rollouts on real clusters."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web

from alltalk_host.change.state import StateStore
from alltalk_host.ray.front import FLEET_PATH
from alltalk_host.ray.rollout import APP_NAME, APPS_PATH, DEPLOYMENT, Fleet, FleetSpec, RolloutError

from .helpers import ConfigRepoHelper


class StandInRay:
    """One application with one replica. A replica takes each commit Ray declares at once,
    except those in ``stuck`` (it never settles on them); a deploy of a commit in
    ``unreachable`` breaks the connection, as a dashboard that goes away does."""

    def __init__(self) -> None:
        self.declared: list[str] = []  # every user_config commit Ray was told, in order
        self.serving: str | None = None
        self.stuck: set[str] = set()
        self.unreachable: set[str] = set()
        self.config: dict[str, Any] = {}  # the last deploy config
        self.ledger: tuple[dict[str, Any] | None, int] = (None, 0)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(APPS_PATH, self.applications)
        app.router.add_put(APPS_PATH, self.deploy)
        app.router.add_get(FLEET_PATH, self.board)
        app.router.add_put(FLEET_PATH, self.write_ledger)
        return app

    async def applications(self, request: web.Request) -> web.Response:
        if not self.declared:
            return web.json_response({"applications": {}})
        replicas = [{"replica_id": "r1", "state": "RUNNING", "node_ip": "127.0.0.1"}]
        return web.json_response({
            "http_options": self.config["http_options"],
            "applications": {APP_NAME: {
                "status": "RUNNING", "deployed_app_config": self.config["applications"][0],
                "deployments": {DEPLOYMENT: {"replicas": replicas}}}}})

    async def deploy(self, request: web.Request) -> web.Response:
        body = await request.json()
        (deployment,) = body["applications"][0]["deployments"]
        commit = deployment["user_config"]["commit"]
        if commit in self.unreachable:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        self.declared.append(commit)
        self.config = body
        if commit not in self.stuck:
            self.serving = commit
        return web.json_response({})

    async def board(self, request: web.Request) -> web.Response:
        target = self.declared[-1]
        state = "starting" if target in self.stuck else "serving"
        status: dict[str, Any] = {"replica": "r1", "state": state, "commit": self.serving,
                                  "target": target, "last_error": None}
        ledger, version = self.ledger
        return web.json_response({"replicas": {"r1": status}, "ledger": ledger,
                                  "version": version})

    async def write_ledger(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["version"] != self.ledger[1]:
            return web.json_response({"error": "conflict"}, status=409)
        self.ledger = (body["ledger"], body["version"] + 1)
        return web.json_response({"version": self.ledger[1]})


@pytest.fixture
async def fleet(aiohttp_server, config_repo: ConfigRepoHelper, tmp_path):
    ray = StandInRay()
    server = await aiohttp_server(ray.app())
    url = str(server.make_url("/")).rstrip("/")
    spec = FleetSpec(remote=str(config_repo.path), root=tmp_path / "root", replicas=1)
    async with Fleet(url, url, state_dir=tmp_path / "state", spec=spec,
                     timeout_s=1.5) as fleet:
        first = await fleet.apply(config_repo.initial)
        assert first["result"] == "applied"
        yield fleet, ray


def saved(fleet: Fleet):
    return StateStore(fleet.state_dir / "fleet").load()


async def test_a_rollout_that_times_out_declares_the_previous_commit_again(
        fleet, config_repo: ConfigRepoHelper):
    fleet, ray = fleet
    stuck = config_repo.change("never settles", "settings.toml", "default.max_text_length", 901)
    ray.stuck.add(stuck)
    result = await fleet.apply(stuck)
    assert result["result"] == "failed" and "did not settle" in result["reason"]
    assert result["rolled_back_to"] == config_repo.initial
    # Ray declares the previous commit again: no replica goes on converging on the failed one.
    assert ray.declared == [config_repo.initial, stuck, config_repo.initial]
    assert [r["target"] for r in result["after_rollback"]] == [config_repo.initial]
    state = saved(fleet)
    assert state.applied == config_repo.initial and stuck in state.failed
    assert "did not settle" in state.failed[stuck]["reason"]


async def test_a_deploy_that_cannot_reach_ray_is_recorded_failed_with_its_reason(
        fleet, config_repo: ConfigRepoHelper):
    fleet, ray = fleet
    lost = config_repo.change("Ray goes away", "settings.toml", "default.max_text_length", 902)
    ray.unreachable.add(lost)
    result = await fleet.apply(lost)
    assert result["result"] == "failed"
    assert result["reason"].startswith("Ray could not be reached: ServerDisconnectedError")
    assert result["rolled_back_to"] == config_repo.initial
    assert ray.declared[-1] == config_repo.initial
    state = saved(fleet)
    assert state.applied == config_repo.initial and state.failed[lost]["reason"] == \
        result["reason"]


async def test_a_rollback_that_does_not_settle_in_time_is_still_declared(
        fleet, config_repo: ConfigRepoHelper):
    """A replica still loading the failed commit takes the previous one after it: the
    rollback is declared, and the result says the fleet had not settled yet."""
    fleet, ray = fleet
    stuck = config_repo.change("never settles", "settings.toml", "default.max_text_length", 903)
    ray.stuck.update({stuck, config_repo.initial})  # nothing settles any more
    result = await fleet.apply(stuck)
    assert result["result"] == "failed" and result["rolled_back_to"] == config_repo.initial
    assert "did not settle" in result["rollback_pending"] and "after_rollback" not in result
    assert ray.declared[-1] == config_repo.initial
    assert saved(fleet).history[-1]["result"] == "declared"


async def test_another_operator_machine_finds_the_fleet_and_its_ledger(
        fleet, config_repo: ConfigRepoHelper, tmp_path):
    """No spec and no state on the second machine: what is deployed comes from Ray, the
    ledger from the board; its rollback is shared back, and a stale writer is told."""
    fleet, ray = fleet
    second = config_repo.change("second", "settings.toml", "default.max_text_length", 904)
    assert (await fleet.apply(second))["result"] == "applied"
    assert ray.ledger[0]["applied"] == second  # shared on the board

    async with Fleet(fleet.dashboard, fleet.serve, state_dir=tmp_path / "elsewhere",
                     timeout_s=1.5) as other:
        assert other.spec == fleet.spec
        assert other.ledger.applied == second
        assert other.ledger.state.known_good == [config_repo.initial, second]
        back = await other.rollback(who="second operator")
        assert back["result"] == "applied" and back["commit"] == config_repo.initial
    assert ray.ledger[0]["applied"] == config_repo.initial
    assert ray.declared[-1] == config_repo.initial

    # The first machine read the ledger before that rollback: its next write is refused by
    # the board and said in the result; its own copy keeps the record.
    third = config_repo.change("third", "settings.toml", "default.max_text_length", 905)
    result = await fleet.apply(third)
    assert result["result"] == "applied"
    assert "another operator" in result["ledger_not_shared"] or "409" in \
        result["ledger_not_shared"], result
    assert saved(fleet).applied == third


async def test_a_remote_that_is_gone_or_hangs_is_a_clear_error(aiohttp_server, tmp_path):
    """The CLI's clone of the fleet's remote: a missing repo says git's reason, a remote that
    accepts and never answers is given up after the deadline, with every git process ended."""
    import socket

    ray = StandInRay()
    server = await aiohttp_server(ray.app())
    url = str(server.make_url("/")).rstrip("/")
    gone = FleetSpec(remote=str(tmp_path / "no-such-repo.git"), root=tmp_path / "root")
    with pytest.raises(RolloutError, match="git could not fetch from the fleet's remote"):
        async with Fleet(url, url, state_dir=tmp_path / "state", spec=gone):
            pass

    with socket.socket() as silent:  # listens, never speaks git
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        hung = FleetSpec(remote=f"git://127.0.0.1:{port}/config.git", root=tmp_path / "root")
        started = time.monotonic()
        with pytest.raises(RolloutError, match=r"did not reach the fleet.s remote .* within 2 s"):
            async with Fleet(url, url, state_dir=tmp_path / "state", spec=hung,
                             fetch_timeout_s=2):
                pass
        assert time.monotonic() - started < 30
    assert not ray.declared  # nothing was deployed
