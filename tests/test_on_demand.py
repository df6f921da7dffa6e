"""Issue 24, part 1: a request naming a configured model that is not loaded loads it (one load,
however many ask), it stays loaded across applies that keep it, unloads when idle or by hand,
and a failed load answers everyone waiting without being retried in a loop.

The reference-low model of tests/reference_models.toml is configured and not kept loaded: the
model these tests load on demand."""

from __future__ import annotations

import asyncio
import contextlib
import io

import pytest

from alltalk_host.commands import cli

from .helpers import (
    dominant_pitch,
    error_of,
    post,
    read_events,
    read_wav,
    status_of,
    wait_until,
)


def model_of(status: dict, name: str) -> dict | None:
    found = [m for m in status["models"] if m["name"] == name and m["state"] == "serving"]
    return found[0] if found else None


async def speak(client, model: str, text: str = "Hello there.", **body):
    return await post(client, "/tts", text=text, model=model, **body)


async def test_a_request_for_a_model_not_loaded_loads_it_and_is_served(start_server):
    client = await start_server()
    assert model_of(await status_of(client), "reference-low") is None
    resp = await speak(client, "reference-low")
    assert resp.status == 200, await resp.text()
    samples, rate = read_wav(await resp.read())
    assert abs(dominant_pitch(samples, rate) - 90) < 10  # reference-low's voice, not the default
    status = await status_of(client)
    low = model_of(status, "reference-low")
    assert low["resident"] == "on_demand" and low["generation"] == 1
    assert model_of(status, "reference")["resident"] == "default"
    assert status["on_demand"]["loads"] == 1
    # The commit did not move: residency is the host's choice, not a commit.
    assert status["serving_commit"] == resp.headers["X-AllTalk-Commit"]
    metrics = await (await client.get("/metrics")).text()
    for line in ('alltalk_resident_models{reason="on_demand"} 1.0',
                 'alltalk_resident_models{reason="default"} 1.0',
                 'alltalk_on_demand_loads_total{outcome="loaded"} 1.0',
                 'alltalk_on_demand_wait_seconds_count{model="reference-low"} 1.0'):
        assert line in metrics, line


async def test_four_first_requests_at_once_cause_one_load(start_server, config_repo):
    config_repo.model("reference-low", load_seconds=1.0, pitch_hz=90, voices=["narrator"])
    config_repo.commit("a model that takes a second to load")
    client = await start_server()
    events = await client.get("/control/events")
    answers = await asyncio.gather(*(speak(client, "reference-low") for _ in range(4)))
    assert [a.status for a in answers] == [200] * 4
    status = await status_of(client)
    assert status["on_demand"]["loads"] == 1
    assert model_of(status, "reference-low")["generation"] == 1
    seen = await read_events(events, lambda e: e.get("name") == "reference-low"
                             and e.get("state") == "serving")
    events.close()
    loading = [e for e in seen if e.get("name") == "reference-low" and e["state"] == "loading"
               and "fraction" not in e]
    assert len(loading) == 1 and loading[0]["on_demand"] == "request"


