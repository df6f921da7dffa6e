"""Issue 9, section 4: nothing wedges the controller.

A swap whose restore fails, one environment variable: each used to leave control stuck or wrong
until someone restarted the host by hand.
"""

from __future__ import annotations

from .conftest import error_of


async def post(client, path, **body):
    return await client.post(path, json=body)


async def status_of(client) -> dict:
    return await (await client.get("/control/status")).json()


# --- a low-memory swap whose restore fails -------------------------------------------------

async def test_a_swap_whose_restore_fails_leaves_the_model_out_and_the_next_apply_loads_it(
        start_server, config_repo, tmp_path):
    weights = tmp_path / "weights.toml"
    weights.write_text("pitch_hz = 150\n")
    config_repo.model("reference", low_memory_swap=True, model_file=str(weights))
    config_repo.commit("reference: unload first, weights from a file")
    client = await start_server()

    # The weights go away under the serving model: the new copy cannot load, and neither can
    # the old one the unload-first swap tries to put back.
    weights.unlink()
    broken = config_repo.change("higher", "models.toml",
                                "default.models.reference.settings.pitch_hz", 200)
    resp = await post(client, "/control/config/apply", commit=broken)
    assert resp.status == 422 and (await error_of(resp))["code"] == "model_load_failed"

    # The host says the model is gone instead of pretending it serves.
    status = await status_of(client)
    assert not [m for m in status["models"]
                if m["name"] == "reference" and m["state"] == "serving"], status["models"]
    assert status["ready"] is False
    assert (await client.get("/health/ready")).status == 503
    assert (await client.get("/health/models/reference")).status == 503
    resp = await post(client, "/tts", text="Hello there")
    error = await error_of(resp)
    assert resp.status == 503 and error["code"] == "not_ready", error
    assert "reference" in error["message"]

    # The weights are back: the next good commit loads the model again and is not marked
    # failed (it used to fail with a KeyError, for this and every later commit).
    weights.write_text("pitch_hz = 150\n")
    good = config_repo.change("lower", "models.toml",
                              "default.models.reference.settings.pitch_hz", 120)
    resp = await post(client, "/control/config/apply", commit=good)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["plan"]["load"] == ["reference"] and body["plan"]["reload"] == []
    assert (await client.get("/health/ready")).status == 200
    resp = await post(client, "/tts", text="Hello there")
    assert resp.status == 200
    assert resp.headers["X-AllTalk-Commit"] == good
    commits = {c["commit"]: c for c in
               (await (await client.get("/control/config/commits")).json())["commits"]}
    assert commits[broken]["failed"]
    assert not commits[good]["failed"] and commits[good]["known_good"]
    assert commits[good]["serving"]

    # And the one after that is an ordinary swap again.
    again = config_repo.change("again", "models.toml",
                               "default.models.reference.settings.pitch_hz", 130)
    resp = await post(client, "/control/config/apply", commit=again)
    assert resp.status == 200 and (await resp.json())["plan"]["reload"] == ["reference"]


# --- the layer of each key ------------------------------------------------------------------

async def test_one_env_variable_claims_only_the_key_it_sets(start_server, monkeypatch):
    monkeypatch.setenv("ALLTALK_MODELS__reference__settings__pitch_hz", "150")
    client = await start_server()
    body = await (await client.get("/control/config/effective")).json()
    keys = {k["key"]: k for k in body["keys"]}
    assert keys["models.reference.settings.pitch_hz"] == {
        "key": "models.reference.settings.pitch_hz", "value": 150, "layer": "env"}
    repo_models = {k: v["layer"] for k, v in keys.items()
                   if k.startswith("models.") and k != "models.reference.settings.pitch_hz"}
    assert "models.reference.settings.voices" in repo_models
    assert "models.reference-low.backend" in repo_models
    assert set(repo_models.values()) == {"repo:models.toml[default]"}, repo_models
    assert keys["default_model"]["layer"] == "repo:settings.toml[default]"
