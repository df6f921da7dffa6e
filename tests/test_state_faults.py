"""A state that cannot be saved changes nothing: the ledger writes a transition before it makes
it, and the change that needed the save ends with a ``failed`` phase all the same.

The fault is a real one (the state file's path taken by a folder, which no write can replace,
not even root's), made at the moment a disk would fill: between an apply's attempt and its
commit point."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from alltalk_host.change.ledger import Ledger
from alltalk_host.change.state import STATE_FILE, StateStore
from alltalk_host.errors import StateUnwritable

from .helpers import read_events

A, B, C = "a" * 40, "b" * 40, "c" * 40


def block(state_dir: Path) -> Path:
    """Make every save fail, as a full disk would: a folder where the state file goes."""
    path = state_dir / STATE_FILE
    path.unlink(missing_ok=True)
    path.mkdir()
    return path


async def ended(stream) -> list[dict]:
    """The events up to the operation's last phase; a change whose end never comes fails
    here rather than waiting for the stream's heartbeats."""
    return await asyncio.wait_for(
        read_events(stream, lambda e: e.get("phase") in ("done", "failed")), 10)


async def test_a_transition_that_cannot_be_saved_is_not_made(tmp_path):
    io = ThreadPoolExecutor(1)
    ledger = Ledger(StateStore(tmp_path), io)
    await ledger.attempt(A)
    await ledger.applied_ok(A, who="ada", action="apply", duration_s=0.1)
    await ledger.attempt(B)
    before = StateStore.encode(ledger.state)

    blocked = block(tmp_path)
    for transition in (
            lambda: ledger.applied_ok(B, who="ada", action="apply", duration_s=0.1),
            lambda: ledger.failed(B, who="ada", action="apply", reason="no", duration_s=0.1),
            lambda: ledger.canary_started({"commit": B, "stable": A}, who="ada",
                                          duration_s=0.1),
            lambda: ledger.canary_extended({"commit": B, "stable": A}, "few"),
            lambda: ledger.attempt(C)):
        with pytest.raises(StateUnwritable):  # the 507 the state store raises for an OSError
            await transition()
        assert StateStore.encode(ledger.state) == before  # in memory: as it was

    # The next save that succeeds records what happened, not what failed to be saved.
    blocked.rmdir()
    await ledger.failed(C, who="ada", action="apply", reason="broken", duration_s=0.1)
    saved = StateStore(tmp_path).load()
    assert saved.applied == A and saved.known_good == [A] and saved.canary is None
    assert saved.attempted == B and set(saved.failed) == {C}
    assert [(h["commit"], h["result"]) for h in saved.history] == [(A, "applied"),
                                                                   (C, "failed")]
    io.shutdown()


async def test_an_apply_whose_commit_point_cannot_be_saved_fails_and_changes_nothing(
        start_server, config_repo, tmp_path):
    client = await start_server()
    stable = config_repo.initial
    new = config_repo.change("slow to load", "models.toml",
                             "default.models.reference.settings.load_seconds", 1.0)
    stream = await client.get("/control/events")
    await read_events(stream, lambda e: e["event"] == "hello")
    apply = asyncio.create_task(client.post("/control/config/apply", json={"commit": new}))
    # The attempt is saved; the disk "fills" while the model loads, before the commit point.
    await read_events(stream, lambda e: e.get("phase") == "loading")
    blocked = block(tmp_path / "state")
    resp = await apply
    assert resp.status // 100 == 5
    events = await ended(stream)
    assert events[-1]["phase"] == "failed" and events[-1]["commit"] == new
    assert events[-1]["still_serving"] == stable and events[-1]["reason"]

    status = await (await client.get("/control/status")).json()
    assert status["applied_commit"] == status["serving_commit"] == stable
    # The next change whose save succeeds records neither as applied nor as known-good the
    # commit that never served.
    shutil.rmtree(blocked)
    later = config_repo.change("faster", "models.toml",
                               "default.models.reference.settings.load_seconds", 0.0)
    resp = await client.post("/control/config/apply", json={"commit": later})
    assert resp.status == 200, await resp.text()
    saved = StateStore(tmp_path / "state").load()
    assert saved.applied == later and new not in saved.known_good
    assert not any(h["commit"] == new and h["result"] == "applied" for h in saved.history)
    stream.close()