async def test_a_failed_load_answers_every_waiter_and_is_not_retried_at_once(
        start_server, config_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("ALLTALK_MODELS_DIR", str(tmp_path))
    (tmp_path / "damaged.toml").write_text("pitch_hz = [not toml")
    config_repo.model("reference-low", model_file="damaged.toml", load_seconds=0.5)
    config_repo.set("settings.toml", "default.on_demand.retry_after_s", 60)
    config_repo.commit("reference-low's weights are damaged")
    client = await start_server()
    first = await asyncio.gather(*(speak(client, "reference-low") for _ in range(3)))
    errors = [await error_of(r) for r in first]
    assert [r.status for r in first] == [503] * 3
    assert {e["code"] for e in errors} == {"model_load_failed"}
    assert all("could not be loaded on demand" in e["message"] for e in errors)
    again = await speak(client, "reference-low")
    error = await error_of(again)
    assert again.status == 503 and "the next request tries again in" in error["message"]
    assert 0 < error["details"]["retry_after_s"] <= 60
    # One load was tried, not one per request; the default model serves on.
    assert (await status_of(client))["on_demand"]["failures"] == 1
    assert (await speak(client, "reference")).status == 200


async def test_on_demand_can_be_off_for_a_model_or_the_host(start_server, config_repo):
    config_repo.set("models.toml", "default.models.reference-low.on_demand", False)
    config_repo.commit("reference-low only when kept loaded")
    client = await start_server()
    resp = await speak(client, "reference-low")
    error = await error_of(resp)
    assert resp.status == 409 and error["code"] == "model_not_loaded"
    assert "on_demand = false in its definition" in error["message"]
    off = config_repo.change("no on-demand loading", "settings.toml",
                             "default.on_demand.enabled", False)
    assert (await post(client, "/control/config/apply", commit=off)).status == 200
    error = await error_of(await speak(client, "reference-low"))
    assert "[on_demand] enabled = false" in error["message"]


@pytest.mark.parametrize(("key", "value", "says"), [
    ("models.toml:default.models.reference-low.on_demand", "yes", "on_demand: expected bool"),
    ("models.toml:default.models.reference-low.idle_unload_s", -1, "idle_unload_s: -1 is outside"),
    ("settings.toml:default.on_demand.idle_unload_s", "soon", "on_demand.idle_unload_s"),
    ("settings.toml:default.on_demand.retry_after_s", -5, "on_demand.retry_after_s"),
])
async def test_bad_on_demand_settings_are_refused_and_change_nothing(
        start_server, config_repo, key, value, says):
    client = await start_server()
    file, dotted = key.split(":")
    bad = config_repo.change("a bad on-demand setting", file, dotted, value)
    resp = await post(client, "/control/config/apply", commit=bad)
    error = await error_of(resp)
    assert resp.status == 422 and says in error["message"] + str(error.get("details"))
    assert (await status_of(client))["serving_commit"] == config_repo.initial


async def test_an_idle_model_is_unloaded_and_loads_again_when_asked(start_server, config_repo):
    config_repo.set("models.toml", "default.models.reference-low.idle_unload_s", 0.5)
    config_repo.commit("reference-low unloads after half a second unused")
    client = await start_server()
    assert (await speak(client, "reference-low")).status == 200
    status = await wait_until(client, lambda s: model_of(s, "reference-low") is None)
    assert status["on_demand"]["unloads"]["idle"] == 1
    assert model_of(status, "reference") is not None  # the default never idles out
    assert (await speak(client, "reference-low")).status == 200
    assert model_of(await status_of(client), "reference-low")["generation"] == 2


async def test_a_full_house_unloads_the_least_recently_used_idle_model_never_one_in_use(
        start_server, config_repo):
    config_repo.model("reference-third", pitch_hz=200, voices=["third"])
    config_repo.model("reference-low", rtf=1.0)  # a second of work per second of speech
    config_repo.set("settings.toml", "default.on_demand.max_resident_models", 3)
    config_repo.commit("three models at most")
    client = await start_server()
    assert (await speak(client, "reference-low")).status == 200
    assert (await speak(client, "reference-third")).status == 200
    # Full (reference, reference-low, reference-third); reference-low is used last, so the
    # next model takes reference-third's place.
    assert (await speak(client, "reference-low")).status == 200
    config_repo.model("reference-fourth", pitch_hz=300, voices=["fourth"])
    fourth = config_repo.commit("a fourth model")
    assert (await post(client, "/control/config/apply", commit=fourth)).status == 200
    assert (await speak(client, "reference-fourth")).status == 200
    status = await status_of(client)
    assert {m["name"] for m in status["models"] if m["state"] == "serving"} == {
        "reference", "reference-low", "reference-fourth"}
    assert status["on_demand"]["unloads"]["budget"] == 1
    # Now reference-low speaks for a while and reference-fourth is idle: asked for,
    # reference-third takes reference-fourth's place, never reference-low's.
    long = asyncio.create_task(speak(client, "reference-low", "One. " + "A long sentence. " * 6))
    await wait_until(client, lambda s: model_of(s, "reference-low")["running"] == 1)
    assert (await speak(client, "reference-third")).status == 200
    status = await status_of(client)
    assert model_of(status, "reference-fourth") is None
    assert model_of(status, "reference-low")["running"] == 1
    # Nothing idle left to unload (reference-low still speaks, the default stays): refused.
    config_repo.set("settings.toml", "default.on_demand.max_resident_models", 2)
    two = config_repo.commit("two models at most")
    assert (await post(client, "/control/config/apply", commit=two)).status == 200
    resp = await speak(client, "reference-fourth")
    error = await error_of(resp)
    assert resp.status == 503 and error["code"] == "insufficient_memory"
    assert "max_resident_models = 2 are loaded" in error["message"]
    assert "reference (the default)" in error["message"]
    assert (await long).status == 200


async def test_a_memory_budget_makes_room_the_same_way(start_server, config_repo):
    # Each reference model holds 8 MiB (its estimate, inline): a 20 MiB budget takes two.
    config_repo.model("reference-third", pitch_hz=200, voices=["third"])
    config_repo.set("settings.toml", "default.memory.ram_budget_mb", 20)
    config_repo.commit("a 20 MiB budget")
    client = await start_server()
    assert (await speak(client, "reference-low")).status == 200
    assert (await speak(client, "reference-third")).status == 200
    status = await status_of(client)
    assert model_of(status, "reference-low") is None and model_of(status, "reference-third")
    assert status["on_demand"]["unloads"]["budget"] == 1


async def test_load_and_unload_by_hand_and_the_commits_models_stay(start_server, config_repo):
    config_repo.model("reference-kept", keep_loaded=True, pitch_hz=200)
    config_repo.commit("a model kept loaded")
    client = await start_server()
    resp = await post(client, "/control/models/reference-low/load")
    body = await resp.json()
    assert resp.status == 200 and body["result"] == "loaded" and body["generation"] == 1
    again = await (await post(client, "/control/models/reference-low/load")).json()
    assert again["generation"] == 1  # already loaded: nothing reloads
    resp = await post(client, "/control/models/reference-low/unload")
    assert resp.status == 200 and (await resp.json())["result"] == "unloaded"
    status = await wait_until(client, lambda s: model_of(s, "reference-low") is None)
    assert status["on_demand"]["unloads"]["explicit"] == 1
    for name, says in (("reference", "the default model"),
                       ("reference-kept", "kept loaded (keep_loaded = true)")):
        resp = await post(client, f"/control/models/{name}/unload")
        error = await error_of(resp)
        assert resp.status == 409 and error["code"] == "model_pinned" and says in error["message"]
    for route in ("load", "unload"):
        resp = await post(client, f"/control/models/nope/{route}")
        assert resp.status == 404 and (await error_of(resp))["code"] == "unknown_model"
    assert model_of(await status_of(client), "reference-kept") is not None


async def test_an_apply_keeps_reloads_or_unloads_a_model_loaded_on_demand(start_server,
                                                                          config_repo):
    client = await start_server()
    assert (await speak(client, "reference-low")).status == 200
    # A change elsewhere: it serves on, the same generation.
    same = config_repo.change("a longer text limit", "settings.toml",
                              "default.max_text_length", 3000)
    assert (await post(client, "/control/config/apply", commit=same)).status == 200
    assert model_of(await status_of(client), "reference-low")["generation"] == 1
    # Its own settings changed: reloaded with them before the apply answers.
    pitch = config_repo.change("reference-low higher", "models.toml",
                               "default.models.reference-low.settings.pitch_hz", 120)
    plan = await (await post(client, "/control/config/plan", commit=pitch)).json()
    assert plan["reload"] == ["reference-low"]
    assert (await post(client, "/control/config/apply", commit=pitch)).status == 200
    assert model_of(await status_of(client), "reference-low")["generation"] == 2
    samples, rate = read_wav(await (await speak(client, "reference-low")).read())
    assert abs(dominant_pitch(samples, rate) - 120) < 10
    # No longer loaded on demand: unloaded by the apply.
    off = config_repo.change("reference-low not on demand", "models.toml",
                             "default.models.reference-low.on_demand", False)
    assert (await post(client, "/control/config/apply", commit=off)).status == 200
    await wait_until(client, lambda s: model_of(s, "reference-low") is None)


async def test_an_apply_during_an_on_demand_load(start_server, config_repo):
    """The load is for the commit serving when it started. If an apply switches meanwhile,
    the loaded model joins the new snapshot when that commit defines it the same way; if it
    defines it otherwise, the copy is dropped and the request loads the new definition."""
    # 3 s: the applies below (runtime-only, tens of milliseconds) end well before the load.
    config_repo.model("reference-low", load_seconds=3.0, pitch_hz=90, voices=["narrator"])
    config_repo.commit("a slow model")
    client = await start_server()
    request = asyncio.create_task(speak(client, "reference-low"))
    await wait_until(client, lambda s: s["on_demand"]["loading"] == ["reference-low"])
    other = config_repo.change("elsewhere", "settings.toml", "default.max_text_length", 3000)
    assert (await post(client, "/control/config/apply", commit=other)).status == 200
    resp = await request
    assert resp.status == 200 and resp.headers["X-AllTalk-Commit"] == other
    assert model_of(await status_of(client), "reference-low")["generation"] == 1

    assert (await post(client, "/control/models/reference-low/unload")).status == 200
    await wait_until(client, lambda s: model_of(s, "reference-low") is None)
    request = asyncio.create_task(speak(client, "reference-low"))
    await wait_until(client, lambda s: s["on_demand"]["loading"] == ["reference-low"])
    higher = config_repo.change("reference-low higher", "models.toml",
                                "default.models.reference-low.settings.pitch_hz", 150)
    assert (await post(client, "/control/config/apply", commit=higher)).status == 200
    resp = await request
    assert resp.status == 200 and resp.headers["X-AllTalk-Commit"] == higher
    samples, rate = read_wav(await resp.read())
    assert abs(dominant_pitch(samples, rate) - 150) < 10


async def test_the_openai_route_names_a_model_not_loaded(start_server):
    client = await start_server()
    resp = await post(client, "/v1/audio/speech", model="reference-low", input="Hello there.",
                      voice="narrator", response_format="wav")
    assert resp.status == 200, await resp.text()
    samples, rate = read_wav(await resp.read())
    assert abs(dominant_pitch(samples, rate) - 90) < 10
    resp = await post(client, "/v1/audio/speech", model="reference-low", input="Hi.",
                      voice="nobody", response_format="wav")
    assert resp.status in (400, 404) and "nobody" in (await resp.json())["error"]["message"]


async def test_the_cli_loads_and_unloads(start_server, capsys):
    client = await start_server()
    url = f"http://127.0.0.1:{client.port}"

    def run(*args: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main([*args, "--url", url]) == 0
        return out.getvalue()

    out = await asyncio.to_thread(run, "models", "load", "reference-low")
    assert out.startswith("reference-low loaded (generation 1); serving "), out
    out = await asyncio.to_thread(run, "models", "unload", "reference-low")
    assert out.startswith("reference-low unloaded; serving "), out
    with pytest.raises(SystemExit, match=r"error \(model_pinned\): model 'reference' is the "
                       "default model"):
        await asyncio.to_thread(run, "models", "unload", "reference")
