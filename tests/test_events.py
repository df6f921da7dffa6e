"""Live events (GET /control/events): a change's phases in order, models' states, catching up
after a reconnect, and the same guard as every control route."""

from __future__ import annotations

import asyncio

from alltalk_host.events import BUFFER
from alltalk_host.web.keys import HOST

from .helpers import error_of, read_events


async def test_a_switch_streams_its_phases_in_order_and_the_models_states(start_server,
                                                                          config_repo):
    config_repo.model("reference-low", load_seconds=0.3)
    config_repo.commit("a model that takes a moment to load")
    client = await start_server()
    stream = await client.get("/control/events")
    assert stream.status == 200 and stream.content_type == "text/event-stream"
    hello = await read_events(stream, lambda e: e["event"] == "hello")
    assert hello[-1]["last_id"] >= 1  # the start-up apply's events are in the buffer

    switch = asyncio.create_task(client.post("/control/models/switch",
                                             json={"model": "reference-low"}))
    events = await read_events(stream, lambda e: e.get("phase") in ("done", "failed"))
    assert (await switch).status == 200
    ops = [e for e in events if e["event"] == "operation"]
    assert {e["op"] for e in ops} == {ops[0]["op"]} and ops[0]["action"] == "switch"
    phases = [e["phase"] for e in ops]
    assert phases == ["started", "planning", "loading", "warming up", "checking", "switching",
                      "done"], phases
    assert [e["elapsed_s"] for e in ops] == sorted(e["elapsed_s"] for e in ops)
    loading = next(e for e in ops if e["phase"] == "loading")
    assert loading["model"] == "reference-low" and loading["instances"] == 1
    models = [(e["name"], e["state"]) for e in events if e["event"] == "model"]
    assert ("reference-low", "loading") in models and ("reference-low", "serving") in models
    # What the backend said of its own load (context.progress) is passed on as it happens.
    (told,) = [e for e in events if e["event"] == "model" and e.get("detail")]
    assert told["name"] == "reference-low" and told["state"] == "loading"
    assert told["detail"] == "reading the model file" and told["fraction"] == 0.0
    assert told["instance"] == 1
    # The old default drains and unloads after the switch, and says how long that took.
    after = await read_events(stream, lambda e: e.get("state") == "unloaded")
    unloaded = after[-1]
    assert unloaded["name"] == "reference" and unloaded["drained_s"] >= 0
    stream.close()


async def test_a_failed_apply_says_why_and_what_still_serves(start_server, config_repo):
    client = await start_server()
    bad = config_repo.change("broken", "models.toml",
                             "default.models.reference.settings.model_file", "missing.toml")
    stream = await client.get("/control/events")
    await read_events(stream, lambda e: e["event"] == "hello")
    resp = await client.post("/control/config/apply", json={"commit": bad})
    assert resp.status == 422
    events = await read_events(stream, lambda e: e.get("phase") == "failed")
    failed = events[-1]
    assert failed["commit"] == bad and "missing.toml" in failed["reason"]
    assert failed["still_serving"] == config_repo.initial
    assert ("reference", "load_failed") in [(e.get("name"), e.get("state")) for e in events]
    stream.close()


async def test_a_reader_that_reconnects_gets_what_it_missed(start_server, config_repo):
    client = await start_server()
    stream = await client.get("/control/events")
    hello = (await read_events(stream, lambda e: e["event"] == "hello"))[-1]
    stream.close()
    commit = config_repo.change("limit", "settings.toml", "default.max_text_length", 999)
    assert (await client.post("/control/config/apply", json={"commit": commit})).status == 200
    again = await client.get("/control/events",
                             headers={"Last-Event-ID": str(hello["last_id"])})
    missed = await read_events(again, lambda e: e.get("phase") == "done")
    assert missed[-1]["commit"] == commit
    again.close()
    # Too far back, once the buffer has moved on: told to start over, then it follows on.
    bus = client.server.app[HOST].events
    for i in range(BUFFER + 10):
        bus.publish("model", name=f"filler-{i}", state="serving")
    late = await client.get("/control/events?after=1")
    first = await read_events(late, lambda e: e["event"] != "hello")
    assert first[-1]["event"] == "reset" and "reload" in first[-1]["reason"]
    bus.publish("model", name="after-reset", state="serving")
    follow = await read_events(late, lambda e: e.get("name") == "after-reset")
    assert follow[-1]["state"] == "serving"
    late.close()


async def test_events_have_the_control_guard_and_bad_ids_are_400(start_server):
    client = await start_server(control_token="secret")
    resp = await client.get("/control/events")
    assert resp.status == 401
    resp = await client.get("/control/events", headers={"Authorization": "Bearer secret",
                                                        "Last-Event-ID": "abc"})
    assert resp.status == 400 and (await error_of(resp))["code"] == "bad_field"
    resp = await client.get("/control/events", headers={"Origin": "https://evil.example",
                                                        "Authorization": "Bearer secret"})
    assert resp.status == 403


async def test_stopping_the_server_ends_open_event_streams(start_server):
    client = await start_server()
    stream = await client.get("/control/events")
    await read_events(stream, lambda e: e["event"] == "hello")
    # aiohttp waits up to a minute for open requests at shutdown; an event stream must end
    # at once instead.
    await asyncio.wait_for(client.server.close(), 15)
    assert await asyncio.wait_for(stream.content.read(), 5) == b""


async def test_a_reader_from_before_a_restart_is_told_to_start_over(start_server, config_repo):
    """Ids begin at 1 in each process: a page that followed the host before it restarted
    reconnects with an id above the last. It is told to reload (a ``reset``, and the hello
    says so), gets what the new process has done, then follows on."""
    client = await start_server()
    for value in (901, 902):  # the first run does more than the second will before it
        commit = config_repo.change("limit", "settings.toml", "default.max_text_length", value)
        assert (await client.post("/control/config/apply",
                                  json={"commit": commit})).status == 200
    stream = await client.get("/control/events")
    seen = (await read_events(stream, lambda e: e["event"] == "hello"))[-1]["last_id"]
    stream.close()
    await client.close()

    client = await start_server()
    again = await client.get("/control/events", headers={"Last-Event-ID": str(seen)})
    hello = (await read_events(again, lambda e: e["event"] == "hello"))[-1]
    assert hello["reset"] is True and hello["last_id"] < seen
    events = await asyncio.wait_for(read_events(again, lambda e: e.get("phase") == "done"), 10)
    assert events[0]["event"] == "reset" and "restarted" in events[0]["reason"]
    assert events[-1]["action"] == "startup" and events[-1]["commit"] == commit
    assert [e["id"] for e in events[1:]] == list(range(1, len(events)))
    commit = config_repo.change("limit", "settings.toml", "default.max_text_length", 903)
    assert (await client.post("/control/config/apply", json={"commit": commit})).status == 200
    follow = await asyncio.wait_for(read_events(again, lambda e: e.get("phase") == "done"), 10)
    assert follow[-1]["commit"] == commit and follow[-1]["id"] > hello["last_id"]
    again.close()
    # A reader that is merely up to date is not told to reset.
    current = await client.get("/control/events",
                               headers={"Last-Event-ID": str(follow[-1]["id"])})
    assert (await read_events(current, lambda e: e["event"] == "hello"))[-1]["reset"] is False
    current.close()
