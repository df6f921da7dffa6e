"""Routes the web UI reads, which any client may use: GET /tts/models (what /tts may be asked
for) and POST /control/models/switch/plan (a switch planned without writing a commit)."""

from __future__ import annotations

import git

from .helpers import error_of


async def test_tts_models_says_what_each_model_takes(start_server, config_repo):
    config_repo.model("unusable", backend="no-such-backend")
    config_repo.commit("a model whose backend is missing")
    client = await start_server()
    resp = await client.get("/tts/models")
    assert resp.status == 200
    info = await resp.json()
    assert info["default_model"] == "reference" and info["max_text_length"] == 2000
    assert info["commit"] == config_repo.head and info["speed_range"] == [0.25, 4.0]
    models = {m["name"]: m for m in info["models"]}
    ref = models["reference"]
    assert ref["state"] == "serving" and ref["default"] and ref["generation"] == 1
    assert ref["voices"] == ["female_01", "male_01"] and ref["default_voice"] == "female_01"
    assert ref["languages"][0] == "en" and ref["streaming"] is True
    assert ref["parameters"] == ["pitch"] and ref["default_language"] == "en"
    # Not loaded, loads when asked for: what its backend says, no voices until it is loaded.
    low = models["reference-low"]
    assert low["state"] == "not_loaded" and low["on_demand"] is True
    assert low["voices"] == [] and low["languages"][0] == "en" and low["streaming"] is True
    assert models["unusable"]["state"] == "unavailable"
    assert models["unusable"]["on_demand"] is False and "voices" not in models["unusable"]
    assert "no-such-backend" in models["unusable"]["reason"]
    assert "settings" not in ref  # paths and secrets stay on the control routes


async def test_a_switch_is_planned_without_writing_anything(start_server, config_repo):
    client = await start_server()
    repo = git.Repo(config_repo.path)
    objects = repo.git.count_objects("-v")
    resp = await client.post("/control/models/switch/plan", json={"model": "reference-low"})
    assert resp.status == 200, await resp.text()
    plan = await resp.json()
    assert plan["commit"] is None and plan["base"] == config_repo.head
    assert plan["model"] == "reference-low"
    assert plan["changes"] == [{"key": "default_model", "old": "reference",
                                "new": "reference-low", "layer": "repo:settings.toml[default]"}]
    assert plan["load"] == ["reference-low"] and plan["unload"] == ["reference"]
    assert repo.git.count_objects("-v") == objects and repo.head.commit.hexsha == (
        config_repo.head)
    # The same refusals as the switch itself, before anything is written.
    resp = await client.post("/control/models/switch/plan", json={"model": "nope"})
    assert resp.status == 404 and (await error_of(resp))["code"] == "unknown_model"
    # Already the default: nothing would change.
    plan = await (await client.post("/control/models/switch/plan",
                                    json={"model": "reference"})).json()
    assert plan["changes"] == [] and plan["runtime_only"] and plan["keep"] == ["reference"]
    repo.close()


async def test_a_switch_plan_is_a_control_route(start_server):
    client = await start_server(control_token="secret")
    resp = await client.post("/control/models/switch/plan", json={"model": "reference-low"})
    assert resp.status == 401