async def test_an_apply_whose_attempt_cannot_be_saved_still_ends_its_events(
        start_server, config_repo, tmp_path):
    client = await start_server()
    new = config_repo.change("speed", "models.toml", "default.models.reference.default_speed",
                             1.1)
    stream = await client.get("/control/events")
    await read_events(stream, lambda e: e["event"] == "hello")
    block(tmp_path / "state")
    resp = await client.post("/control/config/apply", json={"commit": new})
    assert resp.status // 100 == 5
    events = await ended(stream)
    assert [e["phase"] for e in events if e["event"] == "operation"] == ["started", "failed"]
    assert events[-1]["still_serving"] == config_repo.initial
    status = await (await client.get("/control/status")).json()
    assert status["applied_commit"] == config_repo.initial
    assert status["attempted_commit"] != new
    stream.close()


async def test_a_canary_whose_promotion_cannot_be_saved_ends_and_the_stable_serves_on(
        start_server, config_repo, tmp_path):
    client = await start_server()
    stable = config_repo.initial
    new = config_repo.change("higher", "models.toml",
                             "default.models.reference.settings.pitch_hz", 280)
    resp = await client.post("/control/config/apply",
                             json={"commit": new, "canary": {"duration_s": 300}})
    assert resp.status == 200, await resp.text()
    stream = await client.get("/control/events")
    await read_events(stream, lambda e: e["event"] == "hello")
    blocked = block(tmp_path / "state")
    resp = await client.post("/control/canary/promote", json={})
    assert resp.status // 100 == 5
    events = await ended(stream)
    assert events[-1]["phase"] == "failed" and events[-1]["commit"] == new
    assert events[-1]["still_serving"] == stable
    status = await (await client.get("/control/status")).json()
    assert status["applied_commit"] == status["serving_commit"] == stable
    assert not status["canary"]["running"]
    resp = await client.post("/tts", json={"text": "Hi."})
    assert resp.status == 200 and resp.headers["X-AllTalk-Commit"] == stable

    shutil.rmtree(blocked)
    await (await client.post("/control/config/apply", json={"commit": stable})).read()
    saved = StateStore(tmp_path / "state").load()
    assert saved.applied == stable and new not in saved.known_good and saved.canary is None
    stream.close()


async def test_a_canary_whose_start_cannot_be_saved_does_not_start(start_server, config_repo,
                                                                   tmp_path):
    client = await start_server()
    stable = config_repo.initial
    new = config_repo.change("slow to load", "models.toml",
                             "default.models.reference.settings.load_seconds", 1.0)
    stream = await client.get("/control/events")
    await read_events(stream, lambda e: e["event"] == "hello")
    apply = asyncio.create_task(client.post(
        "/control/config/apply", json={"commit": new, "canary": {"duration_s": 300}}))
    await read_events(stream, lambda e: e.get("phase") == "loading")
    blocked = block(tmp_path / "state")
    resp = await apply
    assert resp.status // 100 == 5
    events = await ended(stream)
    assert events[-1]["phase"] == "failed" and events[-1]["still_serving"] == stable
    status = await (await client.get("/control/status")).json()
    assert not status["canary"]["running"] and status["serving_commit"] == stable
    resp = await client.post("/tts", json={"text": "Hi."}, headers={"X-AllTalk-Canary":
                                                                      "canary"})
    assert resp.headers["X-AllTalk-Commit"] == stable
    shutil.rmtree(blocked)
    await (await client.post("/control/config/apply", json={"commit": stable})).read()
    assert StateStore(tmp_path / "state").load().canary is None
    stream.close()
